#include "table_builder.h"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <new>

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

void TableImage::Free::operator()(std::uint64_t *p) const noexcept { std::free(p); }

namespace {

// A counted string of the string area (StrOff).
std::string_view counted(const std::string &strings, std::uint32_t off) noexcept {
    const auto len = static_cast<unsigned char>(strings[off]);
    return std::string_view(strings).substr(off + 1, len);
}

std::uint64_t hash_of(std::string_view s) noexcept { return std::hash<std::string_view>{}(s); }

}  // namespace

template <typename Store>
std::uint32_t TableBuilder::Interner::intern(std::string_view s, const std::string &strings,
                                             Store &&store) {
    if (2 * (used_ + 1) > slots_.size()) grow(strings);
    const std::uint64_t h = hash_of(s);
    const std::uint64_t tag = h >> 32;
    const std::size_t mask = slots_.size() - 1;
    for (std::size_t i = h & mask;; i = (i + 1) & mask) {
        const std::uint64_t slot = slots_[i];
        if (slot == 0) {
            const std::uint32_t off = store();
            slots_[i] = tag << 32 | off;
            used_++;
            return off;
        }
        if (slot >> 32 == tag && counted(strings, static_cast<std::uint32_t>(slot)) == s) {
            return static_cast<std::uint32_t>(slot);
        }
    }
}

void TableBuilder::Interner::grow(const std::string &strings) {
    std::vector<std::uint64_t> old(slots_.size() < 64 ? 64 : 2 * slots_.size(), 0);
    old.swap(slots_);
    const std::size_t mask = slots_.size() - 1;
    for (std::uint64_t slot : old) {
        if (slot == 0) continue;
        const std::uint64_t h = hash_of(counted(strings, static_cast<std::uint32_t>(slot)));
        std::size_t i = h & mask;
        while (slots_[i] != 0) i = (i + 1) & mask;
        slots_[i] = slot;
    }
}

TableBuilder::TableBuilder() : strings_(1, '\0') {}  // offset 0: the empty counted string

void TableBuilder::reserve(std::size_t keys, std::size_t string_bytes) {
    records_.reserve(keys);
    lines_.reserve(keys);
    id_hashes_.reserve(keys);
    strings_.reserve(string_bytes);
}

StrRef TableBuilder::store(std::string_view s) {
    StrRef ref{static_cast<std::uint32_t>(strings_.size()), static_cast<std::uint32_t>(s.size())};
    if (strings_.size() + s.size() > 0xffffffffu) throw KeyFileError(0, "key file is too large");
    strings_.append(s);
    return ref;
}

StrOff TableBuilder::store_counted(std::uint32_t line, std::string_view s) {
    // Names from a file are identifiers of at most 128 bytes (config_rules.h);
    // a longer one from elsewhere is refused, never cut.
    if (s.size() > 0xff) {
        throw KeyFileError(line, "a name longer than 255 bytes: " + quoted(s.substr(0, 64)));
    }
    if (strings_.size() + 1 + s.size() > 0xffffffffu) {
        throw KeyFileError(line, "key file is too large");
    }
    StrOff ref{static_cast<std::uint32_t>(strings_.size())};
    strings_.push_back(static_cast<char>(s.size()));
    strings_.append(s);
    return ref;
}

// Owners, organizations and limit categories repeat across keys; storing
// each once keeps a million-key table small.
StrOff TableBuilder::intern_counted(std::uint32_t line, std::string_view s) {
    if (s.empty()) return StrOff{0};
    return StrOff{interned_.intern(s, strings_, [&] { return store_counted(line, s).off; })};
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

PackedTime TableBuilder::time(const KeySpec &spec, const char *name, std::int64_t t,
                              std::int64_t absent) {
    // The reader only makes times of 1970..9999; a KeySpec made elsewhere
    // may not, and is refused rather than stored as another time.
    if (t != absent && !PackedTime::fits(t)) {
        throw KeyFileError(spec.line, std::string("\"") + name + "\" is out of range");
    }
    return PackedTime::pack(t, absent);
}

// Keys share a few scope sets: each distinct set is stored once.
std::uint32_t TableBuilder::scope_set_of(const KeySpec &spec) {
    if (!scope_sets_.empty() && spec.scopes == last_scopes_) return last_scope_set_;
    ScopeSet set{};
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
        set.set(it->second);
    }
    auto [it, inserted] = scope_set_ids_.try_emplace(
        {set.words[0], set.words[1]}, static_cast<std::uint32_t>(scope_sets_.size()));
    if (inserted) scope_sets_.push_back(set);
    last_scopes_ = spec.scopes;
    last_scope_set_ = it->second;
    return it->second;
}

void TableBuilder::add_key(const KeySpec &spec) {
    KeyRecord r{};
    r.hash = spec.hash;
    r.created = time(spec, "created_at", spec.created_at, kUnknownTime);
    r.expires = time(spec, "expires_at", spec.expires_at, kNever);
    r.revoked = time(spec, "revoked_at", spec.revoked_at, kNever);
    r.id = store_counted(spec.line, spec.id);
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
    r.owner = intern_counted(spec.line, spec.owner);
    r.organization = intern_counted(spec.line, spec.organization);
    r.scope_set = scope_set_of(spec);

    r.plan = kNoPlan;
    if (!spec.plan.empty() && last_plan_id_ != kNoPlan && spec.plan == last_plan_) {
        r.plan = last_plan_id_;
    } else if (!spec.plan.empty()) {
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
        last_plan_ = spec.plan;
        last_plan_id_ = r.plan;
    }

    r.limits_off = static_cast<std::uint32_t>(limits_.size());
    r.limits_count = static_cast<std::uint16_t>(spec.limits.size());
    for (const auto &[category, rate] : spec.limits) {
        const StrOff c = intern_counted(spec.line, category);
        limits_.push_back({{c.off + 1, static_cast<std::uint32_t>(category.size())},
                           rate.count,
                           rate.period_seconds});
    }

    if (records_.size() >= 0x7fffffffu) throw KeyFileError(spec.line, "too many keys");
    const std::uint64_t h = hash_of(spec.id);
    id_hashes_.push_back(static_cast<std::uint32_t>(h ^ h >> 32));
    records_.push_back(r);
    lines_.push_back(spec.line);
}

TableImage TableBuilder::build() {
    const auto n = static_cast<std::uint32_t>(records_.size());

    // Duplicate ids: the first record (in file order) whose id came before.
    if (n != 0) {
        std::size_t cap = 2;
        while (cap < 2 * std::size_t{n}) cap <<= 1;
        const std::size_t mask = cap - 1;
        std::unique_ptr<std::uint64_t[], TableImage::Free> slots(
            static_cast<std::uint64_t *>(std::calloc(cap, sizeof(std::uint64_t))));
        if (!slots) throw std::bad_alloc();
        for (std::uint32_t i = 0; i < n; i++) {
            const std::uint64_t tag = id_hashes_[i];
            for (std::size_t j = tag & mask;; j = (j + 1) & mask) {
                const std::uint64_t slot = slots[j];
                if (slot == 0) {
                    slots[j] = tag << 32 | (i + 1);
                    break;
                }
                if (slot >> 32 != tag) continue;
                const auto first = static_cast<std::uint32_t>(slot) - 1;
                const std::string_view id = counted(strings_, records_[i].id.off);
                if (counted(strings_, records_[first].id.off) == id) {
                    throw KeyFileError(lines_[i], "duplicate id " + quoted(id) +
                                                      " (first at line " +
                                                      std::to_string(lines_[first]) + ")");
                }
            }
        }
    }

    // Two keys a bucket on average: a lookup reads a few neighbouring records.
    const std::uint32_t buckets = n < 2 ? 1 : (n + 1) / 2;

    TableHeader h{};
    h.magic = kTableMagic;
    h.layout_version = kTableLayoutVersion;
    h.build_id = next_build_id();
    h.key_count = n;
    h.bucket_count = buckets;
    h.scope_count = static_cast<std::uint32_t>(scope_names_.size());
    h.plan_count = static_cast<std::uint32_t>(plan_names_.size());
    h.prefix_count = static_cast<std::uint32_t>(prefixes_.size());
    h.limit_count = static_cast<std::uint32_t>(limits_.size());
    h.scope_set_count = static_cast<std::uint32_t>(scope_sets_.size());

    std::uint64_t off = align8(sizeof h);
    auto place = [&off](std::uint64_t bytes) {
        std::uint64_t at = off;
        off = align8(off + bytes);
        return at;
    };
    h.buckets_off = place((std::uint64_t{buckets} + 1) * sizeof(std::uint32_t));
    h.records_off = place(std::uint64_t{n} * sizeof(KeyRecord));
    h.limits_off = place(limits_.size() * sizeof(LimitOverride));
    h.scope_sets_off = place(scope_sets_.size() * sizeof(ScopeSet));
    h.scope_names_off = place(scope_names_.size() * sizeof(StrRef));
    h.plan_names_off = place(plan_names_.size() * sizeof(StrRef));
    h.prefixes_off = place(prefixes_.size() * sizeof(PrefixEntry));
    h.strings_off = place(strings_.size());
    h.image_size = off;

    TableImage image;
    image.size_ = off;
    image.words_.reset(static_cast<std::uint64_t *>(std::calloc(off / 8, 8)));
    if (!image.words_) throw std::bad_alloc();
    auto *base = reinterpret_cast<unsigned char *>(image.words_.get());
    auto copy = [base](std::uint64_t at, const void *src, std::size_t bytes) {
        if (bytes) std::memcpy(base + at, src, bytes);
    };
    copy(0, &h, sizeof h);
    copy(h.limits_off, limits_.data(), limits_.size() * sizeof(LimitOverride));
    copy(h.scope_sets_off, scope_sets_.data(), scope_sets_.size() * sizeof(ScopeSet));
    copy(h.scope_names_off, scope_names_.data(), scope_names_.size() * sizeof(StrRef));
    copy(h.plan_names_off, plan_names_.data(), plan_names_.size() * sizeof(StrRef));
    copy(h.prefixes_off, prefixes_.data(), prefixes_.size() * sizeof(PrefixEntry));
    copy(h.strings_off, strings_.data(), strings_.size());

    // The records in bucket order (a counting sort, stable: file order
    // within a bucket), with where each came from.
    auto *starts = reinterpret_cast<std::uint32_t *>(base + h.buckets_off);
    auto *records = reinterpret_cast<KeyRecord *>(base + h.records_off);
    for (std::uint32_t i = 0; i < n; i++) starts[bucket_of(records_[i].hash, buckets) + 1]++;
    for (std::uint32_t b = 1; b <= buckets; b++) starts[b] += starts[b - 1];
    std::vector<std::uint32_t> next(starts, starts + buckets);
    std::vector<std::uint32_t> order(n);
    for (std::uint32_t i = 0; i < n; i++) {
        const std::uint32_t at = next[bucket_of(records_[i].hash, buckets)]++;
        records[at] = records_[i];
        order[at] = i;
    }

    // Duplicate hashes share a bucket: the first record (in file order)
    // whose hash came before.
    std::uint32_t dup = n, first = 0;
    for (std::uint32_t b = 0; b < buckets; b++) {
        for (std::uint32_t p = starts[b] + 1; p < starts[b + 1]; p++) {
            for (std::uint32_t q = starts[b]; q < p; q++) {
                if (records[p].hash == records[q].hash && order[p] < dup) {
                    dup = order[p];
                    first = order[q];
                    break;
                }
            }
        }
    }
    if (dup != n) {
        throw KeyFileError(lines_[dup],
                           "duplicate hash (first at line " + std::to_string(lines_[first]) + ")");
    }
    return image;
}

}  // namespace apikey
