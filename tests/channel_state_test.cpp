#include "core/channel_state.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "core/revocation_overlay.h"

namespace apikey {
namespace {

struct Memory {
    explicit Memory(std::uint32_t capacity) : words(channel_state_bytes(capacity) / 8 + 1) {}
    void *data() { return words.data(); }
    std::vector<std::uint64_t> words;
};

TEST(ChannelState, FormatsAndIsFoundAgain) {
    Memory m(64);
    ChannelState *cs = channel_state_format(m.data(), 64, 1000);
    EXPECT_TRUE(channel_state_valid(cs, 64));
    EXPECT_FALSE(channel_state_valid(cs, 128));  // another zone size: not this state
    EXPECT_STREQ(cs->last_id, "0-0");
    EXPECT_EQ(cs->loaded_version, 0u);
    RevocationOverlay overlay(channel_overlay_memory(cs));
    EXPECT_TRUE(overlay.empty());
    EXPECT_EQ(overlay.capacity(), 64u);

    cs->magic ^= 1;
    EXPECT_FALSE(channel_state_valid(cs, 64));
    EXPECT_FALSE(channel_state_valid(nullptr, 64));
}

TEST(ChannelState, AnUnterminatedStreamIdIsNotTrusted) {
    Memory m(64);
    ChannelState *cs = channel_state_format(m.data(), 64, 0);
    std::memset(cs->last_id, '7', sizeof cs->last_id);
    EXPECT_FALSE(channel_state_valid(cs, 64));
}

TEST(ChannelState, OverlayCapacityGrowsWithTheZoneWithinBounds) {
    EXPECT_EQ(channel_overlay_capacity(0), 64u);
    EXPECT_EQ(channel_overlay_capacity(std::size_t{1} << 40), 65536u);
    const std::uint32_t at16m = channel_overlay_capacity(16u << 20);
    EXPECT_GT(at16m, 1000u);
    // The overlay takes at most about 1/16 of the zone.
    EXPECT_LE(channel_state_bytes(at16m), (16u << 20) / 16 + 4096);
}

TEST(ChannelState, MessagesAreReadWholeWithANewSequenceEachTime) {
    Memory m(64);
    ChannelState *cs = channel_state_format(m.data(), 64, 0);
    char out[kChannelMessageBytes];
    EXPECT_EQ(channel_read_message(cs, out), 0u);  // none yet

    channel_set_message(cs, "first");
    const std::uint64_t one = channel_read_message(cs, out);
    EXPECT_NE(one, 0u);
    EXPECT_STREQ(out, "first");

    channel_set_message(cs, std::string(1000, 'x'));  // cut to the buffer
    const std::uint64_t two = channel_read_message(cs, out);
    EXPECT_NE(two, one);
    EXPECT_EQ(std::strlen(out), kChannelMessageBytes - 1);

    cs->message_seq |= 1;  // a writer in the middle: not read
    EXPECT_EQ(channel_read_message(cs, out), 0u);
}

TEST(ChannelState, StaleCountsFromTheLastReadOrFromTheStart) {
    Memory m(64);
    ChannelState *cs = channel_state_format(m.data(), 64, 1000);
    EXPECT_FALSE(channel_stale(cs, 1000 + 10000, 10000));
    EXPECT_TRUE(channel_stale(cs, 1000 + 10001, 10000));  // never read since the start
    cs->last_read_ms = 50000;
    EXPECT_FALSE(channel_stale(cs, 60000, 10000));
    EXPECT_TRUE(channel_stale(cs, 60001, 10000));
}

}  // namespace
}  // namespace apikey
