// RFC 3339 timestamps of the key file (created_at, expires_at, revoked_at).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace apikey {

// Seconds since the Unix epoch. Accepts "YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)"
// and a bare date "YYYY-MM-DD" (midnight UTC, as YAML defines it); nothing else,
// so a typo is an error rather than a guessed time.
std::optional<std::int64_t> parse_timestamp(std::string_view text) noexcept;

// "YYYY-MM-DDTHH:MM:SSZ" (20 bytes) for seconds since the epoch.
void format_timestamp(std::int64_t seconds, char out[20]) noexcept;

}  // namespace apikey
