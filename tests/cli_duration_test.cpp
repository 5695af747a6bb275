// apikeyctl's --expires: durations from now, or the key file's timestamps.
#include <gtest/gtest.h>

#include "cli/duration.h"
#include "core/timestamp.h"

namespace apikey::cli {
namespace {

TEST(CliDuration, Units) {
    EXPECT_EQ(parse_duration("90d"), 90 * 86400);
    EXPECT_EQ(parse_duration("12h"), 12 * 3600);
    EXPECT_EQ(parse_duration("30m"), 30 * 60);
    EXPECT_EQ(parse_duration("45s"), 45);
    EXPECT_EQ(parse_duration("2w"), 14 * 86400);
    EXPECT_EQ(parse_duration("1d12h"), 86400 + 12 * 3600);
    EXPECT_EQ(parse_duration("1h30m15s"), 3600 + 1800 + 15);
}

TEST(CliDuration, Rejected) {
    for (const char *bad : {"", "d", "90", "0d", "0h0m", "-1d", "+1d", "1x", "1.5d", "90 d", " 90d",
                            "90d ", "1D", "99999999999999999999d", "9999999w"}) {
        EXPECT_FALSE(parse_duration(bad).has_value()) << '"' << bad << '"';
    }
}

TEST(CliDuration, TimeOrDuration) {
    const std::int64_t now = 1793491200;  // 2026-11-01T00:00:00Z
    EXPECT_EQ(parse_time_or_duration("90d", now), now + 90 * 86400);
    EXPECT_EQ(parse_time_or_duration("2027-01-30T00:00:00Z", now),
              parse_timestamp("2027-01-30T00:00:00Z"));
    EXPECT_EQ(parse_time_or_duration("2027-01-30", now), parse_timestamp("2027-01-30"));
    EXPECT_EQ(parse_time_or_duration("2027-01-30T02:00:00+02:00", now),
              parse_timestamp("2027-01-30T00:00:00Z"));
    for (const char *bad : {"tomorrow", "2027-02-30", "2027-01-30T00:00:00", "1y"}) {
        EXPECT_FALSE(parse_time_or_duration(bad, now).has_value()) << bad;
    }
}

}  // namespace
}  // namespace apikey::cli
