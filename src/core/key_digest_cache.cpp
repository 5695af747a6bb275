#include "key_digest_cache.h"

#include <cstring>

namespace apikey {

namespace {

std::uint64_t rotl(std::uint64_t x, int b) noexcept { return (x << b) | (x >> (64 - b)); }

struct SipState {
    std::uint64_t v0, v1, v2, v3;

    void round() noexcept {
        v0 += v1;
        v1 = rotl(v1, 13);
        v1 ^= v0;
        v0 = rotl(v0, 32);
        v2 += v3;
        v3 = rotl(v3, 16);
        v3 ^= v2;
        v0 += v3;
        v3 = rotl(v3, 21);
        v3 ^= v0;
        v2 += v1;
        v1 = rotl(v1, 17);
        v1 ^= v2;
        v2 = rotl(v2, 32);
    }

    void compress(std::uint64_t m) noexcept {
        v3 ^= m;
        round();
        round();
        v0 ^= m;
    }
};

std::uint64_t read_le64(const unsigned char *p) noexcept {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    std::uint64_t v;
    std::memcpy(&v, p, sizeof v);  // one load instead of eight
    return v;
#else
    std::uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
#endif
}

}  // namespace

std::array<std::uint64_t, 2> siphash128(const SipKey &key, std::string_view data) noexcept {
    SipState s{0x736f6d6570736575ull ^ key.k0, 0x646f72616e646f6dull ^ key.k1,
               0x6c7967656e657261ull ^ key.k0, 0x7465646279746573ull ^ key.k1};
    s.v1 ^= 0xee;  // 128-bit output variant

    const auto *p = reinterpret_cast<const unsigned char *>(data.data());
    const std::size_t n = data.size();
    const std::size_t whole = n & ~std::size_t{7};
    for (std::size_t i = 0; i < whole; i += 8) s.compress(read_le64(p + i));

    std::uint64_t last = static_cast<std::uint64_t>(n & 0xff) << 56;
    for (std::size_t i = whole; i < n; i++) {
        last |= static_cast<std::uint64_t>(p[i]) << (8 * (i - whole));
    }
    s.compress(last);

    s.v2 ^= 0xee;
    for (int i = 0; i < 4; i++) s.round();
    const std::uint64_t h0 = s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
    s.v1 ^= 0xdd;
    for (int i = 0; i < 4; i++) s.round();
    const std::uint64_t h1 = s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
    return {h0, h1};
}

bool KeyDigestCache::find(std::string_view key, Digest &digest) const noexcept {
    if (!seeded_) return false;
    const auto tag = siphash128(secret_, key);
    if ((tag[0] | tag[1]) == 0) return false;  // the empty tag marks a free entry
    const std::size_t set = tag[0] % (kEntries / kWays);
    for (std::size_t way = 0; way < kWays; way++) {
        const Entry &e = entries_[set * kWays + way];
        if (e.tag[0] == tag[0] && e.tag[1] == tag[1]) {
            digest = e.digest;
            return true;
        }
    }
    return false;
}

void KeyDigestCache::remember(std::string_view key, const Digest &digest) noexcept {
    if (!seeded_) return;
    const auto tag = siphash128(secret_, key);
    const std::size_t set = tag[0] % (kEntries / kWays);
    // The way not used last makes room (with two ways: least recently added).
    const std::size_t way = recent_[set] ^ 1u;
    Entry &e = entries_[set * kWays + way];
    e.tag[0] = tag[0];
    e.tag[1] = tag[1];
    e.digest = digest;
    recent_[set] = static_cast<std::uint8_t>(way);
}

void KeyDigestCache::seed(const SipKey &secret) noexcept {
    secret_ = secret;
    seeded_ = true;
    entries_ = {};
    recent_ = {};
}

}  // namespace apikey
