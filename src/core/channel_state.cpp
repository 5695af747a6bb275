#include "channel_state.h"

#include <algorithm>
#include <cstring>
#include <new>

#include "revocation_overlay.h"
#include "shm_atomic.h"

namespace apikey {

namespace {

constexpr std::uint64_t kChannelMagic = 0x3143'4e41'4843'4b41ull;  // "AKCHANC1"

std::size_t header_bytes() noexcept { return (sizeof(ChannelState) + 7) & ~std::size_t{7}; }

}  // namespace

std::size_t channel_state_bytes(std::uint32_t overlay_capacity) noexcept {
    return header_bytes() + revocation_overlay_bytes(overlay_capacity);
}

std::uint32_t channel_overlay_capacity(std::size_t zone_bytes) noexcept {
    // The largest capacity whose overlay fits in 1/16 of the zone (its size
    // grows in steps: the slot tables are powers of two).
    constexpr std::uint32_t kMin = 64, kMax = 65536;
    const std::size_t budget = zone_bytes / 16;
    std::uint32_t lo = kMin, hi = kMax;
    if (revocation_overlay_bytes(kMin) > budget) return kMin;
    while (lo < hi) {
        const std::uint32_t mid = lo + (hi - lo + 1) / 2;
        if (revocation_overlay_bytes(mid) <= budget) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return lo;
}

ChannelState *channel_state_format(void *memory, std::uint32_t overlay_capacity,
                                   std::int64_t now_ms) noexcept {
    auto *state = new (memory) ChannelState{};
    state->overlay_capacity = overlay_capacity;
    state->since_ms = now_ms;
    std::memcpy(state->last_id, "0-0", 4);
    revocation_overlay_format(channel_overlay_memory(state), overlay_capacity);
    store_release(&state->magic, kChannelMagic);
    return state;
}

bool channel_state_valid(const ChannelState *state, std::uint32_t overlay_capacity) noexcept {
    if (state == nullptr || load_acquire(&state->magic) != kChannelMagic) return false;
    if (state->overlay_capacity != overlay_capacity) return false;
    if (std::memchr(state->last_id, '\0', sizeof state->last_id) == nullptr) return false;
    return revocation_overlay_valid(reinterpret_cast<const unsigned char *>(state) + header_bytes(),
                                    overlay_capacity);
}

void *channel_overlay_memory(ChannelState *state) noexcept {
    return reinterpret_cast<unsigned char *>(state) + header_bytes();
}

void channel_set_message(ChannelState *state, std::string_view text) noexcept {
    const std::uint64_t seq = load_relaxed(&state->message_seq);
    store_release(&state->message_seq, seq | 1);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    const std::size_t n = std::min(text.size(), kChannelMessageBytes - 1);
    for (std::size_t i = 0; i < n; i++) store_relaxed(&state->message[i], text[i]);
    store_relaxed(&state->message[n], '\0');
    store_release(&state->message_seq, (seq | 1) + 1);
}

std::uint64_t channel_read_message(const ChannelState *state,
                                   char (&out)[kChannelMessageBytes]) noexcept {
    const std::uint64_t before = load_acquire(&state->message_seq);
    if (before == 0 || (before & 1) != 0) return 0;
    for (std::size_t i = 0; i < kChannelMessageBytes; i++)
        out[i] = load_relaxed(&state->message[i]);
    out[kChannelMessageBytes - 1] = '\0';
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return load_relaxed(&state->message_seq) == before ? before : 0;
}

bool channel_stale(const ChannelState *state, std::int64_t now_ms, std::int64_t stale_ms) noexcept {
    std::int64_t last = load_acquire(&state->last_read_ms);
    if (last == 0) last = load_relaxed(&state->since_ms);
    return now_ms - last > stale_ms;
}

}  // namespace apikey
