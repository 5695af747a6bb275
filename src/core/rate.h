// Rates written as "Nr/s", "Nr/m" or "Nr/h" (api_key_limit and the key file's limits).
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
