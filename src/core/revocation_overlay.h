// Key ids revoked through the cluster channel, kept in the key zone's shared
// memory so that one revocation takes effect on every worker of the node at
// once. The request path asks the overlay only after it has found the key's
// record, and only ever to refuse it: the overlay can take access away, never
// grant it.
//
// Many processes read, one writer (worker 0's sync process, under a lock the
// caller holds) writes. Readers never lock, allocate or make a system call:
//   - Two buffers, each an open-addressing hash table of fixed slots with
//     linear probing. One word in the header names the active buffer (and
//     holds its entry count, so "is anything revoked at all?" is one load).
//   - A new revocation is appended to the active buffer in place: the slot's
//     id and time are written first and its hash word last, with release
//     order, so a reader that sees the hash sees the rest. Slots are never
//     moved or emptied in the active buffer, so an append cannot make a
//     reader miss an entry that was there before.
//   - An existing entry's time can only move earlier (one atomic store):
//     revocations only ever get earlier, never undone by the channel.
//   - Dropping entries (retain, after a new key table no longer has the key)
//     rewrites the other, inactive buffer and then flips the active word.
//     Each buffer has a sequence word, odd while it is rewritten; a reader
//     that raced with a rewrite of the buffer it was probing sees the word
//     change and starts over from the active word. After a few such races it
//     answers "revoked": failing closed costs one request a 401, failing open
//     would let a revoked key through.
// Everything a reader can touch is read and written with atomic builtins
// (shm_atomic.h), so a reader that races with a rewrite reads stale values,
// never undefined ones, and the sequence check throws them away.
//
// The memory holds offsets only (slots are found by index from the header),
// so it works at any address each process maps the zone at.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string_view>
#include <type_traits>

namespace apikey {

// Key ids are is_identifier()s of the key file: at most 128 bytes.
constexpr std::size_t kMaxRevokedId = 128;
// The channel's revocations file holds at most this many (channel_store.h);
// the overlay never needs more. Bounds revocation_overlay_bytes() too.
constexpr std::uint32_t kMaxRevocationCapacity = 1000000;

struct RevocationSlot {
    std::uint64_t hash;  // of the id, never 0; 0: empty. Stored last, with release order
    std::int64_t at;     // unix seconds; only ever lowered
    std::uint32_t id_len;
    std::uint32_t reserved;
    // The id's bytes, zero-padded, as words: readers compare them with atomic
    // loads (a rewrite may be under way), which want naturally aligned words.
    std::uint64_t id[kMaxRevokedId / 8];
};
static_assert(std::is_trivially_copyable_v<RevocationSlot>);
static_assert(sizeof(RevocationSlot) == 152);

struct RevocationBuffer {
    std::uint64_t seq;  // even: stable; odd: being rewritten. Only grows
    std::uint64_t reserved;
    // table_size RevocationSlots follow
};
static_assert(std::is_trivially_copyable_v<RevocationBuffer>);

struct RevocationOverlayHeader {
    std::uint64_t magic;
    std::uint32_t capacity;    // entries the overlay accepts
    std::uint32_t table_size;  // slots per buffer: a power of two, capacity <= 3/4 of it
    // Bit 0: the active buffer; bits 32..63: its entry count. One word, so a
    // flip changes both at once and an empty overlay costs readers one load.
    std::uint64_t current;
    std::uint64_t unsure;  // lookups answered "revoked" for want of a consistent read
    std::uint64_t reserved[4];
    // buffer 0 (RevocationBuffer + slots), then buffer 1
};
static_assert(std::is_trivially_copyable_v<RevocationOverlayHeader>);
static_assert(sizeof(RevocationOverlayHeader) % 8 == 0);

// Bytes for the header and both buffers; 0 when capacity is 0 or above
// kMaxRevocationCapacity.
std::size_t revocation_overlay_bytes(std::uint32_t capacity) noexcept;

// Formats revocation_overlay_bytes(capacity) bytes of 8-byte aligned memory
// that no process reads yet (a new zone). Does nothing for a capacity
// revocation_overlay_bytes() refuses.
void revocation_overlay_format(void *memory, std::uint32_t capacity) noexcept;

// Whether memory holds an overlay of this capacity (a reload that reuses the
// zone keeps it, and with it the revocations).
bool revocation_overlay_valid(const void *memory, std::uint32_t capacity) noexcept;

// The hash the overlay files an id under (never 0). Not a secret and not
// meant to be one: ids are compared in full, and they come from signed
// channel entries, not from clients. Exposed so tests can build collisions.
std::uint64_t revocation_id_hash(std::string_view key_id) noexcept;

// A view over formatted (or valid) memory; cheap to copy, one per process.
class RevocationOverlay {
public:
    enum class Check {
        clear,    // not revoked (absent, or revoked only from a later time)
        revoked,  // revoked at or before now
        unsure,   // no consistent read after kReadTries: treat as revoked
    };
    enum class Add {
        added,
        earlier,  // already there; its time moved earlier
        already,  // already there at this time or an earlier one
        full,     // capacity entries already: nothing changed
        invalid,  // an id of 0 or more than kMaxRevokedId bytes
    };
    // Reads that race with a rewrite of the buffer they probe are retried
    // from the active word this many times in all. A rewrite takes a whole
    // retain(), so losing more than one race in a row needs the writer to
    // rewrite the table twice during one lookup.
    static constexpr unsigned kReadTries = 4;

    RevocationOverlay() noexcept = default;
    explicit RevocationOverlay(void *memory) noexcept;
    bool attached() const noexcept { return header_ != nullptr; }

    // ---- request path: lock-free, no allocation, no system call ----

    // Whether key_id is revoked at or before now (unix seconds); *at (if not
    // null) gets the revocation time, or now when the answer is unsure.
    Check check(std::string_view key_id, std::int64_t now, std::int64_t *at) const noexcept;
    // check() != clear: unsure fails closed.
    bool revoked(std::string_view key_id, std::int64_t now, std::int64_t *at) const noexcept {
        return check(key_id, now, at) != Check::clear;
    }

    std::uint32_t size() const noexcept;
    bool empty() const noexcept { return size() == 0; }
    std::uint32_t capacity() const noexcept { return header_->capacity; }
    // How many lookups failed closed (for api_key_status).
    std::uint64_t unsure_answers() const noexcept;

    // ---- writer: one thread at a time, under the caller's lock ----

    // Key ids of 1..kMaxRevokedId bytes, any bytes at all (the glue checks
    // is_identifier()).
    Add add(std::string_view key_id, std::int64_t at) noexcept;

    // After a new key table is installed: keeps only the entries for which
    // keep(id, at) is true, by rewriting the inactive buffer and flipping to
    // it. Nothing else drops entries. keep must not throw.
    void retain(const std::function<bool(std::string_view id, std::int64_t at)> &keep) noexcept;

    // Every entry of the active buffer (status, persistence); f must not throw.
    void for_each(
        const std::function<void(std::string_view id, std::int64_t at)> &f) const noexcept;

private:
    RevocationBuffer *buffer(std::uint64_t index) const noexcept;
    RevocationSlot *slots(RevocationBuffer *buffer) const noexcept {
        return reinterpret_cast<RevocationSlot *>(buffer + 1);
    }

    RevocationOverlayHeader *header_ = nullptr;
};

}  // namespace apikey
