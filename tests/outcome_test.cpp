// The SPEC's error table and the JSON envelope of every refusal.
#include <gtest/gtest.h>

#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/limit_policy.h"
#include "core/outcome.h"
#include "support/strict_json.h"

namespace apikey {
namespace {

// The envelope is checked with the strict reader of tests/support/strict_json.h
// (tested in strict_json_test.cpp).
using strict_json::Value;

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
    auto doc = strict_json::parse(text);
    if (!doc || doc->kind != Value::object || doc->members.size() != 2) return std::nullopt;
    const Value *error = doc->get("error");
    const Value *id = doc->get("request_id");
    if (!error || !id || error->kind != Value::object || id->kind != Value::string ||
        error->members.size() != 3) {
        return std::nullopt;
    }
    const Value *type = error->get("type");
    const Value *code = error->get("code");
    const Value *message = error->get("message");
    if (!type || !code || !message || type->kind != Value::string || code->kind != Value::string ||
        message->kind != Value::string) {
        return std::nullopt;
    }
    return Envelope{type->str, code->str, message->str, id->str};
}

constexpr Outcome kAllErrors[] = {
    Outcome::missing_key,       Outcome::invalid_key,        Outcome::multiple_keys,
    Outcome::wrong_environment, Outcome::revoked_key,        Outcome::expired_key,
    Outcome::plan_required,     Outcome::insufficient_scope, Outcome::rate_limited,
    Outcome::ip_not_allowed,
};

// ---- The envelope check must be able to say no.

TEST(EnvelopeSelfTest, RefusesWhatIsNotTheEnvelope) {
    EXPECT_TRUE(envelope(R"({"error":{"type":"a","code":"b","message":"c"},"request_id":"r"})"));
    EXPECT_FALSE(envelope(R"({"error":{"type":"a","code":"b"},"request_id":"r"})"));
    EXPECT_FALSE(envelope(R"({"error":{"type":"a","code":"b","message":"c"},"request_id":"r"} x)"));
    EXPECT_FALSE(envelope(R"({"error":{"type":"a","code":"b","message":1},"request_id":"r"})"));
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
        {Outcome::ip_not_allowed, 403, "permission_error", "ip_not_allowed"},
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
    EXPECT_EQ(describe(Outcome::plan_required).message, "The API is available on paid plans only.");
    EXPECT_EQ(describe(Outcome::ip_not_allowed).message,
              "The API key cannot be used from this IP address.");
    EXPECT_TRUE(describe(Outcome::ip_not_allowed).message_tail.empty());
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
            EXPECT_EQ(env->message,
                      std::string(info.message) + "read" + std::string(info.message_tail));
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
    const std::size_t n = describe_limit(detail, Rate{1000000000, 3600}, std::string(128, 'c'));
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
    const std::string text = body(Outcome::insufficient_scope, "req_0123456789abc",
                                  std::string(kMaxDetail, '\x01'));
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
