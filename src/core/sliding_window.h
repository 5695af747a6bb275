// A sliding-window counter that never lets more than `count` requests through
// in any trailing window of `period`, and counts only what it accepts.
//
// The period is cut into kWindowBuckets - 1 buckets of equal width (rounded
// up), and a request is accepted while the buckets that overlap the trailing
// period, the current partial one included, hold fewer than `count`. That
// sum covers at least the whole trailing period, so the limit is never
// exceeded at any instant; it may cover up to one bucket more, so a client
// sending at twice its rate still gets about 15/16 ~ 94% of its limit over
// time (at least 85% in any one period; tests/sliding_window_test.cpp).
// (GCRA and fixed windows, as in limit_req, Kong or Envoy, let up to twice
// the limit through in some window.)
#pragma once

#include <cstdint>
#include <type_traits>

namespace apikey {

constexpr unsigned kWindowBuckets = 16;

struct WindowState {
    std::int64_t head;  // index of the newest bucket (time / width)
    std::uint32_t counts[kWindowBuckets];
};
static_assert(std::is_trivially_copyable_v<WindowState>);

struct WindowLimit {
    std::uint32_t count;
    std::uint32_t period_ms;
};

struct WindowDecision {
    bool allowed;
    std::uint32_t limit;
    std::uint32_t remaining;       // after this request
    std::uint32_t retry_after_s;   // when refused: a retry then is accepted (absent other use)
    std::uint32_t reset_s;         // until every counted request has left the window
    std::int64_t bucket;           // where an accepted request was counted (for refunds)
};

// The width of one bucket: period / (kWindowBuckets - 1), rounded up, so the
// buckets in the ring always cover at least one whole period.
std::int64_t window_bucket_ms(WindowLimit limit) noexcept;

// A new, empty window.
void window_reset(WindowState &state) noexcept;

// Decides one request at now_ms; with commit, counts it when allowed.
WindowDecision window_consume(WindowState &state, WindowLimit limit, std::int64_t now_ms,
                              bool commit) noexcept;

// Takes back a request counted by window_consume (used when a later limit of
// the same request refuses it, so refused requests never spend budget).
void window_refund(WindowState &state, std::int64_t bucket) noexcept;

// True when nothing counted is still inside the window at now_ms.
bool window_idle(const WindowState &state, WindowLimit limit, std::int64_t now_ms) noexcept;

}  // namespace apikey
