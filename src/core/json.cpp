#include "json.h"

namespace apikey {

std::size_t utf8_sequence(std::string_view s, std::size_t i) noexcept {
    const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]); };
    const unsigned char c = b(0);
    std::size_t n;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else {
        return 0;
    }
    if (i + n > s.size()) return 0;
    if (b(1) < lo || b(1) > hi) return 0;
    for (std::size_t k = 2; k < n; k++) {
        if (b(k) < 0x80 || b(k) > 0xbf) return 0;
    }
    return n;
}

std::size_t json_escape(std::string_view s, char *out) noexcept {
    static constexpr char hex[] = "0123456789abcdef";
    char *p = out;
    for (std::size_t i = 0; i < s.size();) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c == '"' || c == '\\') {
            *p++ = '\\';
            *p++ = static_cast<char>(c);
        } else if (c < 0x20 || c == 0x7f) {
            *p++ = '\\';
            *p++ = 'u';
            *p++ = '0';
            *p++ = '0';
            *p++ = hex[c >> 4];
            *p++ = hex[c & 0xf];
        } else if (c >= 0x80) {
            std::size_t n = utf8_sequence(s, i);
            if (n == 0) {
                for (char r : {'\\', 'u', 'f', 'f', 'f', 'd'}) *p++ = r;
                i++;
            } else {
                for (std::size_t k = 0; k < n; k++) *p++ = s[i + k];
                i += n;
            }
            continue;
        } else {
            *p++ = static_cast<char>(c);
        }
        i++;
    }
    return static_cast<std::size_t>(p - out);
}

}  // namespace apikey
