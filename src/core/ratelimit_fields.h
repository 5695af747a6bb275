// The IETF rate-limit fields (draft-ietf-httpapi-ratelimit-headers-10,
// structured-field syntax, RFC 9651):
//
//   RateLimit-Policy: "read-1m";q=1000;w=60, "read-1d";q=50000;w=86400
//   RateLimit: "read-1m";r=998;t=1, "read-1d";r=49000;t=3600
//
// One item per limit (category and period), named "CATEGORY-PERIOD" with
// the period in the largest unit of d, h, m, s that divides it ("read-1m",
// "write-1d", "read-10s"). Names are sf-strings, parameters sf-integers (at
// most 10 digits here; the syntax allows 15). No partition key: it would
// expose who pays (the key id, owner or organization).
//
// r is the decision's `remaining` (0 when refused). t is its next_free_s:
// the seconds until the quota next grows. When refused, that is until a
// request would be accepted again, the Retry-After value itself, so a 429's
// Retry-After is never earlier than t; otherwise until the oldest counted
// request leaves the sliding window (then r grows by one).
//
// Limits with the same category and period (from two zones) are one item:
// the smaller q, and the RateLimit values of the one closest to refusing.
// Items keep the order of their first entry. Nothing here allocates.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "rate.h"
#include "sliding_window.h"

namespace apikey {

struct RateLimitEntry {
    std::string_view category;  // at most kMaxCategoryInName bytes are used
    Rate rate;                  // q = count, w = period_seconds
    std::uint32_t remaining;    // r
    std::uint32_t reset_s;      // t
};

// The entry for one limit's decision. `refunded`: the request was counted
// against this limit and then taken back because another limit refused it
// (window_refund), so one more request remains than the decision said.
//
// On a 429, pass the refusing decision as it is (its t equals its
// retry_after_s, the Retry-After sent), the limits counted before it with
// refunded = true, and leave limits that were not decided out of RateLimit
// (they stay in RateLimit-Policy): then every item with r=0 has t <= Retry-After.
RateLimitEntry ratelimit_entry(std::string_view category, Rate rate, const WindowDecision &d,
                               bool refunded = false) noexcept;

// Longer categories are cut (identifiers never are longer).
constexpr std::size_t kMaxCategoryInName = 128;

// The policy name, unquoted and unescaped, e.g. "read-1m"; returns its length.
constexpr std::size_t kMaxPolicyName = kMaxCategoryInName + 1 + 11;
std::size_t ratelimit_policy_name(char *out, std::string_view category,
                                  std::uint32_t period_seconds) noexcept;

// The most bytes one item can take (either field), and a whole field of
// `items` items: a buffer this large always suffices.
// (The quoted name with every byte escaped, then ;q=N;w=N or ;r=N;t=N.)
constexpr std::size_t kMaxRateLimitItem = (1 + 2 * kMaxCategoryInName + 1 + 11 + 1) +
                                          (3 + 10 + 3 + 10);
constexpr std::size_t ratelimit_field_size(std::size_t items) noexcept {
    return items == 0 ? 0 : items * kMaxRateLimitItem + (items - 1) * 2;
}

// The field values, without a trailing CRLF, into out[0, capacity); return
// their length, or 0 when there is no entry or they would not fit in
// capacity (out is then unspecified: send no field).
std::size_t format_ratelimit_policy(char *out, std::size_t capacity, const RateLimitEntry *entries,
                                    std::size_t count) noexcept;
std::size_t format_ratelimit(char *out, std::size_t capacity, const RateLimitEntry *entries,
                             std::size_t count) noexcept;

}  // namespace apikey
