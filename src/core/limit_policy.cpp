#include "limit_policy.h"

#include <cstdio>

#include "access_policy.h"

namespace apikey {

std::string_view request_category(std::string_view configured, unsigned method) noexcept {
    if (!configured.empty()) return configured;
    return (method & (kGet | kHead | kOptions)) ? "read" : "write";
}

Rate effective_rate(const KeyTable &table, const KeyRecord &record, std::string_view category,
                    Rate configured) noexcept {
    const LimitOverride *limits = table.limits(record);
    for (std::uint16_t i = 0; i < record.limits_count; i++) {
        if (table.text(limits[i].category) == category) {
            return Rate{limits[i].count, limits[i].period_seconds};
        }
    }
    return configured;
}

std::string_view budget_holder(const KeyTable &table, const KeyRecord &record, LimitBy by,
                               char &kind) noexcept {
    if (by == LimitBy::organization && record.organization.len != 0) {
        kind = 'g';
        return table.text(record.organization);
    }
    if (by != LimitBy::key) {
        kind = 'o';
        return table.text(record.owner);
    }
    kind = 'k';
    return table.text(record.id);
}

std::size_t describe_limit(char *out, Rate rate, std::string_view category) noexcept {
    const char *unit = rate.period_seconds == 1 ? "second"
                       : rate.period_seconds == 60 ? "minute"
                                                   : "hour";
    if (category.size() > 128) category = category.substr(0, 128);
    int n = std::snprintf(out, kMaxLimitDetail, "%u %s per %s for '%.*s' requests", rate.count,
                          rate.count == 1 ? "request" : "requests", unit,
                          static_cast<int>(category.size()), category.data());
    return n < 0 ? 0 : static_cast<std::size_t>(n) < kMaxLimitDetail ? static_cast<std::size_t>(n)
                                                                      : kMaxLimitDetail - 1;
}

}  // namespace apikey
