// Rate-limit counters in shared memory: a fixed array of slots, found by
// open addressing on a 64-bit budget id, each slot guarded by its own tiny
// spin lock. Finding an existing budget takes no zone-wide lock; only
// creating one (rare: a budget's first request in a period) takes the
// table's claim lock, so two workers can never create the same budget twice.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

#include "sliding_window.h"

namespace apikey {

struct CounterSlot {
    std::uint64_t lock;       // owner_lock word: the holder's identity, 0 when free
    std::uint32_t period_ms;  // of the budget held here
    std::uint32_t reserved;
    std::uint64_t budget;  // 0: never used
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

struct CounterResult {
    WindowDecision decision;
    bool evicted_active;  // the table was full: an active counter was dropped
    std::uint64_t slot;
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

    static std::size_t capacity_for(std::size_t bytes) noexcept;

    // Formats memory as an empty table, or adopts a table already there
    // (a reload with an unchanged zone) when its layout matches.
    static CounterTable format(void *memory, std::size_t bytes) noexcept;
    static CounterTable adopt(void *memory, std::size_t bytes) noexcept;  // invalid if no match

    CounterTable() noexcept = default;
    bool valid() const noexcept { return header_ != nullptr; }
    std::uint64_t capacity() const noexcept { return header_->capacity; }
    std::uint64_t evicted_active() const noexcept;

    // One request against one budget. `self` identifies the calling process
    // for the locks, as this_process_identity() (process_identity.h): a lock
    // left by a process that died is taken over. A bare pid still works, but
    // then a dead holder whose pid was reused keeps its slot locked.
    CounterResult consume(std::uint64_t budget, WindowLimit limit, std::int64_t now_ms, bool commit,
                          std::uint64_t self) noexcept;

    void refund(const CounterResult &result, std::uint64_t budget, std::uint64_t self) noexcept;

private:
    CounterTable(CounterTableHeader *header, CounterSlot *slots) noexcept
        : header_(header), slots_(slots) {}

    std::uint64_t home(std::uint64_t budget) const noexcept;
    CounterSlot *find_locked(std::uint64_t budget, std::uint64_t self) noexcept;
    CounterSlot *claim_locked(std::uint64_t budget, WindowLimit limit, std::int64_t now_ms,
                              std::uint64_t self, bool &evicted_active) noexcept;

    CounterTableHeader *header_ = nullptr;
    CounterSlot *slots_ = nullptr;
};

}  // namespace apikey
