#include "owner_lock.h"

#include <sched.h>

#include "process_identity.h"
#include "shm_atomic.h"

namespace apikey {

namespace {

// Checking a holder reads /proc, so it is done now and then, not every spin.
constexpr unsigned kSpinsPerCheck = 1024;

bool take_free(std::uint64_t *word, std::uint64_t self) noexcept {
    std::uint64_t expected = 0;
    return compare_exchange(word, expected, self);
}

// The compare-and-swap from the dead holder's identity lets only one waiter
// win, and fails if the word changed meanwhile (released, or taken by a
// live process).
bool take_from_dead(std::uint64_t *word, std::uint64_t holder, std::uint64_t self) noexcept {
    return holder != 0 && holder != self && !process_alive(holder) &&
           compare_exchange(word, holder, self);
}

}  // namespace

void owner_lock(std::uint64_t *word, std::uint64_t self) noexcept {
    for (unsigned spins = 1;; spins++) {
        // Reading before swapping keeps waiters off the cache line's
        // exclusive ownership while the holder works.
        if (load_relaxed(word) == 0 && take_free(word, self)) return;
        if (spins % kSpinsPerCheck == 0) {
            if (take_from_dead(word, load_relaxed(word), self)) return;
            sched_yield();
        } else {
            cpu_relax();
        }
    }
}

bool owner_try_lock(std::uint64_t *word, std::uint64_t self) noexcept {
    std::uint64_t holder = 0;
    if (compare_exchange(word, holder, self)) return true;
    return take_from_dead(word, holder, self);
}

void owner_unlock(std::uint64_t *word) noexcept { store_release(word, 0); }

}  // namespace apikey
