// libFuzzer target: parse_rate and parse_timestamp against independent
// references, and the round trip through format_timestamp.
//
//   * parse_rate accepts exactly /^[0-9]+r\/[smhd]$/ with a count of 1 to
//     1,000,000,000 (leading zeros allowed) and nothing else.
//   * parse_timestamp accepts exactly "YYYY-MM-DD" (midnight UTC) and
//     "YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)" (T and Z in either case),
//     years 1970-9999, real calendar dates, hours 0-23, minutes and seconds
//     0-59, whose instant (after the offset) is within
//     1970-01-01T00:00:00Z..9999-12-31T23:59:59Z, and returns the seconds a
//     days-counting reference computes.
//   * Every accepted time formats to a 20-byte "YYYY-MM-DDTHH:MM:SSZ" that
//     parses back to the same second, and a canonical input formats back to
//     itself. format_timestamp writes exactly 20 bytes for any int64.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "core/rate.h"
#include "core/timestamp.h"

namespace {

using namespace apikey;

[[noreturn]] void fail(const char *what, std::string_view input, const std::string &more = "") {
    std::fprintf(stderr, "rate_timestamp_fuzz: %s: input [%.*s] %s\n", what,
                 static_cast<int>(input.size()), input.data(), more.c_str());
    std::abort();
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

std::optional<Rate> ref_rate(std::string_view s) {
    std::size_t i = 0;
    while (i < s.size() && is_digit(s[i])) i++;
    if (i == 0 || s.size() != i + 3 || s[i] != 'r' || s[i + 1] != '/') return std::nullopt;
    std::uint32_t period;
    switch (s[i + 2]) {
    case 's': period = 1; break;
    case 'm': period = 60; break;
    case 'h': period = 3600; break;
    case 'd': period = 86400; break;
    default: return std::nullopt;
    }
    std::string_view digits = s.substr(0, i);
    while (digits.size() > 1 && digits.front() == '0') digits.remove_prefix(1);
    if (digits.size() > 10) return std::nullopt;
    std::uint64_t count = 0;
    for (char c : digits) count = count * 10 + static_cast<std::uint64_t>(c - '0');
    if (count == 0 || count > 1000000000) return std::nullopt;
    return Rate{static_cast<std::uint32_t>(count), period};
}

constexpr std::int64_t kLastFormattable = 253402300799;  // 9999-12-31T23:59:59Z

bool leap(long y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

int month_days(long y, int m) {
    static const int d[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && leap(y) ? 29 : d[m - 1];
}

// Digits at [pos, pos+n) as a number, or -1.
long num(std::string_view s, std::size_t pos, std::size_t n) {
    if (pos + n > s.size()) return -1;
    long v = 0;
    for (std::size_t i = pos; i < pos + n; i++) {
        if (!is_digit(s[i])) return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

std::optional<std::int64_t> ref_timestamp(std::string_view s) {
    if (s.size() < 10 || s[4] != '-' || s[7] != '-') return std::nullopt;
    const long y = num(s, 0, 4), mo = num(s, 5, 2), d = num(s, 8, 2);
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > month_days(y, static_cast<int>(mo))) {
        return std::nullopt;
    }
    std::int64_t days = 0;
    for (long yy = 1970; yy < y; yy++) days += leap(yy) ? 366 : 365;
    for (int mm = 1; mm < mo; mm++) days += month_days(y, mm);
    days += d - 1;
    std::int64_t t = days * 86400;
    if (s.size() == 10) return t;

    if (s.size() < 20 || (s[10] != 'T' && s[10] != 't') || s[13] != ':' || s[16] != ':') {
        return std::nullopt;
    }
    const long h = num(s, 11, 2), mi = num(s, 14, 2), se = num(s, 17, 2);
    if (h < 0 || h > 23 || mi < 0 || mi > 59 || se < 0 || se > 59) return std::nullopt;
    t += h * 3600 + mi * 60 + se;
    std::string_view zone = s.substr(19);
    if (!zone.empty() && zone.front() == '.') {
        std::size_t n = 1;
        while (n < zone.size() && is_digit(zone[n])) n++;
        if (n == 1) return std::nullopt;
        zone.remove_prefix(n);
    }
    if (zone == "Z" || zone == "z") return t;
    if (zone.size() != 6 || (zone[0] != '+' && zone[0] != '-') || zone[3] != ':') {
        return std::nullopt;
    }
    const long zh = num(zone, 1, 2), zm = num(zone, 4, 2);
    if (zh < 0 || zh > 23 || zm < 0 || zm > 59) return std::nullopt;
    const std::int64_t off = zh * 3600 + zm * 60;
    t = zone[0] == '+' ? t - off : t + off;
    if (t < 0 || t > kLastFormattable) return std::nullopt;  // outside what can be written back
    return t;
}

bool canonical_shape(std::string_view f) {
    const char *shape = "dddd-dd-ddTdd:dd:ddZ";
    if (f.size() != 20) return false;
    for (std::size_t i = 0; i < 20; i++) {
        if (shape[i] == 'd' ? !is_digit(f[i]) : f[i] != shape[i]) return false;
    }
    return true;
}

void check_format(std::int64_t t) {
    // Exactly 20 bytes, into a heap buffer of exactly 20 bytes.
    std::unique_ptr<char[]> out(new char[20]);
    format_timestamp(t, out.get());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
    const std::string_view s(reinterpret_cast<const char *>(data), size);

    // ---- rates
    const std::optional<Rate> rate = parse_rate(s);
    const std::optional<Rate> want_rate = ref_rate(s);
    if (rate.has_value() != want_rate.has_value() ||
        (rate &&
         (rate->count != want_rate->count || rate->period_seconds != want_rate->period_seconds))) {
        fail("parse_rate differs from the reference", s,
             rate ? std::to_string(rate->count) + "/" + std::to_string(rate->period_seconds)
                  : "(refused)");
    }

    // ---- timestamps
    const std::optional<std::int64_t> t = parse_timestamp(s);
    const std::optional<std::int64_t> want = ref_timestamp(s);
    if (t.has_value() != want.has_value() || (t && *t != *want)) {
        fail("parse_timestamp differs from the reference", s,
             "got " + (t ? std::to_string(*t) : std::string("(refused)")) + ", expected " +
                 (want ? std::to_string(*want) : std::string("(refused)")));
    }
    if (t) {
        char f[21] = {};
        format_timestamp(*t, f);
        const std::string_view fs(f, 20);
        if (*t < 0 || *t > kLastFormattable || !canonical_shape(fs)) {
            fail("an accepted time that format_timestamp cannot write back", s, f);
        }
        const std::optional<std::int64_t> back = parse_timestamp(fs);
        if (!back || *back != *t) fail("round trip through format_timestamp", s, f);
        if (canonical_shape(s) && fs != s) fail("a canonical time does not format to itself", s, f);
    }

    // ---- format_timestamp on any 64-bit value
    if (size >= 8) {
        std::int64_t any;
        std::memcpy(&any, data, 8);
        check_format(any);
        // and near the edges of the formattable range
        check_format(
            static_cast<std::int64_t>(static_cast<std::uint64_t>(any) % (kLastFormattable + 1)));
    }
    return 0;
}
