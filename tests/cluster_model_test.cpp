// Cluster mode's limits, proved on a model: n simulated nginx nodes, each with
// the real local window (window_consume) and the real ledger (ledger_admit),
// syncing with the real batch engine (SyncBatch) against a fake Redis that
// runs the C++ reference model of the grant script (grant_model_eval, which
// tests/grant_script_redis_test.cpp holds to the real script), through a
// network that delays (0-3 intervals per message), loses and duplicates
// messages, a Redis that pauses and loses its data, and nodes that restart
// with or without their shared memory. Every node and Redis have their own
// clock (offsets; the same rate).
//
// Asserted on every trailing window (t - period, t] of real time, over the
// requests accepted on all nodes:
//   - accepted <= N + D * (n + r), r = nodes restarted without their shared
//     memory inside the window (each incarnation may take D unreported);
//     exactly N for D = 0;
//   - around a Redis data loss: the same, when every node re-seeded within
//     the quarantine (asserted); when one could not (lost or late messages),
//     <= 2 * (N + n * D), and the worst seen is reported;
//   - windows holding requests accepted in fail=local fallback: <= n * N
//     (+ N per restart without memory), which also holds for every window;
//   - a refused request spends nothing: the local windows decide exactly as
//     before it and the ledgers' leases and overdraft are unchanged;
//   - nodes seen: every reply's count is the number of distinct node ids
//     whose batches Redis ran in the last kNodeSeenMs (since its last data
//     loss), computed here independently of the model; with a healthy Redis
//     every node ends up seeing all n;
//   - liveness: a client sending at twice the rate, spread over the nodes,
//     gets >= 85% of N per period when Redis and the network are healthy
//     (D >= 1; D = 0 is reported: without waiting, a sparse node refuses
//     until its grant arrives).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <queue>
#include <random>
#include <string>
#include <vector>

#include "core/grant_ledger.h"
#include "core/grant_script.h"
#include "core/sliding_window.h"
#include "core/sync_batch.h"

namespace apikey {
namespace {

constexpr std::int64_t kRedisBase = 1'767'225'600'000;  // Redis' wall clock at real time 0
constexpr const char *kPrefix = "akm:";

enum class Pattern { steady2x, bursts, random, mixed, skewed, independent };

const char *pattern_name(Pattern p) {
    switch (p) {
    case Pattern::steady2x: return "steady2x";
    case Pattern::bursts: return "bursts";
    case Pattern::random: return "random";
    case Pattern::mixed: return "mixed";
    case Pattern::skewed: return "skewed";
    case Pattern::independent: return "independent";
    }
    return "?";
}

struct Scenario {
    std::uint64_t seed = 1;
    int nodes = 3;
    std::uint32_t limit = 100;
    std::uint32_t second_limit = 0;  // a second budget spent by every request (0: none)
    std::uint32_t period_ms = 1000;
    std::uint32_t overdraft = 1;
    FailMode fail = FailMode::closed;
    std::uint32_t interval_ms = 20;
    std::uint32_t timeout_ms = 20;
    Pattern pattern = Pattern::steady2x;
    int steady_multiple = 2;  // steady: this many times the rate
    int periods = 4;
    // faults
    int max_delay_intervals = 0;     // per message: uniform in [0, this * interval]
    std::int64_t max_delay_ms = -1;  // overrides the above when >= 0
    double loss = 0;
    double dup = 0;
    int pauses = 0;
    int data_losses = 0;
    int restarts = 0;

    std::string describe() const {
        char buf[400];
        std::snprintf(buf, sizeof buf,
                      "seed=%llu n=%d N=%u N2=%u P=%u D=%u fail=%s interval=%u timeout=%u "
                      "pattern=%s delay<=%d intervals loss=%.2f dup=%.2f pauses=%d "
                      "data_losses=%d restarts=%d",
                      static_cast<unsigned long long>(seed), nodes, limit, second_limit, period_ms,
                      overdraft, fail == FailMode::local ? "local" : "closed", interval_ms,
                      timeout_ms, pattern_name(pattern), max_delay_intervals, loss, dup, pauses,
                      data_losses, restarts);
        return buf;
    }
};

struct RunResult {
    double worst_ratio = 0;  // max window / (N + n*D), windows the bound covers
    std::int64_t worst_count = 0;
    double worst_excess = 0;          // max (window - N) / (n*D): how much of the allowance is used
    double worst_loss_ratio = 0;      // windows after a loss whose re-seed was late
    double worst_fallback_ratio = 0;  // windows with fail=local fallback, / ((n + r) * N)
    double liveness = -1;             // accepted per period / N after the first period
    int loss_events = 0;
    int loss_premise_held = 0;
    std::int64_t accepted = 0;
    std::int64_t refused = 0;
    std::int64_t batches = 0;
    std::int64_t failures = 0;
    std::int64_t replies = 0;              // script runs, each with its nodes-seen count checked
    std::int64_t max_nodes_seen = 0;       // in any reply
    std::uint64_t end_nodes_seen_min = 0;  // over the nodes, their last reply's count
    std::uint64_t end_nodes_seen_max = 0;
};

// ---------------------------------------------------------------------------

class Sim {
public:
    explicit Sim(const Scenario &sc) : sc_(sc), rng_(sc.seed) {
        config_.interval_ms = sc.interval_ms;
        config_.timeout_ms = sc.timeout_ms;
        config_.overdraft = sc.overdraft;
        config_.fail_after_ms = 10 * sc.interval_ms;
        config_.fail = sc.fail;
        limits_.push_back(sc.limit);
        if (sc.second_limit != 0) limits_.push_back(sc.second_limit);
        end_ = static_cast<std::int64_t>(sc.periods) * sc.period_ms;
    }

    RunResult run();

private:
    enum class Kind {
        arrival,
        tick,
        batch_arrives,
        reply_arrives,
        timeout,
        restart,
        restart_clean,
        data_loss
    };
    struct Event {
        std::int64_t t;
        std::uint64_t order;
        Kind kind;
        int node;
        std::int64_t a;
        bool operator>(const Event &o) const { return t != o.t ? t > o.t : order > o.order; }
    };
    struct Budget {
        WindowState window;
        SyncLedger ledger;
    };
    struct Node {
        std::int64_t offset = 0;  // node clock = real + offset
        int incarnation = 0;
        SyncNodeState state{};
        std::vector<Budget> budgets;
        bool waiting = false;
        std::uint64_t inflight_seq = 0;
        std::int64_t deadline = 0;
        SyncBatch batch;
    };
    struct Msg {
        int node;
        int incarnation;
        std::uint64_t seq;
        std::vector<std::string> keys, args;
        RedisReply reply;
    };

    std::int64_t node_now(const Node &n, std::int64_t t) const { return t + n.offset; }
    std::uint64_t budget_id(std::size_t k) const { return 0x1000 + k; }
    void push(std::int64_t t, Kind k, int node, std::int64_t a = 0) {
        events_.push({t, order_++, k, node, a});
    }
    std::int64_t delay() {
        const std::int64_t max = sc_.max_delay_ms >= 0
                                     ? sc_.max_delay_ms
                                     : std::int64_t{sc_.max_delay_intervals} * sc_.interval_ms;
        return max > 0 ? std::uniform_int_distribution<std::int64_t>(0, max)(rng_) : 0;
    }
    bool chance(double p) { return p > 0 && std::uniform_real_distribution<>(0, 1)(rng_) < p; }
    bool paused(std::int64_t t, std::int64_t &until) const {
        for (auto [a, b] : pauses_) {
            if (t >= a && t < b) {
                until = b;
                return true;
            }
        }
        return false;
    }

    void fresh_node(Node &n, std::int64_t t) {
        n.offset = std::uniform_int_distribution<std::int64_t>(1, 1'000'000'000)(rng_);
        sync_node_init(n.state, rng_() | 1, node_now(n, t));
        n.budgets.assign(limits_.size(), Budget{});
        for (Budget &b : n.budgets) {
            window_reset(b.window);
            ledger_init(b.ledger, n.state.epoch_gen);
        }
        n.waiting = false;
    }

    void generate_arrivals();
    void on_arrival(int node, std::int64_t t);
    void on_tick(int node, std::int64_t t);
    void on_batch_arrives(std::int64_t msg, std::int64_t t);
    void execute(std::int64_t msg, std::int64_t t);
    void on_reply(std::int64_t msg, std::int64_t t);
    void settle_all(Node &n);
    RunResult check();

    Scenario sc_;
    std::mt19937_64 rng_;
    SyncConfig config_;
    std::vector<std::uint32_t> limits_;
    std::int64_t end_;
    std::priority_queue<Event, std::vector<Event>, std::greater<Event>> events_;
    std::uint64_t order_ = 0;
    std::vector<Node> nodes_;
    std::vector<Msg> msgs_;
    GrantStore store_;
    std::int64_t redis_offset_ = 0;
    std::vector<std::pair<std::int64_t, std::int64_t>> pauses_;
    std::map<std::string, std::int64_t> seen_;  // node hex -> Redis ms of its latest batch run
    std::int64_t replies_ = 0, max_nodes_seen_ = 0;

    // what the checker needs
    std::vector<std::pair<std::int64_t, bool>> accepted_;  // real time, in fail=local fallback
    std::vector<std::int64_t> clean_restarts_;
    std::int64_t refused_ = 0;
    std::int64_t failures_ = 0, batches_ = 0;
    struct Loss {
        std::int64_t at;             // real time of the data loss
        std::int64_t epoch_at = -1;  // first script run after it (new epoch)
        std::string epoch;
        std::vector<std::int64_t> reseeded_at;  // per node: first applied batch in the epoch
        bool clean_restart_near = false;
    };
    std::vector<Loss> losses_;
};

void Sim::generate_arrivals() {
    const std::int64_t P = sc_.period_ms;
    const int n = sc_.nodes;
    const std::uint32_t N = sc_.limit;
    auto steady = [&] {
        // Twice the rate (or steady_multiple), evenly spaced, round-robin
        // over the nodes.
        for (std::int64_t k = 0;; k++) {
            const std::int64_t t = k * P / (sc_.steady_multiple * std::int64_t{N});
            if (t >= end_) break;
            push(t, Kind::arrival, static_cast<int>(k % n));
        }
    };
    auto bursts = [&] {
        // Synchronized bursts: every node gets its share at the same moment;
        // the first one on a fresh key.
        std::int64_t t = std::uniform_int_distribution<std::int64_t>(0, P / 2)(rng_);
        while (t < end_) {
            const int mult = std::uniform_int_distribution<int>(1, 3)(rng_);
            const std::int64_t per = (std::int64_t{N} * mult + n - 1) / n;
            for (int j = 0; j < n; j++) {
                const std::int64_t at = t + std::uniform_int_distribution<std::int64_t>(0, 2)(rng_);
                for (std::int64_t i = 0; i < per; i++) push(at, Kind::arrival, j);
            }
            t += std::uniform_int_distribution<std::int64_t>(P / 10, 2 * P)(rng_);
        }
    };
    auto random = [&] {
        // Poisson arrivals at a rate that changes every half period (0.2x-4x).
        std::int64_t t = 0;
        double rate = 0;  // per ms
        std::int64_t next_change = 0;
        double tt = 0;
        while (true) {
            if (t >= next_change) {
                rate = std::uniform_real_distribution<>(0.2, 4.0)(rng_) * N / P;
                if (chance(0.2)) rate = 0.02 * N / P;  // a quiet phase
                next_change = t + P / 2;
            }
            tt += std::exponential_distribution<>(rate)(rng_);
            t = static_cast<std::int64_t>(tt);
            if (t >= end_) break;
            push(t, Kind::arrival, std::uniform_int_distribution<int>(0, n - 1)(rng_));
        }
    };
    auto skewed = [&] {
        // One node saturates the budget (3x); the others send lightly and
        // irregularly, so they hold leases with units left when they expire.
        for (std::int64_t k = 0;; k++) {
            const std::int64_t t = k * P / (3 * std::int64_t{N});
            if (t >= end_) break;
            push(t, Kind::arrival, 0);
        }
        double tt = 0;
        while (n > 1) {
            tt += std::exponential_distribution<>(0.3 * N / P)(rng_);
            const std::int64_t t = static_cast<std::int64_t>(tt);
            if (t >= end_) break;
            push(t, Kind::arrival, 1 + std::uniform_int_distribution<int>(0, n - 2)(rng_));
        }
    };
    auto independent = [&] {
        // Every node on its own: Poisson at a rate it changes every quarter
        // period, from nearly idle to saturating the budget alone. Leases
        // taken in a quiet phase meet another node's saturation.
        for (int j = 0; j < n; j++) {
            double tt = 0;
            std::int64_t next_change = 0;
            double rate = 0;
            while (true) {
                if (tt >= next_change) {
                    const double rates[] = {0.02, 0.3, 1.0, 4.0};
                    rate = rates[std::uniform_int_distribution<int>(0, 3)(rng_)] * N / P;
                    next_change += P / 4;
                }
                tt += std::exponential_distribution<>(rate)(rng_);
                const std::int64_t t = static_cast<std::int64_t>(tt);
                if (t >= end_) break;
                push(t, Kind::arrival, j);
            }
        }
    };
    switch (sc_.pattern) {
    case Pattern::independent: independent(); break;
    case Pattern::skewed: skewed(); break;
    case Pattern::steady2x: steady(); break;
    case Pattern::bursts: bursts(); break;
    case Pattern::random: random(); break;
    case Pattern::mixed:
        random();
        bursts();
        break;
    }
}

// One request on one node: every budget's local window, then its ledger; a
// refusal anywhere takes back what the earlier budgets counted.
void Sim::on_arrival(int j, std::int64_t t) {
    Node &node = nodes_[j];
    const std::int64_t now = node_now(node, t);
    const LedgerContext ctx = sync_context(node.state, config_, now);

    // Before: what a request would see, and the ledgers' spendable state.
    struct Before {
        WindowDecision probe;
        std::uint32_t lease_left, unacked, give_back;
    };
    std::vector<Before> before;
    for (std::size_t k = 0; k < node.budgets.size(); k++) {
        const WindowLimit lim{limits_[k], sc_.period_ms};
        Budget &b = node.budgets[k];
        before.push_back({window_consume(b.window, lim, now, false), b.ledger.lease_left,
                          b.ledger.unacked, b.ledger.give_back});
    }

    std::vector<WindowDecision> local(node.budgets.size());
    std::vector<LedgerDecision> led(node.budgets.size());
    bool ok = true;
    bool fallback = false;
    std::size_t done = 0;
    for (std::size_t k = 0; k < node.budgets.size() && ok; k++) {
        Budget &b = node.budgets[k];
        const WindowLimit lim{limits_[k], sc_.period_ms};
        local[k] = window_consume(b.window, lim, now, true);
        if (!local[k].allowed) {
            ok = false;
            break;
        }
        // The expiry housekeeping a refusal may do is not spending: take it
        // out of the "before" picture.
        SyncLedger probe = b.ledger;
        ledger_refresh(probe, ctx.epoch_gen, now);
        before[k].lease_left = probe.lease_left;
        before[k].give_back = probe.give_back;
        led[k] = ledger_admit(b.ledger, config_, ctx, local[k], true);
        if (!led[k].allowed) {
            window_refund(b.window, local[k].counted_at_ms);
            EXPECT_GE(led[k].retry_after_s, 1u);
            EXPECT_GE(std::int64_t{led[k].retry_after_s} * 1000, config_.renew_ms())
                << "Retry-After never below one renewal";
            ok = false;
            break;
        }
        if (led[k].via == LedgerVia::local) fallback = true;
        done = k + 1;
    }
    if (ok) {
        accepted_.push_back({t, fallback});
        return;
    }
    refused_++;
    for (std::size_t k = 0; k < done; k++) {
        window_refund(node.budgets[k].window, local[k].counted_at_ms);
        ledger_refund(node.budgets[k].ledger, led[k]);
    }
    // Refused requests spend nothing.
    for (std::size_t k = 0; k < node.budgets.size(); k++) {
        Budget &b = node.budgets[k];
        const WindowLimit lim{limits_[k], sc_.period_ms};
        const WindowDecision after = window_consume(b.window, lim, now, false);
        ASSERT_EQ(after.allowed, before[k].probe.allowed) << sc_.describe();
        ASSERT_EQ(after.remaining, before[k].probe.remaining) << sc_.describe();
        ASSERT_EQ(b.ledger.lease_left, before[k].lease_left) << sc_.describe();
        ASSERT_EQ(b.ledger.unacked, before[k].unacked) << sc_.describe();
        ASSERT_EQ(b.ledger.give_back, before[k].give_back) << sc_.describe();
    }
}

void Sim::on_tick(int j, std::int64_t t) {
    push(t + sc_.interval_ms, Kind::tick, j);
    Node &node = nodes_[j];
    if (node.waiting) return;  // the thread still waits for the last batch
    const std::int64_t now = node_now(node, t);
    node.batch.begin(node.state, config_, now, rng_(), "lz");
    for (std::size_t k = 0; k < node.budgets.size(); k++) {
        node.batch.offer(budget_id(k), sc_.period_ms, node.budgets[k].ledger,
                         node.budgets[k].window);
    }
    Msg m;
    m.node = j;
    m.incarnation = node.incarnation;
    m.seq = node.batch.header().seq;
    node.batch.script_call(kPrefix, m.keys, m.args);
    msgs_.push_back(std::move(m));
    const std::int64_t id = static_cast<std::int64_t>(msgs_.size() - 1);
    node.waiting = true;
    node.inflight_seq = node.batch.header().seq;
    node.deadline = t + sc_.timeout_ms;
    batches_++;
    push(node.deadline, Kind::timeout, j, static_cast<std::int64_t>(node.inflight_seq));
    if (!chance(sc_.loss)) push(t + delay(), Kind::batch_arrives, j, id);
    if (chance(sc_.dup)) push(t + delay(), Kind::batch_arrives, j, id);  // delivered twice
}

void Sim::on_batch_arrives(std::int64_t id, std::int64_t t) {
    std::int64_t until = 0;
    if (paused(t, until)) {
        // Queued in Redis' socket buffer: runs when the pause ends, in order.
        push(until, Kind::batch_arrives, msgs_[id].node, id);
        return;
    }
    execute(id, t);
}

void Sim::execute(std::int64_t id, std::int64_t t) {
    Msg &m = msgs_[id];
    const std::int64_t rnow = kRedisBase + redis_offset_ + t;
    const bool had_epoch = store_.strings.count(std::string(kPrefix) + "epoch") > 0;
    RedisReply reply = grant_model_eval(store_, rnow, m.keys, m.args);
    ASSERT_NE(reply.type, RedisReply::Type::error) << describe(reply);
    const std::string status = reply.elements[0].str;
    const std::string epoch = reply.elements[1].str;
    // Nodes seen, counted here: the ids (the end of KEYS[2]) of batches run
    // less than kNodeSeenMs ago, whatever their reply.
    ASSERT_EQ(m.keys[2], std::string(kPrefix) + "n:lz");
    seen_[m.keys[1].substr(m.keys[1].size() - 16)] = rnow;
    std::int64_t expect_nodes = 0;
    for (const auto &[id, at] : seen_) expect_nodes += rnow - at < kNodeSeenMs ? 1 : 0;
    ASSERT_GE(reply.elements.size(), 6u);
    ASSERT_EQ(reply.elements[5].integer, expect_nodes)
        << "nodes seen at Redis ms " << rnow << " " << sc_.describe();
    replies_++;
    max_nodes_seen_ = std::max(max_nodes_seen_, expect_nodes);
    if (!losses_.empty()) {
        Loss &loss = losses_.back();
        if (!had_epoch && loss.epoch_at < 0) {
            loss.epoch_at = t;
            loss.epoch = epoch;
        }
        // A node has re-seeded when a batch of its current incarnation that
        // knew the new epoch was applied (it carries every pending re-seed).
        if (status == "ok" && m.args[1] == loss.epoch && !loss.epoch.empty() &&
            m.incarnation == nodes_[m.node].incarnation && loss.reseeded_at[m.node] < 0) {
            loss.reseeded_at[m.node] = t;
        }
    }
    m.reply = std::move(reply);
    if (!chance(sc_.loss)) push(t + delay(), Kind::reply_arrives, m.node, id);
}

void Sim::settle_all(Node &node) {
    for (std::size_t i = 0; i < node.batch.size(); i++) {
        const std::uint64_t b = node.batch.budget(i);
        node.batch.settle(i, node.budgets[b - 0x1000].ledger);
    }
}

void Sim::on_reply(std::int64_t id, std::int64_t t) {
    const Msg &m = msgs_[id];
    Node &node = nodes_[m.node];
    if (m.incarnation != node.incarnation || !node.waiting || m.seq != node.inflight_seq ||
        t >= node.deadline) {
        return;  // a reply nobody waits for (timed out, a duplicate's, a dead process')
    }
    std::string error;
    if (!node.batch.accept_reply(node.state, m.reply, node_now(node, t), error)) {
        node.batch.fail(node.state);
        failures_++;
    } else {
        ASSERT_EQ(node.state.nodes_seen, static_cast<std::uint64_t>(m.reply.elements[5].integer));
    }
    settle_all(node);
    node.waiting = false;
}

RunResult Sim::run() {
    redis_offset_ = std::uniform_int_distribution<std::int64_t>(0, 1'000'000)(rng_);
    nodes_.resize(sc_.nodes);
    for (int j = 0; j < sc_.nodes; j++) {
        fresh_node(nodes_[j], 0);
        push(std::uniform_int_distribution<std::int64_t>(0, sc_.interval_ms - 1)(rng_), Kind::tick,
             j);
    }
    generate_arrivals();
    for (int i = 0; i < sc_.pauses; i++) {
        const std::int64_t a = std::uniform_int_distribution<std::int64_t>(0, end_)(rng_);
        const std::int64_t len = std::uniform_int_distribution<std::int64_t>(
            sc_.timeout_ms,
            std::min<std::int64_t>(sc_.period_ms, 40 * std::int64_t{sc_.interval_ms}))(rng_);
        pauses_.push_back({a, a + len});
    }
    for (int i = 0; i < sc_.data_losses; i++) {
        push(std::uniform_int_distribution<std::int64_t>(end_ / 8, end_)(rng_), Kind::data_loss, 0);
    }
    for (int i = 0; i < sc_.restarts; i++) {
        push(std::uniform_int_distribution<std::int64_t>(0, end_)(rng_),
             chance(0.5) ? Kind::restart : Kind::restart_clean,
             std::uniform_int_distribution<int>(0, sc_.nodes - 1)(rng_));
    }

    while (!events_.empty()) {
        const Event e = events_.top();
        events_.pop();
        if (e.t >= end_) break;
        switch (e.kind) {
        case Kind::arrival: on_arrival(e.node, e.t); break;
        case Kind::tick: on_tick(e.node, e.t); break;
        case Kind::batch_arrives: on_batch_arrives(e.a, e.t); break;
        case Kind::reply_arrives: on_reply(e.a, e.t); break;
        case Kind::timeout: {
            Node &node = nodes_[e.node];
            if (node.waiting && node.inflight_seq == static_cast<std::uint64_t>(e.a)) {
                node.batch.fail(node.state);
                failures_++;
                settle_all(node);
                node.waiting = false;
            }
            break;
        }
        case Kind::restart: {
            // nginx restarted, the zone kept (a reload that re-created the
            // worker, or a crash with the memory): the batch on the wire is
            // abandoned without settling.
            Node &node = nodes_[e.node];
            node.incarnation++;
            node.waiting = false;
            break;
        }
        case Kind::restart_clean: {
            Node &node = nodes_[e.node];
            node.incarnation++;
            fresh_node(node, e.t);
            clean_restarts_.push_back(e.t);
            for (Loss &l : losses_) {
                if (e.t >= l.at - sc_.period_ms) l.clean_restart_near = true;
            }
            break;
        }
        case Kind::data_loss: {
            store_.flushall();
            seen_.clear();
            Loss l;
            l.at = e.t;
            l.reseeded_at.assign(sc_.nodes, -1);
            losses_.push_back(l);
            break;
        }
        }
        if (::testing::Test::HasFatalFailure()) return {};
    }
    return check();
}

int failures_so_far() {
    return ::testing::UnitTest::GetInstance()->current_test_info()->result()->total_part_count();
}

RunResult Sim::check() {
    RunResult r;
    const int parts_before = failures_so_far();
    r.accepted = static_cast<std::int64_t>(accepted_.size());
    r.refused = refused_;
    r.batches = batches_;
    r.failures = failures_;
    r.replies = replies_;
    r.max_nodes_seen = max_nodes_seen_;
    r.end_nodes_seen_min = ~std::uint64_t{0};
    for (const Node &node : nodes_) {
        r.end_nodes_seen_min = std::min(r.end_nodes_seen_min, node.state.nodes_seen);
        r.end_nodes_seen_max = std::max(r.end_nodes_seen_max, node.state.nodes_seen);
    }
    const std::int64_t P = sc_.period_ms;
    const std::int64_t n = sc_.nodes;
    const std::int64_t D = sc_.overdraft;
    const std::uint32_t N = *std::min_element(limits_.begin(), limits_.end());

    // Real-time ranges where a data loss whose re-seeding was late may show.
    std::vector<std::pair<std::int64_t, std::int64_t>> loss_ranges;
    for (const Loss &l : losses_) {
        r.loss_events++;
        bool held = l.epoch_at >= 0 && !l.clean_restart_near;
        std::int64_t last = l.epoch_at;
        for (std::int64_t at : l.reseeded_at) {
            if (at < 0) {
                held = false;
                last = end_;
            } else {
                if (at > l.epoch_at + config_.quarantine_ms()) held = false;
                last = std::max(last, at);
            }
        }
        if (l.epoch_at < 0) last = end_;
        if (held) {
            r.loss_premise_held++;
        } else {
            loss_ranges.push_back({l.at, last + P});
        }
    }

    std::vector<std::int64_t> fallback_prefix(accepted_.size() + 1, 0);
    for (std::size_t i = 0; i < accepted_.size(); i++) {
        fallback_prefix[i + 1] = fallback_prefix[i] + (accepted_[i].second ? 1 : 0);
    }
    std::size_t lo = 0;
    for (std::size_t i = 0; i < accepted_.size(); i++) {
        const std::int64_t t = accepted_[i].first;
        if (i + 1 < accepted_.size() && accepted_[i + 1].first == t) continue;  // last at t
        while (accepted_[lo].first <= t - P) lo++;
        const std::int64_t count = static_cast<std::int64_t>(i - lo + 1);
        const std::int64_t restarts = std::count_if(
            clean_restarts_.begin(), clean_restarts_.end(),
            [&](std::int64_t x) { return x > t - P && x <= t; });
        const bool fallback = fallback_prefix[i + 1] - fallback_prefix[lo] > 0;
        bool loss = false;
        for (auto [a, b] : loss_ranges) loss = loss || (t >= a && t <= b);

        // Every window: each node's own window caps it at N.
        EXPECT_LE(count, n * N + std::int64_t{N} * restarts)
            << "local windows exceeded at t=" << t << " " << sc_.describe();
        const std::int64_t bound = N + D * (n + restarts);
        if (fallback) {
            r.worst_fallback_ratio = std::max(r.worst_fallback_ratio,
                                              double(count) / double((n + restarts) * N));
        } else if (loss) {
            EXPECT_LE(count, 2 * bound) << "after a data loss at t=" << t << " " << sc_.describe();
            r.worst_loss_ratio = std::max(r.worst_loss_ratio, double(count) / double(N + n * D));
        } else {
            EXPECT_LE(count, bound) << "bound N + n*D exceeded at t=" << t << " window count "
                                    << count << " " << sc_.describe();
            const double ratio = double(count) / double(N + n * D);
            if (D > 0) {
                r.worst_excess = std::max(r.worst_excess, double(count - N) / double(n * D));
            }
            if (ratio > r.worst_ratio) {
                r.worst_ratio = ratio;
                r.worst_count = count;
            }
        }
        if (failures_so_far() != parts_before) return r;  // one message per run
    }

    // Liveness: accepted per whole period after the first (cold start).
    if (sc_.periods >= 2) {
        std::int64_t after_first = 0;
        for (const auto &a : accepted_) after_first += a.first >= P ? 1 : 0;
        r.liveness = double(after_first) / (double(sc_.periods - 1) * N);
    }
    return r;
}

constexpr std::uint32_t kLimits[] = {5, 16, 17, 100, 1000};
constexpr std::uint32_t kOverdrafts[] = {0, 1, 3};

// Intervals and timeouts proportionate to the period, as a deployment would
// choose them (the defaults: 100 ms and 50 ms).
void pick_timing(Scenario &s, std::mt19937_64 &rng) {
    if (s.period_ms <= 1000) {
        const std::uint32_t iv[] = {10, 20, 50};
        s.interval_ms = iv[rng() % 3];
    } else {
        const std::uint32_t iv[] = {100, 250, 500};
        s.interval_ms = iv[rng() % 3];
    }
    const double tf[] = {0.5, 1.0, 2.0, 4.0};
    s.timeout_ms = std::max<std::uint32_t>(
        1, static_cast<std::uint32_t>(s.interval_ms * tf[rng() % 4]));
}

struct Summary {
    double worst_ratio = 0;
    std::string worst_what;
    double worst_ratio_by_d[4] = {0, 0, 0, 0};
    double worst_excess = 0;
    double worst_loss_ratio = 0;
    double worst_fallback_ratio = 0;
    int losses = 0, premise_held = 0;
    std::int64_t accepted = 0, refused = 0, batches = 0, failures = 0;
    std::int64_t replies = 0, max_nodes_seen = 0;
    void add(const Scenario &s, const RunResult &r) {
        replies += r.replies;
        max_nodes_seen = std::max(max_nodes_seen, r.max_nodes_seen);
        double &by_d = worst_ratio_by_d[std::min<std::uint32_t>(s.overdraft, 3)];
        by_d = std::max(by_d, r.worst_ratio);
        worst_excess = std::max(worst_excess, r.worst_excess);
        if (r.worst_ratio > worst_ratio) {
            worst_ratio = r.worst_ratio;
            worst_what = s.describe() + " count=" + std::to_string(r.worst_count);
        }
        worst_loss_ratio = std::max(worst_loss_ratio, r.worst_loss_ratio);
        worst_fallback_ratio = std::max(worst_fallback_ratio, r.worst_fallback_ratio);
        losses += r.loss_events;
        premise_held += r.loss_premise_held;
        accepted += r.accepted;
        refused += r.refused;
        batches += r.batches;
        failures += r.failures;
    }
};

TEST(ClusterModel, BoundUnderFaults) {
    const auto t0 = std::chrono::steady_clock::now();
    std::mt19937_64 rng(20260115);
    Summary sum;
    int runs = 0;
    for (; runs < 260; runs++) {
        Scenario s;
        s.seed = rng();
        s.nodes = 1 + static_cast<int>(rng() % 5);
        s.limit = kLimits[rng() % 5];
        s.second_limit = rng() % 4 == 0 ? kLimits[rng() % 5] : 0;
        s.period_ms = rng() % 3 == 0 ? 60'000 : 1000;
        s.overdraft = kOverdrafts[rng() % 3];
        s.fail = rng() % 2 == 0 ? FailMode::closed : FailMode::local;
        pick_timing(s, rng);
        s.pattern = static_cast<Pattern>(rng() % 6);
        s.periods = s.period_ms == 1000 ? 6 : 3;
        s.max_delay_intervals = static_cast<int>(rng() % 4);
        const double losses[] = {0, 0, 0.05, 0.2};
        s.loss = losses[rng() % 4];
        s.dup = losses[rng() % 4];
        s.pauses = static_cast<int>(rng() % 3);
        s.data_losses = rng() % 3 == 0 ? 1 + static_cast<int>(rng() % 2) : 0;
        s.restarts = static_cast<int>(rng() % 3);
        if (s.limit >= 1000 && s.period_ms == 1000 && s.pattern != Pattern::steady2x) {
            s.periods = 4;  // thousands of requests a second: keep the run short
        }
        Sim sim(s);
        const RunResult r = sim.run();
        if (::testing::Test::HasFailure()) {
            ADD_FAILURE() << "failing scenario: " << s.describe();
            return;
        }
        sum.add(s, r);
    }
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf(
        "[cluster model] %d runs in %.1f s: %lld accepted, %lld refused, %lld batches (%lld "
        "failed)\n"
        "  bound: worst window / (N + n*D) = %.3f  (%s)\n"
        "  by D: D=0 %.3f, D=1 %.3f, D=3 %.3f; worst (window - N) / (n*D) = %.3f\n"
        "  data losses: %d, re-seeded within the quarantine: %d; worst window after a late "
        "re-seed / (N + n*D) = %.3f\n"
        "  fail=local fallback windows: worst / ((n + r) * N) = %.3f\n"
        "  nodes seen: %lld replies, each with the count of distinct nodes in the last %lld ms "
        "(at most %lld)\n",
        runs, secs, static_cast<long long>(sum.accepted), static_cast<long long>(sum.refused),
        static_cast<long long>(sum.batches), static_cast<long long>(sum.failures), sum.worst_ratio,
        sum.worst_what.c_str(), sum.worst_ratio_by_d[0], sum.worst_ratio_by_d[1],
        sum.worst_ratio_by_d[3], sum.worst_excess, sum.losses, sum.premise_held,
        sum.worst_loss_ratio, sum.worst_fallback_ratio, static_cast<long long>(sum.replies),
        static_cast<long long>(kNodeSeenMs), static_cast<long long>(sum.max_nodes_seen));
}

// The adversary's choice: every node saturated (4x the rate, or bursts),
// replies slow but within a long timeout (so late grants and views are
// used), Redis pausing and losing its data under that load. This is where a
// lease measured from the reply instead of the send, or overdraft on a
// partial view after a data loss, shows.
TEST(ClusterModel, BoundUnderContention) {
    std::mt19937_64 rng(4242);
    double worst = 0;
    std::string worst_what;
    int losses = 0, held = 0;
    double excess = 0;
    for (int i = 0; i < 160; i++) {
        Scenario s;
        s.seed = rng();
        s.nodes = 2 + static_cast<int>(rng() % 4);
        const std::uint32_t limits[] = {5, 16, 17, 100, 1000};
        s.limit = limits[rng() % 5];
        s.period_ms = rng() % 4 == 0 ? 60'000 : 1000;
        s.overdraft = kOverdrafts[rng() % 3];
        s.fail = FailMode::closed;
        s.interval_ms = s.period_ms == 1000 ? 20 : 250;
        s.timeout_ms = 8 * s.interval_ms;
        const Pattern patterns[] = {Pattern::steady2x, Pattern::mixed, Pattern::skewed,
                                    Pattern::independent, Pattern::independent};
        s.pattern = patterns[rng() % 5];
        s.steady_multiple = 4;
        s.periods = s.period_ms == 1000 ? 5 : 3;
        s.max_delay_intervals = i % 2 == 0 ? 3 : 0;
        if (s.max_delay_intervals == 0) s.max_delay_ms = s.interval_ms / 4;
        s.pauses = static_cast<int>(rng() % 2);
        s.data_losses = i % 2 == 1 ? 2 : 0;  // with fast replies: re-seeding in time
        s.dup = i % 4 == 0 ? 0.1 : 0;
        Sim sim(s);
        const RunResult r = sim.run();
        if (::testing::Test::HasFailure()) {
            ADD_FAILURE() << "failing scenario: " << s.describe();
            return;
        }
        losses += r.loss_events;
        held += r.loss_premise_held;
        excess = std::max(excess, r.worst_excess);
        if (r.worst_ratio > worst) {
            worst = r.worst_ratio;
            worst_what = s.describe() + " count=" + std::to_string(r.worst_count);
        }
    }
    std::printf(
        "[cluster model] contention: worst window / (N + n*D) = %.3f (%s)\n"
        "  worst (window - N) / (n*D) = %.3f; data losses %d, re-seeded within the "
        "quarantine %d\n",
        worst, worst_what.c_str(), excess, losses, held);
}

// Exactly N with D = 0: synchronized bursts of 3N on a fresh key over n
// nodes, through every fault.
TEST(ClusterModel, ExactlyNWithoutOverdraft) {
    std::mt19937_64 rng(7);
    double worst = 0;
    for (int i = 0; i < 40; i++) {
        Scenario s;
        s.seed = rng();
        s.nodes = 2 + static_cast<int>(rng() % 4);
        s.limit = kLimits[rng() % 5];
        s.period_ms = 1000;
        s.overdraft = 0;
        s.fail = FailMode::closed;
        pick_timing(s, rng);
        s.pattern = Pattern::bursts;
        s.max_delay_intervals = static_cast<int>(rng() % 4);
        s.loss = 0.1;
        s.dup = 0.1;
        s.pauses = 1;
        s.restarts = 1;
        Sim sim(s);
        const RunResult r = sim.run();
        ASSERT_FALSE(::testing::Test::HasFailure()) << s.describe();
        EXPECT_LE(r.worst_count, s.limit) << s.describe();
        worst = std::max(worst, r.worst_ratio);
    }
    std::printf("[cluster model] D=0: worst window / N = %.3f\n", worst);
}

// A client at twice the rate, spread over the nodes, healthy Redis (loopback
// latency): at least 85% of N per period after the first.
TEST(ClusterModel, LivenessSteadyTwiceTheRate) {
    std::mt19937_64 rng(99);
    double worst = 2;
    double worst_d0 = 2;
    std::string worst_what;
    std::string worst_d0_what;
    for (std::uint32_t N : kLimits) {
        for (std::uint32_t P : {1000u, 60'000u}) {
            for (std::uint32_t D : kOverdrafts) {
                for (int n : {1, 3, 5}) {
                    if (P == 60'000 && N < 100 && n == 3) continue;  // keep it short
                    Scenario s;
                    s.seed = rng();
                    s.nodes = n;
                    s.limit = N;
                    s.period_ms = P;
                    s.overdraft = D;
                    s.fail = FailMode::closed;
                    s.interval_ms = P == 1000 ? 20 : 100;  // the design's fast and default
                    s.timeout_ms = P == 1000 ? 20 : 50;
                    s.max_delay_ms = 2;
                    s.pattern = Pattern::steady2x;
                    s.periods = P == 1000 ? 6 : 3;
                    Sim sim(s);
                    const RunResult r = sim.run();
                    ASSERT_FALSE(::testing::Test::HasFatalFailure()) << s.describe();
                    EXPECT_EQ(r.end_nodes_seen_min, static_cast<std::uint64_t>(n))
                        << "every node sees all n nodes: " << s.describe();
                    EXPECT_EQ(r.end_nodes_seen_max, static_cast<std::uint64_t>(n)) << s.describe();
                    if (std::getenv("CLUSTER_MODEL_VERBOSE") != nullptr) {
                        std::printf("  liveness %5.1f%%  N=%u P=%u D=%u n=%d\n", 100 * r.liveness,
                                    N, P, D, n);
                    }
                    if (D == 0) {
                        if (r.liveness < worst_d0) {
                            worst_d0 = r.liveness;
                            worst_d0_what = s.describe();
                        }
                        continue;
                    }
                    EXPECT_GE(r.liveness, 0.85) << s.describe();
                    if (r.liveness < worst) {
                        worst = r.liveness;
                        worst_what = s.describe();
                    }
                }
            }
        }
    }
    std::printf(
        "[cluster model] liveness (2x steady, D>=1): worst %.1f%% of N per period (%s)\n"
        "[cluster model] liveness D=0: worst %.1f%% (%s)\n",
        100 * worst, worst_what.c_str(), 100 * worst_d0, worst_d0_what.c_str());
}

}  // namespace
}  // namespace apikey
