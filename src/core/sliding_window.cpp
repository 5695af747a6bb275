#include "sliding_window.h"

#include <cstring>

namespace apikey {

namespace {

constexpr std::int64_t kRing = kWindowBuckets;

std::uint32_t ceil_seconds(std::int64_t ms) noexcept {
    if (ms <= 0) return 0;
    return static_cast<std::uint32_t>((ms + 999) / 1000);
}

std::int64_t floor_div(std::int64_t a, std::int64_t b) noexcept {
    const std::int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

std::int64_t max64(std::int64_t a, std::int64_t b) noexcept { return a > b ? a : b; }

// --- the exact log: head timestamps, oldest first, two cells each ---------
// After a conversion from buckets holding more than 16, the older ones are
// a carry: kCarryCount requests, all as if at kCarryStamp (the newest of
// them), older than every timestamp held.

constexpr unsigned kCarryStamp = 2 * kExactLimit;      // two cells
constexpr unsigned kCarryCount = 2 * kExactLimit + 2;  // one cell
static_assert(kCarryCount < kWindowBuckets);

std::int64_t carry_stamp(const WindowState &s) noexcept {
    std::int64_t v;
    std::memcpy(&v, &s.cells[kCarryStamp], sizeof v);
    return v;
}

void set_carry(WindowState &s, std::int64_t stamp, std::uint32_t count) noexcept {
    std::memcpy(&s.cells[kCarryStamp], &stamp, sizeof stamp);
    s.cells[kCarryCount] = count;
}

std::uint32_t saturated(std::uint64_t n) noexcept {
    return n > 0xffffffffu ? 0xffffffffu : static_cast<std::uint32_t>(n);
}

unsigned log_size(const WindowState &s) noexcept {
    return s.head <= 0 ? 0 : s.head >= kExactLimit ? kExactLimit : static_cast<unsigned>(s.head);
}

std::int64_t stamp(const WindowState &s, unsigned i) noexcept {
    std::int64_t v;
    std::memcpy(&v, &s.cells[2 * i], sizeof v);
    return v;
}

void set_stamp(WindowState &s, unsigned i, std::int64_t v) noexcept {
    std::memcpy(&s.cells[2 * i], &v, sizeof v);
}

void log_remove(WindowState &s, unsigned i) noexcept {
    const unsigned n = log_size(s);
    for (unsigned j = i; j + 1 < n; j++) set_stamp(s, j, stamp(s, j + 1));
    set_stamp(s, n - 1, 0);
    s.head = n - 1;
}

// Drops the `gone` oldest timestamps (they have left the window).
void log_drop(WindowState &s, unsigned gone) noexcept {
    const unsigned n = log_size(s);
    if (gone == 0 || gone > n) return;
    std::memmove(&s.cells[0], &s.cells[2 * gone], (n - gone) * 2 * sizeof s.cells[0]);
    std::memset(&s.cells[2 * (n - gone)], 0, gone * 2 * sizeof s.cells[0]);
    s.head = n - gone;
}

// Appends a timestamp no older than any held; the log must not be full.
void log_append(WindowState &s, std::int64_t t) noexcept {
    const unsigned n = log_size(s);
    set_stamp(s, n, t);
    s.head = n + 1;
}

// --- buckets: cells[b mod ring] counts bucket b ---------------------------

std::size_t ring_index(std::int64_t b) noexcept {
    const std::int64_t i = b % kRing;
    return static_cast<std::size_t>(i < 0 ? i + kRing : i);
}

std::uint32_t &count_at(WindowState &s, std::int64_t b) noexcept { return s.cells[ring_index(b)]; }

std::uint32_t count_at(const WindowState &s, std::int64_t b) noexcept {
    return s.cells[ring_index(b)];
}

std::size_t next_index(std::size_t i) noexcept { return i + 1 == kRing ? 0 : i + 1; }
std::size_t prev_index(std::size_t i) noexcept { return i == 0 ? kRing - 1 : i - 1; }

// The moment a request counted in bucket b leaves: as if it had come at the
// bucket's last millisecond.
std::int64_t bucket_exit(std::int64_t b, std::int64_t width, std::int64_t period) noexcept {
    return (b + 1) * width - 1 + period;
}

// Moves the ring forward to bucket c, clearing buckets that left it.
void advance(WindowState &s, std::int64_t c) noexcept {
    if (c <= s.head) return;
    if (c - s.head >= kRing) {
        for (auto &n : s.cells) n = 0;
    } else {
        std::size_t i = ring_index(s.head);
        for (std::int64_t b = s.head + 1; b <= c; b++) s.cells[i = next_index(i)] = 0;
    }
    s.head = c;
}

// --- conversions (the limit crossed kExactLimit, or the width changed) ----
// Every counted request keeps leaving no earlier than before: a bucket's
// requests become timestamps at its last millisecond, and a timestamp goes
// to the bucket that holds it.

void to_log(WindowState &s) noexcept {
    const WindowState old = s;
    window_reset(s);
    const std::int64_t w = old.width_ms;
    std::int64_t newest_first[kExactLimit];
    unsigned n = 0;
    std::int64_t carried_at = 0;
    std::uint64_t carried = 0;
    for (std::int64_t b = old.head; b > old.head - kRing; b--) {
        std::uint32_t k = count_at(old, b);
        for (; k > 0 && n < kExactLimit; k--) newest_first[n++] = (b + 1) * w - 1;
        if (k > 0) {
            if (carried == 0) carried_at = (b + 1) * w - 1;
            carried += k;
        }
    }
    for (unsigned i = 0; i < n; i++) set_stamp(s, i, newest_first[n - 1 - i]);
    s.head = n;
    if (carried > 0) set_carry(s, carried_at, saturated(carried));
}

void to_buckets(WindowState &s, std::int64_t width, std::int64_t now_ms) noexcept {
    const WindowState old = s;
    window_reset(s);
    s.width_ms = static_cast<std::uint32_t>(width);
    std::int64_t newest = now_ms;
    if (old.width_ms == 0) {
        const unsigned n = log_size(old);
        const std::uint32_t carried = old.cells[kCarryCount];
        if (carried > 0) newest = max64(newest, carry_stamp(old));
        if (n > 0) newest = max64(newest, stamp(old, n - 1));
        s.head = floor_div(newest, width);
        if (carried > 0) {
            const std::int64_t b = floor_div(carry_stamp(old), width);
            if (b > s.head - kRing) count_at(s, b) = carried;
        }
        for (unsigned i = 0; i < n; i++) {
            const std::int64_t b = floor_div(stamp(old, i), width);
            if (b > s.head - kRing) count_at(s, b) = saturated(std::uint64_t{count_at(s, b)} + 1);
        }
        return;
    }
    const std::int64_t w0 = old.width_ms;
    newest = max64(newest, (old.head + 1) * w0 - 1);
    s.head = floor_div(newest, width);
    for (std::int64_t b = old.head - kRing + 1; b <= old.head; b++) {
        const std::uint32_t k = count_at(old, b);
        const std::int64_t nb = floor_div((b + 1) * w0 - 1, width);
        if (k == 0 || nb <= s.head - kRing) continue;
        count_at(s, nb) = saturated(std::uint64_t{count_at(s, nb)} + k);
    }
}

WindowDecision decide_log(WindowState &s, WindowLimit limit, std::int64_t now_ms,
                          bool commit) noexcept {
    if (s.width_ms != 0) to_log(s);
    const std::int64_t period = limit.period_ms;
    const unsigned n = log_size(s);
    const std::uint32_t carried = s.cells[kCarryCount];
    std::int64_t te = now_ms;
    if (carried > 0) te = max64(te, carry_stamp(s));
    if (n > 0) te = max64(te, stamp(s, n - 1));
    // Those still counting are the newest: the carry (if it still counts,
    // then so does every timestamp), and timestamps i0 .. n-1.
    const std::uint64_t carry_in = carried > 0 && carry_stamp(s) + period > te ? carried : 0;
    unsigned i0 = 0;  // the first that counts: binary search, they are in order
    for (unsigned hi = n; i0 < hi;) {
        const unsigned mid = (i0 + hi) / 2;
        if (stamp(s, mid) + period > te) {
            hi = mid;
        } else {
            i0 = mid + 1;
        }
    }
    const std::uint64_t k = carry_in + (n - i0);
    // The j-th oldest of those counting (from 0).
    auto nth = [&](std::uint64_t j) {
        return j < carry_in ? carry_stamp(s) : stamp(s, i0 + static_cast<unsigned>(j - carry_in));
    };

    WindowDecision d{};
    d.limit = limit.count;
    if (k < limit.count) {
        d.allowed = true;
        d.remaining = static_cast<std::uint32_t>(limit.count - k - 1);
        d.counted_at_ms = te;
        d.next_free_s = ceil_seconds((k > 0 ? nth(0) : te) + period - now_ms);
        d.reset_s = ceil_seconds(te + period - now_ms);
        if (commit) {
            // k < limit <= 16: no carry counts, and a full log's oldest (i0
            // of them) have left; dropped together, so not at every request.
            if (carried > 0) set_carry(s, 0, 0);
            if (n == kExactLimit) log_drop(s, i0);
            log_append(s, te);
        }
        return d;
    }
    // Refused: room comes when all but limit - 1 of those counting have
    // left, i.e. when the (k - limit + 1)-th oldest leaves.
    d.retry_after_s = 1;
    if (limit.count > 0) {
        const std::uint32_t wait = ceil_seconds(nth(k - limit.count) + period - now_ms);
        if (wait > d.retry_after_s) d.retry_after_s = wait;
    }
    d.next_free_s = d.retry_after_s;
    if (k > 0) d.reset_s = ceil_seconds(nth(k - 1) + period - now_ms);
    return d;
}

WindowDecision decide_buckets(WindowState &s, WindowLimit limit, std::int64_t now_ms,
                              bool commit) noexcept {
    const std::int64_t w = window_bucket_ms(limit);
    const std::int64_t period = limit.period_ms;
    if (s.width_ms != w) to_buckets(s, w, now_ms);
    const std::int64_t te = max64(now_ms, s.head * w);
    // (Busy budgets stay in their newest bucket: no division then.)
    const std::int64_t c = te < (s.head + 1) * w ? s.head : floor_div(te, w);
    advance(s, c);
    // Bucket b still counts at te when bucket_exit(b) > te: lo .. c, which
    // sit in the ring from cell first on, wrapping at its end. (The oldest
    // in the ring has usually not left: 50 widths cover the period.)
    std::int64_t lo = c - kRing + 1;
    while (lo <= c && bucket_exit(lo, w, period) <= te) lo++;
    const std::size_t first = ring_index(lo);
    const std::size_t last = ring_index(c);
    // The ring holds exactly buckets c - 50 .. c: all of it, less those
    // before lo.
    std::uint64_t used = 0;
#pragma GCC unroll 17
    for (std::uint32_t n : s.cells) used += n;
    for (std::size_t i = next_index(last), k = static_cast<std::size_t>(lo - (c - kRing + 1));
         k > 0; k--, i = next_index(i)) {
        used -= s.cells[i];
    }

    WindowDecision d{};
    d.limit = limit.count;
    if (used < limit.count) {
        d.allowed = true;
        d.remaining = static_cast<std::uint32_t>(limit.count - used - 1);
        d.counted_at_ms = te;
        std::int64_t oldest = lo;
        for (std::size_t i = first; oldest < c && s.cells[i] == 0; i = next_index(i)) oldest++;
        d.next_free_s = ceil_seconds(bucket_exit(oldest, w, period) - now_ms);
        d.reset_s = ceil_seconds(bucket_exit(c, w, period) - now_ms);
        if (commit) s.cells[last]++;
        return d;
    }
    // Refused: the oldest buckets leave one by one; the first moment the
    // rest is under the limit is the retry time.
    std::uint64_t left = used;
    std::int64_t b = lo;
    for (std::size_t i = first; b < c; b++, i = next_index(i)) {
        left -= s.cells[i];
        if (left < limit.count) break;
    }
    d.retry_after_s = ceil_seconds(bucket_exit(b, w, period) - now_ms);
    if (d.retry_after_s == 0) d.retry_after_s = 1;
    d.next_free_s = d.retry_after_s;
    std::int64_t newest = c;
    for (std::size_t i = last; newest > lo && s.cells[i] == 0; i = prev_index(i)) newest--;
    d.reset_s = ceil_seconds(bucket_exit(newest, w, period) - now_ms);
    return d;
}

}  // namespace

std::int64_t window_bucket_ms(WindowLimit limit) noexcept {
    if (limit.count <= kExactLimit) return 0;
    const std::int64_t width =
        (static_cast<std::int64_t>(limit.period_ms) + kBucketsPerPeriod - 1) / kBucketsPerPeriod;
    return width > 0 ? width : 1;
}

void window_reset(WindowState &state) noexcept {
    state.head = 0;
    state.width_ms = 0;
    for (auto &c : state.cells) c = 0;
}

WindowDecision window_consume(WindowState &state, WindowLimit limit, std::int64_t now_ms,
                              bool commit) noexcept {
    // A dry run works on a copy: even moving the window on is a change.
    WindowState scratch;
    if (!commit) scratch = state;
    WindowState &s = commit ? state : scratch;
    return limit.count <= kExactLimit ? decide_log(s, limit, now_ms, commit)
                                      : decide_buckets(s, limit, now_ms, commit);
}

void window_refund(WindowState &s, std::int64_t counted_at_ms) noexcept {
    if (s.width_ms == 0) {
        for (unsigned i = log_size(s); i-- > 0;) {
            if (stamp(s, i) == counted_at_ms) {
                log_remove(s, i);
                return;
            }
        }
        return;
    }
    const std::int64_t b = floor_div(counted_at_ms, s.width_ms);
    if (b > s.head - kRing && b <= s.head && count_at(s, b) > 0) count_at(s, b)--;
}

bool window_idle(const WindowState &s, WindowLimit limit, std::int64_t now_ms) noexcept {
    const std::int64_t period = limit.period_ms;
    if (s.width_ms == 0) {
        const unsigned n = log_size(s);
        if (n > 0) return stamp(s, n - 1) + period <= now_ms;
        return s.cells[kCarryCount] == 0 || carry_stamp(s) + period <= now_ms;
    }
    for (std::int64_t b = s.head; b > s.head - kRing; b--) {
        if (count_at(s, b) != 0) return bucket_exit(b, s.width_ms, period) <= now_ms;
    }
    return true;
}

}  // namespace apikey
