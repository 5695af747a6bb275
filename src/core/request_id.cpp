#include "request_id.h"

#include <array>
#include <cstring>

namespace apikey {

namespace {

// SplitMix64's finalizer: a bijection on 64-bit values with good diffusion,
// so consecutive counters give unrelated-looking ids without any collision.
std::uint64_t mix(std::uint64_t z) noexcept {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Base 32: a digit is 5 bits, so the request path shifts and masks where
// base 36 had to divide.
constexpr char kDigits[] = "0123456789abcdefghijklmnopqrstuv";

// Every pair of digits, 00 to vv: 10 bits a lookup.
constexpr std::array<std::array<char, 2>, 32 * 32> make_pairs() noexcept {
    std::array<std::array<char, 2>, 32 * 32> t{};
    for (std::size_t i = 0; i < t.size(); i++) t[i] = {kDigits[i / 32], kDigits[i % 32]};
    return t;
}

constexpr auto kPairs = make_pairs();

}  // namespace

static_assert(kRequestIdLength == 4 + 13);

void RequestIdGenerator::next(char out[kRequestIdLength]) noexcept {
    state_ += 0x9e3779b97f4a7c15ull;
    const std::uint64_t v = mix(state_);
    std::memcpy(out, "req_", 4);
    // 13 digits hold 65 bits: the first takes the top 4, six pairs the rest.
    out[4] = kDigits[v >> 60];
#pragma GCC unroll 6
    for (int i = 0; i < 6; i++) {
        std::memcpy(out + 5 + 2 * i, kPairs[(v >> (50 - 10 * i)) & 1023].data(), 2);
    }
}

}  // namespace apikey
