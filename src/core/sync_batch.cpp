#include "sync_batch.h"

#include <algorithm>
#include <cstring>

#include "shm_atomic.h"

namespace apikey {

namespace {

bool lease_valid(const SyncLedger &l, std::int64_t now) noexcept {
    return l.lease_left > 0 && now < l.lease_until_ms;
}

std::int64_t ceil_div(std::int64_t a, std::int64_t b) noexcept { return (a + b - 1) / b; }

// The WindowState layout of sliding_window.h: the exact log keeps int64
// timestamps in cell pairs, with a carry (stamp in cells 32..33, count in 34);
// buckets keep cells[b mod 51] for b in head - 50 .. head.
constexpr unsigned kCarryStamp = 2 * kExactLimit;
constexpr unsigned kCarryCount = 2 * kExactLimit + 2;

std::int64_t cell64(const WindowState &s, unsigned i) noexcept {
    std::int64_t v;
    std::memcpy(&v, &s.cells[i], sizeof v);
    return v;
}

}  // namespace

void sync_node_init(SyncNodeState &node, std::uint64_t node_id, std::int64_t now_ms) noexcept {
    node = SyncNodeState{};
    node.node_id = node_id != 0 ? node_id : 1;
    node.last_success_ms = now_ms;
}

LedgerContext sync_context(const SyncNodeState &node, const SyncConfig &config,
                           std::int64_t now_ms) noexcept {
    LedgerContext c{};
    c.now_ms = now_ms;
    c.epoch_gen = load_acquire(&node.epoch_gen);
    c.mode = config.fail == FailMode::local && sync_degraded(node, config, now_ms)
                 ? LedgerMode::local_fallback
                 : LedgerMode::cluster;
    return c;
}

bool sync_degraded(const SyncNodeState &node, const SyncConfig &config,
                   std::int64_t now_ms) noexcept {
    return now_ms - load_acquire(&node.last_success_ms) >= config.fail_after_ms;
}

void window_usage(const WindowState &s, std::uint32_t period_ms, std::int64_t now,
                  std::vector<ReseedEntry> &out) {
    out.clear();
    const std::int64_t period = period_ms;
    auto add = [&](std::int64_t at, std::uint32_t count) {
        if (count == 0 || at + period <= now) return;  // left the window
        // A stamp ahead of now (another worker's clock) is reported as now:
        // recorded later, so it leaves later (the safe side).
        const std::int64_t age = std::max<std::int64_t>(0, now - at);
        if (!out.empty() && out.back().age_ms == age) {
            out.back().count += count;
        } else {
            out.push_back({age, count});
        }
    };
    if (s.width_ms == 0) {
        const unsigned n = s.head <= 0 ? 0 : std::min<std::int64_t>(s.head, kExactLimit);
        add(cell64(s, kCarryStamp), s.cells[kCarryCount]);  // older than every stamp
        for (unsigned i = 0; i < n; i++) add(cell64(s, 2 * i), 1);
    } else {
        const std::int64_t w = s.width_ms;
        for (std::int64_t b = s.head - kWindowBuckets + 1; b <= s.head; b++) {
            const std::int64_t i = ((b % kWindowBuckets) + kWindowBuckets) % kWindowBuckets;
            add((b + 1) * w - 1, s.cells[i]);
        }
    }
    // Oldest first means largest age first; both layouts list oldest first,
    // so ages are already descending.
}

void SyncBatch::begin(SyncNodeState &node, const SyncConfig &config, std::int64_t now_ms,
                      std::uint64_t epoch_candidate, std::string_view zone) {
    requests_.clear();
    outcome_ = Outcome::pending;
    reply_ = GrantReply{};
    config_ = config;
    send_ms_ = now_ms;
    recv_ms_ = now_ms;
    gen_ = node.epoch_gen;
    // The sequence number is spent before sending: a node that crashes with
    // the batch on the wire never reuses it.
    store_release(&node.seq, node.seq + 1);
    header_.node = node.node_id;
    header_.seq = node.seq;
    header_.epoch_seen.assign(node.epoch,
                              std::min<std::uint32_t>(node.epoch_len, sizeof node.epoch));
    header_.epoch_candidate = epoch_candidate;
    header_.quarantine_ms = config.quarantine_ms();
    header_.zone.assign(zone.data(), zone.size());
}

bool SyncBatch::offer(std::uint64_t budget, std::uint32_t period_ms, SyncLedger &l,
                      const WindowState &window) {
    if (full()) return false;  // untouched: its demand counts on into the next tick
    const std::int64_t now = send_ms_;
    // No batch of this zone is on the wire while we build one: anything still
    // marked in flight is left from a batch that never settled (a crash or a
    // restart with the zone kept). It is unacked again.
    l.inflight = 0;
    ledger_refresh(l, gen_, now);
    const std::uint32_t demand = l.demand;
    l.demand = 0;
    if (l.limit == 0) return false;  // never decided a request here

    GrantRequest g;
    g.budget = budget;
    g.limit = l.limit;
    g.period_ms = period_ms;
    g.reseed = l.seeded_gen != gen_;
    if (g.reseed) {
        window_usage(window, period_ms, now, g.history);
        if (g.history.empty()) {
            // Nothing this node accepted still counts: nothing to tell Redis,
            // and its unacked overdraft has left the window too.
            l.seeded_gen = gen_;
            l.unacked = 0;
            g.reseed = false;
        }
    } else if (l.unacked > 0) {
        // All as of the newest: none of them came later, so Redis records
        // them no later than needed (and not a tick late, which would cost
        // a client at its rate one whole request per period).
        g.report = l.unacked;
        g.history.push_back({std::max<std::int64_t>(0, now - l.unacked_at_ms), l.unacked});
    }
    if (l.give_back > 0) {
        g.give_back = l.give_back;
        g.give_back_bucket = l.give_back_bucket;
    }

    if (demand > 0) {
        const std::int64_t renew = config_.renew_ms();
        const bool full_view = ledger_view_total(l, now) + l.unacked >= l.limit;
        // A view with no room until room_at: asking before then only costs
        // Redis time (the answer would be 0).
        const bool hopeless = full_view && l.view_room_at_ms > now + renew;
        const std::int64_t ticks = ceil_div(renew, std::max<std::uint32_t>(1, config_.interval_ms));
        const bool needed = !lease_valid(l, now) || l.lease_until_ms - now <= renew ||
                            std::int64_t{l.lease_left} < std::int64_t{demand} * ticks;
        if (needed && !hopeless) {
            // The lease: at least lease_ms (until the next renewal can land).
            // With overdraft=0, for a sparse client, its average gap and a
            // quarter plus a renewal, so its next request finds the lease
            // valid (else every request of a client slower than one per lease
            // would be refused: measured 0% of N for 16r/m); at most a
            // period, since a unit is recorded where its lease ends and a
            // longer lease holds budget longer. With overdraft, sparse
            // requests go through it, recorded as of their own time: better
            // than a long lease.
            const std::int64_t gap = l.demand_gap_ms;
            const std::int64_t lease =
                config_.overdraft > 0 ? config_.lease_ms()
                                      : std::clamp<std::int64_t>(
                                            gap + gap / 4 + config_.renew_ms(), config_.lease_ms(),
                                            std::max<std::int64_t>(config_.lease_ms(), period_ms));
            // Units for the lease (it lasts to the end of Redis' bucket): at
            // the average gap's pace; without one yet, this tick's count at
            // this tick's pace (which over-asks for a sparse client: one
            // request in this tick is not one in every tick). Never less than
            // this tick's count.
            const std::int64_t horizon = lease + redis_bucket_ms(period_ms);
            const std::int64_t pace =
                gap > 0 ? ceil_div(horizon, gap)
                        : std::int64_t{demand} *
                              ceil_div(horizon, std::max<std::uint32_t>(1, config_.interval_ms));
            g.want = static_cast<std::uint32_t>(
                std::clamp<std::int64_t>(std::max<std::int64_t>(pace, demand), 1, l.limit));
            g.lease_ms = static_cast<std::uint32_t>(lease);
        }
    }
    if (!g.reseed && g.report == 0 && g.give_back == 0 && g.want == 0) return false;

    // Sent once: a failed batch's give-back is not resent (it may have been
    // applied; applying it twice would return units still counted).
    l.give_back = 0;
    l.inflight = l.unacked;
    requests_.push_back(std::move(g));
    return true;
}

void SyncBatch::script_call(std::string_view prefix, std::vector<std::string> &keys,
                            std::vector<std::string> &args) const {
    grant_script_call(prefix, header_, requests_, keys, args);
}

bool SyncBatch::accept_reply(SyncNodeState &node, const RedisReply &reply, std::int64_t recv_ms,
                             std::string &error) {
    if (!parse_grant_reply(reply, requests_.size(), reply_, error)) return false;
    if (reply_.epoch.empty() || reply_.epoch.size() >= sizeof node.epoch) {
        error = "grant script: epoch of unexpected size";
        return false;
    }
    recv_ms_ = recv_ms;
    store_release(&node.last_success_ms, recv_ms);
    node.batches++;
    store_relaxed(&node.nodes_seen, std::uint64_t{reply_.nodes});  // whatever the status
    if (reply_.last_seq > node.seq) node.seq = reply_.last_seq;
    const std::string_view known(node.epoch, node.epoch_len);
    const bool changed = known != reply_.epoch;
    if (changed) {
        std::memcpy(node.epoch, reply_.epoch.data(), reply_.epoch.size());
        node.epoch_len = static_cast<std::uint32_t>(reply_.epoch.size());
    }
    switch (reply_.status) {
    case GrantStatus::applied:
        // Only a node that knew no epoch gets "applied" with a new one: it
        // has no history in Redis to lose.
        outcome_ = Outcome::applied;
        node.last_batch_budgets = requests_.size();
        node.budgets_sent += requests_.size();
        if (reply_.quarantine_ms > 0) node.quarantine_replies++;
        for (std::size_t i = 0; i < requests_.size(); i++) {
            node.granted += reply_.results[i].grant;
            node.reported += requests_[i].report;
        }
        break;
    case GrantStatus::epoch_changed:
        // Redis lost its data: everything recorded is gone. Nothing of
        // this batch was applied; every ledger re-seeds.
        outcome_ = Outcome::not_applied;
        node.epoch_changes++;
        store_release(&node.epoch_gen, node.epoch_gen + 1);
        break;
    case GrantStatus::stale:
        // Already applied (a duplicate), or our sequence fell behind Redis'
        // (now caught up above). Nothing applied this time.
        outcome_ = Outcome::not_applied;
        node.stale_replies++;
        break;
    }
    return true;
}

void SyncBatch::fail(SyncNodeState &node) {
    outcome_ = Outcome::not_applied;
    node.failures++;
}

void SyncBatch::settle(std::size_t i, SyncLedger &l) const {
    const GrantRequest &g = requests_[i];
    if (outcome_ != Outcome::applied) {
        // Not applied, or unknown: unacked overdraft is reported again next
        // time; grants, if any were made, are presumed lost.
        l.inflight = 0;
        return;
    }
    const GrantResult &r = reply_.results[i];
    l.unacked -= std::min(l.unacked, l.inflight);
    l.inflight = 0;
    if (g.reseed) l.seeded_gen = gen_;

    // The view: what Redis recorded, at the latest moment it can have been
    // (recv), so Retry-After and Reset are never early for this node.
    if (reply_.quarantine_ms > 0) {
        // A new epoch: until every node has re-seeded, Redis' totals are
        // partial. No overdraft on them: treat the budget as full.
        l.view_total = kViewFull;
        l.view_room_at_ms = recv_ms_ + reply_.quarantine_ms;
    } else {
        l.view_total = r.total;
        // (room_ms is for the limit the batch carried; ageing needs it to be
        // the ledger's still.)
        l.view_room_at_ms = r.total >= g.limit && l.limit == g.limit ? recv_ms_ + r.room_ms : 0;
    }
    l.view_reset_at_ms = r.reset_ms > 0 ? recv_ms_ + r.reset_ms : 0;

    if (r.grant > 0) {
        // One lease at a time: what is left of the old one goes back (it is
        // recorded in another bucket and would expire earlier).
        if (l.lease_left > 0) ledger_give_back(l, l.lease_left, l.lease_bucket);
        l.lease_left = r.grant;
        // From when the batch LEFT: the node stops no later than Redis'
        // bucket ends, however long the reply took.
        l.lease_until_ms = send_ms_ + r.lease_ms;
        l.lease_bucket = r.lease_bucket;
    }
}

}  // namespace apikey
