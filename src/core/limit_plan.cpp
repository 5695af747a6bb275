#include "limit_plan.h"

#include "counter_table.h"

namespace apikey {

LimitPlan::LimitPlan(const ConfiguredLimit *limits, std::size_t count, std::string_view category,
                     const KeyTable &table, const KeyRecord &record, LimitBy by,
                     std::uint64_t key_zone_salt) noexcept {
    const BudgetHolder holder = budget_holder(table, record, by);
    for (std::size_t n = 0; n < count && n < kMaxBudgets; n++) {
        const ConfiguredLimit &limit = limits[n];
        if (limit.category != category) continue;
        const Rate rate = effective_rate(table, record, category, limit.rate);
        const std::uint64_t id = budget_in_zone(
            budget_id(holder.kind, holder.name, category, rate.period_seconds * 1000),
            key_zone_salt);
        std::size_t i = 0;
        while (i < size_ && !(budgets_[i].zone == limit.zone && budgets_[i].id == id)) i++;
        if (i < size_) {
            if (rate.count < budgets_[i].rate.count) budgets_[i].rate = rate;
        } else {
            budgets_[size_++] = {limit.zone, id, rate};
        }
    }
}

bool reports_before(const WindowDecision &candidate, const WindowDecision &current) noexcept {
    if (!current.allowed) return false;
    return !candidate.allowed || candidate.remaining < current.remaining;
}

}  // namespace apikey
