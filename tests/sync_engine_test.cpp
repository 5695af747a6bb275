// Cluster mode end to end on the real pieces: synced CounterTables (heap
// memory standing in for each node's zone) decide requests through consume()
// and sync through sync_tick() with a Redis that is either the grant
// script's C++ reference model (grant_model_eval, held to the real script by
// tests/grant_script_redis_test.cpp) behind a fake RedisLink, or a private
// real redis-server over the hiredis link.
//
// Checked: the N + n*D bound over every trailing window under steady
// traffic; a link that fails (fail=closed refuses once leases and overdraft
// are spent; fail=local falls back to the local window after fail_after and
// reports it when Redis is back); refunds; adoption after a reload keeps the
// ledgers and the node id; rotation over the slots when a batch is capped;
// unsynced tables keep their layout; a burst of 3N over two nodes against a
// real Redis; nodes seen per zone (the status' nodes_seen).
#include "core/sync_engine.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/counter_table.h"
#include "core/grant_script.h"
#include "core/redis_link.h"
#include "core/shm_atomic.h"
#include "support/redis_server.h"

extern char **environ;

namespace apikey {
namespace {

constexpr std::int64_t kRedisBase = 1'767'225'600'000;  // Redis' wall clock at sim time 0
constexpr const char *kPrefix = "akm:";

std::uint64_t self() { return static_cast<std::uint64_t>(getpid()); }

// Memory for a zone of `slots` counters (8-byte aligned like a zone).
struct Zone {
    Zone(std::size_t slots, bool synced) {
        bytes = 4096 + slots * (synced ? kSyncedCounterBytes : kCounterBytes);
        words.assign((bytes + 7) / 8, 0);
    }
    void *memory() { return words.data(); }
    std::size_t bytes;
    std::vector<std::uint64_t> words;
};

// A Redis with the reference model's logic, on a clock of its own.
struct FakeRedis {
    GrantStore store;
    std::int64_t now_ms = kRedisBase;
    std::uint64_t runs = 0;
};

// The link to it. `failing`: every exchange fails (a timeout: the link
// closes); `latency_ms`: the reply arrives this much later on the node's
// clock (the script runs halfway).
class FakeLink : public RedisLink {
public:
    explicit FakeLink(FakeRedis &redis) : redis_(redis) {}

    RedisResult connect(const RedisEndpoint &) noexcept override {
        RedisResult r;
        if (refuse_connect) {
            r.error = "connection refused";
            return r;
        }
        connected_ = true;
        r.ok = true;
        return r;
    }
    bool connected() const noexcept override { return connected_; }
    void close() noexcept override { connected_ = false; }

    RedisResult command(const std::vector<std::string> &argv) noexcept override {
        RedisResult r;
        if (!connected_) {
            r.error = "not connected";
            return r;
        }
        if (failing) {
            r.error = "timeout";
            return r;
        }
        if (argv.size() < 3 || (argv[0] != "EVALSHA" && argv[0] != "EVAL")) {
            r.ok = true;
            r.reply = RedisReply::of_error("ERR unknown command");
            return r;
        }
        const std::size_t nkeys = std::stoul(argv[2]);
        const std::vector<std::string> keys(argv.begin() + 3, argv.begin() + 3 + nkeys);
        const std::vector<std::string> args(argv.begin() + 3 + nkeys, argv.end());
        extra_ms = latency_ms;  // the node reads the clock after the reply: later
        r.ok = true;
        r.reply = grant_model_eval(redis_.store, redis_.now_ms + latency_ms / 2, keys, args);
        redis_.runs++;
        return r;
    }

    bool failing = false;
    bool refuse_connect = false;
    std::int64_t latency_ms = 0;
    std::int64_t extra_ms = 0;  // added to the node's clock while a reply is "in flight"

private:
    FakeRedis &redis_;
    bool connected_ = true;
};

// One nginx node: its zone, its link, its clock (sim time + offset).
struct Node {
    Node(FakeRedis &redis, const SyncConfig &config, std::size_t slots, std::int64_t offset)
        : zone(slots, true), link(redis), offset(offset) {
        table = CounterTable::format(zone.memory(), zone.bytes, &config, offset);
    }
    Zone zone;
    CounterTable table;
    FakeLink link;
    std::int64_t offset;
};

class Cluster {
public:
    Cluster(int n, const SyncConfig &config, std::size_t slots = 64) : config_(config) {
        std::mt19937_64 rng(7);
        for (int i = 0; i < n; i++) {
            nodes_.push_back(std::make_unique<Node>(
                redis_, config, slots,
                std::uniform_int_distribution<std::int64_t>(1, 1'000'000'000)(rng)));
        }
    }

    Node &node(int i) { return *nodes_[i]; }
    FakeRedis &redis() { return redis_; }
    std::int64_t now() const { return t_; }
    void set_time(std::int64_t t) {
        t_ = t;
        redis_.now_ms = kRedisBase + t;
    }
    std::int64_t node_now(int i) const { return t_ + nodes_[i]->offset; }

    CounterResult consume(int i, std::uint64_t budget, WindowLimit limit, bool commit = true) {
        return nodes_[i]->table.consume(budget, limit, node_now(i), commit, self());
    }

    // A fresh Redis makes a new epoch on first contact and grants nothing
    // for quarantine_ms: tick every node through it, ending at `until`.
    void warm_up(std::int64_t until = 200) {
        for (std::int64_t t = now(); t < until; t++) {
            set_time(t);
            for (int j = 0; j < static_cast<int>(nodes_.size()); j++) {
                if (t % config_.interval_ms == 0) tick(j);
            }
        }
        set_time(until);
    }

    SyncTickResult tick(int i, std::size_t max_budgets = SyncBatch::kDefaultMaxBudgets) {
        Node &n = *nodes_[i];
        SyncTickOptions options;
        options.max_budgets = max_budgets;
        options.self = self();
        options.zone = "lz";
        RedisEndpoint ep;
        options.reconnect = &ep;
        n.link.extra_ms = 0;
        const SyncClock clock = [this, &n] { return t_ + n.offset + n.link.extra_ms; };
        const SyncTickResult r = sync_tick(n.table, n.link, script_, kPrefix, clock, rng_(),
                                           options);
        n.link.extra_ms = 0;
        return r;
    }

private:
    SyncConfig config_;
    FakeRedis redis_;
    std::vector<std::unique_ptr<Node>> nodes_;
    std::int64_t t_ = 0;
    std::mt19937_64 rng_{11};
    const RedisScript script_{kGrantScript};
};

SyncConfig config_of(std::uint32_t overdraft, FailMode fail, std::uint32_t interval = 20,
                     std::uint32_t timeout = 20) {
    SyncConfig c;
    c.interval_ms = interval;
    c.timeout_ms = timeout;
    c.overdraft = overdraft;
    c.fail_after_ms = 10 * interval;
    c.fail = fail;
    return c;
}

// The most requests accepted in any trailing window (t - period, t].
std::int64_t max_in_window(std::vector<std::int64_t> times, std::int64_t period) {
    std::sort(times.begin(), times.end());
    std::int64_t best = 0;
    std::size_t lo = 0;
    for (std::size_t hi = 0; hi < times.size(); hi++) {
        while (times[hi] - times[lo] >= period) lo++;
        best = std::max<std::int64_t>(best, static_cast<std::int64_t>(hi - lo + 1));
    }
    return best;
}

// ---- layout ----------------------------------------------------------------

TEST(SyncedCounterTable, LayoutSizesAndAdoptionRules) {
    EXPECT_EQ(kCounterBytes, 248u);
    EXPECT_EQ(kSyncedCounterBytes, 344u);
    EXPECT_EQ(sizeof(SyncLedger), 96u);
    const std::size_t mib = std::size_t{10} << 20;
    EXPECT_EQ(CounterTable::capacity_for(mib), CounterTable::capacity_for(mib, false));
    EXPECT_EQ(CounterTable::capacity_for(mib), 42'281u);  // unsynced: unchanged
    const std::size_t synced = CounterTable::capacity_for(mib, true);
    EXPECT_LT(synced, (mib - sizeof(CounterTableHeader)) / 344 + 1);
    EXPECT_GT(synced, (mib - 1024) / 344);
    EXPECT_EQ(CounterTable::capacity_for(0, true), 0u);

    const SyncConfig config = config_of(2, FailMode::closed);
    Zone zone(100, true);
    const CounterTable t = CounterTable::format(zone.memory(), zone.bytes, &config, 5);
    ASSERT_TRUE(t.valid());
    EXPECT_TRUE(t.synced());
    EXPECT_EQ(t.capacity(), CounterTable::capacity_for(zone.bytes, true));
    EXPECT_NE(t.sync_node().node_id, 0u);
    EXPECT_EQ(t.sync_node().last_success_ms, 5);
    EXPECT_EQ(t.sync_config().overdraft, 2u);

    // Adoption: only with the same sync settings, never across synced/unsynced.
    EXPECT_TRUE(CounterTable::adopt(zone.memory(), zone.bytes, &config).valid());
    EXPECT_FALSE(CounterTable::adopt(zone.memory(), zone.bytes).valid());
    EXPECT_FALSE(CounterTable::adopt(zone.memory(), zone.bytes, nullptr).valid());
    for (int change = 0; change < 5; change++) {
        SyncConfig other = config;
        switch (change) {
        case 0: other.interval_ms++; break;
        case 1: other.timeout_ms++; break;
        case 2: other.overdraft++; break;
        case 3: other.fail_after_ms++; break;
        case 4: other.fail = FailMode::local; break;
        }
        EXPECT_FALSE(CounterTable::adopt(zone.memory(), zone.bytes, &other).valid()) << change;
    }
    Zone plain(100, false);
    const CounterTable u = CounterTable::format(plain.memory(), plain.bytes);
    ASSERT_TRUE(u.valid());
    EXPECT_FALSE(u.synced());
    EXPECT_EQ(u.sync_node().node_id, 0u);
    EXPECT_EQ(u.capacity(), CounterTable::capacity_for(plain.bytes));
    EXPECT_FALSE(CounterTable::adopt(plain.memory(), plain.bytes, &config).valid());
    EXPECT_TRUE(CounterTable::adopt(plain.memory(), plain.bytes).valid());
    // Two formats: two node ids.
    Zone zone2(100, true);
    EXPECT_NE(CounterTable::format(zone2.memory(), zone2.bytes, &config).sync_node().node_id,
              t.sync_node().node_id);
}

TEST(SyncedCounterTable, SyncTickRefusesAnUnsyncedTable) {
    Zone plain(16, false);
    CounterTable u = CounterTable::format(plain.memory(), plain.bytes);
    FakeRedis redis;
    FakeLink link(redis);
    const RedisScript script(kGrantScript);
    const SyncTickResult r = sync_tick(
        u, link, script, kPrefix, [] { return std::int64_t{0}; }, 1);
    EXPECT_FALSE(r.sent);
    EXPECT_FALSE(r.ok);
    EXPECT_FALSE(r.error.empty());
    EXPECT_EQ(redis.runs, 0u);
}

// ---- the bound ---------------------------------------------------------------

// n nodes, traffic at twice the rate round-robin, a tick per node every
// interval (staggered), replies 0-3 ms late: no trailing window holds more
// than N + n*D, and the budget is mostly usable.
TEST(SyncEngine, SteadyTrafficKeepsTheClusterBound) {
    for (std::uint32_t overdraft : {0u, 1u, 3u}) {
        const int n = 3;
        const std::uint32_t N = 60;
        const std::uint32_t P = 1000;
        const SyncConfig config = config_of(overdraft, FailMode::closed);
        Cluster c(n, config);
        const std::uint64_t budget = budget_id('k', "key_steady", "", P);
        const WindowLimit limit{N, P};
        std::vector<std::int64_t> accepted;
        std::mt19937_64 rng(overdraft);
        const std::int64_t end = 5 * P;
        const std::int64_t gap = P / (2 * N);  // twice the rate
        std::int64_t k = 0;
        for (std::int64_t t = 0; t < end; t++) {
            c.set_time(t);
            if (t % gap == 0) {
                const int j = static_cast<int>(k++ % n);
                const CounterResult r = c.consume(j, budget, limit);
                EXPECT_TRUE(r.synced);
                if (r.decision.allowed) {
                    accepted.push_back(t);
                } else {
                    EXPECT_GE(r.decision.retry_after_s, 1u);
                    EXPECT_EQ(r.decision.next_free_s, r.decision.retry_after_s);
                }
            }
            for (int j = 0; j < n; j++) {
                if ((t + 7 * j) % config.interval_ms == 0) {
                    c.node(j).link.latency_ms = std::uniform_int_distribution<int>(0, 3)(rng);
                    const SyncTickResult r = c.tick(j);
                    ASSERT_TRUE(r.ok) << r.error;
                }
            }
        }
        const std::int64_t worst = max_in_window(accepted, P);
        EXPECT_LE(worst, std::int64_t{N} + n * std::int64_t{overdraft}) << "D=" << overdraft;
        for (int j = 0; j < n; j++) {
            EXPECT_EQ(load_relaxed(&c.node(j).table.sync_node().nodes_seen),
                      static_cast<std::uint64_t>(n))
                << "node " << j << " sees every node";
        }
        // After the first period, most of N per period (2x demand).
        const auto later = std::count_if(accepted.begin(), accepted.end(),
                                         [&](std::int64_t t) { return t >= P; });
        EXPECT_GE(later, 4 * std::int64_t{N} * 7 / 10) << "D=" << overdraft;
        std::printf("[ steady ] n=%d N=%u D=%u worst window %lld (bound %lld), %lld/period\n", n, N,
                    overdraft, static_cast<long long>(worst),
                    static_cast<long long>(N + n * overdraft), static_cast<long long>(later / 4));
    }
}

// Bursts on a fresh budget hitting all nodes at once, with ticks in between.
TEST(SyncEngine, SynchronizedBurstsKeepTheClusterBound) {
    const int n = 4;
    const std::uint32_t N = 40;
    const std::uint32_t D = 2;
    const std::uint32_t P = 2000;
    const SyncConfig config = config_of(D, FailMode::closed);
    Cluster c(n, config);
    const std::uint64_t budget = budget_id('k', "key_burst", "", P);
    std::vector<std::int64_t> accepted;
    for (std::int64_t t = 0; t < 4 * P; t++) {
        c.set_time(t);
        if (t % 700 < 60 && t % 3 == 0) {  // 3N over 60 ms, every 700 ms
            for (int j = 0; j < n; j++) {
                for (int i = 0; i < 2; i++) {
                    if (c.consume(j, budget, {N, P}).decision.allowed) accepted.push_back(t);
                }
            }
        }
        for (int j = 0; j < n; j++) {
            if ((t + 5 * j) % config.interval_ms == 0) {
                ASSERT_TRUE(c.tick(j).ok);
            }
        }
    }
    EXPECT_LE(max_in_window(accepted, P), N + n * D);
    EXPECT_GE(max_in_window(accepted, P), N / 2);
}

// ---- failures --------------------------------------------------------------

// fail=closed: once the link fails, a node spends what it holds (its lease,
// then D of overdraft) and refuses; when the link is back, it is granted
// again.
TEST(SyncEngine, FailClosedRefusesOnceLeasesRunOut) {
    const std::uint32_t D = 2;
    const SyncConfig config = config_of(D, FailMode::closed);
    Cluster c(1, config);
    const std::uint32_t P = 5000;  // Redis buckets of 100 ms: leases end within 160 ms
    const std::uint64_t budget = budget_id('k', "key_closed", "", P);
    const WindowLimit limit{2000, P};
    std::int64_t before = 0;
    for (std::int64_t t = 0; t < 1000; t++) {  // a request every 5 ms, syncing
        c.set_time(t);
        if (t % 5 == 0 && c.consume(0, budget, limit).decision.allowed) before++;
        if (t % config.interval_ms == 0) {
            ASSERT_TRUE(c.tick(0).ok);
        }
    }
    EXPECT_GE(before, 150);
    c.node(0).link.failing = true;
    std::int64_t after_lease = 0;
    const std::int64_t failed_at = 1000;
    for (std::int64_t t = failed_at; t < 3000; t++) {
        c.set_time(t);
        if (t % 5 == 0) {
            const CounterResult r = c.consume(0, budget, limit);
            if (t >= failed_at + config.lease_ms() + redis_bucket_ms(P)) {
                if (r.decision.allowed) after_lease++;
                if (!r.decision.allowed) {
                    EXPECT_EQ(r.ledger.via, LedgerVia::refused);
                    EXPECT_GE(std::int64_t{r.decision.retry_after_s} * 1000, config.renew_ms());
                }
            }
        }
        if (t % config.interval_ms == 0) {
            const SyncTickResult r = c.tick(0);
            EXPECT_FALSE(r.ok);
            EXPECT_FALSE(c.node(0).link.connected() && r.sent) << "a failed link is closed";
        }
    }
    EXPECT_LE(after_lease, D) << "after the lease: at most the overdraft";
    EXPECT_TRUE(sync_degraded(c.node(0).table.sync_node(), config, c.node_now(0)));
    EXPECT_GT(c.node(0).table.sync_node().failures, 0u);

    // Back: the unacked overdraft is reported and grants resume.
    c.node(0).link.failing = false;
    std::uint64_t reported = 0;
    std::int64_t recovered = 0;
    for (std::int64_t t = 3000; t < 3500; t++) {
        c.set_time(t);
        if (t % 5 == 0 && c.consume(0, budget, limit).decision.allowed) recovered++;
        if (t % config.interval_ms == 0) {
            const SyncTickResult r = c.tick(0);
            ASSERT_TRUE(r.ok) << r.error;
            reported += r.reported;
        }
    }
    EXPECT_GE(reported, static_cast<std::uint64_t>(after_lease));
    EXPECT_GE(recovered, 80);
    EXPECT_FALSE(sync_degraded(c.node(0).table.sync_node(), config, c.node_now(0)));
}

// fail=local: after fail_after without an exchange the local window decides
// alone (accepting up to N on this node), counted as unacked and reported to
// Redis once it is back.
TEST(SyncEngine, FailLocalFallsBackToTheLocalWindowAfterFailAfter) {
    const std::uint32_t D = 1;
    const SyncConfig config = config_of(D, FailMode::local);
    Cluster c(1, config);
    const std::uint64_t budget = budget_id('k', "key_local", "", 60'000);
    const std::uint32_t N = 100;
    const WindowLimit limit{N, 60'000};
    for (std::int64_t t = 0; t < 200; t++) {
        c.set_time(t);
        if (t % config.interval_ms == 0) {
            ASSERT_TRUE(c.tick(0).ok);
        }
    }
    c.node(0).link.failing = true;
    c.node(0).link.refuse_connect = true;
    const std::int64_t failed_at = 200;
    std::int64_t early = 0;
    std::int64_t total = 0;
    for (std::int64_t t = failed_at; t < failed_at + 2000; t++) {
        c.set_time(t);
        if (t % 10 == 0) {
            const CounterResult r = c.consume(0, budget, limit);
            if (r.decision.allowed) total++;
            if (t < failed_at + config.fail_after_ms - config.interval_ms) {
                if (r.decision.allowed) early++;
            } else if (t >= failed_at + config.fail_after_ms && r.decision.allowed) {
                EXPECT_EQ(r.ledger.via, LedgerVia::local);
            }
        }
        if (t % config.interval_ms == 0) {
            EXPECT_FALSE(c.tick(0).ok);
        }
    }
    EXPECT_LE(early, D) << "before fail_after: only the overdraft (no lease was held)";
    EXPECT_EQ(total, N) << "in fallback: the local window's limit";
    EXPECT_TRUE(sync_degraded(c.node(0).table.sync_node(), config, c.node_now(0)));

    // Back: everything accepted in fallback is reported.
    c.node(0).link.failing = false;
    c.node(0).link.refuse_connect = false;
    c.set_time(failed_at + 2000);
    const SyncTickResult r = c.tick(0);
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.reported, static_cast<std::uint64_t>(total));
    EXPECT_FALSE(sync_degraded(c.node(0).table.sync_node(), config, c.node_now(0)));
}

// A link that cannot connect: no batch leaves, nothing is taken from the
// ledgers, the failure is counted.
TEST(SyncEngine, NoConnectionNoBatch) {
    const SyncConfig config = config_of(1, FailMode::closed);
    Cluster c(1, config);
    const std::uint64_t budget = budget_id('k', "key_noconn", "", 60'000);
    ASSERT_TRUE(c.consume(0, budget, {10, 60'000}).decision.allowed);  // overdraft
    c.node(0).link.close();
    c.node(0).link.refuse_connect = true;
    const SyncTickResult r = c.tick(0);
    EXPECT_FALSE(r.sent);
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(c.redis().runs, 0u);
    EXPECT_EQ(c.node(0).table.sync_node().failures, 1u);
    sync_offline(c.node(0).table, c.node_now(0));
    EXPECT_EQ(c.node(0).table.sync_node().failures, 2u);
    c.node(0).link.refuse_connect = false;
    const SyncTickResult back = c.tick(0);  // reconnects
    ASSERT_TRUE(back.ok) << back.error;
    EXPECT_EQ(back.reported, 1u);
}

// ---- refunds -----------------------------------------------------------------

TEST(SyncEngine, RefundsReturnOverdraftAndLeaseUnits) {
    const SyncConfig config = config_of(1, FailMode::closed);
    Cluster c(1, config);
    c.warm_up();
    const std::uint64_t budget = budget_id('k', "key_refund", "", 60'000);
    const WindowLimit limit{10, 60'000};
    // Overdraft: D = 1 taken, the next refused; refunded, accepted again.
    CounterResult a = c.consume(0, budget, limit);
    ASSERT_TRUE(a.decision.allowed);
    EXPECT_EQ(a.ledger.via, LedgerVia::overdraft);
    const CounterResult refused = c.consume(0, budget, limit);
    EXPECT_FALSE(refused.decision.allowed);
    c.node(0).table.refund(refused, budget, self());  // a refusal: nothing to take back
    c.node(0).table.refund(a, budget, self());
    a = c.consume(0, budget, limit);
    ASSERT_TRUE(a.decision.allowed);
    EXPECT_EQ(a.ledger.via, LedgerVia::overdraft);
    EXPECT_EQ(a.decision.remaining, 9u) << "the refunded request left the local window too";

    // A lease: a unit taken and refunded is there again.
    c.set_time(210);
    ASSERT_TRUE(c.tick(0).ok);  // reports the overdraft, asks for a grant
    c.set_time(220);
    const CounterResult l1 = c.consume(0, budget, limit);
    ASSERT_TRUE(l1.decision.allowed);
    ASSERT_EQ(l1.ledger.via, LedgerVia::lease);
    c.node(0).table.refund(l1, budget, self());
    const CounterResult l2 = c.consume(0, budget, limit);
    ASSERT_EQ(l2.ledger.via, LedgerVia::lease);
    EXPECT_EQ(l2.decision.remaining, l1.decision.remaining);
}

// A request the ledger refuses spends nothing: with D = 0 and no grant yet,
// a thousand refusals leave the local window empty, so once granted the
// node accepts all N.
TEST(SyncEngine, LedgerRefusalsSpendNothingLocally) {
    const SyncConfig config = config_of(0, FailMode::closed);
    Cluster c(1, config);
    c.warm_up();
    const std::uint64_t budget = budget_id('k', "key_spend", "", 60'000);
    const WindowLimit limit{5, 60'000};
    for (int i = 0; i < 1000; i++) {
        const CounterResult r = c.consume(0, budget, limit);
        ASSERT_FALSE(r.decision.allowed);
        ASSERT_TRUE(r.synced);
        ASSERT_EQ(r.ledger.via, LedgerVia::refused);
        ASSERT_GE(std::int64_t{r.decision.retry_after_s} * 1000, config.renew_ms());
    }
    // A dry run decides without changing anything.
    EXPECT_FALSE(c.consume(0, budget, limit, false).decision.allowed);
    c.set_time(205);
    const SyncTickResult t = c.tick(0);
    ASSERT_TRUE(t.ok);
    EXPECT_EQ(t.budgets_sent, 1u);
    EXPECT_EQ(t.granted, 2u) << "half the room at most";
    c.set_time(206);
    EXPECT_TRUE(c.consume(0, budget, limit, false).decision.allowed) << "dry run sees the lease";
    // Grants until the budget is spent: all N accepted on this node, which
    // its local window would not allow had the refusals been counted.
    std::uint32_t accepted = 0;
    for (std::int64_t now = 206; now < 1000; now++) {
        c.set_time(now);
        const CounterResult r = c.consume(0, budget, limit);
        if (r.decision.allowed) {
            accepted++;
            EXPECT_EQ(r.decision.remaining, 5u - accepted);
        }
        if (now % config.interval_ms == 0) {
            ASSERT_TRUE(c.tick(0).ok);
        }
    }
    EXPECT_EQ(accepted, 5u);
    EXPECT_FALSE(c.consume(0, budget, limit).decision.allowed);
}

// ---- reload ------------------------------------------------------------------

// A reload that keeps the zone: the new cycle adopts it with the same sync
// settings; node id, sequence, epoch and every ledger carry on.
TEST(SyncEngine, AdoptionAfterAReloadKeepsLedgersAndNodeId) {
    const SyncConfig config = config_of(1, FailMode::closed);
    Cluster c(1, config);
    const std::uint64_t budget = budget_id('k', "key_reload", "", 60'000);
    const WindowLimit limit{10, 60'000};
    for (std::int64_t t = 0; t < 100; t++) {
        c.set_time(t);
        if (t % 20 == 0) {
            ASSERT_TRUE(c.tick(0).ok);
        }
    }
    ASSERT_TRUE(c.consume(0, budget, limit).decision.allowed);  // overdraft: unacked 1
    const SyncNodeState before = c.node(0).table.sync_node();
    Node &n = c.node(0);
    n.table = CounterTable::adopt(n.zone.memory(), n.zone.bytes, &config);
    ASSERT_TRUE(n.table.valid());
    EXPECT_EQ(n.table.sync_node().node_id, before.node_id);
    EXPECT_EQ(n.table.sync_node().seq, before.seq);
    EXPECT_EQ(std::string(n.table.sync_node().epoch, n.table.sync_node().epoch_len),
              std::string(before.epoch, before.epoch_len));
    // The ledger kept its unacked overdraft: D = 1 is spent.
    EXPECT_FALSE(c.consume(0, budget, limit).decision.allowed);
    // And the next batch (a sequence Redis has not seen) reports it.
    c.set_time(100);
    const SyncTickResult r = c.tick(0);
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.status, GrantStatus::applied);
    EXPECT_EQ(r.reported, 1u);
    EXPECT_EQ(n.table.sync_node().seq, before.seq + 1);
}

// ---- rotation ------------------------------------------------------------------

TEST(SyncEngine, CappedBatchesRotateOverTheSlots) {
    const SyncConfig config = config_of(0, FailMode::closed);
    Cluster c(1, config, 256);
    c.warm_up();
    const WindowLimit limit{10, 60'000};
    std::vector<std::uint64_t> budgets;
    for (int i = 0; i < 7; i++)
        budgets.push_back(budget_id('k', "key_rot" + std::to_string(i), "", 60'000));
    for (std::uint64_t b : budgets) EXPECT_FALSE(c.consume(0, b, limit).decision.allowed);
    std::size_t sent = 0;
    std::vector<bool> more;
    for (int tick = 0; tick < 4; tick++) {
        c.set_time(200 + tick);
        const SyncTickResult r = c.tick(0, 3);
        ASSERT_TRUE(r.ok);
        EXPECT_LE(r.budgets_sent, 3u);
        sent += r.budgets_sent;
        more.push_back(r.more);
    }
    EXPECT_EQ(sent, 7u);
    EXPECT_TRUE(more[0]);
    EXPECT_TRUE(more[1]);
    c.set_time(205);
    for (std::uint64_t b : budgets) {
        EXPECT_TRUE(c.consume(0, b, limit).decision.allowed) << "every budget got its grant";
    }
}

// ---- threads -------------------------------------------------------------------

// Requests from several threads while a sync thread ticks: every
// acceptance is accounted for (the node's own windows stay exact).
TEST(SyncEngine, ConcurrentRequestsAndTicks) {
    const SyncConfig config = config_of(2, FailMode::closed, 2, 2);
    Zone zone(256, true);
    CounterTable table = CounterTable::format(zone.memory(), zone.bytes, &config, 0);
    FakeRedis redis;
    FakeLink link(redis);
    const RedisScript script(kGrantScript);
    const std::uint32_t N = 500;
    const std::uint64_t budget = budget_id('k', "key_threads", "", 3'600'000);
    const auto start = std::chrono::steady_clock::now();
    auto now = [start] {
        return static_cast<std::int64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                             std::chrono::steady_clock::now() - start)
                                             .count());
    };
    std::atomic<bool> stop{false};
    std::thread syncer([&] {
        while (!stop.load()) {
            redis.now_ms = kRedisBase + now();
            SyncTickOptions o;
            o.self = self();
            sync_tick(table, link, script, kPrefix, now, 42, o);
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
    });
    std::atomic<std::int64_t> accepted{0};
    std::vector<std::thread> workers;
    for (int w = 0; w < 4; w++) {
        workers.emplace_back([&] {
            for (int i = 0; i < 400; i++) {
                if (table.consume(budget, {N, 3'600'000}, now(), true, self()).decision.allowed) {
                    accepted++;
                }
                std::this_thread::sleep_for(std::chrono::microseconds(200));
            }
        });
    }
    for (std::thread &w : workers) w.join();
    stop = true;
    syncer.join();
    EXPECT_LE(accepted.load(), N + 2);
    EXPECT_GT(accepted.load(), 0);
}

// ---- a real Redis ----------------------------------------------------------------

using test::RedisServer;

// Two nodes, the real script on a real Redis: a burst of 3N on a fresh
// budget, alternating between the nodes with ticks in between, accepts at
// most N + 2D (and gets grants: well over the overdraft alone).
TEST(SyncEngineRedis, BurstOverTwoNodesStaysWithinTheBound) {
    RedisServer server;
    std::string error;
    if (!server.start(error)) FAIL() << error;
    const std::uint32_t N = 30;
    const std::uint32_t D = 2;
    const std::uint32_t P = 60'000;
    const SyncConfig config = config_of(D, FailMode::closed, 10, 200);
    const auto start = std::chrono::steady_clock::now();
    auto now = [start] {
        return 1'000'000 +
               static_cast<std::int64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                             std::chrono::steady_clock::now() - start)
                                             .count());
    };
    struct RealNode {
        explicit RealNode(const SyncConfig &config, std::int64_t now) : zone(64, true) {
            table = CounterTable::format(zone.memory(), zone.bytes, &config, now);
            link = make_hiredis_link();
        }
        Zone zone;
        CounterTable table;
        std::unique_ptr<RedisLink> link;
    };
    RealNode a(config, now()), b(config, now());
    RealNode *nodes[] = {&a, &b};
    const RedisEndpoint ep = server.endpoint();
    const RedisScript script(kGrantScript);
    SyncTickOptions options;
    options.reconnect = &ep;
    options.self = self();
    options.zone = "lz";
    std::mt19937_64 rng(99);
    for (RealNode *n : nodes) {
        const SyncTickResult r = sync_tick(n->table, *n->link, script, kPrefix, now, rng(),
                                           options);
        ASSERT_TRUE(r.ok) << r.error;  // first contact: a new epoch, in quarantine
    }
    EXPECT_EQ(a.table.sync_node().nodes_seen, 1u) << "the first node sees itself";
    EXPECT_EQ(b.table.sync_node().nodes_seen, 2u);
    {
        // Another zone on the same Redis counts its own nodes.
        RealNode other(config, now());
        SyncTickOptions o = options;
        o.zone = "another zone";
        ASSERT_TRUE(sync_tick(other.table, *other.link, script, kPrefix, now, rng(), o).ok);
        EXPECT_EQ(other.table.sync_node().nodes_seen, 1u) << "per zone";
    }
    // Through the quarantine (no grants on a fresh Redis for 2 (interval + timeout)).
    const std::int64_t warm = now() + config.quarantine_ms() + 50;
    while (now() < warm) {
        for (RealNode *n : nodes) {
            ASSERT_TRUE(sync_tick(n->table, *n->link, script, kPrefix, now, rng(), options).ok);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(config.interval_ms));
    }
    const std::uint64_t budget = budget_id('k', "key_real_burst", "", P);
    std::uint32_t accepted = 0;
    std::uint64_t granted = 0;
    for (std::uint32_t i = 0; i < 3 * N; i++) {
        RealNode &n = *nodes[i % 2];
        if (n.table.consume(budget, {N, P}, now(), true, self()).decision.allowed) accepted++;
        if (i % 6 == 5) {
            for (RealNode *m : nodes) {
                const SyncTickResult r = sync_tick(m->table, *m->link, script, kPrefix, now, rng(),
                                                   options);
                ASSERT_TRUE(r.ok) << r.error;
                granted += r.granted;
            }
        }
    }
    std::printf("[ redis  ] burst of %u on 2 nodes: accepted %u (bound %u), granted %llu\n", 3 * N,
                accepted, N + 2 * D, static_cast<unsigned long long>(granted));
    EXPECT_LE(accepted, N + 2 * D);
    EXPECT_GT(accepted, 2 * D) << "grants arrived, not only overdraft";
    EXPECT_GT(granted, 0u);
    EXPECT_EQ(load_relaxed(&a.table.sync_node().nodes_seen), 2u);
    EXPECT_EQ(load_relaxed(&b.table.sync_node().nodes_seen), 2u);
    // Redis holds what the nodes accepted (leases recorded, overdraft reported).
    auto link = make_hiredis_link();
    ASSERT_TRUE(link->connect(ep).ok);
    char key[64];
    std::snprintf(key, sizeof key, "akm:l:{%016llx}", static_cast<unsigned long long>(budget));
    const RedisResult vals = link->command({"HVALS", key});
    ASSERT_TRUE(vals.ok);
    std::int64_t recorded = 0;
    for (const RedisReply &v : vals.reply.elements) recorded += std::stoll(v.str);
    EXPECT_LE(recorded, std::int64_t{N} + 2 * D);
    EXPECT_GE(recorded, std::int64_t{accepted} - 2 * std::int64_t{D});
}

}  // namespace
}  // namespace apikey
