#include "outcome.h"

#include <cstring>

#include "json.h"

namespace apikey {

namespace {

constexpr OutcomeInfo kInfo[kOutcomeCount] = {
    {0, "", "", "", ""},
    {401, "authentication_error", "missing_api_key", "No API key was provided.", ""},
    {401, "authentication_error", "invalid_api_key", "The API key provided is invalid.", ""},
    {401, "authentication_error", "invalid_api_key", "Multiple API keys were provided.", ""},
    {401, "authentication_error", "invalid_api_key", "The API key provided is invalid.", ""},
    {401, "authentication_error", "revoked_api_key", "The API key provided has been revoked.", ""},
    {401, "authentication_error", "expired_api_key", "The API key provided has expired.", ""},
    {403, "permission_error", "plan_required", "The API is available on paid plans only.", ""},
    {403, "permission_error", "ip_not_allowed", "The API key cannot be used from this IP address.",
     ""},
    {403, "permission_error", "insufficient_scope",
     "The API key does not have the required scope '", "'."},
    {429, "rate_limit_error", "rate_limit_exceeded", "Rate limit exceeded: ", "."},
    {500, "api_error", "internal_error", "An internal error occurred.", ""},
};

}  // namespace

const OutcomeInfo &describe(Outcome outcome) noexcept {
    return kInfo[static_cast<std::size_t>(outcome)];
}

std::size_t write_error_body(char *out, Outcome outcome, std::string_view request_id,
                             std::string_view detail) noexcept {
    const OutcomeInfo &info = describe(outcome);
    char *p = out;
    auto put = [&p](std::string_view s) {
        std::memcpy(p, s.data(), s.size());
        p += s.size();
    };
    auto put_escaped = [&p](std::string_view s) { p += json_escape(s, p); };

    put(R"({"error":{"type":")");
    put(info.type);
    put(R"(","code":")");
    put(info.code);
    put(R"(","message":")");
    put(info.message);
    if (!info.message_tail.empty()) {
        put_escaped(detail.substr(0, kMaxDetail));
        put(info.message_tail);
    }
    put(R"("},"request_id":")");
    put_escaped(request_id.substr(0, kMaxRequestId));
    put("\"}\n");
    return static_cast<std::size_t>(p - out);
}

}  // namespace apikey
