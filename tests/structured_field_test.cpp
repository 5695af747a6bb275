// The IETF RateLimit-Policy and RateLimit field values (core/ratelimit_fields),
// read back by a strict structured-field parser (RFC 9651, section 4.2: Lists,
// Items, Inner Lists, Parameters and every bare item type but Dates and
// Display Strings, which the fields never use and the parser refuses).
#include "core/ratelimit_fields.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace apikey {
namespace {

// --- a strict structured-field parser ------------------------------------------

struct Token {
    std::string text;
    bool operator==(const Token &o) const { return text == o.text; }
};
struct Bytes {
    std::string base64;
    bool operator==(const Bytes &o) const { return base64 == o.base64; }
};
struct Decimal {
    std::string text;
    bool operator==(const Decimal &o) const { return text == o.text; }
};
using BareItem = std::variant<std::int64_t, Decimal, std::string, Token, Bytes, bool>;

struct Param {
    std::string key;
    BareItem value;
};
struct Item {
    BareItem value;
    std::vector<Param> params;
    bool inner = false;  // an Inner List (then `members` holds it)
    std::vector<Item> members;

    const BareItem *param(std::string_view key) const {
        for (const Param &p : params) {
            if (p.key == key) return &p.value;
        }
        return nullptr;
    }
};

class SfParser {
public:
    explicit SfParser(std::string_view in) : in_(in) {}

    // RFC 9651 4.2: the whole field value as a List, or nothing.
    std::optional<std::vector<Item>> list() {
        std::vector<Item> members;
        skip_sp();
        if (done()) return members;  // an empty List (a field the sender omits)
        while (true) {
            Item item;
            if (!item_or_inner_list(item)) return std::nullopt;
            members.push_back(std::move(item));
            skip_ows();
            if (done()) return members;
            if (!eat(',')) return fail("expected ','");
            skip_ows();
            if (done()) return fail("trailing ','");
        }
    }

    const std::string &error() const { return error_; }

private:
    bool done() const { return pos_ >= in_.size(); }
    char peek() const { return done() ? '\0' : in_[pos_]; }
    bool eat(char c) {
        if (peek() != c || done()) return false;
        pos_++;
        return true;
    }
    void skip_sp() {
        while (!done() && in_[pos_] == ' ') pos_++;
    }
    void skip_ows() {
        while (!done() && (in_[pos_] == ' ' || in_[pos_] == '\t')) pos_++;
    }
    std::nullopt_t fail(const std::string &why) {
        if (error_.empty()) error_ = why + " at " + std::to_string(pos_);
        return std::nullopt;
    }
    bool bad(const std::string &why) {
        fail(why);
        return false;
    }

    static bool lcalpha(char c) { return c >= 'a' && c <= 'z'; }
    static bool alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
    static bool digit(char c) { return c >= '0' && c <= '9'; }
    static bool tchar(char c) {
        return alpha(c) || digit(c) ||
               std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
    }

    bool item_or_inner_list(Item &item) {
        if (peek() == '(') return inner_list(item);
        return bare_item(item.value) && parameters(item.params);
    }

    bool inner_list(Item &item) {
        eat('(');
        item.inner = true;
        while (!done()) {
            skip_sp();
            if (eat(')')) return parameters(item.params);
            Item member;
            if (!bare_item(member.value) || !parameters(member.params)) return false;
            item.members.push_back(std::move(member));
            if (peek() != ' ' && peek() != ')')
                return bad("inner list member not followed by SP or ')'");
        }
        return bad("unterminated inner list");
    }

    bool parameters(std::vector<Param> &params) {
        while (eat(';')) {
            skip_sp();
            std::string key;
            if (!parse_key(key)) return false;
            BareItem value = true;
            if (eat('=') && !bare_item(value)) return false;
            for (const Param &p : params) {
                if (p.key == key) return bad("duplicate parameter " + key);  // stricter than 9651
            }
            params.push_back({key, value});
        }
        return true;
    }

    bool parse_key(std::string &key) {
        if (!(lcalpha(peek()) || peek() == '*')) return bad("a key starts with lcalpha or '*'");
        while (!done() && (lcalpha(peek()) || digit(peek()) ||
                           std::string_view("_-.*").find(peek()) != std::string_view::npos)) {
            key += in_[pos_++];
        }
        return true;
    }

    bool bare_item(BareItem &out) {
        const char c = peek();
        if (c == '-' || digit(c)) return number(out);
        if (c == '"') return string(out);
        if (c == ':') return bytes(out);
        if (c == '?') return boolean(out);
        if (alpha(c) || c == '*') return token(out);
        return bad("not a bare item (or a Date / Display String)");
    }

    bool number(BareItem &out) {
        bool negative = eat('-');
        std::string digits;
        bool is_decimal = false;
        std::size_t int_digits = 0;
        while (!done()) {
            const char c = peek();
            if (digit(c)) {
                digits += c;
                pos_++;
            } else if (c == '.' && !is_decimal) {
                if (digits.size() > 12) return bad("decimal with over 12 integer digits");
                is_decimal = true;
                int_digits = digits.size();
                digits += c;
                pos_++;
            } else {
                break;
            }
            if (!is_decimal && digits.size() > 15) return bad("integer over 15 digits");
            if (is_decimal && digits.size() > 16) return bad("decimal over 16 characters");
        }
        if (digits.empty() || digits == ".") return bad("no digits");
        if (!is_decimal) {
            out = (negative ? -1 : 1) * std::stoll(digits);
            return true;
        }
        if (digits.back() == '.') return bad("decimal ends with '.'");
        if (digits.size() - int_digits - 1 > 3) return bad("decimal with over 3 fraction digits");
        out = Decimal{(negative ? "-" : "") + digits};
        return true;
    }

    bool string(BareItem &out) {
        eat('"');
        std::string s;
        while (!done()) {
            const char c = in_[pos_++];
            if (c == '\\') {
                if (done()) return bad("string ends in '\\'");
                const char next = in_[pos_++];
                if (next != '"' && next != '\\') return bad("bad escape in string");
                s += next;
            } else if (c == '"') {
                out = s;
                return true;
            } else if (static_cast<unsigned char>(c) < 0x20 ||
                       static_cast<unsigned char>(c) > 0x7e) {
                return bad("string byte outside printable ASCII");
            } else {
                s += c;
            }
        }
        return bad("unterminated string");
    }

    bool token(BareItem &out) {
        std::string t;
        while (!done() && (tchar(peek()) || peek() == ':' || peek() == '/')) t += in_[pos_++];
        out = Token{t};
        return true;
    }

    bool bytes(BareItem &out) {
        eat(':');
        std::string b;
        while (!done() && peek() != ':') {
            const char c = in_[pos_++];
            if (!(alpha(c) || digit(c) || c == '+' || c == '/' || c == '=')) {
                return bad("byte sequence outside base64");
            }
            b += c;
        }
        if (!eat(':')) return bad("unterminated byte sequence");
        out = Bytes{b};
        return true;
    }

    bool boolean(BareItem &out) {
        eat('?');
        if (eat('1')) {
            out = true;
        } else if (eat('0')) {
            out = false;
        } else {
            return bad("boolean is ?0 or ?1");
        }
        return true;
    }

    std::string_view in_;
    std::size_t pos_ = 0;
    std::string error_;
};

std::optional<std::vector<Item>> parse_list(std::string_view text, std::string *error = nullptr) {
    SfParser p(text);
    auto list = p.list();
    if (error) *error = p.error();
    return list;
}

// --- the parser itself ---------------------------------------------------------

TEST(StructuredFieldParser, ReadsTheDraftsExamples) {
    auto list = parse_list(R"("burst";q=100;w=60,"daily";q=1000;w=86400)");
    ASSERT_TRUE(list);
    ASSERT_EQ(list->size(), 2u);
    EXPECT_EQ(std::get<std::string>((*list)[0].value), "burst");
    EXPECT_EQ(std::get<std::int64_t>(*(*list)[0].param("q")), 100);
    EXPECT_EQ(std::get<std::int64_t>(*(*list)[1].param("w")), 86400);
    list = parse_list(R"("peruser";q=65535;qu="content-bytes";w=10;pk=:sdfjLJUOUH==:)");
    ASSERT_TRUE(list);
    EXPECT_EQ(std::get<Bytes>(*(*list)[0].param("pk")).base64, "sdfjLJUOUH==");
    list = parse_list(R"(tok;a=?1;b=-1.5;c=*x/y:z, ("a" b);lvl=5 ,  "esc\"aped\\")");
    ASSERT_TRUE(list);
    ASSERT_EQ(list->size(), 3u);
    EXPECT_EQ(std::get<Token>((*list)[0].value).text, "tok");
    EXPECT_EQ(std::get<bool>(*(*list)[0].param("a")), true);
    EXPECT_EQ(std::get<Decimal>(*(*list)[0].param("b")).text, "-1.5");
    EXPECT_TRUE((*list)[1].inner);
    EXPECT_EQ((*list)[1].members.size(), 2u);
    EXPECT_EQ(std::get<std::string>((*list)[2].value), "esc\"aped\\");
    EXPECT_TRUE(parse_list("999999999999999"));
}

TEST(StructuredFieldParser, RefusesWhatTheRfcRefuses) {
    for (const char *bad : {
             R"("a";q=1,)",                // trailing comma
             R"("a";q=1,,"b")",            // empty member
             R"("a" "b")",                 // two items without a comma
             R"("a";Q=1)",                 // uppercase key
             R"("a";q=1000000000000000)",  // 16 digits
             R"("a";q=1.2345)",            // 4 fraction digits
             R"("a";q=)",                  // no value
             R"("a\x")",                   // bad escape
             R"("unterminated)",
             "\"tab\there\"",    // control byte in a string
             "\"caf\xc3\xa9\"",  // non-ASCII in a string
             R"(@1659578233)",   // a Date: not used, refused
             R"(%"display")",    // a Display String: likewise
             R"("a";q=1;q=2)",   // a duplicate parameter (stricter than 9651)
             R"(("a" "b")",      // unterminated inner list
             R"(?2)",
             R"(:not base64!:)",
         }) {
        EXPECT_FALSE(parse_list(bad)) << bad;
    }
}

// --- the fields ------------------------------------------------------------------

std::string policy_field(const std::vector<RateLimitEntry> &entries) {
    std::string out(ratelimit_field_size(entries.size()), '\0');
    out.resize(format_ratelimit_policy(out.data(), out.size(), entries.data(), entries.size()));
    return out;
}

std::string ratelimit_field(const std::vector<RateLimitEntry> &entries) {
    std::string out(ratelimit_field_size(entries.size()), '\0');
    out.resize(format_ratelimit(out.data(), out.size(), entries.data(), entries.size()));
    return out;
}

// Parses a field and checks what every item of either field must be: an
// sf-string name, exactly the two expected integer parameters, each within
// sf-integer range and non-negative; names unique.
std::vector<Item> strict_items(const std::string &field, const char *first, const char *second) {
    std::string error;
    auto list = parse_list(field, &error);
    EXPECT_TRUE(list) << field << ": " << error;
    if (!list) return {};
    std::vector<std::string> names;
    for (const Item &item : *list) {
        EXPECT_FALSE(item.inner) << field;
        EXPECT_TRUE(std::holds_alternative<std::string>(item.value)) << field;
        EXPECT_EQ(item.params.size(), 2u) << field;
        for (const char *key : {first, second}) {
            const BareItem *v = item.param(key);
            EXPECT_TRUE(v != nullptr && std::holds_alternative<std::int64_t>(*v))
                << field << " lacks integer " << key;
            if (v != nullptr && std::holds_alternative<std::int64_t>(*v)) {
                EXPECT_GE(std::get<std::int64_t>(*v), 0) << field;
                EXPECT_LE(std::get<std::int64_t>(*v), 999'999'999'999'999) << field;
            }
        }
        if (std::holds_alternative<std::string>(item.value)) {
            for (const std::string &n : names) EXPECT_NE(n, std::get<std::string>(item.value));
            names.push_back(std::get<std::string>(item.value));
        }
    }
    return *list;
}

std::int64_t integer(const Item &item, const char *key) {
    return std::get<std::int64_t>(*item.param(key));
}
std::string name_of(const Item &item) { return std::get<std::string>(item.value); }

TEST(RateLimitFields, OnePolicyAsTheSpecShowsIt) {
    const std::vector<RateLimitEntry> one = {{"read", Rate{1000, 60}, 998, 1}};
    EXPECT_EQ(policy_field(one), R"("read-1m";q=1000;w=60)");
    EXPECT_EQ(ratelimit_field(one), R"("read-1m";r=998;t=1)");
    const auto policy = strict_items(policy_field(one), "q", "w");
    ASSERT_EQ(policy.size(), 1u);
    EXPECT_EQ(name_of(policy[0]), "read-1m");
    EXPECT_EQ(integer(policy[0], "q"), 1000);
    EXPECT_EQ(integer(policy[0], "w"), 60);
}

TEST(RateLimitFields, NamesUseTheLargestUnitThatDividesThePeriod) {
    const std::pair<std::uint32_t, const char *> cases[] = {
        {1, "read-1s"},
        {10, "read-10s"},
        {59, "read-59s"},
        {60, "read-1m"},
        {90, "read-90s"},
        {120, "read-2m"},
        {3600, "read-1h"},
        {7200, "read-2h"},
        {5400, "read-90m"},
        {86400, "read-1d"},
        {172800, "read-2d"},
        {90000, "read-25h"},
        {4294967295u, "read-4294967295s"},
    };
    for (const auto &[period, expected] : cases) {
        char name[kMaxPolicyName];
        EXPECT_EQ(std::string(name, ratelimit_policy_name(name, "read", period)), expected);
        const auto items = strict_items(policy_field({{"read", Rate{5, period}, 0, 0}}), "q", "w");
        ASSERT_EQ(items.size(), 1u);
        EXPECT_EQ(name_of(items[0]), expected);
        EXPECT_EQ(integer(items[0], "w"), period);
    }
    char name[kMaxPolicyName];
    EXPECT_EQ(std::string(name, ratelimit_policy_name(name, "write", 86400)), "write-1d");
}

// Several limits: several items, comma-separated, in order; and the same
// category at two periods are two policies.
TEST(RateLimitFields, SeveralLimitsAreSeveralItems) {
    const std::vector<RateLimitEntry> entries = {
        {"read", Rate{20, 1}, 19, 1},
        {"read", Rate{1000, 60}, 998, 42},
        {"read", Rate{50000, 86400}, 0, 3600},
    };
    EXPECT_EQ(policy_field(entries),
              R"("read-1s";q=20;w=1, "read-1m";q=1000;w=60, "read-1d";q=50000;w=86400)");
    EXPECT_EQ(ratelimit_field(entries),
              R"("read-1s";r=19;t=1, "read-1m";r=998;t=42, "read-1d";r=0;t=3600)");
    const auto items = strict_items(ratelimit_field(entries), "r", "t");
    ASSERT_EQ(items.size(), 3u);
    EXPECT_EQ(name_of(items[2]), "read-1d");
    EXPECT_EQ(integer(items[2], "r"), 0);
    EXPECT_EQ(integer(items[2], "t"), 3600);
}

// The same category and period from two zones: one item, the stricter q,
// and the values of the one closest to refusing.
TEST(RateLimitFields, OnePolicyFromTwoZonesIsOneItem) {
    const std::vector<RateLimitEntry> entries = {
        {"write", Rate{100, 60}, 50, 3},
        {"read", Rate{100, 60}, 99, 60},
        {"write", Rate{80, 60}, 10, 9},
        {"write", Rate{90, 60}, 10, 12},
    };
    EXPECT_EQ(policy_field(entries), R"("write-1m";q=80;w=60, "read-1m";q=100;w=60)");
    EXPECT_EQ(ratelimit_field(entries), R"("write-1m";r=10;t=12, "read-1m";r=99;t=60)");
}

TEST(RateLimitFields, NoEntryNoField) {
    char out[16];
    EXPECT_EQ(format_ratelimit_policy(out, sizeof out, nullptr, 0), 0u);
    EXPECT_EQ(format_ratelimit(out, sizeof out, nullptr, 0), 0u);
    EXPECT_EQ(ratelimit_field_size(0), 0u);
}

// The stated maximum is enough for the worst entries (longest categories,
// every byte escaped, largest numbers), and a buffer one byte short gets
// nothing rather than a cut field.
TEST(RateLimitFields, TheStatedMaximumSufficesAndShortBuffersGetNothing) {
    std::vector<std::string> categories;
    for (std::size_t i = 0; i < 8; i++) {
        std::string c(kMaxCategoryInName, '"');  // every byte escaped; one backslash apart
        c[i] = '\\';
        categories.push_back(c);
    }
    std::vector<RateLimitEntry> worst;
    for (const std::string &c : categories) {
        worst.push_back({c, Rate{4294967295u, 4294967295u}, 4294967295u, 4294967295u});
    }
    for (std::size_t n = 1; n <= worst.size(); n++) {
        const std::vector<RateLimitEntry> some(worst.begin(),
                                               worst.begin() + static_cast<std::ptrdiff_t>(n));
        for (auto format : {&format_ratelimit_policy, &format_ratelimit}) {
            std::string out(ratelimit_field_size(n), '\0');
            const std::size_t len = format(out.data(), out.size(), some.data(), n);
            ASSERT_GT(len, 0u) << n;
            EXPECT_EQ(len, out.size()) << "the bound is tight for the worst case, " << n;
            std::string shorter(len - 1, '\0');
            EXPECT_EQ(format(shorter.data(), shorter.size(), some.data(), n), 0u);
            out.resize(len);
            const auto items = strict_items(out, format == &format_ratelimit ? "r" : "q",
                                            format == &format_ratelimit ? "t" : "w");
            ASSERT_EQ(items.size(), n);
            EXPECT_EQ(name_of(items[n - 1]), categories[n - 1] + "-4294967295s");
        }
    }
}

// Categories are identifiers (no quotes, backslashes, blanks or non-ASCII);
// should another byte ever come, the field stays valid: quotes and
// backslashes are escaped, anything unprintable becomes '?', and a category
// longer than 128 bytes is cut.
TEST(RateLimitFields, NamesAreAlwaysValidSfStrings) {
    const std::string odd = std::string("a\"b\\c d\x01\xff", 9);
    const auto items = strict_items(policy_field({{odd, Rate{1, 1}, 0, 1}}), "q", "w");
    ASSERT_EQ(items.size(), 1u);
    EXPECT_EQ(name_of(items[0]),
              "a\"b\\c d?"
              "?-1s");
    const auto cut = strict_items(policy_field({{std::string(300, 'x'), Rate{1, 60}, 0, 1}}), "q",
                                  "w");
    ASSERT_EQ(cut.size(), 1u);
    EXPECT_EQ(name_of(cut[0]), std::string(128, 'x') + "-1m");
}

// Fields built from real decisions, over random traffic on both kinds of
// limit: r is what remains, t is when the quota next grows (checked by
// probing), and on a refusal t is the Retry-After itself, so a 429 never
// tells a client to come back before t.
TEST(RateLimitFields, FromDecisionsRetryAfterIsNeverBeforeT) {
    std::mt19937_64 rng(9651);
    for (std::uint32_t count : {3u, 16u, 17u, 500u}) {
        for (std::uint32_t period_s : {1u, 60u, 86400u}) {
            const Rate rate{count, period_s};
            const WindowLimit limit{count, period_s * 1000};
            WindowState s;
            window_reset(s);
            std::int64_t t = 1'767'225'600'000;
            for (int i = 0; i < 600; i++) {
                t += static_cast<std::int64_t>(rng() % (3ull * limit.period_ms / count + 1));
                const WindowDecision d = window_consume(s, limit, t, true);
                const RateLimitEntry e = ratelimit_entry("read", rate, d);
                const auto items = strict_items(ratelimit_field({e}), "r", "t");
                ASSERT_EQ(items.size(), 1u);
                const std::int64_t r = integer(items[0], "r");
                const std::int64_t reset = integer(items[0], "t");
                ASSERT_EQ(r, d.allowed ? d.remaining : 0);
                ASSERT_GE(reset, 1);
                if (!d.allowed) {
                    ASSERT_EQ(reset, d.retry_after_s);  // Retry-After >= t
                    WindowState copy = s;
                    ASSERT_TRUE(window_consume(copy, limit, t + reset * 1000, false).allowed);
                } else {
                    // At t the quota has grown: a request then leaves at least r.
                    WindowState copy = s;
                    const WindowDecision later = window_consume(copy, limit, t + reset * 1000,
                                                                false);
                    ASSERT_TRUE(later.allowed);
                    ASSERT_GE(later.remaining, d.remaining);
                }
                const auto policy = strict_items(policy_field({e}), "q", "w");
                ASSERT_EQ(policy.size(), 1u);
                ASSERT_EQ(integer(policy[0], "q"), count);
                ASSERT_EQ(integer(policy[0], "w"), period_s);
            }
        }
    }
}

// A limit counted and then refunded because another limit refused: one more
// remains than its decision said (never more than q).
TEST(RateLimitFields, RefundedEntriesReportTheRequestGivenBack) {
    WindowDecision d{};
    d.allowed = true;
    d.limit = 10;
    d.remaining = 0;
    d.next_free_s = 7;
    EXPECT_EQ(ratelimit_entry("read", Rate{10, 60}, d).remaining, 0u);
    EXPECT_EQ(ratelimit_entry("read", Rate{10, 60}, d, true).remaining, 1u);
    d.remaining = 9;
    EXPECT_EQ(ratelimit_entry("read", Rate{10, 60}, d, true).remaining, 10u);
    d.remaining = 10;  // (cannot happen) never over q
    EXPECT_EQ(ratelimit_entry("read", Rate{10, 60}, d, true).remaining, 10u);
    WindowDecision refused{};
    refused.limit = 10;
    refused.retry_after_s = refused.next_free_s = 30;
    const RateLimitEntry e = ratelimit_entry("read", Rate{10, 60}, refused, true);
    EXPECT_EQ(e.remaining, 0u);  // nothing was counted, nothing given back
    EXPECT_EQ(e.reset_s, 30u);
}

}  // namespace
}  // namespace apikey
