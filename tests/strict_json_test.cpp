// The test-support JSON reader (tests/support/strict_json.h) must be able to
// say no: json_test, outcome_test, status_report_test and json_fuzz trust it
// to tell valid JSON from anything else.
#include <gtest/gtest.h>

#include <string>

#include "support/strict_json.h"

namespace {

using strict_json::decode_string_body;
using strict_json::parse;
using strict_json::Value;

TEST(StrictJson, StringBodiesThatAreNotJson) {
    EXPECT_FALSE(decode_string_body("a\"b"));
    EXPECT_FALSE(decode_string_body("a\nb"));
    EXPECT_FALSE(decode_string_body("a\\"));
    EXPECT_FALSE(decode_string_body("\\x41"));
    EXPECT_FALSE(decode_string_body("\\u12"));
    EXPECT_FALSE(decode_string_body("\xff"));
    EXPECT_FALSE(decode_string_body("\xc0\xaf"));
    EXPECT_FALSE(decode_string_body("\xed\xa0\x80"));
    EXPECT_FALSE(decode_string_body("\\ud800"));
    EXPECT_FALSE(decode_string_body("\\udd1e"));
    EXPECT_FALSE(decode_string_body("\\ud834\\u0041"));
    EXPECT_EQ(decode_string_body("a\\u00e9\\\"\\\\\\n"), "a\xc3\xa9\"\\\n");
    EXPECT_EQ(decode_string_body("\\ud834\\udd1e"), "\xf0\x9d\x84\x9e");
    EXPECT_EQ(decode_string_body("\\/\\b\\f\\r\\t"), "/\b\f\r\t");
}

TEST(StrictJson, DocumentsThatAreNotJson) {
    EXPECT_TRUE(parse(R"({"a":[1,-2.5e3,true,false,null,"x"]})"));
    EXPECT_FALSE(parse(R"({"a":1,})"));
    EXPECT_FALSE(parse(R"([1,])"));
    EXPECT_FALSE(parse(R"({"a":"b"} x)"));
    EXPECT_FALSE(parse(R"({"a":"b"}{})"));
    EXPECT_FALSE(parse("{\"a\":\"b\nc\"}"));
    EXPECT_FALSE(parse("{\"a\":\"\xff\"}"));
    EXPECT_FALSE(parse(R"({"a":"\q"})"));
    EXPECT_FALSE(parse(R"({"a":"\ud800"})"));
    EXPECT_FALSE(parse(R"({"a")"));
    EXPECT_FALSE(parse(R"({a:1})"));
    EXPECT_FALSE(parse(R"({'a':1})"));
    EXPECT_FALSE(parse(""));
    EXPECT_FALSE(parse("  "));
}

TEST(StrictJson, Numbers) {
    for (const char *ok : {"0", "-0", "12", "-12", "1.5", "1e9", "1E+9", "1.5e-3", "0.0"}) {
        EXPECT_TRUE(parse(ok)) << ok;
    }
    for (const char *bad : {"01", "-", "+1", "1.", ".5", "1e", "1e+", "0x10", "NaN", "Infinity"}) {
        EXPECT_FALSE(parse(bad)) << bad;
    }
    auto v = parse(" 1234 ");
    ASSERT_TRUE(v);
    EXPECT_EQ(v->kind, Value::number);
    EXPECT_EQ(v->str, "1234");
}

TEST(StrictJson, KeepsMembersInOrderWithDuplicates) {
    auto v = parse(R"({"b":1,"a":[true,null],"b":"x"})");
    ASSERT_TRUE(v);
    ASSERT_EQ(v->kind, Value::object);
    ASSERT_EQ(v->members.size(), 3u);
    EXPECT_EQ(v->members[0].first, "b");
    EXPECT_EQ(v->members[1].first, "a");
    EXPECT_EQ(v->members[2].second.str, "x");
    ASSERT_NE(v->get("b"), nullptr);
    EXPECT_EQ(v->get("b")->str, "1");  // the first one
    EXPECT_EQ(v->get("c"), nullptr);
    const Value *a = v->get("a");
    ASSERT_NE(a, nullptr);
    ASSERT_EQ(a->items.size(), 2u);
    EXPECT_EQ(a->items[0].kind, Value::boolean);
    EXPECT_EQ(a->items[1].kind, Value::null);
}

TEST(StrictJson, NestingIsBounded) {
    const int deep = strict_json::Reader::kMaxDepth;
    EXPECT_TRUE(parse(std::string(deep, '[') + std::string(deep, ']')));
    EXPECT_FALSE(parse(std::string(deep + 2, '[') + std::string(deep + 2, ']')));
}

TEST(StrictJson, ReplaceInvalidUtf8) {
    EXPECT_EQ(strict_json::replace_invalid_utf8("a\xc3\xa9z"), "a\xc3\xa9z");
    EXPECT_EQ(strict_json::replace_invalid_utf8("a\xffz"), "a\xef\xbf\xbdz");
    // Each byte of an invalid sequence is replaced on its own.
    EXPECT_EQ(strict_json::replace_invalid_utf8("\xc0\xaf"), "\xef\xbf\xbd\xef\xbf\xbd");
    // A valid character after an invalid byte is kept.
    EXPECT_EQ(strict_json::replace_invalid_utf8("\xe2\xc3\xa9"), "\xef\xbf\xbd\xc3\xa9");
}

}  // namespace
