// A spin lock in shared memory whose word names its holder (the role of
// nginx's ngx_shmtx with its pid word). Meant for critical sections of a few
// dozen instructions, where waiting is spinning. A holder that died (a
// crashed worker) would block the lock forever, so a waiter that finds the
// holder gone, by process_alive() and so safe against pid reuse, takes the
// lock over. What the dead holder was doing is then the next owner's to
// live with: keep the guarded data consistent at every store, or cheap to
// repair.
//
// The word is a plain std::uint64_t in shared memory: 0 when free, else
// the holder's identity (process_identity.h). Threads of one process share
// an identity and still exclude each other; they just never take the lock
// over from one another.
#pragma once

#include <cstdint>

namespace apikey {

// Waits until the lock is free or its holder is dead. `self` is
// this_process_identity() (a bare pid also works, with kill()-only checks).
void owner_lock(std::uint64_t *word, std::uint64_t self) noexcept;

// One attempt, no waiting: true when the lock was free or its holder dead.
bool owner_try_lock(std::uint64_t *word, std::uint64_t self) noexcept;

void owner_unlock(std::uint64_t *word) noexcept;

}  // namespace apikey
