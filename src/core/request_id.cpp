#include "request_id.h"

namespace apikey {

namespace {

// SplitMix64's finalizer: a bijection on 64-bit values with good diffusion,
// so consecutive counters give unrelated-looking ids without any collision.
std::uint64_t mix(std::uint64_t z) noexcept {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

}  // namespace

void RequestIdGenerator::next(char out[kRequestIdLength]) noexcept {
    static constexpr char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
    state_ += 0x9e3779b97f4a7c15ull;
    std::uint64_t v = mix(state_);
    out[0] = 'r';
    out[1] = 'e';
    out[2] = 'q';
    out[3] = '_';
    // 36^13 > 2^64, so 13 base-36 digits hold any value.
    for (std::size_t i = kRequestIdLength - 1; i >= 4; i--) {
        out[i] = digits[v % 36];
        v /= 36;
    }
}

}  // namespace apikey
