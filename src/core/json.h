// JSON string escaping into caller-owned, bounded buffers.
#pragma once

#include <cstddef>
#include <string_view>

namespace apikey {

// Upper bound of the escaped size of n input bytes ("\u00XX" per byte).
constexpr std::size_t json_escaped_max(std::size_t n) noexcept { return 6 * n; }

// Writes s escaped for use inside a JSON string (no quotes added) and returns
// the number of bytes written. Control bytes become \u00XX, invalid UTF-8
// becomes U+FFFD, so the output is always valid JSON text. The caller gives
// at least json_escaped_max(s.size()) bytes.
std::size_t json_escape(std::string_view s, char *out) noexcept;

// Length of the valid UTF-8 sequence at s[i] (i < s.size()), 0 if invalid
// (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF).
std::size_t utf8_sequence(std::string_view s, std::size_t i) noexcept;

}  // namespace apikey
