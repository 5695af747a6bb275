#include "rate.h"

namespace apikey {

std::optional<Rate> parse_rate(std::string_view s) noexcept {
    constexpr std::uint32_t max_count = 1000000000;
    std::uint64_t count = 0;
    std::size_t i = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
        count = count * 10 + static_cast<std::uint64_t>(s[i] - '0');
        if (count > max_count) return std::nullopt;
        i++;
    }
    if (i == 0 || count == 0 || s.size() != i + 3 || s[i] != 'r' || s[i + 1] != '/') {
        return std::nullopt;
    }
    std::uint32_t period;
    switch (s[i + 2]) {
    case 's': period = 1; break;
    case 'm': period = 60; break;
    case 'h': period = 3600; break;
    case 'd': period = 86400; break;
    default: return std::nullopt;
    }
    return Rate{static_cast<std::uint32_t>(count), period};
}

}  // namespace apikey
