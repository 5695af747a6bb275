#include "cli/duration.h"

#include <limits>

#include "core/timestamp.h"

namespace apikey::cli {

namespace {

// About 292 billion years of seconds fit in int64; anything past year 9999
// cannot be written as a key-file timestamp anyway.
constexpr std::int64_t kMaxSeconds = 8000LL * 366 * 86400;

std::int64_t unit_seconds(char unit) noexcept {
    switch (unit) {
    case 's': return 1;
    case 'm': return 60;
    case 'h': return 3600;
    case 'd': return 86400;
    case 'w': return 7 * 86400;
    default: return 0;
    }
}

}  // namespace

std::optional<std::int64_t> parse_duration(std::string_view text) noexcept {
    if (text.empty()) return std::nullopt;
    std::int64_t total = 0;
    std::size_t i = 0;
    while (i < text.size()) {
        std::int64_t number = 0;
        const std::size_t start = i;
        while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
            number = number * 10 + (text[i] - '0');
            if (number > kMaxSeconds) return std::nullopt;
            i++;
        }
        if (i == start || i == text.size()) return std::nullopt;  // "d" or "90"
        const std::int64_t unit = unit_seconds(text[i++]);
        if (unit == 0 || number > kMaxSeconds / unit) return std::nullopt;
        total += number * unit;
        if (total > kMaxSeconds) return std::nullopt;
    }
    if (total == 0) return std::nullopt;
    return total;
}

std::optional<std::int64_t> parse_time_or_duration(std::string_view text,
                                                   std::int64_t now) noexcept {
    if (auto span = parse_duration(text)) {
        if (now > std::numeric_limits<std::int64_t>::max() - *span) return std::nullopt;
        return now + *span;
    }
    return parse_timestamp(text);
}

}  // namespace apikey::cli
