// Finding the one API key a request presents, from header values the glue hands over.
#pragma once

#include <cstddef>
#include <string_view>

namespace apikey {

// Bounds on a presented key. Longer or shorter values, or any byte outside
// RFC 6750's b64token form (padding '=' only at the end), are refused
// before hashing.
constexpr std::size_t kMinKeyLength = 16;
constexpr std::size_t kMaxKeyLength = 256;

bool is_well_formed_key(std::string_view key) noexcept;

enum class BearerParse { not_bearer, empty_token, token };

// "Bearer <token>", scheme case-insensitive, surrounding blanks ignored.
BearerParse parse_bearer(std::string_view header_value, std::string_view &token) noexcept;

// Collects candidates from every configured source. The first one wins,
// a different second one makes the request ambiguous: "Multiple API keys".
class KeyCollector {
public:
    enum class State { none, one, malformed, multiple };

    // An empty value that is still a deliberate attempt (e.g. "Bearer ")
    // counts as a malformed key, not as no key.
    void offer(std::string_view candidate) noexcept;
    void offer_malformed() noexcept;

    State state() const noexcept { return state_; }
    std::string_view key() const noexcept { return key_; }

private:
    State state_ = State::none;
    std::string_view key_;
};

}  // namespace apikey
