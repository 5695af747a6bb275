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

BudgetHolder budget_holder(const KeyTable &table, const KeyRecord &record, LimitBy by) noexcept {
    if (by == LimitBy::organization && !record.organization.empty()) {
        return {'g', table.text(record.organization)};
    }
    if (by != LimitBy::key) return {'o', table.text(record.owner)};
    return {'k', table.text(record.id)};
}

std::uint64_t key_zone_salt(std::string_view key_zone) noexcept {
    std::uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
    for (char c : key_zone) {
        h ^= static_cast<unsigned char>(c);
        h *= 0x100000001b3ull;
    }
    return h;
}

std::uint64_t budget_in_zone(std::uint64_t budget, std::uint64_t zone_salt) noexcept {
    // splitmix64's finaliser over the pair: ids of two zones differ by no
    // simple relation, so one tenant cannot aim at another's budget.
    std::uint64_t h = budget ^ (zone_salt * 0x9e3779b97f4a7c15ull);
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return h != 0 ? h : 1;
}

std::size_t describe_limit(char *out, Rate rate, std::string_view category) noexcept {
    const char *unit = rate.period_seconds == 1       ? "second"
                       : rate.period_seconds == 60    ? "minute"
                       : rate.period_seconds == 3600  ? "hour"
                       : rate.period_seconds == 86400 ? "day"
                                                      : nullptr;
    if (category.size() > 128) category = category.substr(0, 128);
    const char *requests = rate.count == 1 ? "request" : "requests";
    const int len = static_cast<int>(category.size());
    // Other periods never come from parse_rate; said plainly all the same.
    int n = unit != nullptr
                ? std::snprintf(out, kMaxLimitDetail, "%u %s per %s for '%.*s' requests",
                                rate.count, requests, unit, len, category.data())
                : std::snprintf(out, kMaxLimitDetail, "%u %s per %u seconds for '%.*s' requests",
                                rate.count, requests, rate.period_seconds, len, category.data());
    return n < 0                                           ? 0
           : static_cast<std::size_t>(n) < kMaxLimitDetail ? static_cast<std::size_t>(n)
                                                           : kMaxLimitDetail - 1;
}

}  // namespace apikey
