// Which budgets a request spends in one location (limit_plan.h).
#include <gtest/gtest.h>

#include <memory>
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

// The memo answers exactly what computing does, for every input that goes
// into an id (payer, category bytes, period, key zone, table), also when
// one table's entries meet another table's records at the same index.
TEST(LimitPlan, TheBudgetIdMemoGivesTheComputedIds) {
    Fixture f;
    Fixture other;  // the same records in another table (another build_id)
    ASSERT_NE(f.image.table().build_id(), other.image.table().build_id());
    auto memo = std::make_unique<BudgetIdMemo>();
    const std::string long_category(BudgetIdMemo::kMaxCategory + 3, 'c');
    const std::string read = "read";  // another buffer: bytes are compared, not addresses
    const std::string_view categories[] = {"read", "write", "rea", "readx", long_category};
    int checked = 0;
    for (int round = 0; round < 3; round++) {  // the first round fills, the others hit
        for (const Fixture *fx : {&f, &other}) {
            const KeyTable table = fx->image.table();
            for (const KeyRecord *k : {fx->key, fx->limited}) {
                for (LimitBy by : {LimitBy::key, LimitBy::owner, LimitBy::organization}) {
                    for (std::string_view category : categories) {
                        for (std::uint32_t period : {1'000u, 60'000u, 86'400'000u}) {
                            for (std::uint64_t salt : {7u, 8u}) {
                                const std::uint64_t want = BudgetIdMemo::compute(
                                    table, *k, by, category, period, salt);
                                EXPECT_EQ(memo->id(table, *k, by, category, period, salt), want);
                                checked++;
                            }
                        }
                    }
                }
            }
        }
    }
    EXPECT_EQ(checked, 3 * 2 * 2 * 3 * 5 * 3 * 2);
    // A plan with the memo equals one without it.
    const ConfiguredLimit limits[] = {{&zone_a, "read", Rate{100, 60}},
                                      {&zone_b, read, Rate{10, 1}}};
    for (LimitBy by : {LimitBy::key, LimitBy::owner}) {
        const LimitPlan a(limits, 2, "read", f.image.table(), *f.key, by, 7);
        const LimitPlan b(limits, 2, "read", f.image.table(), *f.key, by, 7, memo.get());
        ASSERT_EQ(a.size(), b.size());
        for (std::size_t i = 0; i < a.size(); i++) EXPECT_EQ(a.begin()[i].id, b.begin()[i].id);
    }
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
