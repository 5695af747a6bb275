// A sliding-window limiter that never lets more than `count` requests
// through in any trailing window of `period`, counts only what it accepts,
// and tells clients the truth about when to come back.
//
// The reference is a sliding log of accepted requests: a request accepted
// at s counts during [s, s + period); a request at t is accepted when fewer
// than `count` count at t; when refused, the retry moment is when the
// oldest of them leaves (enough of them, if the limit shrank).
//
//  - count <= kExactLimit (16): the state IS that log, the timestamps of the
//    last 16 accepted requests. Decisions, Retry-After, remaining and reset
//    are exactly the log's (Retry-After rounded up to whole seconds, >= 1):
//    10r/s answers Retry-After: 1, 5r/m at most 60.
//  - count > kExactLimit: the period is cut into kBucketsPerPeriod (50)
//    buckets of ceil(period / 50) ms (<= 2% of the period), counted in a
//    ring of kWindowBuckets (51). A request counted in bucket b is treated
//    as if it came at the bucket's last millisecond, so it leaves at
//    (b + 1) * width - 1 + period: never before the log would let it go,
//    and at most width - 1 ms after. Hence never over the limit in any
//    trailing window, and Retry-After is never an underestimate and at most
//    1 s + 2% of the period after the log's moment; a client sending at
//    twice its rate gets at least 97% of its limit over time (about 98%
//    from 25 up; tests/sliding_window_test.cpp measures all of these).
//
// Time: now_ms may come from workers whose clocks lag one another; the
// window never moves back (a lagging request is counted at the newest time
// seen, which leaves last: the safe side). Retry-After and the other
// durations are from the caller's own now_ms, so never too short for it.
//
// The limit may change between calls for one state (a reload changed a
// key's rate); crossing kExactLimit converts the state, keeping every
// counted request at least as long as before (never unsafe, at most one
// bucket width longer; buckets holding more than 16 become a log of the
// newest 16 and a carry of the rest). Everything here is noexcept and
// allocation-free.
#pragma once

#include <cstdint>
#include <type_traits>

namespace apikey {

constexpr unsigned kExactLimit = 16;        // limits up to this are decided on an exact log
constexpr unsigned kBucketsPerPeriod = 50;  // above it: buckets of period / 50, rounded up
constexpr unsigned kWindowBuckets = kBucketsPerPeriod + 1;  // in the ring, the current included

// Trivially copyable, lives in shared memory (CounterSlot); all zero is an
// empty window. Either of two layouts, told apart by width_ms:
//  - width_ms == 0, the exact log: head = how many timestamps (0..16),
//    cells 0..31 = that many int64 timestamps in ms, oldest first (two
//    cells each); after a conversion from buckets that held more than 16,
//    cells 32..33 = an int64 carry time and cell 34 = how many older
//    requests are carried as if all at that time (kept until they leave);
//  - width_ms > 0, buckets: head = index (time / width_ms) of the newest
//    bucket, cells[b % kWindowBuckets] = requests counted in bucket b.
struct WindowState {
    std::int64_t head;
    std::uint32_t width_ms;
    std::uint32_t cells[kWindowBuckets];
};
static_assert(std::is_trivially_copyable_v<WindowState>);
static_assert(sizeof(WindowState) == 216, "README: bytes per counter");
static_assert(2 * kExactLimit + 3 <= kWindowBuckets, "the log and its carry fit in the cells");

struct WindowLimit {
    std::uint32_t count;
    std::uint32_t period_ms;
};

struct WindowDecision {
    bool allowed;
    std::uint32_t limit;
    std::uint32_t remaining;  // after this request (0 when refused)
    // When refused: a retry then is accepted (absent other use); 0 when allowed.
    std::uint32_t retry_after_s;
    // Until every counted request (this one included) has left the window.
    std::uint32_t reset_s;
    // When allowed: where it was counted, for window_refund.
    std::int64_t counted_at_ms;
    // Until the quota next grows (the IETF RateLimit field's t): when
    // refused, until a request would be accepted again (== retry_after_s,
    // so Retry-After >= t); when allowed, until the oldest counted request
    // (this one included) leaves the window. At least 1.
    std::uint32_t next_free_s = 0;
};

// The bucket width for a limit over kExactLimit: ceil(period / 50), at
// least 1 ms; 0 for a limit decided on the exact log.
std::int64_t window_bucket_ms(WindowLimit limit) noexcept;

// A new, empty window (the same as all zero).
void window_reset(WindowState &state) noexcept;

// Decides one request at now_ms; with commit, counts it when allowed. A dry
// run (commit false) changes nothing, not even by moving the window on.
WindowDecision window_consume(WindowState &state, WindowLimit limit, std::int64_t now_ms,
                              bool commit) noexcept;

// A bucketed window's running sums, kept by the caller next to its state
// (CounterSlot::summary) so that a decision neither adds up the 51 buckets
// nor searches them for the oldest one in use: the total of the ring's
// buckets (26 bits: a window holding more, under limits of tens of
// millions, is counted afresh each time) and how many of its oldest
// buckets are known to be empty (6 bits, 0..51). Every decision and
// refund that changes the state
// keeps it up to date; kUnknownSummary (always correct to pass) makes the
// next one count afresh and store it again. All zero is the summary of an
// all-zero state, so a zeroed slot needs no initialisation. It changes no
// decision: window_consume with a summary answers exactly as without
// (tests/sliding_window_test.cpp compares the two on every request).
// Log states (limits up to 16) do not use it.
using WindowSummary = std::uint32_t;
constexpr WindowSummary kUnknownSummary = 0xffffffffu;

// The same decisions, keeping `summary` (that of `state`, or kUnknownSummary)
// up to date. A dry run changes neither. While state and summary are being
// changed the summary reads kUnknownSummary, so a process that dies halfway
// (a lock taken over from it) leaves a summary that is recounted, never a
// wrong one.
WindowDecision window_consume(WindowState &state, WindowSummary &summary, WindowLimit limit,
                              std::int64_t now_ms, bool commit) noexcept;

// True when `summary` is a correct summary of a bucketed `state`: unknown,
// or its total with no more empty buckets than it has (for tests).
bool window_summary_fits(const WindowState &state, WindowSummary summary) noexcept;

// Takes back a request counted by window_consume (a later limit of the same
// request refused it, so refused requests never spend budget): exactly the
// one counted at decision.counted_at_ms, if it still counts; otherwise
// nothing. (A refund across a change of the limit over kExactLimit between
// the two calls finds nothing to take back when the state was converted
// from buckets to the log: the safe side.)
void window_refund(WindowState &state, std::int64_t counted_at_ms) noexcept;
void window_refund(WindowState &state, WindowSummary &summary, std::int64_t counted_at_ms) noexcept;

// True when nothing counted is still inside the window at now_ms (the
// counter may be reused for another budget). limit.count is not used.
bool window_idle(const WindowState &state, WindowLimit limit, std::int64_t now_ms) noexcept;

}  // namespace apikey
