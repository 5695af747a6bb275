// Which budget a request spends and at what rate: the category of the
// request, the key's own override of a configured rate, and whose budget
// (key, owner or organization) pays.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "key_table.h"
#include "rate.h"

namespace apikey {

enum class LimitBy : unsigned char { key, owner, organization };

// "read" for GET, HEAD and OPTIONS, "write" for everything else, unless the
// location names its category (configured non-empty).
std::string_view request_category(std::string_view configured, unsigned method) noexcept;

// The key file's `limits:` entry for the category, if any, else the configured rate.
Rate effective_rate(const KeyTable &table, const KeyRecord &record, std::string_view category,
                    Rate configured) noexcept;

// Who pays: the key id, the owner, or the organization (falling back to the
// owner for personal keys, so every key still has exactly one budget).
// `kind` distinguishes the three so an owner and a key id with the same
// spelling never share a budget.
struct BudgetHolder {
    char kind;  // 'k' key, 'o' owner, 'g' organization
    std::string_view name;
};
BudgetHolder budget_holder(const KeyTable &table, const KeyRecord &record, LimitBy by) noexcept;

// Budgets are per key zone: the same key id, owner or organization in two
// key files (two tenants) never share a budget. zone_salt identifies the
// key zone (key_zone_salt of its name); never returns 0.
std::uint64_t key_zone_salt(std::string_view key_zone) noexcept;
std::uint64_t budget_in_zone(std::uint64_t budget, std::uint64_t zone_salt) noexcept;

// "1000 requests per minute for 'read' requests" (second, minute, hour or
// day) into out; returns its length.
constexpr std::size_t kMaxLimitDetail = 200;
std::size_t describe_limit(char *out, Rate rate, std::string_view category) noexcept;

}  // namespace apikey
