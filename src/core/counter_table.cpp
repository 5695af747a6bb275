#include "counter_table.h"

#include <sys/random.h>

#include <time.h>

#include <chrono>
#include <new>

#include "owner_lock.h"
#include "shm_atomic.h"

namespace apikey {

namespace {

constexpr std::uint32_t kCounterMagic = 0x4354'4b31;  // "1KTC"
// 2: 64-bit owner identities in the locks; 3: exact log / 50-bucket window
// (WindowState of 216 bytes, slots of 248); 4: synced tables (the layout
// word then also carries kSyncedLayout; unsynced ones are laid out as in 3);
// 5: SyncNodeState's last_batch_ms and refused_no_grant; 6: its nodes_seen;
// 7: CounterSlot::summary (was reserved), kept by every window update.
constexpr std::uint32_t kCounterLayout = 7;
constexpr std::uint32_t kSyncedLayout = 0x0001'0000;

std::uint64_t align_up(std::uint64_t n, std::uint64_t a) noexcept { return (n + a - 1) / a * a; }

// Bytes before the first slot: the header, and a synced table's sync header.
std::size_t head_bytes(bool synced) noexcept {
    std::size_t head = sizeof(CounterTableHeader);
    if (synced) head = align_up(head, alignof(CounterSyncHeader)) + sizeof(CounterSyncHeader);
    return align_up(head, alignof(CounterSlot));
}

CounterSyncHeader *sync_header_of(void *memory) noexcept {
    return reinterpret_cast<CounterSyncHeader *>(
        static_cast<unsigned char *>(memory) +
        align_up(sizeof(CounterTableHeader), alignof(CounterSyncHeader)));
}

bool same_config(const CounterSyncHeader &h, const SyncConfig &c) noexcept {
    return h.interval_ms == c.interval_ms && h.timeout_ms == c.timeout_ms &&
           h.overdraft == c.overdraft && h.fail_after_ms == c.fail_after_ms &&
           h.fail == static_cast<std::uint32_t>(c.fail);
}

// Never 0; two nodes with one id would share a sequence.
std::uint64_t random_node_id() noexcept {
    std::uint64_t id = 0;
    if (getrandom(&id, sizeof id, 0) != static_cast<ssize_t>(sizeof id)) {
        // No entropy source: the clock and an address, mixed.
        id = static_cast<std::uint64_t>(
                 std::chrono::high_resolution_clock::now().time_since_epoch().count()) ^
             reinterpret_cast<std::uintptr_t>(&id);
        id ^= id >> 33;
        id *= 0xff51afd7ed558ccdull;
        id ^= id >> 33;
    }
    return id != 0 ? id : 1;
}

std::uint64_t load_budget(const CounterSlot &slot) noexcept { return load_acquire(&slot.budget); }

// owner_lock, with the uncontended case (a free word taken at the first
// try) inline: the request path takes one slot lock per budget.
void lock_slot(std::uint64_t *word, std::uint64_t self) noexcept {
    std::uint64_t expected = 0;
    if (__builtin_expect(compare_exchange(word, expected, self), 1)) return;
    owner_lock(word, self);
}

}  // namespace

std::uint64_t budget_id(char kind, std::string_view who, std::string_view category,
                        std::uint32_t period_ms) noexcept {
    // FNV-1a over the parts with separators, then a final avalanche.
    std::uint64_t h = 0xcbf29ce484222325ull;
    auto mix = [&h](unsigned char c) {
        h ^= c;
        h *= 0x100000001b3ull;
    };
    mix(static_cast<unsigned char>(kind));
    for (char c : who) mix(static_cast<unsigned char>(c));
    mix(0);
    for (char c : category) mix(static_cast<unsigned char>(c));
    mix(0);
    for (int i = 0; i < 4; i++) mix(static_cast<unsigned char>(period_ms >> (8 * i)));
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h != 0 ? h : 1;
}

std::size_t CounterTable::capacity_for(std::size_t bytes, bool synced) noexcept {
    const std::size_t head = head_bytes(synced);
    const std::size_t per = synced ? kSyncedCounterBytes : kCounterBytes;
    return bytes > head ? (bytes - head) / per : 0;
}

void CounterTable::attach_sync(CounterSyncHeader *sync, const SyncConfig &config) noexcept {
    sync_ = sync;
    ledgers_ = reinterpret_cast<SyncLedger *>(slots_ + header_->capacity);
    sync_config_ = config;
}

const SyncNodeState &CounterTable::sync_node() const noexcept {
    static const SyncNodeState unsynced{};
    return sync_ != nullptr ? sync_->node : unsynced;
}

CounterTable CounterTable::format(void *memory, std::size_t bytes,
                                  const SyncConfig *sync) noexcept {
    struct timespec ts {};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return format(memory, bytes, sync,
                  static_cast<std::int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1'000'000);
}

CounterTable CounterTable::format(void *memory, std::size_t bytes, const SyncConfig *sync,
                                  std::int64_t now_ms) noexcept {
    const bool synced = sync != nullptr;
    auto *header = new (memory) CounterTableHeader{};
    header->magic = kCounterMagic;
    header->layout_version = kCounterLayout | (synced ? kSyncedLayout : 0);
    header->capacity = capacity_for(bytes, synced);
    auto *slots = reinterpret_cast<CounterSlot *>(static_cast<unsigned char *>(memory) +
                                                  head_bytes(synced));
    for (std::uint64_t i = 0; i < header->capacity; i++) new (&slots[i]) CounterSlot{};
    CounterTable table(header, slots);
    if (synced) {
        auto *sh = new (sync_header_of(memory)) CounterSyncHeader{};
        sh->interval_ms = sync->interval_ms;
        sh->timeout_ms = sync->timeout_ms;
        sh->overdraft = sync->overdraft;
        sh->fail_after_ms = sync->fail_after_ms;
        sh->fail = static_cast<std::uint32_t>(sync->fail);
        sync_node_init(sh->node, random_node_id(), now_ms);
        table.attach_sync(sh, *sync);
        for (std::uint64_t i = 0; i < header->capacity; i++) {
            ledger_init(*new (&table.ledgers_[i]) SyncLedger{}, sh->node.epoch_gen);
        }
    }
    return table;
}

CounterTable CounterTable::adopt(void *memory, std::size_t bytes, const SyncConfig *sync) noexcept {
    const bool synced = sync != nullptr;
    auto *header = static_cast<CounterTableHeader *>(memory);
    if (header->magic != kCounterMagic ||
        header->layout_version != (kCounterLayout | (synced ? kSyncedLayout : 0)) ||
        header->capacity != capacity_for(bytes, synced)) {
        return {};
    }
    CounterSyncHeader *sh = synced ? sync_header_of(memory) : nullptr;
    if (synced && (!same_config(*sh, *sync) || sh->node.node_id == 0)) return {};
    auto *slots = reinterpret_cast<CounterSlot *>(static_cast<unsigned char *>(memory) +
                                                  head_bytes(synced));
    CounterTable table(header, slots);
    if (synced) table.attach_sync(sh, *sync);
    return table;
}

std::uint64_t CounterTable::evicted_active() const noexcept {
    return load_relaxed(&header_->evicted_active);
}

std::uint64_t CounterTable::home(std::uint64_t budget) const noexcept {
    // Multiply-shift maps the id onto [0, capacity) without a division.
    return static_cast<std::uint64_t>(
        (static_cast<unsigned __int128>(budget) * header_->capacity) >> 64);
}

// Slots are filled in probe order and never emptied again (only reassigned),
// so a budget, if present, is before the first never-used slot.
CounterSlot *CounterTable::find_locked(std::uint64_t budget, std::uint64_t self) noexcept {
    const std::uint64_t cap = header_->capacity;
    std::uint64_t at = home(budget);  // < cap
    for (unsigned i = 0; i < kProbe && i < cap; i++, at = at + 1 == cap ? 0 : at + 1) {
        CounterSlot &slot = slots_[at];
        const std::uint64_t b = load_budget(slot);
        if (b == 0) return nullptr;
        if (b != budget) continue;
        lock_slot(&slot.lock, self);
        if (slot.budget == budget) return &slot;
        owner_unlock(&slot.lock);  // reassigned between the look and the lock
        return nullptr;
    }
    return nullptr;
}

// Under the claim lock: an empty slot, else one whose window has emptied,
// else the least recently used (an active counter is lost: reported).
CounterSlot *CounterTable::claim_locked(std::uint64_t budget, WindowLimit limit,
                                        std::int64_t now_ms, std::uint64_t self,
                                        bool &evicted_active) noexcept {
    const std::uint64_t cap = header_->capacity;
    const std::uint64_t start = home(budget);
    CounterSlot *idle = nullptr;    // first empty or expired slot, kept locked
    CounterSlot *oldest = nullptr;  // least recently used active slot, kept locked
    auto release = [](CounterSlot *s) {
        if (s != nullptr) owner_unlock(&s->lock);
    };
    for (unsigned i = 0; i < kProbe && i < cap; i++) {
        CounterSlot &slot = slots_[(start + i) % cap];
        owner_lock(&slot.lock, self);
        if (slot.budget == budget) {  // created while we waited for the claim lock
            release(idle);
            release(oldest);
            return &slot;
        }
        const bool empty = slot.budget == 0;
        if (empty || window_idle(slot.window, {0, slot.period_ms}, now_ms)) {
            if (idle == nullptr) {
                idle = &slot;
            } else {
                owner_unlock(&slot.lock);
            }
            if (empty) break;  // nothing was ever stored beyond a never-used slot
            continue;
        }
        if (oldest == nullptr || slot.last_used_ms < oldest->last_used_ms) {
            release(oldest);
            oldest = &slot;
        } else {
            owner_unlock(&slot.lock);
        }
    }
    CounterSlot *chosen = idle;
    if (chosen != nullptr) {
        release(oldest);
    } else {
        chosen = oldest;
        if (chosen == nullptr) return nullptr;  // a table without slots
        evicted_active = true;
        fetch_add_relaxed(&header_->evicted_active, 1);
    }
    chosen->period_ms = limit.period_ms;
    chosen->last_used_ms = now_ms;
    window_reset(chosen->window);
    chosen->summary = 0;  // that of an all-zero window
    if (ledgers_ != nullptr) {
        // A budget new to this node: no lease, nothing unacked; its history
        // (none) is in Redis for the node's current epoch.
        ledger_init(ledgers_[chosen - slots_], load_acquire(&sync_->node.epoch_gen));
    }
    store_release(&chosen->budget, budget);
    return chosen;
}

// Under the slot's lock (released here). Inlined into both callers: the
// request path's result is built in the caller's memory.
[[gnu::always_inline]] inline CounterResult CounterTable::decide_locked(
    CounterSlot &slot, WindowLimit limit, std::int64_t now_ms, bool commit,
    bool evicted_active) noexcept {
    CounterResult r;
    r.decision = window_consume(slot.window, slot.summary, limit, now_ms, commit);
    r.evicted_active = evicted_active;
    r.synced = false;
    r.slot = static_cast<std::uint64_t>(&slot - slots_);
    // r.ledger is written only when synced: nothing reads it otherwise.
    if (commit) slot.last_used_ms = now_ms;
    // Unsynced tables: one predictable branch.
    if (__builtin_expect(ledgers_ != nullptr, 0) && r.decision.allowed) {
        consume_synced(slot, r, now_ms, commit);
    }
    store_release(&slot.lock, 0);  // owner_unlock
    return r;
}

CounterResult CounterTable::consume(std::uint64_t budget, WindowLimit limit, std::int64_t now_ms,
                                    bool commit, std::uint64_t self) noexcept {
    CounterSlot *slot = find_locked(budget, self);
    if (__builtin_expect(slot == nullptr, 0)) {
        return consume_new(budget, limit, now_ms, commit, self);
    }
    return decide_locked(*slot, limit, now_ms, commit, false);
}

// A budget without a counter: a dry run decides on an empty window, a
// request claims a counter for it.
CounterResult CounterTable::consume_new(std::uint64_t budget, WindowLimit limit,
                                        std::int64_t now_ms, bool commit,
                                        std::uint64_t self) noexcept {
    CounterResult r{};
    if (!commit) {
        // A dry run never creates counters: an unknown budget is unused.
        WindowState empty;
        window_reset(empty);
        r.decision = window_consume(empty, limit, now_ms, false);
        r.slot = ~std::uint64_t{0};
        if (ledgers_ != nullptr && r.decision.allowed) {
            SyncLedger fresh;
            ledger_init(fresh, load_acquire(&sync_->node.epoch_gen));
            r.synced = true;
            ledger_decide(fresh, sync_config_, sync_context(sync_->node, sync_config_, now_ms),
                          r.decision, r.ledger, false);
        }
        return r;
    }
    owner_lock(&header_->claim_lock, self);
    CounterSlot *slot = find_locked(budget, self);
    if (slot == nullptr) slot = claim_locked(budget, limit, now_ms, self, r.evicted_active);
    owner_unlock(&header_->claim_lock);
    if (slot == nullptr) {
        r.decision.allowed = false;
        r.decision.limit = limit.count;
        r.decision.retry_after_s = 1;
        r.decision.next_free_s = 1;
        r.slot = ~std::uint64_t{0};
        return r;
    }
    return decide_locked(*slot, limit, now_ms, commit, r.evicted_active);
}

// Under the slot's lock, after the local window accepted (and counted, when
// commit) the request.
[[gnu::always_inline]] inline void CounterTable::consume_synced(CounterSlot &slot, CounterResult &r,
                                                                std::int64_t now_ms,
                                                                bool commit) noexcept {
    r.synced = true;
    if (commit && ledger_take_lease(ledgers_[r.slot], now_ms, load_acquire(&sync_->node.epoch_gen),
                                    r.decision, r.ledger)) {
        return;
    }
    if (!ledger_decide(ledgers_[r.slot], sync_config_,
                       sync_context(sync_->node, sync_config_, now_ms), r.decision, r.ledger,
                       commit)) {
        // Spends nothing: the local window takes the request back.
        if (commit) window_refund(slot.window, slot.summary, r.decision.counted_at_ms);
        fetch_add_relaxed(&sync_->node.refused_no_grant, std::uint64_t{1});
    }
}

void CounterTable::refund(const CounterResult &result, std::uint64_t budget,
                          std::uint64_t self) noexcept {
    if (result.slot >= header_->capacity || !result.decision.allowed) return;
    CounterSlot &slot = slots_[result.slot];
    lock_slot(&slot.lock, self);
    if (slot.budget == budget) {
        window_refund(slot.window, slot.summary, result.decision.counted_at_ms);
        if (ledgers_ != nullptr && result.synced)
            ledger_refund(ledgers_[result.slot], result.ledger);
    }
    owner_unlock(&slot.lock);
}

}  // namespace apikey
