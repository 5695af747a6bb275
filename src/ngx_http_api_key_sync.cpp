// Process lifetime of cluster mode: worker 0 of each configuration forks
// one sync process for all synced limit zones and key channels (one Redis
// connection per api_key_redis, one batch per zone per interval). The sync
// process never calls nginx: it reads and writes the zones' shared memory,
// and a timer of worker 0 logs its state changes. No request ever waits
// for it.
//
// A process, not a thread of worker 0: a process with a second thread runs
// glibc's multi-threaded paths (locked malloc arenas, cancellation points
// around every system call) for every request it serves, which cost about
// 330 instructions a request in worker 0 (scripts/request-cost).
//
// Lifetime: the sync process holds one end of a socket pair, worker 0 the
// other. It ends when that end reads end-of-file: worker 0 shut it down at
// exit, or worker 0 is gone (whatever the way it died). Worker 0's timer
// notices a sync process that died (the pair reads end-of-file) and starts
// another. At a reload the new worker 0 starts its own while the old one
// may still run until its worker exits; each tick takes the zone's sync
// lock, so two never sync one zone at once, and since the sync state lives
// in the zone nothing is lost or counted twice.

#include <openssl/rand.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "core/grant_script.h"
#include "core/owner_lock.h"
#include "core/process_identity.h"
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

class SyncProcess {
public:
    static constexpr unsigned kMaxBatchesPerTick = 16;

    void configure(std::vector<Target> targets, std::vector<ChannelTarget> channels,
                   std::vector<std::unique_ptr<Link>> links) noexcept {
        targets_ = std::move(targets);
        channels_ = std::move(channels);
        links_ = std::move(links);
        // Key channels are read every 100 ms, or each limit zone's interval if shorter.
        interval_ms_ = 100;
        for (const Target &t : targets_) {
            interval_ms_ = std::min(interval_ms_, static_cast<int>(t.zone->sync.interval_ms));
        }
        // A tick in flight may wait up to one timeout per Redis call.
        stop_wait_ms_ = interval_ms_ + 100;
        for (const auto &l : links_) {
            stop_wait_ms_ += 2 * std::max(l->redis->endpoint.connect_timeout_ms,
                                          l->redis->endpoint.timeout_ms);
        }
    }

    bool running() const noexcept { return pid_ > 0; }

    // In worker 0 only. False (errno set) when no process could be started.
    bool start(ngx_cycle_t *cycle) noexcept {
        int pair[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) return false;
        const pid_t parent = getpid();
        const pid_t pid = fork();
        if (pid < 0) {
            const int err = errno;
            close(pair[0]);
            close(pair[1]);
            errno = err;
            return false;
        }
        if (pid == 0) {
            close(pair[0]);
            child(cycle, pair[1], parent);
        }
        close(pair[1]);
        pid_ = pid;
        fd_ = pair[0];
        return true;
    }

    // Worker 0's timer: true once when the sync process has ended on its own.
    bool ended() noexcept {
        if (fd_ < 0) return false;
        struct pollfd p = {fd_, POLLIN, 0};
        if (poll(&p, 1, 0) <= 0) return false;
        close(fd_);
        fd_ = -1;
        pid_ = -1;  // reaped by nginx's SIGCHLD handler
        return true;
    }

    pid_t pid() const noexcept { return pid_; }

    // At worker exit: the sync process finishes its tick and ends; one that
    // does not within the bound is killed (its locks are taken over by the
    // next owner, its files are replaced atomically).
    void stop() noexcept {
        if (fd_ < 0) return;
        shutdown(fd_, SHUT_WR);
        if (!wait_end(stop_wait_ms_)) {
            kill(pid_, SIGKILL);
            wait_end(1000);
        }
        close(fd_);
        fd_ = -1;
        pid_ = -1;
    }

private:
    bool wait_end(int ms) noexcept {
        const std::int64_t deadline = monotonic_ms() + ms;
        for (;;) {
            const std::int64_t left = deadline - monotonic_ms();
            if (left < 0) return false;
            struct pollfd p = {fd_, POLLIN, 0};
            const int n = poll(&p, 1, static_cast<int>(left));
            if (n > 0) return true;  // end-of-file: its end closed when it exited
            if (n < 0 && errno != EINTR) return false;
        }
    }

    // The sync process: it must not keep anything of worker 0's open (a
    // client connection it held would stay open after the worker closed
    // it), nor take the signals nginx sends to the process group.
    [[noreturn]] void child(ngx_cycle_t *cycle, int fd, pid_t parent) noexcept {
        ngx_pid = getpid();
        self_identity = apikey::this_process_identity();
        for (int signo : {SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH, SIGIO, SIGALRM, SIGPIPE}) {
            signal(signo, SIG_IGN);
        }
        for (int signo : {SIGTERM, SIGINT, SIGQUIT, SIGCHLD}) signal(signo, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, nullptr);
        ngx_connection_t *c = cycle->connections;
        for (ngx_uint_t i = 0; c != nullptr && i < cycle->connection_n; i++) {
            if (c[i].fd != -1 && c[i].fd != fd) close(c[i].fd);
        }
        auto *ls = static_cast<ngx_listening_t *>(cycle->listening.elts);
        for (ngx_uint_t i = 0; i < cycle->listening.nelts; i++) {
            if (ls[i].fd != -1 && ls[i].fd != fd) close(ls[i].fd);
        }
        if (ngx_channel != -1 && ngx_channel != fd) close(ngx_channel);
        // Forked before nginx closed the other processes' channels in this worker.
        for (ngx_int_t i = 0; i < ngx_last_process; i++) {
            for (ngx_socket_t s : ngx_processes[i].channel) {
                if (s != -1 && s != fd) close(s);
            }
        }
        ngx_setproctitle(const_cast<char *>("api_key sync process"));
        run(fd, parent);
        _exit(0);  // nothing of nginx's or C++'s exit handlers: they are worker 0's
    }

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

    // Ends when worker 0 shuts its end down or is gone.
    void run(int fd, pid_t parent) noexcept {
        const apikey::RedisScript script(apikey::kGrantScript);
        for (;;) {
            for (ChannelTarget &t : channels_) follow(t);
            for (Target &t : targets_) tick(t, script);
            struct pollfd p = {fd, POLLIN, 0};
            const int n = poll(&p, 1, interval_ms_);
            if (n > 0 || (n < 0 && errno != EINTR) || getppid() != parent) break;
        }
        for (auto &l : links_) l->link->close();
    }

    std::vector<Target> targets_;
    std::vector<ChannelTarget> channels_;
    std::vector<std::unique_ptr<Link>> links_;
    int interval_ms_ = 100;
    int stop_wait_ms_ = 1000;
    pid_t pid_ = -1;
    int fd_ = -1;
};

SyncProcess sync_process;

// Started by worker 0; started again (at most once a second) when it ended
// on its own, which nginx's SIGCHLD handler has logged with its status.
std::int64_t sync_started_ms;

bool start_sync_process(ngx_cycle_t *cycle, ngx_log_t *log) noexcept {
    sync_started_ms = monotonic_ms();
    if (!sync_process.start(cycle)) {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno, "api_key: cannot start the sync process");
        return false;
    }
    ngx_log_error(NGX_LOG_NOTICE, log, 0, "api_key: sync process %P started",
                  static_cast<ngx_pid_t>(sync_process.pid()));
    return true;
}

void watch_sync_process(ngx_log_t *log, std::int64_t now) noexcept {
    if (sync_process.ended()) {
        ngx_log_error(NGX_LOG_ALERT, log, 0, "api_key: the sync process ended unexpectedly");
    }
    if (!sync_process.running() && now - sync_started_ms >= 1000) {
        start_sync_process(const_cast<ngx_cycle_t *>(ngx_cycle), log);
    }
}

// Logs each zone's state change once (degraded, ok again), from worker 0.
struct LoggedState {
    LimitZone *zone;
    bool degraded;
};
std::vector<LoggedState> logged;
std::vector<KeyZone *> logged_channels;
bool sync_started = false;  // start_sync configured the sync process in this worker

}  // namespace

bool sync_tick(ngx_log_t *log) noexcept {
    if (!sync_started) return false;
    const std::int64_t now = monotonic_ms();
    for (LoggedState &s : logged) {
        const bool degraded = apikey::sync_degraded(s.zone->table.sync_node(), s.zone->sync, now);
        if (degraded == s.degraded) continue;
        s.degraded = degraded;
        if (degraded) {
            ngx_log_error(NGX_LOG_WARN, log, 0,
                          "api_key_limit_zone \"%V\": no exchange with api_key_redis \"%V\" for "
                          "%uD ms: degraded (fail=%s)",
                          &s.zone->name, &s.zone->redis->name, s.zone->sync.fail_after_ms,
                          s.zone->sync.fail == apikey::FailMode::local ? "local" : "closed");
        } else {
            ngx_log_error(NGX_LOG_NOTICE, log, 0,
                          "api_key_limit_zone \"%V\": synced with api_key_redis \"%V\" again",
                          &s.zone->name, &s.zone->redis->name);
        }
    }
    for (KeyZone *zone : logged_channels) log_channel(*zone, log);
    if (ngx_exiting || ngx_quit || ngx_terminate) return false;
    watch_sync_process(log, now);
    return true;
}

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
        sync_process.configure(std::move(targets), std::move(channels), std::move(links));
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0, "api_key: cannot start the sync process: %s",
                      e.what());
        return;
    }
    // Without it the zones stay degraded (logged by the timer); the timer
    // tries again.
    start_sync_process(cycle, cycle->log);
    sync_started = true;
    if (!worker_tick.timer_set) ngx_add_timer(&worker_tick, kPinMs);
}

void stop_sync(ngx_cycle_t *) noexcept { sync_process.stop(); }

}  // namespace ngx_api_key
