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

constexpr char kDigits[] = "0123456789abcdefghijklmnopqrstuvwxyz";

// Every pair of base-36 digits, 00 to zz: two digits per division halves
// the divisions (the request path pays for each id).
constexpr std::array<std::array<char, 2>, 36 * 36> make_pairs() noexcept {
    std::array<std::array<char, 2>, 36 * 36> t{};
    for (std::size_t i = 0; i < t.size(); i++) t[i] = {kDigits[i / 36], kDigits[i % 36]};
    return t;
}

constexpr auto kPairs = make_pairs();

inline void pair(char *out, std::uint64_t &v) noexcept {
    std::memcpy(out, kPairs[v % (36 * 36)].data(), 2);
    v /= 36 * 36;
}

}  // namespace

static_assert(kRequestIdLength == 4 + 13);

void RequestIdGenerator::next(char out[kRequestIdLength]) noexcept {
    state_ += 0x9e3779b97f4a7c15ull;
    std::uint64_t v = mix(state_);
    std::memcpy(out, "req_", 4);
    // 36^13 > 2^64, so 13 base-36 digits hold any value: the last one
    // alone, then six pairs from the right.
    out[16] = kDigits[v % 36];
    v /= 36;
    pair(out + 14, v);
    pair(out + 12, v);
    pair(out + 10, v);
    pair(out + 8, v);
    pair(out + 6, v);
    pair(out + 4, v);
}

}  // namespace apikey
