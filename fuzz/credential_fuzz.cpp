// libFuzzer target: key extraction and the access check.
//
// The input is a request in miniature: a method byte, a clock byte, then
// header values separated by '\n', each led by a byte that says where it
// came from ('a': the Authorization header, read as Bearer; anything else:
// an api_key_source header=NAME value). It is run the way the glue runs it
// (collect_key, identify_key with the per-worker digest memo, check_digest)
// and every step is compared with an independent reference:
//   * parse_bearer: the token is a trimmed, non-empty slice of the value
//     after a case-insensitive "Bearer" and a blank;
//   * is_well_formed_key: RFC 6750 b64token, 16-256 bytes;
//   * KeyCollector: none / one / malformed / multiple as the README says;
//   * AccessPolicy::check against two small fixed tables (same keys, scope
//     bits in different orders, so a stale compiled view shows) and five
//     policies, in the documented order revoked -> expired -> environment
//     -> plan -> scopes (first missing scope in configuration order).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "core/access_policy.h"
#include "core/credential.h"
#include "core/key_digest_cache.h"
#include "core/table_builder.h"

namespace {

using namespace apikey;

[[noreturn]] void fail(const char *what, std::string_view detail = {}) {
    std::fprintf(stderr, "credential_fuzz: %s [%.*s]\n", what, static_cast<int>(detail.size()),
                 detail.data());
    std::abort();
}

void require(bool ok, const char *what, std::string_view detail = {}) {
    if (!ok) fail(what, detail);
}

constexpr std::int64_t kNow = 1800000000;

struct TestKey {
    std::string secret;
    std::string id;
    std::vector<std::string> scopes;
    std::string plan;
    std::int64_t expires_at = kNever;
    std::int64_t revoked_at = kNever;
};

const std::vector<std::pair<std::string, Environment>> kPrefixes = {
    {"jfi_sk_live_", Environment::live},
    {"jfi_sk_test_", Environment::test},
    {"wfk_", Environment::live},
    {"jfi_", Environment::test},  // shorter and overlapping: the longest match wins
};

const std::vector<TestKey> &test_keys() {
    static const std::vector<TestKey> keys = {
        {"jfi_sk_live_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
         "reader",
         {"diagrams:read", "folders:read"},
         "pro"},
        {"jfi_sk_live_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
         "writer",
         {"diagrams:read", "diagrams:write", "folders:read"},
         "team"},
        {"jfi_sk_test_CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC", "tester", {"diagrams:read"}, "pro"},
        {"wfk_DDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDD", "workflow", {"workflows:execute"}, ""},
        {"jfi_sk_live_RRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRR",
         "revoked",
         {"diagrams:read"},
         "pro",
         kNever,
         kNow - 100},
        {"jfi_sk_live_EEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEE",
         "expired",
         {"diagrams:read"},
         "pro",
         kNow,
         kNever},
        {"jfi_sk_live_FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF",
         "revoke_later",
         {"diagrams:read"},
         "free",
         kNow + 3600,
         kNow + 60},
        {"jfi_other_GGGGGGGGGGGGGGGGGGGGGGGGGGGGGG", "short_prefix", {"folders:read"}, "free"},
        {"jfi_sk_live_a.b~c+d/e-f_g==", "padded", {"diagrams:write"}, "team"},
        {"jfi_sk_live_" + std::string(244, 'z'),
         "longest",
         {"diagrams:read", "folders:read"},
         "team"},
    };
    return keys;
}

KeySpec spec_of(const TestKey &k, std::uint32_t line) {
    KeySpec s;
    s.line = line;
    s.hash = sha256(k.secret);
    s.id = k.id;
    s.owner = "owner_" + k.id;
    s.plan = k.plan;
    s.scopes = k.scopes;
    s.expires_at = k.expires_at;
    s.revoked_at = k.revoked_at;
    return s;
}

// Two images of the same keys; the second interns scopes and plans in
// reverse order, so their bits and plan ids differ.
struct Tables {
    TableImage images[2];
    Tables() {
        for (int t = 0; t < 2; t++) {
            TableBuilder b;
            std::uint32_t line = 1;
            for (const auto &[p, env] : kPrefixes) b.add_prefix(line++, p, env);
            std::vector<TestKey> keys = test_keys();
            if (t == 1) {
                keys.assign(test_keys().rbegin(), test_keys().rend());
                for (TestKey &k : keys) std::reverse(k.scopes.begin(), k.scopes.end());
            }
            for (const TestKey &k : keys) b.add_key(spec_of(k, line++));
            images[t] = b.build();
        }
    }
};

struct PolicyDef {
    std::vector<ScopeRule> rules;
    std::vector<std::string> plans;
    RequiredEnvironment environment;
};

const std::vector<PolicyDef> &policy_defs() {
    static const std::vector<PolicyDef> defs = {
        {{}, {}, RequiredEnvironment::any},
        {{{kGet | kHead, {"diagrams:read"}}, {kPost | kPut | kPatch | kDelete, {"diagrams:write"}}},
         {},
         RequiredEnvironment::live},
        {{{kAnyMethod, {"folders:read", "no:such:scope"}}},
         {"pro", "team"},
         RequiredEnvironment::any},
        {{}, {"enterprise"}, RequiredEnvironment::test},
        {{{kOptions | kOtherMethod, {"workflows:execute"}},
          {kAnyMethod, {"diagrams:read", "folders:read"}}},
         {"team", "pro", "free"},
         RequiredEnvironment::any},
    };
    return defs;
}

// ---- references

bool ref_well_formed(std::string_view k) {
    if (k.size() < 16 || k.size() > 256) return false;
    const std::string_view alphabet =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/";
    std::size_t i = 0;
    while (i < k.size() && alphabet.find(k[i]) != std::string_view::npos) i++;
    if (i == 0) return false;  // at least one token character before any '='
    while (i < k.size() && k[i] == '=') i++;
    return i == k.size();
}

bool is_blank(char c) { return c == ' ' || c == '\t'; }

BearerParse ref_bearer(std::string_view v, std::string &token) {
    std::size_t b = 0, e = v.size();
    while (b < e && is_blank(v[b])) b++;
    while (e > b && is_blank(v[e - 1])) e--;
    v = v.substr(b, e - b);
    if (v.size() < 6) return BearerParse::not_bearer;
    for (std::size_t i = 0; i < 6; i++) {
        char c = v[i];
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
        if (c != "bearer"[i]) return BearerParse::not_bearer;
    }
    if (v.size() > 6 && !is_blank(v[6])) return BearerParse::not_bearer;
    std::string_view rest = v.substr(6);
    while (!rest.empty() && is_blank(rest.front())) rest.remove_prefix(1);
    token = std::string(rest);
    return token.empty() ? BearerParse::empty_token : BearerParse::token;
}

struct Offer {
    bool malformed;
    std::string key;
};

KeyCollector::State ref_collect(const std::vector<Offer> &offers, std::string &key) {
    if (offers.empty()) return KeyCollector::State::none;
    bool any_malformed = false, any_key = false;
    std::set<std::string> distinct;
    for (const Offer &o : offers) {
        if (o.malformed) {
            any_malformed = true;
        } else {
            if (!any_key) key = o.key;
            any_key = true;
            distinct.insert(o.key);
        }
    }
    if (!any_key) return KeyCollector::State::malformed;
    if (any_malformed || distinct.size() > 1) return KeyCollector::State::multiple;
    return KeyCollector::State::one;
}

struct RefVerdict {
    Outcome outcome;
    std::string missing_scope;
    const TestKey *key = nullptr;
};

RefVerdict ref_check(const PolicyDef &p, std::string_view presented, unsigned method,
                     std::int64_t now, Environment &env) {
    env = Environment::none;
    if (!ref_well_formed(presented)) return {Outcome::invalid_key, {}};
    std::size_t best = 0;
    for (const auto &[prefix, e] : kPrefixes) {
        if (prefix.size() > best && presented.substr(0, prefix.size()) == prefix) {
            best = prefix.size();
            env = e;
        }
    }
    if (best == 0) return {Outcome::invalid_key, {}};
    const TestKey *k = nullptr;
    for (const TestKey &t : test_keys()) {
        if (t.secret == presented) k = &t;
    }
    if (k == nullptr) return {Outcome::invalid_key, {}};
    if (k->revoked_at <= now) return {Outcome::revoked_key, {}, k};
    if (k->expires_at <= now) return {Outcome::expired_key, {}, k};
    if ((p.environment == RequiredEnvironment::live && env != Environment::live) ||
        (p.environment == RequiredEnvironment::test && env != Environment::test)) {
        return {Outcome::wrong_environment, {}, k};
    }
    if (!p.plans.empty()) {
        bool ok = false;
        for (const std::string &plan : p.plans) ok |= !k->plan.empty() && plan == k->plan;
        if (!ok) return {Outcome::plan_required, {}, k};
    }
    for (const ScopeRule &rule : p.rules) {
        if (!(rule.methods & method)) continue;
        for (const std::string &s : rule.scopes) {
            bool has = false;
            for (const std::string &mine : k->scopes) has |= mine == s;
            if (!has) return {Outcome::insufficient_scope, s, k};
        }
    }
    return {Outcome::accepted, {}, k};
}

struct State {
    Tables tables;
    std::vector<std::unique_ptr<AccessPolicy>> policies;
    KeyDigestCache cache;
    State() {
        for (const PolicyDef &d : policy_defs()) {
            policies.push_back(std::make_unique<AccessPolicy>(d.rules, d.plans, d.environment));
        }
        cache.seed({0x0123456789abcdefull, 0xfedcba9876543210ull});
    }
};

State &state() {
    static State *s = new State();
    return *s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
    if (size < 3) return 0;
    State &st = state();
    const unsigned method = 1u << (data[0] & 7);
    static const std::int64_t clocks[] = {kNow - 101, kNow - 100, kNow - 1,  kNow,
                                          kNow + 1,   kNow + 59,  kNow + 60, kNow + 7200};
    const std::int64_t now = clocks[data[1] & 7];
    const std::size_t which_table = data[1] >> 3 & 1;
    const std::size_t which_policy = (data[1] >> 4) % st.policies.size();
    const std::string_view rest(reinterpret_cast<const char *>(data + 2), size - 2);

    // The header values, exactly as the glue would see them.
    KeyCollector collector;
    std::vector<Offer> offers;
    std::size_t pos = 0;
    while (pos <= rest.size()) {
        std::size_t end = rest.find('\n', pos);
        if (end == std::string_view::npos) end = rest.size();
        const std::string_view entry = rest.substr(pos, end - pos);
        pos = end + 1;
        if (entry.empty()) continue;
        const std::string_view value = entry.substr(1);

        require(is_well_formed_key(value) == ref_well_formed(value), "is_well_formed_key", value);

        if (entry.front() == 'a') {
            std::string_view token = "untouched";
            std::string want;
            const BearerParse got = parse_bearer(value, token);
            require(got == ref_bearer(value, want), "parse_bearer result", value);
            if (got != BearerParse::not_bearer) {
                require(token.data() >= value.data() &&
                            token.data() + token.size() <= value.data() + value.size(),
                        "the Bearer token is not a slice of the header value", value);
                require(token == want, "parse_bearer token", value);
            }
            if (got == BearerParse::token) {
                collector.offer(token);
                offers.push_back({false, std::string(token)});
            } else if (got == BearerParse::empty_token) {
                collector.offer_malformed();
                offers.push_back({true, {}});
            }
        } else if (!value.empty()) {  // an empty header is no key
            collector.offer(value);
            offers.push_back({false, std::string(value)});
        }
    }

    std::string want_key;
    const KeyCollector::State want_state = ref_collect(offers, want_key);
    require(collector.state() == want_state, "KeyCollector state");
    if (want_state != KeyCollector::State::one) return 0;
    require(collector.key() == want_key, "KeyCollector key", collector.key());

    // The request path, as create_ctx and the access handler run it.
    const KeyTable table = st.tables.images[which_table].table();
    AccessPolicy &policy = *st.policies[which_policy];
    const PolicyDef &def = policy_defs()[which_policy];
    const std::string_view key = collector.key();

    Environment ref_env;
    const RefVerdict want = ref_check(def, key, method, now, ref_env);

    const Identity plain = identify_key(table, key);
    const Identity memo = identify_key(table, key, &st.cache);
    require(plain.outcome == memo.outcome, "identify_key with and without the digest memo", key);
    if (plain.outcome == Outcome::accepted) {
        require(plain.environment == memo.environment && plain.digest == memo.digest,
                "the digest memo changes the digest or environment", key);
        require(plain.digest == sha256(key), "identify_key digest", key);
        if (!memo.from_memo && table.find(plain.digest) != nullptr) {
            st.cache.remember(key, plain.digest);
        }
    }

    const Verdict v = policy.check(table, key, method, now);
    const Outcome got = v.outcome;
    if (got != want.outcome) {
        std::fprintf(stderr,
                     "outcome %d, expected %d (table %zu, policy %zu, method %#x, now %lld)\n",
                     static_cast<int>(got), static_cast<int>(want.outcome), which_table,
                     which_policy, method, static_cast<long long>(now));
        std::fprintf(stderr, "missing scope [%.*s]\n", static_cast<int>(v.missing_scope.size()),
                     v.missing_scope.data());
        fail("AccessPolicy::check outcome", key);
    }
    if (want.outcome != Outcome::invalid_key) {
        require(v.environment == ref_env, "verdict environment", key);
    }
    if (want.key != nullptr) {
        require(v.record != nullptr, "no record for a known key", key);
        require(table.index_of(*v.record) < table.key_count(), "record outside the table", key);
        require(table.text(v.record->id) == want.key->id, "verdict names another key", key);
    } else {
        require(v.record == nullptr, "a record for an unknown key", key);
    }
    if (got == Outcome::insufficient_scope) {
        require(v.missing_scope == want.missing_scope, "first missing scope", v.missing_scope);
    }

    // check_digest after identify_key (the internal-redirect path) agrees.
    if (plain.outcome == Outcome::accepted) {
        const Verdict again = policy.check_digest(table, plain.digest, plain.environment, method,
                                                  now);
        require(again.outcome == got && again.record == v.record &&
                    again.missing_scope == v.missing_scope,
                "check_digest differs from check", key);
    }
    return 0;
}
