// The shared-memory spin lock (core/owner_lock): mutual exclusion, and
// takeover exactly when the holder is gone (exited, a zombie, or its pid now
// names another process), never from a live holder.
#include "core/owner_lock.h"

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <thread>
#include <vector>

#include "core/process_identity.h"
#include "core/shm_atomic.h"
#include "forked_child.h"

namespace apikey {
namespace {

// A lock word that forked children share with the test, as in a zone.
class SharedWord {
public:
    SharedWord() {
        void *p = ::mmap(nullptr, sizeof(std::uint64_t), PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) std::abort();
        word_ = static_cast<std::uint64_t *>(p);
        *word_ = 0;
    }
    ~SharedWord() { ::munmap(word_, sizeof(std::uint64_t)); }
    SharedWord(const SharedWord &) = delete;
    SharedWord &operator=(const SharedWord &) = delete;
    std::uint64_t *get() const { return word_; }
    std::uint64_t value() const { return load_acquire(word_); }

private:
    std::uint64_t *word_;
};

std::uint64_t with_other_start(std::uint64_t identity) {
    std::uint32_t start = identity_start(identity) + 1;
    if (start == 0) start = 2;
    return make_identity(identity_pid(identity), start);
}

TEST(OwnerLock, OnlyOneThreadAtATimeHoldsTheLock) {
    constexpr int kThreads = 8;
    constexpr int kRounds = 20'000;
    std::uint64_t word = 0;
    std::uint64_t counter = 0;  // plain: only the lock keeps increments whole
    const std::uint64_t self = this_process_identity();
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; t++) {
        threads.emplace_back([&] {
            for (int i = 0; i < kRounds; i++) {
                owner_lock(&word, self);
                counter = counter + 1;
                owner_unlock(&word);
            }
        });
    }
    for (auto &t : threads) t.join();
    EXPECT_EQ(counter, std::uint64_t{kThreads} * kRounds);
    EXPECT_EQ(word, 0u);
}

TEST(OwnerLock, TryLockFailsWhileALiveOwnerHoldsIt) {
    std::uint64_t word = 0;
    const std::uint64_t self = this_process_identity();
    ASSERT_TRUE(owner_try_lock(&word, self));
    EXPECT_EQ(word, self);
    EXPECT_FALSE(owner_try_lock(&word, self));
    ForkedChild other(ForkedChild::Then::stay, [] {});
    EXPECT_FALSE(owner_try_lock(&word, other.identity()));
    EXPECT_EQ(word, self);
    owner_unlock(&word);
    EXPECT_EQ(word, 0u);
    EXPECT_TRUE(owner_try_lock(&word, other.identity()));
}

TEST(OwnerLock, ALockLeftByAProcessThatExitedIsTakenOver) {
    SharedWord word;
    std::uint64_t *w = word.get();
    const std::uint64_t self = this_process_identity();
    {
        ForkedChild dead(ForkedChild::Then::exit, [w] { owner_lock(w, this_process_identity()); });
        dead.reap();
        ASSERT_EQ(word.value(), dead.identity());
        owner_lock(w, self);
        EXPECT_EQ(word.value(), self);
        owner_unlock(w);
    }
    ForkedChild dead(ForkedChild::Then::exit, [w] { owner_lock(w, this_process_identity()); });
    dead.reap();
    ASSERT_EQ(word.value(), dead.identity());
    EXPECT_TRUE(owner_try_lock(w, self));
    EXPECT_EQ(word.value(), self);
}

TEST(OwnerLock, ALockLeftByAZombieIsTakenOver) {
    SharedWord word;
    std::uint64_t *w = word.get();
    ForkedChild zombie(ForkedChild::Then::exit, [w] { owner_lock(w, this_process_identity()); });
    zombie.let_exit();
    ASSERT_EQ(word.value(), zombie.identity());
    EXPECT_TRUE(owner_try_lock(w, this_process_identity()));
    EXPECT_EQ(word.value(), this_process_identity());
}

// The holder died and its pid now belongs to a live process that started
// later: the lock must not stay held on that process's behalf.
TEST(OwnerLock, ALockNamingAReusedPidIsTakenOver) {
    ForkedChild successor(ForkedChild::Then::stay, [] {});
    const std::uint64_t self = this_process_identity();
    std::uint64_t word = with_other_start(successor.identity());
    EXPECT_TRUE(owner_try_lock(&word, self));
    EXPECT_EQ(word, self);
    word = with_other_start(successor.identity());
    owner_lock(&word, self);
    EXPECT_EQ(word, self);
}

TEST(OwnerLock, ALockHeldByALiveOtherProcessIsNotTakenOver) {
    SharedWord word;
    std::uint64_t *w = word.get();
    ForkedChild holder(ForkedChild::Then::stay, [w] { owner_lock(w, this_process_identity()); });
    ASSERT_EQ(word.value(), holder.identity());
    const std::uint64_t self = this_process_identity();
    EXPECT_FALSE(owner_try_lock(w, self));

    std::atomic<bool> acquired{false};
    std::thread waiter([&] {
        owner_lock(w, self);
        acquired = true;
    });
    // Long enough for hundreds of liveness checks.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT_FALSE(acquired.load());
    EXPECT_EQ(word.value(), holder.identity());
    // Its bare pid is live as well: no takeover either.
    std::uint64_t bare = identity_pid(holder.identity());
    EXPECT_FALSE(owner_try_lock(&bare, self));

    holder.reap();  // dies still holding the lock: now the waiter gets it
    waiter.join();
    EXPECT_TRUE(acquired.load());
    EXPECT_EQ(word.value(), self);
}

}  // namespace
}  // namespace apikey
