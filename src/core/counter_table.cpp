#include "counter_table.h"

#include <new>

#include "owner_lock.h"
#include "shm_atomic.h"

namespace apikey {

namespace {

constexpr std::uint32_t kCounterMagic = 0x4354'4b31;  // "1KTC"
// 2: 64-bit owner identities in the locks; 3: exact log / 50-bucket window
// (WindowState of 216 bytes, slots of 248).
constexpr std::uint32_t kCounterLayout = 3;

std::uint64_t align_up(std::uint64_t n, std::uint64_t a) noexcept { return (n + a - 1) / a * a; }

std::uint64_t load_budget(const CounterSlot &slot) noexcept { return load_acquire(&slot.budget); }

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

std::size_t CounterTable::capacity_for(std::size_t bytes) noexcept {
    const std::size_t head = align_up(sizeof(CounterTableHeader), alignof(CounterSlot));
    return bytes > head ? (bytes - head) / sizeof(CounterSlot) : 0;
}

CounterTable CounterTable::format(void *memory, std::size_t bytes) noexcept {
    auto *header = new (memory) CounterTableHeader{};
    header->magic = kCounterMagic;
    header->layout_version = kCounterLayout;
    header->capacity = capacity_for(bytes);
    auto *slots = reinterpret_cast<CounterSlot *>(
        static_cast<unsigned char *>(memory) +
        align_up(sizeof(CounterTableHeader), alignof(CounterSlot)));
    for (std::uint64_t i = 0; i < header->capacity; i++) new (&slots[i]) CounterSlot{};
    return CounterTable(header, slots);
}

CounterTable CounterTable::adopt(void *memory, std::size_t bytes) noexcept {
    auto *header = static_cast<CounterTableHeader *>(memory);
    if (header->magic != kCounterMagic || header->layout_version != kCounterLayout ||
        header->capacity != capacity_for(bytes)) {
        return {};
    }
    auto *slots = reinterpret_cast<CounterSlot *>(
        static_cast<unsigned char *>(memory) +
        align_up(sizeof(CounterTableHeader), alignof(CounterSlot)));
    return CounterTable(header, slots);
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
    const std::uint64_t start = home(budget);
    for (unsigned i = 0; i < kProbe && i < cap; i++) {
        CounterSlot &slot = slots_[(start + i) % cap];
        const std::uint64_t b = load_budget(slot);
        if (b == 0) return nullptr;
        if (b != budget) continue;
        owner_lock(&slot.lock, self);
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
    store_release(&chosen->budget, budget);
    return chosen;
}

CounterResult CounterTable::consume(std::uint64_t budget, WindowLimit limit, std::int64_t now_ms,
                                    bool commit, std::uint64_t self) noexcept {
    CounterResult r{};
    CounterSlot *slot = find_locked(budget, self);
    if (slot == nullptr) {
        if (!commit) {
            // A dry run never creates counters: an unknown budget is unused.
            WindowState empty;
            window_reset(empty);
            r.decision = window_consume(empty, limit, now_ms, false);
            r.slot = ~std::uint64_t{0};
            return r;
        }
        owner_lock(&header_->claim_lock, self);
        slot = find_locked(budget, self);
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
    }
    r.decision = window_consume(slot->window, limit, now_ms, commit);
    if (commit) slot->last_used_ms = now_ms;
    r.slot = static_cast<std::uint64_t>(slot - slots_);
    owner_unlock(&slot->lock);
    return r;
}

void CounterTable::refund(const CounterResult &result, std::uint64_t budget,
                          std::uint64_t self) noexcept {
    if (result.slot >= header_->capacity || !result.decision.allowed) return;
    CounterSlot &slot = slots_[result.slot];
    owner_lock(&slot.lock, self);
    if (slot.budget == budget) window_refund(slot.window, result.decision.counted_at_ms);
    owner_unlock(&slot.lock);
}

}  // namespace apikey
