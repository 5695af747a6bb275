#include "limit_plan.h"

#include <cstring>

#include "counter_table.h"

namespace apikey {

std::uint64_t BudgetIdMemo::compute(const KeyTable &table, const KeyRecord &record, LimitBy by,
                                    std::string_view category, std::uint32_t period_ms,
                                    std::uint64_t key_zone_salt) noexcept {
    const BudgetHolder holder = budget_holder(table, record, by);
    return budget_in_zone(budget_id(holder.kind, holder.name, category, period_ms), key_zone_salt);
}

std::uint64_t BudgetIdMemo::remember(Entry &e, const KeyTable &table, const KeyRecord &record,
                                     LimitBy by, std::string_view category, std::uint32_t period_ms,
                                     std::uint64_t key_zone_salt) noexcept {
    e.id = compute(table, record, by, category, period_ms, key_zone_salt);
    e.build_id = table.build_id();
    e.salt = key_zone_salt;
    e.record = table.index_of(record);
    e.period_ms = period_ms;
    e.by = by;
    e.category_len = static_cast<std::uint8_t>(category.size());
    if (!category.empty()) std::memcpy(e.category, category.data(), category.size());
    return e.id;
}

bool reports_before(const WindowDecision &candidate, const WindowDecision &current) noexcept {
    if (!current.allowed) return false;
    return !candidate.allowed || candidate.remaining < current.remaining;
}

}  // namespace apikey
