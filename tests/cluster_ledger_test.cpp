// Cluster mode's pieces one edge at a time: the request-path ledger
// (core/grant_ledger), the batch engine (core/sync_batch) and the grant
// script's reference model (core/grant_script). The randomized proof of the
// bound is tests/cluster_model_test.cpp; the script against a real Redis is
// tests/grant_script_redis_test.cpp.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "core/grant_ledger.h"
#include "core/grant_script.h"
#include "core/sliding_window.h"
#include "core/sync_batch.h"

namespace apikey {
namespace {

SyncConfig config(std::uint32_t overdraft, FailMode fail = FailMode::closed) {
    SyncConfig c;
    c.interval_ms = 100;
    c.timeout_ms = 50;
    c.overdraft = overdraft;
    c.fail_after_ms = 1000;
    c.fail = fail;
    return c;
}

// What the local window says when it accepts (the ledger's input).
WindowDecision local_ok(std::uint32_t limit, std::uint32_t remaining = 0, std::uint32_t reset = 1) {
    WindowDecision d{};
    d.allowed = true;
    d.limit = limit;
    d.remaining = remaining != 0 ? remaining : limit - 1;
    d.reset_s = reset;
    d.next_free_s = 1;
    return d;
}

LedgerContext at(std::int64_t now, std::uint32_t gen = 0, LedgerMode mode = LedgerMode::cluster) {
    return {now, mode, gen};
}

SyncLedger fresh(std::uint32_t limit) {
    SyncLedger l;
    ledger_init(l, 0);
    l.limit = limit;
    return l;
}

// ---- GrantLedger ------------------------------------------------------------

// ledger_decide's lease fast path against the general path (ledger_admit
// plus the documented mapping onto the window's decision), over random
// ledgers that mostly take the fast path and often sit on its edges.
TEST(GrantLedger, DecideMatchesAdmitEverywhere) {
    std::uint64_t seed = 0x9e3779b97f4a7c15ull;
    auto next = [&](std::uint64_t n) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        return seed % n;
    };
    auto pick64 = [&](std::int64_t base) -> std::int64_t {
        switch (next(6)) {
        case 0: return 0;
        case 1: return base;
        case 2: return base - 1;
        case 3: return base + 1;
        case 4: return base - static_cast<std::int64_t>(next(0x100000000ull));
        default: return base + static_cast<std::int64_t>(next(5000));
        }
    };
    auto pick32 = [&]() -> std::uint32_t {
        switch (next(5)) {
        case 0: return 0;
        case 1: return 0xffffffffu;
        case 2: return 0xfffffffeu;
        default: return static_cast<std::uint32_t>(next(2000));
        }
    };
    int fast = 0;
    for (int i = 0; i < 200000; i++) {
        const std::int64_t now = 1000000 + static_cast<std::int64_t>(next(100000));
        SyncLedger l{};
        l.limit = next(4) != 0 ? 1000 : pick32();
        l.lease_left = next(4) != 0 ? 1 + static_cast<std::uint32_t>(next(50)) : pick32();
        l.lease_until_ms = pick64(now);
        l.lease_bucket = static_cast<std::int64_t>(next(1000));
        l.give_back = pick32();
        l.give_back_bucket = static_cast<std::int64_t>(next(1000));
        l.unacked = next(3) == 0 ? pick32() : static_cast<std::uint32_t>(next(3));
        l.inflight = static_cast<std::uint32_t>(next(3));
        l.demand = next(8) == 0 ? pick32() : static_cast<std::uint32_t>(next(100));
        l.view_total = next(6) == 0 ? kViewFull : static_cast<std::uint32_t>(next(1200));
        l.seeded_gen = static_cast<std::uint32_t>(next(3) == 0 ? 1 : 0);
        l.view_room_at_ms = pick64(now);
        l.view_reset_at_ms = pick64(now);
        l.unacked_at_ms = pick64(now);
        l.demand_at_ms = pick64(now);
        l.demand_gap_ms = next(3) == 0 ? 0 : pick32();
        const LedgerContext ctx = at(
            now, 0, next(5) == 0 ? LedgerMode::local_fallback : LedgerMode::cluster);
        WindowDecision local = local_ok(1000, 1 + static_cast<std::uint32_t>(next(999)),
                                        static_cast<std::uint32_t>(next(70)));
        local.next_free_s = 1 + static_cast<std::uint32_t>(next(60));
        local.counted_at_ms = now;
        const bool commit = next(8) != 0;
        const SyncConfig c = config(static_cast<std::uint32_t>(next(3)));

        SyncLedger general = l;
        const LedgerDecision want = ledger_admit(general, c, ctx, local, commit);
        WindowDecision want_window = local;
        if (want.allowed) {
            want_window.remaining = want.remaining;
            want_window.retry_after_s = 0;
        } else {
            want_window.allowed = false;
            want_window.remaining = 0;
            want_window.retry_after_s = want.retry_after_s;
        }
        want_window.reset_s = want.reset_s;
        want_window.next_free_s = want.next_free_s;

        SyncLedger decided = l;
        WindowDecision got_window = local;
        LedgerDecision got{};
        const bool allowed = ledger_decide(decided, c, ctx, got_window, got, commit);
        if (commit && got.via == LedgerVia::lease) fast++;
        ASSERT_EQ(allowed, want.allowed) << i;
        ASSERT_EQ(std::memcmp(&decided, &general, sizeof decided), 0) << i;
        ASSERT_EQ(got.allowed, want.allowed) << i;
        ASSERT_EQ(got.via, want.via) << i;
        // A lease unit's figures go to the window's decision only (below).
        if (got.via != LedgerVia::lease) {
            ASSERT_EQ(got.remaining, want.remaining) << i;
            ASSERT_EQ(got.reset_s, want.reset_s) << i;
            ASSERT_EQ(got.retry_after_s, want.retry_after_s) << i;
            ASSERT_EQ(got.next_free_s, want.next_free_s) << i;
        }
        ASSERT_EQ(got.lease_until_ms, want.lease_until_ms) << i;
        ASSERT_EQ(got.lease_bucket, want.lease_bucket) << i;
        ASSERT_EQ(got_window.allowed, want_window.allowed) << i;
        ASSERT_EQ(got_window.remaining, want_window.remaining) << i;
        ASSERT_EQ(got_window.reset_s, want_window.reset_s) << i;
        ASSERT_EQ(got_window.retry_after_s, want_window.retry_after_s) << i;
        ASSERT_EQ(got_window.next_free_s, want_window.next_free_s) << i;
    }
    EXPECT_GT(fast, 20000) << "the fast path was taken";
}

TEST(GrantLedger, IsSmallAndPlain) {
    EXPECT_EQ(sizeof(SyncLedger), 96u);
    EXPECT_TRUE(std::is_trivially_copyable_v<SyncLedger>);
}

TEST(GrantLedger, LeaseThenOverdraftThenRefusal) {
    const SyncConfig c = config(1);
    SyncLedger l = fresh(10);
    l.lease_left = 2;
    l.lease_until_ms = 1000;
    l.lease_bucket = 7;
    EXPECT_EQ(ledger_admit(l, c, at(500), local_ok(10), true).via, LedgerVia::lease);
    EXPECT_EQ(ledger_admit(l, c, at(500), local_ok(10), true).via, LedgerVia::lease);
    EXPECT_EQ(l.lease_left, 0u);
    const LedgerDecision o = ledger_admit(l, c, at(600), local_ok(10), true);
    EXPECT_TRUE(o.allowed);
    EXPECT_EQ(o.via, LedgerVia::overdraft);
    EXPECT_EQ(l.unacked, 1u);
    EXPECT_EQ(l.unacked_at_ms, 600);
    const LedgerDecision r = ledger_admit(l, c, at(700), local_ok(10), true);
    EXPECT_FALSE(r.allowed) << "D = 1 unacknowledged at most";
    EXPECT_EQ(r.via, LedgerVia::refused);
    EXPECT_EQ(r.retry_after_s, 1u);
    EXPECT_EQ(l.demand, 4u) << "accepted and refused both count as demand";
}

TEST(GrantLedger, ExpiredLeaseIsNeverUsedAndGoesBack) {
    const SyncConfig c = config(0);
    SyncLedger l = fresh(10);
    l.lease_left = 5;
    l.lease_until_ms = 1000;
    l.lease_bucket = 7;
    EXPECT_EQ(ledger_admit(l, c, at(999), local_ok(10), true).via, LedgerVia::lease);
    EXPECT_FALSE(ledger_admit(l, c, at(1000), local_ok(10), true).allowed)
        << "a lease is valid while now < lease_until";
    EXPECT_EQ(l.lease_left, 0u);
    EXPECT_EQ(l.give_back, 4u);
    EXPECT_EQ(l.give_back_bucket, 7);
}

TEST(GrantLedger, OverdraftCapCountsWhatIsInFlight) {
    const SyncConfig c = config(2);
    SyncLedger l = fresh(100);
    EXPECT_TRUE(ledger_admit(l, c, at(10), local_ok(100), true).allowed);
    EXPECT_TRUE(ledger_admit(l, c, at(11), local_ok(100), true).allowed);
    l.inflight = 2;  // a batch carries them
    EXPECT_FALSE(ledger_admit(l, c, at(12), local_ok(100), true).allowed)
        << "in flight is still unacknowledged";
    l.unacked -= l.inflight;  // the reply acknowledged them
    l.inflight = 0;
    EXPECT_TRUE(ledger_admit(l, c, at(13), local_ok(100), true).allowed);
}

TEST(GrantLedger, OverdraftOnlyWhileTheViewShowsRoom) {
    const SyncConfig c = config(3);
    SyncLedger l = fresh(10);
    l.view_total = 9;
    EXPECT_TRUE(ledger_admit(l, c, at(1000), local_ok(10), true).allowed);
    const LedgerDecision r = ledger_admit(l, c, at(1000), local_ok(10), true);
    EXPECT_FALSE(r.allowed) << "view 9 + 1 unacked is the limit";

    SyncLedger full = fresh(10);
    full.view_total = 10;
    full.view_room_at_ms = 5000;  // the view's records leave then
    const LedgerDecision w = ledger_admit(full, c, at(1000), local_ok(10), true);
    EXPECT_FALSE(w.allowed);
    EXPECT_EQ(w.retry_after_s, 4u) << "Retry-After from the view";
    EXPECT_FALSE(ledger_admit(full, c, at(4999), local_ok(10), true).allowed);
    // Aged: from room_at the view's total is below the limit.
    EXPECT_EQ(ledger_view_total(full, 5000), 9u);
    EXPECT_TRUE(ledger_admit(full, c, at(5000), local_ok(10), true).allowed);
    EXPECT_FALSE(ledger_admit(full, c, at(5001), local_ok(10), true).allowed)
        << "ageing says limit - 1, no more";
}

TEST(GrantLedger, QuarantineViewNeverAges) {
    const SyncConfig c = config(3);
    SyncLedger l = fresh(10);
    l.view_total = kViewFull;
    l.view_room_at_ms = 2000;
    EXPECT_FALSE(ledger_admit(l, c, at(3000), local_ok(10), true).allowed)
        << "after a data loss only a fresh reply opens the budget";
    EXPECT_EQ(ledger_view_total(l, 3000), kViewFull);
}

TEST(GrantLedger, RetryAfterIsNeverBelowOneRenewal) {
    SyncConfig c = config(0);
    c.interval_ms = 2000;  // a grant cannot come sooner than a tick and a round trip
    SyncLedger l = fresh(10);
    const LedgerDecision r = ledger_admit(l, c, at(0), local_ok(10), true);
    EXPECT_FALSE(r.allowed);
    EXPECT_EQ(r.retry_after_s, 3u);  // 2050 ms
    EXPECT_EQ(r.next_free_s, r.retry_after_s);
}

TEST(GrantLedger, RefundReturnsOnlyWhatCanBeTakenBack) {
    const SyncConfig c = config(1);
    SyncLedger l = fresh(10);
    l.lease_left = 3;
    l.lease_until_ms = 1000;
    l.lease_bucket = 7;
    const LedgerDecision a = ledger_admit(l, c, at(100), local_ok(10), true);
    ledger_refund(l, a);
    EXPECT_EQ(l.lease_left, 3u);

    const LedgerDecision b = ledger_admit(l, c, at(100), local_ok(10), true);
    l.lease_left = 9;  // a new grant replaced the lease
    l.lease_bucket = 8;
    l.lease_until_ms = 2000;
    ledger_refund(l, b);
    EXPECT_EQ(l.lease_left, 9u) << "not into another lease";

    SyncLedger o = fresh(10);
    const LedgerDecision d = ledger_admit(o, c, at(100), local_ok(10), true);
    ASSERT_EQ(d.via, LedgerVia::overdraft);
    ledger_refund(o, d);
    EXPECT_EQ(o.unacked, 0u);
    const LedgerDecision e = ledger_admit(o, c, at(100), local_ok(10), true);
    o.inflight = o.unacked;  // a batch already carries it: it will be recorded
    ledger_refund(o, e);
    EXPECT_EQ(o.unacked, 1u);
}

TEST(GrantLedger, DryRunChangesNothing) {
    const SyncConfig c = config(1);
    SyncLedger l = fresh(10);
    l.lease_left = 1;
    l.lease_until_ms = 50;  // expires before the probe: a dry run does not give it back
    const SyncLedger before = l;
    const LedgerDecision d = ledger_admit(l, c, at(100), local_ok(10), false);
    EXPECT_TRUE(d.allowed);
    EXPECT_EQ(std::memcmp(&before, &l, sizeof l), 0);
}

TEST(GrantLedger, FailLocalFallsBackToTheLocalWindowAfterFailAfter) {
    SyncNodeState node;
    sync_node_init(node, 1, 0);
    const SyncConfig local = config(1, FailMode::local);
    const SyncConfig closed = config(1, FailMode::closed);
    EXPECT_EQ(sync_context(node, local, 999).mode, LedgerMode::cluster);
    EXPECT_EQ(sync_context(node, local, 1000).mode, LedgerMode::local_fallback);
    EXPECT_EQ(sync_context(node, closed, 5000).mode, LedgerMode::cluster);
    EXPECT_TRUE(sync_degraded(node, closed, 5000));

    SyncLedger l = fresh(10);
    l.view_total = 10;  // the last view was full: the local window decides alone
    for (int i = 0; i < 5; i++) {
        const LedgerDecision d = ledger_admit(l, local, at(2000 + i, 0, LedgerMode::local_fallback),
                                              local_ok(10, 3), true);
        EXPECT_TRUE(d.allowed);
        EXPECT_EQ(d.via, LedgerVia::local);
        EXPECT_EQ(d.remaining, 3u) << "the local window's remaining";
    }
    EXPECT_EQ(l.unacked, 5u) << "reported when Redis is back";
}

TEST(GrantLedger, NewEpochDropsLeaseAndGiveBack) {
    const SyncConfig c = config(1);
    SyncLedger l = fresh(10);
    l.lease_left = 5;
    l.lease_until_ms = 10'000;
    l.give_back = 2;
    const LedgerDecision d = ledger_admit(l, c, at(100, /*gen=*/1), local_ok(10), true);
    EXPECT_EQ(d.via, LedgerVia::overdraft) << "the lease's record is gone with Redis' data";
    EXPECT_EQ(l.lease_left, 0u);
    EXPECT_EQ(l.give_back, 0u);
}

TEST(GrantLedger, RemainingAndResetCombineLocalAndView) {
    const SyncConfig c = config(1);
    SyncLedger l = fresh(100);
    l.view_total = 40;
    l.lease_left = 10;
    l.lease_until_ms = 10'000;
    l.view_reset_at_ms = 31'000;
    const LedgerDecision d = ledger_admit(l, c, at(1000), local_ok(100, 99, 1), true);
    EXPECT_EQ(d.via, LedgerVia::lease);
    EXPECT_EQ(d.remaining, 100u - 40 + 9) << "room at the view plus our lease";
    EXPECT_EQ(d.reset_s, 30u) << "until the view's records leave";
    const LedgerDecision e = ledger_admit(l, c, at(1000), local_ok(100, 5, 1), true);
    EXPECT_EQ(e.remaining, 5u) << "never more than the local window";
}

TEST(GrantLedger, ANewLimitForgetsTheViewsRoomMoment) {
    const SyncConfig c = config(1);
    SyncLedger l = fresh(10);
    l.view_total = 10;
    l.view_room_at_ms = 1000;  // below 10 from then: says nothing about 5
    EXPECT_FALSE(ledger_admit(l, c, at(2000), local_ok(5), true).allowed);
    EXPECT_EQ(l.view_room_at_ms, 0);
}

// ---- window_usage -------------------------------------------------------------

TEST(SyncBatch, WindowUsageOfTheExactLog) {
    WindowState w;
    window_reset(w);
    const WindowLimit lim{5, 1000};
    for (std::int64_t t : {100, 200, 200, 900})
        ASSERT_TRUE(window_consume(w, lim, t, true).allowed);
    std::vector<ReseedEntry> u;
    window_usage(w, 1000, 1000, u);
    ASSERT_EQ(u.size(), 3u);
    EXPECT_EQ(u[0].age_ms, 900);
    EXPECT_EQ(u[0].count, 1u);
    EXPECT_EQ(u[1].age_ms, 800);
    EXPECT_EQ(u[1].count, 2u);
    EXPECT_EQ(u[2].age_ms, 100);
    window_usage(w, 1000, 1100, u);
    EXPECT_EQ(u.size(), 2u) << "the request at 100 left at 1100";
}

TEST(SyncBatch, WindowUsageOfBuckets) {
    WindowState w;
    window_reset(w);
    const WindowLimit lim{100, 1000};  // buckets of 20 ms
    ASSERT_TRUE(window_consume(w, lim, 105, true).allowed);
    ASSERT_TRUE(window_consume(w, lim, 130, true).allowed);
    ASSERT_TRUE(window_consume(w, lim, 131, true).allowed);
    std::vector<ReseedEntry> u;
    window_usage(w, 1000, 1000, u);
    ASSERT_EQ(u.size(), 2u);
    EXPECT_EQ(u[0].age_ms, 1000 - 119) << "a bucket counts as of its last millisecond";
    EXPECT_EQ(u[0].count, 1u);
    EXPECT_EQ(u[1].age_ms, 1000 - 139);
    EXPECT_EQ(u[1].count, 2u);
    window_usage(w, 1000, 50, u);  // a clock behind the window's: age 0, not negative
    ASSERT_EQ(u.size(), 1u);
    EXPECT_EQ(u[0].age_ms, 0);
    EXPECT_EQ(u[0].count, 3u);
}

// ---- SyncBatch -------------------------------------------------------------------

RedisReply ok_reply(const std::string &epoch, std::int64_t now, std::int64_t qleft,
                    std::int64_t seq, const std::vector<std::vector<std::int64_t>> &results,
                    std::int64_t nodes = 1) {
    RedisReply r;
    r.type = RedisReply::Type::array;
    r.elements = {RedisReply::of_string("ok"), RedisReply::of_string(epoch),
                  RedisReply::of_integer(now), RedisReply::of_integer(qleft),
                  RedisReply::of_integer(seq), RedisReply::of_integer(nodes)};
    for (const auto &res : results) {
        for (std::int64_t v : res) r.elements.push_back(RedisReply::of_integer(v));
    }
    return r;
}

RedisReply status_reply(const char *status, const std::string &epoch, std::int64_t last,
                        std::int64_t nodes = 1) {
    RedisReply r;
    r.type = RedisReply::Type::array;
    r.elements = {RedisReply::of_string(status), RedisReply::of_string(epoch),
                  RedisReply::of_integer(1),     RedisReply::of_integer(0),
                  RedisReply::of_integer(last),  RedisReply::of_integer(nodes)};
    return r;
}

struct Fixture {
    SyncConfig cfg = config(1);
    SyncNodeState node{};
    WindowState window{};
    SyncLedger ledger{};
    SyncBatch batch;
    Fixture() {
        sync_node_init(node, 42, 0);
        window_reset(window);
        ledger_init(ledger, 0);
        ledger.limit = 10;
    }
};

TEST(SyncBatch, LeaseIsMeasuredFromWhenTheBatchLeft) {
    Fixture f;
    f.ledger.demand = 1;
    f.batch.begin(f.node, f.cfg, 1000, 7);
    ASSERT_TRUE(f.batch.offer(1, 1000, f.ledger, f.window));
    ASSERT_GT(f.batch.requests()[0].want, 0u);
    std::string err;
    // The reply took 500 ms; Redis said the grant lasts 300 ms from its now.
    ASSERT_TRUE(f.batch.accept_reply(
        f.node, ok_reply("e:1", 5'000'000, 0, 1, {{4, 300, 77, 4, 0, 1300}}), 1500, err))
        << err;
    f.batch.settle(0, f.ledger);
    EXPECT_EQ(f.ledger.lease_left, 4u);
    EXPECT_EQ(f.ledger.lease_until_ms, 1300) << "send + 300, not receive + 300";
    EXPECT_EQ(f.ledger.lease_bucket, 77);
    EXPECT_EQ(f.ledger.view_total, 4u);
    EXPECT_EQ(f.ledger.view_reset_at_ms, 1500 + 1300) << "Reset from receive: never early";
    EXPECT_NE(ledger_admit(f.ledger, f.cfg, at(1600), local_ok(10), true).via, LedgerVia::lease);
    EXPECT_EQ(f.node.seq, 1u);
    EXPECT_EQ(std::string(f.node.epoch, f.node.epoch_len), "e:1");
    EXPECT_EQ(f.node.last_success_ms, 1500);
}

TEST(SyncBatch, AFailedBatchResendsOverdraftButNeverAGiveBack) {
    Fixture f;
    f.ledger.unacked = 2;
    f.ledger.unacked_at_ms = 900;
    f.ledger.give_back = 3;
    f.ledger.give_back_bucket = 55;
    f.batch.begin(f.node, f.cfg, 1000, 7);
    ASSERT_TRUE(f.batch.offer(1, 1000, f.ledger, f.window));
    const GrantRequest &g = f.batch.requests()[0];
    ASSERT_EQ(g.history.size(), 1u);
    EXPECT_EQ(g.history[0].age_ms, 100) << "reported as of the newest, not a tick late";
    EXPECT_EQ(g.history[0].count, 2u);
    EXPECT_EQ(g.give_back, 3u);
    EXPECT_EQ(f.ledger.inflight, 2u);
    EXPECT_EQ(f.ledger.give_back, 0u);
    f.batch.fail(f.node);
    f.batch.settle(0, f.ledger);
    EXPECT_EQ(f.ledger.inflight, 0u);
    EXPECT_EQ(f.ledger.unacked, 2u);
    EXPECT_EQ(f.node.failures, 1u);

    f.batch.begin(f.node, f.cfg, 1100, 7);
    ASSERT_TRUE(f.batch.offer(1, 1000, f.ledger, f.window));
    EXPECT_EQ(f.batch.requests()[0].history[0].count, 2u);
    EXPECT_EQ(f.batch.requests()[0].give_back, 0u) << "maybe applied already: never twice";
    EXPECT_EQ(f.batch.header().seq, 2u);
}

TEST(SyncBatch, AnAppliedBatchAcknowledgesWhatItCarried) {
    Fixture f;
    f.ledger.unacked = 2;
    f.batch.begin(f.node, f.cfg, 1000, 7);
    ASSERT_TRUE(f.batch.offer(1, 1000, f.ledger, f.window));
    f.ledger.unacked++;  // accepted while the batch was on the wire
    std::string err;
    ASSERT_TRUE(
        f.batch.accept_reply(f.node, ok_reply("e:1", 9, 0, 1, {{0, 0, 0, 3, 0, 1000}}), 1010, err));
    f.batch.settle(0, f.ledger);
    EXPECT_EQ(f.ledger.unacked, 1u);
    EXPECT_EQ(f.ledger.inflight, 0u);
    EXPECT_EQ(f.ledger.view_total, 3u);
}

TEST(SyncBatch, ANewGrantReplacesTheLeaseAndGivesTheRestBack) {
    Fixture f;
    f.ledger.lease_left = 3;
    f.ledger.lease_until_ms = 1030;  // expiring: renewal
    f.ledger.lease_bucket = 10;
    f.ledger.demand = 2;
    f.batch.begin(f.node, f.cfg, 1000, 7);
    ASSERT_TRUE(f.batch.offer(1, 1000, f.ledger, f.window));
    std::string err;
    ASSERT_TRUE(f.batch.accept_reply(f.node, ok_reply("e:1", 9, 0, 1, {{5, 400, 12, 8, 0, 1400}}),
                                     1010, err));
    f.batch.settle(0, f.ledger);
    EXPECT_EQ(f.ledger.lease_left, 5u);
    EXPECT_EQ(f.ledger.lease_bucket, 12);
    EXPECT_EQ(f.ledger.give_back, 3u);
    EXPECT_EQ(f.ledger.give_back_bucket, 10);
}

TEST(SyncBatch, AHeartbeatWhenNobodyNeedsAnything) {
    Fixture f;
    f.batch.begin(f.node, f.cfg, 1000, 7, "lz");
    EXPECT_FALSE(f.batch.offer(1, 1000, f.ledger, f.window));
    EXPECT_EQ(f.batch.size(), 0u);
    std::vector<std::string> keys, args;
    f.batch.script_call("akm:", keys, args);
    ASSERT_EQ(keys.size(), 3u);
    EXPECT_EQ(keys[0], "akm:epoch");
    EXPECT_EQ(keys[1], "akm:s:000000000000002a");
    EXPECT_EQ(keys[2], "akm:n:lz") << "the zone's nodes-seen set";
    EXPECT_EQ(args.back(), "0") << "no budgets";
}

TEST(SyncBatch, EveryReplyUpdatesNodesSeen) {
    Fixture f;
    EXPECT_EQ(f.node.nodes_seen, 0u) << "none before the first reply";
    std::string err;
    f.batch.begin(f.node, f.cfg, 100, 7);
    ASSERT_TRUE(f.batch.accept_reply(f.node, ok_reply("e:1", 9, 0, 1, {}, 3), 110, err)) << err;
    EXPECT_EQ(f.batch.reply().nodes, 3u);
    EXPECT_EQ(f.node.nodes_seen, 3u);
    f.batch.begin(f.node, f.cfg, 200, 7);
    ASSERT_TRUE(f.batch.accept_reply(f.node, status_reply("stale", "e:1", 1, 2), 210, err));
    EXPECT_EQ(f.node.nodes_seen, 2u) << "a stale reply counts too";
    f.batch.begin(f.node, f.cfg, 300, 7);
    ASSERT_TRUE(f.batch.accept_reply(f.node, status_reply("epoch", "e:2", 0, 4), 310, err));
    EXPECT_EQ(f.node.nodes_seen, 4u) << "and one from a new epoch";
    // A failed exchange leaves the last count.
    f.batch.begin(f.node, f.cfg, 400, 7);
    f.batch.fail(f.node);
    EXPECT_EQ(f.node.nodes_seen, 4u);
    // A reply without the count (a script of another version) is malformed.
    RedisReply old = status_reply("stale", "e:2", 1);
    old.elements.pop_back();
    f.batch.begin(f.node, f.cfg, 500, 7);
    EXPECT_FALSE(f.batch.accept_reply(f.node, old, 510, err));
    EXPECT_EQ(f.node.nodes_seen, 4u);
}

TEST(SyncBatch, AnEpochChangeReseedsFromTheLocalWindow) {
    Fixture f;
    const WindowLimit lim{10, 1000};
    for (std::int64_t t : {100, 150}) ASSERT_TRUE(window_consume(f.window, lim, t, true).allowed);
    std::memcpy(f.node.epoch, "old:1", 5);
    f.node.epoch_len = 5;
    f.ledger.lease_left = 4;
    f.ledger.lease_until_ms = 5000;
    f.ledger.unacked = 1;
    f.batch.begin(f.node, f.cfg, 200, 7);
    ASSERT_TRUE(f.batch.offer(1, 1000, f.ledger, f.window));
    EXPECT_EQ(f.batch.header().epoch_seen, "old:1");
    std::string err;
    ASSERT_TRUE(f.batch.accept_reply(f.node, status_reply("epoch", "new:2", 0), 210, err));
    f.batch.settle(0, f.ledger);
    EXPECT_EQ(f.node.epoch_gen, 1u);
    EXPECT_EQ(f.node.epoch_changes, 1u);
    EXPECT_EQ(std::string(f.node.epoch, f.node.epoch_len), "new:2");
    EXPECT_EQ(f.ledger.inflight, 0u);

    f.batch.begin(f.node, f.cfg, 300, 7);
    ASSERT_TRUE(f.batch.offer(1, 1000, f.ledger, f.window));
    const GrantRequest &g = f.batch.requests()[0];
    EXPECT_TRUE(g.reseed);
    EXPECT_EQ(g.report, 0u) << "the window includes the overdraft";
    ASSERT_EQ(g.history.size(), 2u);
    EXPECT_EQ(g.history[0].age_ms, 200);
    EXPECT_EQ(g.history[1].age_ms, 150);
    EXPECT_EQ(f.ledger.lease_left, 0u) << "the old lease's record is gone";
    EXPECT_EQ(f.batch.header().epoch_seen, "new:2");
    ASSERT_TRUE(f.batch.accept_reply(f.node, ok_reply("new:2", 9, 250, 2, {{0, 0, 0, 2, 0, 900}}),
                                     310, err));
    f.batch.settle(0, f.ledger);
    EXPECT_EQ(f.ledger.seeded_gen, 1u);
    EXPECT_EQ(f.ledger.unacked, 0u);
    EXPECT_EQ(f.ledger.view_total, kViewFull) << "quarantine: totals are partial";
    EXPECT_EQ(f.ledger.view_room_at_ms, 310 + 250);
}

TEST(SyncBatch, AnIdleWindowNeedsNoReseed) {
    Fixture f;
    f.node.epoch_gen = 3;  // Redis lost its data; this budget has nothing that counts
    f.ledger.unacked = 2;  // long ago
    f.batch.begin(f.node, f.cfg, 100'000, 7);
    EXPECT_FALSE(f.batch.offer(1, 1000, f.ledger, f.window));
    EXPECT_EQ(f.ledger.seeded_gen, 3u);
    EXPECT_EQ(f.ledger.unacked, 0u);
}

TEST(SyncBatch, AStaleReplyCatchesTheSequenceUp) {
    Fixture f;
    f.batch.begin(f.node, f.cfg, 100, 7);
    std::string err;
    ASSERT_TRUE(f.batch.accept_reply(f.node, status_reply("stale", "e:1", 50), 110, err));
    EXPECT_EQ(f.batch.outcome(), SyncBatch::Outcome::not_applied);
    EXPECT_EQ(f.node.seq, 50u);
    f.batch.begin(f.node, f.cfg, 200, 7);
    EXPECT_EQ(f.batch.header().seq, 51u);
}

TEST(SyncBatch, WhatABatchThatNeverSettledCarriedIsUnackedAgain) {
    Fixture f;
    f.ledger.unacked = 2;
    f.batch.begin(f.node, f.cfg, 100, 7);
    ASSERT_TRUE(f.batch.offer(1, 1000, f.ledger, f.window));
    EXPECT_EQ(f.ledger.inflight, 2u);
    // The process died with the batch on the wire; the zone survived.
    SyncBatch next;
    next.begin(f.node, f.cfg, 200, 7);
    ASSERT_TRUE(next.offer(1, 1000, f.ledger, f.window));
    EXPECT_EQ(next.requests()[0].history[0].count, 2u);
}

TEST(SyncBatch, GrantsAreSizedToDemand) {
    Fixture f;  // D = 1: leases of 2 * interval + timeout = 250 ms
    f.ledger.limit = 1000;
    f.ledger.demand = 3;
    f.batch.begin(f.node, f.cfg, 1000, 7);
    ASSERT_TRUE(f.batch.offer(1, 60'000, f.ledger, f.window));
    // 3 per 100 ms tick over 250 ms + a 1.2 s Redis bucket.
    EXPECT_EQ(f.batch.requests()[0].want, 3u * 15);
    EXPECT_EQ(f.batch.requests()[0].lease_ms, 250u);

    Fixture s;  // D = 0, a client every 5 s: a lease that reaches its next request
    s.cfg = config(0);
    s.ledger.limit = 16;
    s.ledger.demand = 1;
    s.ledger.demand_gap_ms = 5000;
    s.batch.begin(s.node, s.cfg, 1000, 7);
    ASSERT_TRUE(s.batch.offer(1, 60'000, s.ledger, s.window));
    EXPECT_EQ(s.batch.requests()[0].lease_ms, 5000u + 1250 + 150);
    EXPECT_EQ(s.batch.requests()[0].want, 2u);
}

TEST(SyncBatch, NoGrantAskedWhileTheViewSaysFull) {
    Fixture f;
    f.ledger.view_total = 10;
    f.ledger.view_room_at_ms = 10'000;
    f.ledger.demand = 5;
    f.batch.begin(f.node, f.cfg, 1000, 7);
    EXPECT_FALSE(f.batch.offer(1, 1000, f.ledger, f.window)) << "the answer would be 0";
    f.ledger.demand = 5;
    f.batch.begin(f.node, f.cfg, 9900, 7);
    ASSERT_TRUE(f.batch.offer(1, 1000, f.ledger, f.window)) << "in time for room_at";
    EXPECT_GT(f.batch.requests()[0].want, 0u);
}

TEST(SyncBatch, AMalformedReplyIsAFailure) {
    Fixture f;
    f.ledger.unacked = 1;
    f.batch.begin(f.node, f.cfg, 100, 7);
    ASSERT_TRUE(f.batch.offer(1, 1000, f.ledger, f.window));
    std::string err;
    EXPECT_FALSE(f.batch.accept_reply(f.node, RedisReply::of_error("ERR boom"), 110, err));
    EXPECT_NE(err.find("boom"), std::string::npos);
    EXPECT_FALSE(f.batch.accept_reply(f.node, ok_reply("e:1", 9, 0, 1, {}), 110, err))
        << "a reply for another batch size";
    EXPECT_EQ(f.node.last_success_ms, 0) << "a failed exchange is not a success";
}

TEST(SyncBatch, AFullBatchLeavesTheRestUntouched) {
    SyncBatch b(1);
    SyncNodeState node;
    sync_node_init(node, 1, 0);
    WindowState w;
    window_reset(w);
    SyncLedger a = fresh(10), c = fresh(10);
    a.unacked = 1;
    c.unacked = 1;
    c.demand = 4;
    b.begin(node, config(1), 100, 7);
    EXPECT_TRUE(b.offer(1, 1000, a, w));
    EXPECT_TRUE(b.full());
    EXPECT_FALSE(b.offer(2, 1000, c, w));
    EXPECT_EQ(c.demand, 4u) << "its demand counts on into the next tick";
    EXPECT_EQ(c.inflight, 0u);
}

// ---- the grant script's model ----------------------------------------------------

struct ModelCall {
    GrantStore store;
    GrantBatchHeader header;
    ModelCall() {
        header.node = 1;
        header.epoch_candidate = 0xab;
        header.quarantine_ms = 0;
    }
    GrantReply call(std::int64_t now, const std::vector<GrantRequest> &budgets) {
        header.seq++;
        std::vector<std::string> keys, args;
        grant_script_call("akm:", header, budgets, keys, args);
        const RedisReply r = grant_model_eval(store, now, keys, args);
        GrantReply out;
        std::string err;
        EXPECT_TRUE(parse_grant_reply(r, budgets.size(), out, err)) << err << " " << describe(r);
        if (out.status == GrantStatus::applied) header.epoch_seen = out.epoch;
        return out;
    }
    std::int64_t recorded(std::uint64_t budget) {
        std::int64_t sum = 0;
        char key[64];
        std::snprintf(key, sizeof key, "akm:l:{%016llx}", static_cast<unsigned long long>(budget));
        for (const auto &[b, c] : store.hashes[key].fields) sum += c;
        return sum;
    }
};

GrantRequest ask(std::uint64_t budget, std::uint32_t limit, std::uint32_t period,
                 std::uint32_t want, std::uint32_t lease = 250) {
    GrantRequest g;
    g.budget = budget;
    g.limit = limit;
    g.period_ms = period;
    g.want = want;
    g.lease_ms = lease;
    return g;
}

constexpr std::int64_t kNow = 1'767'225'600'000;

TEST(GrantScriptModel, ANewEpochQuarantinesGrants) {
    ModelCall m;
    m.header.quarantine_ms = 300;
    GrantReply r = m.call(kNow, {ask(1, 100, 1000, 10)});
    ASSERT_EQ(r.status, GrantStatus::applied) << "a node that knew no epoch";
    EXPECT_EQ(r.epoch, "00000000000000ab:" + std::to_string(kNow));
    EXPECT_EQ(r.quarantine_ms, 300u);
    EXPECT_EQ(r.results[0].grant, 0u);
    r = m.call(kNow + 300, {ask(1, 100, 1000, 10)});
    EXPECT_EQ(r.quarantine_ms, 0u);
    EXPECT_EQ(r.results[0].grant, 10u);
}

TEST(GrantScriptModel, AnotherEpochAppliesNothing) {
    ModelCall m;
    m.call(kNow, {});
    m.header.epoch_seen = "elsewhere:1";
    GrantRequest g = ask(1, 100, 1000, 10);
    g.history = {{0, 5}};
    const GrantReply r = m.call(kNow + 10, {g});
    EXPECT_EQ(r.status, GrantStatus::epoch_changed);
    EXPECT_EQ(m.recorded(1), 0);
}

TEST(GrantScriptModel, ABatchIsAppliedOnce) {
    GrantStore store;
    GrantBatchHeader h;
    h.node = 9;
    h.seq = 4;
    GrantRequest g = ask(1, 100, 1000, 0);
    g.history = {{0, 5}};
    std::vector<std::string> keys, args;
    grant_script_call("akm:", h, {g}, keys, args);
    GrantReply first, again;
    std::string err;
    ASSERT_TRUE(parse_grant_reply(grant_model_eval(store, kNow, keys, args), 1, first, err));
    // Delivered twice (or a late copy of a batch given up on).
    ASSERT_TRUE(parse_grant_reply(grant_model_eval(store, kNow + 5, keys, args), 1, again, err));
    EXPECT_EQ(first.status, GrantStatus::applied);
    EXPECT_EQ(again.status, GrantStatus::stale);
    EXPECT_EQ(again.last_seq, 4u);
    EXPECT_EQ(store.hashes["akm:l:{0000000000000001}"].fields.begin()->second, 5);
}

TEST(GrantScriptModel, GrantsHalveTheRoomAndLastToTheirBucketsEnd) {
    ModelCall m;
    const std::int64_t now = 1'000'000;  // buckets of 20 ms for 1 s
    GrantReply r = m.call(now, {ask(1, 100, 1000, 1000, 250)});
    ASSERT_EQ(r.status, GrantStatus::applied);
    EXPECT_EQ(r.results[0].grant, 50u) << "half the room";
    const std::int64_t e = (now + 250) / 20;
    EXPECT_EQ(r.results[0].lease_bucket, e);
    EXPECT_EQ(r.results[0].lease_ms, (e + 1) * 20 - 1 - now);
    EXPECT_EQ(r.results[0].total, 50u);
    EXPECT_EQ(r.results[0].reset_ms, (e + 1) * 20 - 1 + 1000 - now);
    r = m.call(now + 1, {ask(1, 100, 1000, 1000, 250)});
    EXPECT_EQ(r.results[0].grant, 25u);
    r = m.call(now + 2, {ask(1, 100, 1000, 3, 250)});
    EXPECT_EQ(r.results[0].grant, 3u) << "no more than wanted";
}

TEST(GrantScriptModel, GiveBackOnlyWhatIsRecordedAndStillCounts) {
    ModelCall m;
    const std::int64_t now = 1'000'000;
    GrantReply r = m.call(now, {ask(1, 100, 1000, 10)});
    const std::int64_t e = r.results[0].lease_bucket;
    GrantRequest g = ask(1, 100, 1000, 0);
    g.give_back = 15;  // more than was recorded there
    g.give_back_bucket = e;
    r = m.call(now + 10, {g});
    EXPECT_EQ(r.results[0].total, 0u);
    EXPECT_EQ(m.recorded(1), 0) << "never below zero";
    // A give-back to a bucket that left the window changes nothing.
    GrantRequest h = ask(1, 100, 1000, 0);
    h.history = {{0, 4}};
    m.call(now + 20, {h});
    GrantRequest old = ask(1, 100, 1000, 0);
    old.give_back = 4;
    old.give_back_bucket = (now - 5000) / 20;
    r = m.call(now + 30, {old});
    EXPECT_EQ(r.results[0].total, 4u);
}

TEST(GrantScriptModel, HistoryIsRecordedAtItsAgeAndLeavesOnTime) {
    ModelCall m;
    const std::int64_t now = 1'000'000;
    GrantRequest g = ask(1, 10, 1000, 0);
    g.history = {{500, 3}, {2000, 7}};  // the second left the window already
    GrantReply r = m.call(now, {g});
    EXPECT_EQ(r.results[0].total, 3u);
    const std::int64_t b = (now - 500) / 20;
    const std::int64_t exit = (b + 1) * 20 - 1 + 1000;
    EXPECT_EQ(r.results[0].reset_ms, exit - now);
    r = m.call(exit - 1, {ask(1, 10, 1000, 0)});
    EXPECT_EQ(r.results[0].total, 3u);
    r = m.call(exit, {ask(1, 10, 1000, 0)});
    EXPECT_EQ(r.results[0].total, 0u);
}

TEST(GrantScriptModel, RoomIsWhenEnoughRecordsLeave) {
    ModelCall m;
    const std::int64_t now = 1'000'000;
    GrantRequest g = ask(1, 5, 1000, 0);
    g.history = {{400, 2}, {200, 2}, {0, 2}};  // 6 recorded, limit 5
    GrantReply r = m.call(now, {g});
    EXPECT_EQ(r.results[0].total, 6u);
    // Below 5 once the oldest two leave: 4 left.
    const std::int64_t b = (now - 400) / 20;
    EXPECT_EQ(r.results[0].room_ms, (b + 1) * 20 - 1 + 1000 - now);
    EXPECT_EQ(r.results[0].grant, 0u);
}

TEST(GrantScriptModel, KeysExpireOnlyAfterTheirNewestBucketLeft) {
    ModelCall m;
    const std::int64_t now = 1'000'000;
    const GrantReply r = m.call(now, {ask(1, 100, 1000, 10)});
    const auto &h = m.store.hashes["akm:l:{0000000000000001}"];
    EXPECT_EQ(h.expire_at, now + r.results[0].reset_ms + 1);
}

TEST(GrantScriptModel, NodesSeenAreDistinctNodesOfTheZoneInTheLastTenSeconds) {
    GrantStore store;
    auto batch = [&](std::uint64_t node, std::uint64_t seq, const char *zone, std::int64_t now,
                     const std::string &epoch_seen = "") {
        GrantBatchHeader h;
        h.node = node;
        h.seq = seq;
        h.zone = zone;
        h.epoch_seen = epoch_seen;
        h.epoch_candidate = 0xab;
        std::vector<std::string> keys, args;
        grant_script_call("akm:", h, {}, keys, args);
        GrantReply out;
        std::string err;
        EXPECT_TRUE(parse_grant_reply(grant_model_eval(store, now, keys, args), 0, out, err))
            << err;
        return out;
    };
    EXPECT_EQ(batch(1, 1, "a", kNow).nodes, 1u) << "itself";
    EXPECT_EQ(batch(1, 2, "a", kNow + 5).nodes, 1u) << "a node counts once";
    EXPECT_EQ(batch(2, 1, "a", kNow + 10).nodes, 2u);
    EXPECT_EQ(batch(3, 1, "b", kNow + 10).nodes, 1u) << "per zone";
    EXPECT_EQ(batch(2, 1, "a", kNow + 20).status, GrantStatus::stale);
    EXPECT_EQ(batch(2, 1, "a", kNow + 20).nodes, 2u) << "stale replies count";
    EXPECT_EQ(batch(4, 1, "a", kNow + 30, "elsewhere:1").status, GrantStatus::epoch_changed);
    EXPECT_EQ(batch(4, 2, "a", kNow + 30, "elsewhere:1").nodes, 3u) << "so do epoch replies";
    const auto &z = store.zsets["akm:n:a"];
    ASSERT_EQ(z.members.size(), 3u);
    EXPECT_EQ(z.members.at("0000000000000001"), kNow + 5) << "scored by the latest batch";
    EXPECT_EQ(z.expire_at, kNow + 30 + kNodeSeenMs);
    // Node 1 was last seen at kNow + 5: still seen a ms before kNodeSeenMs
    // later, gone at it.
    EXPECT_EQ(batch(2, 2, "a", kNow + 5 + kNodeSeenMs - 1).nodes, 3u);
    EXPECT_EQ(batch(2, 3, "a", kNow + 5 + kNodeSeenMs).nodes, 2u);
    // Nobody for longer than kNodeSeenMs: the set expired; a newcomer sees itself.
    EXPECT_EQ(batch(5, 1, "a", kNow + 5 + 3 * kNodeSeenMs).nodes, 1u);
    EXPECT_EQ(store.zsets["akm:n:a"].members.size(), 1u);
}

}  // namespace
}  // namespace apikey
