// What a key zone that follows a channel (api_key_zone ... sync= channel=)
// keeps in its shared memory, so that a reload keeps it and every worker
// sees it: the stream position, the newest published version applied, when
// the stream was last read (staleness), statistics for api_key_status, and
// the revocation overlay (revocation_overlay.h) the request path checks.
//
// One sync process at a time writes it (the `owner` lock: a reload's old and
// new worker 0 may both run one for a moment); everyone else only reads the
// words, through shm_atomic.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

#include "shared_tables.h"

namespace apikey {

constexpr std::size_t kChannelMessageBytes = 256;
constexpr std::size_t kStreamIdBytes = 48;  // "<ms>-<seq>": at most 41 characters

struct ChannelState {
    std::uint64_t magic;
    std::uint32_t overlay_capacity;
    std::uint32_t reserved;
    std::uint64_t owner;           // owner_lock: the sync process following the channel
    std::uint64_t loaded_version;  // newest published version applied (0: none)
    std::int64_t last_read_ms;     // monotonic ms of the last successful read (0: never)
    std::int64_t since_ms;         // monotonic ms when this node began to follow
    FileIdentity local_file;       // the file= version a published one superseded: check= skips it
    std::uint64_t versions_installed;
    std::uint64_t revocations_applied;
    std::uint64_t entries_refused;
    std::uint64_t versions_ignored;      // equal or older versions (normal when catching up)
    std::uint64_t message_seq;           // odd while `message` is being written
    char message[kChannelMessageBytes];  // the last refusal or failure (never key material)
    char last_id[kStreamIdBytes];        // stream position, the owner's only
    // the revocation overlay follows, 8-byte aligned
};
static_assert(std::is_trivially_copyable_v<ChannelState>);

// Bytes for the state and an overlay of `overlay_capacity` revocations.
std::size_t channel_state_bytes(std::uint32_t overlay_capacity) noexcept;

// The overlay capacity a key zone of `zone_bytes` gives its channel: 1/16
// of the zone (an entry takes about 600 bytes: two buffers of slots kept
// at most 3/4 full), at least 64 and at most 65,536 revocations.
std::uint32_t channel_overlay_capacity(std::size_t zone_bytes) noexcept;

// Formats `memory` (channel_state_bytes) for a new zone.
ChannelState *channel_state_format(void *memory, std::uint32_t overlay_capacity,
                                   std::int64_t now_ms) noexcept;
// A reload that reuses the zone finds the state again: checked, not trusted.
bool channel_state_valid(const ChannelState *state, std::uint32_t overlay_capacity) noexcept;

void *channel_overlay_memory(ChannelState *state) noexcept;

// Records a message for the log (the worker's timer logs each new one once).
void channel_set_message(ChannelState *state, std::string_view text) noexcept;
// Copies the message out when it is not being written; its sequence number,
// 0 when there was none or it could not be read consistently.
std::uint64_t channel_read_message(const ChannelState *state,
                                   char (&out)[kChannelMessageBytes]) noexcept;

// Stale: nothing read from the stream for stale_ms (counted from when the
// node began to follow if it never read).
bool channel_stale(const ChannelState *state, std::int64_t now_ms, std::int64_t stale_ms) noexcept;

}  // namespace apikey
