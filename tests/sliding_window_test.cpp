// The sliding-window limiter (core/sliding_window), driven by a fake
// millisecond clock and compared, decision by decision, with the reference:
// a sliding log of the accepted requests. A request accepted at s counts
// during [s, s + period); a request at t is accepted when fewer than `limit`
// count at t; the log's moment to accept again is when the limit-th newest
// accepted request leaves (s + period), and its Retry-After is that wait
// rounded up to whole seconds, at least 1.
//
// What is proved here, on random arrival patterns (steady, Poisson, bursts,
// grid edges, jumps, runs of equal timestamps, mixed), periods 1 s, 1 min,
// 1 h, 1 day and odd ones, limits on both sides of 16, with refunds (at
// once and later) and dry runs:
//
//  - limit <= 16: EXACT. Every decision, remaining, Retry-After, reset and
//    next_free_s equals the log's (the log being built from the very
//    requests the limiter accepted).
//  - limit > 16: in every trailing window (t - period, t] at most `limit`
//    accepted; when refused, Retry-After is never earlier than the log's
//    moment and never later than 1 s + 2% of the period after it; a retry
//    then is accepted; remaining never over-reports; reset and next_free_s
//    are never early. Measured: the worst excess, and the share of the
//    limit a client sending at twice its rate gets (>= 97%).
//
// Every check also holds the limiter to its own word by probing copies of
// the state: a retry at Retry-After is accepted, a request at reset sees
// an empty window, the quota has grown at next_free_s, and none of the
// three is a whole second late.
#include "core/sliding_window.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace apikey {
namespace {

constexpr std::int64_t kBase = 1'767'225'600'000;  // 2026-01-01T00:00:00Z in ms
constexpr std::uint32_t kSecond = 1000;
constexpr std::uint32_t kMinute = 60'000;
constexpr std::uint32_t kHour = 3'600'000;
constexpr std::uint32_t kDay = 86'400'000;

WindowState fresh() {
    WindowState s;
    window_reset(s);
    return s;
}

std::uint32_t ceil_s(std::int64_t ms) {
    return ms <= 0 ? 0 : static_cast<std::uint32_t>((ms + 999) / 1000);
}

bool exact(WindowLimit l) { return l.count <= kExactLimit; }

// The grid the limiter counts on: the bucket width, or for an exact limit
// (no buckets) 2% of the period, used by the arrival patterns' edges.
std::int64_t grid(WindowLimit l) {
    const std::int64_t w = window_bucket_ms(l);
    return w > 0 ? w : std::max<std::int64_t>(1, l.period_ms / kBucketsPerPeriod);
}

// The promised bound on how late Retry-After may be for a limit over 16:
// 1 s + 2% of the period after the log's moment.
std::int64_t allowed_excess_ms(WindowLimit l) {
    return 1000 + static_cast<std::int64_t>(l.period_ms) / 50;
}

// A decision at t on a copy of the state: what a request then would see,
// with no effect on `s`.
WindowDecision probe(const WindowState &s, WindowLimit l, std::int64_t t) {
    WindowState copy = s;
    return window_consume(copy, l, t, false);
}

std::string describe(WindowLimit l) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "limit %u per %u ms (%s)", l.count, l.period_ms,
                  exact(l) ? "exact log"
                           : ("buckets of " + std::to_string(grid(l)) + " ms").c_str());
    return buf;
}

// The most accepted requests in any closed interval [t - span, t]; `ts`
// is sorted. A half-open window (t - period, t] is span = period - 1.
struct Worst {
    std::size_t count = 0;
    std::int64_t end = 0;
};
Worst worst_window(const std::vector<std::int64_t> &ts, std::int64_t span) {
    Worst worst;
    std::size_t lo = 0;
    for (std::size_t hi = 0; hi < ts.size(); hi++) {
        while (ts[lo] < ts[hi] - span) lo++;
        if (hi - lo + 1 > worst.count) worst = {hi - lo + 1, ts[hi]};
    }
    return worst;
}

// The reference: every accepted (and not refunded) request's timestamp.
class SlidingLog {
public:
    explicit SlidingLog(std::int64_t period) : period_(period) {}

    // How many count at t (the log holds nothing later than t).
    std::size_t counting(std::int64_t t) const {
        return static_cast<std::size_t>(
            stamps_.end() - std::upper_bound(stamps_.begin(), stamps_.end(), t - period_));
    }
    // When the log accepts again: once the limit-th newest has left.
    // (Before t when the log would accept at t; the far past when it
    // holds fewer than `limit`.)
    std::int64_t moment(std::uint32_t limit) const {
        if (limit == 0) return INT64_MAX;
        if (stamps_.size() < limit) return INT64_MIN / 2;
        return stamps_[stamps_.size() - limit] + period_;
    }
    // When the oldest / newest request counting at t leaves.
    std::int64_t oldest_exit(std::int64_t t) const {
        return *std::upper_bound(stamps_.begin(), stamps_.end(), t - period_) + period_;
    }
    std::int64_t newest_exit() const { return stamps_.back() + period_; }

    void add(std::int64_t t) {
        stamps_.insert(std::upper_bound(stamps_.begin(), stamps_.end(), t), t);
    }
    void remove(std::int64_t t) {
        auto it = std::upper_bound(stamps_.begin(), stamps_.end(), t);
        if (it != stamps_.begin() && *(it - 1) == t) stamps_.erase(it - 1);
    }
    const std::vector<std::int64_t> &stamps() const { return stamps_; }

private:
    std::int64_t period_;
    std::vector<std::int64_t> stamps_;
};

// What the random comparisons measured, per regime.
struct Measured {
    std::uint64_t requests = 0, refusals = 0, refunds = 0;
    std::uint64_t refused_while_log_accepts = 0;
    std::int64_t worst_excess_ms = INT64_MIN;  // Retry-After's moment minus the log's
    double worst_excess_share = -1;            // (excess - 1 s) / period
    std::uint32_t worst_extra_seconds = 0;     // Retry-After minus the log's Retry-After
};

// Sends requests at a monotone fake clock, checking every decision against
// the reference log (exactly for limits up to 16, within the promised
// bounds above), refunding some accepted requests at once or later. Stops
// checking after the first failure (one clear message).
class Driver {
public:
    Driver(WindowLimit limit, std::string context, std::mt19937_64 *refund_rng = nullptr)
        : limit_(limit),
          context_(std::move(context)),
          state_(fresh()),
          log_(limit.period_ms),
          rng_(refund_rng) {}

    bool failed() const { return failed_; }
    const SlidingLog &log() const { return log_; }
    const Measured &measured() const { return m_; }
    const WindowState &state() const { return state_; }

    // The counter table's way, with the window's summary kept alongside
    // (the probes count afresh: so every decision is also checked to be
    // the same with and without a summary).
    WindowDecision send(std::int64_t t) {
        const WindowDecision dry = probe(state_, limit_, t);
        const WindowState before = state_;
        const WindowSummary summary_before = summary_;
        const WindowDecision dry_kept = window_consume(state_, summary_, limit_, t, false);
        if (!failed_ && (!same(dry, dry_kept) || summary_ != summary_before ||
                         std::memcmp(&before, &state_, sizeof before) != 0)) {
            fail(t, "a dry run with the summary disagrees or changed something");
        }
        const WindowDecision d = window_consume(state_, summary_, limit_, t, true);
        m_.requests++;
        if (!failed_ && !exact(limit_) && !window_summary_fits(state_, summary_)) {
            fail(t, "the kept summary is not the window's");
        }
        if (!failed_) check(t, dry, d);
        if (d.allowed) {
            log_.add(d.counted_at_ms);
            maybe_refund(d);
        } else {
            m_.refusals++;
        }
        return d;
    }

private:
    void fail(std::int64_t t, const std::string &what) {
        failed_ = true;
        ADD_FAILURE() << context_ << ", " << describe(limit_) << ", at t = base + " << (t - kBase)
                      << " ms: " << what;
    }

    void maybe_refund(const WindowDecision &d) {
        if (rng_ == nullptr) return;
        // Some at once (the usual case: a later limit of the same request
        // refused it), some a few requests later.
        const auto roll = (*rng_)() % 10;
        if (roll == 0) {
            refund(d.counted_at_ms);
        } else if (roll == 1) {
            pending_.push_back(d.counted_at_ms);
        }
        if (!pending_.empty() && (*rng_)() % 4 == 0) {
            const std::size_t i = (*rng_)() % pending_.size();
            refund(pending_[i]);
            pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(i));
        }
    }

    void refund(std::int64_t at) {
        window_refund(state_, summary_, at);
        if (!failed_ && !exact(limit_) && !window_summary_fits(state_, summary_)) {
            fail(at, "the summary kept through a refund is not the window's");
        }
        log_.remove(at);
        m_.refunds++;
    }

    static bool same(const WindowDecision &a, const WindowDecision &b) {
        return a.allowed == b.allowed && a.remaining == b.remaining &&
               a.retry_after_s == b.retry_after_s && a.reset_s == b.reset_s &&
               a.counted_at_ms == b.counted_at_ms && a.limit == b.limit &&
               a.next_free_s == b.next_free_s;
    }

    void check(std::int64_t t, const WindowDecision &dry, const WindowDecision &d) {
        const std::int64_t N = limit_.count;
        const std::int64_t P = limit_.period_ms;
        // A dry run reports exactly what the real request then gets.
        if (!same(dry, d)) return fail(t, "dry run disagrees with the committed decision");
        if (d.limit != limit_.count) return fail(t, "limit field");
        const std::int64_t in_log = static_cast<std::int64_t>(log_.counting(t));
        const bool log_accepts = in_log < N;

        if (d.allowed) {
            if (d.counted_at_ms != t) return fail(t, "counted at another time (monotone clock)");
            if (d.retry_after_s != 0) return fail(t, "retry_after_s on an accepted request");
            // Never over the limit: the log had room.
            if (!log_accepts) {
                return fail(t, "accepted with " + std::to_string(in_log) + " in the log's window");
            }
            if (d.remaining > N - in_log - 1) return fail(t, "remaining over-reports");
            if (exact(limit_) && d.remaining != N - in_log - 1) {
                return fail(t, "remaining " + std::to_string(d.remaining) + ", log says " +
                                   std::to_string(N - in_log - 1));
            }
            if (!exact(limit_)) {
                // At most one bucket's worth of lateness: every request the
                // limiter still counts would have counted in the log
                // width - 1 ms earlier.
                const std::int64_t late = static_cast<std::int64_t>(
                    log_.counting(t - (grid(limit_) - 1)));
                if (d.remaining < N - 1 - late) return fail(t, "remaining under-reports");
            }
            // next_free_s: until the oldest counted (this one included)
            // leaves. (Buckets may still count one the log has let go, so
            // their quota may grow sooner than the log's; the probes below
            // hold them to their own word.)
            const std::int64_t oldest = in_log > 0 ? log_.oldest_exit(t) : t + P;
            if (exact(limit_) && d.next_free_s != ceil_s(oldest - t)) {
                return fail(t, "next_free_s " + std::to_string(d.next_free_s) + ", log says " +
                                   std::to_string(oldest - t) + " ms");
            }
            if (d.next_free_s < 1) return fail(t, "next_free_s < 1");
        } else {
            if (d.remaining != 0) return fail(t, "remaining != 0 on a refusal");
            if (d.retry_after_s < 1) return fail(t, "retry_after_s < 1");
            if (d.next_free_s != d.retry_after_s) return fail(t, "next_free_s != retry_after_s");
            const std::int64_t moment = log_.moment(limit_.count);
            const std::int64_t ra_ms = 1000LL * d.retry_after_s;
            const std::uint32_t log_ra = std::max<std::uint32_t>(1, ceil_s(moment - t));
            if (exact(limit_)) {
                if (log_accepts) return fail(t, "refused, the log accepts");
                if (d.retry_after_s != log_ra) {
                    return fail(t, "retry_after_s " + std::to_string(d.retry_after_s) +
                                       ", the log's " + std::to_string(log_ra) + " (wait " +
                                       std::to_string(moment - t) + " ms)");
                }
            } else {
                if (log_accepts) m_.refused_while_log_accepts++;
                // Never an underestimate, at most 1 s + 2% late.
                if (t + ra_ms < moment) return fail(t, "retry_after_s before the log's moment");
                const std::int64_t excess = t + ra_ms - moment;
                if (excess > allowed_excess_ms(limit_)) {
                    return fail(t, "retry_after_s " + std::to_string(d.retry_after_s) + " is " +
                                       std::to_string(excess) + " ms after the log's moment");
                }
                if (excess > m_.worst_excess_ms) m_.worst_excess_ms = excess;
                m_.worst_excess_share = std::max(m_.worst_excess_share,
                                                 static_cast<double>(excess - 1000) / P);
                m_.worst_extra_seconds = std::max(m_.worst_extra_seconds, d.retry_after_s - log_ra);
            }
            // The limiter keeps its word: a retry then is accepted, and one
            // second earlier (when there is one) would not be.
            if (!probe(state_, limit_, t + ra_ms).allowed) {
                return fail(t, "a retry after retry_after_s is refused");
            }
            if (d.retry_after_s >= 2 && probe(state_, limit_, t + ra_ms - 1000).allowed) {
                return fail(t, "retry_after_s is a whole second late");
            }
        }

        // reset_s: until everything counted (this request included) has left.
        const bool anything = d.allowed || in_log > 0 || !log_.stamps().empty();
        if (!anything) return;
        const std::int64_t newest_exit = d.allowed ? t + P : log_.newest_exit();
        if (exact(limit_) ? d.reset_s != ceil_s(newest_exit - t)
                          : d.reset_s < ceil_s(newest_exit - t)) {
            return fail(t, "reset_s " + std::to_string(d.reset_s) + ", log says " +
                               std::to_string(newest_exit - t) + " ms");
        }
        if (d.reset_s == 0) return;  // (refused by requests that have all just left: cannot be)
        // Probed on the state after this request, as a client would.
        const WindowDecision at_reset = probe(state_, limit_, t + d.reset_s * 1000LL);
        if (!at_reset.allowed || at_reset.remaining != limit_.count - 1) {
            return fail(t, "a request at reset_s does not see an empty window");
        }
        if (d.reset_s >= 2) {
            const WindowDecision before = probe(state_, limit_, t + (d.reset_s - 1) * 1000LL);
            if (before.allowed && before.remaining == limit_.count - 1) {
                return fail(t, "reset_s is a whole second late");
            }
        }
        if (d.allowed) {
            // At next_free_s the quota has grown; a second before, not yet.
            const WindowDecision grown = probe(state_, limit_, t + d.next_free_s * 1000LL);
            if (!grown.allowed || grown.remaining < d.remaining) {
                return fail(t, "the quota has not grown at next_free_s");
            }
            if (d.next_free_s >= 2) {
                const WindowDecision early = probe(state_, limit_,
                                                   t + (d.next_free_s - 1) * 1000LL);
                if (early.allowed && early.remaining >= d.remaining) {
                    return fail(t, "next_free_s is a whole second late");
                }
            }
        }
    }

    WindowLimit limit_;
    std::string context_;
    WindowState state_;
    WindowSummary summary_ = 0;  // that of the fresh (all-zero) state
    SlidingLog log_;
    std::mt19937_64 *rng_;
    std::vector<std::int64_t> pending_;
    Measured m_;
    bool failed_ = false;
};

enum class Pattern { steady, poisson, bursts, edges, jumps, equal, mixed };
const char *name(Pattern p) {
    switch (p) {
    case Pattern::steady: return "steady";
    case Pattern::poisson: return "poisson";
    case Pattern::bursts: return "bursts";
    case Pattern::edges: return "edges";
    case Pattern::jumps: return "jumps";
    case Pattern::equal: return "equal";
    case Pattern::mixed: return "mixed";
    }
    return "?";
}

// Monotone arrival times for one pattern.
class Arrivals {
public:
    Arrivals(Pattern p, WindowLimit l, std::mt19937_64 &rng) : p_(p), l_(l), rng_(rng) {
        const double factors[] = {0.5, 1.0, 1.5, 2.0, 4.0, 10.0};
        factor_ = factors[uniform(0, 5)];
        // Start anywhere: not aligned to a bucket or a period.
        t_ = kBase + uniform(0, 10 * static_cast<std::int64_t>(l.period_ms));
        exact_ = static_cast<double>(t_);
    }

    std::int64_t next() {
        const Pattern p = p_ == Pattern::mixed ? static_cast<Pattern>(uniform(0, 5)) : p_;
        const double P = l_.period_ms;
        const double gap = P / (factor_ * l_.count);  // mean gap at the chosen rate
        switch (p) {
        case Pattern::steady: exact_ += gap; break;
        case Pattern::poisson:
            exact_ += std::exponential_distribution<double>(1.0 / gap)(rng_);
            break;
        case Pattern::bursts:
            // Bursts of up to 3x the limit within a few ms, then a pause.
            if (left_in_burst_ == 0) {
                left_in_burst_ = uniform(1, 3 * static_cast<std::int64_t>(l_.count));
                exact_ += static_cast<double>(
                    uniform(0, 2 * static_cast<std::int64_t>(l_.period_ms)));
            } else {
                left_in_burst_--;
                exact_ += uniform(0, 3) == 0 ? 1 : 0;
            }
            break;
        case Pattern::edges: edge_step(); break;
        case Pattern::jumps:
            if (uniform(0, 49) == 0) {
                const std::int64_t Pm = l_.period_ms;
                const std::int64_t w = grid(l_);
                const std::int64_t jumps[] = {Pm, Pm + 1, Pm - 1, Pm + w,
                                              uniform(Pm + 1, 10LL * Pm)};
                exact_ += static_cast<double>(jumps[uniform(0, 4)]);
            } else {
                exact_ += std::exponential_distribution<double>(1.0 / gap)(rng_);
            }
            break;
        case Pattern::equal:
            // Runs of identical timestamps, separated by edge-sized gaps.
            if (left_in_burst_ == 0) {
                left_in_burst_ = uniform(1, 2 * static_cast<std::int64_t>(l_.count) + 2);
                edge_step();
            } else {
                left_in_burst_--;
            }
            break;
        case Pattern::mixed: break;
        }
        const std::int64_t t = std::max(t_, static_cast<std::int64_t>(std::floor(exact_)));
        exact_ = std::max(exact_, static_cast<double>(t));
        t_ = t;
        return t;
    }

private:
    std::int64_t uniform(std::int64_t lo, std::int64_t hi) {
        return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng_);
    }

    // Jumps to a boundary relative to the absolute grid or to now: the next
    // period or bucket edge (+-1 ms), exactly one period on (+-1 ms, the
    // moment the oldest request leaves), one period and a bucket on, or
    // stays (a repeated timestamp).
    void edge_step() {
        const std::int64_t P = l_.period_ms;
        const std::int64_t w = grid(l_);
        const std::int64_t t = static_cast<std::int64_t>(exact_);
        const std::int64_t off = uniform(-1, 1);
        std::int64_t n = t;
        switch (uniform(0, 4)) {
        case 0: n = (t / P + 1) * P + off; break;
        case 1: n = (t / w + 1) * w + off; break;
        case 2: n = t + P + off; break;
        case 3: n = t + P + w + off; break;
        case 4: n = t; break;
        }
        exact_ = static_cast<double>(std::max(n, t));
    }

    Pattern p_;
    WindowLimit l_;
    std::mt19937_64 &rng_;
    double factor_ = 1;
    std::int64_t t_ = 0;
    double exact_ = 0;
    std::int64_t left_in_burst_ = 0;
};

// Across the 16/17 boundary, and well above it.
const std::uint32_t kLimits[] = {1, 2, 3, 7, 10, 15, 16, 17, 18, 31, 100, 1000};
// The configurable periods, and odd ones that stress the rounding of the
// bucket width (not a multiple of 50, or shorter than 50 ms).
const std::uint32_t kPeriods[] = {kSecond, kMinute, kHour, kDay, 7, 1001, 59'999};
const Pattern kPatterns[] = {Pattern::steady, Pattern::poisson, Pattern::bursts, Pattern::edges,
                             Pattern::jumps,  Pattern::equal,   Pattern::mixed};

TEST(SlidingWindow, ExactUpToSixteenThenBucketsOfAtMostTwoPercent) {
    EXPECT_EQ(kExactLimit, 16u);
    for (std::uint32_t count : {0u, 1u, 10u, 16u}) {
        EXPECT_EQ(window_bucket_ms({count, kMinute}), 0) << count;
    }
    EXPECT_EQ(window_bucket_ms({17, kSecond}), 20);
    EXPECT_EQ(window_bucket_ms({17, kMinute}), 1200);
    EXPECT_EQ(window_bucket_ms({17, kHour}), 72'000);
    EXPECT_EQ(window_bucket_ms({17, kDay}), 1'728'000);
    EXPECT_EQ(window_bucket_ms({100, 1}), 1);
    EXPECT_EQ(window_bucket_ms({100, 0}), 1);  // never a zero width
    for (std::uint32_t p = 1; p < 5000; p++) {
        const std::int64_t w = window_bucket_ms({17, p});
        ASSERT_GE(static_cast<std::int64_t>(kBucketsPerPeriod) * w, p) << p;  // 50 cover it
        ASSERT_LE(50 * (w - 1), p) << p;  // a request is at most w - 1 <= 2% late
    }
    // The ring holds the current bucket and the 50 before it.
    EXPECT_EQ(kWindowBuckets, kBucketsPerPeriod + 1);
    EXPECT_EQ(sizeof(WindowState), 216u);
}

// The central comparison, over many random arrival patterns, with refunds:
// exact up to 16, within the promised bounds above; and in every trailing
// window of the period at most `limit` accepted.
TEST(SlidingWindow, MatchesTheSlidingLogOnRandomPatterns) {
    const auto started = std::chrono::steady_clock::now();
    Measured exact_total, bucket_total;
    double bucket_worst_share = -1;
    std::uint32_t bucket_worst_extra = 0;
    std::int64_t bucket_worst_excess_1s = INT64_MIN, bucket_worst_excess_day = INT64_MIN;
    std::uint64_t trials = 0;
    for (std::uint32_t period : kPeriods) {
        for (std::uint32_t count : kLimits) {
            for (Pattern pattern : kPatterns) {
                for (std::uint64_t seed = 1; seed <= 2; seed++) {
                    const WindowLimit limit{count, period};
                    std::mt19937_64 rng(seed * 1'000'003 + period * 31ull + count * 7ull +
                                        static_cast<std::uint64_t>(pattern));
                    std::mt19937_64 refunds(rng() ^ 0x5eed);
                    const std::string context = std::string("pattern ") + name(pattern) +
                                                ", seed " + std::to_string(seed);
                    Driver driver(limit, context, &refunds);
                    Arrivals arrivals(pattern, limit, rng);
                    const std::size_t n = std::clamp<std::size_t>(count * 8, 300, 4000);
                    for (std::size_t i = 0; i < n && !driver.failed(); i++) {
                        driver.send(arrivals.next());
                    }
                    ASSERT_FALSE(driver.failed());

                    const Worst worst = worst_window(driver.log().stamps(), period - 1);
                    ASSERT_LE(worst.count, count)
                        << context << ", " << describe(limit) << ": " << worst.count
                        << " accepted in (t - period, t], t = base + " << worst.end - kBase;
                    const Measured &m = driver.measured();
                    Measured &total = exact(limit) ? exact_total : bucket_total;
                    total.requests += m.requests;
                    total.refusals += m.refusals;
                    total.refunds += m.refunds;
                    total.refused_while_log_accepts += m.refused_while_log_accepts;
                    if (!exact(limit)) {
                        bucket_worst_share = std::max(bucket_worst_share, m.worst_excess_share);
                        bucket_worst_extra = std::max(bucket_worst_extra, m.worst_extra_seconds);
                        if (period == kSecond) {
                            bucket_worst_excess_1s = std::max(bucket_worst_excess_1s,
                                                              m.worst_excess_ms);
                        }
                        if (period == kDay) {
                            bucket_worst_excess_day = std::max(bucket_worst_excess_day,
                                                               m.worst_excess_ms);
                        }
                    }
                    trials++;
                }
            }
        }
    }
    // The patterns really do push against the limit, and refunds happen.
    for (const Measured *m : {&exact_total, &bucket_total}) {
        EXPECT_GT(m->refusals, m->requests / 5);
        EXPECT_GT(m->refunds, m->requests / 50);
    }
    EXPECT_LE(bucket_worst_share, 0.02);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    std::printf(
        "[ measured ] %llu trials, %llu requests (%.2f s). limit <= 16: every decision and "
        "Retry-After equal to the log's. limit > 16: Retry-After at most %.2f%% of the period "
        "+ 1 s after the log's moment (worst %lld ms at 1 s periods, %lld ms at 1 day), at most "
        "%u s more than the log's Retry-After; refused while the log would accept: %.2f%% of "
        "refusals\n",
        static_cast<unsigned long long>(trials),
        static_cast<unsigned long long>(exact_total.requests + bucket_total.requests), seconds,
        100 * bucket_worst_share, static_cast<long long>(bucket_worst_excess_1s),
        static_cast<long long>(bucket_worst_excess_day), bucket_worst_extra,
        100.0 * static_cast<double>(bucket_total.refused_while_log_accepts) /
            static_cast<double>(bucket_total.refusals));
    RecordProperty("trials", std::to_string(trials));
}

// The examples: the answers are the exact whole seconds.
TEST(SlidingWindow, TenPerSecondSaysOneAndFivePerMinuteAtMostSixty) {
    {
        const WindowLimit limit{10, kSecond};
        WindowState s = fresh();
        for (int i = 0; i < 10; i++) ASSERT_TRUE(window_consume(s, limit, kBase, true).allowed);
        const WindowDecision d = window_consume(s, limit, kBase, true);
        EXPECT_FALSE(d.allowed);
        EXPECT_EQ(d.retry_after_s, 1u);
        EXPECT_EQ(d.reset_s, 1u);
        EXPECT_TRUE(window_consume(s, limit, kBase + 1000, true).allowed);
    }
    {
        const WindowLimit limit{5, kMinute};
        WindowState s = fresh();
        for (int i = 0; i < 5; i++) {
            ASSERT_TRUE(window_consume(s, limit, kBase + i * 7'000, true).allowed);
        }
        for (std::int64_t later : {28'000, 30'500, 59'999}) {
            const WindowDecision d = probe(s, limit, kBase + later);
            EXPECT_FALSE(d.allowed) << later;
            // The oldest (at kBase) leaves at kBase + 60 s.
            EXPECT_EQ(d.retry_after_s, ceil_s(60'000 - later)) << later;
            EXPECT_LE(d.retry_after_s, 60u);
        }
        EXPECT_TRUE(probe(s, limit, kBase + 60'000).allowed);
        EXPECT_TRUE(probe(s, limit, kBase + 60'000 + 6'999).allowed);
    }
    {
        // Five at once: a minute, not 64 s.
        const WindowLimit limit{5, kMinute};
        WindowState s = fresh();
        for (int i = 0; i < 5; i++) ASSERT_TRUE(window_consume(s, limit, kBase, true).allowed);
        EXPECT_EQ(probe(s, limit, kBase).retry_after_s, 60u);
        EXPECT_EQ(probe(s, limit, kBase + 28).retry_after_s, 60u);
        EXPECT_EQ(probe(s, limit, kBase + 1000).retry_after_s, 59u);
        EXPECT_FALSE(probe(s, limit, kBase + 59'999).allowed);
        EXPECT_TRUE(probe(s, limit, kBase + 60'000).allowed);
    }
}

// A full burst at the end of one period leaves nothing for the start of the
// next: the burst's requests count for exactly one period (exact limits),
// or at most one bucket more.
TEST(SlidingWindow, NoDoubleBurstAtPeriodEdge) {
    for (std::uint32_t period : {kSecond, kMinute, kHour, kDay}) {
        for (std::uint32_t count : {1u, 7u, 16u, 17u, 100u}) {
            const WindowLimit limit{count, period};
            WindowState s = fresh();
            const std::int64_t edge = (kBase / period + 1) * period;
            for (std::uint32_t i = 0; i < count; i++) {
                ASSERT_TRUE(window_consume(s, limit, edge - 1, true).allowed);
            }
            EXPECT_FALSE(window_consume(s, limit, edge - 1, true).allowed);
            EXPECT_FALSE(window_consume(s, limit, edge, true).allowed);
            EXPECT_FALSE(window_consume(s, limit, edge + period - 2, true).allowed);
            // A full period after the burst it has left (exactly, for the log;
            // at most a bucket's width - 1 later, for buckets).
            const std::int64_t late = exact(limit) ? 0 : window_bucket_ms(limit) - 1;
            EXPECT_TRUE(probe(s, limit, edge - 1 + period + late).allowed) << describe(limit);
        }
    }
}

// Accepted requests per period for a client sending evenly spaced at twice
// its limit, from a cold start at `phase` ms past a period boundary.
std::vector<std::uint64_t> accepted_per_period_at_2x(WindowLimit limit, std::int64_t phase,
                                                     std::size_t periods) {
    WindowState s = fresh();
    const std::int64_t P = limit.period_ms;
    const std::int64_t start = (kBase / P + 3) * P + phase;
    std::vector<std::uint64_t> per(periods, 0);
    const std::uint64_t n = 2ull * limit.count * periods;
    for (std::uint64_t i = 0; i < n; i++) {
        const std::int64_t t = start + static_cast<std::int64_t>(i * limit.period_ms /
                                                                 (2ull * limit.count));
        if (window_consume(s, limit, t, true).allowed)
            per[static_cast<std::size_t>((t - start) / P)]++;
    }
    return per;
}

// A client sending at twice its limit keeps at least 97% of it over time
// (limits over 16; refusals are not counted). Evenly spaced requests for 40
// periods from a cold start at several phases, averaged over periods 4..40;
// the whole first period is always 100%.
TEST(SlidingWindow, TwiceTheRateGetsAtLeast97PercentAbove16) {
    double worst_average = 2, worst_single = 2;
    for (std::uint32_t period : {kSecond, kMinute, kHour, kDay}) {
        for (std::uint32_t count : {17u, 20u, 50u, 100u, 1000u, 5000u}) {
            for (std::int64_t phase : {std::int64_t{0}, std::int64_t{period / 7}}) {
                const WindowLimit limit{count, period};
                constexpr std::size_t kPeriods = 40;
                const auto per = accepted_per_period_at_2x(limit, phase, kPeriods);
                EXPECT_EQ(per[0], count) << describe(limit);
                std::uint64_t total = 0;
                for (std::size_t k = 3; k < kPeriods; k++) {
                    total += per[k];
                    EXPECT_LE(per[k], count);
                    worst_single = std::min(worst_single, static_cast<double>(per[k]) / count);
                }
                const double average = static_cast<double>(total) / count / (kPeriods - 3);
                worst_average = std::min(worst_average, average);
                EXPECT_GE(average, 0.97) << describe(limit) << ", phase " << phase;
            }
        }
    }
    std::printf(
        "[ measured ] limit > 16 at 2x the rate, evenly spaced, periods 4..40: worst average "
        "%.4f, worst single period %.4f of the limit\n",
        worst_average, worst_single);
}

// The same with random (Poisson) arrivals at 2x, averaged over periods
// 2..30. Random gaps cost the sliding log itself a little (after a request
// leaves, the next arrival is on average P / 2N away), so the limit is
// compared with what the exact log gets on the same arrivals.
TEST(SlidingWindow, TwiceTheRatePoissonStaysCloseToTheLog) {
    std::mt19937_64 rng(20260101);
    double worst_share = 2, worst_vs_log = 2;
    for (std::uint32_t period : {kSecond, kMinute, kHour, kDay}) {
        for (std::uint32_t count : {17u, 100u, 1000u}) {
            const WindowLimit limit{count, period};
            WindowState s = fresh();
            SlidingLog log(period);
            const std::int64_t start = kBase;
            std::exponential_distribution<double> gap(2.0 * count / period);
            double t = static_cast<double>(start);
            constexpr std::size_t kPeriods = 30;
            std::uint64_t ours = 0, theirs = 0;
            while (true) {
                t += gap(rng);
                const auto ms = static_cast<std::int64_t>(t);
                const auto k = static_cast<std::size_t>((ms - start) / period);
                if (k >= kPeriods) break;
                const bool accepted = window_consume(s, limit, ms, true).allowed;
                const bool log_accepts = log.counting(ms) < count;
                if (log_accepts) log.add(ms);
                if (k >= 1) {
                    ours += accepted;
                    theirs += log_accepts;
                }
            }
            const double share = static_cast<double>(ours) / count / (kPeriods - 1);
            const double vs_log = static_cast<double>(ours) / static_cast<double>(theirs);
            worst_share = std::min(worst_share, share);
            worst_vs_log = std::min(worst_vs_log, vs_log);
            EXPECT_LE(share, 1.0) << describe(limit);
            EXPECT_GE(vs_log, 0.97) << describe(limit);
        }
    }
    std::printf(
        "[ measured ] limit > 16 at 2x the rate, Poisson, periods 2..30: worst %.4f of the "
        "limit, worst %.4f of what the exact log accepts\n",
        worst_share, worst_vs_log);
}

// Limits up to 16 are the log itself: at 2x the rate, evenly spaced, every
// request at a multiple of P / 2N, a request leaves exactly when a new one
// arrives, so the client gets its whole limit; with Poisson arrivals, the
// log's own share (measured, for the README).
TEST(SlidingWindow, SmallLimitsAtTwiceTheRate) {
    double worst_even = 2, worst_poisson = 2;
    std::mt19937_64 rng(5);
    for (std::uint32_t period : {kSecond, kMinute, kHour, kDay}) {
        for (std::uint32_t count : {1u, 2u, 5u, 10u, 16u}) {
            const WindowLimit limit{count, period};
            if (period % (2 * count) == 0) {
                const auto per = accepted_per_period_at_2x(limit, 17, 30);
                std::uint64_t total = 0;
                for (std::size_t k = 1; k < per.size(); k++) {
                    EXPECT_LE(per[k], count);
                    total += per[k];
                }
                const double share = static_cast<double>(total) / count / 29;
                worst_even = std::min(worst_even, share);
                EXPECT_EQ(share, 1.0) << describe(limit);
            }
            WindowState s = fresh();
            std::exponential_distribution<double> gap(2.0 * count / period);
            double t = static_cast<double>(kBase);
            std::uint64_t accepted = 0;
            constexpr std::size_t kPeriods = 200;
            while (t < kBase + static_cast<double>(period) * kPeriods) {
                accepted += window_consume(s, limit, static_cast<std::int64_t>(t), true).allowed;
                t += gap(rng);
            }
            const double share = static_cast<double>(accepted) / count / kPeriods;
            EXPECT_LE(share, 1.0 + 1.0 / kPeriods) << describe(limit);
            worst_poisson = std::min(worst_poisson, share);
        }
    }
    std::printf(
        "[ measured ] limit <= 16 at 2x the rate: evenly spaced %.4f of the limit; Poisson "
        "(the exact log's own share) worst %.4f\n",
        worst_even, worst_poisson);
}

// Large limits under heavy, bursty load: never more than the limit in any
// trailing window, and the window is used up (not wasted).
TEST(SlidingWindow, LargeLimitsNeverOverAnyTrailingWindow) {
    std::mt19937_64 rng(77);
    for (std::uint32_t period : {kSecond, kMinute, kDay}) {
        for (std::uint32_t count : {17u, 1000u, 100'000u}) {
            for (Pattern pattern : {Pattern::bursts, Pattern::poisson, Pattern::edges}) {
                const WindowLimit limit{count, period};
                WindowState s = fresh();
                Arrivals arrivals(pattern, limit, rng);
                std::vector<std::int64_t> accepted;
                const std::size_t n = std::min<std::size_t>(30ull * count, 300'000);
                for (std::size_t i = 0; i < n; i++) {
                    const std::int64_t t = arrivals.next();
                    const WindowDecision d = window_consume(s, limit, t, true);
                    if (d.allowed) accepted.push_back(t);
                }
                const Worst worst = worst_window(accepted, period - 1);
                EXPECT_LE(worst.count, count) << describe(limit) << " " << name(pattern);
            }
        }
    }
}

// Refused requests spend nothing: a flood of refusals does not move the
// moment the client is let through again, nor anything after it.
TEST(SlidingWindow, RefusedRequestsAreNotCounted) {
    for (std::uint32_t period : {kSecond, kMinute, kHour, kDay}) {
        for (std::uint32_t count : {5u, 40u}) {
            const WindowLimit limit{count, period};
            WindowState quiet = fresh();
            WindowState flooded = fresh();
            const std::int64_t t0 = kBase + 123;
            for (std::uint32_t i = 0; i < count; i++) {
                ASSERT_TRUE(window_consume(quiet, limit, t0, true).allowed);
                ASSERT_TRUE(window_consume(flooded, limit, t0, true).allowed);
            }
            const std::int64_t step = std::max<std::int64_t>(1, period / 500);
            for (std::int64_t t = t0; t < t0 + 3 * static_cast<std::int64_t>(period); t += step) {
                const WindowDecision a = window_consume(flooded, limit, t, true);
                const WindowDecision b = probe(quiet, limit, t);
                ASSERT_EQ(a.allowed, b.allowed) << period << " at +" << t - t0;
                ASSERT_EQ(a.remaining, b.remaining) << period << " at +" << t - t0;
                ASSERT_EQ(a.retry_after_s, b.retry_after_s) << period << " at +" << t - t0;
                if (a.allowed) {
                    // Keep both identical: count the same request in the quiet one too.
                    ASSERT_TRUE(window_consume(quiet, limit, t, true).allowed);
                }
            }
        }
    }
}

TEST(SlidingWindow, RemainingCountsDownToZero) {
    for (std::uint32_t count : {1u, 2u, 7u, 16u, 17u, 100u}) {
        const WindowLimit limit{count, kMinute};
        WindowState s = fresh();
        for (std::uint32_t i = 1; i <= count; i++) {
            // Spread over the window: every earlier request still counts.
            const WindowDecision d = window_consume(s, limit, kBase + i * 50, true);
            ASSERT_TRUE(d.allowed);
            EXPECT_EQ(d.remaining, count - i);
            EXPECT_EQ(d.limit, count);
            EXPECT_EQ(d.retry_after_s, 0u);
        }
        for (int i = 0; i < 3; i++) {
            const WindowDecision d = window_consume(s, limit, kBase + 50'000, true);
            EXPECT_FALSE(d.allowed);
            EXPECT_EQ(d.remaining, 0u);
            EXPECT_EQ(d.limit, count);
            EXPECT_GE(d.retry_after_s, 1u);
            EXPECT_EQ(d.next_free_s, d.retry_after_s);
        }
    }
}

// reset_s: 0 only when nothing is counted. Every decision that can be made
// on a real limit counts something (an accepted request counts itself, a
// refusal means the window is full), so an empty window with a 0 limit is
// the one way to see it (parse_rate rejects 0).
TEST(SlidingWindow, ResetIsZeroForAnEmptyWindow) {
    WindowState s = fresh();
    const WindowDecision d = window_consume(s, {0, kMinute}, kBase, true);
    EXPECT_FALSE(d.allowed);
    EXPECT_EQ(d.reset_s, 0u);
    EXPECT_EQ(d.retry_after_s, 1u);  // at least 1, whatever happens
    EXPECT_EQ(d.next_free_s, 1u);
}

TEST(SlidingWindow, ResetIsWhenEverythingCountedHasLeft) {
    for (std::uint32_t period : {kSecond, kMinute, kHour, kDay}) {
        for (std::uint32_t count : {10u, 40u}) {
            const WindowLimit limit{count, period};
            const std::int64_t w = std::max<std::int64_t>(1, window_bucket_ms(limit));
            WindowState s = fresh();
            const std::int64_t t0 = (kBase / w + 1) * w;  // first ms of a bucket
            WindowDecision d = window_consume(s, limit, t0, true);
            // Exact: it leaves one period on. Buckets: at the end of its
            // bucket's last ms plus a period.
            const std::int64_t late = exact(limit) ? 0 : w - 1;
            EXPECT_EQ(d.reset_s, ceil_s(period + late)) << describe(limit);
            const std::int64_t t1 = t0 + 5 * w + 3;
            d = window_consume(s, limit, t1, true);
            const std::int64_t gone = exact(limit) ? t1 + period : (t1 / w + 1) * w - 1 + period;
            EXPECT_EQ(d.reset_s, ceil_s(gone - t1)) << describe(limit);
            EXPECT_EQ(probe(s, limit, gone - 1).remaining, count - 2) << describe(limit);
            EXPECT_EQ(probe(s, limit, gone).remaining, count - 1) << describe(limit);  // empty
            EXPECT_TRUE(window_idle(s, limit, gone));
            EXPECT_FALSE(window_idle(s, limit, gone - 1));
        }
    }
}

// Retry-After right after the limit is used up at one instant, probed later
// and later: the ceiling of the exact wait (exact limits), never less and
// at most a bucket more (buckets).
TEST(SlidingWindow, RetryAfterIsTheCeilingOfTheWait) {
    for (std::uint32_t period : {kSecond, kMinute, kHour, kDay}) {
        for (std::uint32_t count : {1u, 3u, 16u, 17u, 200u}) {
            const WindowLimit limit{count, period};
            const std::int64_t w = window_bucket_ms(limit);
            WindowState s = fresh();
            const std::int64_t t0 = kBase + 777;
            for (std::uint32_t i = 0; i < count; i++) window_consume(s, limit, t0, true);
            for (std::int64_t later : {std::int64_t{0}, std::int64_t{1}, std::int64_t{period / 3},
                                       std::max<std::int64_t>(0, std::int64_t{period} - 1001),
                                       std::int64_t{period} - 1}) {
                const std::int64_t t = t0 + later;
                const WindowDecision d = probe(s, limit, t);
                if (d.allowed) continue;
                const std::int64_t leaves = exact(limit) ? t0 + period
                                                         : (t0 / w + 1) * w - 1 + period;
                EXPECT_EQ(d.retry_after_s, std::max(1u, ceil_s(leaves - t)))
                    << describe(limit) << " " << later;
                EXPECT_TRUE(probe(s, limit, t + d.retry_after_s * 1000LL).allowed);
            }
        }
    }
}

// A dry run decides but changes nothing: the state is byte-for-byte the
// same after it, and a sequence sprinkled with dry runs decides exactly like
// one without them.
TEST(SlidingWindow, DryRunDoesNotChangeDecisions) {
    std::mt19937_64 rng(42);
    for (std::uint32_t period : {kSecond, kMinute, 1001u, kDay}) {
        for (std::uint32_t count : {1u, 7u, 16u, 17u, 100u}) {
            const WindowLimit limit{count, period};
            WindowState plain = fresh();
            WindowState dried = fresh();
            Arrivals arrivals(Pattern::mixed, limit, rng);
            for (int i = 0; i < 2000; i++) {
                const std::int64_t t = arrivals.next();
                if (rng() % 2 == 0) {
                    // Sometimes from a clock that runs ahead of the requests.
                    const std::int64_t at =
                        rng() % 2 == 0 ? t : t + static_cast<std::int64_t>(rng() % (3ull * period));
                    const WindowState before = dried;
                    const WindowDecision dry = window_consume(dried, limit, at, false);
                    EXPECT_EQ(dry.remaining, probe(plain, limit, at).remaining);
                    ASSERT_EQ(std::memcmp(&before, &dried, sizeof before), 0) << i;
                    continue;
                }
                const WindowDecision a = window_consume(plain, limit, t, true);
                const WindowDecision b = window_consume(dried, limit, t, true);
                ASSERT_EQ(a.allowed, b.allowed) << i;
                ASSERT_EQ(a.remaining, b.remaining) << i;
                ASSERT_EQ(a.retry_after_s, b.retry_after_s) << i;
                ASSERT_EQ(a.reset_s, b.reset_s) << i;
                ASSERT_EQ(a.next_free_s, b.next_free_s) << i;
                ASSERT_EQ(std::memcmp(&plain, &dried, sizeof plain), 0) << i;
            }
        }
    }
}

TEST(SlidingWindow, DryRunNeverCountsEvenWhenAllowed) {
    for (std::uint32_t count : {3u, 30u}) {
        const WindowLimit limit{count, kMinute};
        WindowState s = fresh();
        for (int i = 0; i < 100; i++) {
            const WindowDecision d = window_consume(s, limit, kBase, false);
            ASSERT_TRUE(d.allowed);
            ASSERT_EQ(d.remaining, count - 1);
        }
        for (std::uint32_t i = 0; i < count; i++)
            EXPECT_TRUE(window_consume(s, limit, kBase, true).allowed);
        const WindowDecision refused = window_consume(s, limit, kBase, false);
        EXPECT_FALSE(refused.allowed);
        EXPECT_EQ(refused.remaining, 0u);
    }
}

// A dry run at a later time must not move the window on either (before
// fe853cd it advanced the ring, so window_idle() turned false for a whole
// ring and CounterTable took the untouched counter for an active one).
TEST(SlidingWindow, DryRunLeavesTheStateUntouchedWhenTimeMoved) {
    for (std::uint32_t count : {5u, 50u}) {
        const WindowLimit limit{count, kSecond};
        WindowState s = fresh();
        window_consume(s, limit, kBase, true);
        const WindowState before = s;
        const std::int64_t later = kBase + 10 * kSecond;
        ASSERT_TRUE(window_idle(s, limit, later));
        window_consume(s, limit, later, false);
        EXPECT_EQ(std::memcmp(&before, &s, sizeof s), 0) << "dry run changed the state";
        EXPECT_TRUE(window_idle(s, limit, later)) << "dry run made an idle window active";
    }
}

// window_refund takes back exactly one request, the one counted, and only
// while it still counts.
TEST(SlidingWindow, RefundTakesBackExactlyOne) {
    for (std::uint32_t count : {1u, 2u, 7u, 16u, 17u, 100u}) {
        const WindowLimit limit{count, kMinute};
        WindowState s = fresh();
        std::vector<WindowDecision> taken;
        const std::int64_t spacing = 50'000 / count;  // all within one window
        for (std::uint32_t i = 0; i < count; i++) {
            taken.push_back(window_consume(s, limit, kBase + i * spacing, true));
            ASSERT_TRUE(taken.back().allowed);
        }
        const std::int64_t now = kBase + count * spacing;
        ASSERT_FALSE(probe(s, limit, now).allowed);
        // Each refund makes room for exactly one.
        for (std::uint32_t k = 1; k <= std::min(count, 3u); k++) {
            window_refund(s, taken[count - k].counted_at_ms);
            EXPECT_EQ(probe(s, limit, now).remaining, k - 1) << count;
        }
        for (std::uint32_t k = 1; k <= std::min(count, 3u); k++) {
            ASSERT_TRUE(window_consume(s, limit, now, true).allowed);
        }
        EXPECT_FALSE(window_consume(s, limit, now, true).allowed);
    }
}

// Refunding the oldest request (a refund that comes late) moves the retry
// moment to the next oldest, exactly for the log.
TEST(SlidingWindow, RefundOfTheOldestMovesRetryAfter) {
    const WindowLimit limit{3, kMinute};
    WindowState s = fresh();
    const WindowDecision first = window_consume(s, limit, kBase, true);
    window_consume(s, limit, kBase + 10'000, true);
    window_consume(s, limit, kBase + 20'000, true);
    EXPECT_EQ(probe(s, limit, kBase + 30'000).retry_after_s, 30u);
    window_refund(s, first.counted_at_ms);
    EXPECT_TRUE(probe(s, limit, kBase + 30'000).allowed);
    window_consume(s, limit, kBase + 30'000, true);
    EXPECT_EQ(probe(s, limit, kBase + 30'000).retry_after_s, 40u);
}

TEST(SlidingWindow, RefundOfNothingDoesNotUnderflow) {
    for (std::uint32_t count : {3u, 30u}) {
        const WindowLimit limit{count, kMinute};
        WindowState s = fresh();
        const WindowDecision d = window_consume(s, limit, kBase, true);
        window_refund(s, d.counted_at_ms);
        window_refund(s, d.counted_at_ms);  // nothing left to take back
        window_refund(s, d.counted_at_ms + 1);
        window_refund(s, d.counted_at_ms + 5'000);
        const WindowDecision next = window_consume(s, limit, kBase, true);
        EXPECT_TRUE(next.allowed);
        EXPECT_EQ(next.remaining, count - 1);
        if (!exact(limit)) {
            for (std::uint32_t c : s.cells) EXPECT_LE(c, 1u);
        }
    }
}

// A refund for a request that has left the window must not touch what is
// counted now (the newer bucket in the same ring cell, for buckets).
TEST(SlidingWindow, StaleRefundDoesNotTouchNewerRequests) {
    for (std::uint32_t count : {2u, 20u}) {
        const WindowLimit limit{count, kMinute};
        const std::int64_t w = std::max<std::int64_t>(1, window_bucket_ms(limit));
        WindowState s = fresh();
        const WindowDecision old = window_consume(s, limit, kBase, true);
        // Just gone: for buckets, the same ring cell one ring later.
        const std::int64_t later = exact(limit) ? kBase + kMinute : kBase + kWindowBuckets * w;
        for (std::uint32_t i = 0; i < count; i++) {
            ASSERT_TRUE(window_consume(s, limit, later, true).allowed);
        }
        window_refund(s, old.counted_at_ms);
        EXPECT_FALSE(probe(s, limit, later).allowed) << count;
        // A refund from the future is ignored too.
        window_refund(s, later + w);
        EXPECT_FALSE(probe(s, limit, later).allowed) << count;
    }
}

// A request decided with a lagging clock (another worker saw a later time)
// is counted at the newest time seen; its refund finds it there.
TEST(SlidingWindow, LaggingClockCountsAtTheNewestTimeAndRefundsThere) {
    for (std::uint32_t count : {2u, 20u}) {
        const WindowLimit limit{count, kSecond};
        WindowState s = fresh();
        for (std::uint32_t i = 0; i + 1 < count; i++) {
            ASSERT_TRUE(window_consume(s, limit, kBase + 500, true).allowed);
        }
        const WindowDecision lagged = window_consume(s, limit, kBase + 200, true);
        ASSERT_TRUE(lagged.allowed);
        EXPECT_GE(lagged.counted_at_ms,
                  kBase + 500 - std::max<std::int64_t>(0, window_bucket_ms(limit)));
        EXPECT_FALSE(probe(s, limit, kBase + 500).allowed);
        // Retry-After from the lagging clock is never short for it.
        const WindowDecision refused = window_consume(s, limit, kBase + 200, true);
        ASSERT_FALSE(refused.allowed);
        EXPECT_TRUE(probe(s, limit, kBase + 200 + refused.retry_after_s * 1000LL).allowed);
        window_refund(s, lagged.counted_at_ms);
        EXPECT_TRUE(probe(s, limit, kBase + 500).allowed);
    }
}

// Workers' cached clocks lag real time by up to `lag` ms, and the window is
// moved on by whichever is ahead. In real time the promise then holds on
// every window of the period minus the lag (a request stamped late by a
// lagging worker leaves up to `lag` early); Retry-After, taken from the
// lagging worker's own clock, is still never an underestimate.
TEST(SlidingWindow, LaggingWorkerClocksKeepTheBoundMinusTheLag) {
    std::mt19937_64 rng(7);
    for (std::uint32_t period : {kSecond, kMinute}) {
        for (std::uint32_t count : {1u, 7u, 16u, 17u, 100u}) {
            for (Pattern pattern : {Pattern::poisson, Pattern::bursts, Pattern::edges}) {
                const WindowLimit limit{count, period};
                const std::int64_t lag = period / 20;
                WindowState s = fresh();
                Arrivals arrivals(pattern, limit, rng);
                std::vector<std::int64_t> accepted_real;
                for (std::uint32_t i = 0; i < std::max(400u, count * 8); i++) {
                    const std::int64_t real = arrivals.next();
                    const std::int64_t seen = real - std::uniform_int_distribution<std::int64_t>(
                                                         0, lag)(rng);
                    const WindowDecision d = window_consume(s, limit, seen, true);
                    if (d.allowed) {
                        accepted_real.push_back(real);
                    } else {
                        ASSERT_GE(d.retry_after_s, 1u);
                        ASSERT_TRUE(probe(s, limit, seen + d.retry_after_s * 1000LL).allowed);
                    }
                }
                const Worst worst = worst_window(accepted_real, period - 1 - lag);
                EXPECT_LE(worst.count, count) << describe(limit) << " " << name(pattern);
            }
        }
    }
}

// The limit of one state may change (a reload changed a key's rate; two
// locations name different rates for one budget), across 16 and with
// another bucket width: every request accepted under a limit still leaves
// fewer than that limit before it in the trailing period, and Retry-After
// is still kept.
TEST(SlidingWindow, ChangingTheLimitAcrossSixteenStaysSafe) {
    std::mt19937_64 rng(1616);
    const WindowLimit limits[] = {{5, kMinute},  {16, kMinute}, {17, kMinute},
                                  {40, kMinute}, {40, 61'000},  {10, 61'000}};
    std::uint64_t conversions = 0;
    for (int trial = 0; trial < 40; trial++) {
        WindowState s = fresh();
        SlidingLog log(kMinute);  // periods differ by at most a second: checked per limit below
        std::vector<std::pair<std::int64_t, std::uint32_t>> accepted;  // when, under which period
        std::int64_t t = kBase + static_cast<std::int64_t>(rng() % kMinute);
        WindowLimit limit = limits[0];
        for (int i = 0; i < 3000; i++) {
            if (rng() % 50 == 0) {
                const WindowLimit next = limits[rng() % std::size(limits)];
                conversions += exact(next) != exact(limit) ||
                               window_bucket_ms(next) != window_bucket_ms(limit);
                limit = next;
            }
            t += static_cast<std::int64_t>(rng() % (2 * limit.period_ms / limit.count + 1));
            const WindowDecision d = window_consume(s, limit, t, true);
            if (d.allowed) {
                std::size_t before = 0;
                for (const auto &a : accepted) before += a.first > t - limit.period_ms;
                ASSERT_LT(before, limit.count) << describe(limit) << " at request " << i;
                accepted.emplace_back(t, limit.period_ms);
                if (rng() % 10 == 0) {
                    window_refund(s, d.counted_at_ms);
                    // A refund across a conversion may find nothing: the safe
                    // side. Here it was just counted, so it is found.
                    accepted.pop_back();
                }
            } else {
                ASSERT_TRUE(probe(s, limit, t + d.retry_after_s * 1000LL).allowed)
                    << describe(limit) << " at request " << i;
            }
            // Only the last 100 matter for any window (a limit of 40).
            if (accepted.size() > 200) accepted.erase(accepted.begin(), accepted.begin() + 100);
        }
    }
    EXPECT_GT(conversions, 100u);
}

// window_idle: the log is idle once its newest request has left; buckets
// once the newest bucket that holds one has (at its last ms plus a period).
TEST(SlidingWindow, IdleExactlyWhenNothingCounts) {
    for (std::uint32_t count : {4u, 40u}) {
        for (std::uint32_t period : {kSecond, kDay}) {
            const WindowLimit limit{count, period};
            WindowState s = fresh();
            EXPECT_TRUE(window_idle(s, limit, kBase));
            const WindowDecision d = window_consume(s, limit, kBase + 5, true);
            const std::int64_t w = window_bucket_ms(limit);
            const std::int64_t gone = exact(limit) ? kBase + 5 + period
                                                   : ((kBase + 5) / w + 1) * w - 1 + period;
            EXPECT_FALSE(window_idle(s, limit, gone - 1));
            EXPECT_TRUE(window_idle(s, limit, gone));
            window_refund(s, d.counted_at_ms);
            EXPECT_TRUE(window_idle(s, limit, kBase + 5));
        }
    }
}

// All zero is an empty window (a zone's fresh memory), for either kind of limit.
TEST(SlidingWindow, AllZeroIsEmpty) {
    for (std::uint32_t count : {1u, 16u, 17u, 1000u}) {
        WindowState s;
        std::memset(&s, 0, sizeof s);
        const WindowDecision d = window_consume(s, {count, kSecond}, 5, true);  // just after boot
        EXPECT_TRUE(d.allowed) << count;
        EXPECT_EQ(d.remaining, count - 1) << count;
    }
}

}  // namespace
}  // namespace apikey
