// A child process for the liveness tests: it runs a given step, reports its
// process identity through a pipe, then either exits at once or stays alive
// until the parent lets it go. Only async-signal-safe calls run in the child.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>

#include "core/process_identity.h"

namespace apikey {

class ForkedChild {
public:
    enum class Then { exit, stay };

    template <typename Step>
    ForkedChild(Then then, Step step) {
        int report[2];
        int hold[2];
        if (::pipe(report) != 0 || ::pipe(hold) != 0) std::abort();
        pid_ = ::fork();
        if (pid_ < 0) std::abort();
        if (pid_ == 0) {
            ::close(report[0]);
            ::close(hold[1]);
            step();
            const std::uint64_t id = this_process_identity();
            if (::write(report[1], &id, sizeof id) != static_cast<ssize_t>(sizeof id)) ::_exit(1);
            if (then == Then::stay) {
                char c;
                while (::read(hold[0], &c, 1) < 0 && errno == EINTR) {
                }
            }
            ::_exit(0);
        }
        ::close(report[1]);
        ::close(hold[0]);
        hold_ = hold[1];
        ssize_t n;
        do {
            n = ::read(report[0], &identity_, sizeof identity_);
        } while (n < 0 && errno == EINTR);
        ::close(report[0]);
        if (n != static_cast<ssize_t>(sizeof identity_)) std::abort();
    }
    ForkedChild(const ForkedChild &) = delete;
    ForkedChild &operator=(const ForkedChild &) = delete;
    ~ForkedChild() { reap(); }

    std::uint64_t identity() const { return identity_; }
    pid_t pid() const { return pid_; }

    // Lets the child end and waits until it has: a zombie until reap().
    void let_exit() {
        if (hold_ >= 0) {
            ::close(hold_);
            hold_ = -1;
        }
        if (reaped_) return;
        siginfo_t info{};
        while (::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOWAIT) != 0 &&
               errno == EINTR) {
        }
    }

    void reap() {
        let_exit();
        if (reaped_) return;
        while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
        }
        reaped_ = true;
    }

private:
    pid_t pid_ = -1;
    int hold_ = -1;
    bool reaped_ = false;
    std::uint64_t identity_ = 0;
};

}  // namespace apikey
