#include "timestamp.h"

namespace apikey {

namespace {

// Howard Hinnant's days_from_civil: exact for the proleptic Gregorian calendar.
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) noexcept {
    y -= m <= 2;
    const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
    const auto yoe = static_cast<unsigned>(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

void civil_from_days(std::int64_t z, int &y, unsigned &m, unsigned &d) noexcept {
    z += 719468;
    const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const auto doe = static_cast<unsigned>(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    d = doy - (153 * mp + 2) / 5 + 1;
    m = mp < 10 ? mp + 3 : mp - 9;
    y = static_cast<int>(yoe + era * 400 + (m <= 2));
}

bool is_leap(int y) noexcept { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

unsigned days_in_month(int y, unsigned m) noexcept {
    static constexpr unsigned days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : days[m - 1];
}

// Reads exactly n digits at pos.
bool digits(std::string_view s, std::size_t pos, std::size_t n, unsigned &out) noexcept {
    if (pos + n > s.size()) return false;
    out = 0;
    for (std::size_t i = pos; i < pos + n; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        out = out * 10 + static_cast<unsigned>(s[i] - '0');
    }
    return true;
}

}  // namespace

std::optional<std::int64_t> parse_timestamp(std::string_view s) noexcept {
    unsigned year, month, day;
    if (!digits(s, 0, 4, year) || s.size() < 10 || s[4] != '-' || !digits(s, 5, 2, month) ||
        s[7] != '-' || !digits(s, 8, 2, day)) {
        return std::nullopt;
    }
    if (year < 1970 || month < 1 || month > 12 || day < 1 ||
        day > days_in_month(static_cast<int>(year), month)) {
        return std::nullopt;
    }
    std::int64_t seconds = days_from_civil(year, month, day) * 86400;
    if (s.size() == 10) return seconds;

    unsigned hour, minute, second;
    if ((s[10] != 'T' && s[10] != 't') || !digits(s, 11, 2, hour) || s.size() < 19 ||
        s[13] != ':' || !digits(s, 14, 2, minute) || s[16] != ':' || !digits(s, 17, 2, second) ||
        hour > 23 || minute > 59 || second > 59) {
        return std::nullopt;
    }
    seconds += hour * 3600 + minute * 60 + second;

    std::size_t pos = 19;
    if (pos < s.size() && s[pos] == '.') {
        std::size_t start = ++pos;
        while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') pos++;
        if (pos == start) return std::nullopt;
    }
    if (pos == s.size()) return std::nullopt;  // a zone is required: no guessing local time
    if ((s[pos] == 'Z' || s[pos] == 'z') && pos + 1 == s.size()) return seconds;

    unsigned zh, zm;
    if ((s[pos] != '+' && s[pos] != '-') || s.size() != pos + 6 || !digits(s, pos + 1, 2, zh) ||
        s[pos + 3] != ':' || !digits(s, pos + 4, 2, zm) || zh > 23 || zm > 59) {
        return std::nullopt;
    }
    const std::int64_t offset = zh * 3600 + zm * 60;
    seconds = s[pos] == '+' ? seconds - offset : seconds + offset;
    // An offset can push a time before 1970 or past 9999: not a time a key
    // file means, and not one format_timestamp could write back.
    constexpr std::int64_t kLast = 253402300799;  // 9999-12-31T23:59:59Z
    if (seconds < 0 || seconds > kLast) return std::nullopt;
    return seconds;
}

void format_timestamp(std::int64_t seconds, char out[20]) noexcept {
    std::int64_t days = seconds / 86400;
    std::int64_t rest = seconds % 86400;
    if (rest < 0) {
        rest += 86400;
        days--;
    }
    int y;
    unsigned m, d;
    civil_from_days(days, y, m, d);
    const unsigned parts[] = {static_cast<unsigned>(y),
                              m,
                              d,
                              static_cast<unsigned>(rest / 3600),
                              static_cast<unsigned>(rest / 60 % 60),
                              static_cast<unsigned>(rest % 60)};
    char *p = out;
    auto put = [&p](unsigned v, int width, char sep) {
        for (int i = width - 1; i >= 0; i--) {
            p[i] = static_cast<char>('0' + v % 10);
            v /= 10;
        }
        p += width;
        if (sep) *p++ = sep;
    };
    put(parts[0], 4, '-');
    put(parts[1], 2, '-');
    put(parts[2], 2, 'T');
    put(parts[3], 2, ':');
    put(parts[4], 2, ':');
    put(parts[5], 2, 'Z');
}

}  // namespace apikey
