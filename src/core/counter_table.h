// Rate-limit counters in shared memory: a fixed array of slots, found by
// open addressing on a 64-bit budget id, each slot guarded by its own tiny
// spin lock. Finding an existing budget takes no zone-wide lock; only
// creating one (rare: a budget's first request in a period) takes the
// table's claim lock, so two workers can never create the same budget twice.
//
// Cluster mode: a SYNCED table (format/adopt with a SyncConfig) also holds
// the zone's SyncNodeState after its header and a SyncLedger per slot, in an
// array parallel to the slots (344 bytes per counter instead of 248), and
// consume() runs the ledger (grant_ledger.h) under the slot lock after the
// local window. The sync process reads and settles the ledgers through
// sync_tick() (sync_engine.h). Unsynced tables are laid out and behave
// exactly as before.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

#include "grant_ledger.h"
#include "sliding_window.h"
#include "sync_batch.h"

namespace apikey {

struct CounterSlot {
    std::uint64_t lock;       // owner_lock word: the holder's identity, 0 when free
    std::uint32_t period_ms;  // of the budget held here
    WindowSummary summary;    // the window's running sums (sliding_window.h)
    std::uint64_t budget;     // 0: never used
    std::int64_t last_used_ms;
    WindowState window;
};
static_assert(std::is_trivially_copyable_v<CounterSlot>);
static_assert(sizeof(CounterSlot) == 248, "README states 248 bytes per counter");
static_assert(sizeof(CounterSlot) < 256, "a counter stays under 256 bytes");

struct CounterTableHeader {
    std::uint32_t magic;
    std::uint32_t layout_version;
    std::uint64_t claim_lock;  // owner_lock word
    std::uint64_t capacity;
    std::uint64_t evicted_active;  // counters evicted while still in their window
};

// A synced table's extension of the header, right after it (8-aligned):
// the zone's sync configuration as formatted (adopt refuses another), the
// sync process's words and the node state. Written only by the sync process
// (and format); the request path reads node.epoch_gen and
// node.last_success_ms with atomic loads (sync_context).
struct CounterSyncHeader {
    std::uint32_t interval_ms;
    std::uint32_t timeout_ms;
    std::uint32_t overdraft;
    std::uint32_t fail_after_ms;
    std::uint32_t fail;  // FailMode
    std::uint32_t reserved;
    std::uint64_t tick_lock;  // owner_lock word: the one sync_tick running on this zone
    std::uint64_t cursor;     // slot where the next batch starts offering (rotation)
    SyncNodeState node;
};
static_assert(std::is_trivially_copyable_v<CounterSyncHeader>);

// Bytes per counter: unsynced, and synced (slot + ledger).
constexpr std::size_t kCounterBytes = sizeof(CounterSlot);
constexpr std::size_t kSyncedCounterBytes = sizeof(CounterSlot) + sizeof(SyncLedger);
static_assert(kSyncedCounterBytes == 344, "README: 344 bytes per synced counter");

struct CounterResult {
    // What the request's headers report. Unsynced: the local window's
    // decision. Synced: allowed only when both the local window and the
    // ledger accept; remaining/reset_s/retry_after_s/next_free_s are the
    // ledger's when the local window accepted (limit and counted_at_ms stay
    // the local window's).
    WindowDecision decision;
    bool evicted_active;  // the table was full: an active counter was dropped
    bool synced;          // the ledger decided too (then `ledger` is its decision)
    std::uint64_t slot;
    LedgerDecision ledger;  // for refund (valid when synced)
};

// A stable 64-bit id for a budget (who pays, for which category and period);
// never 0.
std::uint64_t budget_id(char kind, std::string_view who, std::string_view category,
                        std::uint32_t period_ms) noexcept;

class CounterTable {
public:
    // Slots within probe distance of a budget's home slot; a full
    // neighbourhood triggers eviction.
    static constexpr unsigned kProbe = 16;

    static std::size_t capacity_for(std::size_t bytes, bool synced = false) noexcept;

    // Formats memory as an empty table, or adopts a table already there
    // (a reload with an unchanged zone) when its layout matches.
    //
    // `sync` non-null makes (or expects) a synced table. format() starts a
    // new node: a random node id, the fail_after clock started at now_ms
    // (the request path's clock; without it CLOCK_MONOTONIC's ms, the clock
    // of nginx's ngx_current_msec). adopt() keeps node id, sequence, epoch and
    // every ledger, and refuses (invalid) a table formatted unsynced when
    // `sync` is given, synced when it is not, or synced with another
    // SyncConfig: the caller then formats afresh (a new node id; what the
    // old ledgers had not reported, at most D per budget, is lost as in a
    // restart).
    static CounterTable format(void *memory, std::size_t bytes) noexcept {
        return format(memory, bytes, nullptr);
    }
    static CounterTable adopt(void *memory, std::size_t bytes) noexcept {  // invalid if no match
        return adopt(memory, bytes, nullptr);
    }
    static CounterTable format(void *memory, std::size_t bytes, const SyncConfig *sync) noexcept;
    static CounterTable format(void *memory, std::size_t bytes, const SyncConfig *sync,
                               std::int64_t now_ms) noexcept;
    static CounterTable adopt(void *memory, std::size_t bytes, const SyncConfig *sync) noexcept;

    CounterTable() noexcept = default;
    bool valid() const noexcept { return header_ != nullptr; }
    std::uint64_t capacity() const noexcept { return header_->capacity; }
    std::uint64_t evicted_active() const noexcept;

    bool synced() const noexcept { return ledgers_ != nullptr; }
    // Synced tables only (else null / the defaults).
    const SyncConfig &sync_config() const noexcept { return sync_config_; }
    // The zone's node state (an all-zero one for unsynced tables), for
    // sync_degraded() and status. Written by the sync process only: read the
    // statistics words with load_relaxed (shm_atomic.h).
    const SyncNodeState &sync_node() const noexcept;

    // One request against one budget. `self` identifies the calling process
    // for the locks, as this_process_identity() (process_identity.h): a lock
    // left by a process that died is taken over. A bare pid still works, but
    // then a dead holder whose pid was reused keeps its slot locked.
    //
    // Synced: when the local window accepts, the ledger decides under the
    // same lock (ledger_admit); a ledger refusal takes the request back from
    // the local window, so it spends nothing. now_ms must be the clock the
    // sync process uses (the node's monotonic ms).
    CounterResult consume(std::uint64_t budget, WindowLimit limit, std::int64_t now_ms, bool commit,
                          std::uint64_t self) noexcept;

    // Takes back an accepted, committed request (a later limit refused it):
    // window_refund, and on a synced table ledger_refund.
    void refund(const CounterResult &result, std::uint64_t budget, std::uint64_t self) noexcept;

private:
    friend class SyncEngineAccess;  // sync_engine.cpp: the sync process's view of the slots

    CounterTable(CounterTableHeader *header, CounterSlot *slots) noexcept
        : header_(header), slots_(slots) {}

    void attach_sync(CounterSyncHeader *sync, const SyncConfig &config) noexcept;
    CounterResult consume_new(std::uint64_t budget, WindowLimit limit, std::int64_t now_ms,
                              bool commit, std::uint64_t self) noexcept;
    CounterResult decide_locked(CounterSlot &slot, WindowLimit limit, std::int64_t now_ms,
                                bool commit, bool evicted_active) noexcept;
    void consume_synced(CounterSlot &slot, CounterResult &r, std::int64_t now_ms,
                        bool commit) noexcept;

    std::uint64_t home(std::uint64_t budget) const noexcept;
    CounterSlot *find_locked(std::uint64_t budget, std::uint64_t self) noexcept;
    CounterSlot *claim_locked(std::uint64_t budget, WindowLimit limit, std::int64_t now_ms,
                              std::uint64_t self, bool &evicted_active) noexcept;

    CounterTableHeader *header_ = nullptr;
    CounterSlot *slots_ = nullptr;
    CounterSyncHeader *sync_ = nullptr;  // synced tables only
    SyncLedger *ledgers_ = nullptr;      // synced tables only, parallel to slots_
    SyncConfig sync_config_{};           // a copy of the one in the zone
};

}  // namespace apikey
