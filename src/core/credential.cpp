#include "credential.h"

#include <array>
#include <cstdint>
#include <cstring>

namespace apikey {

namespace {

constexpr std::array<bool, 256> make_b64token_table() {
    std::array<bool, 256> t{};
    for (int c = '0'; c <= '9'; c++) t[c] = true;
    for (int c = 'a'; c <= 'z'; c++) t[c] = true;
    for (int c = 'A'; c <= 'Z'; c++) t[c] = true;
    for (char c : {'-', '.', '_', '~', '+', '/', '='}) t[static_cast<unsigned char>(c)] = true;
    return t;
}

constexpr auto kB64Token = make_b64token_table();

bool is_blank(char c) noexcept { return c == ' ' || c == '\t'; }

}  // namespace

bool is_well_formed_key(std::string_view key) noexcept {
    if (key.size() < kMinKeyLength || key.size() > kMaxKeyLength) return false;
    // RFC 6750 b64token: 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    std::size_t end = key.size();
    while (end > 0 && key[end - 1] == '=') end--;
    if (end == 0) return false;
    for (std::size_t i = 0; i < end; i++) {
        const char c = key[i];
        if (c == '=' || !kB64Token[static_cast<unsigned char>(c)]) return false;
    }
    return true;
}

BearerParse parse_bearer(std::string_view value, std::string_view &token) noexcept {
    // On the path of every request: the scheme is compared in two loads, not
    // a byte at a time. OR 0x20 lowers ASCII letters and maps nothing else
    // onto them, so "bearer" matches in any case and only letters match.
    const char *p = value.data();
    const char *end = p + value.size();
    while (p < end && is_blank(*p)) p++;
    while (end > p && is_blank(end[-1])) end--;
    if (end - p < 6) return BearerParse::not_bearer;
    std::uint32_t bear;
    std::uint16_t er;
    std::memcpy(&bear, p, 4);
    std::memcpy(&er, p + 4, 2);
    std::uint32_t want_bear;
    std::uint16_t want_er;
    std::memcpy(&want_bear, "bear", 4);
    std::memcpy(&want_er, "er", 2);
    if ((bear | 0x20202020u) != want_bear || static_cast<std::uint16_t>(er | 0x2020u) != want_er) {
        return BearerParse::not_bearer;
    }
    p += 6;
    if (p < end && !is_blank(*p)) return BearerParse::not_bearer;
    while (p < end && is_blank(*p)) p++;
    token = std::string_view(p, static_cast<std::size_t>(end - p));
    return token.empty() ? BearerParse::empty_token : BearerParse::token;
}

void KeyCollector::offer(std::string_view candidate) noexcept {
    switch (state_) {
    case State::none:
        key_ = candidate;
        state_ = State::one;
        break;
    case State::one:
        if (candidate != key_) state_ = State::multiple;
        break;
    case State::malformed: state_ = State::multiple; break;
    case State::multiple: break;
    }
}

void KeyCollector::offer_malformed() noexcept {
    if (state_ == State::none) {
        state_ = State::malformed;
    } else if (state_ == State::one) {
        state_ = State::multiple;
    }
}

}  // namespace apikey
