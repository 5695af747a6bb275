// When a key expires: "90d", "12h", "30m" from now, or an RFC 3339 time.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace apikey::cli {

// A positive span: one or more <number><unit> parts, units s, m, h, d, w
// ("90d", "1d12h"). Seconds, or nullopt for anything else (including 0).
std::optional<std::int64_t> parse_duration(std::string_view text) noexcept;

// A duration counted from `now`, or an absolute time as the key file takes
// it (apikey::parse_timestamp, so the two accept exactly the same forms).
std::optional<std::int64_t> parse_time_or_duration(std::string_view text,
                                                   std::int64_t now) noexcept;

}  // namespace apikey::cli
