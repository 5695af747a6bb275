#include "revocation_overlay.h"

#include <cstring>

#include "shm_atomic.h"

namespace apikey {

namespace {

constexpr std::uint64_t kMagic = 0x31564552'4b495041ull;  // "APIKREV1", little-endian
constexpr std::size_t kIdWords = kMaxRevokedId / 8;

// An id as the slots hold it: zero-padded words, so a comparison is at most
// 16 word loads and the hash mixes words, not bytes.
struct PaddedId {
    std::uint64_t words[kIdWords];
    std::uint32_t len;
    std::uint32_t used;  // words that hold id bytes
};

// Ids of at most kMaxRevokedId bytes.
PaddedId pad(std::string_view id) noexcept {
    PaddedId p{};
    p.len = static_cast<std::uint32_t>(id.size());
    p.used = static_cast<std::uint32_t>((id.size() + 7) / 8);
    if (!id.empty()) std::memcpy(p.words, id.data(), id.size());
    return p;
}

std::uint64_t hash_padded(const PaddedId &p) noexcept {
    std::uint64_t h = 0x9e3779b97f4a7c15ull ^ p.len;
    for (std::uint32_t i = 0; i < p.used; i++) {
        h = (h ^ p.words[i]) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
    }
    // murmur3's finalizer: the table index is the low bits, which the
    // multiplications above leave poorly mixed on their own.
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h != 0 ? h : 1;
}

// Slots per buffer: a power of two with capacity at most 3/4 of it, so that
// a table never fills (add refuses at capacity) and probe runs stay short.
std::uint32_t table_size_for(std::uint32_t capacity) noexcept {
    const std::uint64_t need = (std::uint64_t{capacity} * 4 + 2) / 3;
    std::uint64_t size = 8;
    while (size < need) size <<= 1;
    return static_cast<std::uint32_t>(size);
}

std::size_t buffer_bytes(std::uint32_t table_size) noexcept {
    return sizeof(RevocationBuffer) + std::size_t{table_size} * sizeof(RevocationSlot);
}

constexpr std::uint64_t make_current(std::uint64_t active, std::uint64_t count) noexcept {
    return active | count << 32;
}
constexpr std::uint64_t active_of(std::uint64_t current) noexcept { return current & 1; }
constexpr std::uint32_t count_of(std::uint64_t current) noexcept {
    return static_cast<std::uint32_t>(current >> 32);
}

bool same_id(const RevocationSlot &s, const PaddedId &id) noexcept {
    if (load_relaxed(&s.id_len) != id.len) return false;
    for (std::uint32_t i = 0; i < id.used; i++) {
        if (load_relaxed(&s.id[i]) != id.words[i]) return false;
    }
    return true;
}

// Every field a reader may load is stored atomically, even here where the
// slot is still empty: a reader probing a buffer that is being rewritten
// reads it (and then throws what it read away).
void fill(RevocationSlot &s, const PaddedId &id, std::uint64_t hash, std::int64_t at) noexcept {
    for (std::size_t i = 0; i < kIdWords; i++) store_relaxed(&s.id[i], id.words[i]);
    store_relaxed(&s.id_len, id.len);
    store_relaxed(&s.at, at);
    store_release(&s.hash, hash);  // last: a reader that sees it sees the rest
}

// The id of an occupied slot, into out (kMaxRevokedId bytes). Writer side.
std::string_view id_of(const RevocationSlot &s, char *out) noexcept {
    std::uint64_t words[kIdWords];
    for (std::size_t i = 0; i < kIdWords; i++) words[i] = load_relaxed(&s.id[i]);
    std::memcpy(out, words, kMaxRevokedId);
    std::uint32_t len = load_relaxed(&s.id_len);
    if (len > kMaxRevokedId) len = kMaxRevokedId;
    return std::string_view(out, len);
}

enum class Probe { absent, found, torn };

// Linear probing from the id's home slot until the id or an empty slot.
// Bounded by the table size: in a consistent buffer an empty slot comes
// sooner (at most 3/4 of the slots are used), so a run over every slot is a
// view torn by a rewrite.
Probe probe(const RevocationSlot *slots, std::uint32_t mask, const PaddedId &id, std::uint64_t hash,
            std::int64_t &at) noexcept {
    std::uint32_t pos = static_cast<std::uint32_t>(hash) & mask;
    for (std::uint32_t i = 0; i <= mask; i++, pos = (pos + 1) & mask) {
        const RevocationSlot &s = slots[pos];
        const std::uint64_t seen = load_acquire(&s.hash);
        if (seen == 0) return Probe::absent;
        if (seen != hash || !same_id(s, id)) continue;
        at = load_relaxed(&s.at);
        return Probe::found;
    }
    return Probe::torn;
}

}  // namespace

std::size_t revocation_overlay_bytes(std::uint32_t capacity) noexcept {
    if (capacity == 0 || capacity > kMaxRevocationCapacity) return 0;
    return sizeof(RevocationOverlayHeader) + 2 * buffer_bytes(table_size_for(capacity));
}

void revocation_overlay_format(void *memory, std::uint32_t capacity) noexcept {
    const std::size_t bytes = revocation_overlay_bytes(capacity);
    if (bytes == 0) return;
    // No reader yet: plain stores. Zero is an empty slot and an even sequence.
    std::memset(memory, 0, bytes);
    auto *header = static_cast<RevocationOverlayHeader *>(memory);
    header->capacity = capacity;
    header->table_size = table_size_for(capacity);
    header->current = make_current(0, 0);
    header->magic = kMagic;
}

bool revocation_overlay_valid(const void *memory, std::uint32_t capacity) noexcept {
    if (memory == nullptr || revocation_overlay_bytes(capacity) == 0) return false;
    const auto *header = static_cast<const RevocationOverlayHeader *>(memory);
    const std::uint64_t current = load_acquire(&header->current);
    return header->magic == kMagic && header->capacity == capacity &&
           header->table_size == table_size_for(capacity) && (current & 0xffffffffu) <= 1 &&
           count_of(current) <= capacity;
}

std::uint64_t revocation_id_hash(std::string_view key_id) noexcept {
    if (key_id.size() > kMaxRevokedId) key_id = key_id.substr(0, kMaxRevokedId);
    return hash_padded(pad(key_id));
}

RevocationOverlay::RevocationOverlay(void *memory) noexcept
    : header_(static_cast<RevocationOverlayHeader *>(memory)) {}

RevocationBuffer *RevocationOverlay::buffer(std::uint64_t index) const noexcept {
    auto *base = reinterpret_cast<unsigned char *>(header_) + sizeof(RevocationOverlayHeader);
    return reinterpret_cast<RevocationBuffer *>(base +
                                                (index & 1) * buffer_bytes(header_->table_size));
}

std::uint32_t RevocationOverlay::size() const noexcept {
    return header_ != nullptr ? count_of(load_acquire(&header_->current)) : 0;
}

std::uint64_t RevocationOverlay::unsure_answers() const noexcept {
    return load_relaxed(&header_->unsure);
}

RevocationOverlay::Check RevocationOverlay::check(std::string_view key_id, std::int64_t now,
                                                  std::int64_t *at) const noexcept {
    if (header_ == nullptr) return Check::clear;
    std::uint64_t current = load_acquire(&header_->current);
    if (count_of(current) == 0) return Check::clear;  // the common case: one load
    // Longer ids are never added; empty ones neither.
    if (key_id.empty() || key_id.size() > kMaxRevokedId) return Check::clear;
    const PaddedId id = pad(key_id);
    const std::uint64_t hash = hash_padded(id);
    const std::uint32_t mask = header_->table_size - 1;

    for (unsigned attempt = 0; attempt < kReadTries; attempt++) {
        if (attempt > 0) {
            cpu_relax();
            current = load_acquire(&header_->current);
            if (count_of(current) == 0) return Check::clear;
        }
        // The classic sequence-lock read (Boehm, "Can seqlocks get along
        // with programming language memory models?"): acquire the sequence,
        // read the data with relaxed (here: some acquire) loads, an acquire
        // fence, the sequence again. If any load saw a rewrite's store, the
        // rewrite's odd sequence, stored before its release fence, is what
        // the second read sees at least.
        RevocationBuffer *b = buffer(active_of(current));
        const std::uint64_t seq = load_acquire(&b->seq);
        if (seq & 1) continue;  // a stale buffer being rewritten: the active word moved on
        std::int64_t found_at = 0;
        const Probe result = probe(slots(b), mask, id, hash, found_at);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (load_relaxed(&b->seq) != seq || result == Probe::torn) continue;
        if (result == Probe::found && found_at <= now) {
            if (at != nullptr) *at = found_at;
            return Check::revoked;
        }
        return Check::clear;
    }
    fetch_add_relaxed(&header_->unsure, 1);
    if (at != nullptr) *at = now;
    return Check::unsure;
}

RevocationOverlay::Add RevocationOverlay::add(std::string_view key_id, std::int64_t at) noexcept {
    if (key_id.empty() || key_id.size() > kMaxRevokedId) return Add::invalid;
    const PaddedId id = pad(key_id);
    const std::uint64_t hash = hash_padded(id);
    const std::uint32_t mask = header_->table_size - 1;
    // The writer's own words: relaxed loads see its last stores.
    const std::uint64_t current = load_relaxed(&header_->current);
    RevocationSlot *table = slots(buffer(active_of(current)));

    std::uint32_t pos = static_cast<std::uint32_t>(hash) & mask;
    RevocationSlot *empty = nullptr;
    for (std::uint32_t i = 0; i <= mask; i++, pos = (pos + 1) & mask) {
        RevocationSlot &s = table[pos];
        const std::uint64_t seen = load_relaxed(&s.hash);
        if (seen == 0) {
            empty = &s;
            break;
        }
        if (seen != hash || !same_id(s, id)) continue;
        if (at >= load_relaxed(&s.at)) return Add::already;
        // Readers that load the old time get a consistent answer for the
        // moment before this store; any later load sees the new one.
        store_relaxed(&s.at, at);
        return Add::earlier;
    }
    const std::uint32_t count = count_of(current);
    // count < capacity < table size means an empty slot was found; the
    // second test only guards against a damaged zone.
    if (count >= header_->capacity || empty == nullptr) return Add::full;
    // The count first: a writer that dies between the two stores leaves a
    // count one too high (one entry refused too early, until the next
    // retain() recounts), never one too low, which could fill the table.
    store_release(&header_->current, make_current(active_of(current), count + 1));
    fill(*empty, id, hash, at);
    return Add::added;
}

void RevocationOverlay::retain(
    const std::function<bool(std::string_view id, std::int64_t at)> &keep) noexcept {
    const std::uint64_t current = load_relaxed(&header_->current);
    const std::uint64_t from = active_of(current);
    const std::uint64_t to = from ^ 1;
    const RevocationSlot *source = slots(buffer(from));
    RevocationBuffer *target = buffer(to);
    RevocationSlot *table = slots(target);
    const std::uint32_t size = header_->table_size;
    const std::uint32_t mask = size - 1;

    // Odd for the whole rewrite (a writer that died in the middle of one
    // may have left it odd already: it stays odd, and changes). The release
    // fence orders it before every store of the rewrite, for the readers'
    // sequence check.
    const std::uint64_t odd = load_relaxed(&target->seq) | 1;
    store_relaxed(&target->seq, odd);
    __atomic_thread_fence(__ATOMIC_RELEASE);

    for (std::uint32_t i = 0; i < size; i++) store_relaxed(&table[i].hash, std::uint64_t{0});
    std::uint32_t kept = 0;
    char text[kMaxRevokedId];
    for (std::uint32_t i = 0; i < size; i++) {
        const RevocationSlot &s = source[i];
        const std::uint64_t hash = load_relaxed(&s.hash);
        if (hash == 0) continue;
        const std::string_view id = id_of(s, text);
        const std::int64_t at = load_relaxed(&s.at);
        if (!keep(id, at)) continue;
        // The source has each id once and at most capacity entries, so no
        // duplicate check, and an empty slot soon (the bound only guards
        // against a damaged zone).
        std::uint32_t pos = static_cast<std::uint32_t>(hash) & mask;
        for (std::uint32_t n = 0; n < size && load_relaxed(&table[pos].hash) != 0; n++) {
            pos = (pos + 1) & mask;
        }
        if (load_relaxed(&table[pos].hash) != 0) continue;
        fill(table[pos], pad(id), hash, at);
        kept++;
    }

    store_release(&target->seq, odd + 1);
    // The flip: readers that load it find the rewritten buffer complete.
    store_release(&header_->current, make_current(to, kept));
}

void RevocationOverlay::for_each(
    const std::function<void(std::string_view id, std::int64_t at)> &f) const noexcept {
    const RevocationSlot *table = slots(buffer(active_of(load_relaxed(&header_->current))));
    char text[kMaxRevokedId];
    for (std::uint32_t i = 0; i < header_->table_size; i++) {
        const RevocationSlot &s = table[i];
        if (load_relaxed(&s.hash) == 0) continue;
        f(id_of(s, text), load_relaxed(&s.at));
    }
}

}  // namespace apikey
