#include "sliding_window.h"

#include <atomic>
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
    // (Bucket indexes of real clocks are positive: an unsigned remainder.)
    if (__builtin_expect(b >= 0, 1)) return static_cast<std::uint64_t>(b) % kRing;
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

// --- the summary (sliding_window.h): total in the low bits, the count of
// known-empty oldest buckets above them ------------------------------------

constexpr unsigned kTotalBits = 26;
constexpr std::uint64_t kMaxTotal = (std::uint64_t{1} << kTotalBits) - 1;
static_assert((std::uint64_t{kRing} << kTotalBits | kMaxTotal) < kUnknownSummary,
              "a real summary never reads as unknown");

struct Sums {
    std::uint64_t total;  // of every bucket in the ring, head - 50 .. head
    std::int64_t empty;   // buckets head - 50 .. head - 50 + empty - 1 hold nothing
};

Sums unpack(WindowSummary w) noexcept { return {w & kMaxTotal, w >> kTotalBits}; }

WindowSummary pack(const Sums &m) noexcept {
    return m.total > kMaxTotal ? kUnknownSummary
                               : static_cast<WindowSummary>(
                                     static_cast<std::uint64_t>(m.empty) << kTotalBits | m.total);
}

// Counted afresh: every bucket added up, the empty ones at the old end counted.
Sums recount(const WindowState &s) noexcept {
    Sums m{0, 0};
#pragma GCC unroll 17
    for (std::uint32_t n : s.cells) m.total += n;
    if (m.total == 0) return {0, kRing};
    for (std::size_t i = ring_index(s.head + 1); s.cells[i] == 0; i = next_index(i)) m.empty++;
    return m;
}

// Moves the ring forward to bucket c, clearing buckets that left it (and
// taking them off the sums, when `m` is known).
[[gnu::always_inline]] inline void advance(WindowState &s, std::int64_t c, Sums *m) noexcept {
    if (c <= s.head) return;
    const std::int64_t k = c - s.head;
    if (k >= kRing) {
        for (auto &n : s.cells) n = 0;
        if (m != nullptr) *m = {0, kRing};
    } else {
        std::size_t i = ring_index(s.head);
        for (std::int64_t b = s.head + 1; b <= c; b++) {
            i = next_index(i);
            if (m != nullptr) m->total -= s.cells[i];
            s.cells[i] = 0;
        }
        // The k oldest left; the new ones (at the young end) are empty.
        if (m != nullptr) m->empty = m->total == 0 ? kRing : m->empty > k ? m->empty - k : 0;
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

// The ring index of bucket c - back, `last` being c's (0 <= back < kRing).
std::size_t index_back(std::size_t last, std::int64_t back) noexcept {
    const auto b = static_cast<std::size_t>(back);
    return last >= b ? last - b : last + kRing - b;
}

// `sums`: the state's, when `known`; counted here otherwise. When `keep`
// is not null, the sums of the state as left are stored there at the end
// (after every change to the state). (Inlined: the request path's limiter
// is this function, called once.)
[[gnu::always_inline]] inline WindowDecision decide_buckets(WindowState &s, Sums sums, bool known,
                                                            WindowLimit limit, std::int64_t now_ms,
                                                            bool commit,
                                                            WindowSummary *keep) noexcept {
    auto store = [&] {
        if (keep == nullptr) return;
        std::atomic_signal_fence(std::memory_order_seq_cst);
        *keep = pack(sums);
    };
    const std::int64_t w = window_bucket_ms(limit);
    const std::int64_t period = limit.period_ms;
    if (s.width_ms != w) {
        to_buckets(s, w, now_ms);
        known = false;
    }
    const std::int64_t te = max64(now_ms, s.head * w);
    // (Busy budgets stay in their newest bucket: no division then.)
    const std::int64_t c = te < (s.head + 1) * w ? s.head : floor_div(te, w);
    if (known) {
        advance(s, c, &sums);
    } else {
        advance(s, c, nullptr);
        sums = recount(s);
    }
    // Bucket b still counts at te when bucket_exit(b) > te: lo .. c. (The
    // oldest in the ring has usually not left: 50 widths cover the period.)
    std::int64_t lo = c - kRing + 1;
    while (lo <= c && bucket_exit(lo, w, period) <= te) lo++;
    const std::size_t last = ring_index(c);
    // The ring holds exactly buckets c - 50 .. c: its total, less those
    // before lo. Buckets before `busy` are known to be empty.
    const std::int64_t busy = c - kRing + 1 + sums.empty;
    std::uint64_t used = sums.total;
    bool gone_empty = true;  // every bucket from busy to lo - 1 is empty
    for (std::int64_t b = busy; b < lo; b++) {
        const std::uint32_t n = s.cells[index_back(last, c - b)];
        used -= n;
        gone_empty = gone_empty && n == 0;
    }

    WindowDecision d{};
    d.limit = limit.count;
    if (used < limit.count) {
        d.allowed = true;
        d.remaining = static_cast<std::uint32_t>(limit.count - used - 1);
        d.counted_at_ms = te;
        // The oldest bucket in use (c when none is): searched from the
        // first that may be.
        std::int64_t oldest = c;
        if (used != 0) {
            oldest = max64(lo, busy);
            for (std::size_t i = index_back(last, c - oldest); oldest < c && s.cells[i] == 0;
                 i = next_index(i)) {
                oldest++;
            }
        }
        d.next_free_s = ceil_seconds(bucket_exit(oldest, w, period) - now_ms);
        d.reset_s = ceil_seconds(bucket_exit(c, w, period) - now_ms);
        if (commit) {
            s.cells[last]++;
            sums.total++;
            // Everything before `oldest` is empty now that the search saw it.
            if (gone_empty) sums.empty = oldest - (c - kRing + 1);
        }
        store();
        return d;
    }
    store();
    // Refused: the oldest buckets leave one by one; the first moment the
    // rest is under the limit is the retry time.
    std::uint64_t left = used;
    std::int64_t b = lo;
    for (std::size_t i = index_back(last, c - lo); b < c; b++, i = next_index(i)) {
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
    return limit.count <= kExactLimit
               ? decide_log(s, limit, now_ms, commit)
               : decide_buckets(s, Sums{}, false, limit, now_ms, commit, nullptr);
}

namespace {

// A dry run works on copies: even moving the window on is a change.
[[gnu::noinline]] WindowDecision dry_buckets(const WindowState &state, WindowSummary summary,
                                             WindowLimit limit, std::int64_t now_ms) noexcept {
    WindowState scratch = state;
    return decide_buckets(scratch, unpack(summary), summary != kUnknownSummary, limit, now_ms,
                          false, nullptr);
}

}  // namespace

WindowDecision window_consume(WindowState &state, WindowSummary &summary, WindowLimit limit,
                              std::int64_t now_ms, bool commit) noexcept {
    if (limit.count <= kExactLimit) return window_consume(state, limit, now_ms, commit);
    if (!commit) return dry_buckets(state, summary, limit, now_ms);
    const WindowSummary kept = summary;
    // Unknown while the state changes (see the header); decide_buckets
    // stores the new one last.
    summary = kUnknownSummary;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    return decide_buckets(state, unpack(kept), kept != kUnknownSummary, limit, now_ms, true,
                          &summary);
}

bool window_summary_fits(const WindowState &s, WindowSummary summary) noexcept {
    if (summary == kUnknownSummary) return true;
    const Sums kept = unpack(summary);
    const Sums real = recount(s);
    return kept.total == real.total && kept.empty <= real.empty;
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

void window_refund(WindowState &s, WindowSummary &summary, std::int64_t counted_at_ms) noexcept {
    if (s.width_ms == 0) return window_refund(s, counted_at_ms);
    const std::int64_t b = floor_div(counted_at_ms, s.width_ms);
    if (!(b > s.head - kRing && b <= s.head && count_at(s, b) > 0)) return;
    const WindowSummary kept = summary;
    summary = kUnknownSummary;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    count_at(s, b)--;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    if (kept != kUnknownSummary) {
        // Emptying a bucket leaves the known-empty ones as they were.
        Sums m = unpack(kept);
        m.total--;
        summary = pack(m);
    }
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
