#include "sliding_window.h"

namespace apikey {

namespace {

constexpr std::int64_t kSpan = kWindowBuckets;  // buckets in the ring, current one included

std::uint32_t &at(WindowState &s, std::int64_t bucket) noexcept {
    return s.counts[static_cast<std::uint64_t>(bucket) % kWindowBuckets];
}

std::uint32_t ceil_seconds(std::int64_t ms) noexcept {
    if (ms <= 0) return 0;
    return static_cast<std::uint32_t>((ms + 999) / 1000);
}

// Moves the ring forward to `bucket`, clearing buckets that left the window.
// A worker whose cached clock lags another's never moves it back: it counts
// into the newest bucket, which leaves the window last (the safe side).
std::int64_t advance(WindowState &s, std::int64_t bucket) noexcept {
    if (bucket <= s.head) return s.head;
    if (bucket - s.head >= kSpan) {
        for (auto &c : s.counts) c = 0;
    } else {
        for (std::int64_t b = s.head + 1; b <= bucket; b++) at(s, b) = 0;
    }
    s.head = bucket;
    return bucket;
}

}  // namespace

std::int64_t window_bucket_ms(WindowLimit limit) noexcept {
    const std::int64_t full = kSpan - 1;
    const std::int64_t width = (static_cast<std::int64_t>(limit.period_ms) + full - 1) / full;
    return width > 0 ? width : 1;
}

void window_reset(WindowState &state) noexcept {
    state.head = 0;
    for (auto &c : state.counts) c = 0;
}

WindowDecision window_consume(WindowState &state, WindowLimit limit, std::int64_t now_ms,
                              bool commit) noexcept {
    // A dry run works on a copy: even moving the ring forward is a change.
    WindowState scratch;
    if (!commit) scratch = state;
    WindowState &s = commit ? state : scratch;
    const std::int64_t width = window_bucket_ms(limit);
    const std::int64_t current = advance(s, now_ms / width);

    std::uint64_t used = 0;
    for (std::uint32_t c : s.counts) used += c;

    WindowDecision d{};
    d.limit = limit.count;
    d.allowed = used < limit.count;
    d.bucket = current;
    if (d.allowed) {
        used++;
        if (commit) at(s, current)++;
        d.remaining = static_cast<std::uint32_t>(limit.count - used);
    } else {
        // The oldest buckets leave one by one, bucket b at (b + kSpan) * width;
        // the first moment the rest is under the limit is the retry time.
        std::uint64_t left = used;
        for (std::int64_t b = current - kSpan + 1; b <= current; b++) {
            left -= at(s, b);
            if (left < limit.count) {
                d.retry_after_s = ceil_seconds((b + kSpan) * width - now_ms);
                break;
            }
        }
        if (d.retry_after_s == 0) d.retry_after_s = 1;
    }

    for (std::int64_t b = current; b > current - kSpan; b--) {
        if (at(s, b) != 0 || (b == current && d.allowed)) {
            d.reset_s = ceil_seconds((b + kSpan) * width - now_ms);
            break;
        }
    }
    return d;
}

void window_refund(WindowState &s, std::int64_t bucket) noexcept {
    if (bucket > s.head - kSpan && bucket <= s.head && at(s, bucket) > 0) at(s, bucket)--;
}

bool window_idle(const WindowState &s, WindowLimit limit, std::int64_t now_ms) noexcept {
    return now_ms / window_bucket_ms(limit) - s.head >= kSpan;
}

}  // namespace apikey
