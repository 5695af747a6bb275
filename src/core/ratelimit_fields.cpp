#include "ratelimit_fields.h"

namespace apikey {

namespace {

// Appends to a bounded buffer; remembers an overflow instead of writing past it.
class Out {
public:
    Out(char *out, std::size_t capacity) noexcept : out_(out), capacity_(capacity) {}

    void put(char c) noexcept {
        if (len_ < capacity_) {
            out_[len_++] = c;
        } else {
            full_ = true;
        }
    }
    void put(std::string_view s) noexcept {
        for (char c : s) put(c);
    }
    void number(std::uint64_t n) noexcept {
        char digits[20];
        std::size_t k = 0;
        do {
            digits[k++] = static_cast<char>('0' + n % 10);
            n /= 10;
        } while (n != 0);
        while (k > 0) put(digits[--k]);
    }
    std::size_t result() const noexcept { return full_ ? 0 : len_; }

private:
    char *out_;
    std::size_t capacity_;
    std::size_t len_ = 0;
    bool full_ = false;
};

std::string_view cut(std::string_view category) noexcept {
    return category.size() > kMaxCategoryInName ? category.substr(0, kMaxCategoryInName) : category;
}

// The sf-string of a policy name: printable ASCII, '"' and '\' escaped.
// Categories are identifiers (printable, no quotes or backslashes), so
// nothing else occurs; any other byte would be written as '?'.
void quoted_name(Out &o, std::string_view category, std::uint32_t period_seconds) noexcept {
    char name[kMaxPolicyName];
    const std::size_t n = ratelimit_policy_name(name, category, period_seconds);
    o.put('"');
    for (std::size_t i = 0; i < n; i++) {
        const auto c = static_cast<unsigned char>(name[i]);
        if (c == '"' || c == '\\') {
            o.put('\\');
            o.put(name[i]);
        } else if (c < 0x20 || c > 0x7e) {
            o.put('?');
        } else {
            o.put(name[i]);
        }
    }
    o.put('"');
}

bool same_policy(const RateLimitEntry &a, const RateLimitEntry &b) noexcept {
    return a.rate.period_seconds == b.rate.period_seconds && cut(a.category) == cut(b.category);
}

// The entry that stands for all entries of the same policy as entries[i]:
// the smallest q, and the r and t of the one closest to refusing (fewest
// remaining, then the longest wait). False when an earlier entry already did.
bool merged(const RateLimitEntry *entries, std::size_t count, std::size_t i,
            RateLimitEntry &out) noexcept {
    for (std::size_t j = 0; j < i; j++) {
        if (same_policy(entries[j], entries[i])) return false;
    }
    out = entries[i];
    for (std::size_t j = i + 1; j < count; j++) {
        const RateLimitEntry &e = entries[j];
        if (!same_policy(e, out)) continue;
        if (e.rate.count < out.rate.count) out.rate.count = e.rate.count;
        if (e.remaining < out.remaining ||
            (e.remaining == out.remaining && e.reset_s > out.reset_s)) {
            out.remaining = e.remaining;
            out.reset_s = e.reset_s;
        }
    }
    return true;
}

template <typename Params>
std::size_t format_list(char *out, std::size_t capacity, const RateLimitEntry *entries,
                        std::size_t count, Params params) noexcept {
    if (count == 0) return 0;
    Out o(out, capacity);
    bool first = true;
    for (std::size_t i = 0; i < count; i++) {
        RateLimitEntry e;
        if (!merged(entries, count, i, e)) continue;
        if (!first) o.put(", ");
        first = false;
        quoted_name(o, e.category, e.rate.period_seconds);
        params(o, e);
    }
    return o.result();
}

}  // namespace

RateLimitEntry ratelimit_entry(std::string_view category, Rate rate, const WindowDecision &d,
                               bool refunded) noexcept {
    std::uint32_t remaining = d.allowed ? d.remaining : 0;
    if (refunded && d.allowed && remaining < rate.count) remaining++;
    return RateLimitEntry{category, rate, remaining, d.next_free_s};
}

std::size_t ratelimit_policy_name(char *out, std::string_view category,
                                  std::uint32_t period_seconds) noexcept {
    category = cut(category);
    std::uint32_t amount = period_seconds;
    char unit = 's';
    if (period_seconds != 0) {
        if (period_seconds % 86400 == 0) {
            amount = period_seconds / 86400, unit = 'd';
        } else if (period_seconds % 3600 == 0) {
            amount = period_seconds / 3600, unit = 'h';
        } else if (period_seconds % 60 == 0) {
            amount = period_seconds / 60, unit = 'm';
        }
    }
    Out o(out, kMaxPolicyName);
    o.put(category);
    o.put('-');
    o.number(amount);
    o.put(unit);
    return o.result();
}

std::size_t format_ratelimit_policy(char *out, std::size_t capacity, const RateLimitEntry *entries,
                                    std::size_t count) noexcept {
    return format_list(out, capacity, entries, count, [](Out &o, const RateLimitEntry &e) {
        o.put(";q=");
        o.number(e.rate.count);
        o.put(";w=");
        o.number(e.rate.period_seconds);
    });
}

std::size_t format_ratelimit(char *out, std::size_t capacity, const RateLimitEntry *entries,
                             std::size_t count) noexcept {
    return format_list(out, capacity, entries, count, [](Out &o, const RateLimitEntry &e) {
        o.put(";r=");
        o.number(e.remaining);
        o.put(";t=");
        o.number(e.reset_s);
    });
}

}  // namespace apikey
