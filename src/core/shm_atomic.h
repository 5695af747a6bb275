// Atomic access to plain integers in shared memory, named by memory order
// (in the spirit of nginx's ngx_atomic.h).
//
// Shared zones hold trivially copyable structs that one process formats and
// others map, so there is no std::atomic object to construct there; GCC's
// __atomic builtins act on the plain integers, lock-free, hence across processes.
#pragma once

#include <type_traits>

namespace apikey {

namespace shm_detail {

// Keeps the value parameters from taking part in deduction, so
// store_release(&word, 0) means word's type, not int.
template <typename T>
struct same {
    using type = T;
};

template <typename T>
constexpr bool kSharable = __atomic_always_lock_free(sizeof(T), 0) && std::is_integral_v<T>;

template <typename T>
using value_t = typename same<T>::type;

}  // namespace shm_detail

template <typename T>
inline T load_relaxed(const T *p) noexcept {
    static_assert(shm_detail::kSharable<T>);
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

template <typename T>
inline T load_acquire(const T *p) noexcept {
    static_assert(shm_detail::kSharable<T>);
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

template <typename T>
inline T load_seq(const T *p) noexcept {
    static_assert(shm_detail::kSharable<T>);
    return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}

template <typename T>
inline void store_relaxed(T *p, shm_detail::value_t<T> v) noexcept {
    static_assert(shm_detail::kSharable<T>);
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

template <typename T>
inline void store_release(T *p, shm_detail::value_t<T> v) noexcept {
    static_assert(shm_detail::kSharable<T>);
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

template <typename T>
inline void store_seq(T *p, shm_detail::value_t<T> v) noexcept {
    static_assert(shm_detail::kSharable<T>);
    __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
}

// Returns the value before the addition.
template <typename T>
inline T fetch_add_relaxed(T *p, shm_detail::value_t<T> v) noexcept {
    static_assert(shm_detail::kSharable<T>);
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

// Strong compare-and-swap, acq_rel on success and acquire on failure; on
// failure `expected` receives the value found.
template <typename T>
inline bool compare_exchange(T *p, T &expected, shm_detail::value_t<T> desired) noexcept {
    static_assert(shm_detail::kSharable<T>);
    return __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_ACQ_REL,
                                       __ATOMIC_ACQUIRE);
}

// The same, sequentially consistent, for protocols built on load_seq and
// store_seq (publishing a value, then checking what others published).
template <typename T>
inline bool compare_exchange_seq(T *p, T &expected, shm_detail::value_t<T> desired) noexcept {
    static_assert(shm_detail::kSharable<T>);
    return __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_SEQ_CST,
                                       __ATOMIC_SEQ_CST);
}

// Inside a spin loop: lets the sibling hyper-thread run and saves power.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

}  // namespace apikey
