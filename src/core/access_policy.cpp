#include "access_policy.h"

#include "credential.h"

namespace apikey {

unsigned method_bit(std::string_view name) noexcept {
    constexpr std::pair<std::string_view, unsigned> methods[] = {
        {"GET", kGet},     {"HEAD", kHead},     {"POST", kPost},       {"PUT", kPut},
        {"PATCH", kPatch}, {"DELETE", kDelete}, {"OPTIONS", kOptions},
    };
    for (const auto &[n, bit] : methods) {
        if (n == name) return bit;
    }
    return 0;
}

AccessPolicy::AccessPolicy(std::vector<ScopeRule> rules, std::vector<std::string> plans,
                           RequiredEnvironment environment, std::uint16_t memo_id)
    : rules_(std::move(rules)),
      plans_(std::move(plans)),
      environment_(environment),
      memo_id_(memo_id),
      compiled_(rules_.size()) {
    for (std::size_t i = 0; i < rules_.size(); i++) {
        compiled_[i].bits.resize(rules_[i].scopes.size());
    }
}

void AccessPolicy::compile(const KeyTable &table) noexcept {
    for (std::size_t i = 0; i < rules_.size(); i++) {
        CompiledRule &c = compiled_[i];
        c.need = ScopeSet{};
        c.unknown = false;
        for (std::size_t k = 0; k < rules_[i].scopes.size(); k++) {
            int bit = table.find_scope(rules_[i].scopes[k]);
            c.bits[k] = bit;
            if (bit < 0) {
                c.unknown = true;
            } else {
                c.need.set(static_cast<unsigned>(bit));
            }
        }
    }
    plan_mask_ = 0;
    for (const std::string &plan : plans_) {
        int id = table.find_plan(plan);
        if (id >= 0) plan_mask_ |= std::uint64_t{1} << id;
    }
    compiled_for_ = table.build_id();
}

namespace {

// Out of line: the address (a local array) would otherwise give every call
// of check_digest a stack-protector canary, keys without allowed_ips too.
[[gnu::noinline]] bool allowed_from(const KeyTable &table, const KeyRecord &record,
                                    const ClientSource &client) noexcept {
    return any_network_contains(table.networks(record), record.networks, client.get());
}

}  // namespace

Identity identify_key(const KeyTable &table, std::string_view key,
                      const KeyDigestCache *memo) noexcept {
    Identity id;
    id.from_memo = key.size() <= kMaxKeyLength && memo != nullptr && memo->find(key, id.digest);
    if ((!id.from_memo && !is_well_formed_key(key)) || !table.environment_of(key, id.environment)) {
        return id;
    }
    if (!id.from_memo) id.digest = sha256(key);
    id.outcome = Outcome::accepted;
    return id;
}

Verdict AccessPolicy::check(const KeyTable &table, std::string_view key, unsigned method,
                            std::int64_t now, ClientSource client) noexcept {
    const Identity id = identify_key(table, key);
    if (id.outcome != Outcome::accepted) {
        Verdict v;
        v.outcome = Outcome::invalid_key;
        v.environment = id.environment;
        return v;
    }
    return check_digest(table, id.digest, id.environment, method, now, client);
}

Verdict AccessPolicy::check_digest(const KeyTable &table, const Digest &digest,
                                   Environment environment, unsigned method, std::int64_t now,
                                   ClientSource client) noexcept {
    const KeyRecord *record = table.find(digest);
    if (record == nullptr) {
        Verdict v;
        v.environment = environment;
        v.outcome = Outcome::invalid_key;
        return v;
    }
    return check_record(table, *record, environment, method, now, client);
}

Verdict AccessPolicy::check_record(const KeyTable &table, const KeyRecord &found,
                                   Environment environment, unsigned method, std::int64_t now,
                                   ClientSource client) noexcept {
    Verdict v;
    v.environment = environment;
    const KeyRecord *record = &found;
    v.record = record;
    if (record->revoked_at() <= now) {
        v.outcome = Outcome::revoked_key;
        return v;
    }
    if (record->expires_at() <= now) {
        v.outcome = Outcome::expired_key;
        return v;
    }
    if ((environment_ == RequiredEnvironment::live && v.environment != Environment::live) ||
        (environment_ == RequiredEnvironment::test && v.environment != Environment::test)) {
        v.outcome = Outcome::wrong_environment;
        return v;
    }

    if (compiled_for_ != table.build_id()) compile(table);

    if (!plans_.empty() && (record->plan == kNoPlan || !(plan_mask_ >> record->plan & 1))) {
        v.outcome = Outcome::plan_required;
        return v;
    }

    // A key without allowed_ips pays this one test of a zero byte.
    if (record->networks != 0 && !allowed_from(table, *record, client)) {
        v.outcome = Outcome::ip_not_allowed;
        return v;
    }

    const ScopeSet &scopes = table.scopes(*record);
    for (std::size_t i = 0; i < rules_.size(); i++) {
        const CompiledRule &c = compiled_[i];
        if (!(rules_[i].methods & method)) continue;
        if (!c.unknown && scopes.contains_all(c.need)) continue;
        for (std::size_t k = 0; k < c.bits.size(); k++) {
            if (c.bits[k] < 0 || !scopes.test(static_cast<unsigned>(c.bits[k]))) {
                v.outcome = Outcome::insufficient_scope;
                v.missing_scope = rules_[i].scopes[k];
                return v;
            }
        }
    }

    v.outcome = Outcome::accepted;
    return v;
}

}  // namespace apikey
