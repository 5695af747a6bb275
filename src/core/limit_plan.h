// Which budgets one request spends in one location, and which of their
// decisions the response reports. Kept out of the glue so unit tests reach
// it: limits of the request's category, a key's own rate replacing a
// configured one, budgets merged at the strictest rate, per key zone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
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

// Budget ids computed before, per key table (its build_id, distinct for
// every table, as the access policy's compiled rules also assume), record,
// payer (LimitBy), category, period and key zone: budget_id hashes the
// payer's name and the category byte by byte, the costly part of a plan, and
// a busy key asks for the same ids on every request. An entry holds what it
// was computed from (the category's bytes, not an address), so a hit is
// exactly what computing gives, whatever changed since (another table, a
// reload). Direct-mapped, about 48 KiB; one per worker, used by one thread.
class BudgetIdMemo {
public:
    static constexpr std::size_t kEntries = 1024;
    static constexpr std::size_t kMaxCategory = 14;  // longer ones are computed every time

    // budget_in_zone(budget_id(budget_holder(...), category, period_ms), key_zone_salt)
    static std::uint64_t compute(const KeyTable &table, const KeyRecord &record, LimitBy by,
                                 std::string_view category, std::uint32_t period_ms,
                                 std::uint64_t key_zone_salt) noexcept;

    // The same, remembered. (Inline: a hit is a few compares.)
    std::uint64_t id(const KeyTable &table, const KeyRecord &record, LimitBy by,
                     std::string_view category, std::uint32_t period_ms,
                     std::uint64_t key_zone_salt) noexcept {
        const std::uint64_t build = table.build_id();
        if (build == 0 || category.size() > kMaxCategory) {
            return compute(table, record, by, category, period_ms, key_zone_salt);
        }
        const std::uint32_t index = table.index_of(record);
        const std::uint64_t h = (build ^ key_zone_salt ^ (std::uint64_t{index} << 32 | period_ms) ^
                                 static_cast<std::uint64_t>(by) ^ category.size()) *
                                0x9e3779b97f4a7c15ull;
        static_assert(kEntries == 1024, "the top 10 bits of h pick the entry");
        Entry &e = entries_[h >> 54];
        if (e.build_id == build && e.record == index && e.period_ms == period_ms && e.by == by &&
            e.salt == key_zone_salt && e.category_len == category.size() &&
            same_bytes(e.category, category.data(), category.size())) {
            return e.id;
        }
        return remember(e, table, record, by, category, period_ms, key_zone_salt);
    }

    // memcmp for strings as short as categories: a few word compares (the
    // first and last words overlap), never a read past either end.
    static bool same_bytes(const char *a, const char *b, std::size_t n) noexcept {
        if (n >= 8) {
            for (std::size_t i = 0; i + 8 < n; i += 8) {
                if (load<std::uint64_t>(a + i) != load<std::uint64_t>(b + i)) return false;
            }
            return load<std::uint64_t>(a + n - 8) == load<std::uint64_t>(b + n - 8);
        }
        if (n >= 4) {
            return load<std::uint32_t>(a) == load<std::uint32_t>(b) &&
                   load<std::uint32_t>(a + n - 4) == load<std::uint32_t>(b + n - 4);
        }
        for (std::size_t i = 0; i < n; i++) {
            if (a[i] != b[i]) return false;
        }
        return true;
    }

private:
    struct Entry {
        std::uint64_t build_id;  // 0: empty
        std::uint64_t salt;
        std::uint64_t id;
        std::uint32_t record;
        std::uint32_t period_ms;
        LimitBy by;
        std::uint8_t category_len;
        char category[kMaxCategory];
    };

    template <typename T>
    static T load(const char *p) noexcept {
        T v;
        std::memcpy(&v, p, sizeof v);
        return v;
    }

    // Computes the id and keeps it in `e`.
    std::uint64_t remember(Entry &e, const KeyTable &table, const KeyRecord &record, LimitBy by,
                           std::string_view category, std::uint32_t period_ms,
                           std::uint64_t key_zone_salt) noexcept;

    Entry entries_[kEntries] = {};
};

class LimitPlan {
public:
    static constexpr std::size_t kMaxBudgets = 8;  // api_key_limit lines per level

    // Every configured limit of `category` (at most kMaxBudgets are read).
    // Limits that land on one budget (same zone and period, e.g. after a
    // key's own rate replaced both) count once, at the strictest rate.
    // `memo` (optional) remembers budget ids across requests. (Inline: the
    // request path builds one per location.)
    LimitPlan(const ConfiguredLimit *limits, std::size_t count, std::string_view category,
              const KeyTable &table, const KeyRecord &record, LimitBy by,
              std::uint64_t key_zone_salt, BudgetIdMemo *memo = nullptr) noexcept {
        for (std::size_t n = 0; n < count && n < kMaxBudgets; n++) {
            const ConfiguredLimit &limit = limits[n];
            if (limit.category.size() != category.size() ||
                !BudgetIdMemo::same_bytes(limit.category.data(), category.data(),
                                          category.size())) {
                continue;
            }
            // A key's own rate for the category, if it has one (most have none).
            const Rate rate = record.limits_count == 0
                                  ? limit.rate
                                  : effective_rate(table, record, category, limit.rate);
            const std::uint32_t period_ms = rate.period_seconds * 1000;
            const std::uint64_t id =
                memo != nullptr
                    ? memo->id(table, record, by, category, period_ms, key_zone_salt)
                    : BudgetIdMemo::compute(table, record, by, category, period_ms, key_zone_salt);
            std::size_t i = 0;
            while (i < size_ && !(budgets_[i].zone == limit.zone && budgets_[i].id == id)) i++;
            if (i < size_) {
                if (rate.count < budgets_[i].rate.count) budgets_[i].rate = rate;
            } else {
                budgets_[size_++] = {limit.zone, id, rate};
            }
        }
    }

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
