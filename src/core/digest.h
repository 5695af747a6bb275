// SHA-256 of a presented key: the only form in which keys are stored or compared.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace apikey {

using Digest = std::array<std::uint8_t, 32>;

// Allocation-free and lock-free, so it is safe on the request path.
Digest sha256(std::string_view data) noexcept;

// Parses "sha256:<64 lowercase hex>"; false on anything else.
bool parse_digest(std::string_view text, Digest &out) noexcept;

// Writes "sha256:<64 lowercase hex>" (71 bytes) into out.
void format_digest(const Digest &digest, char out[71]) noexcept;

}  // namespace apikey
