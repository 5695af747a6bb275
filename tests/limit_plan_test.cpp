// Which budgets a request spends in one location (limit_plan.h).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/counter_table.h"
#include "core/limit_plan.h"
#include "core/table_builder.h"

namespace apikey {
namespace {

int zone_a, zone_b;  // two limit zones, told apart by address

struct Fixture {
    TableImage image;
    const KeyRecord *key = nullptr;      // owner user_1, organization org_1
    const KeyRecord *limited = nullptr;  // its own write: 5r/m
    Fixture() {
        TableBuilder b;
        KeySpec s;
        s.line = 1;
        s.hash = sha256("key-one");
        s.id = "key_1";
        s.owner = "user_1";
        s.organization = "org_1";
        b.add_key(s);
        s.line = 2;
        s.hash = sha256("key-two");
        s.id = "key_2";
        s.limits = {{"write", Rate{5, 60}}};
        b.add_key(s);
        image = b.build();
        key = image.table().find(sha256("key-one"));
        limited = image.table().find(sha256("key-two"));
    }
};

TEST(LimitPlan, OnlyLimitsOfTheRequestCategoryApply) {
    Fixture f;
    const ConfiguredLimit limits[] = {
        {&zone_a, "read", Rate{100, 60}},
        {&zone_a, "write", Rate{10, 60}},
    };
    const LimitPlan plan(limits, 2, "write", f.image.table(), *f.key, LimitBy::key, 7);
    ASSERT_EQ(plan.size(), 1u);
    EXPECT_EQ(plan.begin()->rate.count, 10u);
    EXPECT_EQ(plan.begin()->zone, &zone_a);
}

TEST(LimitPlan, LimitsOnOneBudgetCountOnceAtTheStrictestRate) {
    Fixture f;
    const ConfiguredLimit limits[] = {
        {&zone_a, "read", Rate{100, 60}},
        {&zone_a, "read", Rate{30, 60}},
        {&zone_a, "read", Rate{1000, 3600}},  // another period: another budget
        {&zone_b, "read", Rate{50, 60}},      // another zone: another budget
    };
    const LimitPlan plan(limits, 4, "read", f.image.table(), *f.key, LimitBy::key, 7);
    ASSERT_EQ(plan.size(), 3u);
    EXPECT_EQ(plan.begin()[0].rate.count, 30u);
    EXPECT_EQ(plan.begin()[1].rate.period_seconds, 3600u);
    EXPECT_EQ(plan.begin()[2].zone, &zone_b);
}

TEST(LimitPlan, AKeysOwnRateReplacesTheConfiguredOne) {
    Fixture f;
    const ConfiguredLimit limits[] = {{&zone_a, "write", Rate{10, 60}}};
    const LimitPlan plan(limits, 1, "write", f.image.table(), *f.limited, LimitBy::key, 7);
    ASSERT_EQ(plan.size(), 1u);
    EXPECT_EQ(plan.begin()->rate.count, 5u);
}

TEST(LimitPlan, OwnerAndOrganizationBudgetsAreSharedByTheirKeys) {
    Fixture f;
    const ConfiguredLimit limits[] = {{&zone_a, "read", Rate{10, 60}}};
    auto id = [&](const KeyRecord *k, LimitBy by, std::uint64_t salt) {
        return LimitPlan(limits, 1, "read", f.image.table(), *k, by, salt).begin()->id;
    };
    EXPECT_NE(id(f.key, LimitBy::key, 7), id(f.limited, LimitBy::key, 7));
    EXPECT_EQ(id(f.key, LimitBy::owner, 7), id(f.limited, LimitBy::owner, 7));
    EXPECT_EQ(id(f.key, LimitBy::organization, 7), id(f.limited, LimitBy::organization, 7));
    EXPECT_NE(id(f.key, LimitBy::owner, 7), id(f.key, LimitBy::organization, 7));
    EXPECT_NE(id(f.key, LimitBy::owner, 7), id(f.key, LimitBy::owner, 8)) << "per key zone";
}

TEST(LimitPlan, AtMostEightLimitsAreRead) {
    Fixture f;
    std::vector<ConfiguredLimit> limits;
    for (unsigned i = 0; i < 12; i++) limits.push_back({&zone_a, "read", Rate{10, i + 1}});
    const LimitPlan plan(limits.data(), limits.size(), "read", f.image.table(), *f.key,
                         LimitBy::key, 7);
    EXPECT_EQ(plan.size(), LimitPlan::kMaxBudgets);
}

TEST(LimitPlan, TheResponseReportsTheLimitClosestToRefusing) {
    WindowDecision ok5{true, 10, 5, 0, 0, 0};
    WindowDecision ok2{true, 10, 2, 0, 0, 0};
    WindowDecision refused{false, 10, 0, 3, 3, 0};
    EXPECT_TRUE(reports_before(ok2, ok5));
    EXPECT_FALSE(reports_before(ok5, ok2));
    EXPECT_TRUE(reports_before(refused, ok2));
    EXPECT_FALSE(reports_before(ok2, refused));
}

}  // namespace
}  // namespace apikey
