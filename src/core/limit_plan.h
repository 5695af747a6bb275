// Which budgets one request spends in one location, and which of their
// decisions the response reports. Kept out of the glue so unit tests reach
// it: limits of the request's category, a key's own rate replacing a
// configured one, budgets merged at the strictest rate, per key zone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "key_table.h"
#include "limit_policy.h"
#include "rate.h"
#include "sliding_window.h"

namespace apikey {

// An api_key_limit line; `zone` identifies its limit zone to the caller.
struct ConfiguredLimit {
    const void *zone;
    std::string_view category;
    Rate rate;
};

struct PlannedBudget {
    const void *zone;
    std::uint64_t id;  // budget_in_zone(budget_id(...), key zone)
    Rate rate;
};

class LimitPlan {
public:
    static constexpr std::size_t kMaxBudgets = 8;  // api_key_limit lines per level

    // Every configured limit of `category` (at most kMaxBudgets are read).
    // Limits that land on one budget (same zone and period, e.g. after a
    // key's own rate replaced both) count once, at the strictest rate.
    LimitPlan(const ConfiguredLimit *limits, std::size_t count, std::string_view category,
              const KeyTable &table, const KeyRecord &record, LimitBy by,
              std::uint64_t key_zone_salt) noexcept;

    const PlannedBudget *begin() const noexcept { return budgets_; }
    const PlannedBudget *end() const noexcept { return budgets_ + size_; }
    std::size_t size() const noexcept { return size_; }

private:
    PlannedBudget budgets_[kMaxBudgets];
    std::size_t size_ = 0;
};

// The response reports the limit closest to refusing: a refusal first, then
// the fewest remaining. True when `candidate` should replace `current`.
bool reports_before(const WindowDecision &candidate, const WindowDecision &current) noexcept;

}  // namespace apikey
