// "Nr/s", "Nr/m", "Nr/h", "Nr/d" rates of api_key_limit and the key file's
// limits, and how a refusal describes them.
#include <gtest/gtest.h>

#include <string>

#include "cli/record_writer.h"
#include "core/limit_policy.h"
#include "core/rate.h"

namespace apikey {
namespace {

void expect_rate(const char *text, std::uint32_t count, std::uint32_t period) {
    auto rate = parse_rate(text);
    ASSERT_TRUE(rate) << text;
    EXPECT_EQ(rate->count, count) << text;
    EXPECT_EQ(rate->period_seconds, period) << text;
}

// The former smoke test.
TEST(Rate, ParsesPerMinute) {
    auto rate = parse_rate("200r/m");
    ASSERT_TRUE(rate);
    EXPECT_EQ(rate->count, 200u);
    EXPECT_EQ(rate->period_seconds, 60u);
}

TEST(Rate, ParsesEachUnit) {
    expect_rate("1r/s", 1, 1);
    expect_rate("10r/s", 10, 1);
    expect_rate("500r/m", 500, 60);
    expect_rate("1000r/m", 1000, 60);
    expect_rate("5r/h", 5, 3600);
    expect_rate("86400r/h", 86400, 3600);
    expect_rate("1r/d", 1, 86400);
    expect_rate("50000r/d", 50000, 86400);
    expect_rate("1000000000r/d", 1000000000, 86400);
}

// The window takes milliseconds in 32 bits: a day fits.
TEST(Rate, LongestPeriodFitsTheWindow) {
    const auto rate = parse_rate("7r/d");
    ASSERT_TRUE(rate);
    EXPECT_LE(std::uint64_t{rate->period_seconds} * 1000, std::uint64_t{UINT32_MAX});
}

std::string described(Rate rate, std::string_view category) {
    char out[kMaxLimitDetail];
    return std::string(out, describe_limit(out, rate, category));
}

TEST(Rate, DescribedPerSecondMinuteHourDay) {
    EXPECT_EQ(described({1, 1}, "read"), "1 request per second for 'read' requests");
    EXPECT_EQ(described({1000, 60}, "read"), "1000 requests per minute for 'read' requests");
    EXPECT_EQ(described({5, 3600}, "write"), "5 requests per hour for 'write' requests");
    EXPECT_EQ(described({50000, 86400}, "write"), "50000 requests per day for 'write' requests");
    EXPECT_EQ(described({1, 86400}, "x"), "1 request per day for 'x' requests");
    // Never from parse_rate, but said plainly.
    EXPECT_EQ(described({3, 10}, "x"), "3 requests per 10 seconds for 'x' requests");
    // The longest fits the buffer whole.
    const std::string longest = described({1000000000, 86400}, std::string(128, 'c'));
    EXPECT_EQ(longest, "1000000000 requests per day for '" + std::string(128, 'c') + "' requests");
}

TEST(Rate, LeadingZerosAreJustDigits) { expect_rate("007r/m", 7, 60); }

TEST(Rate, ZeroIsRejected) {
    EXPECT_FALSE(parse_rate("0r/s"));
    EXPECT_FALSE(parse_rate("0r/m"));
    EXPECT_FALSE(parse_rate("000r/h"));
}

TEST(Rate, UpperBoundIsOneBillion) {
    expect_rate("1000000000r/s", 1000000000, 1);
    EXPECT_FALSE(parse_rate("1000000001r/s"));
    EXPECT_FALSE(parse_rate("4294967295r/s"));            // UINT32_MAX
    EXPECT_FALSE(parse_rate("4294967296r/s"));            // UINT32_MAX + 1 must not wrap to 0
    EXPECT_FALSE(parse_rate("4294967297r/s"));            // ... or to 1
    EXPECT_FALSE(parse_rate("18446744073709551617r/m"));  // 2^64 + 1 must not wrap
    EXPECT_FALSE(parse_rate(std::string(1000, '9') + "r/h"));
}

// apikeyctl writes a key's limits back in the same syntax, days included.
TEST(Rate, ApikeyctlWritesWhatItReads) {
    for (const char *text : {"5r/s", "500r/m", "3r/h", "50000r/d", "1000000000r/d"}) {
        const auto rate = parse_rate(text);
        ASSERT_TRUE(rate) << text;
        EXPECT_EQ(cli::format_rate(*rate), text);
    }
}

TEST(Rate, MissingR) {
    EXPECT_FALSE(parse_rate("10/s"));
    EXPECT_FALSE(parse_rate("10/m"));
    EXPECT_FALSE(parse_rate("10s"));
    EXPECT_FALSE(parse_rate("10"));
}

TEST(Rate, Garbage) {
    for (const char *text :
         {"",       "r/s",    "r/m",     "r/d",    "abc",     "10r",    "10r/",
          "10r/D",  "10r/w",  "10r/day", "10r/dd", "10r/S",   "10R/s",  "10r/sec",
          "10r/ss", "10r/mm", "10rs",    "10r\\s", " 10r/s",  "10r/s ", "10 r/s",
          "+10r/s", "-10r/s", "1.5r/s",  "1e3r/s", "0x10r/s", "10r/ s", "10r//s"}) {
        EXPECT_FALSE(parse_rate(text)) << '"' << text << '"';
    }
}

}  // namespace
}  // namespace apikey
