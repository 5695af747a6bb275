// Process lifetime of cluster mode: worker 0 of each configuration runs one
// sync thread for all synced limit zones (one Redis connection per
// api_key_redis, one batch per zone per interval). The thread never calls
// nginx: it reads and writes the zones' shared memory, and a timer of the
// worker logs its state changes. No request ever waits for it.
//
// At a reload the new worker 0 starts its own thread while the old one may
// still run for an interval; each tick takes the zone's sync lock, so two
// threads never sync one zone at once, and since the sync state lives in
// the zone nothing is lost or counted twice.

#include <openssl/rand.h>
#include <signal.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "core/grant_script.h"
#include "core/owner_lock.h"
#include "core/shm_atomic.h"
#include "core/sync_batch.h"
#include "core/sync_engine.h"
#include "ngx_http_api_key_module.h"

namespace ngx_api_key {

std::int64_t monotonic_ms() noexcept {
    // The clock of ngx_current_msec, which the request path uses.
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

namespace {

std::uint64_t random64() noexcept {
    std::uint64_t v = 0;
    if (RAND_bytes(reinterpret_cast<unsigned char *>(&v), sizeof v) != 1) {
        v = static_cast<std::uint64_t>(monotonic_ms()) * 0x9e3779b97f4a7c15ull;
    }
    return v;
}

struct Link {
    const RedisConf *redis;
    std::unique_ptr<apikey::RedisLink> link;
    std::int64_t next_attempt_ms = 0;
    std::int64_t backoff_ms = 0;
};

struct Target {
    LimitZone *zone;
    Link *link;
};

struct ChannelTarget {
    KeyZone *zone;
    Link *link;
};

class SyncThread {
public:
    static constexpr unsigned kMaxBatchesPerTick = 16;

    bool running() const noexcept { return thread_.joinable(); }

    bool start(std::vector<Target> targets, std::vector<ChannelTarget> channels,
               std::vector<std::unique_ptr<Link>> links) noexcept {
        targets_ = std::move(targets);
        channels_ = std::move(channels);
        links_ = std::move(links);
        stop_ = false;
        // Signals stay with the event loop: the thread starts with all blocked.
        sigset_t all, previous;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &previous);
        bool started = true;
        try {
            thread_ = std::thread([this] { run(); });
        } catch (const std::exception &) {
            started = false;
        }
        pthread_sigmask(SIG_SETMASK, &previous, nullptr);
        return started;
    }

    // Bounded by one batch: at most one timeout per Redis call in flight.
    void stop() noexcept {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
        }
        wake_.notify_all();
        if (thread_.joinable()) thread_.join();
        for (auto &l : links_) l->link->close();
    }

private:
    bool connected(Link &l, std::int64_t now) noexcept {
        if (l.link->connected()) return true;
        if (now < l.next_attempt_ms) return false;
        const apikey::RedisResult r = l.link->connect(l.redis->endpoint);
        if (r.ok) {
            l.backoff_ms = 0;
            return true;
        }
        // Retried every interval at first, then backing off to a second.
        l.backoff_ms = l.backoff_ms == 0 ? 100 : std::min<std::int64_t>(1000, 2 * l.backoff_ms);
        l.next_attempt_ms = now + l.backoff_ms;
        return false;
    }

    void tick(Target &t, const apikey::RedisScript &script) noexcept {
        LimitZone &zone = *t.zone;
        const std::uint64_t self = self_identity;
        if (!apikey::owner_try_lock(&zone.shared->sync_owner, self)) return;
        const std::int64_t now = monotonic_ms();
        if (connected(*t.link, now)) {
            apikey::SyncTickOptions options;
            options.zone = to_view(zone.name);
            // More busy budgets than one batch carries: further batches in
            // this tick, within the interval, so that each budget's turn comes
            // before its lease runs out (measured with 10,000 busy budgets:
            // one batch a tick left a quarter of the requests without a
            // grant). Each batch holds Redis for one script run only.
            for (unsigned batches = 0; batches < kMaxBatchesPerTick; batches++) {
                const apikey::SyncTickResult r = apikey::sync_tick(
                    zone.table, *t.link->link, script, t.link->redis->prefix, monotonic_ms,
                    random64(), options);
                if (!t.link->link->connected()) {
                    t.link->next_attempt_ms = 0;
                    break;
                }
                if (!r.ok || !r.more || monotonic_ms() - now >= zone.sync.interval_ms) break;
            }
        } else {
            apikey::sync_offline(zone.table, now);
        }
        apikey::owner_unlock(&zone.shared->sync_owner);
    }

    void follow(ChannelTarget &t) noexcept {
        const bool up = connected(*t.link, monotonic_ms());
        follow_channel_tick(*t.zone, *t.link->link, up);
        if (up && !t.link->link->connected()) t.link->next_attempt_ms = 0;
    }

    void run() noexcept {
        const apikey::RedisScript script(apikey::kGrantScript);
        // Key channels are read every 100 ms, or each limit zone's interval if shorter.
        std::uint32_t interval = 100;
        for (const Target &t : targets_) interval = std::min(interval, t.zone->sync.interval_ms);
        std::unique_lock<std::mutex> lock(mutex_);
        while (!stop_) {
            lock.unlock();
            for (ChannelTarget &t : channels_) follow(t);
            for (Target &t : targets_) tick(t, script);
            lock.lock();
            wake_.wait_for(lock, std::chrono::milliseconds(interval), [this] { return stop_; });
        }
    }

    std::vector<Target> targets_;
    std::vector<ChannelTarget> channels_;
    std::vector<std::unique_ptr<Link>> links_;
    std::thread thread_;
    std::mutex mutex_;
    std::condition_variable wake_;
    bool stop_ = false;
};

SyncThread sync_thread;

// Logs each zone's state change once (degraded, ok again), from worker 0.
struct LoggedState {
    LimitZone *zone;
    bool degraded;
};
std::vector<LoggedState> logged;
std::vector<KeyZone *> logged_channels;
ngx_event_t log_event;

void log_states(ngx_event_t *ev) noexcept {
    const std::int64_t now = monotonic_ms();
    for (LoggedState &s : logged) {
        const bool degraded = apikey::sync_degraded(s.zone->table.sync_node(), s.zone->sync, now);
        if (degraded == s.degraded) continue;
        s.degraded = degraded;
        if (degraded) {
            ngx_log_error(NGX_LOG_WARN, ev->log, 0,
                          "api_key_limit_zone \"%V\": no exchange with api_key_redis \"%V\" for "
                          "%uD ms: degraded (fail=%s)",
                          &s.zone->name, &s.zone->redis->name, s.zone->sync.fail_after_ms,
                          s.zone->sync.fail == apikey::FailMode::local ? "local" : "closed");
        } else {
            ngx_log_error(NGX_LOG_NOTICE, ev->log, 0,
                          "api_key_limit_zone \"%V\": synced with api_key_redis \"%V\" again",
                          &s.zone->name, &s.zone->redis->name);
        }
    }
    for (KeyZone *zone : logged_channels) log_channel(*zone, ev->log);
    if (!ngx_exiting && !ngx_quit && !ngx_terminate) ngx_add_timer(ev, 200);
}

}  // namespace

void start_sync(ngx_cycle_t *cycle) noexcept {
    if (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE) return;
    if (ngx_worker != 0) return;
    try {
        std::vector<std::unique_ptr<Link>> links;
        std::vector<Target> targets;
        std::vector<ChannelTarget> channels;
        // One connection per api_key_redis, whichever zones use it.
        auto link_to = [&](const RedisConf *redis) {
            for (auto &l : links) {
                if (l->redis == redis) return l.get();
            }
            links.push_back(std::make_unique<Link>());
            links.back()->redis = redis;
            links.back()->link = apikey::make_hiredis_link();
            return links.back().get();
        };
        for_each_limit_zone(cycle, [&](LimitZone &zone) {
            if (!zone.synced() || !zone.table.valid()) return;
            targets.push_back({&zone, link_to(zone.redis)});
            logged.push_back({&zone, false});
        });
        for_each_key_zone(cycle, [&](KeyZone &zone) {
            if (!zone.follows() || zone.channel_state == nullptr) return;
            channels.push_back({&zone, link_to(zone.redis)});
            // What happened before this worker started was logged by its predecessor.
            const apikey::ChannelState *cs = zone.channel_state;
            char message[apikey::kChannelMessageBytes];
            zone.logged.installed = apikey::load_relaxed(&cs->versions_installed);
            zone.logged.revocations = apikey::load_relaxed(&cs->revocations_applied);
            zone.logged.message_seq = apikey::channel_read_message(cs, message);
            logged_channels.push_back(&zone);
        });
        if (targets.empty() && channels.empty()) return;
        if (!sync_thread.start(std::move(targets), std::move(channels), std::move(links))) {
            ngx_log_error(NGX_LOG_ALERT, cycle->log, 0, "api_key: cannot start the sync thread");
            return;
        }
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0, "api_key: cannot start the sync thread: %s",
                      e.what());
        return;
    }
    ngx_memzero(&log_event, sizeof(log_event));
    log_event.handler = log_states;
    log_event.log = cycle->log;
    log_event.cancelable = 1;
    ngx_add_timer(&log_event, 200);
}

void stop_sync(ngx_cycle_t *) noexcept { sync_thread.stop(); }

}  // namespace ngx_api_key
