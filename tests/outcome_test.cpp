// The SPEC's error table and the JSON envelope of every refusal.
#include <gtest/gtest.h>

#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/limit_policy.h"
#include "core/outcome.h"

namespace apikey {
namespace {

// ---- A small strict JSON parser (RFC 8259) for checking the envelope.

struct JsonValue {
    enum Kind { null, boolean, number, string, array, object } kind = null;
    std::string text;                                   // string value
    std::vector<std::pair<std::string, JsonValue>> members;  // object, in order
    std::vector<JsonValue> items;                        // array

    const JsonValue *get(const std::string &name) const {
        for (const auto &m : members) {
            if (m.first == name) return &m.second;
        }
        return nullptr;
    }
};

class JsonParser {
public:
    explicit JsonParser(const std::string &s) : s_(s) {}

    std::optional<JsonValue> parse_document() {
        JsonValue v;
        ws();
        if (!value(v, 0)) return std::nullopt;
        ws();
        if (i_ != s_.size()) return std::nullopt;
        return v;
    }

private:
    void ws() {
        while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) i_++;
    }
    bool lit(const char *w) {
        const std::string word(w);
        if (s_.compare(i_, word.size(), word) != 0) return false;
        i_ += word.size();
        return true;
    }
    bool value(JsonValue &v, int depth) {
        if (depth > 32 || i_ >= s_.size()) return false;
        switch (s_[i_]) {
        case '{': return object(v, depth);
        case '[': return array(v, depth);
        case '"': v.kind = JsonValue::string; return string(v.text);
        case 't': v.kind = JsonValue::boolean; return lit("true");
        case 'f': v.kind = JsonValue::boolean; return lit("false");
        case 'n': v.kind = JsonValue::null; return lit("null");
        default: v.kind = JsonValue::number; return number();
        }
    }
    bool number() {
        const std::size_t start = i_;
        if (i_ < s_.size() && s_[i_] == '-') i_++;
        if (i_ >= s_.size() || !isdigit(s_[i_])) return false;
        if (s_[i_] == '0') i_++; else while (i_ < s_.size() && isdigit(s_[i_])) i_++;
        if (i_ < s_.size() && s_[i_] == '.') {
            i_++;
            if (i_ >= s_.size() || !isdigit(s_[i_])) return false;
            while (i_ < s_.size() && isdigit(s_[i_])) i_++;
        }
        if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
            i_++;
            if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) i_++;
            if (i_ >= s_.size() || !isdigit(s_[i_])) return false;
            while (i_ < s_.size() && isdigit(s_[i_])) i_++;
        }
        return i_ > start;
    }
    static bool isdigit(char c) { return c >= '0' && c <= '9'; }
    bool object(JsonValue &v, int depth) {
        v.kind = JsonValue::object;
        i_++;
        ws();
        if (i_ < s_.size() && s_[i_] == '}') { i_++; return true; }
        for (;;) {
            ws();
            std::string name;
            if (i_ >= s_.size() || s_[i_] != '"' || !string(name)) return false;
            ws();
            if (i_ >= s_.size() || s_[i_++] != ':') return false;
            ws();
            JsonValue member;
            if (!value(member, depth + 1)) return false;
            v.members.emplace_back(std::move(name), std::move(member));
            ws();
            if (i_ >= s_.size()) return false;
            if (s_[i_] == ',') { i_++; continue; }
            if (s_[i_] == '}') { i_++; return true; }
            return false;
        }
    }
    bool array(JsonValue &v, int depth) {
        v.kind = JsonValue::array;
        i_++;
        ws();
        if (i_ < s_.size() && s_[i_] == ']') { i_++; return true; }
        for (;;) {
            ws();
            JsonValue item;
            if (!value(item, depth + 1)) return false;
            v.items.push_back(std::move(item));
            ws();
            if (i_ >= s_.size()) return false;
            if (s_[i_] == ',') { i_++; continue; }
            if (s_[i_] == ']') { i_++; return true; }
            return false;
        }
    }
    static bool hex4(const std::string &s, std::size_t i, std::uint32_t &v) {
        if (i + 4 > s.size()) return false;
        v = 0;
        for (std::size_t k = i; k < i + 4; k++) {
            const char c = s[k];
            v <<= 4;
            if (c >= '0' && c <= '9') v |= static_cast<std::uint32_t>(c - '0');
            else if (c >= 'a' && c <= 'f') v |= static_cast<std::uint32_t>(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') v |= static_cast<std::uint32_t>(c - 'A' + 10);
            else return false;
        }
        return true;
    }
    static void put_utf8(std::string &out, std::uint32_t cp) {
        if (cp < 0x80) { out += static_cast<char>(cp); return; }
        if (cp < 0x800) {
            out += static_cast<char>(0xc0 | cp >> 6);
        } else {
            if (cp < 0x10000) {
                out += static_cast<char>(0xe0 | cp >> 12);
            } else {
                out += static_cast<char>(0xf0 | cp >> 18);
                out += static_cast<char>(0x80 | (cp >> 12 & 0x3f));
            }
            out += static_cast<char>(0x80 | (cp >> 6 & 0x3f));
        }
        out += static_cast<char>(0x80 | (cp & 0x3f));
    }
    // Raw bytes must be valid UTF-8 (RFC 3629) and not control characters.
    std::size_t utf8_len(std::size_t i) const {
        const auto c = static_cast<unsigned char>(s_[i]);
        std::size_t n;
        std::uint32_t cp;
        if (c < 0x80) return 1;
        if ((c & 0xe0) == 0xc0) { n = 2; cp = c & 0x1f; }
        else if ((c & 0xf0) == 0xe0) { n = 3; cp = c & 0x0f; }
        else if ((c & 0xf8) == 0xf0) { n = 4; cp = c & 0x07; }
        else return 0;
        if (i + n > s_.size()) return 0;
        for (std::size_t k = 1; k < n; k++) {
            const auto b = static_cast<unsigned char>(s_[i + k]);
            if ((b & 0xc0) != 0x80) return 0;
            cp = cp << 6 | (b & 0x3f);
        }
        static const std::uint32_t min_for_len[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_for_len[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        return n;
    }
    bool string(std::string &out) {
        i_++;  // opening quote
        for (;;) {
            if (i_ >= s_.size()) return false;
            const auto c = static_cast<unsigned char>(s_[i_]);
            if (c == '"') { i_++; return true; }
            if (c < 0x20) return false;
            if (c != '\\') {
                const std::size_t n = utf8_len(i_);
                if (n == 0) return false;
                out.append(s_, i_, n);
                i_ += n;
                continue;
            }
            if (++i_ >= s_.size()) return false;
            const char e = s_[i_++];
            switch (e) {
            case '"': out += '"'; break;
            case '\\': out += '\\'; break;
            case '/': out += '/'; break;
            case 'b': out += '\b'; break;
            case 'f': out += '\f'; break;
            case 'n': out += '\n'; break;
            case 'r': out += '\r'; break;
            case 't': out += '\t'; break;
            case 'u': {
                std::uint32_t cp;
                if (!hex4(s_, i_, cp)) return false;
                i_ += 4;
                if (cp >= 0xdc00 && cp <= 0xdfff) return false;
                if (cp >= 0xd800 && cp <= 0xdbff) {
                    std::uint32_t lo;
                    if (i_ + 6 > s_.size() || s_[i_] != '\\' || s_[i_ + 1] != 'u' ||
                        !hex4(s_, i_ + 2, lo) || lo < 0xdc00 || lo > 0xdfff) {
                        return false;
                    }
                    i_ += 6;
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                }
                put_utf8(out, cp);
                break;
            }
            default: return false;
            }
        }
    }

    const std::string &s_;
    std::size_t i_ = 0;
};

std::optional<JsonValue> parse_json(const std::string &s) { return JsonParser(s).parse_document(); }

std::string body(Outcome o, std::string_view request_id, std::string_view detail) {
    std::vector<char> buf(kMaxErrorBody + 4096, '#');
    const std::size_t n = write_error_body(buf.data(), o, request_id, detail);
    EXPECT_LE(n, kMaxErrorBody);
    for (std::size_t i = n; i < buf.size(); i++) {
        if (buf[i] != '#') {
            ADD_FAILURE() << "wrote past the returned length";
            break;
        }
    }
    return std::string(buf.data(), n);
}

struct Envelope {
    std::string type, code, message, request_id;
};

// Parses and checks the shape: exactly {"error":{"type","code","message"},"request_id"}.
std::optional<Envelope> envelope(const std::string &text) {
    auto doc = parse_json(text);
    if (!doc || doc->kind != JsonValue::object || doc->members.size() != 2) return std::nullopt;
    const JsonValue *error = doc->get("error");
    const JsonValue *id = doc->get("request_id");
    if (!error || !id || error->kind != JsonValue::object || id->kind != JsonValue::string ||
        error->members.size() != 3) {
        return std::nullopt;
    }
    const JsonValue *type = error->get("type");
    const JsonValue *code = error->get("code");
    const JsonValue *message = error->get("message");
    if (!type || !code || !message || type->kind != JsonValue::string ||
        code->kind != JsonValue::string || message->kind != JsonValue::string) {
        return std::nullopt;
    }
    return Envelope{type->text, code->text, message->text, id->text};
}

constexpr Outcome kAllErrors[] = {
    Outcome::missing_key,      Outcome::invalid_key,   Outcome::multiple_keys,
    Outcome::wrong_environment, Outcome::revoked_key,  Outcome::expired_key,
    Outcome::plan_required,    Outcome::insufficient_scope, Outcome::rate_limited,
};

// ---- The checker must be able to say no.

TEST(JsonParserSelfTest, RefusesInvalidDocuments) {
    EXPECT_TRUE(parse_json(R"({"a":[1,-2.5e3,true,false,null,"x"]})"));
    EXPECT_FALSE(parse_json(R"({"a":1,})"));
    EXPECT_FALSE(parse_json(R"({"a":"b"} x)"));
    EXPECT_FALSE(parse_json("{\"a\":\"b\nc\"}"));
    EXPECT_FALSE(parse_json("{\"a\":\"\xff\"}"));
    EXPECT_FALSE(parse_json(R"({"a":"\q"})"));
    EXPECT_FALSE(parse_json(R"({"a":"\ud800"})"));
    EXPECT_FALSE(parse_json(R"({"a")"));
    EXPECT_FALSE(envelope(R"({"error":{"type":"a","code":"b"},"request_id":"r"})"));
}

// ---- The SPEC's table.

TEST(Describe, AcceptedHasNoStatus) {
    const OutcomeInfo &info = describe(Outcome::accepted);
    EXPECT_EQ(info.status, 0u);
    EXPECT_TRUE(info.code.empty());
    EXPECT_TRUE(info.type.empty());
}

TEST(Describe, EveryOutcomeMatchesTheSpecTable) {
    struct Row {
        Outcome outcome;
        unsigned status;
        const char *type;
        const char *code;
    };
    const Row rows[] = {
        {Outcome::missing_key, 401, "authentication_error", "missing_api_key"},
        {Outcome::invalid_key, 401, "authentication_error", "invalid_api_key"},
        {Outcome::multiple_keys, 401, "authentication_error", "invalid_api_key"},
        {Outcome::wrong_environment, 401, "authentication_error", "invalid_api_key"},
        {Outcome::revoked_key, 401, "authentication_error", "revoked_api_key"},
        {Outcome::expired_key, 401, "authentication_error", "expired_api_key"},
        {Outcome::plan_required, 403, "permission_error", "plan_required"},
        {Outcome::insufficient_scope, 403, "permission_error", "insufficient_scope"},
        {Outcome::rate_limited, 429, "rate_limit_error", "rate_limit_exceeded"},
        {Outcome::internal_error, 500, "api_error", "internal_error"},
    };
    ASSERT_EQ(std::size(rows) + 1, kOutcomeCount);
    for (const Row &row : rows) {
        const OutcomeInfo &info = describe(row.outcome);
        SCOPED_TRACE(row.code);
        EXPECT_EQ(info.status, row.status);
        EXPECT_EQ(info.type, row.type);
        EXPECT_EQ(info.code, row.code);
        EXPECT_FALSE(info.message.empty());
    }
}

TEST(Describe, MessagesFromTheSpec) {
    EXPECT_EQ(describe(Outcome::invalid_key).message, "The API key provided is invalid.");
    EXPECT_EQ(describe(Outcome::wrong_environment).message, "The API key provided is invalid.");
    EXPECT_EQ(describe(Outcome::multiple_keys).message, "Multiple API keys were provided.");
    EXPECT_EQ(describe(Outcome::plan_required).message,
              "The API is available on paid plans only.");
    EXPECT_EQ(std::string(describe(Outcome::insufficient_scope).message) + "diagrams:write" +
                  std::string(describe(Outcome::insufficient_scope).message_tail),
              "The API key does not have the required scope 'diagrams:write'.");
}

// ---- The envelope.

TEST(WriteErrorBody, SpecExampleExactly) {
    EXPECT_EQ(body(Outcome::invalid_key, "req_1a2b3c4d5e6f", ""),
              R"({"error":{"type":"authentication_error","code":"invalid_api_key",)"
              R"("message":"The API key provided is invalid."},"request_id":"req_1a2b3c4d5e6f"})"
              "\n");
}

TEST(WriteErrorBody, InsufficientScopeExactly) {
    EXPECT_EQ(body(Outcome::insufficient_scope, "req_0000000000000", "diagrams:write"),
              R"({"error":{"type":"permission_error","code":"insufficient_scope",)"
              R"("message":"The API key does not have the required scope 'diagrams:write'."},)"
              R"("request_id":"req_0000000000000"})"
              "\n");
}

TEST(WriteErrorBody, EveryOutcomeIsValidJsonWithTheTableValues) {
    for (Outcome o : kAllErrors) {
        const OutcomeInfo &info = describe(o);
        SCOPED_TRACE(info.code);
        const std::string text = body(o, "req_abcdefghijklm", "read");
        auto env = envelope(text);
        ASSERT_TRUE(env) << text;
        EXPECT_EQ(env->type, info.type);
        EXPECT_EQ(env->code, info.code);
        EXPECT_EQ(env->request_id, "req_abcdefghijklm");
        if (info.message_tail.empty()) {
            // The detail only appears in messages that name one.
            EXPECT_EQ(env->message, info.message);
        } else {
            EXPECT_EQ(env->message, std::string(info.message) + "read" + std::string(info.message_tail));
        }
    }
}

TEST(WriteErrorBody, PlanRequiredAndMissingKeyMessages) {
    auto plan = envelope(body(Outcome::plan_required, "req_x", "ignored"));
    ASSERT_TRUE(plan);
    EXPECT_EQ(plan->message, "The API is available on paid plans only.");
    EXPECT_EQ(plan->code, "plan_required");
    auto missing = envelope(body(Outcome::missing_key, "req_x", ""));
    ASSERT_TRUE(missing);
    EXPECT_EQ(missing->code, "missing_api_key");
    EXPECT_EQ(missing->type, "authentication_error");
    auto multiple = envelope(body(Outcome::multiple_keys, "req_x", ""));
    ASSERT_TRUE(multiple);
    EXPECT_EQ(multiple->message, "Multiple API keys were provided.");
    EXPECT_EQ(multiple->code, "invalid_api_key");
}

TEST(WriteErrorBody, RateLimitedNamesTheCategory) {
    auto env = envelope(body(Outcome::rate_limited, "req_x", "write"));
    ASSERT_TRUE(env);
    EXPECT_EQ(env->code, "rate_limit_exceeded");
    EXPECT_EQ(env->type, "rate_limit_error");
    EXPECT_NE(env->message.find("write"), std::string::npos) << env->message;
}

TEST(WriteErrorBody, HostileScopeIsEscapedAndSurvivesDecoding) {
    const std::string scope = "a\"b\\c\n\t\x01\x7f</script>";
    const std::string text = body(Outcome::insufficient_scope, "req_x", scope);
    auto env = envelope(text);
    ASSERT_TRUE(env) << text;
    EXPECT_EQ(env->message, "The API key does not have the required scope '" + scope + "'.");
    // No raw control byte made it into the body (only the final newline).
    for (std::size_t i = 0; i + 1 < text.size(); i++) {
        EXPECT_GE(static_cast<unsigned char>(text[i]), 0x20) << "at " << i;
    }
    EXPECT_EQ(text.back(), '\n');
}

TEST(WriteErrorBody, ValidUtf8ScopeIsKeptInvalidIsReplaced) {
    auto ok = envelope(body(Outcome::insufficient_scope, "req_x", "\xc3\xa9t\xc3\xa9"));
    ASSERT_TRUE(ok);
    EXPECT_EQ(ok->message, "The API key does not have the required scope '\xc3\xa9t\xc3\xa9'.");

    const std::string text = body(Outcome::insufficient_scope, "req_x", "a\xff\xc0\xafz");
    auto bad = envelope(text);
    ASSERT_TRUE(bad) << text;
    EXPECT_NE(bad->message.find("'a\xef\xbf\xbd"), std::string::npos) << bad->message;
    EXPECT_NE(bad->message.find("z'."), std::string::npos) << bad->message;
}

TEST(WriteErrorBody, DetailIsCutToKMaxDetailBytes) {
    const std::string scope = std::string(kMaxDetail, 'a') + "TAIL";
    auto env = envelope(body(Outcome::insufficient_scope, "req_x", scope));
    ASSERT_TRUE(env);
    EXPECT_EQ(env->message, "The API key does not have the required scope '" +
                                std::string(kMaxDetail, 'a') + "'.");
}

TEST(WriteErrorBody, DetailHoldsTheLongestRateDescription) {
    // A 128-byte category and the largest rate: the 429 message is whole.
    char detail[kMaxLimitDetail];
    const std::size_t n =
        describe_limit(detail, Rate{1000000000, 3600}, std::string(128, 'c'));
    ASSERT_LE(n, kMaxDetail);
    auto env = envelope(body(Outcome::rate_limited, "req_x", std::string_view(detail, n)));
    ASSERT_TRUE(env);
    EXPECT_NE(env->message.find(std::string(128, 'c') + "' requests."), std::string::npos)
        << env->message;
}

TEST(WriteErrorBody, CutInsideAMultiByteCharacterStaysValid) {
    // ASCII bytes then "é" across the cut: a lone lead byte is left.
    const std::string scope = std::string(kMaxDetail - 1, 'a') + "\xc3\xa9";
    const std::string text = body(Outcome::insufficient_scope, "req_x", scope);
    auto env = envelope(text);
    ASSERT_TRUE(env) << text;
    EXPECT_EQ(env->message, "The API key does not have the required scope '" +
                                std::string(kMaxDetail - 1, 'a') + "\xef\xbf\xbd'.");
}

TEST(WriteErrorBody, RequestIdIsEscapedAndCutTo64Bytes) {
    auto env = envelope(body(Outcome::missing_key, std::string(64, 'r') + "XYZ", ""));
    ASSERT_TRUE(env);
    EXPECT_EQ(env->request_id, std::string(64, 'r'));
    auto odd = envelope(body(Outcome::missing_key, "req_\"\\\n", ""));
    ASSERT_TRUE(odd);
    EXPECT_EQ(odd->request_id, "req_\"\\\n");
}

TEST(WriteErrorBody, WorstCaseDetailFitsTheBuffer) {
    // The largest body the module can produce: a request id of
    // kRequestIdLength (17) and a detail of 128 bytes that all escape to 6.
    const std::string text =
        body(Outcome::insufficient_scope, "req_0123456789abc", std::string(kMaxDetail, '\x01'));
    EXPECT_LE(text.size(), kMaxErrorBody);
    EXPECT_TRUE(envelope(text));
}

// BUG (outcome.cpp, write_error_body): the function accepts any request id
// and cuts it to 64 bytes, escaping each byte to up to 6, but kMaxErrorBody
// (1280) only covers a fully escaped detail. With a 64-byte request id of
// control bytes and a 128-byte detail of control bytes the body is 1295
// bytes, 15 past the buffer the caller is told to provide. Not reachable from
// the glue today (it always passes a 17-byte generated id).
TEST(WriteErrorBody, WorstCaseRequestIdAndDetailFitTheBuffer) {
    const std::string text = body(Outcome::insufficient_scope, std::string(64, '\x01'),
                                  std::string(kMaxDetail, '\x01'));
    EXPECT_LE(text.size(), kMaxErrorBody);
    EXPECT_TRUE(envelope(text));
}

}  // namespace
}  // namespace apikey
