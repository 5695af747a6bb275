// The shared-memory counter table (core/counter_table) on plain heap
// buffers: reload adoption, budget ids, independence of budgets, exactness
// under concurrent users, and what happens when the zone is full.
#include "core/counter_table.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/process_identity.h"
#include "forked_child.h"

namespace apikey {
namespace {

constexpr std::int64_t kBase = 1'767'225'600'000;  // 2026-01-01T00:00:00Z in ms
constexpr std::uint32_t kSecond = 1000;
constexpr std::uint32_t kMinute = 60'000;
constexpr std::uint32_t kHour = 3'600'000;
constexpr std::uint32_t kDay = 86'400'000;
constexpr std::uint64_t kNoSlot = ~std::uint64_t{0};
constexpr std::size_t kHeaderBytes = 32;  // sizeof(CounterTableHeader), slot-aligned
constexpr std::size_t kSlotBytes = 248;   // sizeof(CounterSlot), as the README states

// Memory for a table of exactly `slots` counters, 8-byte aligned like a zone.
struct Zone {
    explicit Zone(std::size_t slots) : bytes(kHeaderBytes + slots * sizeof(CounterSlot)) {
        words.assign((bytes + 7) / 8, 0);
    }
    void *memory() { return words.data(); }
    std::size_t bytes;
    std::vector<std::uint64_t> words;
};

std::uint32_t self() { return static_cast<std::uint32_t>(getpid()); }

// A budget id whose home slot in a table of `capacity` is `home`
// (home() maps an id to (id * capacity) >> 64).
std::uint64_t budget_at(std::uint64_t home, std::uint64_t capacity, std::uint64_t nth = 0) {
    const unsigned __int128 lo = (static_cast<unsigned __int128>(home) << 64) / capacity + 1;
    return static_cast<std::uint64_t>(lo) + nth;
}

TEST(CounterTable, LayoutAndCapacity) {
    EXPECT_EQ(sizeof(CounterTableHeader), kHeaderBytes);
    EXPECT_EQ(sizeof(CounterSlot), kSlotBytes);
    EXPECT_EQ(CounterTable::capacity_for(kHeaderBytes + 4 * kSlotBytes), 4u);
    EXPECT_EQ(CounterTable::capacity_for(kHeaderBytes + 5 * kSlotBytes - 1), 4u);
    EXPECT_EQ(CounterTable::capacity_for(kHeaderBytes + kSlotBytes - 1), 0u);
    EXPECT_EQ(CounterTable::capacity_for(0), 0u);
    EXPECT_EQ(CounterTable::capacity_for(1 << 20),
              (std::size_t{1 << 20} - kHeaderBytes) / kSlotBytes);
    Zone zone(4);
    const CounterTable table = CounterTable::format(zone.memory(), zone.bytes);
    ASSERT_TRUE(table.valid());
    EXPECT_EQ(table.capacity(), 4u);
    EXPECT_EQ(table.evicted_active(), 0u);
    // The README's sizing: a 10m zone (10 MiB, nginx's "m").
    EXPECT_EQ(CounterTable::capacity_for(10u << 20), 42'281u);
}

// A reload with an unchanged zone: the new cycle adopts the memory the old
// one formatted, and every counter (and the eviction count) carries on.
TEST(CounterTable, FormatThenAdoptKeepsCounters) {
    Zone zone(1024);
    const WindowLimit limit{10, kMinute};
    const std::uint64_t a = budget_id('k', "key_4f9a1c", "read", kMinute);
    const std::uint64_t b = budget_id('o', "user_42", "write", kMinute);
    {
        CounterTable table = CounterTable::format(zone.memory(), zone.bytes);
        for (int i = 0; i < 6; i++)
            ASSERT_TRUE(table.consume(a, limit, kBase, true, self()).decision.allowed);
        for (int i = 0; i < 10; i++)
            ASSERT_TRUE(table.consume(b, limit, kBase, true, self()).decision.allowed);
    }
    CounterTable adopted = CounterTable::adopt(zone.memory(), zone.bytes);
    ASSERT_TRUE(adopted.valid());
    EXPECT_EQ(adopted.capacity(), 1024u);
    const CounterResult ra = adopted.consume(a, limit, kBase + 1000, true, self());
    EXPECT_TRUE(ra.decision.allowed);
    EXPECT_EQ(ra.decision.remaining, 3u);
    EXPECT_FALSE(adopted.consume(b, limit, kBase + 1000, true, self()).decision.allowed);
    // And again: adopting twice is the same as once.
    CounterTable again = CounterTable::adopt(zone.memory(), zone.bytes);
    ASSERT_TRUE(again.valid());
    EXPECT_EQ(again.consume(a, limit, kBase + 2000, true, self()).decision.remaining, 2u);
}

// A zone whose size changed (so the number of slots changed) is not adopted:
// the caller formats it afresh. Neither is memory that was never formatted.
TEST(CounterTable, AdoptRefusesADifferentSizeOrForeignMemory) {
    Zone zone(64);
    ASSERT_TRUE(CounterTable::format(zone.memory(), zone.bytes).valid());
    EXPECT_FALSE(CounterTable::adopt(zone.memory(), zone.bytes + kSlotBytes).valid());
    EXPECT_FALSE(CounterTable::adopt(zone.memory(), zone.bytes - kSlotBytes).valid());
    EXPECT_FALSE(CounterTable::adopt(zone.memory(), zone.bytes * 2).valid());
    EXPECT_TRUE(CounterTable::adopt(zone.memory(), zone.bytes).valid());

    Zone zeroed(64);
    EXPECT_FALSE(CounterTable::adopt(zeroed.memory(), zeroed.bytes).valid());
    Zone noise(64);
    std::mt19937_64 rng(3);
    for (auto &w : noise.words) w = rng();
    EXPECT_FALSE(CounterTable::adopt(noise.memory(), noise.bytes).valid());
}

// Note: a size change that leaves the slot count unchanged (a few bytes,
// less than one slot) is adopted; the layout is then identical, so that is
// harmless (and nginx keeps a zone only when its size is unchanged anyway).
TEST(CounterTable, AdoptAcceptsTheSameLayout) {
    Zone zone(64);
    ASSERT_TRUE(CounterTable::format(zone.memory(), zone.bytes).valid());
    const CounterTable t = CounterTable::adopt(zone.memory(), zone.bytes + 8);
    ASSERT_TRUE(t.valid());
    EXPECT_EQ(t.capacity(), 64u);
}

// A zone formatted by an earlier layout (1: 32-bit pid lock words; 2: the
// 16-bucket window of 104-byte slots) is not adopted: the caller formats it
// afresh.
TEST(CounterTable, AdoptRefusesOldLayouts) {
    for (std::uint32_t old : {1u, 2u}) {
        Zone zone(64);
        ASSERT_TRUE(CounterTable::format(zone.memory(), zone.bytes).valid());
        static_cast<CounterTableHeader *>(zone.memory())->layout_version = old;
        EXPECT_FALSE(CounterTable::adopt(zone.memory(), zone.bytes).valid()) << old;
    }
}

// Per-day counters live as long as the zone: a reload that keeps the zone
// (same name and size: adopt) keeps them, to the millisecond; a restart
// gives a new, empty zone (format) and they start over.
TEST(CounterTable, PerDayCountersSurviveAdoption) {
    Zone zone(256);
    const std::uint64_t exact = budget_id('k', "key_day", "write", kDay);
    const std::uint64_t bucketed = budget_id('o', "owner_day", "read", kDay);
    const WindowLimit small{10, kDay}, large{5000, kDay};
    {
        CounterTable table = CounterTable::format(zone.memory(), zone.bytes);
        for (int i = 0; i < 10; i++) {
            ASSERT_TRUE(table.consume(exact, small, kBase + i * 3'600'000LL, true, self())
                            .decision.allowed);
        }
        for (int i = 0; i < 5000; i++) {
            ASSERT_TRUE(table.consume(bucketed, large, kBase + i, true, self()).decision.allowed);
        }
    }
    CounterTable adopted = CounterTable::adopt(zone.memory(), zone.bytes);
    ASSERT_TRUE(adopted.valid());
    const std::int64_t later = kBase + 20 * 3'600'000LL;  // 20 h on
    const CounterResult r = adopted.consume(exact, small, later, true, self());
    EXPECT_FALSE(r.decision.allowed);
    EXPECT_EQ(r.decision.retry_after_s, 4u * 3600u);  // the first leaves a day after it came
    const CounterResult b = adopted.consume(bucketed, large, later, true, self());
    EXPECT_FALSE(b.decision.allowed);
    EXPECT_GE(b.decision.retry_after_s, 4u * 3600u);
    EXPECT_LE(b.decision.retry_after_s, 4u * 3600u + 1 + kDay / 50 / 1000);
    EXPECT_TRUE(adopted.consume(exact, small, kBase + kDay, true, self()).decision.allowed);

    CounterTable restarted = CounterTable::format(zone.memory(), zone.bytes);
    EXPECT_TRUE(restarted.consume(exact, small, later, true, self()).decision.allowed);
    EXPECT_EQ(restarted.consume(bucketed, large, later, true, self()).decision.remaining, 4999u);
}

// A worker that died holding a counter's lock, or the claim lock, does not
// block that counter or the creation of new ones.
TEST(CounterTable, LocksLeftByADeadProcessAreTakenOver) {
    ForkedChild child(ForkedChild::Then::exit, [] {});
    child.reap();
    const std::uint64_t dead = child.identity();
    Zone zone(16);
    CounterTable table = CounterTable::format(zone.memory(), zone.bytes);
    const std::uint64_t self_id = this_process_identity();
    const std::uint64_t b = budget_id('k', "key_dead", "read", kMinute);
    const WindowLimit limit{5, kMinute};
    const CounterResult first = table.consume(b, limit, kBase, true, self_id);
    ASSERT_TRUE(first.decision.allowed);
    auto *slots = reinterpret_cast<CounterSlot *>(static_cast<unsigned char *>(zone.memory()) +
                                                  kHeaderBytes);
    slots[first.slot].lock = dead;
    static_cast<CounterTableHeader *>(zone.memory())->claim_lock = dead;
    EXPECT_EQ(table.consume(b, limit, kBase, true, self_id).decision.remaining, 3u);
    EXPECT_TRUE(
        table.consume(budget_id('k', "key_new", "read", kMinute), limit, kBase, true, self_id)
            .decision.allowed);
    EXPECT_EQ(slots[first.slot].lock, 0u);
}

TEST(CounterTable, BudgetIdsAreDistinctStableAndNeverZero) {
    std::set<std::uint64_t> seen;
    std::size_t made = 0;
    const char kinds[] = {'k', 'o', 'g'};
    const std::uint32_t periods[] = {kSecond, kMinute, kHour, 2000, 120'000};
    const std::string categories[] = {"read", "write", "execute", "", "re", "ad", "readwrite"};
    std::vector<std::string> whos = {"", "a", "ab", "key_4f9a1c", "user_42", "org_7"};
    for (int i = 0; i < 300; i++) whos.push_back("key_" + std::to_string(i));
    for (char kind : kinds) {
        for (const std::string &who : whos) {
            for (const std::string &category : categories) {
                for (std::uint32_t period : periods) {
                    const std::uint64_t id = budget_id(kind, who, category, period);
                    ASSERT_NE(id, 0u);
                    ASSERT_EQ(id, budget_id(kind, who, category, period));  // stable
                    seen.insert(id);
                    made++;
                }
            }
        }
    }
    EXPECT_EQ(seen.size(), made);  // no two combinations share an id
    // Moving characters across the who/category boundary gives another budget.
    EXPECT_NE(budget_id('k', "ab", "c", kMinute), budget_id('k', "a", "bc", kMinute));
    EXPECT_NE(budget_id('k', "abc", "", kMinute), budget_id('k', "", "abc", kMinute));
    // The same spelling as a key id and as an owner: different budgets.
    EXPECT_NE(budget_id('k', "user_42", "read", kMinute),
              budget_id('o', "user_42", "read", kMinute));
}

// Budgets never share counts: exhausting one leaves every other whole,
// including the same holder's other categories and periods.
TEST(CounterTable, DistinctBudgetsAreIndependent) {
    Zone zone(4096);
    CounterTable table = CounterTable::format(zone.memory(), zone.bytes);
    const std::uint64_t spent = budget_id('k', "key_1", "read", kMinute);
    const WindowLimit limit{5, kMinute};
    for (int i = 0; i < 5; i++)
        ASSERT_TRUE(table.consume(spent, limit, kBase, true, self()).decision.allowed);
    ASSERT_FALSE(table.consume(spent, limit, kBase, true, self()).decision.allowed);

    const std::uint64_t others[] = {
        budget_id('k', "key_1", "write", kMinute), budget_id('k', "key_1", "read", kHour),
        budget_id('k', "key_2", "read", kMinute),  budget_id('o', "key_1", "read", kMinute),
        budget_id('g', "key_1", "read", kMinute),
    };
    for (std::uint64_t other : others) {
        const WindowLimit own{5, other == others[1] ? kHour : kMinute};
        for (std::uint32_t i = 0; i < 5; i++) {
            const CounterResult r = table.consume(other, own, kBase, true, self());
            ASSERT_TRUE(r.decision.allowed);
            EXPECT_EQ(r.decision.remaining, 4 - i);
        }
        EXPECT_FALSE(table.consume(other, own, kBase, true, self()).decision.allowed);
    }
    // Many budgets in a roomy table, each spent to a different depth.
    std::mt19937_64 rng(11);
    std::vector<std::pair<std::uint64_t, std::uint32_t>> spent_by;
    for (int i = 0; i < 500; i++) {
        const std::uint64_t b = budget_id('k', "many_" + std::to_string(i), "read", kMinute);
        const std::uint32_t n = static_cast<std::uint32_t>(rng() % 6);
        for (std::uint32_t k = 0; k < n; k++) table.consume(b, limit, kBase + 5, true, self());
        spent_by.emplace_back(b, n);
    }
    for (const auto &[b, n] : spent_by) {
        const CounterResult r = table.consume(b, limit, kBase + 10, false, self());
        if (n < 5) {
            EXPECT_EQ(r.decision.remaining, 5 - n - 1);
        } else {
            EXPECT_FALSE(r.decision.allowed);
        }
    }
    EXPECT_EQ(table.evicted_active(), 0u);
}

// Exact across concurrent users: threads (standing in for workers, with the
// same lock owner id since they share a process) hammering one budget at one
// instant accept exactly `limit` in total.
TEST(CounterTable, ConcurrentUsersAcceptExactlyTheLimit) {
    constexpr int kThreads = 8;
    // The large limit keeps the threads inside the accepting phase long
    // enough to overlap even on two CPUs.
    for (std::uint32_t limit_count : {1u, 7u, 1000u, 400'000u}) {
        Zone zone(256);
        CounterTable table = CounterTable::format(zone.memory(), zone.bytes);
        const std::uint64_t budget = budget_id('k', "shared", "write", kMinute);
        const WindowLimit limit{limit_count, kMinute};
        const int attempts = static_cast<int>(limit_count / kThreads) * 2 + 500;
        std::atomic<std::uint64_t> accepted{0}, refused{0};
        std::atomic<bool> go{false};
        std::vector<std::thread> threads;
        for (int t = 0; t < kThreads; t++) {
            threads.emplace_back([&] {
                while (!go.load()) std::this_thread::yield();
                std::uint64_t mine = 0, no = 0;
                for (int i = 0; i < attempts; i++) {
                    if (table.consume(budget, limit, kBase, true, self()).decision.allowed) {
                        mine++;
                    } else {
                        no++;
                    }
                }
                accepted += mine;
                refused += no;
            });
        }
        go = true;
        for (auto &t : threads) t.join();
        EXPECT_EQ(accepted.load(), limit_count);
        EXPECT_EQ(accepted.load() + refused.load(), std::uint64_t{kThreads} * attempts);
        EXPECT_FALSE(table.consume(budget, limit, kBase, false, self()).decision.allowed);
    }
}

// Creating a budget is exact too: threads walk the same list of new budgets
// (limit 1) in step, so they often reach a budget's first request together;
// each budget must be created once and accept exactly one request.
TEST(CounterTable, ConcurrentFirstRequestsCreateEachBudgetOnce) {
    constexpr int kThreads = 4;
    constexpr int kBudgets = 6000;
    Zone zone(16384);
    CounterTable table = CounterTable::format(zone.memory(), zone.bytes);
    const WindowLimit limit{1, kHour};
    std::vector<std::uint64_t> budgets;
    for (int i = 0; i < kBudgets; i++) {
        budgets.push_back(budget_id('k', "first_" + std::to_string(i), "write", kHour));
    }
    std::vector<std::atomic<int>> accepted(kBudgets);
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; t++) {
        threads.emplace_back([&] {
            ready++;
            while (ready.load() < kThreads) std::this_thread::yield();
            for (int i = 0; i < kBudgets; i++) {
                if (table.consume(budgets[i], limit, kBase, true, self()).decision.allowed) {
                    accepted[i]++;
                }
            }
        });
    }
    for (auto &t : threads) t.join();
    int wrong = 0;
    for (int i = 0; i < kBudgets; i++) wrong += accepted[i].load() != 1;
    EXPECT_EQ(wrong, 0) << "budgets that did not accept exactly one request";
    EXPECT_EQ(table.evicted_active(), 0u);
}

// The same with many budgets created concurrently (the claim path), and with
// refunds racing: each budget's net use never exceeds its limit, and after
// the storm a drain tops every budget up to exactly its limit.
TEST(CounterTable, ConcurrentCreationAndRefundsStayExact) {
    constexpr int kThreads = 6;
    constexpr int kBudgets = 40;
    constexpr std::uint32_t kLimit = 50;
    Zone zone(512);
    CounterTable table = CounterTable::format(zone.memory(), zone.bytes);
    const WindowLimit limit{kLimit, kHour};
    std::vector<std::uint64_t> budgets;
    for (int i = 0; i < kBudgets; i++) {
        budgets.push_back(budget_id('o', "owner_" + std::to_string(i), "read", kHour));
    }
    std::vector<std::atomic<std::int64_t>> net(kBudgets);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; t++) {
        threads.emplace_back([&, t] {
            std::mt19937_64 rng(static_cast<std::uint64_t>(t) + 100);
            for (int i = 0; i < 4000; i++) {
                const std::size_t k = rng() % kBudgets;
                const CounterResult r = table.consume(budgets[k], limit, kBase + 1, true, self());
                if (!r.decision.allowed) continue;
                if (rng() % 3 == 0) {
                    table.refund(r, budgets[k], self());
                } else {
                    net[k]++;
                }
            }
        });
    }
    for (auto &t : threads) t.join();
    for (int k = 0; k < kBudgets; k++) {
        std::int64_t total = net[k].load();
        ASSERT_LE(total, std::int64_t{kLimit}) << k;
        while (table.consume(budgets[k], limit, kBase + 2, true, self()).decision.allowed) total++;
        EXPECT_EQ(total, std::int64_t{kLimit}) << k;
    }
    EXPECT_EQ(table.evicted_active(), 0u);
}

TEST(CounterTable, RefundTakesBackOneAndIgnoresDryRunsAndRefusals) {
    Zone zone(16);
    CounterTable table = CounterTable::format(zone.memory(), zone.bytes);
    const std::uint64_t b = budget_id('k', "key_r", "write", kMinute);
    const WindowLimit limit{2, kMinute};
    const CounterResult first = table.consume(b, limit, kBase, true, self());
    const CounterResult second = table.consume(b, limit, kBase, true, self());
    const CounterResult refused = table.consume(b, limit, kBase, true, self());
    ASSERT_TRUE(first.decision.allowed);
    ASSERT_TRUE(second.decision.allowed);
    ASSERT_FALSE(refused.decision.allowed);
    table.refund(refused, b, self());  // nothing was counted: nothing to take back
    EXPECT_FALSE(table.consume(b, limit, kBase, false, self()).decision.allowed);
    const CounterResult dry = table.consume(b, limit, kBase, false, self());
    table.refund(dry, b, self());
    EXPECT_FALSE(table.consume(b, limit, kBase, false, self()).decision.allowed);
    table.refund(second, b, self());
    const CounterResult again = table.consume(b, limit, kBase, false, self());
    EXPECT_TRUE(again.decision.allowed);
    EXPECT_EQ(again.decision.remaining, 0u);
    // A refund naming another budget (the slot was taken over) does nothing.
    table.refund(first, budget_id('k', "someone_else", "write", kMinute), self());
    EXPECT_EQ(table.consume(b, limit, kBase, false, self()).decision.remaining, 0u);
}

// A dry run never creates a counter: on an empty table it reports a fresh
// budget, the memory stays byte-for-byte the same, and later real budgets
// find every slot free (no eviction).
// Each slot keeps its window's running sums (CounterSlot::summary, so a
// request neither adds up nor searches the 50 buckets): through requests,
// dry runs, refunds, a reused counter and a summary found unknown (as left
// by a process that died while changing the window), every decision is the
// one the window makes counting afresh, and the kept sums are the window's.
TEST(CounterTable, TheSlotSummaryNeverChangesADecision) {
    Zone zone(4);
    CounterTable table = CounterTable::format(zone.memory(), zone.bytes);
    auto *slots = reinterpret_cast<CounterSlot *>(static_cast<unsigned char *>(zone.memory()) +
                                                  kHeaderBytes);
    std::mt19937_64 rng(42);
    const WindowLimit limits[] = {{40, kSecond}, {200, kMinute}, {17, kHour}};
    for (const WindowLimit limit : limits) {
        const std::uint64_t budget = budget_id('k', "summary", "read", limit.period_ms);
        WindowState plain;  // the same requests, decided without a summary
        window_reset(plain);
        std::int64_t t = kBase;
        std::vector<CounterResult> accepted;
        for (int i = 0; i < 4000; i++) {
            t += static_cast<std::int64_t>(rng() % (2 * limit.period_ms / limit.count + 1));
            if (rng() % 200 == 0) t += limit.period_ms / 3;
            const bool commit = rng() % 8 != 0;
            const CounterResult r = table.consume(budget, limit, t, commit, self());
            const WindowDecision d = window_consume(plain, limit, t, commit);
            ASSERT_EQ(r.decision.allowed, d.allowed) << i;
            ASSERT_EQ(r.decision.remaining, d.remaining) << i;
            ASSERT_EQ(r.decision.reset_s, d.reset_s) << i;
            ASSERT_EQ(r.decision.next_free_s, d.next_free_s) << i;
            ASSERT_EQ(r.decision.retry_after_s, d.retry_after_s) << i;
            if (commit && r.decision.allowed) accepted.push_back(r);
            if (!accepted.empty() && rng() % 5 == 0) {
                const std::size_t k = rng() % accepted.size();
                table.refund(accepted[k], budget, self());
                window_refund(plain, accepted[k].decision.counted_at_ms);
                accepted.erase(accepted.begin() + static_cast<std::ptrdiff_t>(k));
            }
            if (r.slot == kNoSlot) continue;  // a dry run before the counter exists
            ASSERT_LT(r.slot, 4u);
            CounterSlot &slot = slots[r.slot];
            ASSERT_EQ(std::memcmp(&slot.window, &plain, sizeof plain), 0) << i;
            ASSERT_TRUE(window_summary_fits(slot.window, slot.summary)) << i;
            if (rng() % 300 == 0) slot.summary = kUnknownSummary;  // a dead writer's
        }
    }
}

TEST(CounterTable, DryRunNeverCreatesACounter) {
    Zone zone(4);
    CounterTable table = CounterTable::format(zone.memory(), zone.bytes);
    const std::vector<std::uint64_t> blank = zone.words;
    const WindowLimit limit{3, kMinute};
    for (int i = 0; i < 200; i++) {
        const std::uint64_t b = budget_id('k', "dry_" + std::to_string(i), "read", kMinute);
        const CounterResult r = table.consume(b, limit, kBase + i, false, self());
        ASSERT_TRUE(r.decision.allowed);
        EXPECT_EQ(r.decision.remaining, 2u);
        EXPECT_EQ(r.slot, kNoSlot);
        EXPECT_FALSE(r.evicted_active);
    }
    EXPECT_EQ(zone.words, blank);
    for (int i = 0; i < 4; i++) {
        const CounterResult r = table.consume(
            budget_id('k', "real_" + std::to_string(i), "read", kMinute), limit, kBase + 500, true,
            self());
        EXPECT_TRUE(r.decision.allowed);
        EXPECT_FALSE(r.evicted_active);
    }
    EXPECT_EQ(table.evicted_active(), 0u);
    // A dry run at the same instant as an existing counter's last request
    // changes nothing either.
    const std::vector<std::uint64_t> before = zone.words;
    table.consume(budget_id('k', "real_0", "read", kMinute), limit, kBase + 500, false, self());
    EXPECT_EQ(zone.words, before);
}

// Zone full, tiny table (4 slots, all in every probe window): the least
// recently used active counter is evicted and reported; the others keep
// their counts.
TEST(CounterTable, FullTableEvictsTheLeastRecentlyUsedActiveCounter) {
    Zone zone(4);
    CounterTable table = CounterTable::format(zone.memory(), zone.bytes);
    const WindowLimit limit{5, kHour};
    std::vector<std::uint64_t> b;
    for (int i = 0; i < 5; i++)
        b.push_back(budget_id('k', "full_" + std::to_string(i), "read", kHour));
    for (int i = 0; i < 4; i++) {
        for (int k = 0; k <= i; k++) {  // budget i spends i + 1
            const CounterResult r = table.consume(b[i], limit, kBase + i * 1000, true, self());
            ASSERT_TRUE(r.decision.allowed);
            ASSERT_FALSE(r.evicted_active);
        }
    }
    EXPECT_EQ(table.evicted_active(), 0u);
    // b[0] was last used longest ago.
    const CounterResult fifth = table.consume(b[4], limit, kBase + 10'000, true, self());
    EXPECT_TRUE(fifth.decision.allowed);
    EXPECT_TRUE(fifth.evicted_active);
    EXPECT_EQ(table.evicted_active(), 1u);
    for (int i = 1; i < 4; i++) {  // survivors keep their counts (dry runs: no claims)
        const CounterResult r = table.consume(b[i], limit, kBase + 10'000, false, self());
        EXPECT_EQ(r.decision.remaining, static_cast<std::uint32_t>(5 - (i + 1) - 1)) << i;
        EXPECT_NE(r.slot, kNoSlot);
    }
    const CounterResult gone = table.consume(b[0], limit, kBase + 10'000, false, self());
    EXPECT_EQ(gone.slot, kNoSlot);  // its counter is gone
    EXPECT_EQ(gone.decision.remaining, 4u);
    // Coming back evicts the next least recently used (b[1]) and is counted.
    const CounterResult back = table.consume(b[0], limit, kBase + 11'000, true, self());
    EXPECT_TRUE(back.evicted_active);
    EXPECT_EQ(table.evicted_active(), 2u);
    EXPECT_EQ(table.consume(b[1], limit, kBase + 11'000, false, self()).slot, kNoSlot);
}

// Expired counters (nothing left in their window) are reused before any
// active counter is evicted, even when the expired one is not the least
// recently used, and their reuse is not reported as an eviction.
TEST(CounterTable, ExpiredCountersAreReusedFirstWithoutReport) {
    Zone zone(4);
    CounterTable table = CounterTable::format(zone.memory(), zone.bytes);
    const std::uint64_t hourly[] = {budget_id('k', "h1", "read", kHour),
                                    budget_id('k', "h2", "read", kHour),
                                    budget_id('k', "h3", "read", kHour)};
    const std::uint64_t secondly = budget_id('k', "s", "read", kSecond);
    for (int i = 0; i < 3; i++) table.consume(hourly[i], {10, kHour}, kBase + i, true, self());
    // The per-second counter is the most recently used of all.
    table.consume(secondly, {10, kSecond}, kBase + 100, true, self());
    // Two seconds on, it has expired; the hourly ones are active.
    const std::int64_t later = kBase + 2100;
    const std::uint64_t newcomer = budget_id('k', "new", "read", kMinute);
    const CounterResult r = table.consume(newcomer, {10, kMinute}, later, true, self());
    EXPECT_TRUE(r.decision.allowed);
    EXPECT_FALSE(r.evicted_active);
    EXPECT_EQ(table.evicted_active(), 0u);
    for (std::uint64_t h : hourly) {
        const CounterResult kept = table.consume(h, {10, kHour}, later, false, self());
        EXPECT_NE(kept.slot, kNoSlot);
        EXPECT_EQ(kept.decision.remaining, 8u);
    }
    EXPECT_EQ(table.consume(secondly, {10, kSecond}, later, false, self()).slot, kNoSlot);
}

// A counter is reusable once its newest request has left the window: a
// period after it came (an exact limit), or a period after the last ms of
// its bucket (a limit over 16), not before.
TEST(CounterTable, ACounterExpiresWhenItsWindowHasEmptied) {
    for (std::uint32_t count : {10u, 100u}) {
        const WindowLimit per_second{count, kSecond};
        const std::int64_t w = std::max<std::int64_t>(1, window_bucket_ms(per_second));
        const std::int64_t t0 = (kBase / w + 1) * w;  // start of a bucket
        const std::int64_t gone = count <= kExactLimit ? kSecond : w - 1 + kSecond;
        for (const std::int64_t after : {gone - 1, gone}) {
            Zone zone(4);
            CounterTable table = CounterTable::format(zone.memory(), zone.bytes);
            table.consume(budget_id('k', "old", "read", kSecond), per_second, t0, true, self());
            for (int i = 0; i < 3; i++) {
                table.consume(budget_id('k', "busy" + std::to_string(i), "read", kHour),
                              {10, kHour}, t0 + 1, true, self());
            }
            const CounterResult r = table.consume(budget_id('k', "newcomer", "read", kHour),
                                                  {10, kHour}, t0 + after, true, self());
            EXPECT_EQ(r.evicted_active, after < gone) << count << " " << after;
        }
    }
}

// With more slots than the probe distance: an active counter is evicted
// only when every slot of the newcomer's probe window (16 from its home) is
// active; a free or expired slot anywhere in that window is used instead.
TEST(CounterTable, EvictionOnlyWhenTheWholeProbeWindowIsActive) {
    constexpr std::uint64_t kCap = 64;
    constexpr unsigned kProbe = CounterTable::kProbe;
    const WindowLimit hourly{10, kHour};
    const WindowLimit per_second{10, kSecond};
    {
        Zone zone(kCap);
        CounterTable table = CounterTable::format(zone.memory(), zone.bytes);
        // kProbe budgets all homed at slot 10 fill slots 10..25.
        for (unsigned i = 0; i < kProbe; i++) {
            const CounterResult r = table.consume(budget_at(10, kCap, i), hourly, kBase + i, true,
                                                  self());
            ASSERT_FALSE(r.evicted_active);
            ASSERT_EQ(r.slot, 10 + i);
        }
        // Homed at 11: slot 26 is free, within its window.
        const CounterResult near = table.consume(budget_at(11, kCap), hourly, kBase + 100, true,
                                                 self());
        EXPECT_FALSE(near.evicted_active);
        EXPECT_EQ(near.slot, 26u);
        // Homed at 10 again: all 16 active, the least recently used goes.
        const CounterResult full = table.consume(budget_at(10, kCap, kProbe), hourly, kBase + 200,
                                                 true, self());
        EXPECT_TRUE(full.evicted_active);
        EXPECT_EQ(full.slot, 10u);
        EXPECT_EQ(table.evicted_active(), 1u);
    }
    {
        Zone zone(kCap);
        CounterTable table = CounterTable::format(zone.memory(), zone.bytes);
        for (unsigned i = 0; i < kProbe; i++) {
            // Slot 10 + 13 holds a per-second budget; the rest are hourly.
            const bool short_lived = i == 13;
            table.consume(budget_at(10, kCap, i), short_lived ? per_second : hourly,
                          kBase + 1000 + i, true, self());
        }
        const CounterResult r = table.consume(budget_at(10, kCap, kProbe), hourly, kBase + 10'000,
                                              true, self());
        EXPECT_FALSE(r.evicted_active);
        EXPECT_EQ(r.slot, 23u);
        EXPECT_EQ(table.evicted_active(), 0u);
    }
}

// Many budgets through a 4-slot zone, at random times, committed or dry:
// never a crash, every committed request gets a counter (evicting if it
// must), decisions stay well-formed, and the eviction counter matches the
// reports.
TEST(CounterTable, TinyZoneUnderManyBudgetsNeverBreaks) {
    Zone zone(4);
    CounterTable table = CounterTable::format(zone.memory(), zone.bytes);
    std::mt19937_64 rng(99);
    const WindowLimit limits[] = {{1, kSecond}, {3, kMinute}, {2, kHour}};
    std::uint64_t reported = 0;
    std::int64_t now = kBase;
    for (int i = 0; i < 20'000; i++) {
        now += static_cast<std::int64_t>(rng() % 300);
        const std::uint64_t who = rng() % 12;
        const WindowLimit limit = limits[who % 3];
        const std::uint64_t b = budget_id('k', "b" + std::to_string(who), "read", limit.period_ms);
        const bool commit = rng() % 4 != 0;
        const CounterResult r = table.consume(b, limit, now, commit, self());
        ASSERT_TRUE(r.slot < 4 || r.slot == kNoSlot);
        ASSERT_LE(r.decision.remaining, limit.count - 1);
        ASSERT_EQ(r.decision.limit, limit.count);
        if (r.evicted_active) reported++;
        if (!r.decision.allowed) {
            ASSERT_GE(r.decision.retry_after_s, 1u);
        }
        if (commit) {
            ASSERT_NE(r.slot, kNoSlot);
        }
        if (r.decision.allowed && commit && rng() % 5 == 0) table.refund(r, b, self());
    }
    EXPECT_EQ(table.evicted_active(), reported);
    EXPECT_GT(reported, 0u);
}

// A table with no slots (a zone too small for one counter) refuses without
// crashing.
TEST(CounterTable, ZoneWithoutSlotsRefusesSafely) {
    Zone zone(0);
    CounterTable table = CounterTable::format(zone.memory(), zone.bytes);
    ASSERT_TRUE(table.valid());
    EXPECT_EQ(table.capacity(), 0u);
    const CounterResult r = table.consume(7, {5, kMinute}, kBase, true, self());
    EXPECT_FALSE(r.decision.allowed);
    EXPECT_GE(r.decision.retry_after_s, 1u);
    table.refund(r, 7, self());
}

// Regression (fixed in fe853cd): a dry run on an existing counter used to
// advance its window, so an expired counter that a dry-run location looked
// at became "active" again for a whole ring although nothing was counted.
// With the zone full, the next new budget then evicted a genuinely active
// counter (an hourly budget mid-window, losing its counts) instead of reusing
// the expired one, and reported a zone-full eviction.
TEST(CounterTable, DryRunDoesNotKeepAnExpiredCounterActive) {
    Zone zone(4);
    CounterTable table = CounterTable::format(zone.memory(), zone.bytes);
    const std::uint64_t hourly[] = {budget_id('k', "h1", "read", kHour),
                                    budget_id('k', "h2", "read", kHour),
                                    budget_id('k', "h3", "read", kHour)};
    const std::uint64_t secondly = budget_id('k', "s", "read", kSecond);
    for (int i = 0; i < 3; i++) table.consume(hourly[i], {10, kHour}, kBase + i, true, self());
    table.consume(secondly, {10, kSecond}, kBase + 100, true, self());
    const std::int64_t later = kBase + 5000;  // the per-second counter has expired
    // A dry-run location looks at the per-second budget.
    ASSERT_TRUE(table.consume(secondly, {10, kSecond}, later, false, self()).decision.allowed);
    const CounterResult r = table.consume(budget_id('k', "new", "read", kMinute), {10, kMinute},
                                          later, true, self());
    EXPECT_FALSE(r.evicted_active);
    EXPECT_EQ(table.evicted_active(), 0u);
    EXPECT_NE(table.consume(hourly[0], {10, kHour}, later, false, self()).slot, kNoSlot)
        << "an active hourly counter was evicted";
}

}  // namespace
}  // namespace apikey
