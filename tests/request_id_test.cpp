// X-Request-Id values.
#include <gtest/gtest.h>

#include <string>
#include <unordered_set>
#include <vector>

#include "core/request_id.h"

namespace apikey {
namespace {

std::string next_id(RequestIdGenerator &g) {
    char out[kRequestIdLength + 4];
    std::fill(std::begin(out), std::end(out), '#');
    g.next(out);
    for (std::size_t i = kRequestIdLength; i < sizeof out; i++) {
        EXPECT_EQ(out[i], '#') << "wrote past " << kRequestIdLength << " bytes";
    }
    return std::string(out, kRequestIdLength);
}

bool matches_format(const std::string &id) {  // ^req_[0-9a-z]{13}$
    if (id.size() != 17 || id.compare(0, 4, "req_") != 0) return false;
    for (std::size_t i = 4; i < id.size(); i++) {
        const char c = id[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z'))) return false;
    }
    return true;
}

TEST(RequestId, LengthIsPrefixPlus13) { EXPECT_EQ(kRequestIdLength, 4u + 13u); }

TEST(RequestId, FormatCheckerSelfTest) {
    EXPECT_TRUE(matches_format("req_0123456789abc"));
    EXPECT_FALSE(matches_format("req_0123456789ab"));
    EXPECT_FALSE(matches_format("req_0123456789abC"));
    EXPECT_FALSE(matches_format("rex_0123456789abc"));
    EXPECT_FALSE(matches_format("req_0123456789ab-"));
}

TEST(RequestId, Format) {
    for (std::uint64_t seed : {0ull, 1ull, 0xffffffffffffffffull, 0x123456789abcdefull}) {
        RequestIdGenerator g(seed);
        for (int i = 0; i < 1000; i++) {
            const std::string id = next_id(g);
            ASSERT_TRUE(matches_format(id)) << id;
        }
    }
}

// The ids one base-32 digit at a time, from the last: the pair table must
// not change a single id.
std::string reference_id(std::uint64_t &state) {
    static constexpr char digits[] = "0123456789abcdefghijklmnopqrstuv";
    state += 0x9e3779b97f4a7c15ull;
    std::uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    std::uint64_t v = z ^ (z >> 31);
    std::string out = "req_0000000000000";
    for (std::size_t i = kRequestIdLength - 1; i >= 4; i--) {
        out[i] = digits[v % 32];
        v /= 32;
    }
    return out;
}

TEST(RequestId, SameIdsAsOneDigitAtATime) {
    for (std::uint64_t seed : {0ull, 1ull, 7ull, 0xffffffffffffffffull, 0x123456789abcdefull}) {
        RequestIdGenerator g(seed);
        std::uint64_t state = seed;
        for (int i = 0; i < 20000; i++) ASSERT_EQ(next_id(g), reference_id(state)) << i;
    }
}

TEST(RequestId, HundredThousandAreUnique) {
    RequestIdGenerator g(0x5eed);
    std::unordered_set<std::string> seen;
    seen.reserve(100000);
    for (int i = 0; i < 100000; i++) {
        ASSERT_TRUE(seen.insert(next_id(g)).second) << "duplicate after " << i << " ids";
    }
}

TEST(RequestId, UsesEveryDigitEverywhere) {
    // Base 32: over many ids every one of [0-9a-v] shows up in each position
    // but the first (the top 4 bits: [0-9a-f]).
    RequestIdGenerator g(7);
    std::vector<std::unordered_set<char>> seen(kRequestIdLength);
    for (int i = 0; i < 5000; i++) {
        const std::string id = next_id(g);
        for (std::size_t k = 4; k < id.size(); k++) seen[k].insert(id[k]);
    }
    EXPECT_EQ(seen[4].size(), 16u);
    for (std::size_t k = 5; k < kRequestIdLength; k++) EXPECT_EQ(seen[k].size(), 32u) << k;
}

TEST(RequestId, ConsecutiveIdsLookUnrelated) {
    // A counter would leave most characters equal between neighbours.
    RequestIdGenerator g(0);
    std::string prev = next_id(g);
    for (int i = 0; i < 1000; i++) {
        const std::string id = next_id(g);
        int same = 0;
        for (std::size_t k = 5; k < id.size(); k++) same += id[k] == prev[k];  // skip the top digit
        EXPECT_LT(same, 8) << prev << " " << id;
        prev = id;
    }
}

TEST(RequestId, SameSeedSameSequence) {
    RequestIdGenerator a(42), b(42);
    for (int i = 0; i < 100; i++) EXPECT_EQ(next_id(a), next_id(b));
}

TEST(RequestId, DifferentSeedsGiveDifferentSequences) {
    RequestIdGenerator a(1), b(2);
    std::unordered_set<std::string> from_a;
    for (int i = 0; i < 10000; i++) from_a.insert(next_id(a));
    int shared = 0;
    for (int i = 0; i < 10000; i++) shared += from_a.count(next_id(b)) ? 1 : 0;
    EXPECT_EQ(shared, 0);

    RequestIdGenerator c(0), d(0xdeadbeefcafef00dull);
    EXPECT_NE(next_id(c), next_id(d));
}

}  // namespace
}  // namespace apikey
