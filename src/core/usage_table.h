// Per-key usage counters in shared memory for api_key_status: how often each
// key was accepted, refused (by code) and rate-limited, and when it was last
// used. Only keys that were used get a slot, so a large key file costs
// nothing here. The request path adds atomic increments and nothing else:
// slots are claimed with one compare-and-swap, never locked, and each
// process remembers where it found the ids it counted last.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

#include "outcome.h"
#include "shm_atomic.h"

namespace apikey {

constexpr std::size_t kMaxTrackedId = 128;

struct UsageSlot {
    std::uint64_t id_hash;  // 0: free; claimed by compare-and-swap
    std::uint32_t ready;    // 1 once id is written
    std::uint32_t id_len;
    char id[kMaxTrackedId];
    std::int64_t last_used;              // unix seconds
    std::uint64_t count[kOutcomeCount];  // by Outcome; accepted and rate_limited included
    std::uint64_t reserved[1];
};
static_assert(std::is_trivially_copyable_v<UsageSlot>);
static_assert(sizeof(UsageSlot) == 256);

// Requests that were refused before a key was found, or whose key found no
// free slot, are counted per zone only.
struct UsageTotals {
    std::uint64_t count[kOutcomeCount];
    std::uint64_t untracked;  // requests of keys that found no slot
    std::uint64_t capacity;
};

class UsageTable {
public:
    static constexpr unsigned kProbe = 32;

    static std::size_t bytes_for(std::size_t capacity) noexcept {
        return sizeof(UsageTotals) + capacity * sizeof(UsageSlot);
    }
    // Memory of bytes_for(capacity), zeroed by the caller or by format().
    static UsageTable format(void *memory, std::size_t capacity) noexcept;
    static UsageTable adopt(void *memory) noexcept;

    UsageTable() noexcept = default;
    bool valid() const noexcept { return totals_ != nullptr; }

    // One request; key_id empty when no key record was found. `source`,
    // when not 0, names memory whose text never changes (a key table's
    // build id): an id found there at the same address before is known
    // without comparing it again.
    // Inline: on every request, and a key's requests after its first find
    // its slot by the hint alone (slot_for otherwise).
    void count(std::string_view key_id, Outcome outcome, std::int64_t now,
               std::uint64_t source = 0) noexcept {
        if (totals_ == nullptr) return;
        const auto o = static_cast<std::size_t>(outcome);
        fetch_add_relaxed(&totals_->count[o], std::uint64_t{1});
        if (key_id.empty()) return;
        const Hint &hint = hint_for(key_id.data());
        UsageSlot *s = source != 0 && hint.id == key_id.data() && hint.source == source
                           ? hint.slot
                           : slot_for(key_id, source);
        if (s == nullptr) {
            fetch_add_relaxed(&totals_->untracked, std::uint64_t{1});
            return;
        }
        fetch_add_relaxed(&s->count[o], std::uint64_t{1});
        store_relaxed(&s->last_used, now);
    }

    const UsageTotals &totals() const noexcept { return *totals_; }
    std::uint64_t capacity() const noexcept { return totals_->capacity; }
    // Slot i, or nullptr when unused (or still being claimed).
    const UsageSlot *slot(std::uint64_t i) const noexcept;

private:
    // Per process: where a key id (by the address of its text in a key
    // table) was found last, so that a key's requests after its first skip
    // the hash and the probe. A hint is checked against the slot's id before
    // it is used: a table replaced since may hold another id there.
    struct Hint {
        const char *id;
        std::uint64_t source;
        UsageSlot *slot;
    };
    static constexpr unsigned kHintBits = 6;

    UsageTable(UsageTotals *totals, UsageSlot *slots) noexcept : totals_(totals), slots_(slots) {}
    UsageSlot *find_or_claim(std::string_view key_id) noexcept;
    UsageSlot *slot_for(std::string_view key_id, std::uint64_t source) noexcept;
    Hint &hint_for(const char *id) noexcept {
        const auto address = reinterpret_cast<std::uintptr_t>(id);
        return hints_[(address * 0x9e3779b97f4a7c15ull) >> (64 - kHintBits)];
    }

    UsageTotals *totals_ = nullptr;
    UsageSlot *slots_ = nullptr;
    Hint hints_[1u << kHintBits] = {};
};

}  // namespace apikey
