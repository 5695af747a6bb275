#include "sync_engine.h"

#include <algorithm>
#include <vector>

#include "owner_lock.h"
#include "process_identity.h"
#include "shm_atomic.h"

namespace apikey {

// CounterTable's friend: the slots and ledgers as the sync process sees them.
class SyncEngineAccess {
public:
    static CounterSyncHeader *sync(CounterTable &t) noexcept { return t.sync_; }
    static CounterSlot *slots(CounterTable &t) noexcept { return t.slots_; }
    static SyncLedger *ledgers(CounterTable &t) noexcept { return t.ledgers_; }
};

namespace {

class TickLock {
public:
    TickLock(std::uint64_t *word, std::uint64_t self) noexcept
        : word_(word), held_(owner_try_lock(word, self)) {}
    ~TickLock() {
        if (held_) owner_unlock(word_);
    }
    TickLock(const TickLock &) = delete;
    TickLock &operator=(const TickLock &) = delete;
    bool held() const noexcept { return held_; }

private:
    std::uint64_t *word_;
    bool held_;
};

// A slot's lock, released however the scope ends (offer() allocates).
class SlotLock {
public:
    SlotLock(CounterSlot &slot, std::uint64_t self) noexcept : slot_(slot) {
        owner_lock(&slot_.lock, self);
    }
    ~SlotLock() { owner_unlock(&slot_.lock); }
    SlotLock(const SlotLock &) = delete;
    SlotLock &operator=(const SlotLock &) = delete;

private:
    CounterSlot &slot_;
};

void run_tick(CounterTable &table, CounterSyncHeader &sh, RedisLink &link,
              const RedisScript &script, std::string_view prefix, const SyncClock &now_ms,
              std::uint64_t random, std::uint64_t self, const SyncTickOptions &options,
              SyncTickResult &result);

}  // namespace

SyncTickResult sync_tick(CounterTable &table, RedisLink &link, const RedisScript &script,
                         std::string_view prefix, const SyncClock &now_ms, std::uint64_t random,
                         const SyncTickOptions &options) noexcept {
    SyncTickResult result;
    try {
        const std::uint64_t self = options.self != 0 ? options.self : this_process_identity();
        CounterSyncHeader *sh = table.valid() ? SyncEngineAccess::sync(table) : nullptr;
        if (sh == nullptr) {
            result.error = "not a synced counter table";
            return result;
        }
        const TickLock tick(&sh->tick_lock, self);
        if (!tick.held()) {
            result.busy = true;
            return result;
        }
        run_tick(table, *sh, link, script, prefix, now_ms, random, self, options, result);
    } catch (...) {
        // Out of memory (or a clock that threw): what was offered is unacked
        // again in the next batch; a give-back taken is dropped (the safe side).
        result.ok = false;
        try {
            result.error = "sync tick: out of memory";
        } catch (...) {
        }
    }
    return result;
}

namespace {

void run_tick(CounterTable &table, CounterSyncHeader &sh_ref, RedisLink &link,
              const RedisScript &script, std::string_view prefix, const SyncClock &now_ms,
              std::uint64_t random, std::uint64_t self, const SyncTickOptions &options,
              SyncTickResult &result) {
    CounterSyncHeader *sh = &sh_ref;
    SyncNodeState &node = sh->node;

    if (!link.connected()) {
        // Nothing is taken from the ledgers for a batch that cannot leave.
        RedisResult c;
        if (options.reconnect != nullptr) {
            c = link.connect(*options.reconnect);
        } else {
            c.error = "not connected";
        }
        if (!c.ok) {
            store_relaxed(&node.failures, node.failures + 1);
            result.error = c.error;
            return;
        }
    }

    const SyncConfig &config = table.sync_config();
    CounterSlot *slots = SyncEngineAccess::slots(table);
    SyncLedger *ledgers = SyncEngineAccess::ledgers(table);
    const std::uint64_t cap = table.capacity();

    SyncBatch batch(options.max_budgets);
    const std::int64_t begun = now_ms();
    batch.begin(node, config, begun, random, options.zone);

    // Offer every used slot, from where the last full batch stopped.
    std::vector<std::uint64_t> slot_of;  // batch entry -> slot
    slot_of.reserve(std::min<std::uint64_t>(cap, options.max_budgets));
    const std::uint64_t start = cap > 0 ? sh->cursor % cap : 0;
    for (std::uint64_t i = 0; i < cap; i++) {
        const std::uint64_t idx = (start + i) % cap;
        CounterSlot &slot = slots[idx];
        if (load_acquire(&slot.budget) == 0) continue;
        if (batch.full()) {
            sh->cursor = idx;  // the first not offered: next tick starts here
            result.more = true;
            break;
        }
        result.slots_scanned++;
        const SlotLock lock(slot, self);
        const std::uint64_t budget = slot.budget;
        if (budget != 0 && batch.offer(budget, slot.period_ms, ledgers[idx], slot.window)) {
            slot_of.push_back(idx);  // reserved: no allocation under the lock
        }
    }

    // The exchange, with no lock held.
    std::vector<std::string> keys;
    std::vector<std::string> args;
    batch.script_call(prefix, keys, args);
    result.sent = true;
    const RedisResult r = link.run_script(script, keys, args);
    const std::int64_t arrived = now_ms();
    std::string error;
    result.ok = r.ok && batch.accept_reply(node, r.reply, arrived, error);
    if (!result.ok) {
        batch.fail(node);
        link.close();
        result.error = r.ok ? error : r.error;
    }

    // Settle into each budget's ledger, if its slot still holds it.
    for (std::size_t i = 0; i < batch.size(); i++) {
        CounterSlot &slot = slots[slot_of[i]];
        const SlotLock lock(slot, self);
        if (slot.budget == batch.budget(i)) batch.settle(i, ledgers[slot_of[i]]);
    }

    result.budgets_sent = batch.size();
    if (result.ok) {
        result.status = batch.reply().status;
        if (batch.outcome() == SyncBatch::Outcome::applied) {
            for (std::size_t i = 0; i < batch.size(); i++) {
                result.granted += batch.reply().results[i].grant;
                result.reported += batch.requests()[i].report;
            }
        }
    }
    result.duration_ms = now_ms() - begun;
    store_relaxed(&node.last_batch_ms, static_cast<std::uint64_t>(result.duration_ms));
}

}  // namespace

void sync_offline(CounterTable &table, std::int64_t now_ms) noexcept {
    (void)now_ms;
    CounterSyncHeader *sh = table.valid() ? SyncEngineAccess::sync(table) : nullptr;
    if (sh == nullptr) return;
    store_relaxed(&sh->node.failures, sh->node.failures + 1);
}

}  // namespace apikey
