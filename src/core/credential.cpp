#include "credential.h"

#include <array>

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

std::string_view trim(std::string_view s) noexcept {
    while (!s.empty() && is_blank(s.front())) s.remove_prefix(1);
    while (!s.empty() && is_blank(s.back())) s.remove_suffix(1);
    return s;
}

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
    constexpr std::string_view scheme = "bearer";
    value = trim(value);
    if (value.size() < scheme.size()) return BearerParse::not_bearer;
    for (std::size_t i = 0; i < scheme.size(); i++) {
        if ((value[i] | 0x20) != scheme[i]) return BearerParse::not_bearer;
    }
    std::string_view rest = value.substr(scheme.size());
    if (!rest.empty() && !is_blank(rest.front())) return BearerParse::not_bearer;
    token = trim(rest);
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
