#include "usage_table.h"

#include <cstring>
#include <new>

#include "shm_atomic.h"

namespace apikey {

namespace {

std::uint64_t hash_id(std::string_view id) noexcept {
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (char c : id) {
        h ^= static_cast<unsigned char>(c);
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h != 0 ? h : 1;
}

template <typename T>
T load(const char *p) noexcept {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// memcmp(a, b, n) == 0 for the short strings key ids are, without a call:
// word compares, the last one overlapping, never a read past either end.
bool same_bytes(const char *a, const char *b, std::size_t n) noexcept {
    if (n >= 8) {
        for (std::size_t i = 0; i + 8 < n; i += 8) {
            if (load<std::uint64_t>(a + i) != load<std::uint64_t>(b + i)) return false;
        }
        return load<std::uint64_t>(a + n - 8) == load<std::uint64_t>(b + n - 8);
    }
    if (n >= 4) {
        return load<std::uint32_t>(a) == load<std::uint32_t>(b) &&
               load<std::uint32_t>(a + n - 4) == load<std::uint32_t>(b + n - 4);
    }
    for (std::size_t i = 0; i < n; i++) {
        if (a[i] != b[i]) return false;
    }
    return true;
}

}  // namespace

UsageTable UsageTable::format(void *memory, std::size_t capacity) noexcept {
    auto *totals = new (memory) UsageTotals{};
    totals->capacity = capacity;
    auto *slots = reinterpret_cast<UsageSlot *>(totals + 1);
    for (std::size_t i = 0; i < capacity; i++) new (&slots[i]) UsageSlot{};
    return UsageTable(totals, slots);
}

UsageTable UsageTable::adopt(void *memory) noexcept {
    auto *totals = static_cast<UsageTotals *>(memory);
    return UsageTable(totals, reinterpret_cast<UsageSlot *>(totals + 1));
}

const UsageSlot *UsageTable::slot(std::uint64_t i) const noexcept {
    const UsageSlot &s = slots_[i];
    return load_acquire(&s.ready) ? &s : nullptr;
}

UsageSlot *UsageTable::find_or_claim(std::string_view key_id) noexcept {
    const std::uint64_t cap = totals_->capacity;
    if (cap == 0) return nullptr;
    if (key_id.size() > kMaxTrackedId) key_id = key_id.substr(0, kMaxTrackedId);
    const std::uint64_t h = hash_id(key_id);
    const std::uint64_t start = static_cast<std::uint64_t>(
        (static_cast<unsigned __int128>(h) * cap) >> 64);
    for (unsigned i = 0; i < kProbe && i < cap; i++) {
        UsageSlot &s = slots_[(start + i) % cap];
        std::uint64_t seen = load_acquire(&s.id_hash);
        if (seen == h) return &s;
        if (seen != 0) continue;
        if (compare_exchange(&s.id_hash, seen, h)) {
            std::memcpy(s.id, key_id.data(), key_id.size());
            s.id_len = static_cast<std::uint32_t>(key_id.size());
            store_release(&s.ready, 1);
            return &s;
        }
        if (seen == h) return &s;  // another process claimed it for the same key
    }
    return nullptr;
}

UsageSlot *UsageTable::slot_for(std::string_view key_id, std::uint64_t source) noexcept {
    if (key_id.size() > kMaxTrackedId) key_id = key_id.substr(0, kMaxTrackedId);
    Hint &hint = hint_for(key_id.data());
    // count() has tried the hint by its source. Slots are never given to
    // another id, so a hint whose slot holds the same text is still right.
    if (hint.id == key_id.data() && hint.slot->id_len == key_id.size() &&
        same_bytes(hint.slot->id, key_id.data(), key_id.size())) {
        return hint.slot;
    }
    UsageSlot *s = find_or_claim(key_id);
    // Only a slot whose id is written: the check above reads it.
    if (s != nullptr && load_acquire(&s->ready)) hint = {key_id.data(), source, s};
    return s;
}

}  // namespace apikey
