// Presented keys: syntax bounds, the Bearer scheme, and choosing the one key
// of a request.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "core/credential.h"

namespace apikey {
namespace {

TEST(WellFormedKey, LengthBounds) {
    EXPECT_EQ(kMinKeyLength, 16u);
    EXPECT_EQ(kMaxKeyLength, 256u);
    EXPECT_FALSE(is_well_formed_key(""));
    EXPECT_FALSE(is_well_formed_key(std::string(1, 'a')));
    EXPECT_FALSE(is_well_formed_key(std::string(15, 'a')));
    EXPECT_TRUE(is_well_formed_key(std::string(16, 'a')));
    EXPECT_TRUE(is_well_formed_key(std::string(17, 'a')));
    EXPECT_TRUE(is_well_formed_key(std::string(255, 'a')));
    EXPECT_TRUE(is_well_formed_key(std::string(256, 'a')));
    EXPECT_FALSE(is_well_formed_key(std::string(257, 'a')));
    EXPECT_FALSE(is_well_formed_key(std::string(4096, 'a')));
}

TEST(WellFormedKey, AcceptsTheB64TokenAlphabet) {
    EXPECT_TRUE(is_well_formed_key("abcdefghijklmnopqrstuvwxyz"));
    EXPECT_TRUE(is_well_formed_key("ABCDEFGHIJKLMNOPQRSTUVWXYZ"));
    EXPECT_TRUE(is_well_formed_key("0123456789012345"));
    EXPECT_TRUE(is_well_formed_key("jfi_sk_live_AbC123xyz789"));
    EXPECT_TRUE(is_well_formed_key("wfk_0123456789abcdef"));
    EXPECT_TRUE(is_well_formed_key("a-b.c_d~e+f/gh=="));
    EXPECT_TRUE(is_well_formed_key("dGhpcyBpcyBhIHRlc3Q="));  // base64
}

TEST(WellFormedKey, RejectsEveryOtherByte) {
    const std::string allowed =
        "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-._~+/";
    for (int c = 0; c < 256; c++) {
        std::string key(20, 'k');
        key[7] = static_cast<char>(c);
        const bool expected = c != 0 && allowed.find(static_cast<char>(c)) != std::string::npos;
        EXPECT_EQ(is_well_formed_key(key), expected) << "byte " << c;
    }
}

TEST(WellFormedKey, PaddingOnlyAtTheEnd) {
    EXPECT_TRUE(is_well_formed_key("abcdefghijklmnop="));
    EXPECT_TRUE(is_well_formed_key("abcdefghijklmnop=="));
    EXPECT_FALSE(is_well_formed_key("abcdefgh=ijklmnop"));
    EXPECT_FALSE(is_well_formed_key("================"));
}

TEST(WellFormedKey, RejectsBadByteAtEitherEnd) {
    EXPECT_FALSE(is_well_formed_key(" abcdefghijklmnop"));
    EXPECT_FALSE(is_well_formed_key("abcdefghijklmnop "));
    EXPECT_FALSE(is_well_formed_key("abcdefghijklmnop\n"));
    EXPECT_FALSE(is_well_formed_key(std::string_view("abcdefghijklmnop\0", 17)));
    EXPECT_FALSE(is_well_formed_key("abcdefghijklmnop\xc3\xa9"));  // UTF-8 é
}

struct BearerCase {
    const char *header;
    BearerParse expected;
    const char *token;  // when expected == token
};

TEST(ParseBearer, Table) {
    const BearerCase cases[] = {
        {"Bearer abc", BearerParse::token, "abc"},
        {"bearer abc", BearerParse::token, "abc"},
        {"BEARER abc", BearerParse::token, "abc"},
        {"BeArEr abc", BearerParse::token, "abc"},
        {"Bearer\tabc", BearerParse::token, "abc"},
        {"Bearer \t  abc", BearerParse::token, "abc"},
        {"  Bearer abc  ", BearerParse::token, "abc"},
        {"\tBearer abc\t", BearerParse::token, "abc"},
        {"Bearer jfi_sk_live_0123456789", BearerParse::token, "jfi_sk_live_0123456789"},
        {"Bearer a b", BearerParse::token, "a b"},  // inner blanks stay; the syntax check refuses
        {"Bearer", BearerParse::empty_token, ""},
        {"bearer", BearerParse::empty_token, ""},
        {"Bearer ", BearerParse::empty_token, ""},
        {"Bearer \t ", BearerParse::empty_token, ""},
        {"  BEARER\t", BearerParse::empty_token, ""},
        {"Bearerxyz", BearerParse::not_bearer, nullptr},
        {"Bearer:abc", BearerParse::not_bearer, nullptr},
        {"Bearer,abc", BearerParse::not_bearer, nullptr},
        {"Basic dXNlcjpwYXNz", BearerParse::not_bearer, nullptr},
        {"Basic", BearerParse::not_bearer, nullptr},
        {"Token abc", BearerParse::not_bearer, nullptr},
        {"Bear abc", BearerParse::not_bearer, nullptr},
        {"Beare", BearerParse::not_bearer, nullptr},
        {"abcdefghijklmnopqr", BearerParse::not_bearer, nullptr},
        {"", BearerParse::not_bearer, nullptr},
        {"   ", BearerParse::not_bearer, nullptr},
        {"xBearer abc", BearerParse::not_bearer, nullptr},
        {"Bearer\nabc", BearerParse::not_bearer, nullptr},  // only space and tab are blanks
        // clang-format off
        {"B\xe5" "arer abc", BearerParse::not_bearer, nullptr},
        // clang-format on
    };
    for (const BearerCase &c : cases) {
        std::string_view token = "untouched";
        const BearerParse got = parse_bearer(c.header, token);
        EXPECT_EQ(static_cast<int>(got), static_cast<int>(c.expected)) << '"' << c.header << '"';
        if (c.expected != BearerParse::not_bearer && got == c.expected) {
            EXPECT_EQ(token, c.token) << '"' << c.header << '"';
        }
    }
}

TEST(ParseBearer, TokenPointsIntoTheHeader) {
    const std::string header = "Bearer  wfk_0123456789abcdef ";
    std::string_view token;
    ASSERT_EQ(parse_bearer(header, token), BearerParse::token);
    EXPECT_EQ(token, "wfk_0123456789abcdef");
    EXPECT_EQ(token.data(), header.data() + 8);
}

using State = KeyCollector::State;

// The first implementation, one byte at a time: the faster one must agree
// with it on every input.
BearerParse reference_parse_bearer(std::string_view value, std::string_view &token) {
    auto blank = [](char c) { return c == ' ' || c == '\t'; };
    auto trim = [&](std::string_view v) {
        while (!v.empty() && blank(v.front())) v.remove_prefix(1);
        while (!v.empty() && blank(v.back())) v.remove_suffix(1);
        return v;
    };
    constexpr std::string_view scheme = "bearer";
    value = trim(value);
    if (value.size() < scheme.size()) return BearerParse::not_bearer;
    for (std::size_t i = 0; i < scheme.size(); i++) {
        if ((value[i] | 0x20) != scheme[i]) return BearerParse::not_bearer;
    }
    std::string_view rest = value.substr(scheme.size());
    if (!rest.empty() && !blank(rest.front())) return BearerParse::not_bearer;
    token = trim(rest);
    return token.empty() ? BearerParse::empty_token : BearerParse::token;
}

TEST(ParseBearer, AgreesWithTheBytewiseParser) {
    // Letters of the scheme in both cases, their neighbours under OR 0x20,
    // blanks and a few others, in random strings of 0 to 14 bytes.
    static const char kBytes[] = "bBeEaArR \tx\x02\x05\x01\x12\x42\x62k=\0";
    const std::string alphabet(kBytes, sizeof kBytes);  // the final NUL included
    std::uint64_t state = 0x9e3779b97f4a7c15ull;
    auto next = [&state] {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        return state;
    };
    std::string buf;
    for (int n = 0; n < 300000; n++) {
        buf.clear();
        const std::size_t len = next() % 15;
        if (next() % 4 == 0) buf = (next() % 2) ? "Bearer" : "bEaReR";
        while (buf.size() < len) buf += alphabet[next() % alphabet.size()];
        std::string_view got_token, want_token;
        const BearerParse got = parse_bearer(buf, got_token);
        const BearerParse want = reference_parse_bearer(buf, want_token);
        ASSERT_EQ(static_cast<int>(got), static_cast<int>(want)) << "\"" << buf << "\"";
        if (want == BearerParse::token) {
            ASSERT_EQ(got_token.data(), want_token.data()) << buf;
            ASSERT_EQ(got_token.size(), want_token.size()) << buf;
        }
    }
}

TEST(KeyCollector, NothingOffered) {
    KeyCollector c;
    EXPECT_EQ(c.state(), State::none);
    EXPECT_TRUE(c.key().empty());
}

TEST(KeyCollector, OneKey) {
    KeyCollector c;
    c.offer("wfk_0123456789abcdef");
    EXPECT_EQ(c.state(), State::one);
    EXPECT_EQ(c.key(), "wfk_0123456789abcdef");
}

TEST(KeyCollector, SameKeyTwiceIsStillOne) {
    // Different buffers with equal contents: compared by value.
    const std::string a = "wfk_0123456789abcdef";
    const std::string b = "wfk_0123456789abcdef";
    KeyCollector c;
    c.offer(a);
    c.offer(b);
    c.offer(a);
    EXPECT_EQ(c.state(), State::one);
    EXPECT_EQ(c.key(), "wfk_0123456789abcdef");
}

TEST(KeyCollector, DifferentKeysAreMultiple) {
    KeyCollector c;
    c.offer("wfk_0123456789abcdef");
    c.offer("wfk_0123456789abcdeg");
    EXPECT_EQ(c.state(), State::multiple);
    // Further offers, even of the first key again, do not undo it.
    c.offer("wfk_0123456789abcdef");
    EXPECT_EQ(c.state(), State::multiple);
    c.offer_malformed();
    EXPECT_EQ(c.state(), State::multiple);
}

TEST(KeyCollector, FirstKeyIsKeptWhenAmbiguous) {
    KeyCollector c;
    c.offer("first_key_0123456789");
    c.offer("second_key_012345678");
    EXPECT_EQ(c.key(), "first_key_0123456789");
}

TEST(KeyCollector, MalformedAlone) {
    KeyCollector c;
    c.offer_malformed();
    EXPECT_EQ(c.state(), State::malformed);
    c.offer_malformed();  // the same empty "Bearer " seen again
    EXPECT_EQ(c.state(), State::malformed);
}

TEST(KeyCollector, MalformedThenKeyIsMultiple) {
    KeyCollector c;
    c.offer_malformed();
    c.offer("wfk_0123456789abcdef");
    EXPECT_EQ(c.state(), State::multiple);
}

TEST(KeyCollector, KeyThenMalformedIsMultiple) {
    KeyCollector c;
    c.offer("wfk_0123456789abcdef");
    c.offer_malformed();
    EXPECT_EQ(c.state(), State::multiple);
}

TEST(KeyCollector, BearerAndHeaderTogether) {
    // What the glue does for "Authorization: Bearer K" plus "x-api-key: K".
    std::string_view token;
    ASSERT_EQ(parse_bearer("Bearer wfk_0123456789abcdef", token), BearerParse::token);
    KeyCollector same;
    same.offer(token);
    same.offer("wfk_0123456789abcdef");
    EXPECT_EQ(same.state(), State::one);

    KeyCollector differ;
    differ.offer(token);
    differ.offer("wfk_fedcba9876543210");
    EXPECT_EQ(differ.state(), State::multiple);
}

}  // namespace
}  // namespace apikey
