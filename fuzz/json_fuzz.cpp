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
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/json.h"
#include "core/limit_policy.h"
#include "core/outcome.h"

namespace {

using namespace apikey;

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

// ---- a strict JSON reader (RFC 8259), independent of the code under test

struct Value {
    enum Kind { null, boolean, number, string, array, object } kind = null;
    std::string str;                                     // string
    std::vector<Value> items;                            // array
    std::vector<std::pair<std::string, Value>> members;  // object, in order
};

class StrictJson {
public:
    explicit StrictJson(std::string_view text) : s_(text) {}

    // The whole text is one value with optional whitespace around it.
    std::optional<Value> document() {
        ws();
        Value v;
        if (!value(v, 0)) return std::nullopt;
        ws();
        if (i_ != s_.size()) return std::nullopt;
        return v;
    }

    // The whole text is one string (quotes included).
    std::optional<std::string> string_only() {
        std::string out;
        if (!string(out) || i_ != s_.size()) return std::nullopt;
        return out;
    }

private:
    void ws() {
        while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) {
            i_++;
        }
    }

    bool lit(std::string_view w) {
        if (s_.substr(i_, w.size()) != w) return false;
        i_ += w.size();
        return true;
    }

    bool value(Value &v, int depth) {
        if (depth > 64 || i_ >= s_.size()) return false;
        switch (s_[i_]) {
        case '{': v.kind = Value::object; return object(v, depth);
        case '[': v.kind = Value::array; return array(v, depth);
        case '"': v.kind = Value::string; return string(v.str);
        case 't': v.kind = Value::boolean; return lit("true");
        case 'f': v.kind = Value::boolean; return lit("false");
        case 'n': v.kind = Value::null; return lit("null");
        default: v.kind = Value::number; return number();
        }
    }

    bool object(Value &v, int depth) {
        i_++;
        ws();
        if (i_ < s_.size() && s_[i_] == '}') return ++i_, true;
        for (;;) {
            ws();
            std::string name;
            if (i_ >= s_.size() || s_[i_] != '"' || !string(name)) return false;
            ws();
            if (i_ >= s_.size() || s_[i_++] != ':') return false;
            ws();
            Value m;
            if (!value(m, depth + 1)) return false;
            v.members.emplace_back(std::move(name), std::move(m));
            ws();
            if (i_ >= s_.size()) return false;
            if (s_[i_] == '}') return ++i_, true;
            if (s_[i_++] != ',') return false;
        }
    }

    bool array(Value &v, int depth) {
        i_++;
        ws();
        if (i_ < s_.size() && s_[i_] == ']') return ++i_, true;
        for (;;) {
            ws();
            Value item;
            if (!value(item, depth + 1)) return false;
            v.items.push_back(std::move(item));
            ws();
            if (i_ >= s_.size()) return false;
            if (s_[i_] == ']') return ++i_, true;
            if (s_[i_++] != ',') return false;
        }
    }

    bool digits() {
        const std::size_t start = i_;
        while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') i_++;
        return i_ > start;
    }

    bool number() {
        if (i_ < s_.size() && s_[i_] == '-') i_++;
        if (i_ < s_.size() && s_[i_] == '0') {
            i_++;
        } else if (!digits()) {
            return false;
        }
        if (i_ < s_.size() && s_[i_] == '.') {
            i_++;
            if (!digits()) return false;
        }
        if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
            i_++;
            if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) i_++;
            if (!digits()) return false;
        }
        return true;
    }

    std::optional<std::uint32_t> hex4() {
        if (i_ + 4 > s_.size()) return std::nullopt;
        std::uint32_t v = 0;
        for (int k = 0; k < 4; k++) {
            const char c = s_[i_++];
            v <<= 4;
            if (c >= '0' && c <= '9') v |= static_cast<std::uint32_t>(c - '0');
            else if (c >= 'a' && c <= 'f') v |= static_cast<std::uint32_t>(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') v |= static_cast<std::uint32_t>(c - 'A' + 10);
            else return std::nullopt;
        }
        return v;
    }

    static void put_utf8(std::string &out, std::uint32_t cp) {
        if (cp < 0x80) {
            out += static_cast<char>(cp);
        } else if (cp < 0x800) {
            out += static_cast<char>(0xc0 | cp >> 6);
            out += static_cast<char>(0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
            out += static_cast<char>(0xe0 | cp >> 12);
            out += static_cast<char>(0x80 | (cp >> 6 & 0x3f));
            out += static_cast<char>(0x80 | (cp & 0x3f));
        } else {
            out += static_cast<char>(0xf0 | cp >> 18);
            out += static_cast<char>(0x80 | (cp >> 12 & 0x3f));
            out += static_cast<char>(0x80 | (cp >> 6 & 0x3f));
            out += static_cast<char>(0x80 | (cp & 0x3f));
        }
    }

    // One UTF-8 scalar value at i_, strictly (RFC 3629): its length, or 0.
    std::size_t utf8() const {
        const auto c = static_cast<unsigned char>(s_[i_]);
        std::size_t n;
        std::uint32_t cp;
        if (c < 0x80) return 1;
        if ((c & 0xe0) == 0xc0) n = 2, cp = c & 0x1f;
        else if ((c & 0xf0) == 0xe0) n = 3, cp = c & 0x0f;
        else if ((c & 0xf8) == 0xf0) n = 4, cp = c & 0x07;
        else return 0;
        if (i_ + n > s_.size()) return 0;
        for (std::size_t k = 1; k < n; k++) {
            const auto b = static_cast<unsigned char>(s_[i_ + k]);
            if ((b & 0xc0) != 0x80) return 0;
            cp = cp << 6 | (b & 0x3f);
        }
        static const std::uint32_t min_for[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_for[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        return n;
    }

    bool string(std::string &out) {
        if (i_ >= s_.size() || s_[i_] != '"') return false;
        i_++;
        for (;;) {
            if (i_ >= s_.size()) return false;
            const auto c = static_cast<unsigned char>(s_[i_]);
            if (c == '"') return ++i_, true;
            if (c < 0x20) return false;
            if (c != '\\') {
                const std::size_t n = utf8();
                if (n == 0) return false;
                out.append(s_.substr(i_, n));
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
                auto cp = hex4();
                if (!cp) return false;
                if (*cp >= 0xdc00 && *cp <= 0xdfff) return false;  // lone low surrogate
                if (*cp >= 0xd800 && *cp <= 0xdbff) {
                    if (!lit("\\u")) return false;
                    auto lo = hex4();
                    if (!lo || *lo < 0xdc00 || *lo > 0xdfff) return false;
                    *cp = 0x10000 + ((*cp - 0xd800) << 10) + (*lo - 0xdc00);
                }
                put_utf8(out, *cp);
                break;
            }
            default: return false;
            }
        }
    }

    std::string_view s_;
    std::size_t i_ = 0;
};

// What a JSON string of the input must decode to: every byte that does not
// start a valid UTF-8 sequence (RFC 3629) becomes U+FFFD.
std::string sanitized(std::string_view s) {
    std::string out;
    for (std::size_t i = 0; i < s.size();) {
        const auto c = static_cast<unsigned char>(s[i]);
        std::size_t n = 0;
        std::uint32_t cp = 0;
        if (c < 0x80) n = 1, cp = c;
        else if (c >= 0xc0 && c < 0xe0) n = 2, cp = c & 0x1f;
        else if (c >= 0xe0 && c < 0xf0) n = 3, cp = c & 0x0f;
        else if (c >= 0xf0 && c < 0xf8) n = 4, cp = c & 0x07;
        bool ok = n != 0 && i + n <= s.size();
        for (std::size_t k = 1; ok && k < n; k++) {
            const auto b = static_cast<unsigned char>(s[i + k]);
            ok = (b & 0xc0) == 0x80;
            cp = cp << 6 | (b & 0x3f);
        }
        static const std::uint32_t min_for[] = {0, 0, 0x80, 0x800, 0x10000};
        ok = ok && cp >= min_for[n] && cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff);
        if (ok) {
            out.append(s.substr(i, n));
            i += n;
        } else {
            out += "\xef\xbf\xbd";
            i++;
        }
    }
    return out;
}

void check_escape(std::string_view s) {
    const std::size_t max = json_escaped_max(s.size());
    std::unique_ptr<char[]> buf(new char[max == 0 ? 1 : max]);
    const std::size_t n = json_escape(s, buf.get());
    if (n > max) fail("json_escape wrote more than json_escaped_max", {buf.get(), max});
    const std::string quoted = "\"" + std::string(buf.get(), n) + "\"";
    const auto decoded = StrictJson(quoted).string_only();
    if (!decoded) fail("json_escape output is not a valid JSON string", quoted);
    if (*decoded != sanitized(s)) fail("json_escape output decodes to something else", quoted);
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
    const auto doc = StrictJson(body).document();
    if (!doc) fail("the error body is not valid JSON", body);

    if (doc->kind != Value::object || doc->members.size() != 2 || doc->members[0].first != "error" ||
        doc->members[0].second.kind != Value::object || doc->members[1].first != "request_id" ||
        doc->members[1].second.kind != Value::string) {
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
        want += sanitized(detail.substr(0, kMaxDetail)) + std::string(info.message_tail);
    }
    if (*message != want) fail("message differs", body);
    if (doc->members[1].second.str != sanitized(request_id.substr(0, kMaxRequestId))) {
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
