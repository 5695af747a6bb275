#include "process_identity.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>

namespace apikey {

namespace {

struct ProcStat {
    std::uint64_t pid;    // field 1, as the /proc mount numbers the process
    char state;           // field 3
    std::uint64_t start;  // field 22, starttime
};

// A start time of 0 (mod 2^32) would read as "bare pid"; 1 stands in for it,
// on both the writing and the checking side.
std::uint32_t start_part(std::uint64_t ticks) noexcept {
    const auto low = static_cast<std::uint32_t>(ticks);
    return low != 0 ? low : 1;
}

bool is_space(char c) noexcept { return c == ' ' || c == '\n'; }

bool parse_number(const char *&p, const char *end, std::uint64_t &out) noexcept {
    const char *start = p;
    std::uint64_t n = 0;
    while (p < end && *p >= '0' && *p <= '9') n = n * 10 + static_cast<std::uint64_t>(*p++ - '0');
    out = n;
    // A number cut off by the end of the buffer may be incomplete.
    return p != start && p < end && is_space(*p);
}

// "pid (comm) state ppid ... starttime ...": comm may contain spaces and
// parentheses, so fields after it are counted from the last ')'.
bool parse_stat(const char *buf, std::size_t len, ProcStat &out) noexcept {
    const char *end = buf + len;
    const char *close = nullptr;
    for (const char *p = buf; p < end; p++) {
        if (*p == ')') close = p;
    }
    if (close == nullptr) return false;
    const char *p = buf;
    if (!parse_number(p, close, out.pid)) return false;
    p = close + 1;
    while (p < end && is_space(*p)) p++;
    if (p == end) return false;
    out.state = *p++;
    for (int field = 4; field < 22; field++) {
        while (p < end && is_space(*p)) p++;
        while (p < end && !is_space(*p)) p++;
    }
    while (p < end && is_space(*p)) p++;
    return parse_number(p, end, out.start);
}

bool read_stat(const char *path, ProcStat &out) noexcept {
    const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    // The fields up to starttime take well under 512 bytes (comm is at most
    // 15 characters); the rest of the line is not needed.
    char buf[1024];
    std::size_t len = 0;
    while (len < sizeof buf) {
        const ssize_t n = ::read(fd, buf + len, sizeof buf - len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        len += static_cast<std::size_t>(n);
    }
    ::close(fd);
    return parse_stat(buf, len, out);
}

// "/proc/<pid>/stat" without snprintf, so this stays async-signal-safe.
void stat_path(std::uint32_t pid, char (&path)[32]) noexcept {
    char digits[10];
    int n = 0;
    do {
        digits[n++] = static_cast<char>('0' + pid % 10);
        pid /= 10;
    } while (pid != 0);
    char *p = path;
    for (const char *s = "/proc/"; *s != '\0'; s++) *p++ = *s;
    while (n > 0) *p++ = digits[--n];
    for (const char *s = "/stat"; *s != '\0'; s++) *p++ = *s;
    *p = '\0';
}

// Keyed by the pid it holds: a forked child sees a foreign pid and reads its own.
std::atomic<std::uint64_t> cached_identity{0};

}  // namespace

std::uint64_t this_process_identity() noexcept {
    const auto pid = static_cast<std::uint32_t>(::getpid());
    const std::uint64_t seen = cached_identity.load(std::memory_order_relaxed);
    if (seen != 0 && identity_pid(seen) == pid) return seen;
    // Read through /proc/self and check the pid it reports: a /proc mounted
    // for another pid namespace would give start times that others, reading
    // /proc/<pid>, could not match, and a live holder would look dead.
    std::uint32_t start = 0;
    ProcStat st{};
    if (read_stat("/proc/self/stat", st) && st.pid == pid) start = start_part(st.start);
    const std::uint64_t identity = make_identity(pid, start);
    cached_identity.store(identity, std::memory_order_relaxed);
    return identity;
}

bool process_alive(std::uint64_t identity) noexcept {
    const std::uint32_t pid = identity_pid(identity);
    // Beyond pid_t's range kill() would address a process group.
    if (pid == 0 || pid > 0x7fff'ffffu) return false;
    if (::kill(static_cast<pid_t>(pid), 0) == -1 && errno == ESRCH) return false;
    const std::uint32_t start = identity_start(identity);
    if (start == 0) return true;
    char path[32];
    stat_path(pid, path);
    ProcStat st{};
    if (!read_stat(path, st) || st.pid != pid) return true;  // /proc cannot tell; kill() found it
    // A zombie never runs again (and 'X' is one being reaped).
    if (st.state == 'Z' || st.state == 'X') return false;
    return start_part(st.start) == start;
}

}  // namespace apikey
