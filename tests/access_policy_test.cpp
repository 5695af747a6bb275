// What a location requires of a key, and the order of the checks.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <string>
#include <vector>

#include "core/access_policy.h"
#include "core/table_builder.h"

namespace apikey {
namespace {

constexpr std::int64_t kNow = 1800000000;

KeySpec key(const std::string &secret, const std::string &id, std::vector<std::string> scopes,
            const std::string &plan = "") {
    KeySpec s;
    s.line = 1;
    s.hash = sha256(secret);
    s.id = id;
    s.owner = "owner_" + id;
    s.scopes = std::move(scopes);
    s.plan = plan;
    return s;
}

// Keys of a diagram API, with live_/test_ prefixes.
class AccessPolicyTest : public ::testing::Test {
protected:
    void SetUp() override {
        TableBuilder b;
        b.add_prefix(2, "live_", Environment::live);
        b.add_prefix(3, "test_", Environment::test);
        b.add_key(key("live_reader_key_0001", "reader", {"diagrams:read", "folders:read"}, "pro"));
        b.add_key(key("live_writer_key_0001", "writer",
                      {"folders:read", "diagrams:write", "diagrams:read"}, "pro"));
        b.add_key(key("live_free_key_000001", "free", {"diagrams:read"}, "free"));
        b.add_key(key("live_noplan_key_0001", "noplan", {"diagrams:read"}));
        b.add_key(key("test_reader_key_0001", "test_reader", {"diagrams:read"}, "pro"));
        b.add_key(key("live_noscope_key_001", "noscope", {}, "pro"));

        KeySpec revoked_expired = key("live_revoked_expired", "revoked_expired", {}, "free");
        revoked_expired.revoked_at = kNow - 100;
        revoked_expired.expires_at = kNow - 50;
        b.add_key(revoked_expired);

        KeySpec test_expired = key("test_expired_key_001", "test_expired", {"diagrams:read"},
                                   "pro");
        test_expired.expires_at = kNow - 1;
        b.add_key(test_expired);

        KeySpec test_revoked = key("test_revoked_key_001", "test_revoked", {"diagrams:read"},
                                   "pro");
        test_revoked.revoked_at = kNow - 1;
        b.add_key(test_revoked);

        KeySpec future_revoke = key("live_future_revoke_1", "future_revoke", {"diagrams:read"},
                                    "pro");
        future_revoke.revoked_at = kNow + 3600;
        b.add_key(future_revoke);

        KeySpec revoked_now = key("live_revoked_now_001", "revoked_now", {"diagrams:read"}, "pro");
        revoked_now.revoked_at = kNow;
        b.add_key(revoked_now);

        KeySpec expires_now = key("live_expires_now_001", "expires_now", {"diagrams:read"}, "pro");
        expires_now.expires_at = kNow;
        b.add_key(expires_now);

        KeySpec expires_later = key("live_expires_later_1", "expires_later", {"diagrams:read"},
                                    "pro");
        expires_later.expires_at = kNow + 1;
        b.add_key(expires_later);

        KeySpec created_future = key("live_created_later_1", "created_later", {"diagrams:read"},
                                     "pro");
        created_future.created_at = kNow + 86400;
        b.add_key(created_future);

        image_ = b.build();
        table_ = image_.table();
    }

    Verdict check(AccessPolicy &p, std::string_view k, unsigned method = kGet,
                  std::int64_t now = kNow) {
        return p.check(table_, k, method, now);
    }

    std::string id_of(const Verdict &v) const {
        return v.record ? std::string(table_.text(v.record->id)) : std::string("<none>");
    }

    TableImage image_;
    KeyTable table_;
};

AccessPolicy open_policy() { return AccessPolicy({}, {}, RequiredEnvironment::any); }

TEST(MethodBit, Names) {
    EXPECT_EQ(method_bit("GET"), kGet);
    EXPECT_EQ(method_bit("HEAD"), kHead);
    EXPECT_EQ(method_bit("POST"), kPost);
    EXPECT_EQ(method_bit("PUT"), kPut);
    EXPECT_EQ(method_bit("PATCH"), kPatch);
    EXPECT_EQ(method_bit("DELETE"), kDelete);
    EXPECT_EQ(method_bit("OPTIONS"), kOptions);
    EXPECT_EQ(method_bit("get"), 0u);
    EXPECT_EQ(method_bit("TRACE"), 0u);
    EXPECT_EQ(method_bit(""), 0u);
    EXPECT_EQ(method_bit("GETX"), 0u);
    // All distinct bits inside kAnyMethod.
    unsigned all = 0;
    for (unsigned bit : {kGet, kHead, kPost, kPut, kPatch, kDelete, kOptions, kOtherMethod}) {
        EXPECT_EQ(all & bit, 0u);
        all |= bit;
    }
    EXPECT_EQ(all, static_cast<unsigned>(kAnyMethod));
}

TEST_F(AccessPolicyTest, AcceptsAGoodKeyAndReportsIt) {
    AccessPolicy p = open_policy();
    Verdict v = check(p, "live_reader_key_0001");
    EXPECT_EQ(v.outcome, Outcome::accepted);
    EXPECT_EQ(v.environment, Environment::live);
    EXPECT_EQ(id_of(v), "reader");
    EXPECT_TRUE(v.missing_scope.empty());
    EXPECT_FALSE(p.checks_plan());

    Verdict t = check(p, "test_reader_key_0001");
    EXPECT_EQ(t.outcome, Outcome::accepted);
    EXPECT_EQ(t.environment, Environment::test);
    EXPECT_EQ(id_of(t), "test_reader");
}

TEST_F(AccessPolicyTest, InvalidKeys) {
    AccessPolicy p = open_policy();
    for (const char *k : {
             "live_unknown_key_001",   // right syntax and prefix, not in the file
             "live_short",             // too short
             "other_reader_key_0001",  // no declared prefix
             "LIVE_reader_key_0001",   // prefixes are case-sensitive
             "live_reader key_0001",   // a blank
             "live_reader_key_0001\n",
             "",
         }) {
        Verdict v = check(p, k);
        EXPECT_EQ(v.outcome, Outcome::invalid_key) << '"' << k << '"';
        EXPECT_EQ(v.record, nullptr) << k;
    }
    EXPECT_EQ(check(p, std::string(257, 'l').replace(0, 5, "live_")).outcome, Outcome::invalid_key);
}

TEST_F(AccessPolicyTest, IdentifyKey) {
    const Identity id = identify_key(table_, "test_reader_key_0001");
    EXPECT_EQ(id.outcome, Outcome::accepted);
    EXPECT_EQ(id.environment, Environment::test);
    EXPECT_EQ(id.digest, sha256("test_reader_key_0001"));
    EXPECT_FALSE(id.from_memo);
    EXPECT_EQ(identify_key(table_, "nope_reader_key_0001").outcome, Outcome::invalid_key);
    EXPECT_EQ(identify_key(table_, "live_").outcome, Outcome::invalid_key);
}

TEST_F(AccessPolicyTest, CheckDigestForAnIdentifiedKey) {
    AccessPolicy p({}, {}, RequiredEnvironment::live);
    Verdict v = p.check_digest(table_, sha256("live_reader_key_0001"), Environment::live, kGet,
                               kNow);
    EXPECT_EQ(v.outcome, Outcome::accepted);
    EXPECT_EQ(id_of(v), "reader");
    // The environment handed in is the one checked.
    Verdict w = p.check_digest(table_, sha256("live_reader_key_0001"), Environment::test, kGet,
                               kNow);
    EXPECT_EQ(w.outcome, Outcome::wrong_environment);
    EXPECT_EQ(w.environment, Environment::test);
    Verdict u = p.check_digest(table_, sha256("nothing"), Environment::live, kGet, kNow);
    EXPECT_EQ(u.outcome, Outcome::invalid_key);
    EXPECT_EQ(u.record, nullptr);
}

// check_record (the glue's path when the digest memo noted the record)
// answers as check_digest does, for every key of the table, under policies
// of every kind of check and at times around the keys' dates.
TEST_F(AccessPolicyTest, CheckRecordAnswersAsCheckDigest) {
    std::vector<AccessPolicy> policies;
    policies.emplace_back(std::vector<ScopeRule>{}, std::vector<std::string>{},
                          RequiredEnvironment::any);
    policies.emplace_back(std::vector<ScopeRule>{{kAnyMethod, {"diagrams:read"}}},
                          std::vector<std::string>{"pro"}, RequiredEnvironment::live);
    policies.emplace_back(std::vector<ScopeRule>{{kGet, {"folders:read", "diagrams:write"}}},
                          std::vector<std::string>{}, RequiredEnvironment::test);
    int compared = 0;
    for (AccessPolicy &p : policies) {
        for (std::uint32_t i = 0; i < table_.key_count(); i++) {
            const KeyRecord &record = table_.record(i);
            for (std::int64_t now : {kNow - 100, kNow - 1, kNow, kNow + 1, kNow + 7200}) {
                for (Environment env : {Environment::live, Environment::test}) {
                    for (unsigned method : {kGet, kPost}) {
                        const Verdict a = p.check_digest(table_, record.hash, env, method, now);
                        const Verdict b = p.check_record(table_, record, env, method, now);
                        ASSERT_EQ(a.outcome, b.outcome) << table_.text(record.id) << " " << now;
                        ASSERT_EQ(a.record, b.record);
                        ASSERT_EQ(a.environment, b.environment);
                        ASSERT_EQ(a.missing_scope, b.missing_scope);
                        compared++;
                    }
                }
            }
        }
    }
    EXPECT_EQ(compared, 3 * static_cast<int>(table_.key_count()) * 5 * 2 * 2);
}

// A noted acceptance (the glue's path when the memo's note says this
// policy accepted the record for this method) never accepts what
// check_record would refuse, at any later time, for any policy and method;
// and it does accept again when nothing but the time moved and the record
// still passes.
TEST_F(AccessPolicyTest, ANotedAcceptanceAcceptsOnlyWhatCheckRecordAccepts) {
    std::vector<AccessPolicy> policies;
    policies.emplace_back(std::vector<ScopeRule>{}, std::vector<std::string>{},
                          RequiredEnvironment::any, std::uint16_t{1});
    policies.emplace_back(std::vector<ScopeRule>{{kAnyMethod, {"diagrams:read"}}},
                          std::vector<std::string>{"pro"}, RequiredEnvironment::live,
                          std::uint16_t{2});
    policies.emplace_back(std::vector<ScopeRule>{{kGet, {"folders:read", "diagrams:write"}}},
                          std::vector<std::string>{}, RequiredEnvironment::test, std::uint16_t{3});
    const std::int64_t times[] = {kNow - 100, kNow - 1, kNow, kNow + 1, kNow + 7200};
    int noted = 0, reused = 0;
    for (AccessPolicy &p : policies) {
        for (std::uint32_t i = 0; i < table_.key_count(); i++) {
            const KeyRecord &record = table_.record(i);
            for (std::int64_t then : times) {
                for (Environment env : {Environment::live, Environment::test}) {
                    for (unsigned method : {kGet, kPost}) {
                        if (p.check_record(table_, record, env, method, then).outcome !=
                            Outcome::accepted) {
                            continue;
                        }
                        MemoNote note;
                        note.table = table_.build_id();
                        note.value = static_cast<std::uint8_t>(env);
                        note.record = i;
                        p.note_acceptance(note, method);
                        noted++;
                        for (AccessPolicy &q : policies) {
                            for (std::int64_t now : times) {
                                if (now < then) continue;
                                for (unsigned m : {kGet, kPost, kHead}) {
                                    const bool again = q.accepted_as_noted(note, record, m, now);
                                    const Outcome checked =
                                        q.check_record(table_, record, env, m, now).outcome;
                                    if (again) {
                                        ASSERT_EQ(checked, Outcome::accepted)
                                            << table_.text(record.id) << " " << now;
                                        reused++;
                                    }
                                    // Same policy, same method: only the time
                                    // moved, so what check_record accepts is
                                    // accepted again.
                                    if (&q == &p && m == method) {
                                        ASSERT_EQ(again, checked == Outcome::accepted)
                                            << table_.text(record.id) << " " << now;
                                    } else {
                                        ASSERT_FALSE(again);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    EXPECT_GT(noted, 20);
    EXPECT_GT(reused, 20);
}

// A note without an acceptance, or one from a policy numbered 0, is never
// taken for an acceptance.
TEST_F(AccessPolicyTest, NoAcceptanceIsNotedWithoutAMemoId) {
    AccessPolicy unnumbered({}, {}, RequiredEnvironment::any);
    AccessPolicy numbered({}, {}, RequiredEnvironment::any, 7);
    const KeyRecord &record = *check(unnumbered, "live_reader_key_0001").record;
    MemoNote note;
    for (unsigned m : {kGet, kPost, kOtherMethod}) {
        EXPECT_FALSE(unnumbered.accepted_as_noted(note, record, m, kNow));
        EXPECT_FALSE(numbered.accepted_as_noted(note, record, m, kNow));
    }
    unnumbered.note_acceptance(note, kGet);
    EXPECT_FALSE(unnumbered.accepted_as_noted(note, record, kGet, kNow));
    numbered.note_acceptance(note, kGet);
    EXPECT_TRUE(numbered.accepted_as_noted(note, record, kGet, kNow));
    EXPECT_FALSE(numbered.accepted_as_noted(note, record, kPost, kNow));
}

// ---- Order: revoked -> expired -> environment -> plan -> scopes

TEST_F(AccessPolicyTest, RevokedAndExpiredIsRevoked) {
    AccessPolicy p = open_policy();
    Verdict v = check(p, "live_revoked_expired");
    EXPECT_EQ(v.outcome, Outcome::revoked_key);
    EXPECT_EQ(id_of(v), "revoked_expired");
}

TEST_F(AccessPolicyTest, RevokedComesBeforePlanAndScopes) {
    AccessPolicy p({{kAnyMethod, {"diagrams:write"}}}, {"pro"}, RequiredEnvironment::any);
    EXPECT_EQ(check(p, "live_revoked_expired").outcome,
              Outcome::revoked_key);  // plan free, no scopes
}

TEST_F(AccessPolicyTest, ExpiredOnTheWrongEnvironmentIsExpired) {
    AccessPolicy p({}, {}, RequiredEnvironment::live);
    Verdict v = check(p, "test_expired_key_001");
    EXPECT_EQ(v.outcome, Outcome::expired_key);
    EXPECT_EQ(v.environment, Environment::test);
}

TEST_F(AccessPolicyTest, RevokedOnTheWrongEnvironmentIsRevoked) {
    AccessPolicy p({}, {}, RequiredEnvironment::live);
    EXPECT_EQ(check(p, "test_revoked_key_001").outcome, Outcome::revoked_key);
}

TEST_F(AccessPolicyTest, EnvironmentComesBeforePlanAndScopes) {
    AccessPolicy p({{kAnyMethod, {"diagrams:write"}}}, {"enterprise"}, RequiredEnvironment::live);
    EXPECT_EQ(check(p, "test_reader_key_0001").outcome, Outcome::wrong_environment);
}

TEST_F(AccessPolicyTest, PlanComesBeforeScopes) {
    AccessPolicy p({{kAnyMethod, {"diagrams:write"}}}, {"pro"}, RequiredEnvironment::any);
    EXPECT_EQ(check(p, "live_free_key_000001").outcome, Outcome::plan_required);
    Verdict v = check(p, "live_reader_key_0001");
    EXPECT_EQ(v.outcome, Outcome::insufficient_scope);
    EXPECT_EQ(v.missing_scope, "diagrams:write");
}

// ---- Time

TEST_F(AccessPolicyTest, RevocationInTheFutureIsNotYetInForce) {
    AccessPolicy p = open_policy();
    EXPECT_EQ(check(p, "live_future_revoke_1").outcome, Outcome::accepted);
    EXPECT_EQ(check(p, "live_future_revoke_1", kGet, kNow + 3599).outcome, Outcome::accepted);
    EXPECT_EQ(check(p, "live_future_revoke_1", kGet, kNow + 3600).outcome, Outcome::revoked_key);
    EXPECT_EQ(check(p, "live_future_revoke_1", kGet, kNow + 999999).outcome, Outcome::revoked_key);
}

TEST_F(AccessPolicyTest, RevokedAtIsInclusive) {
    AccessPolicy p = open_policy();
    EXPECT_EQ(check(p, "live_revoked_now_001").outcome, Outcome::revoked_key);
    EXPECT_EQ(check(p, "live_revoked_now_001", kGet, kNow - 1).outcome, Outcome::accepted);
}

TEST_F(AccessPolicyTest, Expiry) {
    AccessPolicy p = open_policy();
    EXPECT_EQ(check(p, "live_expires_now_001").outcome, Outcome::expired_key);
    EXPECT_EQ(check(p, "live_expires_now_001", kGet, kNow - 1).outcome, Outcome::accepted);
    EXPECT_EQ(check(p, "live_expires_later_1").outcome, Outcome::accepted);
    EXPECT_EQ(check(p, "live_expires_later_1", kGet, kNow + 1).outcome, Outcome::expired_key);
    // Keys without expires_at never expire.
    EXPECT_EQ(check(p, "live_reader_key_0001", kGet, kNever - 1).outcome, Outcome::accepted);
}

TEST_F(AccessPolicyTest, CreatedAtDoesNotGateAccess) {
    AccessPolicy p = open_policy();
    EXPECT_EQ(check(p, "live_created_later_1").outcome, Outcome::accepted);
}

// ---- Environment

TEST_F(AccessPolicyTest, EnvironmentAnyLiveTest) {
    AccessPolicy any({}, {}, RequiredEnvironment::any);
    AccessPolicy live({}, {}, RequiredEnvironment::live);
    AccessPolicy test({}, {}, RequiredEnvironment::test);
    EXPECT_EQ(check(any, "live_reader_key_0001").outcome, Outcome::accepted);
    EXPECT_EQ(check(any, "test_reader_key_0001").outcome, Outcome::accepted);
    EXPECT_EQ(check(live, "live_reader_key_0001").outcome, Outcome::accepted);
    EXPECT_EQ(check(live, "test_reader_key_0001").outcome, Outcome::wrong_environment);
    EXPECT_EQ(check(test, "test_reader_key_0001").outcome, Outcome::accepted);
    EXPECT_EQ(check(test, "live_reader_key_0001").outcome, Outcome::wrong_environment);
    // The SPEC answers a wrong environment with invalid_api_key.
    EXPECT_EQ(describe(Outcome::wrong_environment).code, "invalid_api_key");
    EXPECT_EQ(describe(Outcome::wrong_environment).status, 401u);
    Verdict v = check(test, "live_reader_key_0001");
    EXPECT_EQ(v.environment, Environment::live);
    EXPECT_EQ(id_of(v), "reader");
}

// ---- Plans

TEST_F(AccessPolicyTest, Plans) {
    AccessPolicy paid({}, {"pro", "team"}, RequiredEnvironment::any);
    EXPECT_TRUE(paid.checks_plan());
    EXPECT_EQ(check(paid, "live_reader_key_0001").outcome, Outcome::accepted);
    EXPECT_EQ(check(paid, "live_free_key_000001").outcome, Outcome::plan_required);
    EXPECT_EQ(check(paid, "live_noplan_key_0001").outcome, Outcome::plan_required);

    AccessPolicy free_only({}, {"free"}, RequiredEnvironment::any);
    EXPECT_EQ(check(free_only, "live_free_key_000001").outcome, Outcome::accepted);
    EXPECT_EQ(check(free_only, "live_reader_key_0001").outcome, Outcome::plan_required);

    // A plan no key has: nobody gets in, and nothing breaks.
    AccessPolicy nobody({}, {"enterprise"}, RequiredEnvironment::any);
    EXPECT_EQ(check(nobody, "live_reader_key_0001").outcome, Outcome::plan_required);
    EXPECT_EQ(check(nobody, "live_free_key_000001").outcome, Outcome::plan_required);
    EXPECT_EQ(check(nobody, "live_noplan_key_0001").outcome, Outcome::plan_required);

    // No plan check: keys without a plan are fine.
    AccessPolicy none = open_policy();
    EXPECT_EQ(check(none, "live_noplan_key_0001").outcome, Outcome::accepted);
}

// ---- Scopes

TEST_F(AccessPolicyTest, AllScopesOfARuleAreRequired) {
    AccessPolicy p({{kAnyMethod, {"diagrams:read", "folders:read"}}}, {}, RequiredEnvironment::any);
    EXPECT_EQ(check(p, "live_reader_key_0001").outcome, Outcome::accepted);
    EXPECT_EQ(check(p, "live_writer_key_0001").outcome, Outcome::accepted);
    Verdict v = check(p, "live_free_key_000001");
    EXPECT_EQ(v.outcome, Outcome::insufficient_scope);
    EXPECT_EQ(v.missing_scope, "folders:read");
    EXPECT_EQ(id_of(v), "free");
    Verdict n = check(p, "live_noscope_key_001");
    EXPECT_EQ(n.outcome, Outcome::insufficient_scope);
    EXPECT_EQ(n.missing_scope, "diagrams:read");
}

TEST_F(AccessPolicyTest, MethodSpecificRules) {
    AccessPolicy p(
        {{kGet | kHead, {"diagrams:read"}}, {kPost | kPut | kPatch | kDelete, {"diagrams:write"}}},
        {}, RequiredEnvironment::any);
    // A reader may read ...
    EXPECT_EQ(check(p, "live_reader_key_0001", kGet).outcome, Outcome::accepted);
    EXPECT_EQ(check(p, "live_reader_key_0001", kHead).outcome, Outcome::accepted);
    // ... but not write: the GET rule is not applied to POST, the POST rule is.
    for (unsigned m : {kPost, kPut, kPatch, kDelete}) {
        Verdict v = check(p, "live_reader_key_0001", m);
        EXPECT_EQ(v.outcome, Outcome::insufficient_scope) << m;
        EXPECT_EQ(v.missing_scope, "diagrams:write") << m;
    }
    // Methods no rule names need nothing.
    EXPECT_EQ(check(p, "live_noscope_key_001", kOptions).outcome, Outcome::accepted);
    EXPECT_EQ(check(p, "live_noscope_key_001", kOtherMethod).outcome, Outcome::accepted);
    Verdict g = check(p, "live_noscope_key_001", kGet);
    EXPECT_EQ(g.outcome, Outcome::insufficient_scope);
    EXPECT_EQ(g.missing_scope, "diagrams:read");
    EXPECT_EQ(check(p, "live_writer_key_0001", kPost).outcome, Outcome::accepted);
    EXPECT_EQ(check(p, "live_writer_key_0001", kGet).outcome, Outcome::accepted);
}

TEST_F(AccessPolicyTest, PostOnlyRuleDoesNotApplyToGet) {
    AccessPolicy p({{kPost, {"diagrams:write"}}}, {}, RequiredEnvironment::any);
    EXPECT_EQ(check(p, "live_reader_key_0001", kGet).outcome, Outcome::accepted);
    EXPECT_EQ(check(p, "live_reader_key_0001", kPost).outcome, Outcome::insufficient_scope);
}

TEST_F(AccessPolicyTest, FirstMissingScopeInConfiguredOrder) {
    // The writer key interned folders:read, diagrams:write, diagrams:read in
    // an order unlike the rule's; the rule's order decides what is reported.
    AccessPolicy p({{kAnyMethod, {"diagrams:write", "folders:read", "diagrams:read"}}}, {},
                   RequiredEnvironment::any);
    Verdict none = check(p, "live_noscope_key_001");
    EXPECT_EQ(none.missing_scope, "diagrams:write");
    Verdict reader = check(p, "live_reader_key_0001");  // has read + folders
    EXPECT_EQ(reader.missing_scope, "diagrams:write");
    Verdict free = check(p, "live_free_key_000001");  // has read only
    EXPECT_EQ(free.missing_scope, "diagrams:write");

    AccessPolicy q({{kAnyMethod, {"diagrams:read", "folders:read", "diagrams:write"}}}, {},
                   RequiredEnvironment::any);
    EXPECT_EQ(check(q, "live_noscope_key_001").missing_scope, "diagrams:read");
    EXPECT_EQ(check(q, "live_free_key_000001").missing_scope, "folders:read");
    EXPECT_EQ(check(q, "live_reader_key_0001").missing_scope, "diagrams:write");
}

TEST_F(AccessPolicyTest, FirstMissingScopeAcrossRules) {
    AccessPolicy p({{kAnyMethod, {"folders:read"}}, {kAnyMethod, {"diagrams:write"}}}, {},
                   RequiredEnvironment::any);
    EXPECT_EQ(check(p, "live_noscope_key_001").missing_scope, "folders:read");
    EXPECT_EQ(check(p, "live_reader_key_0001").missing_scope, "diagrams:write");
    AccessPolicy q({{kAnyMethod, {"diagrams:write"}}, {kAnyMethod, {"folders:read"}}}, {},
                   RequiredEnvironment::any);
    EXPECT_EQ(check(q, "live_noscope_key_001").missing_scope, "diagrams:write");
}

TEST_F(AccessPolicyTest, ScopeNoKeyHasIsReportedByName) {
    AccessPolicy p({{kAnyMethod, {"billing:admin"}}}, {}, RequiredEnvironment::any);
    for (const char *k : {"live_reader_key_0001", "live_writer_key_0001", "live_noscope_key_001"}) {
        Verdict v = check(p, k);
        EXPECT_EQ(v.outcome, Outcome::insufficient_scope) << k;
        EXPECT_EQ(v.missing_scope, "billing:admin") << k;
    }
    // Known scopes that are held do not hide an unknown one after them ...
    AccessPolicy q({{kAnyMethod, {"diagrams:read", "billing:admin", "diagrams:write"}}}, {},
                   RequiredEnvironment::any);
    EXPECT_EQ(check(q, "live_writer_key_0001").missing_scope, "billing:admin");
    // ... and a missing known one before it is reported first.
    EXPECT_EQ(check(q, "live_noscope_key_001").missing_scope, "diagrams:read");
    AccessPolicy r({{kAnyMethod, {"diagrams:write", "billing:admin"}}}, {},
                   RequiredEnvironment::any);
    EXPECT_EQ(check(r, "live_reader_key_0001").missing_scope, "diagrams:write");
}

TEST_F(AccessPolicyTest, MissingScopeOutlivesTheRuleVector) {
    // missing_scope is a view; it must point at the policy's own copy.
    std::vector<ScopeRule> rules{{kAnyMethod, {std::string("diagrams:") + "write"}}};
    AccessPolicy p(std::move(rules), {}, RequiredEnvironment::any);
    rules.clear();
    Verdict v = check(p, "live_reader_key_0001");
    EXPECT_EQ(std::string(v.missing_scope), "diagrams:write");
}

// ---- A new table recompiles the policy.

TEST(AccessPolicyRecompile, NewTableWithOtherBitOrder) {
    // Table A interns alpha before beta (alpha = bit 0, plan_a = 0) ...
    TableBuilder ba;
    ba.add_key(key("key_alpha_000000001", "alpha", {"alpha"}, "plan_a"));
    ba.add_key(key("key_beta_0000000001", "beta", {"beta"}, "plan_b"));
    TableImage a_image = ba.build();
    KeyTable a = a_image.table();
    // ... table B the other way round.
    TableBuilder bb;
    bb.add_key(key("key_beta_0000000001", "beta", {"beta"}, "plan_b"));
    bb.add_key(key("key_alpha_000000001", "alpha", {"alpha"}, "plan_a"));
    TableImage b_image = bb.build();
    KeyTable b = b_image.table();
    ASSERT_EQ(a.find_scope("alpha"), 0);
    ASSERT_EQ(b.find_scope("alpha"), 1);
    ASSERT_EQ(a.find_plan("plan_a"), 0);
    ASSERT_EQ(b.find_plan("plan_a"), 1);
    ASSERT_NE(a.build_id(), b.build_id());

    AccessPolicy scopes({{kAnyMethod, {"alpha"}}}, {}, RequiredEnvironment::any);
    AccessPolicy plans({}, {"plan_a"}, RequiredEnvironment::any);
    for (int round = 0; round < 3; round++) {
        for (const KeyTable *t : {&a, &b}) {
            SCOPED_TRACE(t == &a ? "table A" : "table B");
            EXPECT_EQ(scopes.check(*t, "key_alpha_000000001", kGet, kNow).outcome,
                      Outcome::accepted);
            Verdict v = scopes.check(*t, "key_beta_0000000001", kGet, kNow);
            EXPECT_EQ(v.outcome, Outcome::insufficient_scope);
            EXPECT_EQ(v.missing_scope, "alpha");
            EXPECT_EQ(plans.check(*t, "key_alpha_000000001", kGet, kNow).outcome,
                      Outcome::accepted);
            EXPECT_EQ(plans.check(*t, "key_beta_0000000001", kGet, kNow).outcome,
                      Outcome::plan_required);
        }
    }
}

TEST(AccessPolicyRecompile, ScopeAppearsInALaterTable) {
    TableBuilder b1;
    b1.add_key(key("key_gamma_000000001", "gamma", {"other"}));
    TableImage i1 = b1.build();
    TableBuilder b2;
    b2.add_key(key("key_gamma_000000001", "gamma", {"other", "late"}));
    TableImage i2 = b2.build();

    AccessPolicy p({{kAnyMethod, {"late"}}}, {}, RequiredEnvironment::any);
    Verdict before = p.check(i1.table(), "key_gamma_000000001", kGet, kNow);
    EXPECT_EQ(before.outcome, Outcome::insufficient_scope);
    EXPECT_EQ(before.missing_scope, "late");
    EXPECT_EQ(p.check(i2.table(), "key_gamma_000000001", kGet, kNow).outcome, Outcome::accepted);
    // And goes away again.
    EXPECT_EQ(p.check(i1.table(), "key_gamma_000000001", kGet, kNow).outcome,
              Outcome::insufficient_scope);
}

TEST(AccessPolicyRecompile, RebuildOfTheSameFileStillWorks) {
    // The first table the policy sees only gives revoked verdicts (no compile
    // needed); the next one must still be compiled before use.
    TableBuilder b1;
    KeySpec revoked = key("key_delta_000000001", "delta", {"s"});
    revoked.revoked_at = 0;
    b1.add_key(revoked);
    TableImage i1 = b1.build();
    TableBuilder b2;
    b2.add_key(key("key_other_000000001", "other", {"t"}));
    b2.add_key(key("key_delta_000000001", "delta", {"s"}));
    TableImage i2 = b2.build();

    AccessPolicy p({{kAnyMethod, {"s"}}}, {}, RequiredEnvironment::any);
    EXPECT_EQ(p.check(i1.table(), "key_delta_000000001", kGet, kNow).outcome, Outcome::revoked_key);
    EXPECT_EQ(p.check(i2.table(), "key_delta_000000001", kGet, kNow).outcome, Outcome::accepted);
    Verdict v = p.check(i2.table(), "key_other_000000001", kGet, kNow);
    EXPECT_EQ(v.outcome, Outcome::insufficient_scope);
    EXPECT_EQ(v.missing_scope, "s");
}

TEST(AccessPolicyRecompile, ScopeBitsAboveSixtyFour) {
    // Scopes interned late land in the second word of the set.
    TableBuilder b;
    std::vector<std::string> filler;
    for (int i = 0; i < 100; i++) filler.push_back("filler_" + std::to_string(i));
    b.add_key(key("key_filler_00000001", "filler", filler));
    b.add_key(key("key_high_0000000001", "high", {"high:one", "high:two"}));
    b.add_key(key("key_half_0000000001", "half", {"high:one"}));
    TableImage image = b.build();
    KeyTable t = image.table();
    ASSERT_GE(t.find_scope("high:two"), 64);

    AccessPolicy p({{kAnyMethod, {"high:one", "high:two"}}}, {}, RequiredEnvironment::any);
    EXPECT_EQ(p.check(t, "key_high_0000000001", kGet, kNow).outcome, Outcome::accepted);
    Verdict half = p.check(t, "key_half_0000000001", kGet, kNow);
    EXPECT_EQ(half.outcome, Outcome::insufficient_scope);
    EXPECT_EQ(half.missing_scope, "high:two");
    Verdict filler_key = p.check(t, "key_filler_00000001", kGet, kNow);
    EXPECT_EQ(filler_key.missing_scope, "high:one");
}

// ---- allowed_ips: after environment and plan, before scopes

IpNetwork network(const std::string &text) {
    IpNetwork n{};
    std::string error;
    EXPECT_TRUE(parse_network(text, n, error)) << error;
    return n;
}

// A source that reads an address from its context and counts its reads.
int source_reads = 0;
ClientAddress read_counted(const void *context) noexcept {
    source_reads++;
    return *static_cast<const ClientAddress *>(context);
}

class AllowedIpsTest : public ::testing::Test {
protected:
    void SetUp() override {
        TableBuilder b;
        b.add_prefix(2, "live_", Environment::live);
        b.add_prefix(3, "test_", Environment::test);
        const std::vector<IpNetwork> office = {network("203.0.113.0/24"), network("2001:db8::/32"),
                                               network("198.51.100.7")};
        auto restricted = [&](KeySpec s) {
            s.allowed_ips = office;
            return s;
        };
        b.add_key(restricted(key("live_office_key_0001", "office", {"diagrams:read"}, "pro")));
        b.add_key(restricted(key("test_office_key_0001", "test_office", {"diagrams:read"}, "pro")));
        b.add_key(
            restricted(key("live_office_free_001", "office_free", {"diagrams:read"}, "free")));
        KeySpec expired = restricted(key("live_office_expired1", "office_expired", {}, "pro"));
        expired.expires_at = kNow - 1;
        b.add_key(expired);
        KeySpec revoked = restricted(key("live_office_revoked1", "office_revoked", {}, "pro"));
        revoked.revoked_at = kNow - 1;
        b.add_key(revoked);
        b.add_key(key("live_open_key_000001", "open", {"diagrams:read"}, "pro"));
        image_ = b.build();
        table_ = image_.table();
    }

    static ClientAddress v4(const char *text) {
        in_addr a{};
        EXPECT_EQ(inet_pton(AF_INET, text, &a), 1);
        return ClientAddress::ipv4(&a);
    }
    static ClientAddress v6(const char *text) {
        in6_addr a{};
        EXPECT_EQ(inet_pton(AF_INET6, text, &a), 1);
        return ClientAddress::ipv6(&a);
    }

    Verdict from(AccessPolicy &p, std::string_view k, const ClientAddress &client,
                 unsigned method = kGet) {
        return p.check(table_, k, method, kNow, ClientSource{read_counted, &client});
    }

    TableImage image_;
    KeyTable table_;
};

TEST_F(AllowedIpsTest, AcceptedOnlyFromTheListedNetworks) {
    AccessPolicy p = open_policy();
    for (const ClientAddress &inside : {v4("203.0.113.1"), v4("203.0.113.255"), v4("198.51.100.7"),
                                        v6("2001:db8::1"), v6("::ffff:203.0.113.9")}) {
        EXPECT_EQ(from(p, "live_office_key_0001", inside).outcome, Outcome::accepted);
    }
    for (const ClientAddress &outside : {v4("203.0.114.1"), v4("198.51.100.8"), v4("127.0.0.1"),
                                         v6("2001:db9::1"), v6("::1"), v6("::ffff:10.0.0.1")}) {
        const Verdict v = from(p, "live_office_key_0001", outside);
        EXPECT_EQ(v.outcome, Outcome::ip_not_allowed);
        ASSERT_NE(v.record, nullptr);  // found: $api_key_id and the usage counters name it
        EXPECT_EQ(table_.text(v.record->id), "office");
        EXPECT_TRUE(v.missing_scope.empty());
    }
}

TEST_F(AllowedIpsTest, AnUnknownAddressMatchesNothing) {
    AccessPolicy p = open_policy();
    EXPECT_EQ(p.check(table_, "live_office_key_0001", kGet, kNow).outcome, Outcome::ip_not_allowed);
    EXPECT_EQ(from(p, "live_office_key_0001", ClientAddress{}).outcome, Outcome::ip_not_allowed);
    EXPECT_EQ(p.check(table_, "live_open_key_000001", kGet, kNow).outcome, Outcome::accepted);
}

TEST_F(AllowedIpsTest, TheAddressIsReadOnlyForRestrictedKeys) {
    AccessPolicy p = open_policy();
    const ClientAddress somewhere = v4("192.0.2.1");
    source_reads = 0;
    EXPECT_EQ(from(p, "live_open_key_000001", somewhere).outcome, Outcome::accepted);
    EXPECT_EQ(from(p, "live_unknown_key_001", somewhere).outcome, Outcome::invalid_key);
    EXPECT_EQ(from(p, "live_office_expired1", somewhere).outcome, Outcome::expired_key);
    EXPECT_EQ(source_reads, 0);
    EXPECT_EQ(from(p, "live_office_key_0001", somewhere).outcome, Outcome::ip_not_allowed);
    EXPECT_EQ(source_reads, 1);
}

TEST_F(AllowedIpsTest, RevokedAndExpiredComeFirst) {
    AccessPolicy p = open_policy();
    EXPECT_EQ(from(p, "live_office_expired1", v4("192.0.2.1")).outcome, Outcome::expired_key);
    EXPECT_EQ(from(p, "live_office_revoked1", v4("192.0.2.1")).outcome, Outcome::revoked_key);
    EXPECT_EQ(from(p, "live_office_expired1", v4("203.0.113.1")).outcome, Outcome::expired_key);
}

TEST_F(AllowedIpsTest, EnvironmentAndPlanComeFirst) {
    AccessPolicy live({}, {}, RequiredEnvironment::live);
    EXPECT_EQ(from(live, "test_office_key_0001", v4("192.0.2.1")).outcome,
              Outcome::wrong_environment);
    AccessPolicy paid({}, {"pro"}, RequiredEnvironment::any);
    EXPECT_EQ(from(paid, "live_office_free_001", v4("192.0.2.1")).outcome, Outcome::plan_required);
    EXPECT_EQ(from(paid, "live_office_key_0001", v4("192.0.2.1")).outcome, Outcome::ip_not_allowed);
}

TEST_F(AllowedIpsTest, ComesBeforeScopes) {
    AccessPolicy p({{kAnyMethod, {"diagrams:write"}}}, {}, RequiredEnvironment::any);
    EXPECT_EQ(from(p, "live_office_key_0001", v4("192.0.2.1")).outcome, Outcome::ip_not_allowed);
    const Verdict v = from(p, "live_office_key_0001", v4("203.0.113.1"));
    EXPECT_EQ(v.outcome, Outcome::insufficient_scope);
    EXPECT_EQ(v.missing_scope, "diagrams:write");
    // Method-limited rules: the address is checked whatever the method.
    AccessPolicy writes({{kPost, {"diagrams:write"}}}, {}, RequiredEnvironment::any);
    EXPECT_EQ(from(writes, "live_office_key_0001", v4("192.0.2.1"), kGet).outcome,
              Outcome::ip_not_allowed);
}

// The client's address is not noted: a key with allowed_ips is checked on
// every request, even one its policy accepted before.
TEST_F(AllowedIpsTest, AnAcceptanceIsNeverNotedForARestrictedKey) {
    AccessPolicy p({}, {}, RequiredEnvironment::any, 1);
    const Verdict v = from(p, "live_office_key_0001", v4("203.0.113.1"));
    ASSERT_EQ(v.outcome, Outcome::accepted);
    MemoNote note;
    p.note_acceptance(note, kGet);
    EXPECT_FALSE(p.accepted_as_noted(note, *v.record, kGet, kNow));
    const Verdict open = from(p, "live_open_key_000001", v4("192.0.2.1"));
    ASSERT_EQ(open.outcome, Outcome::accepted);
    EXPECT_TRUE(p.accepted_as_noted(note, *open.record, kGet, kNow));
}

TEST_F(AllowedIpsTest, CheckDigestTakesTheSourceToo) {
    AccessPolicy p = open_policy();
    const Identity id = identify_key(table_, "live_office_key_0001");
    ASSERT_EQ(id.outcome, Outcome::accepted);
    const ClientAddress inside = v4("203.0.113.5");
    const ClientAddress outside = v4("203.0.112.5");
    EXPECT_EQ(p.check_digest(table_, id.digest, id.environment, kGet, kNow,
                             ClientSource{read_counted, &inside})
                  .outcome,
              Outcome::accepted);
    EXPECT_EQ(p.check_digest(table_, id.digest, id.environment, kGet, kNow,
                             ClientSource{read_counted, &outside})
                  .outcome,
              Outcome::ip_not_allowed);
}

}  // namespace
}  // namespace apikey
