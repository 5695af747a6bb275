// Cluster mode, the sync side: one batch per zone per tick, built from the
// zone's ledgers, sent to Redis as one grant-script call, and its reply (or
// its failure) applied back to the ledgers.
//
// What the sync process does every `interval`, for each synced zone:
//
//   SyncBatch batch;
//   batch.begin(node, config, now, random64());
//   for each used counter slot (lock it; skip if budget == 0):
//       batch.offer(slot.budget, slot.period_ms, ledger, slot.window);
//       (unlock; stop offering when batch.full())
//   batch.script_call(prefix, keys, args);
//   RedisResult r = link.run_script(script, keys, args);   // no lock held
//   if (!(r.ok && batch.accept_reply(node, r.reply, now2, error))) batch.fail(node, now2);
//   for i in 0 .. batch.size():
//       lock the slot holding batch.budget(i) (skip if it holds another budget now);
//       batch.settle(i, ledger); unlock
//
// A batch is sent every tick even when no budget needs anything (then it is a
// heartbeat of a few hundred bytes): it is how a node learns that Redis lost
// its data, and it keeps `last_success_ms` fresh for fail=local. Only one
// batch per zone is on the wire at a time (the sync process waits for it).
//
// Failure: a batch without a (parsable) reply is ambiguous: Redis may or may
// not have run it. Its overdraft stays unacked and is reported again (maybe
// recorded twice: over-counting, the safe side); its grants are presumed lost
// (recorded but unused until they leave the window: the safe side); its
// give-backs are never resent (a second one could return units twice).
//
// Epoch change (Redis lost its data): the reply says "epoch" and applied
// nothing. The node adopts the epoch and bumps epoch_gen; every ledger then
// drops its lease and give-back (their records are gone) and its next batch
// re-seeds: its local window's counts that still count, by age, instead of
// the unacked overdraft (which the window includes).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "grant_ledger.h"
#include "grant_script.h"
#include "redis_link.h"
#include "sliding_window.h"

namespace apikey {

// Per synced zone, in the zone's shared memory (kept across reloads with the
// zone). Written only by the sync process; the request path reads epoch_gen
// and last_success_ms with atomic loads (sync_context), the status page the
// counters.
struct SyncNodeState {
    std::uint64_t node_id;    // random, never 0
    std::uint64_t seq;        // of the last batch sent
    std::uint32_t epoch_gen;  // bumped on every epoch change seen
    std::uint32_t epoch_len;
    char epoch[64];                // Redis' epoch as last adopted ("" before any)
    std::int64_t last_success_ms;  // node ms of the last reply (or of the start)
    // statistics (monotonic counters for status)
    std::uint64_t batches;
    std::uint64_t failures;
    std::uint64_t epoch_changes;
    std::uint64_t stale_replies;
    std::uint64_t budgets_sent;
    std::uint64_t granted;
    std::uint64_t reported;
    std::uint64_t last_batch_budgets;
    std::uint64_t quarantine_replies;
    std::uint64_t last_batch_ms;     // how long the last batch took, send to reply (sync process)
    std::uint64_t refused_no_grant;  // requests refused for lack of a grant (request path, atomic)
    // Per the last reply (sync process): nodes, this one included, whose
    // batches for this zone reached this Redis in the last kNodeSeenMs.
    std::uint64_t nodes_seen;
};
static_assert(std::is_trivially_copyable_v<SyncNodeState>);

// A fresh state for a zone that has never synced: node_id must be random
// (two nodes with one id would share a sequence), now_ms starts the
// fail_after clock.
void sync_node_init(SyncNodeState &node, std::uint64_t node_id, std::int64_t now_ms) noexcept;

// What the request path needs from the zone (atomic loads: the sync process
// writes the state concurrently).
LedgerContext sync_context(const SyncNodeState &node, const SyncConfig &config,
                           std::int64_t now_ms) noexcept;

// True while no exchange succeeded for fail_after ("degraded" in status).
bool sync_degraded(const SyncNodeState &node, const SyncConfig &config,
                   std::int64_t now_ms) noexcept;

// The counts of a local window that still count at now_ms, by age (ms before
// now_ms; a bucket's count as if at its last millisecond, as the limiter
// treats it), oldest first, equal ages merged. Reads the WindowState layout
// documented in sliding_window.h (proposed to move there as window_usage).
void window_usage(const WindowState &window, std::uint32_t period_ms, std::int64_t now_ms,
                  std::vector<ReseedEntry> &out);

class SyncBatch {
public:
    static constexpr std::size_t kDefaultMaxBudgets = 1000;

    explicit SyncBatch(std::size_t max_budgets = kDefaultMaxBudgets) : max_(max_budgets) {}

    // Starts a batch at now_ms: the next sequence number, the epoch this node
    // knows. `epoch_candidate` is random (it becomes the epoch if Redis has
    // none); `zone` is the limit zone's name (Redis counts the nodes that
    // sync it). Clears what a previous batch held.
    void begin(SyncNodeState &node, const SyncConfig &config, std::int64_t now_ms,
               std::uint64_t epoch_candidate, std::string_view zone = {});

    // One budget, under its slot's lock. Returns true when it joined the batch:
    // then its unacked is in flight, its give-back taken and its demand reset.
    // Budgets with nothing to say stay out (their demand is reset all the same:
    // demand is per tick).
    bool offer(std::uint64_t budget, std::uint32_t period_ms, SyncLedger &ledger,
               const WindowState &window);

    bool full() const noexcept { return requests_.size() >= max_; }
    std::size_t size() const noexcept { return requests_.size(); }
    std::uint64_t budget(std::size_t i) const noexcept { return requests_[i].budget; }
    const std::vector<GrantRequest> &requests() const noexcept { return requests_; }
    const GrantBatchHeader &header() const noexcept { return header_; }

    void script_call(std::string_view prefix, std::vector<std::string> &keys,
                     std::vector<std::string> &args) const;

    // The reply, at recv_ms: updates the node state (epoch, sequence,
    // last_success_ms, statistics). False when the reply is not one this batch
    // can use (an error reply, a malformed one): call fail() then.
    bool accept_reply(SyncNodeState &node, const RedisReply &reply, std::int64_t recv_ms,
                      std::string &error);

    // No usable reply: the batch is ambiguous.
    void fail(SyncNodeState &node);

    // Applies the outcome to budget i's ledger (under its slot's lock, and
    // only if the slot still holds budget(i)).
    void settle(std::size_t i, SyncLedger &ledger) const;

    enum class Outcome { pending, applied, not_applied };
    Outcome outcome() const noexcept { return outcome_; }
    const GrantReply &reply() const noexcept { return reply_; }

private:
    std::size_t max_;
    SyncConfig config_{};
    std::int64_t send_ms_ = 0;
    std::int64_t recv_ms_ = 0;
    std::uint32_t gen_ = 0;
    GrantBatchHeader header_;
    std::vector<GrantRequest> requests_;
    Outcome outcome_ = Outcome::pending;
    GrantReply reply_;
};

}  // namespace apikey
