// A per-process memo of SHA-256 for keys that were recently found in a table.
//
// SHA-256 is most of what the module costs per request (about 2,700 of
// its instructions under callgrind). A client sends the same key again and
// again, so each worker remembers the digest of keys it has verified,
// indexed by SipHash-2-4-128 of the key under a secret drawn at start: the
// key itself is never stored, nobody without the secret can aim a key at an
// entry, and a 128-bit tag makes a false hit as likely as guessing a key.
// Only keys found in the table are remembered, so random keys sent by an
// attacker cannot push real ones out. The digest does not depend on the
// table, so a reload or a check= swap needs no invalidation.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "digest.h"

namespace apikey {

struct SipKey {
    std::uint64_t k0;
    std::uint64_t k1;
};

// SipHash-2-4 with 128-bit output (the reference algorithm's variant).
std::array<std::uint64_t, 2> siphash128(const SipKey &key, std::string_view data) noexcept;

class KeyDigestCache {
public:
    // 48 bytes each, in sets of two: with one way, active keys that share a
    // slot would push each other out on every request (about 2% of 100
    // active keys, 22% of 1,000).
    static constexpr std::size_t kEntries = 4096;
    static constexpr std::size_t kWays = 2;

    void seed(const SipKey &secret) noexcept;

    // True and the digest when this key was remembered.
    bool find(std::string_view key, Digest &digest) const noexcept;
    void remember(std::string_view key, const Digest &digest) noexcept;

private:
    struct Entry {
        std::uint64_t tag[2];  // all zero: empty
        Digest digest;
    };

    SipKey secret_{};
    bool seeded_ = false;
    std::array<Entry, kEntries> entries_{};
    std::array<std::uint8_t, kEntries / kWays> recent_{};  // way used last, per set
};

}  // namespace apikey
