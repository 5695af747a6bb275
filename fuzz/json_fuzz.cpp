// libFuzzer target: the JSON writer (json_escape, write_error_body,
// describe_limit) against a strict, independent JSON validator.
//
//   * json_escape writes at most json_escaped_max(n) bytes (into a heap
//     buffer of exactly that size, so ASan sees one byte too many), and
//     '"' + output + '"' is a valid JSON string (RFC 8259, strict UTF-8,
//     no lone surrogate escapes) that decodes to the input with every byte
//     that does not start a valid UTF-8 sequence replaced by U+FFFD.
//   * write_error_body writes at most kMaxErrorBody bytes (exact-size heap
//     buffer) of one valid JSON document plus a newline:
//     {"error":{"type":T,"code":C,"message":M},"request_id":R} with T, C and
//     M from describe(outcome), the detail cut to kMaxDetail bytes and the
//     request id to kMaxRequestId bytes, for every outcome and any bytes.
//   * describe_limit writes a NUL-terminated string shorter than
//     kMaxLimitDetail and returns its length; the 429 body built from it obeys
//     the rules above.
//
// Input: [outcome][detail length][rate count: 4 bytes][period][detail][request id]
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>

#include "core/json.h"
#include "core/limit_policy.h"
#include "core/outcome.h"
#include "support/strict_json.h"

namespace {

using namespace apikey;
using strict_json::replace_invalid_utf8;
using strict_json::Value;

[[noreturn]] void fail(const char *what, std::string_view out = {}) {
    std::fprintf(stderr, "json_fuzz: %s\n--- output (%zu bytes):\n", what, out.size());
    for (unsigned char c : out) {
        if (c >= 0x20 && c < 0x7f) {
            std::fputc(c, stderr);
        } else {
            std::fprintf(stderr, "\\x%02x", c);
        }
    }
    std::fputc('\n', stderr);
    std::abort();
}

void check_escape(std::string_view s) {
    const std::size_t max = json_escaped_max(s.size());
    std::unique_ptr<char[]> buf(new char[max == 0 ? 1 : max]);
    const std::size_t n = json_escape(s, buf.get());
    if (n > max) fail("json_escape wrote more than json_escaped_max", {buf.get(), max});
    const std::string quoted = "\"" + std::string(buf.get(), n) + "\"";
    const auto decoded = strict_json::parse_string(quoted);
    if (!decoded) fail("json_escape output is not a valid JSON string", quoted);
    if (*decoded != replace_invalid_utf8(s))
        fail("json_escape output decodes to something else", quoted);
}

const std::string *member(const Value &obj, std::string_view name) {
    for (const auto &[k, v] : obj.members) {
        if (k == name && v.kind == Value::string) return &v.str;
    }
    return nullptr;
}

void check_body(Outcome outcome, std::string_view request_id, std::string_view detail) {
    std::unique_ptr<char[]> buf(new char[kMaxErrorBody]);
    const std::size_t n = write_error_body(buf.get(), outcome, request_id, detail);
    const std::string_view body(buf.get(), n);
    if (n > kMaxErrorBody) fail("write_error_body wrote more than kMaxErrorBody", body);
    if (n == 0 || body.back() != '\n') fail("the error body does not end with a newline", body);
    const auto doc = strict_json::parse(body);
    if (!doc) fail("the error body is not valid JSON", body);

    if (doc->kind != Value::object || doc->members.size() != 2 ||
        doc->members[0].first != "error" || doc->members[0].second.kind != Value::object ||
        doc->members[1].first != "request_id" || doc->members[1].second.kind != Value::string) {
        fail("the error body is not the envelope", body);
    }
    const Value &error = doc->members[0].second;
    const OutcomeInfo &info = describe(outcome);
    const std::string *type = member(error, "type");
    const std::string *code = member(error, "code");
    const std::string *message = member(error, "message");
    if (error.members.size() != 3 || !type || !code || !message) fail("error object fields", body);
    if (*type != info.type || *code != info.code) fail("type or code differ", body);
    std::string want = std::string(info.message);
    if (!info.message_tail.empty()) {
        want += replace_invalid_utf8(detail.substr(0, kMaxDetail)) + std::string(info.message_tail);
    }
    if (*message != want) fail("message differs", body);
    if (doc->members[1].second.str != replace_invalid_utf8(request_id.substr(0, kMaxRequestId))) {
        fail("request_id differs", body);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
    if (size < 7) {
        check_escape({reinterpret_cast<const char *>(data), size});
        return 0;
    }
    const auto outcome = static_cast<Outcome>(data[0] % kOutcomeCount);
    std::size_t detail_len = data[1];
    std::uint32_t count;
    std::memcpy(&count, data + 2, 4);
    static const std::uint32_t periods[] = {1, 60, 3600};
    const std::uint32_t period = periods[data[6] % 3];
    const std::string_view rest(reinterpret_cast<const char *>(data + 7), size - 7);
    if (detail_len > rest.size()) detail_len = rest.size();
    const std::string_view detail = rest.substr(0, detail_len);
    const std::string_view request_id = rest.substr(detail_len);

    check_escape(rest);
    check_escape(detail);
    check_body(outcome, request_id, detail);

    // A 429's detail, as send_refusal builds it.
    std::unique_ptr<char[]> limit(new char[kMaxLimitDetail]);
    const std::size_t ln = describe_limit(limit.get(), Rate{count, period}, detail);
    if (ln >= kMaxLimitDetail || std::strlen(limit.get()) != ln) {
        fail("describe_limit length", {limit.get(), ln < kMaxLimitDetail ? ln : kMaxLimitDetail});
    }
    check_body(Outcome::rate_limited, request_id, {limit.get(), ln});
    return 0;
}
