// The compiled key table (key_table.h) and how it is built (table_builder.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/key_table.h"
#include "core/table_builder.h"

namespace apikey {
namespace {

KeySpec spec(std::uint32_t line, const std::string &key, const std::string &id,
             std::vector<std::string> scopes = {}) {
    KeySpec s;
    s.line = line;
    s.hash = sha256(key);
    s.id = id;
    s.owner = "owner_of_" + id;
    s.scopes = std::move(scopes);
    return s;
}

TEST(ScopeSet, SetTestAndContainsAcrossBothWords) {
    ScopeSet s{};
    for (unsigned bit : {0u, 5u, 63u, 64u, 100u, 127u}) s.set(bit);
    for (unsigned bit = 0; bit < 128; bit++) {
        const bool expected = bit == 0 || bit == 5 || bit == 63 || bit == 64 || bit == 100 ||
                              bit == 127;
        EXPECT_EQ(s.test(bit), expected) << bit;
    }
    ScopeSet need{};
    need.set(63);
    need.set(127);
    EXPECT_TRUE(s.contains_all(need));
    need.set(126);
    EXPECT_FALSE(s.contains_all(need));
    ScopeSet low_only{};
    low_only.set(1);
    EXPECT_FALSE(s.contains_all(low_only));
    EXPECT_TRUE(s.contains_all(ScopeSet{}));
    ScopeSet high{};
    high.set(65);
    EXPECT_FALSE(s.contains_all(high));
}

TEST(EnvironmentName, Names) {
    EXPECT_EQ(environment_name(Environment::live), "live");
    EXPECT_EQ(environment_name(Environment::test), "test");
    EXPECT_EQ(environment_name(Environment::none), "");
}

TEST(KeyTable, DefaultViewIsInvalid) {
    KeyTable t;
    EXPECT_FALSE(t.valid());
}

TEST(KeyTable, EmptyTable) {
    TableBuilder b;
    TableImage image = b.build();
    KeyTable t = image.table();
    ASSERT_TRUE(t.valid());
    EXPECT_EQ(t.key_count(), 0u);
    EXPECT_EQ(t.scope_count(), 0u);
    EXPECT_EQ(t.plan_count(), 0u);
    EXPECT_EQ(t.find(sha256("anything_at_all_123")), nullptr);
    EXPECT_EQ(t.find_scope("read"), -1);
    EXPECT_EQ(t.find_plan("pro"), -1);
    EXPECT_EQ(t.header().image_size, image.size());
    EXPECT_EQ(image.size() % 8, 0u);
}

TEST(KeyTable, FindsEachKeyAndReadsItsFields) {
    TableBuilder b;
    KeySpec a = spec(4, "jfi_sk_live_aaaaaaaaaaaaaaaa", "key_a", {"diagrams:read", "folders:read"});
    a.organization = "org_7";
    a.plan = "pro";
    a.created_at = 1793491200;
    a.expires_at = 1801267200;
    a.revoked_at = 1795168800;
    a.limits = {{"write", Rate{500, 60}}, {"read", Rate{1000, 60}}};
    KeySpec c = spec(14, "jfi_sk_test_cccccccccccccccc", "key_c", {"diagrams:write"});
    c.plan = "free";
    KeySpec d = spec(20, "wfk_dddddddddddddddddddd", "key_d");
    d.owner = a.owner;  // the same owner twice
    d.organization = "org_7";
    d.plan = "pro";
    b.add_key(a);
    b.add_key(c);
    b.add_key(d);
    TableImage image = b.build();
    KeyTable t = image.table();
    ASSERT_TRUE(t.valid());
    EXPECT_EQ(t.key_count(), 3u);

    const KeyRecord *ra = t.find(sha256("jfi_sk_live_aaaaaaaaaaaaaaaa"));
    const KeyRecord *rc = t.find(sha256("jfi_sk_test_cccccccccccccccc"));
    const KeyRecord *rd = t.find(sha256("wfk_dddddddddddddddddddd"));
    ASSERT_NE(ra, nullptr);
    ASSERT_NE(rc, nullptr);
    ASSERT_NE(rd, nullptr);
    EXPECT_NE(ra, rc);
    EXPECT_NE(rc, rd);

    EXPECT_EQ(t.text(ra->id), "key_a");
    EXPECT_EQ(t.text(ra->owner), "owner_of_key_a");
    EXPECT_EQ(t.text(ra->organization), "org_7");
    EXPECT_EQ(t.plan_name(ra->plan), "pro");
    EXPECT_EQ(ra->hash, sha256("jfi_sk_live_aaaaaaaaaaaaaaaa"));
    EXPECT_EQ(ra->created_at(), 1793491200);
    EXPECT_EQ(ra->expires_at(), 1801267200);
    EXPECT_EQ(ra->revoked_at(), 1795168800);

    EXPECT_EQ(t.text(rc->id), "key_c");
    EXPECT_EQ(t.text(rc->owner), "owner_of_key_c");
    EXPECT_EQ(t.text(rc->organization), "");  // personal key
    EXPECT_TRUE(rc->organization.empty());
    EXPECT_EQ(t.plan_name(rc->plan), "free");
    EXPECT_EQ(rc->created_at(), kUnknownTime);
    EXPECT_EQ(rc->expires_at(), kNever);
    EXPECT_EQ(rc->revoked_at(), kNever);

    EXPECT_EQ(t.text(rd->id), "key_d");
    EXPECT_EQ(t.text(rd->owner), "owner_of_key_a");
    EXPECT_EQ(t.text(rd->organization), "org_7");
    EXPECT_EQ(rd->plan, ra->plan);  // plans are interned too
    EXPECT_EQ(t.scopes(*rd).words[0], 0u);
    EXPECT_EQ(t.scopes(*rd).words[1], 0u);

    // Records and their indexes.
    for (std::uint32_t i = 0; i < t.key_count(); i++) EXPECT_EQ(t.index_of(t.record(i)), i);
    EXPECT_EQ(&t.record(t.index_of(*rc)), rc);

    // Plans by name.
    EXPECT_EQ(t.plan_count(), 2u);
    ASSERT_GE(t.find_plan("pro"), 0);
    EXPECT_EQ(t.find_plan("pro"), ra->plan);
    EXPECT_EQ(t.find_plan("free"), rc->plan);
    EXPECT_EQ(t.find_plan("enterprise"), -1);
}

TEST(KeyTable, NoPlanReadsAsEmpty) {
    TableBuilder b;
    b.add_key(spec(3, "some_key_0123456789", "k"));
    TableImage image = b.build();
    KeyTable t = image.table();
    const KeyRecord *r = t.find(sha256("some_key_0123456789"));
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r->plan, kNoPlan);
    EXPECT_EQ(t.plan_name(r->plan), "");
}

TEST(KeyTable, UnknownDigestIsNull) {
    TableBuilder b;
    b.add_key(spec(3, "known_key_0123456789", "k1"));
    b.add_key(spec(9, "known_key_0123456780", "k2"));
    TableImage image = b.build();
    KeyTable t = image.table();
    EXPECT_EQ(t.find(sha256("known_key_012345678")), nullptr);
    EXPECT_EQ(t.find(sha256("known_key_01234567890")), nullptr);
    EXPECT_EQ(t.find(sha256("KNOWN_KEY_0123456789")), nullptr);
    EXPECT_EQ(t.find(Digest{}), nullptr);
    // Same first 8 bytes (same bucket), different tail.
    Digest near = sha256("known_key_0123456789");
    near[31] ^= 1;
    EXPECT_EQ(t.find(near), nullptr);
}

TEST(KeyTable, ScopesAreInternedToOneBitEach) {
    TableBuilder b;
    b.add_key(spec(3, "key_one_0123456789", "one", {"diagrams:read", "folders:read"}));
    b.add_key(spec(9, "key_two_0123456789", "two", {"folders:read", "diagrams:write"}));
    b.add_key(spec(15, "key_three_012345678", "three", {"diagrams:read", "diagrams:read"}));
    TableImage image = b.build();
    KeyTable t = image.table();
    ASSERT_EQ(t.scope_count(), 3u);

    const int read = t.find_scope("diagrams:read");
    const int folders = t.find_scope("folders:read");
    const int write = t.find_scope("diagrams:write");
    ASSERT_GE(read, 0);
    ASSERT_GE(folders, 0);
    ASSERT_GE(write, 0);
    EXPECT_EQ(std::set<int>({read, folders, write}).size(), 3u);
    EXPECT_EQ(t.find_scope("diagrams"), -1);
    EXPECT_EQ(t.find_scope("Diagrams:read"), -1);
    EXPECT_EQ(t.scope_name(static_cast<std::uint32_t>(read)), "diagrams:read");
    EXPECT_EQ(t.scope_name(static_cast<std::uint32_t>(write)), "diagrams:write");

    const KeyRecord *one = t.find(sha256("key_one_0123456789"));
    const KeyRecord *two = t.find(sha256("key_two_0123456789"));
    const KeyRecord *three = t.find(sha256("key_three_012345678"));
    ASSERT_TRUE(one && two && three);
    auto bits = [&t](const KeyRecord *r) {
        std::set<unsigned> s;
        for (unsigned i = 0; i < kMaxScopes; i++) {
            if (t.scopes(*r).test(i)) s.insert(i);
        }
        return s;
    };
    const auto u = [](int v) { return static_cast<unsigned>(v); };
    EXPECT_EQ(bits(one), (std::set<unsigned>{u(read), u(folders)}));
    EXPECT_EQ(bits(two), (std::set<unsigned>{u(folders), u(write)}));  // the same folders bit
    EXPECT_EQ(bits(three), (std::set<unsigned>{u(read)}));
}

TEST(KeyTable, ExactlyMaxScopesIsFine) {
    TableBuilder b;
    std::vector<std::string> scopes;
    for (std::size_t i = 0; i < kMaxScopes; i++) scopes.push_back("scope_" + std::to_string(i));
    b.add_key(spec(3, "key_all_scopes_0123", "all", scopes));
    TableImage image = b.build();
    KeyTable t = image.table();
    EXPECT_EQ(t.scope_count(), kMaxScopes);
    const KeyRecord *r = t.find(sha256("key_all_scopes_0123"));
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(t.scopes(*r).words[0], ~std::uint64_t{0});
    EXPECT_EQ(t.scopes(*r).words[1], ~std::uint64_t{0});
    EXPECT_EQ(t.scope_name(static_cast<std::uint32_t>(t.find_scope("scope_127"))), "scope_127");
}

TEST(KeyTable, MoreThanMaxScopesIsAnErrorOnTheLineThatAddsIt) {
    TableBuilder b;
    std::vector<std::string> first, second;
    for (int i = 0; i < 100; i++) first.push_back("s" + std::to_string(i));
    for (int i = 50; i < 128; i++) second.push_back("s" + std::to_string(i));  // 128 in total
    b.add_key(spec(3, "key_first_0123456789", "first", first));
    b.add_key(spec(10, "key_second_012345678", "second", second));
    try {
        b.add_key(spec(17, "key_third_0123456789", "third", {"s1", "s129"}));
        FAIL() << "a 129th distinct scope was accepted";
    } catch (const KeyFileError &e) {
        EXPECT_EQ(e.line(), 17u);
        EXPECT_NE(std::string(e.what()).find("128"), std::string::npos) << e.what();
    }
}

TEST(KeyTable, MoreThanMaxPlansIsAnError) {
    TableBuilder b;
    for (std::size_t i = 0; i < kMaxPlans; i++) {
        KeySpec s = spec(static_cast<std::uint32_t>(i + 1),
                         "plan_key_" + std::to_string(i) + "_0123456789", "k" + std::to_string(i));
        s.plan = "plan_" + std::to_string(i);
        b.add_key(s);
    }
    KeySpec extra = spec(999, "plan_key_extra_0123456789", "extra");
    extra.plan = "plan_one_too_many";
    try {
        b.add_key(extra);
        FAIL() << "a 65th plan was accepted";
    } catch (const KeyFileError &e) {
        EXPECT_EQ(e.line(), 999u);
    }
}

TEST(KeyTable, SixtyFourPlansAllReadable) {
    TableBuilder b;
    for (std::size_t i = 0; i < kMaxPlans; i++) {
        KeySpec s = spec(1, "plan_key_" + std::to_string(i) + "_0123456789",
                         "k" + std::to_string(i));
        s.plan = "plan_" + std::to_string(i);
        b.add_key(s);
    }
    TableImage image = b.build();
    KeyTable t = image.table();
    ASSERT_EQ(t.plan_count(), kMaxPlans);
    for (std::size_t i = 0; i < kMaxPlans; i++) {
        const KeyRecord *r = t.find(sha256("plan_key_" + std::to_string(i) + "_0123456789"));
        ASSERT_NE(r, nullptr);
        EXPECT_EQ(t.plan_name(r->plan), "plan_" + std::to_string(i));
    }
}

TEST(KeyTable, LimitOverridesAreReadable) {
    TableBuilder b;
    KeySpec a = spec(3, "limited_key_0123456789", "limited");
    a.limits = {{"write", Rate{500, 60}}, {"execute", Rate{20, 1}}, {"read", Rate{10000, 3600}}};
    KeySpec z = spec(12, "unlimited_key_012345678", "unlimited");
    KeySpec w = spec(20, "other_limited_key_0123", "other");
    w.limits = {{"write", Rate{7, 1}}};
    b.add_key(a);
    b.add_key(z);
    b.add_key(w);
    TableImage image = b.build();
    KeyTable t = image.table();

    const KeyRecord *ra = t.find(sha256("limited_key_0123456789"));
    ASSERT_NE(ra, nullptr);
    ASSERT_EQ(ra->limits_count, 3u);
    const LimitOverride *l = t.limits(*ra);
    EXPECT_EQ(t.text(l[0].category), "write");
    EXPECT_EQ(l[0].count, 500u);
    EXPECT_EQ(l[0].period_seconds, 60u);
    EXPECT_EQ(t.text(l[1].category), "execute");
    EXPECT_EQ(l[1].count, 20u);
    EXPECT_EQ(l[1].period_seconds, 1u);
    EXPECT_EQ(t.text(l[2].category), "read");
    EXPECT_EQ(l[2].count, 10000u);
    EXPECT_EQ(l[2].period_seconds, 3600u);

    const KeyRecord *rz = t.find(sha256("unlimited_key_012345678"));
    ASSERT_NE(rz, nullptr);
    EXPECT_EQ(rz->limits_count, 0u);

    const KeyRecord *rw = t.find(sha256("other_limited_key_0123"));
    ASSERT_NE(rw, nullptr);
    ASSERT_EQ(rw->limits_count, 1u);
    EXPECT_EQ(t.text(t.limits(*rw)[0].category), "write");
    EXPECT_EQ(t.limits(*rw)[0].count, 7u);
    EXPECT_EQ(t.limits(*rw)[0].period_seconds, 1u);
    EXPECT_EQ(t.header().limit_count, 4u);
}

TEST(KeyTable, LongestPrefixWins) {
    TableBuilder b;
    b.add_prefix(2, "wfk_", Environment::live);
    b.add_prefix(3, "wfk_test_", Environment::test);
    b.add_prefix(4, "jfi_sk_test_", Environment::test);
    b.add_prefix(5, "jfi_sk_", Environment::live);  // shorter one declared after the longer
    TableImage image = b.build();
    KeyTable t = image.table();
    ASSERT_EQ(t.prefix_count(), 4u);

    Environment env = Environment::none;
    EXPECT_TRUE(t.environment_of("wfk_test_0123456789", env));
    EXPECT_EQ(env, Environment::test);
    EXPECT_TRUE(t.environment_of("wfk_0123456789abcdef", env));
    EXPECT_EQ(env, Environment::live);
    EXPECT_TRUE(t.environment_of("wfk_tes_0123456789", env));
    EXPECT_EQ(env, Environment::live);
    EXPECT_TRUE(t.environment_of("jfi_sk_test_0123456789", env));
    EXPECT_EQ(env, Environment::test);
    EXPECT_TRUE(t.environment_of("jfi_sk_live_0123456789", env));
    EXPECT_EQ(env, Environment::live);
    EXPECT_TRUE(t.environment_of("wfk_", env));  // the key may be just the prefix
    EXPECT_EQ(env, Environment::live);

    EXPECT_FALSE(t.environment_of("xyz_0123456789abcdef", env));
    EXPECT_FALSE(t.environment_of("wf", env));
    EXPECT_FALSE(t.environment_of("WFK_0123456789abcdef", env));
    EXPECT_FALSE(t.environment_of("", env));

    EXPECT_EQ(t.text(t.prefix(1).text), "wfk_test_");
    EXPECT_EQ(t.prefix(1).environment, Environment::test);
}

TEST(KeyTable, NoPrefixesMeansNoEnvironmentAndAnyKey) {
    TableBuilder b;
    b.add_key(spec(3, "key_0123456789abcdef", "k"));
    TableImage image = b.build();
    KeyTable t = image.table();
    Environment env = Environment::live;
    EXPECT_TRUE(t.environment_of("anything_at_all_0123", env));
    EXPECT_EQ(env, Environment::none);
    env = Environment::test;
    EXPECT_TRUE(t.environment_of("", env));
    EXPECT_EQ(env, Environment::none);
}

TEST(TableBuilder, DuplicatePrefixIsAnError) {
    TableBuilder b;
    b.add_prefix(2, "wfk_", Environment::live);
    try {
        b.add_prefix(5, "wfk_", Environment::test);
        FAIL() << "duplicate prefix accepted";
    } catch (const KeyFileError &e) {
        EXPECT_EQ(e.line(), 5u);
        EXPECT_NE(std::string(e.what()).find("\"wfk_\""), std::string::npos) << e.what();
    }
}

TEST(TableBuilder, DuplicateIdNamesBothLines) {
    TableBuilder b;
    b.add_key(spec(4, "first_key_0123456789", "key_dup"));
    b.add_key(spec(12, "middle_key_012345678", "key_other"));
    b.add_key(spec(20, "second_key_012345678", "key_dup"));
    try {
        b.build();
        FAIL() << "duplicate id accepted";
    } catch (const KeyFileError &e) {
        EXPECT_EQ(e.line(), 20u);
        const std::string what = e.what();
        EXPECT_NE(what.find("duplicate id \"key_dup\""), std::string::npos) << what;
        EXPECT_NE(what.find("first at line 4"), std::string::npos) << what;
    }
}

TEST(TableBuilder, DuplicateHashNamesBothLines) {
    TableBuilder b;
    b.add_key(spec(4, "same_key_0123456789", "a"));
    b.add_key(spec(12, "other_key_012345678", "b"));
    b.add_key(spec(20, "same_key_0123456789", "c"));
    try {
        b.build();
        FAIL() << "duplicate hash accepted";
    } catch (const KeyFileError &e) {
        EXPECT_EQ(e.line(), 20u);
        const std::string what = e.what();
        EXPECT_NE(what.find("duplicate hash"), std::string::npos) << what;
        EXPECT_NE(what.find("first at line 4"), std::string::npos) << what;
    }
}

TEST(TableBuilder, EveryBuildHasItsOwnId) {
    std::set<std::uint64_t> ids;
    std::vector<TableImage> images;
    for (int i = 0; i < 50; i++) {
        TableBuilder b;
        b.add_key(spec(1, "key_0123456789abcdef", "k"));
        images.push_back(b.build());
        ids.insert(images.back().table().build_id());
    }
    EXPECT_EQ(ids.size(), 50u);
    EXPECT_EQ(ids.count(0), 0u);
}

TEST(TableImage, IsPositionIndependent) {
    // The same bytes at another address (as in a shared memory zone) work.
    TableBuilder b;
    b.add_prefix(2, "wfk_", Environment::live);
    KeySpec s = spec(5, "wfk_0123456789abcdef", "key_moved", {"read", "write"});
    s.plan = "pro";
    s.limits = {{"write", Rate{5, 1}}};
    b.add_key(s);
    std::vector<std::uint64_t> copy;
    {
        TableImage image = b.build();
        copy.resize(image.size() / 8);
        std::memcpy(copy.data(), image.data(), image.size());
    }  // the original is gone
    KeyTable t(copy.data());
    ASSERT_TRUE(t.valid());
    const KeyRecord *r = t.find(sha256("wfk_0123456789abcdef"));
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(t.text(r->id), "key_moved");
    EXPECT_EQ(t.plan_name(r->plan), "pro");
    EXPECT_GE(t.find_scope("write"), 0);
    EXPECT_TRUE(t.scopes(*r).test(static_cast<unsigned>(t.find_scope("write"))));
    EXPECT_EQ(t.text(t.limits(*r)[0].category), "write");
    Environment env;
    EXPECT_TRUE(t.environment_of("wfk_0123456789abcdef", env));
    EXPECT_EQ(env, Environment::live);
}

IpNetwork network(const std::string &text) {
    IpNetwork n{};
    std::string error;
    EXPECT_TRUE(parse_network(text, n, error)) << error;
    return n;
}

TEST(KeyTable, AllowedIpsFollowTheirKeysId) {
    TableBuilder b;
    KeySpec a = spec(3, "restricted_key_0123456", "restricted", {"read"});
    a.allowed_ips = {network("203.0.113.0/24"), network("2001:db8::/32")};
    a.plan = "pro";
    a.limits = {{"write", Rate{5, 1}}};
    KeySpec z = spec(9, "open_key_0123456789abc", "open", {"read"});
    z.plan = "pro";
    KeySpec w = spec(15, "wide_key_0123456789abc", "wide");
    for (int i = 0; i < 64; i++)
        w.allowed_ips.push_back(network("10." + std::to_string(i) + ".0.0/16"));
    w.owner = a.owner;  // interned after the networks: must still read back
    b.add_key(a);
    b.add_key(z);
    b.add_key(w);
    TableImage image = b.build();
    KeyTable t = image.table();
    ASSERT_TRUE(t.valid());

    const KeyRecord *ra = t.find(sha256("restricted_key_0123456"));
    const KeyRecord *rz = t.find(sha256("open_key_0123456789abc"));
    const KeyRecord *rw = t.find(sha256("wide_key_0123456789abc"));
    ASSERT_TRUE(ra && rz && rw);
    ASSERT_EQ(ra->networks, 2u);
    EXPECT_EQ(t.networks(*ra)[0], a.allowed_ips[0]);
    EXPECT_EQ(t.networks(*ra)[1], a.allowed_ips[1]);
    EXPECT_EQ(rz->networks, 0u);
    ASSERT_EQ(rw->networks, 64u);
    for (int i = 0; i < 64; i++) EXPECT_EQ(t.networks(*rw)[i], w.allowed_ips[i]) << i;
    // Everything else of the records reads as before.
    EXPECT_EQ(t.text(ra->id), "restricted");
    EXPECT_EQ(t.text(rz->id), "open");
    EXPECT_EQ(t.text(rw->id), "wide");
    EXPECT_EQ(t.text(ra->owner), a.owner);
    EXPECT_EQ(t.text(rw->owner), a.owner);
    EXPECT_EQ(t.plan_name(ra->plan), "pro");
    EXPECT_EQ(t.plan_name(rz->plan), "pro");
    EXPECT_EQ(rw->plan, kNoPlan);
    EXPECT_EQ(t.text(t.limits(*ra)[0].category), "write");
    EXPECT_TRUE(t.scopes(*ra).test(static_cast<unsigned>(t.find_scope("read"))));
}

TEST(KeyTable, KeysWithoutAllowedIpsCostNoByte) {
    // The same keys with and without networks: the image grows by the
    // networks' 17 bytes each (and alignment), nothing per key.
    auto build = [](std::size_t networks) {
        TableBuilder b;
        for (int i = 0; i < 100; i++) {
            KeySpec s = spec(static_cast<std::uint32_t>(i + 1), "key_" + std::to_string(i) + "_pad",
                             "id_" + std::to_string(i));
            if (i == 50) {
                for (std::size_t n = 0; n < networks; n++)
                    s.allowed_ips.push_back(network("10.0." + std::to_string(n) + ".0/24"));
            }
            b.add_key(s);
        }
        return b.build();
    };
    const TableImage none = build(0);
    const TableImage three = build(3);
    // The string area is the image's last part, padded to 8 bytes: its
    // padding may take up to 7 of the 51 bytes or add up to 7.
    EXPECT_GT(three.size() - none.size() + 8, 3 * sizeof(IpNetwork));
    EXPECT_LT(three.size() - none.size(), 3 * sizeof(IpNetwork) + 8);
    EXPECT_EQ(three.table().header().strings_off, none.table().header().strings_off);
    EXPECT_EQ(sizeof(KeyRecord), 72u);
}

TEST(TableBuilder, MoreThanSixtyFourNetworksIsAnError) {
    TableBuilder b;
    KeySpec s = spec(7, "too_many_networks_0123", "too_many");
    for (int i = 0; i < 65; i++)
        s.allowed_ips.push_back(network("10.0." + std::to_string(i) + ".0/24"));
    try {
        b.add_key(s);
        FAIL() << "65 networks accepted";
    } catch (const KeyFileError &e) {
        EXPECT_EQ(e.line(), 7u);
        EXPECT_NE(std::string(e.what()).find("more than 64 networks"), std::string::npos);
    }
}

TEST(TableImage, NetworksArePositionIndependentToo) {
    TableBuilder b;
    KeySpec s = spec(5, "wfk_0123456789abcdef", "key_moved");
    s.allowed_ips = {network("198.51.100.7"), network("::1")};
    b.add_key(s);
    std::vector<std::uint64_t> copy;
    {
        TableImage image = b.build();
        copy.resize(image.size() / 8);
        std::memcpy(copy.data(), image.data(), image.size());
    }
    KeyTable t(copy.data());
    const KeyRecord *r = t.find(sha256("wfk_0123456789abcdef"));
    ASSERT_NE(r, nullptr);
    ASSERT_EQ(r->networks, 2u);
    EXPECT_EQ(format_network(t.networks(*r)[0]), "198.51.100.7");
    EXPECT_EQ(format_network(t.networks(*r)[1]), "::1");
}

TEST(KeyTable, CorruptMagicIsInvalid) {
    TableBuilder b;
    TableImage image = b.build();
    std::vector<std::uint64_t> copy(image.size() / 8);
    std::memcpy(copy.data(), image.data(), image.size());
    ASSERT_TRUE(KeyTable(copy.data()).valid());
    reinterpret_cast<TableHeader *>(copy.data())->magic ^= 1;
    EXPECT_FALSE(KeyTable(copy.data()).valid());
    reinterpret_cast<TableHeader *>(copy.data())->magic ^= 1;
    reinterpret_cast<TableHeader *>(copy.data())->layout_version = kTableLayoutVersion + 1;
    EXPECT_FALSE(KeyTable(copy.data()).valid());
}

TEST(KeyTable, TenThousandKeys) {
    constexpr int kKeys = 10000;
    auto key_of = [](int i) { return "wfk_live_key_" + std::to_string(i) + "_padding"; };
    TableBuilder b;
    for (int i = 0; i < kKeys; i++) {
        KeySpec s = spec(static_cast<std::uint32_t>(i + 1), key_of(i), "key_" + std::to_string(i));
        s.owner = "owner_" + std::to_string(i % 97);
        b.add_key(s);
    }
    TableImage image = b.build();
    KeyTable t = image.table();
    ASSERT_EQ(t.key_count(), static_cast<std::uint32_t>(kKeys));
    // A lookup reads few records: two keys a bucket on average, and no
    // bucket holds many (the digests are uniform); each key in its bucket.
    const std::uint32_t buckets = t.header().bucket_count;
    EXPECT_GE(2u * buckets, static_cast<std::uint32_t>(kKeys));
    const auto *starts = reinterpret_cast<const std::uint32_t *>(
        static_cast<const unsigned char *>(image.data()) + t.header().buckets_off);
    EXPECT_EQ(starts[0], 0u);
    EXPECT_EQ(starts[buckets], static_cast<std::uint32_t>(kKeys));
    std::uint32_t largest = 0;
    for (std::uint32_t b = 0; b < buckets; b++) {
        ASSERT_LE(starts[b], starts[b + 1]);
        largest = std::max(largest, starts[b + 1] - starts[b]);
        for (std::uint32_t i = starts[b]; i < starts[b + 1]; i++)
            ASSERT_EQ(bucket_of(t.record(i).hash, buckets), b) << i;
    }
    EXPECT_LE(largest, 12u);

    for (int i = 0; i < kKeys; i++) {
        const KeyRecord *r = t.find(sha256(key_of(i)));
        ASSERT_NE(r, nullptr) << i;
        ASSERT_EQ(t.text(r->id), "key_" + std::to_string(i));
        ASSERT_EQ(t.text(r->owner), "owner_" + std::to_string(i % 97));
    }
    std::mt19937_64 rng(99);
    for (int i = 0; i < kKeys; i++) {
        const std::string other = "wfk_random_" + std::to_string(rng());
        ASSERT_EQ(t.find(sha256(other)), nullptr) << other;
    }
    for (int i = kKeys; i < kKeys + 1000; i++) {
        ASSERT_EQ(t.find(sha256(key_of(i))), nullptr) << i;
    }
}

TEST(KeyTable, KeysSharingTheirFirstEightBytesAreToldApart) {
    // Same bucket (the first 8 bytes decide it), different tails.
    TableBuilder b;
    Digest base = sha256("shared_prefix_0123456789");
    for (int i = 0; i < 5; i++) {
        KeySpec s = spec(static_cast<std::uint32_t>(i + 1), "unused", "k" + std::to_string(i));
        s.hash = base;
        s.hash[31] = static_cast<std::uint8_t>(i);
        s.hash[20] = static_cast<std::uint8_t>(7 * i);
        b.add_key(s);
    }
    TableImage image = b.build();
    KeyTable t = image.table();
    for (int i = 0; i < 5; i++) {
        Digest d = base;
        d[31] = static_cast<std::uint8_t>(i);
        d[20] = static_cast<std::uint8_t>(7 * i);
        const KeyRecord *r = t.find(d);
        ASSERT_NE(r, nullptr) << i;
        EXPECT_EQ(t.text(r->id), "k" + std::to_string(i));
    }
    Digest other = base;
    other[31] = 9;
    EXPECT_EQ(t.find(other), nullptr);
}

TEST(KeyTable, ScopeSetsAreStoredOncePerDistinctSet) {
    TableBuilder b;
    const std::vector<std::vector<std::string>> sets = {
        {"read"}, {"read", "write"}, {}, {"write", "read"}, {"admin"}};
    for (int i = 0; i < 1000; i++) {
        b.add_key(spec(static_cast<std::uint32_t>(i + 1), "scoped_key_" + std::to_string(i),
                       "k" + std::to_string(i), sets[static_cast<std::size_t>(i * 7 % 5)]));
    }
    TableImage image = b.build();
    KeyTable t = image.table();
    // {read, write} and {write, read} are one set.
    EXPECT_EQ(t.scope_set_count(), 4u);
    const unsigned read = static_cast<unsigned>(t.find_scope("read"));
    const unsigned write = static_cast<unsigned>(t.find_scope("write"));
    const unsigned admin = static_cast<unsigned>(t.find_scope("admin"));
    for (int i = 0; i < 1000; i++) {
        const KeyRecord *r = t.find(sha256("scoped_key_" + std::to_string(i)));
        ASSERT_NE(r, nullptr);
        const auto &want = sets[static_cast<std::size_t>(i * 7 % 5)];
        auto has = [&want](const char *name) {
            return std::find(want.begin(), want.end(), name) != want.end();
        };
        const ScopeSet &got = t.scopes(*r);
        ASSERT_EQ(got.test(read), has("read")) << i;
        ASSERT_EQ(got.test(write), has("write")) << i;
        ASSERT_EQ(got.test(admin), has("admin")) << i;
    }
}

TEST(KeyTable, TimesKeepEverySecondFrom1970To9999) {
    constexpr std::int64_t kLast = 253402300799;  // 9999-12-31T23:59:59Z
    TableBuilder b;
    KeySpec a = spec(1, "time_key_a_0123456789", "a");
    a.created_at = 0;
    a.expires_at = kLast;
    a.revoked_at = 1;
    KeySpec z = spec(5, "time_key_z_0123456789", "z");
    z.expires_at = PackedTime::kMax;
    b.add_key(a);
    b.add_key(z);
    TableImage image = b.build();
    KeyTable t = image.table();
    const KeyRecord *ra = t.find(sha256("time_key_a_0123456789"));
    const KeyRecord *rz = t.find(sha256("time_key_z_0123456789"));
    ASSERT_TRUE(ra && rz);
    EXPECT_EQ(ra->created_at(), 0);
    EXPECT_EQ(ra->expires_at(), kLast);
    EXPECT_EQ(ra->revoked_at(), 1);
    EXPECT_EQ(rz->created_at(), kUnknownTime);
    EXPECT_EQ(rz->expires_at(), PackedTime::kMax);
    EXPECT_EQ(rz->revoked_at(), kNever);
}

TEST(TableBuilder, TimesATableCannotHoldAreRefused) {
    // The reader never makes them; a KeySpec from elsewhere is refused rather
    // than stored as another time.
    for (std::int64_t bad : {std::int64_t{-1}, PackedTime::kMax + 1, kUnknownTime}) {
        TableBuilder b;
        KeySpec s = spec(42, "time_key_0123456789", "k");
        s.revoked_at = bad;
        try {
            b.add_key(s);
            ADD_FAILURE() << bad << " accepted";
        } catch (const KeyFileError &e) {
            EXPECT_EQ(e.line(), 42u);
            EXPECT_NE(std::string(e.what()).find("\"revoked_at\" is out of range"),
                      std::string::npos)
                << e.what();
        }
    }
}

TEST(TableBuilder, NamesOfMoreThan255BytesAreRefused) {
    TableBuilder b;
    KeySpec ok = spec(3, "long_name_key_0123456789", std::string(255, 'i'));
    ok.owner = std::string(255, 'o');
    b.add_key(ok);
    KeySpec s = spec(8, "long_name_key_9876543210", "k");
    s.owner = std::string(256, 'o');
    try {
        b.add_key(s);
        FAIL() << "a 256-byte owner accepted";
    } catch (const KeyFileError &e) {
        EXPECT_EQ(e.line(), 8u);
    }
    TableImage image = b.build();
    KeyTable t = image.table();
    const KeyRecord *r = t.find(sha256("long_name_key_0123456789"));
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(t.text(r->id), std::string(255, 'i'));
    EXPECT_EQ(t.text(r->owner), std::string(255, 'o'));
}

}  // namespace
}  // namespace apikey
