// SHA-256 of presented keys and the "sha256:<hex>" spelling of the key file.
#include <gtest/gtest.h>

#include <string>

#include "core/digest.h"

namespace apikey {
namespace {

std::string hex_of(const Digest &d) {
    char out[71];
    format_digest(d, out);
    return std::string(out, sizeof out);
}

// FIPS 180-2 / NIST known-answer vectors, checked against coreutils sha256sum.
TEST(Sha256, EmptyString) {
    EXPECT_EQ(hex_of(sha256("")),
              "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Sha256, Abc) {
    EXPECT_EQ(hex_of(sha256("abc")),
              "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Sha256, TwoBlockMessage) {
    EXPECT_EQ(hex_of(sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
              "sha256:248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Sha256, OneMillionA) {
    EXPECT_EQ(hex_of(sha256(std::string(1000000, 'a'))),
              "sha256:cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, TypicalKey) {
    // printf 'jfi_sk_live_abcdefghijklmnop' | sha256sum
    EXPECT_EQ(hex_of(sha256("jfi_sk_live_abcdefghijklmnop")),
              "sha256:ac1e6e66e795b4df08c0771e54c08c29c4d8134c43e9e969236ab7b08bb972f9");
}

TEST(Sha256, HashesEmbeddedNulAndHighBytes) {
    // The length comes from the view, not from a terminator.
    EXPECT_NE(sha256(std::string_view("a\0b", 3)), sha256("a"));
    // printf '\xff' | sha256sum
    EXPECT_EQ(hex_of(sha256("\xff")),
              "sha256:a8100ae6aa1940d0b663bb31cd466142ebbdbd5187131b92d93818987832eb89");
}

TEST(ParseDigest, AcceptsCanonicalForm) {
    Digest d{};
    ASSERT_TRUE(
        parse_digest("sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", d));
    EXPECT_EQ(d, sha256("abc"));
    EXPECT_EQ(d[0], 0xba);
    EXPECT_EQ(d[1], 0x78);
    EXPECT_EQ(d[31], 0xad);
}

TEST(ParseDigest, AcceptsAllZeroAndAllF) {
    Digest d{};
    d.fill(0x55);
    ASSERT_TRUE(parse_digest("sha256:" + std::string(64, '0'), d));
    for (auto b : d) EXPECT_EQ(b, 0);
    ASSERT_TRUE(parse_digest("sha256:" + std::string(64, 'f'), d));
    for (auto b : d) EXPECT_EQ(b, 0xff);
}

TEST(ParseDigest, RejectsUpperCaseHex) {
    Digest d{};
    EXPECT_FALSE(
        parse_digest("sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD", d));
    // A single upper-case digit anywhere is enough.
    EXPECT_FALSE(
        parse_digest("sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015aD", d));
    EXPECT_FALSE(parse_digest("sha256:A" + std::string(63, '0'), d));
}

TEST(ParseDigest, RejectsWrongLength) {
    Digest d{};
    EXPECT_FALSE(parse_digest("sha256:" + std::string(63, 'a'), d));
    EXPECT_FALSE(parse_digest("sha256:" + std::string(65, 'a'), d));
    EXPECT_FALSE(parse_digest("sha256:" + std::string(62, 'a'), d));
    EXPECT_FALSE(parse_digest("sha256:" + std::string(128, 'a'), d));
    EXPECT_FALSE(parse_digest("sha256:", d));
    EXPECT_FALSE(parse_digest("", d));
}

TEST(ParseDigest, RejectsWrongPrefix) {
    Digest d{};
    const std::string hex(64, 'a');
    EXPECT_FALSE(parse_digest(hex, d));  // no prefix at all
    EXPECT_FALSE(parse_digest("SHA256:" + hex, d));
    EXPECT_FALSE(parse_digest("sha512:" + hex, d));
    EXPECT_FALSE(parse_digest("sha256-" + hex, d));
    EXPECT_FALSE(parse_digest("sha256 " + hex, d));
    EXPECT_FALSE(parse_digest(" sha256:" + hex.substr(1), d));  // right length, wrong prefix
}

TEST(ParseDigest, RejectsNonHexCharacters) {
    Digest d{};
    for (char c : {'g', 'G', 'z', ' ', ':', '-', '/', '@', '`', '\0'}) {
        std::string text = "sha256:" + std::string(64, '0');
        text[7 + 10] = c;
        EXPECT_FALSE(parse_digest(text, d)) << "byte " << static_cast<int>(c);
    }
}

TEST(FormatDigest, WritesExactly71Bytes) {
    char out[80];
    std::fill(std::begin(out), std::end(out), '#');
    format_digest(sha256(""), out);
    EXPECT_EQ(std::string(out, 71),
              "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    for (std::size_t i = 71; i < sizeof out; i++) EXPECT_EQ(out[i], '#') << i;
}

TEST(FormatDigest, RoundTripsThroughParse) {
    for (int i = 0; i < 256; i++) {
        const Digest original = sha256(std::string(static_cast<std::size_t>(i), 'k'));
        const std::string text = hex_of(original);
        Digest parsed{};
        ASSERT_TRUE(parse_digest(text, parsed)) << text;
        EXPECT_EQ(parsed, original);
        EXPECT_EQ(hex_of(parsed), text);
    }
    Digest every_byte{};
    for (std::size_t i = 0; i < every_byte.size(); i++) {
        every_byte[i] = static_cast<std::uint8_t>(i * 8 + 7);  // 0x07, 0x0f, ... 0xff
    }
    Digest parsed{};
    ASSERT_TRUE(parse_digest(hex_of(every_byte), parsed));
    EXPECT_EQ(parsed, every_byte);
}

}  // namespace
}  // namespace apikey
