// A per-process memo of SHA-256 for keys that were recently found in a table.
//
// SHA-256 is most of what the module costs per request (about 2,700 of
// its instructions under callgrind). A client sends the same key again and
// again, so each worker remembers the digest of keys it has verified,
// indexed by a keyed pseudorandom function of the key under a 128-bit
// secret drawn at start: the key itself is never stored, nobody without the
// secret can aim a key at an entry, and a 128-bit tag makes a false hit as
// likely as guessing a key. Only keys found in the table are remembered, so
// random keys sent by an attacker cannot push real ones out. The digest does
// not depend on the table, so a reload or a check= swap needs no
// invalidation.
//
// The function is AES-128-CMAC (NIST SP 800-38B, RFC 4493) where the CPU
// has AES instructions (checked at run time: about 90 instructions for a
// 52-byte key, against 430 for SipHash), and SipHash-2-4-128 elsewhere;
// both are PRFs with a 128-bit key and a 128-bit output.
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

// True when this CPU runs AES-NI (and SSSE3), so that the memo uses AES-128-CMAC.
bool aes_cmac_available() noexcept;

// AES-128-CMAC of data under key (16 bytes, as in RFC 4493); needs
// aes_cmac_available(). For tests: it expands the key on every call.
std::array<std::uint8_t, 16> aes128_cmac(const std::uint8_t key[16],
                                         std::string_view data) noexcept;

// What a caller keeps beside a key's digest, for its own use: the glue
// keeps the key table (its build id) in which it last read the key's
// environment, the environment and the key's record there, so that the next
// request of the key in the same table skips the prefix and digest lookups,
// and the last location policy that accepted the record there.
struct MemoNote {
    static constexpr std::uint32_t kNoRecord = ~std::uint32_t{0};
    std::uint64_t table = 0;  // 0: none
    std::uint8_t value = 0;
    // A location's acceptance of the record, by its policy's memo id and
    // the request method (AccessPolicy::note_acceptance); 0: none.
    std::uint8_t accepted_method = 0;
    std::uint16_t accepted_by = 0;
    std::uint32_t record = kNoRecord;  // the key's record in that table, by index
};
static_assert(sizeof(MemoNote) == 16);

class KeyDigestCache {
public:
    // 64 bytes each, in sets of two: with one way, active keys that share a
    // slot would push each other out on every request (about 2% of 100
    // active keys, 22% of 1,000).
    static constexpr std::size_t kEntries = 4096;
    static constexpr std::size_t kWays = 2;

    enum class Prf : std::uint8_t { aes_cmac, siphash };

    // The secret keys the PRF: AES-128-CMAC when the CPU has AES-NI,
    // else SipHash-2-4-128. Empties the memo.
    void seed(const SipKey &secret) noexcept;
    // Tests: this PRF (aes_cmac only where available).
    void seed(const SipKey &secret, Prf prf) noexcept;
    Prf prf() const noexcept { return prf_; }

    // True and the digest when this key was remembered.
    bool find(std::string_view key, Digest &digest) const noexcept;
    // The same, and the entry's note, which the caller may change (until
    // the next remember()).
    bool find(std::string_view key, Digest &digest, MemoNote *&note) noexcept;
    void remember(std::string_view key, const Digest &digest, const MemoNote &note = {}) noexcept;

    // The set a key's entry goes to (tests).
    std::size_t set_of(std::string_view key) const noexcept;

private:
    struct Entry {
        std::uint64_t tag[2];  // all zero: empty
        Digest digest;
        MemoNote note;
    };
    static_assert(sizeof(Entry) == 64);

    const Entry *entry(std::string_view key) const noexcept;
    using Tag = std::array<std::uint64_t, 2>;

    Tag tag(std::string_view key) const noexcept;

    // AES-128 round keys (11 x 16 bytes) and the CMAC subkeys K1, K2.
    alignas(16) std::uint8_t round_keys_[11 * 16]{};
    alignas(16) std::uint8_t k1_[16]{};
    alignas(16) std::uint8_t k2_[16]{};
    SipKey secret_{};
    Prf prf_ = Prf::siphash;
    bool seeded_ = false;
    std::array<Entry, kEntries> entries_{};
    std::array<std::uint8_t, kEntries / kWays> recent_{};  // way used last, per set
};

}  // namespace apikey
