#include "table_builder.h"

#include <atomic>
#include <chrono>
#include <unordered_set>

#include "quoted.h"

namespace apikey {

namespace {

std::uint64_t align8(std::uint64_t n) noexcept { return (n + 7) & ~std::uint64_t{7}; }

std::uint64_t next_build_id() noexcept {
    // Distinct within a process and, through the clock, across reloads; only
    // used to notice that a cached per-location view belongs to another table.
    static std::atomic<std::uint64_t> counter{0};
    auto now = static_cast<std::uint64_t>(
        std::chrono::steady_clock::now().time_since_epoch().count());
    return (now << 8) ^ ++counter;
}

}  // namespace

StrRef TableBuilder::store(std::string_view s) {
    StrRef ref{static_cast<std::uint32_t>(strings_.size()), static_cast<std::uint32_t>(s.size())};
    if (strings_.size() + s.size() > 0xffffffffu) throw KeyFileError(0, "key file is too large");
    strings_.append(s);
    return ref;
}

// Owners, organizations and limit categories repeat across keys; storing
// each once keeps a million-key table small.
std::uint32_t TableBuilder::intern(std::string_view s) {
    auto [it, inserted] = interned_.try_emplace(std::string(s), StrRef{});
    if (inserted) it->second = store(s);
    return it->second.off;
}

void TableBuilder::add_prefix(std::uint32_t line, std::string_view prefix, Environment env) {
    for (const PrefixEntry &p : prefixes_) {
        if (std::string_view(strings_).substr(p.text.off, p.text.len) == prefix) {
            throw KeyFileError(line, "duplicate prefix " + quoted(prefix));
        }
    }
    PrefixEntry entry{};
    entry.text = store(prefix);
    entry.environment = env;
    prefixes_.push_back(entry);
}

void TableBuilder::add_key(const KeySpec &spec) {
    KeyRecord r{};
    r.hash = spec.hash;
    r.created_at = spec.created_at;
    r.expires_at = spec.expires_at;
    r.revoked_at = spec.revoked_at;
    r.id = store(spec.id);
    // allowed_ips right after the id (KeyTable::networks); the reader has
    // refused empty lists, duplicates and more than kMaxAllowedIps.
    if (spec.allowed_ips.size() > kMaxAllowedIps) {
        throw KeyFileError(spec.line, "more than " + std::to_string(kMaxAllowedIps) +
                                          " networks in \"allowed_ips\"");
    }
    r.networks = static_cast<std::uint8_t>(spec.allowed_ips.size());
    if (r.networks != 0) {
        store(std::string_view(reinterpret_cast<const char *>(spec.allowed_ips.data()),
                               spec.allowed_ips.size() * sizeof(IpNetwork)));
    }
    r.owner = {intern(spec.owner), static_cast<std::uint32_t>(spec.owner.size())};
    r.organization = spec.organization.empty()
                         ? StrRef{0, 0}
                         : StrRef{intern(spec.organization),
                                  static_cast<std::uint32_t>(spec.organization.size())};

    for (const std::string &scope : spec.scopes) {
        auto it = scope_bits_.find(scope);
        if (it == scope_bits_.end()) {
            if (scope_names_.size() == kMaxScopes) {
                throw KeyFileError(spec.line, "too many distinct scopes in the file (at most " +
                                                  std::to_string(kMaxScopes) + ")");
            }
            it = scope_bits_.emplace(scope, static_cast<std::uint32_t>(scope_names_.size())).first;
            scope_names_.push_back(store(scope));
        }
        r.scopes.set(it->second);
    }

    r.plan = kNoPlan;
    if (!spec.plan.empty()) {
        auto it = plan_ids_.find(spec.plan);
        if (it == plan_ids_.end()) {
            if (plan_names_.size() == kMaxPlans) {
                throw KeyFileError(spec.line, "too many distinct plans in the file (at most " +
                                                  std::to_string(kMaxPlans) + ")");
            }
            it = plan_ids_.emplace(spec.plan, static_cast<std::uint8_t>(plan_names_.size())).first;
            plan_names_.push_back(store(spec.plan));
        }
        r.plan = it->second;
    }

    r.limits_off = static_cast<std::uint32_t>(limits_.size());
    r.limits_count = static_cast<std::uint16_t>(spec.limits.size());
    for (const auto &[category, rate] : spec.limits) {
        limits_.push_back({{intern(category), static_cast<std::uint32_t>(category.size())},
                           rate.count,
                           rate.period_seconds});
    }

    if (records_.size() >= 0x7fffffffu) throw KeyFileError(spec.line, "too many keys");
    records_.push_back(r);
    lines_.push_back(spec.line);
}

TableImage TableBuilder::build() {
    const auto n = static_cast<std::uint32_t>(records_.size());

    {
        std::unordered_map<std::string_view, std::uint32_t> ids;
        ids.reserve(n);
        const std::string_view all(strings_);
        for (std::uint32_t i = 0; i < n; i++) {
            auto id = all.substr(records_[i].id.off, records_[i].id.len);
            auto [it, inserted] = ids.emplace(id, lines_[i]);
            if (!inserted) {
                throw KeyFileError(lines_[i], "duplicate id " + quoted(id) + " (first at line " +
                                                  std::to_string(it->second) + ")");
            }
        }
    }

    std::uint64_t buckets = 2;
    while (buckets < 2 * std::uint64_t{n}) buckets <<= 1;

    TableHeader h{};
    h.magic = kTableMagic;
    h.layout_version = kTableLayoutVersion;
    h.build_id = next_build_id();
    h.key_count = n;
    h.bucket_mask = static_cast<std::uint32_t>(buckets - 1);
    h.scope_count = static_cast<std::uint32_t>(scope_names_.size());
    h.plan_count = static_cast<std::uint32_t>(plan_names_.size());
    h.prefix_count = static_cast<std::uint32_t>(prefixes_.size());
    h.limit_count = static_cast<std::uint32_t>(limits_.size());

    std::uint64_t off = align8(sizeof h);
    auto place = [&off](std::uint64_t bytes) {
        std::uint64_t at = off;
        off = align8(off + bytes);
        return at;
    };
    h.buckets_off = place(buckets * sizeof(std::uint32_t));
    h.records_off = place(n * sizeof(KeyRecord));
    h.limits_off = place(limits_.size() * sizeof(LimitOverride));
    h.scope_names_off = place(scope_names_.size() * sizeof(StrRef));
    h.plan_names_off = place(plan_names_.size() * sizeof(StrRef));
    h.prefixes_off = place(prefixes_.size() * sizeof(PrefixEntry));
    h.strings_off = place(strings_.size());
    h.image_size = off;

    TableImage image;
    image.size_ = off;
    image.words_.assign(off / 8, 0);
    auto *base = reinterpret_cast<unsigned char *>(image.words_.data());
    auto copy = [base](std::uint64_t at, const void *src, std::size_t bytes) {
        if (bytes) std::memcpy(base + at, src, bytes);
    };
    copy(0, &h, sizeof h);
    copy(h.records_off, records_.data(), n * sizeof(KeyRecord));
    copy(h.limits_off, limits_.data(), limits_.size() * sizeof(LimitOverride));
    copy(h.scope_names_off, scope_names_.data(), scope_names_.size() * sizeof(StrRef));
    copy(h.plan_names_off, plan_names_.data(), plan_names_.size() * sizeof(StrRef));
    copy(h.prefixes_off, prefixes_.data(), prefixes_.size() * sizeof(PrefixEntry));
    copy(h.strings_off, strings_.data(), strings_.size());

    auto *slots = reinterpret_cast<std::uint32_t *>(base + h.buckets_off);
    for (std::uint32_t i = 0; i < n; i++) {
        for (std::uint64_t b = bucket_hash(records_[i].hash);; b++) {
            std::uint32_t &slot = slots[b & h.bucket_mask];
            if (slot == 0) {
                slot = i + 1;
                break;
            }
            if (records_[slot - 1].hash == records_[i].hash) {
                throw KeyFileError(lines_[i], "duplicate hash (first at line " +
                                                  std::to_string(lines_[slot - 1]) + ")");
            }
        }
    }
    return image;
}

}  // namespace apikey
