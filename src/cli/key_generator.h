// New API keys and key ids from OpenSSL's CSPRNG.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

namespace apikey::cli {

constexpr std::string_view kBase62 =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
constexpr std::string_view kBase36 = "0123456789abcdefghijklmnopqrstuvwxyz";

// 32 base62 characters are 190 bits; the default leaves room to spare.
constexpr std::size_t kMinRandomChars = 32;
constexpr std::size_t kDefaultRandomChars = 40;
constexpr std::size_t kKeyIdRandomChars = 12;

// Fills a buffer with random bytes; tests swap in a deterministic source.
using RandomBytes = std::function<void(unsigned char *, std::size_t)>;

// RAND_bytes, throwing Error when OpenSSL cannot seed itself.
void openssl_random_bytes(unsigned char *out, std::size_t n);

// `length` characters drawn uniformly from `alphabet` (2..256 symbols).
// Bytes at or above the largest multiple of the alphabet size are thrown
// away, so every symbol is exactly equally likely (no modulo bias).
std::string random_string(std::string_view alphabet, std::size_t length,
                          const RandomBytes &source = openssl_random_bytes);

// prefix + `random_chars` base62 characters.
std::string generate_key(std::string_view prefix, std::size_t random_chars = kDefaultRandomChars,
                         const RandomBytes &source = openssl_random_bytes);

// "key_" + 12 lowercase base36 characters (62 bits): public, but unguessable
// enough that ids never collide in practice; callers still check uniqueness.
std::string generate_key_id(const RandomBytes &source = openssl_random_bytes);

}  // namespace apikey::cli
