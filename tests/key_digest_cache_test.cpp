#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "core/key_digest_cache.h"

namespace {

using apikey::Digest;
using apikey::KeyDigestCache;
using apikey::SipKey;

// SipHash reference key 00 01 .. 0f.
const SipKey kReferenceKey{0x0706050403020100ull, 0x0f0e0d0c0b0a0908ull};

std::string bytes_le(const std::array<std::uint64_t, 2> &h) {
    std::string out;
    for (std::uint64_t w : h) {
        for (int i = 0; i < 8; i++) out += static_cast<char>((w >> (8 * i)) & 0xff);
    }
    return out;
}

std::string message(std::size_t n) {
    std::string m;
    for (std::size_t i = 0; i < n; i++) m += static_cast<char>(i);
    return m;
}

TEST(SipHash128, MatchesTheReferenceVectors) {
    // vectors_sip128[0..2] of the reference implementation.
    EXPECT_EQ(bytes_le(apikey::siphash128(kReferenceKey, message(0))),
              std::string("\xa3\x81\x7f\x04\xba\x25\xa8\xe6\x6d\xf6\x72\x14\xc7\x55\x02\x93", 16));
    EXPECT_EQ(bytes_le(apikey::siphash128(kReferenceKey, message(1))),
              std::string("\xda\x87\xc1\xd8\x6b\x99\xaf\x44\x34\x76\x59\x11\x9b\x22\xfc\x45", 16));
    EXPECT_EQ(bytes_le(apikey::siphash128(kReferenceKey, message(2))),
              std::string("\x81\x77\x22\x8d\xa4\xa4\x5d\xc7\xfc\xa3\x8b\xde\xf6\x0a\xff\xe4", 16));
    EXPECT_EQ(bytes_le(apikey::siphash128(kReferenceKey, message(3))),
              std::string("\x9c\x70\xb6\x0c\x52\x67\xa9\x4e\x5f\x33\xb6\xb0\x29\x85\xed\x51", 16));
}

TEST(KeyDigestCache, RemembersOnlyWhatItWasGiven) {
    auto cache = std::make_unique<KeyDigestCache>();
    cache->seed({1, 2});
    const std::string key = "jfi_sk_live_0123456789abcdefghij0123456789";
    Digest d = apikey::sha256(key);
    Digest out{};
    EXPECT_FALSE(cache->find(key, out)) << "an empty cache knows nothing";
    cache->remember(key, d);
    ASSERT_TRUE(cache->find(key, out));
    EXPECT_EQ(out, d);
    EXPECT_FALSE(cache->find(key + "x", out)) << "another key is not a hit";
    EXPECT_FALSE(cache->find(key.substr(1), out));
}

TEST(KeyDigestCache, UnseededCacheNeverHits) {
    auto cache = std::make_unique<KeyDigestCache>();
    const std::string key = "jfi_sk_live_0123456789abcdefghij0123456789";
    cache->remember(key, apikey::sha256(key));
    Digest out{};
    EXPECT_FALSE(cache->find(key, out)) << "without a secret the cache stays off";
}

TEST(KeyDigestCache, ASlotHoldsTheLatestKeyOnly) {
    auto cache = std::make_unique<KeyDigestCache>();
    cache->seed({3, 4});
    // Many keys: every hit must return that key's own digest.
    for (int i = 0; i < 20000; i++) {
        std::string k = "wfk_key_number_" + std::to_string(i);
        cache->remember(k, apikey::sha256(k));
    }
    int hits = 0;
    for (int i = 0; i < 20000; i++) {
        std::string k = "wfk_key_number_" + std::to_string(i);
        Digest out{};
        if (cache->find(k, out)) {
            hits++;
            EXPECT_EQ(out, apikey::sha256(k)) << k;
        }
    }
    EXPECT_GT(hits, 2000) << "recent keys stay in the cache";
    EXPECT_LE(hits, static_cast<int>(KeyDigestCache::kEntries));
}

TEST(KeyDigestCache, DifferentSecretsIndexDifferently) {
    EXPECT_NE(apikey::siphash128({1, 2}, "same key"), apikey::siphash128({1, 3}, "same key"));
}

}  // namespace

namespace {

TEST(KeyDigestCache, TwoKeysOfOneSetBothStay) {
    // Find two keys that land in the same set: with two ways both stay.
    auto cache = std::make_unique<apikey::KeyDigestCache>();
    const apikey::SipKey secret{5, 6};
    cache->seed(secret);
    const std::size_t sets = apikey::KeyDigestCache::kEntries / apikey::KeyDigestCache::kWays;
    std::string first = "wfk_same_set_key_0";
    const std::size_t set = apikey::siphash128(secret, first)[0] % sets;
    std::string second;
    for (int i = 1; second.empty(); i++) {
        std::string k = "wfk_same_set_key_" + std::to_string(i);
        if (apikey::siphash128(secret, k)[0] % sets == set) second = k;
    }
    cache->remember(first, apikey::sha256(first));
    cache->remember(second, apikey::sha256(second));
    apikey::Digest out{};
    for (int round = 0; round < 3; round++) {
        ASSERT_TRUE(cache->find(first, out)) << "round " << round;
        EXPECT_EQ(out, apikey::sha256(first));
        ASSERT_TRUE(cache->find(second, out)) << "round " << round;
        EXPECT_EQ(out, apikey::sha256(second));
    }
}

}  // namespace
