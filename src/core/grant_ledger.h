// Cluster mode, the request path: one budget's share of a cluster-wide limit
// on this node, decided in shared memory without touching the network.
//
// Each synced counter slot carries a SyncLedger next to its local window.
// The local window is asked first and still counts every request this node
// accepts (so one node alone never exceeds N, and after a Redis data loss the
// node can re-seed Redis from it). When the local window accepts, the ledger
// decides, under the same slot lock:
//
//   1. a lease (units Redis granted, recorded there in advance) that is still
//      valid: take one, accept;
//   2. else overdraft: fewer than D accepted-but-unacknowledged requests, and
//      the last cluster view shows room (view_total + unacked < N): accept and
//      count it unacked (the next batch reports it);
//   3. else refuse (429), Retry-After from the view, never below one sync
//      interval (a grant cannot come sooner); the refusal is counted as demand
//      so the next batch asks for more. It spends nothing: the caller takes it
//      back from the local window.
//
// After fail_after without a successful exchange with Redis, fail=local puts
// the ledger in local_fallback: everything the local window accepts is
// accepted (at most n*N across n nodes) and counted unacked, so it is
// reported when Redis is back. fail=closed changes nothing: nodes spend what
// they hold, then D, then refuse; the bound N + n*D holds through the outage.
//
// Everything here is noexcept, allocation-free and lock-free: the caller holds
// the counter slot's lock. Times are the node's monotonic milliseconds; Redis'
// clock never reaches this file (the sync engine turns Redis' relative
// durations into node times when it applies a reply).
#pragma once

#include <cstdint>
#include <type_traits>

#include "sliding_window.h"

namespace apikey {

enum class FailMode : std::uint8_t { local, closed };

// Per synced zone (from api_key_limit_zone ... sync= interval= overdraft=
// fail= and api_key_redis timeout=).
struct SyncConfig {
    std::uint32_t interval_ms = 100;
    std::uint32_t timeout_ms = 50;
    std::uint32_t overdraft = 1;  // D
    std::uint32_t fail_after_ms = 1000;
    FailMode fail = FailMode::local;

    // A grant lasts at least until the next batch's grant can have arrived.
    std::uint32_t lease_ms() const noexcept { return 2 * interval_ms + timeout_ms; }
    // How soon a request for a grant can be answered: one tick plus a round trip.
    std::uint32_t renew_ms() const noexcept { return interval_ms + timeout_ms; }
    // After Redis lost its data: time for every node to hear of it (one batch)
    // and re-seed (the next), each within a tick plus a timeout.
    std::uint32_t quarantine_ms() const noexcept { return 2 * (interval_ms + timeout_ms); }
};

// The sync extension of one counter slot. Trivially copyable, offsets only
// (no pointers): it lives in shared memory, next to the slot's WindowState.
struct SyncLedger {
    std::uint32_t limit;          // N last applied here (key overrides included)
    std::uint32_t lease_left;     // granted units not yet used
    std::int64_t lease_until_ms;  // the lease may be used while now < this
    std::int64_t lease_bucket;    // Redis bucket the lease is recorded in
    std::uint32_t give_back;      // unused units of an older lease, to return
    std::uint32_t unacked;        // accepted without a grant, not acknowledged (<= D, but
                                  // unbounded in local_fallback)
    std::int64_t give_back_bucket;
    std::uint32_t inflight;         // part of unacked carried by the batch on the wire
    std::uint32_t demand;           // accepted + refused for lack of grant since the last batch
    std::uint32_t view_total;       // cluster total at the last reply (kViewFull: treat as full)
    std::uint32_t seeded_gen;       // the epoch generation this budget's history is in Redis for
    std::int64_t view_room_at_ms;   // when the view's total falls below the limit (0: had room)
    std::int64_t view_reset_at_ms;  // when nothing recorded in the view counts any more
    std::int64_t unacked_at_ms;     // when the newest unacked request was accepted: all of
                                    // them are reported as of then (none is later), so Redis
                                    // records them no later than needed, not a tick late
    std::int64_t demand_at_ms;      // the last request decided here
    std::uint32_t demand_gap_ms;    // average gap between requests (0: unknown); sizes the
                                    // lease so a sparse client's next request finds it valid
    std::uint32_t reserved;
};
static_assert(std::is_trivially_copyable_v<SyncLedger>);
static_assert(sizeof(SyncLedger) == 96, "README: bytes per synced counter (248 + 96)");

// view_total meaning "no room": after a Redis data loss, until re-seeding is over.
constexpr std::uint32_t kViewFull = 0xffffffffu;

// A new ledger for a budget that has no history on this node (all zero
// with the node's current epoch generation).
void ledger_init(SyncLedger &ledger, std::uint32_t epoch_gen) noexcept;

enum class LedgerMode : std::uint8_t {
    cluster,         // Redis reachable, or fail=closed
    local_fallback,  // fail=local after fail_after without a successful batch
};

// What the request path knows about the zone's sync state (read from the
// zone's SyncNodeState with atomic loads; see sync_batch.h sync_context()).
struct LedgerContext {
    std::int64_t now_ms;
    LedgerMode mode;
    std::uint32_t epoch_gen;
};

enum class LedgerVia : std::uint8_t { lease, overdraft, local, refused };

struct LedgerDecision {
    bool allowed;
    LedgerVia via;
    std::uint32_t remaining;      // X-RateLimit-Remaining: min(local, the cluster estimate)
    std::uint32_t reset_s;        // X-RateLimit-Reset: the later of local and the view's
    std::uint32_t retry_after_s;  // when refused: >= 1, >= one renewal (interval + timeout)
    std::uint32_t next_free_s;    // the IETF t: retry_after_s when refused, else local's
    // For ledger_refund: which lease a unit came from.
    std::int64_t lease_until_ms;
    std::int64_t lease_bucket;
};

// One request that the local window accepted (`local`: its decision, with
// the request counted when commit). With commit false (dry run) nothing
// changes. When the result is refused, the caller must take the request back
// from the local window (window_refund(local.counted_at_ms)).
LedgerDecision ledger_admit(SyncLedger &ledger, const SyncConfig &config, LedgerContext ctx,
                            const WindowDecision &local, bool commit) noexcept;

// ledger_admit as the counter table runs it: `decision` (the local window's,
// which accepted the request) becomes the request's: allowed only when the
// ledger accepts too; then remaining, reset_s and next_free_s are the
// ledger's, and a refusal's retry_after_s. `out` gets the ledger's decision
// for ledger_refund: when a lease unit was spent (via lease) only allowed,
// via and the lease's lease_until_ms and lease_bucket are set, the rest is
// in `decision`. Returns whether the ledger accepted; when it did not and
// commit, the caller takes the request back from the local window.
bool ledger_decide(SyncLedger &ledger, const SyncConfig &config, LedgerContext ctx,
                   WindowDecision &decision, LedgerDecision &out, bool commit) noexcept;

// Takes back a request ledger_admit accepted (a later limit of the same
// request refused it): a lease unit returns to its lease if that lease is
// still the current one; overdraft is taken back unless a batch already
// carries it (then it is reported: counted, the safe side).
void ledger_refund(SyncLedger &ledger, const LedgerDecision &decision) noexcept;

// Lease housekeeping shared with the sync engine: a lease whose time is over
// becomes a give-back; a budget whose history Redis lost (seeded_gen behind
// the node's epoch generation) drops its lease and pending give-back.
void ledger_refresh(SyncLedger &ledger, std::uint32_t epoch_gen, std::int64_t now_ms) noexcept;

// The cluster total the view stands for at now_ms, aged: once room_at has
// passed, records have left and it is at most limit - 1. Ageing is as safe as
// the view itself: a request still in a window ending at or after now was
// recorded (if at all by the view's moment) in a record that still counts at
// now, so dropping records that left before now drops none of them. room_at
// is measured from when the reply ARRIVED, so a record is only ever treated
// as gone after it really is. A quarantine view (kViewFull) never ages: its
// totals were partial.
inline std::uint64_t ledger_view_total(const SyncLedger &l, std::int64_t now_ms) noexcept {
    if (l.view_total == kViewFull) return kViewFull;
    if (l.view_room_at_ms != 0 && now_ms >= l.view_room_at_ms && l.limit > 0 &&
        l.view_total >= l.limit) {
        return l.limit - 1;
    }
    return l.view_total;
}

inline std::uint32_t ledger_ceil_seconds(std::int64_t ms) noexcept {
    if (ms <= 0) return 0;
    return static_cast<std::uint32_t>((ms + 999) / 1000);
}

// The node's estimate of what this budget may still accept across the
// cluster: the room at the last view, plus the lease it holds (recorded in
// the view, but this node's to spend), less overdraft not in the view yet.
inline std::uint32_t ledger_cluster_remaining(const SyncLedger &l, std::int64_t now_ms) noexcept {
    std::int64_t est = l.lease_left;
    if (l.view_total != kViewFull) {
        est += static_cast<std::int64_t>(l.limit) -
               static_cast<std::int64_t>(ledger_view_total(l, now_ms));
    }
    est -= l.unacked;
    if (est < 0) return 0;
    return est > l.limit ? l.limit : static_cast<std::uint32_t>(est);
}

// ledger_decide's common case, inline on the request path: a unit of a valid
// lease, committed. Decides exactly as ledger_decide does when the rate is
// unchanged, Redis has this budget's history (epoch_gen), the lease is valid
// and the demand counters are in range, and then returns true; otherwise
// changes nothing and returns false (ledger_decide then decides). The mode
// is not needed: a valid lease is spent in every mode.
inline bool ledger_take_lease(SyncLedger &l, std::int64_t now_ms, std::uint32_t epoch_gen,
                              WindowDecision &decision, LedgerDecision &out) noexcept {
    // The gap since the last demand in 0 to 0x7fffffff ms: one unsigned compare.
    if (__builtin_expect(!(l.limit == decision.limit && l.seeded_gen == epoch_gen &&
                           l.lease_left > 0 && now_ms < l.lease_until_ms && l.demand_at_ms != 0 &&
                           l.demand != 0xffffffffu &&
                           static_cast<std::uint64_t>(now_ms - l.demand_at_ms) <= 0x7fffffffu),
                         0)) {
        return false;
    }
    l.demand++;
    const std::int64_t gap = now_ms - l.demand_at_ms;
    const std::int64_t avg = l.demand_gap_ms;
    l.demand_gap_ms = static_cast<std::uint32_t>(avg == 0 ? gap : avg + (gap - avg) / 4);
    l.demand_at_ms = now_ms;
    l.lease_left--;
    const std::uint32_t est = ledger_cluster_remaining(l, now_ms);
    if (est < decision.remaining) decision.remaining = est;
    // ceil(ms / 1000) > reset_s exactly when ms > reset_s * 1000: the
    // division only for a later reset.
    const std::int64_t view_reset_ms = l.view_reset_at_ms - now_ms;
    if (view_reset_ms > static_cast<std::int64_t>(decision.reset_s) * 1000) {
        decision.reset_s = ledger_ceil_seconds(view_reset_ms);
    }
    decision.retry_after_s = 0;
    // What ledger_refund reads; the figures for the headers are in `decision`.
    out.allowed = true;
    out.via = LedgerVia::lease;
    out.lease_until_ms = l.lease_until_ms;
    out.lease_bucket = l.lease_bucket;
    return true;
}

// Moves `units` of the lease recorded in `bucket` to the give-back; when a
// give-back for another bucket is already waiting they are dropped (left
// recorded in Redis until they leave the window: the safe side).
void ledger_give_back(SyncLedger &ledger, std::uint32_t units, std::int64_t bucket) noexcept;

}  // namespace apikey
