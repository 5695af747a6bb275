#include "key_digest_cache.h"

#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define APIKEY_AESNI 1
#else
#define APIKEY_AESNI 0
#endif

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

#if APIKEY_AESNI

#define APIKEY_AES_TARGET __attribute__((target("aes,ssse3")))

// CMAC's subkey doubling in GF(2^128): a big-endian shift left by one,
// reduced by x^128 + x^7 + x^2 + x + 1.
void cmac_double(const std::uint8_t in[16], std::uint8_t out[16]) noexcept {
    const std::uint8_t carry = in[0] >> 7;
    for (int i = 0; i < 15; i++) out[i] = static_cast<std::uint8_t>(in[i] << 1 | in[i + 1] >> 7);
    out[15] = static_cast<std::uint8_t>(in[15] << 1);
    if (carry) out[15] ^= 0x87;
}

template <int Rcon>
APIKEY_AES_TARGET __m128i expand_round(__m128i key) noexcept {
    __m128i gen = _mm_shuffle_epi32(_mm_aeskeygenassist_si128(key, Rcon), 0xff);
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    return _mm_xor_si128(key, gen);
}

// The AES-128 key schedule (FIPS 197), 11 round keys.
APIKEY_AES_TARGET void aes128_expand(const std::uint8_t key[16],
                                     std::uint8_t out[11 * 16]) noexcept {
    __m128i k[11];
    k[0] = _mm_loadu_si128(reinterpret_cast<const __m128i *>(key));
    k[1] = expand_round<0x01>(k[0]);
    k[2] = expand_round<0x02>(k[1]);
    k[3] = expand_round<0x04>(k[2]);
    k[4] = expand_round<0x08>(k[3]);
    k[5] = expand_round<0x10>(k[4]);
    k[6] = expand_round<0x20>(k[5]);
    k[7] = expand_round<0x40>(k[6]);
    k[8] = expand_round<0x80>(k[7]);
    k[9] = expand_round<0x1b>(k[8]);
    k[10] = expand_round<0x36>(k[9]);
    for (int i = 0; i < 11; i++) _mm_storeu_si128(reinterpret_cast<__m128i *>(out + 16 * i), k[i]);
}

// rk: the 11 round keys, loaded once per message (into registers).
APIKEY_AES_TARGET inline __m128i aes128_encrypt(const __m128i (&rk)[11], __m128i b) noexcept {
    b = _mm_xor_si128(b, rk[0]);
    b = _mm_aesenc_si128(b, rk[1]);
    b = _mm_aesenc_si128(b, rk[2]);
    b = _mm_aesenc_si128(b, rk[3]);
    b = _mm_aesenc_si128(b, rk[4]);
    b = _mm_aesenc_si128(b, rk[5]);
    b = _mm_aesenc_si128(b, rk[6]);
    b = _mm_aesenc_si128(b, rk[7]);
    b = _mm_aesenc_si128(b, rk[8]);
    b = _mm_aesenc_si128(b, rk[9]);
    return _mm_aesenclast_si128(b, rk[10]);
}

#define APIKEY_LOAD_ROUND_KEYS(rk, from)                              \
    const __m128i rk[11] = {                                          \
        _mm_load_si128(reinterpret_cast<const __m128i *>(from) + 0),  \
        _mm_load_si128(reinterpret_cast<const __m128i *>(from) + 1),  \
        _mm_load_si128(reinterpret_cast<const __m128i *>(from) + 2),  \
        _mm_load_si128(reinterpret_cast<const __m128i *>(from) + 3),  \
        _mm_load_si128(reinterpret_cast<const __m128i *>(from) + 4),  \
        _mm_load_si128(reinterpret_cast<const __m128i *>(from) + 5),  \
        _mm_load_si128(reinterpret_cast<const __m128i *>(from) + 6),  \
        _mm_load_si128(reinterpret_cast<const __m128i *>(from) + 7),  \
        _mm_load_si128(reinterpret_cast<const __m128i *>(from) + 8),  \
        _mm_load_si128(reinterpret_cast<const __m128i *>(from) + 9),  \
        _mm_load_si128(reinterpret_cast<const __m128i *>(from) + 10), \
    }

// A message shorter than a block, zero-padded: out of line, so that cmac()
// keeps no buffer of its own (and its round keys in registers).
APIKEY_AES_TARGET __attribute__((noinline)) __m128i short_message(const unsigned char *p,
                                                                  std::size_t n) noexcept {
    alignas(16) std::uint8_t block[16] = {};
    if (n != 0) std::memcpy(block, p, n);
    return _mm_load_si128(reinterpret_cast<const __m128i *>(block));
}

// For a last block of n (1 to 15) bytes: the shuffle that moves the last n
// bytes of a 16-byte load to the front and zeroes the rest, and CMAC's
// padding (0x80, then zeros) after them.
struct TailMasks {
    alignas(16) std::uint8_t shuffle[16][16];
    alignas(16) std::uint8_t pad[16][16];
};

constexpr TailMasks make_tail_masks() noexcept {
    TailMasks t{};
    for (int n = 0; n < 16; n++) {
        for (int i = 0; i < 16; i++) {
            t.shuffle[n][i] = static_cast<std::uint8_t>(i < n ? 16 - n + i : 0x80);
            t.pad[n][i] = static_cast<std::uint8_t>(i == n ? 0x80 : 0);
        }
    }
    return t;
}

constexpr TailMasks kTail = make_tail_masks();

// AES-128-CMAC (RFC 4493) with expanded round keys and subkeys.
APIKEY_AES_TARGET __m128i cmac(const std::uint8_t *round_keys, const std::uint8_t *k1,
                               const std::uint8_t *k2, std::string_view data) noexcept {
    APIKEY_LOAD_ROUND_KEYS(rk, round_keys);
    const auto *p = reinterpret_cast<const unsigned char *>(data.data());
    const std::size_t size = data.size();
    std::size_t n = size;
    __m128i x = _mm_setzero_si128();
    // Every block but the last goes through the cipher as it is.
    while (n > 16) {
        const __m128i m = _mm_loadu_si128(reinterpret_cast<const __m128i *>(p));
        x = aes128_encrypt(rk, _mm_xor_si128(x, m));
        p += 16;
        n -= 16;
    }
    __m128i last;
    if (n == 16) {
        last = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)),
                             _mm_load_si128(reinterpret_cast<const __m128i *>(k1)));
    } else {
        // The 16 bytes that end the message, its last n moved to the front;
        // a message shorter than that is copied.
        last = size >= 16 ? _mm_shuffle_epi8(
                                _mm_loadu_si128(reinterpret_cast<const __m128i *>(p + n - 16)),
                                _mm_load_si128(reinterpret_cast<const __m128i *>(kTail.shuffle[n])))
                          : short_message(p, n);
        last = _mm_or_si128(last, _mm_load_si128(reinterpret_cast<const __m128i *>(kTail.pad[n])));
        last = _mm_xor_si128(last, _mm_load_si128(reinterpret_cast<const __m128i *>(k2)));
    }
    return aes128_encrypt(rk, _mm_xor_si128(x, last));
}

APIKEY_AES_TARGET void cmac_subkeys(const std::uint8_t *round_keys, std::uint8_t k1[16],
                                    std::uint8_t k2[16]) noexcept {
    alignas(16) std::uint8_t l[16];
    APIKEY_LOAD_ROUND_KEYS(rk, round_keys);
    _mm_store_si128(reinterpret_cast<__m128i *>(l), aes128_encrypt(rk, _mm_setzero_si128()));
    cmac_double(l, k1);
    cmac_double(k1, k2);
}

#endif  // APIKEY_AESNI

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

bool aes_cmac_available() noexcept {
#if APIKEY_AESNI
    static const bool available = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("aes") && __builtin_cpu_supports("ssse3");
    }();
    return available;
#else
    return false;
#endif
}

std::array<std::uint8_t, 16> aes128_cmac(const std::uint8_t key[16],
                                         std::string_view data) noexcept {
    std::array<std::uint8_t, 16> out{};
#if APIKEY_AESNI
    if (!aes_cmac_available()) return out;
    alignas(16) std::uint8_t round_keys[11 * 16];
    alignas(16) std::uint8_t k1[16], k2[16];
    aes128_expand(key, round_keys);
    cmac_subkeys(round_keys, k1, k2);
    _mm_storeu_si128(reinterpret_cast<__m128i *>(out.data()), cmac(round_keys, k1, k2, data));
#else
    (void)key;
    (void)data;
#endif
    return out;
}

KeyDigestCache::Tag KeyDigestCache::tag(std::string_view key) const noexcept {
#if APIKEY_AESNI
    if (prf_ == Prf::aes_cmac) {
        Tag t;
        _mm_storeu_si128(reinterpret_cast<__m128i *>(t.data()), cmac(round_keys_, k1_, k2_, key));
        return t;
    }
#endif
    return siphash128(secret_, key);
}

std::size_t KeyDigestCache::set_of(std::string_view key) const noexcept {
    return tag(key)[0] % (kEntries / kWays);
}

const KeyDigestCache::Entry *KeyDigestCache::entry(std::string_view key) const noexcept {
    if (!seeded_) return nullptr;
    const Tag t = tag(key);
    if ((t[0] | t[1]) == 0) return nullptr;  // the empty tag marks a free entry
    const std::size_t set = t[0] % (kEntries / kWays);
    for (std::size_t way = 0; way < kWays; way++) {
        const Entry &e = entries_[set * kWays + way];
        if (e.tag[0] == t[0] && e.tag[1] == t[1]) return &e;
    }
    return nullptr;
}

bool KeyDigestCache::find(std::string_view key, Digest &digest) const noexcept {
    const Entry *e = entry(key);
    if (e == nullptr) return false;
    digest = e->digest;
    return true;
}

bool KeyDigestCache::find(std::string_view key, Digest &digest, MemoNote *&note) noexcept {
    auto *e = const_cast<Entry *>(entry(key));
    if (e == nullptr) return false;
    digest = e->digest;
    note = &e->note;
    return true;
}

void KeyDigestCache::remember(std::string_view key, const Digest &digest,
                              const MemoNote &note) noexcept {
    if (!seeded_) return;
    const Tag t = tag(key);
    const std::size_t set = t[0] % (kEntries / kWays);
    // The way not used last makes room (with two ways: least recently added).
    const std::size_t way = recent_[set] ^ 1u;
    Entry &e = entries_[set * kWays + way];
    e.tag[0] = t[0];
    e.tag[1] = t[1];
    e.digest = digest;
    e.note = note;
    recent_[set] = static_cast<std::uint8_t>(way);
}

void KeyDigestCache::seed(const SipKey &secret) noexcept {
    seed(secret, aes_cmac_available() ? Prf::aes_cmac : Prf::siphash);
}

void KeyDigestCache::seed(const SipKey &secret, Prf prf) noexcept {
    secret_ = secret;
    prf_ = Prf::siphash;
#if APIKEY_AESNI
    if (prf == Prf::aes_cmac && aes_cmac_available()) {
        std::uint8_t key[16];
        std::memcpy(key, &secret.k0, 8);
        std::memcpy(key + 8, &secret.k1, 8);
        aes128_expand(key, round_keys_);
        cmac_subkeys(round_keys_, k1_, k2_);
        prf_ = Prf::aes_cmac;
    }
#else
    (void)prf;
#endif
    seeded_ = true;
    entries_ = {};
    recent_ = {};
}

}  // namespace apikey
