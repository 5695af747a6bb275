#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>

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
    const std::size_t set = cache->set_of(first);
    ASSERT_LT(set, sets);
    std::string second;
    for (int i = 1; second.empty(); i++) {
        std::string k = "wfk_same_set_key_" + std::to_string(i);
        if (cache->set_of(k) == set) second = k;
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

namespace {

std::string hex(const std::array<std::uint8_t, 16> &tag) {
    static const char digits[] = "0123456789abcdef";
    std::string out;
    for (std::uint8_t b : tag) {
        out += digits[b >> 4];
        out += digits[b & 15];
    }
    return out;
}

std::string unhex(std::string_view h) {
    std::string out;
    for (std::size_t i = 0; i + 1 < h.size(); i += 2) {
        out += static_cast<char>(std::stoi(std::string(h.substr(i, 2)), nullptr, 16));
    }
    return out;
}

TEST(AesCmac, MatchesRfc4493) {
    if (!apikey::aes_cmac_available())
        GTEST_SKIP() << "no AES-NI on this CPU: the memo uses SipHash";
    const std::string key = unhex("2b7e151628aed2a6abf7158809cf4f3c");
    const auto *k = reinterpret_cast<const std::uint8_t *>(key.data());
    const std::string m = unhex(
        "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
        "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710");
    EXPECT_EQ(hex(apikey::aes128_cmac(k, "")), "bb1d6929e95937287fa37d129b756746");
    EXPECT_EQ(hex(apikey::aes128_cmac(k, m.substr(0, 16))), "070a16b46b4d4144f79bdd9dd04a287c");
    EXPECT_EQ(hex(apikey::aes128_cmac(k, m.substr(0, 40))), "dfa66747de9ae63030ca32611497c827");
    EXPECT_EQ(hex(apikey::aes128_cmac(k, m)), "51f0bebf7e3b9d92fc49741779363cfe");
}

// OpenSSL's CMAC with AES-128-CBC, for every length.
std::array<std::uint8_t, 16> openssl_cmac(const std::string &key, const std::string &data) {
    std::array<std::uint8_t, 16> out{};
    EVP_MAC *mac = EVP_MAC_fetch(nullptr, "CMAC", nullptr);
    EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : nullptr;
    char cipher[] = "AES-128-CBC";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("cipher", cipher, 0),
                           OSSL_PARAM_construct_end()};
    size_t len = 0;
    const bool ok = ctx != nullptr &&
                    EVP_MAC_init(ctx, reinterpret_cast<const unsigned char *>(key.data()),
                                 key.size(), params) == 1 &&
                    EVP_MAC_update(ctx, reinterpret_cast<const unsigned char *>(data.data()),
                                   data.size()) == 1 &&
                    EVP_MAC_final(ctx, out.data(), &len, out.size()) == 1 && len == 16;
    EXPECT_TRUE(ok) << "OpenSSL's CMAC";
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
    return out;
}

TEST(AesCmac, MatchesOpenSslForEveryLength) {
    if (!apikey::aes_cmac_available())
        GTEST_SKIP() << "no AES-NI on this CPU: the memo uses SipHash";
    const std::string key = unhex("000102030405060708090a0b0c0d0e0f");
    const auto *k = reinterpret_cast<const std::uint8_t *>(key.data());
    std::string m;
    for (int i = 0; i < 300; i++) m += static_cast<char>(i * 37 + 11);
    for (std::size_t n = 0; n <= m.size(); n++) {
        // At the end of a buffer of exactly n bytes: the last block's load
        // must stay inside the message.
        const std::string data = m.substr(0, n);
        ASSERT_EQ(hex(apikey::aes128_cmac(k, data)), hex(openssl_cmac(key, data))) << n;
    }
}

TEST(KeyDigestCache, UsesAesCmacWhereTheCpuHasIt) {
    auto cache = std::make_unique<KeyDigestCache>();
    cache->seed({1, 2});
    EXPECT_EQ(cache->prf(), apikey::aes_cmac_available() ? KeyDigestCache::Prf::aes_cmac
                                                         : KeyDigestCache::Prf::siphash);
}

TEST(KeyDigestCache, BothFunctionsRememberExactlyTheirKeys) {
    for (auto prf : {KeyDigestCache::Prf::aes_cmac, KeyDigestCache::Prf::siphash}) {
        auto cache = std::make_unique<KeyDigestCache>();
        cache->seed({7, 8}, prf);
        // Every length around the cipher's 16-byte blocks, up to the longest key.
        std::vector<std::string> keys;
        for (std::size_t n = 0; n <= 256; n++) keys.push_back(std::string(n, 'k'));
        for (std::size_t n = 1; n <= 64; n++) keys.push_back(std::string(n - 1, 'k') + 'j');
        for (const std::string &k : keys) cache->remember(k, apikey::sha256(k));
        int hits = 0;
        for (const std::string &k : keys) {
            Digest out{};
            if (cache->find(k, out)) {
                hits++;
                EXPECT_EQ(out, apikey::sha256(k)) << k.size();
            }
        }
        EXPECT_GT(hits, 300) << "few of 321 keys share a set of two";
        Digest out{};
        EXPECT_FALSE(cache->find("never remembered key", out));
    }
}

TEST(KeyDigestCache, KeepsTheCallersNoteBesideTheDigest) {
    auto cache = std::make_unique<KeyDigestCache>();
    cache->seed({9, 10});
    const std::string key = "jfi_sk_live_0123456789abcdefghij0123456789";
    const Digest d = apikey::sha256(key);
    cache->remember(key, d, {77, 2});
    Digest out{};
    apikey::MemoNote *note = nullptr;
    ASSERT_TRUE(cache->find(key, out, note));
    ASSERT_NE(note, nullptr);
    EXPECT_EQ(out, d);
    EXPECT_EQ(note->table, 77u);
    EXPECT_EQ(note->value, 2u);
    *note = {78, 1};  // the caller's update stays with the entry
    apikey::MemoNote *again = nullptr;
    ASSERT_TRUE(cache->find(key, out, again));
    EXPECT_EQ(again->table, 78u);
    EXPECT_EQ(again->value, 1u);
    cache->remember(key, d);  // remembered again: a fresh note
    ASSERT_TRUE(cache->find(key, out, again));
    EXPECT_EQ(again->table, 0u);
    apikey::MemoNote *none = nullptr;
    EXPECT_FALSE(cache->find(key + "x", out, none));
    EXPECT_EQ(none, nullptr);
}

TEST(KeyDigestCache, ANewSecretForgetsEverything) {
    auto cache = std::make_unique<KeyDigestCache>();
    const std::string key = "jfi_sk_live_0123456789abcdefghij0123456789";
    cache->seed({1, 2});
    cache->remember(key, apikey::sha256(key));
    cache->seed({1, 3});
    Digest out{};
    EXPECT_FALSE(cache->find(key, out));
    const std::size_t first = cache->set_of(key);
    int same = 0;
    for (std::uint64_t k = 4; k < 36; k++) {
        cache->seed({1, k});
        same += cache->set_of(key) == first;
    }
    EXPECT_LT(same, 4) << "the set depends on the secret";
}

}  // namespace
