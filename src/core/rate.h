// Rates written as "Nr/s", "Nr/m", "Nr/h" or "Nr/d" (api_key_limit and the
// key file's limits): 1 <= N <= 1,000,000,000 requests per second, minute,
// hour or day (86,400 s; period_seconds * 1000 fits 32 bits).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace apikey {

struct Rate {
    std::uint32_t count;           // requests allowed ...
    std::uint32_t period_seconds;  // ... in any trailing window this long
};

std::optional<Rate> parse_rate(std::string_view text) noexcept;

}  // namespace apikey
