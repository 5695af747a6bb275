// Cluster mode, the sync process's tick for one synced zone (a synced
// CounterTable): one batch built from the zone's ledgers, sent to Redis as
// one grant-script call with no lock held, its reply (or failure) settled
// back into the ledgers. See sync_batch.h for what a batch carries and
// grant_script.h for why the cluster-wide bound N + n*D holds.
//
// Threads: call sync_tick for a zone from ONE thread at a time (the glue
// elects it); a second caller meanwhile gets `busy` (the zone's tick lock,
// an owner_lock word in the zone, also guards a reload's old and new sync
// threads against each other). Request paths in other processes run
// concurrently: the ledgers are only touched under their slot's lock, the
// node state's words the request path reads through shm_atomic.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "counter_table.h"
#include "grant_script.h"
#include "redis_link.h"
#include "sync_batch.h"

namespace apikey {

// The node's clock in ms: the same one the request path passes to
// CounterTable::consume (nginx: ngx_current_msec's monotonic ms; the thread
// reads the clock itself). Called before the batch is built and again when
// the reply has arrived.
using SyncClock = std::function<std::int64_t()>;

struct SyncTickOptions {
    // Budgets per batch; when more need syncing, the next tick starts where
    // this one stopped (rotation over the slots).
    std::size_t max_budgets = SyncBatch::kDefaultMaxBudgets;
    // When the link is not connected: connect with this first (null: the
    // tick fails without building a batch).
    const RedisEndpoint *reconnect = nullptr;
    // The identity for the slot locks (0: this_process_identity()).
    std::uint64_t self = 0;
    // The limit zone's name: Redis counts the nodes syncing it in
    // PREFIX n:<zone> (status: nodes_seen). Empty: zones of one Redis and
    // prefix that leave it empty share one count.
    std::string_view zone;
};

struct SyncTickResult {
    bool busy = false;                        // another thread is syncing this zone: nothing done
    bool sent = false;                        // a batch went to Redis (connected)
    bool ok = false;                          // ... and its reply was usable
    GrantStatus status = GrantStatus::stale;  // when ok: applied, epoch_changed or stale
    std::size_t budgets_sent = 0;             // budgets in the batch (0: a heartbeat)
    std::uint64_t granted = 0;                // units granted (when applied)
    std::uint64_t reported = 0;               // overdraft units reported (when applied)
    std::size_t slots_scanned = 0;            // used slots looked at
    bool more = false;                        // the batch was full: the rest next tick
    std::int64_t duration_ms = 0;             // batch begun to reply settled
    std::string error;                        // when !ok (link error or bad reply)
};

// One tick for one synced zone. `random` becomes the epoch candidate (use a
// fresh random 64-bit value per tick). On a failed exchange the link is
// closed (the next tick reconnects with options.reconnect, or the caller
// does). An unsynced table: error, nothing done.
SyncTickResult sync_tick(CounterTable &table, RedisLink &link, const RedisScript &script,
                         std::string_view prefix, const SyncClock &now_ms, std::uint64_t random,
                         const SyncTickOptions &options = {}) noexcept;

// A tick without a link (the caller could not connect, or backs off): no
// batch, nothing taken from the ledgers; counts one failure for status.
// Leases run out and fail=local's fallback starts on their own (the request
// path sees last_success_ms age). Same threading rule as sync_tick.
void sync_offline(CounterTable &table, std::int64_t now_ms) noexcept;

}  // namespace apikey
