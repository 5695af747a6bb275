// RFC 3339 timestamps of the key file. Expected epochs come from
// `date -u -d <text> +%s`.
#include <gtest/gtest.h>

#include <string>

#include "core/timestamp.h"

namespace apikey {
namespace {

std::string fmt(std::int64_t seconds) {
    char out[20];
    format_timestamp(seconds, out);
    return std::string(out, sizeof out);
}

TEST(ParseTimestamp, UtcWithZ) {
    EXPECT_EQ(parse_timestamp("1970-01-01T00:00:00Z"), 0);
    EXPECT_EQ(parse_timestamp("2026-11-01T00:00:00Z"), 1793491200);
    EXPECT_EQ(parse_timestamp("2027-01-30T00:00:00Z"), 1801267200);
    EXPECT_EQ(parse_timestamp("2026-11-20T10:00:00Z"), 1795168800);
    EXPECT_EQ(parse_timestamp("2024-12-31T23:59:59Z"), 1735689599);
    EXPECT_EQ(parse_timestamp("2038-01-19T03:14:08Z"), 2147483648);  // past 32-bit time_t
    EXPECT_EQ(parse_timestamp("9999-12-31T23:59:59Z"), 253402300799);
}

TEST(ParseTimestamp, LowerCaseSeparatorsAreAllowed) {
    // RFC 3339 section 5.6 permits lower-case "t" and "z".
    EXPECT_EQ(parse_timestamp("2026-11-20t10:00:00z"), 1795168800);
}

TEST(ParseTimestamp, PositiveOffsetIsSubtracted) {
    // 12:00 at +02:00 is 10:00 UTC.
    EXPECT_EQ(parse_timestamp("2024-06-15T12:00:00+02:00"), 1718445600);
    EXPECT_EQ(parse_timestamp("2024-06-15T12:00:00+02:00"),
              parse_timestamp("2024-06-15T10:00:00Z"));
}

TEST(ParseTimestamp, NegativeOffsetIsAdded) {
    // 12:00 at -05:30 is 17:30 UTC.
    EXPECT_EQ(parse_timestamp("2024-06-15T12:00:00-05:30"), 1718472600);
    EXPECT_EQ(parse_timestamp("2024-06-15T12:00:00-05:30"),
              parse_timestamp("2024-06-15T17:30:00Z"));
}

TEST(ParseTimestamp, ZeroOffsetsEqualZ) {
    EXPECT_EQ(parse_timestamp("2026-11-20T10:00:00+00:00"), 1795168800);
    EXPECT_EQ(parse_timestamp("2026-11-20T10:00:00-00:00"), 1795168800);
}

TEST(ParseTimestamp, OffsetCrossesDateAndYear) {
    // 2025-01-01T01:00:00+02:00 is 2024-12-31T23:00:00Z.
    EXPECT_EQ(parse_timestamp("2025-01-01T01:00:00+02:00"), 1735686000);
    // Times an offset moves out of 1970..9999 are refused, like the dates
    // themselves (found by fuzz/rate_timestamp_fuzz.cpp's round trip).
    EXPECT_EQ(parse_timestamp("1970-01-01T00:30:00+01:00"), std::nullopt);
    EXPECT_EQ(parse_timestamp("9999-12-31T23:59:59-01:00"), std::nullopt);
    EXPECT_EQ(parse_timestamp("1970-01-01T01:00:00+01:00"), 0);
}

TEST(ParseTimestamp, FractionsAreIgnored) {
    EXPECT_EQ(parse_timestamp("2026-11-20T10:00:00.5Z"), 1795168800);
    EXPECT_EQ(parse_timestamp("2026-11-20T10:00:00.999999999Z"), 1795168800);
    EXPECT_EQ(parse_timestamp("2026-11-20T10:00:00.123+02:00"), 1795168800 - 7200);
}

TEST(ParseTimestamp, BadFractionsAreRejected) {
    EXPECT_FALSE(parse_timestamp("2026-11-20T10:00:00.Z"));   // no digits
    EXPECT_FALSE(parse_timestamp("2026-11-20T10:00:00.5"));   // no zone
    EXPECT_FALSE(parse_timestamp("2026-11-20T10:00:00,5Z"));  // comma
    EXPECT_FALSE(parse_timestamp("2026-11-20T10:00:00.5xZ"));
}

TEST(ParseTimestamp, BareDateIsMidnightUtc) {
    EXPECT_EQ(parse_timestamp("2026-11-01"), 1793491200);
    EXPECT_EQ(parse_timestamp("1970-01-01"), 0);
    EXPECT_EQ(parse_timestamp("2024-02-29"), 1709164800);
}

TEST(ParseTimestamp, LeapDays) {
    EXPECT_EQ(parse_timestamp("2024-02-29T00:00:00Z"), 1709164800);
    EXPECT_EQ(parse_timestamp("2000-02-29T12:34:56Z"), 951827696);  // divisible by 400
    EXPECT_FALSE(parse_timestamp("2023-02-29T00:00:00Z"));
    EXPECT_FALSE(parse_timestamp("2023-02-29"));
    EXPECT_FALSE(parse_timestamp("2100-02-29T00:00:00Z"));  // divisible by 100, not 400
    EXPECT_FALSE(parse_timestamp("2024-02-30T00:00:00Z"));
    EXPECT_EQ(parse_timestamp("2100-03-01T00:00:00Z"), 4107542400);
}

TEST(ParseTimestamp, DayBoundsPerMonth) {
    EXPECT_TRUE(parse_timestamp("2026-01-31"));
    EXPECT_TRUE(parse_timestamp("2026-12-31"));
    EXPECT_FALSE(parse_timestamp("2026-04-31"));
    EXPECT_FALSE(parse_timestamp("2026-06-31"));
    EXPECT_FALSE(parse_timestamp("2026-09-31"));
    EXPECT_FALSE(parse_timestamp("2026-11-31"));
    EXPECT_FALSE(parse_timestamp("2026-01-32"));
    EXPECT_FALSE(parse_timestamp("2026-01-00"));
}

TEST(ParseTimestamp, MonthOutOfRange) {
    EXPECT_FALSE(parse_timestamp("2026-13-01T00:00:00Z"));
    EXPECT_FALSE(parse_timestamp("2026-00-01T00:00:00Z"));
    EXPECT_FALSE(parse_timestamp("2026-13-01"));
}

TEST(ParseTimestamp, TimeOfDayOutOfRange) {
    EXPECT_FALSE(parse_timestamp("2026-11-20T24:00:00Z"));
    EXPECT_FALSE(parse_timestamp("2026-11-20T23:60:00Z"));
    EXPECT_FALSE(parse_timestamp("2026-11-20T23:59:60Z"));
    EXPECT_EQ(parse_timestamp("2026-11-20T23:59:59Z"), 1795168800 + 13 * 3600 + 59 * 60 + 59);
}

TEST(ParseTimestamp, ZoneIsRequiredWithATime) {
    EXPECT_FALSE(parse_timestamp("2026-11-20T10:00:00"));
    EXPECT_FALSE(parse_timestamp("2026-11-20T10:00"));
    EXPECT_FALSE(parse_timestamp("2026-11-20T"));
}

TEST(ParseTimestamp, MalformedZones) {
    EXPECT_FALSE(parse_timestamp("2026-11-20T10:00:00+02"));
    EXPECT_FALSE(parse_timestamp("2026-11-20T10:00:00+0200"));
    EXPECT_FALSE(parse_timestamp("2026-11-20T10:00:00+2:00"));
    EXPECT_FALSE(parse_timestamp("2026-11-20T10:00:00+24:00"));
    EXPECT_FALSE(parse_timestamp("2026-11-20T10:00:00+02:60"));
    EXPECT_FALSE(parse_timestamp("2026-11-20T10:00:00+02:00x"));
    EXPECT_FALSE(parse_timestamp("2026-11-20T10:00:00ZZ"));
    EXPECT_FALSE(parse_timestamp("2026-11-20T10:00:00 Z"));
    EXPECT_FALSE(parse_timestamp("2026-11-20T10:00:00UTC"));
    EXPECT_FALSE(parse_timestamp("2026-11-20T10:00:00*02:00"));
}

TEST(ParseTimestamp, Garbage) {
    for (const char *text : {"",
                             "now",
                             "tomorrow",
                             "2026",
                             "2026-11",
                             "2026-1-01",
                             "26-11-20",
                             "2026/11/20",
                             "2026-11-20 10:00:00Z",
                             "2026-11-20X10:00:00Z",
                             "2026-11-20T10-00-00Z",
                             "2026-11-20T1:00:00Z",
                             "2026-11-2a",
                             "a026-11-20",
                             "1795168800",
                             "2026-11-20Z",
                             "2026-11-20x",
                             " 2026-11-20",
                             "2026-11-20 ",
                             "-2026-11-20T10:00:00Z"}) {
        EXPECT_FALSE(parse_timestamp(text)) << '"' << text << '"';
    }
}

TEST(ParseTimestamp, YearsBefore1970AreRejected) {
    EXPECT_FALSE(parse_timestamp("1969-12-31T23:59:59Z"));
    EXPECT_FALSE(parse_timestamp("0000-01-01"));
    EXPECT_FALSE(parse_timestamp("1900-01-01T00:00:00Z"));
}

TEST(FormatTimestamp, KnownValues) {
    EXPECT_EQ(fmt(0), "1970-01-01T00:00:00Z");
    EXPECT_EQ(fmt(1709164800), "2024-02-29T00:00:00Z");
    EXPECT_EQ(fmt(951827696), "2000-02-29T12:34:56Z");
    EXPECT_EQ(fmt(1735689599), "2024-12-31T23:59:59Z");
    EXPECT_EQ(fmt(253402300799), "9999-12-31T23:59:59Z");
    EXPECT_EQ(fmt(-1), "1969-12-31T23:59:59Z");
}

TEST(FormatTimestamp, WritesExactly20Bytes) {
    char out[24];
    std::fill(std::begin(out), std::end(out), '#');
    format_timestamp(1795168800, out);
    EXPECT_EQ(std::string(out, 20), "2026-11-20T10:00:00Z");
    for (std::size_t i = 20; i < sizeof out; i++) EXPECT_EQ(out[i], '#');
}

TEST(FormatTimestamp, RoundTrip) {
    for (const char *text :
         {"1970-01-01T00:00:00Z", "2024-02-29T23:59:59Z", "2026-11-01T00:00:00Z",
          "2027-01-30T00:00:00Z", "2099-12-31T12:00:01Z", "2400-02-29T06:07:08Z"}) {
        auto t = parse_timestamp(text);
        ASSERT_TRUE(t) << text;
        EXPECT_EQ(fmt(*t), text);
    }
    // Every day across four years (two leap days) and a century boundary.
    for (std::int64_t s = 1704067200 /* 2024-01-01 */; s < 1704067200 + 4 * 366 * 86400;
         s += 86400 + 3661) {
        const std::string text = fmt(s);
        EXPECT_EQ(parse_timestamp(text), s) << text;
    }
    for (std::int64_t s = 4102444800 - 400 * 86400 /* around 2100-01-01 */;
         s < 4102444800 + 400 * 86400; s += 86399) {
        const std::string text = fmt(s);
        EXPECT_EQ(parse_timestamp(text), s) << text;
    }
}

}  // namespace
}  // namespace apikey
