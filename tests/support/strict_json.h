// A strict JSON reader (RFC 8259) for the unit tests and the fuzz targets,
// written independently of the code under test (src/core/json.cpp and the
// writers built on it), so that "valid JSON" is checked by a second opinion.
//
// Strict means: exactly one value with optional whitespace around it, no
// trailing commas, no leading zeros, raw bytes in strings must be valid UTF-8
// (RFC 3629: shortest form, no surrogates, at most U+10FFFF) and not control
// characters, and \u escapes may not leave a lone surrogate.
//
// Header-only; tests include it as "support/strict_json.h" (CMakeLists.txt
// puts tests/ on the include path of unit_tests and of the fuzz targets).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace strict_json {

// Length of the valid UTF-8 sequence that starts at s[i], or 0 if there is none.
inline std::size_t utf8_len(std::string_view s, std::size_t i) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t n;
    std::uint32_t cp;
    if (c < 0x80) return 1;
    if ((c & 0xe0) == 0xc0) {
        n = 2;
        cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
        n = 3;
        cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (i + n > s.size()) return 0;
    for (std::size_t k = 1; k < n; k++) {
        const auto b = static_cast<unsigned char>(s[i + k]);
        if ((b & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (b & 0x3f);
    }
    static const std::uint32_t min_for_len[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_for_len[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return n;
}

// s with every byte that does not start a valid UTF-8 sequence replaced by
// U+FFFD: what a JSON string written by json_escape must decode to.
inline std::string replace_invalid_utf8(std::string_view s) {
    std::string out;
    for (std::size_t i = 0; i < s.size();) {
        const std::size_t n = utf8_len(s, i);
        if (n == 0) {
            out += "\xef\xbf\xbd";
            i++;
        } else {
            out.append(s.substr(i, n));
            i += n;
        }
    }
    return out;
}

inline void append_utf8(std::string &out, std::uint32_t cp) {
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

struct Value {
    enum Kind { null, boolean, number, string, array, object } kind = null;
    // string: the decoded value; number, boolean, null: the text as written.
    std::string str;
    std::vector<Value> items;                            // array
    std::vector<std::pair<std::string, Value>> members;  // object, in order, duplicates kept

    // The first member called name, or nullptr (also when this is no object).
    const Value *get(std::string_view name) const {
        for (const auto &m : members) {
            if (m.first == name) return &m.second;
        }
        return nullptr;
    }
};

class Reader {
public:
    static constexpr int kMaxDepth = 64;

    explicit Reader(std::string_view text) : s_(text) {}

    // The whole text is one value with optional whitespace around it.
    std::optional<Value> document() {
        ws();
        Value v;
        if (!value(v, 0)) return std::nullopt;
        ws();
        if (i_ != s_.size()) return std::nullopt;
        return v;
    }

    // The whole text is one string (quotes included, no whitespace around it).
    std::optional<std::string> string_only() {
        std::string out;
        if (!string(out) || i_ != s_.size()) return std::nullopt;
        return out;
    }

private:
    bool more() const { return i_ < s_.size(); }
    bool at(char c) const { return more() && s_[i_] == c; }
    static bool is_digit(char c) { return c >= '0' && c <= '9'; }

    void ws() {
        while (more() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) {
            i_++;
        }
    }

    bool lit(std::string_view w) {
        if (s_.substr(i_, w.size()) != w) return false;
        i_ += w.size();
        return true;
    }

    bool value(Value &v, int depth) {
        if (depth > kMaxDepth || !more()) return false;
        const std::size_t start = i_;
        bool ok;
        switch (s_[i_]) {
        case '{': v.kind = Value::object; return object(v, depth);
        case '[': v.kind = Value::array; return array(v, depth);
        case '"': v.kind = Value::string; return string(v.str);
        case 't':
            v.kind = Value::boolean;
            ok = lit("true");
            break;
        case 'f':
            v.kind = Value::boolean;
            ok = lit("false");
            break;
        case 'n':
            v.kind = Value::null;
            ok = lit("null");
            break;
        default:
            v.kind = Value::number;
            ok = number();
            break;
        }
        if (ok) v.str = std::string(s_.substr(start, i_ - start));
        return ok;
    }

    bool object(Value &v, int depth) {
        i_++;
        ws();
        if (at('}')) return ++i_, true;
        for (;;) {
            ws();
            std::string name;
            if (!at('"') || !string(name)) return false;
            ws();
            if (!at(':')) return false;
            i_++;
            ws();
            Value m;
            if (!value(m, depth + 1)) return false;
            v.members.emplace_back(std::move(name), std::move(m));
            ws();
            if (at('}')) return ++i_, true;
            if (!at(',')) return false;
            i_++;
        }
    }

    bool array(Value &v, int depth) {
        i_++;
        ws();
        if (at(']')) return ++i_, true;
        for (;;) {
            ws();
            Value item;
            if (!value(item, depth + 1)) return false;
            v.items.push_back(std::move(item));
            ws();
            if (at(']')) return ++i_, true;
            if (!at(',')) return false;
            i_++;
        }
    }

    bool digits() {
        const std::size_t start = i_;
        while (more() && is_digit(s_[i_])) i_++;
        return i_ > start;
    }

    // -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
    bool number() {
        if (at('-')) i_++;
        if (at('0')) {
            i_++;
        } else if (!digits()) {
            return false;
        }
        if (at('.')) {
            i_++;
            if (!digits()) return false;
        }
        if (at('e') || at('E')) {
            i_++;
            if (at('+') || at('-')) i_++;
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
            if (c >= '0' && c <= '9') {
                v |= static_cast<std::uint32_t>(c - '0');
            } else if (c >= 'a' && c <= 'f') {
                v |= static_cast<std::uint32_t>(c - 'a' + 10);
            } else if (c >= 'A' && c <= 'F') {
                v |= static_cast<std::uint32_t>(c - 'A' + 10);
            } else {
                return std::nullopt;
            }
        }
        return v;
    }

    bool string(std::string &out) {
        if (!at('"')) return false;
        i_++;
        for (;;) {
            if (!more()) return false;
            const auto c = static_cast<unsigned char>(s_[i_]);
            if (c == '"') return ++i_, true;
            if (c < 0x20) return false;
            if (c != '\\') {
                const std::size_t n = utf8_len(s_, i_);
                if (n == 0) return false;
                out.append(s_.substr(i_, n));
                i_ += n;
                continue;
            }
            if (++i_ >= s_.size()) return false;
            switch (s_[i_++]) {
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
                append_utf8(out, *cp);
                break;
            }
            default: return false;
            }
        }
    }

    std::string_view s_;
    std::size_t i_ = 0;
};

// The value of a whole JSON text, or nullopt if it is not valid JSON.
inline std::optional<Value> parse(std::string_view text) { return Reader(text).document(); }

// The decoded value of a text that is exactly one JSON string (quotes
// included), or nullopt.
inline std::optional<std::string> parse_string(std::string_view text) {
    return Reader(text).string_only();
}

// The decoded value of '"' + body + '"', or nullopt if that is not a valid
// JSON string (for checking what json_escape writes between the quotes).
inline std::optional<std::string> decode_string_body(std::string_view body) {
    return parse_string("\"" + std::string(body) + "\"");
}

}  // namespace strict_json
