// Configuration-time rules (config_rules.h) and the per-key-zone budgets of
// limit_policy.h.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "core/config_rules.h"
#include "core/counter_table.h"
#include "core/limit_policy.h"

namespace apikey {
namespace {

TEST(ConfigRules, IdentifiersArePrintableAsciiWithoutQuotesOrBlanks) {
    EXPECT_TRUE(is_identifier("diagrams:read"));
    EXPECT_TRUE(is_identifier(std::string(128, 'a')));
    EXPECT_FALSE(is_identifier(std::string(129, 'a')));
    EXPECT_FALSE(is_identifier(""));
    for (const char *bad : {"a b", "a\"b", "a\\b", "a\tb", "caf\xc3\xa9", "a\x7f"}) {
        EXPECT_FALSE(is_identifier(bad)) << bad;
    }
}

TEST(ConfigRules, HeaderNamesAreTokensOfAtMost64Bytes) {
    EXPECT_TRUE(is_header_name("x-api-key"));
    EXPECT_TRUE(is_header_name("X_Key_2"));
    EXPECT_FALSE(is_header_name(""));
    EXPECT_FALSE(is_header_name(std::string(65, 'a')));
    EXPECT_FALSE(is_header_name("x api"));
    EXPECT_FALSE(is_header_name("x:api"));
}

TEST(ConfigRules, AHeaderVariableIsNamedAsNginxNamesIt) {
    EXPECT_TRUE(is_header_variable("http_x_api_key", "x-api-key"));
    EXPECT_TRUE(is_header_variable("http_authorization", "authorization"));
    EXPECT_TRUE(is_header_variable("http_x_api_key", "X-Api-Key"));
    EXPECT_FALSE(is_header_variable("http_x_api_keys", "x-api-key"));
    EXPECT_FALSE(is_header_variable("cookie_x_api_key", "x-api-key"));
    EXPECT_FALSE(is_header_variable("http_", ""));
    EXPECT_FALSE(is_header_variable("x_api_key", "x-api-key"));
}

TEST(ConfigRules, ARealmCannotBreakOutOfItsQuotedString) {
    EXPECT_TRUE(is_realm("example realm"));
    EXPECT_TRUE(is_realm(""));
    EXPECT_FALSE(is_realm("a\"b"));
    EXPECT_FALSE(is_realm("a\\b"));
    EXPECT_FALSE(is_realm("a\r\nb"));
}

TEST(ConfigRules, UsageCountersTakeASixteenthOfTheZoneAndAtLeast64Keys) {
    EXPECT_EQ(usage_capacity_for(0), 64u);
    EXPECT_EQ(usage_capacity_for(16 * sizeof(UsageSlot) * 1000), 1000u);
}

TEST(ConfigRules, TheSmallestZoneHoldsTwoTablesAndItsOwnUsageCounters) {
    const ZoneSizing sizing{4096, 64};
    for (std::size_t image : {std::size_t{1000}, std::size_t{1} << 20, std::size_t{125} << 20}) {
        const std::size_t zone = sizing.smallest_zone(image);
        EXPECT_GE(zone, sizing.needed(image, usage_capacity_for(zone))) << image;
        EXPECT_GT(sizing.needed(image, 64, 3), sizing.needed(image, 64, 2));
        EXPECT_GE(sizing.needed(image, 64), 2 * image);
    }
}

TEST(ConfigRules, CheckLoadsAChangedFileOnceAndRetriesOnlyTransientFailures) {
    FileIdentity loaded{1, 1, 10, 5};
    FileIdentity changed{1, 2, 10, 6};
    const FileIdentity none{};
    // unchanged
    EXPECT_EQ(decide_load(true, loaded, loaded, false, false, 0, 100, 3), LoadDecision::up_to_date);
    // back to the version in force after a failure
    EXPECT_EQ(decide_load(true, loaded, loaded, false, false, 90, 100, 3),
              LoadDecision::forget_failure);
    // changed: load
    EXPECT_EQ(decide_load(true, changed, loaded, false, false, 0, 100, 3), LoadDecision::load);
    // a wrong version waits for the next change
    EXPECT_EQ(decide_load(true, changed, loaded, true, true, 1, 100, 3), LoadDecision::up_to_date);
    // a version that found no room is retried after a few seconds
    EXPECT_EQ(decide_load(true, changed, loaded, true, false, 99, 100, 3),
              LoadDecision::up_to_date);
    EXPECT_EQ(decide_load(true, changed, loaded, true, false, 97, 100, 3), LoadDecision::load);
    // missing: reported once
    EXPECT_EQ(decide_load(false, none, loaded, false, false, 0, 100, 3),
              LoadDecision::report_missing);
    EXPECT_EQ(decide_load(false, none, loaded, true, true, 50, 100, 3), LoadDecision::up_to_date);
}

TEST(LimitPolicy, BudgetsAreIdentifiedPerKeyZone) {
    const std::uint64_t budget = budget_id('k', "key_shared", "read", 60000);
    const std::uint64_t a = budget_in_zone(budget, key_zone_salt("keys_a"));
    const std::uint64_t b = budget_in_zone(budget, key_zone_salt("keys_b"));
    EXPECT_NE(a, b) << "one key id in two key files is two budgets";
    EXPECT_EQ(a, budget_in_zone(budget, key_zone_salt("keys_a"))) << "stable";
    std::set<std::uint64_t> ids;
    for (int zone = 0; zone < 100; zone++) {
        for (const char *who : {"key_1", "key_2", "user_1"}) {
            ids.insert(budget_in_zone(budget_id('k', who, "read", 60000),
                                      key_zone_salt("zone" + std::to_string(zone))));
        }
    }
    EXPECT_EQ(ids.size(), 300u);
    EXPECT_EQ(ids.count(0), 0u);
}

}  // namespace
}  // namespace apikey
