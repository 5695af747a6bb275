// Process identities (core/process_identity): a process is told apart from a
// later one that got the same pid, a dead or zombie process is dead, and a
// forked child has its own identity.
#include "core/process_identity.h"

#include <gtest/gtest.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

#include "forked_child.h"

namespace apikey {
namespace {

// Field 22 of /proc/<pid>/stat, parsed here independently of the module.
std::uint64_t start_ticks_of(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    const std::string line((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::istringstream fields(line.substr(line.rfind(')') + 2));
    std::string field;
    for (int n = 3; n < 22; n++) fields >> field;
    std::uint64_t ticks = 0;
    fields >> ticks;
    return ticks;
}

// The same process seen with another start time: what a lock word holds
// after its holder died and the pid went to a new process.
std::uint64_t with_other_start(std::uint64_t identity) {
    std::uint32_t start = identity_start(identity) + 1;
    if (start == 0) start = 2;
    return make_identity(identity_pid(identity), start);
}

TEST(ProcessIdentity, ThisProcessIsAliveAndNamedByPidAndStartTime) {
    const std::uint64_t self = this_process_identity();
    EXPECT_EQ(identity_pid(self), static_cast<std::uint32_t>(getpid()));
    EXPECT_EQ(identity_start(self), static_cast<std::uint32_t>(start_ticks_of(getpid())));
    EXPECT_NE(identity_start(self), 0u);
    EXPECT_EQ(this_process_identity(), self);
    EXPECT_TRUE(process_alive(self));
}

TEST(ProcessIdentity, AChildThatExitedAndWasReapedIsDead) {
    ForkedChild child(ForkedChild::Then::exit, [] {});
    child.reap();
    EXPECT_FALSE(process_alive(child.identity()));
    // Its bare pid too: kill() finds no such process.
    EXPECT_FALSE(process_alive(identity_pid(child.identity())));
}

TEST(ProcessIdentity, AChildThatExitedButWasNotReapedIsDead) {
    ForkedChild child(ForkedChild::Then::exit, [] {});
    child.let_exit();  // a zombie: kill(pid, 0) still succeeds
    EXPECT_FALSE(process_alive(child.identity()));
}

TEST(ProcessIdentity, ALivePidWithAnotherStartTimeIsAReusedPidAndDead) {
    ForkedChild child(ForkedChild::Then::stay, [] {});
    EXPECT_TRUE(process_alive(child.identity()));
    EXPECT_FALSE(process_alive(with_other_start(child.identity())));
    EXPECT_FALSE(process_alive(with_other_start(this_process_identity())));
}

TEST(ProcessIdentity, ABarePidIsJudgedByKillAlone) {
    ForkedChild child(ForkedChild::Then::stay, [] {});
    EXPECT_TRUE(process_alive(identity_pid(child.identity())));
    EXPECT_TRUE(process_alive(static_cast<std::uint32_t>(getpid())));
}

TEST(ProcessIdentity, PidZeroIsNeverAlive) {
    EXPECT_FALSE(process_alive(0));
    EXPECT_FALSE(process_alive(make_identity(0, identity_start(this_process_identity()))));
}

TEST(ProcessIdentity, AForkedChildHasItsOwnIdentity) {
    const std::uint64_t parent = this_process_identity();  // cached before the fork
    ForkedChild child(ForkedChild::Then::stay, [] {});
    EXPECT_NE(child.identity(), parent);
    EXPECT_EQ(identity_pid(child.identity()), static_cast<std::uint32_t>(child.pid()));
    EXPECT_EQ(identity_start(child.identity()),
              static_cast<std::uint32_t>(start_ticks_of(child.pid())));
    EXPECT_TRUE(process_alive(child.identity()));
    EXPECT_EQ(this_process_identity(), parent);
}

TEST(ProcessIdentity, ParenthesesAndSpacesInTheProcessNameDoNotShiftTheFields) {
    ForkedChild child(ForkedChild::Then::stay, [] { prctl(PR_SET_NAME, "x) 1 2 (y) z"); });
    EXPECT_EQ(identity_start(child.identity()),
              static_cast<std::uint32_t>(start_ticks_of(child.pid())));
    EXPECT_TRUE(process_alive(child.identity()));
    EXPECT_FALSE(process_alive(with_other_start(child.identity())));
}

}  // namespace
}  // namespace apikey
