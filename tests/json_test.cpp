// JSON string escaping into bounded buffers.
#include <gtest/gtest.h>

#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "core/json.h"
#include "support/strict_json.h"

namespace apikey {
namespace {

// The independent checker (tests/support/strict_json.h, tested in
// strict_json_test.cpp): decodes what json_escape writes and refuses anything
// a strict parser would refuse.
using strict_json::decode_string_body;
using strict_json::utf8_len;

std::string escape(const std::string &s) {
    std::vector<char> buf(json_escaped_max(s.size()) + 1);
    const std::size_t n = json_escape(s, buf.data());
    EXPECT_LE(n, json_escaped_max(s.size()));
    return std::string(buf.data(), n);
}

const std::string kReplacement = "\xef\xbf\xbd";  // U+FFFD in UTF-8

// ---- json_escape

TEST(JsonEscape, EmptyString) {
    char out[1] = {'#'};
    EXPECT_EQ(json_escape("", out), 0u);
    EXPECT_EQ(out[0], '#');
}

TEST(JsonEscape, PrintableAsciiPassesThrough) {
    std::string all;
    for (int c = 0x20; c < 0x7f; c++) {
        if (c != '"' && c != '\\') all += static_cast<char>(c);
    }
    EXPECT_EQ(escape(all), all);
    EXPECT_EQ(escape("diagrams:read"), "diagrams:read");
}

TEST(JsonEscape, QuoteAndBackslash) {
    EXPECT_EQ(escape("\""), "\\\"");
    EXPECT_EQ(escape("\\"), "\\\\");
    EXPECT_EQ(escape("a\"b\\c"), "a\\\"b\\\\c");
    EXPECT_EQ(escape("\"\"\\\\"), "\\\"\\\"\\\\\\\\");
}

TEST(JsonEscape, ControlBytesBecomeUnicodeEscapes) {
    for (int c = 0; c < 0x20; c++) {
        char expected[8];
        std::snprintf(expected, sizeof expected, "\\u%04x", c);
        EXPECT_EQ(escape(std::string(1, static_cast<char>(c))), expected) << c;
    }
    EXPECT_EQ(escape("\x7f"), "\\u007f");
    EXPECT_EQ(escape("a\nb\tc\r"), "a\\u000ab\\u0009c\\u000d");
    EXPECT_EQ(escape(std::string("\0x", 2)), "\\u0000x");
}

TEST(JsonEscape, ValidMultiByteUtf8PassesThrough) {
    for (const char *s : {
             "\xc3\xa9",                              // é U+00E9
             "\xc2\x80",                              // U+0080, smallest 2-byte
             "\xdf\xbf",                              // U+07FF, largest 2-byte
             "\xe0\xa0\x80",                          // U+0800, smallest 3-byte
             "\xe2\x82\xac",                          // € U+20AC
             "\xed\x9f\xbf",                          // U+D7FF, just below the surrogates
             "\xee\x80\x80",                          // U+E000, just above them
             "\xef\xbf\xbf",                          // U+FFFF
             "\xef\xbf\xbd",                          // U+FFFD itself
             "\xf0\x90\x80\x80",                      // U+10000, smallest 4-byte
             "\xf0\x9d\x84\x9e",                      // 𝄞 U+1D11E
             "\xf4\x8f\xbf\xbf",                      // U+10FFFF, the largest
             "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",  // 日本語
             "scope:\xc3\xa9t\xc3\xa9",
         }) {
        EXPECT_EQ(escape(s), s) << s;
    }
}

TEST(JsonEscape, SingleInvalidBytesBecomeReplacementEscapes) {
    for (int c = 0x80; c < 0x100; c++) {
        const std::string in(1, static_cast<char>(c));
        // Alone, no byte >= 0x80 is valid UTF-8.
        EXPECT_EQ(escape(in), "\\ufffd") << c;
        EXPECT_EQ(escape("a" + in + "b"), "a\\ufffdb") << c;
    }
}

TEST(JsonEscape, InvalidSequencesBecomeReplacementAndAreNotCopied) {
    struct Case {
        const char *what;
        std::string bytes;
    };
    const Case cases[] = {
        {"overlong 2-byte '/'", "\xc0\xaf"},
        {"overlong 2-byte C1", "\xc1\xbf"},
        {"overlong 3-byte", "\xe0\x80\xaf"},
        {"overlong 3-byte U+07FF", "\xe0\x9f\xbf"},
        {"overlong 4-byte", "\xf0\x80\x80\xaf"},
        {"overlong 4-byte U+FFFF", "\xf0\x8f\xbf\xbf"},
        {"high surrogate", "\xed\xa0\x80"},
        {"low surrogate", "\xed\xbf\xbf"},
        {"above U+10FFFF", "\xf4\x90\x80\x80"},
        {"F5 lead", "\xf5\x80\x80\x80"},
        {"truncated 2-byte", "\xc3"},
        {"truncated 3-byte", "\xe2\x82"},
        {"truncated 4-byte", "\xf0\x9d\x84"},
        {"lead then ASCII", "\xe2(x"},
        {"lead then lead", "\xc3\xc3"},
        {"lone continuation", "\x80\xbf"},
        {"5-byte form", "\xf8\x88\x80\x80\x80"},
    };
    for (const Case &c : cases) {
        const std::string in = "<" + c.bytes + ">";
        const std::string out = escape(in);
        auto decoded = decode_string_body(out);
        ASSERT_TRUE(decoded) << c.what << ": " << out;
        // Everything that is not ASCII came back as U+FFFD, at least once.
        std::string stripped;
        std::size_t replacements = 0;
        for (std::size_t i = 0; i < decoded->size();) {
            if (decoded->compare(i, 3, kReplacement) == 0) {
                replacements++;
                i += 3;
            } else {
                stripped += (*decoded)[i++];
            }
        }
        EXPECT_GE(replacements, 1u) << c.what;
        std::string ascii_of_input;
        for (char ch : in) {
            if (static_cast<unsigned char>(ch) < 0x80) ascii_of_input += ch;
        }
        EXPECT_EQ(stripped, ascii_of_input) << c.what;
        for (char ch : out) {
            EXPECT_LT(static_cast<unsigned char>(ch), 0x80) << c.what << ": raw byte copied";
        }
    }
}

TEST(JsonEscape, ValidAfterInvalidIsKept) {
    // An invalid byte does not swallow a valid character that follows it.
    EXPECT_EQ(escape("\xff\xc3\xa9"), "\\ufffd\xc3\xa9");
    EXPECT_EQ(escape("\xc3\xa9\xff"), "\xc3\xa9\\ufffd");
}

TEST(JsonEscape, MaxBoundIsSixPerByte) {
    EXPECT_EQ(json_escaped_max(0), 0u);
    EXPECT_EQ(json_escaped_max(1), 6u);
    EXPECT_EQ(json_escaped_max(128), 768u);
    // The bound is reached by all-control input, and by all-invalid input.
    EXPECT_EQ(escape(std::string(100, '\x01')).size(), json_escaped_max(100));
    EXPECT_EQ(escape(std::string(100, '\xff')).size(), json_escaped_max(100));
}

// Writes exactly the returned number of bytes, within json_escaped_max, and
// the result is always a valid JSON string: every single byte, every pair of
// bytes, and random strings.
void check_bounded_and_valid(const std::string &in) {
    const std::size_t max = json_escaped_max(in.size());
    std::vector<char> buf(max + 16, '#');
    const std::size_t n = json_escape(in, buf.data());
    ASSERT_LE(n, max);
    for (std::size_t i = n; i < buf.size(); i++) {
        ASSERT_EQ(buf[i], '#') << "wrote past the returned length at " << i;
    }
    ASSERT_TRUE(decode_string_body(std::string(buf.data(), n)))
        << "invalid JSON for input of " << in.size() << " bytes";
}

TEST(JsonEscape, AllOneAndTwoByteInputs) {
    for (int a = 0; a < 256; a++) {
        check_bounded_and_valid(std::string(1, static_cast<char>(a)));
        for (int b = 0; b < 256; b++) {
            const char pair[2] = {static_cast<char>(a), static_cast<char>(b)};
            check_bounded_and_valid(std::string(pair, 2));
            if (HasFatalFailure()) return;
        }
    }
}

TEST(JsonEscape, RandomInputs) {
    std::mt19937 rng(12345);
    std::uniform_int_distribution<int> byte(0, 255), len(0, 80), kind(0, 3);
    for (int round = 0; round < 20000; round++) {
        std::string s;
        const int n = len(rng);
        for (int i = 0; i < n; i++) {
            // Bias towards bytes that make UTF-8 interesting.
            switch (kind(rng)) {
            case 0: s += static_cast<char>(byte(rng)); break;
            case 1: s += static_cast<char>(0x80 | (byte(rng) & 0x3f)); break;
            case 2: s += static_cast<char>(0xc0 | (byte(rng) & 0x3f)); break;
            default: s += static_cast<char>(0x20 + byte(rng) % 0x60); break;
            }
        }
        check_bounded_and_valid(s);
        if (HasFatalFailure()) return;
        // Valid UTF-8 without specials must survive untouched.
        bool plain = true;
        for (std::size_t i = 0; i < s.size() && plain;) {
            const std::size_t k = utf8_len(s, i);
            const auto c = static_cast<unsigned char>(s[i]);
            if (k == 0 || c < 0x20 || c == 0x7f || c == '"' || c == '\\') plain = false;
            i += k ? k : 1;
        }
        if (plain) {
            ASSERT_EQ(escape(s), s);
        }
    }
}

}  // namespace
}  // namespace apikey
