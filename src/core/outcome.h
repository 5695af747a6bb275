// Every way a request can end, with the status, type, code and message the
// SPEC's error table gives it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace apikey {

enum class Outcome : std::uint8_t {
    accepted,
    missing_key,
    invalid_key,
    multiple_keys,
    wrong_environment,
    revoked_key,
    expired_key,
    plan_required,
    ip_not_allowed,  // allowed_ips: checked after plan, before scopes
    insufficient_scope,
    rate_limited,
    internal_error,  // the module itself failed (no memory, no table): refuse, never let through
};

constexpr std::size_t kOutcomeCount = 12;

struct OutcomeInfo {
    unsigned status;                // 0 for accepted
    std::string_view type;          // error.type
    std::string_view code;          // error.code and $api_key_error
    std::string_view message;       // error.message, or its text before the detail
    std::string_view message_tail;  // after the detail, for messages that name one
};

const OutcomeInfo &describe(Outcome outcome) noexcept;

// Largest detail written into a message: a scope name (at most 128 bytes)
// or a rate limit's description (limit_policy.h, under 200).
constexpr std::size_t kMaxDetail = 200;
// Enough for the longest envelope: fixed text, the longest message, and a
// detail and request id escaped at six bytes per input byte.
constexpr std::size_t kMaxRequestId = 64;
constexpr std::size_t kMaxErrorBody = 256 + 6 * kMaxDetail + 6 * kMaxRequestId;

// Writes the JSON envelope into out (kMaxErrorBody bytes) and returns its
// length. The detail (e.g. the missing scope) is cut to kMaxDetail bytes.
std::size_t write_error_body(char *out, Outcome outcome, std::string_view request_id,
                             std::string_view detail) noexcept;

}  // namespace apikey
