// Who holds a lock or a reader slot in shared memory, robust to pid reuse.
//
// A pid alone is not enough: pids are recycled (pid_max may be as low as
// 32768), so a lock left by a dead worker may name a pid that now belongs to
// an unrelated process, and "kill(pid, 0) succeeds" would keep the lock held
// forever. An identity pairs the pid with the process's start time (field 22
// of /proc/<pid>/stat, clock ticks since boot), which a later process with
// the same pid does not share.
#pragma once

#include <cstdint>

namespace apikey {

// Low 32 bits: pid. High 32 bits: low 32 bits of the start time, never 0 in
// an identity from this_process_identity() when /proc is readable. A start
// part of 0 marks a bare pid (callers that only know the pid, or no /proc):
// its liveness is judged by kill() alone.
constexpr std::uint64_t make_identity(std::uint32_t pid, std::uint32_t start) noexcept {
    return std::uint64_t{start} << 32 | pid;
}
constexpr std::uint32_t identity_pid(std::uint64_t identity) noexcept {
    return static_cast<std::uint32_t>(identity);
}
constexpr std::uint32_t identity_start(std::uint64_t identity) noexcept {
    return static_cast<std::uint32_t>(identity >> 32);
}

// This process's identity; right in a child after fork(). One /proc read
// per process, then a cached word and a getpid(). Async-signal-safe (no
// allocation, no locks), so a forked child may call it.
std::uint64_t this_process_identity() noexcept;

// False when the process is certainly gone: pid 0, no such pid, a pid now
// held by a process that started at another time, or a zombie. True
// otherwise, including when /proc cannot tell (then kill() decides).
bool process_alive(std::uint64_t identity) noexcept;

}  // namespace apikey
