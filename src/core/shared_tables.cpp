#include "shared_tables.h"

#include <signal.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <iterator>
#include <new>

namespace apikey {

namespace {

constexpr std::uint64_t kStateMagic = 0x3153'4554'4b41'5031ull;  // "1PAKTES1"

std::uint64_t align8(std::uint64_t n) noexcept { return (n + 7) & ~std::uint64_t{7}; }

bool process_alive(std::uint32_t pid) noexcept {
    return pid != 0 && !(kill(static_cast<pid_t>(pid), 0) == -1 && errno == ESRCH);
}

template <typename T>
T load(const T *p) noexcept {
    return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}

template <typename T>
void store(T *p, T v) noexcept {
    __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
}

bool take_lock(std::uint32_t *word, std::uint32_t pid) noexcept {
    std::uint32_t expected = 0;
    if (__atomic_compare_exchange_n(word, &expected, pid, false, __ATOMIC_ACQUIRE,
                                    __ATOMIC_RELAXED)) {
        return true;
    }
    // A loader that died mid-load must not block every later load.
    return !process_alive(expected) &&
           __atomic_compare_exchange_n(word, &expected, pid, false, __ATOMIC_ACQUIRE,
                                       __ATOMIC_RELAXED);
}

}  // namespace

bool identify_file(const std::string &path, FileIdentity &out) noexcept {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return false;
    out.dev = static_cast<std::uint64_t>(st.st_dev);
    out.ino = static_cast<std::uint64_t>(st.st_ino);
    out.size = static_cast<std::uint64_t>(st.st_size);
    out.mtime_ns = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    return true;
}

std::size_t shared_tables_bytes(std::size_t image_size, unsigned tables) noexcept {
    return sizeof(SharedTablesState) + tables * (sizeof(PublishedTable) + align8(image_size));
}

SharedTablesState *SharedTables::create(ZoneMemory &memory, std::size_t usage_capacity) noexcept {
    void *p = memory.allocate(sizeof(SharedTablesState));
    if (p == nullptr) return nullptr;
    void *u = memory.allocate(UsageTable::bytes_for(usage_capacity));
    if (u == nullptr) {
        memory.release(p);
        return nullptr;
    }
    UsageTable::format(u, usage_capacity);
    auto *state = new (p) SharedTablesState{};
    state->usage = static_cast<std::uint64_t>(static_cast<unsigned char *>(u) - memory.base());
    state->magic = kStateMagic;
    return state;
}

void SharedTables::attach(ZoneMemory *memory, SharedTablesState *state) noexcept {
    memory_ = memory;
    state_ = state;
    usage_ = state->usage ? UsageTable::adopt(memory->base() + state->usage) : UsageTable();
}

bool SharedTables::is_state(const SharedTablesState *state) noexcept {
    return state != nullptr && state->magic == kStateMagic;
}

const PublishedTable *SharedTables::current() const noexcept {
    const std::uint64_t off = load(&state_->current);
    return off ? reinterpret_cast<const PublishedTable *>(memory_->base() + off) : nullptr;
}

bool SharedTables::install(const TableImage &image, const FileIdentity &file, std::int64_t now,
                           std::string &error) noexcept {
    reclaim();
    RetiredTable *slot = nullptr;
    if (state_->current != 0) {
        for (RetiredTable &r : state_->retired) {
            if (r.offset == 0) {
                slot = &r;
                break;
            }
        }
        if (slot == nullptr) {
            error = "too many replaced key tables are still in use by running requests";
            return false;
        }
    }

    const std::size_t bytes = sizeof(PublishedTable) + align8(image.size());
    void *p = memory_->allocate(bytes);
    if (p == nullptr) {
        error = "the zone has no room for the new key table (" + std::to_string(bytes / 1024 + 1) +
                "k) beside the ones in use";
        return false;
    }
    auto *published = static_cast<PublishedTable *>(p);
    const std::uint64_t old_offset = state_->current;
    const std::uint64_t old_generation = state_->generation;
    published->generation = old_generation + 1;
    published->size = image.size();
    std::memcpy(published + 1, image.data(), image.size());

    // The pointer first, the number second: a reader that sees the new
    // number is then sure to see the new pointer too.
    store(&state_->current,
          static_cast<std::uint64_t>(static_cast<unsigned char *>(p) - memory_->base()));
    store(&state_->generation, published->generation);
    if (slot != nullptr) {
        slot->generation = old_generation;
        store(&slot->offset, old_offset);
    }
    state_->keys = image.table().key_count();
    state_->loaded_at = now;
    state_->loaded_file = file;
    state_->failed_at = 0;
    state_->failed_file = FileIdentity{};
    state_->last_error[0] = '\0';
    reclaim();
    return true;
}

unsigned SharedTables::reclaim() noexcept {
    unsigned freed = 0;
    for (RetiredTable &r : state_->retired) {
        const std::uint64_t offset = load(&r.offset);
        if (offset == 0) continue;
        bool in_use = false;
        for (const ReaderSlot &reader : state_->readers) {
            const std::uint32_t pid = load(&reader.pid);
            if (pid == 0) continue;
            bool holds = load(&reader.floor) <= r.generation;
            for (const std::uint64_t &g : reader.held) holds = holds || load(&g) == r.generation;
            if (holds && process_alive(pid)) {
                in_use = true;
                break;
            }
        }
        if (in_use) continue;
        // Two processes may reclaim at once: only the one that clears the
        // entry frees the table.
        std::uint64_t expected = offset;
        if (__atomic_compare_exchange_n(&r.offset, &expected, 0, false, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
            memory_->release(memory_->base() + offset);
            freed++;
        }
    }
    return freed;
}

bool SharedTables::join(std::uint32_t pid) noexcept {
    for (ReaderSlot &slot : state_->readers) {
        std::uint32_t holder = load(&slot.pid);
        if (holder != 0 && process_alive(holder)) continue;
        store(&slot.floor, kNoGeneration);
        for (std::uint64_t &g : slot.held) store(&g, std::uint64_t{0});
        if (__atomic_compare_exchange_n(&slot.pid, &holder, pid, false, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
            slot_ = &slot;
            return true;
        }
    }
    return false;
}

void SharedTables::leave() noexcept {
    if (slot_ == nullptr) return;
    store(&slot_->floor, kNoGeneration);
    for (std::uint64_t &g : slot_->held) store(&g, std::uint64_t{0});
    store(&slot_->pid, std::uint32_t{0});
    slot_ = nullptr;
}

void SharedTables::set_floor(std::uint64_t floor) noexcept {
    // Only this process writes its slot: skip the store when nothing changes.
    if (__atomic_load_n(&slot_->floor, __ATOMIC_RELAXED) != floor) store(&slot_->floor, floor);
}

SharedTables::Ref SharedTables::acquire() noexcept {
    Ref ref;
    if (slot_ != nullptr) {
        const std::uint64_t floor = load(&state_->generation);
        if (floor < __atomic_load_n(&slot_->floor, __ATOMIC_RELAXED)) store(&slot_->floor, floor);
    }
    const PublishedTable *table = current();
    if (table == nullptr) return ref;
    ref.table = KeyTable(table + 1);
    ref.generation = table->generation;
    if (slot_ == nullptr) return ref;

    int free_entry = -1;
    for (int i = 0; i < static_cast<int>(kHeldPerReader); i++) {
        if (counts_[i] == 0) {
            if (free_entry < 0) free_entry = i;
        } else if (slot_->held[i] == ref.generation) {
            ref.entry = i;
            break;
        }
    }
    if (ref.entry < 0 && free_entry >= 0) {
        ref.entry = free_entry;
        store(&slot_->held[free_entry], ref.generation);  // before the floor goes
    }
    if (ref.entry >= 0) {
        counts_[ref.entry]++;
    } else {
        // More distinct generations in flight than entries: keep a floor.
        ref.entry = kOverflow;
        overflow_count_++;
        if (ref.generation < overflow_floor_) overflow_floor_ = ref.generation;
    }
    set_floor(overflow_count_ ? overflow_floor_ : kNoGeneration);
    return ref;
}

void SharedTables::release(Ref &ref) noexcept {
    if (ref.entry == kOverflow) {
        if (overflow_count_ > 0 && --overflow_count_ == 0) {
            overflow_floor_ = kNoGeneration;
            set_floor(kNoGeneration);
        }
    } else if (ref.entry >= 0 && counts_[ref.entry] > 0 && --counts_[ref.entry] == 0) {
        store(&slot_->held[ref.entry], std::uint64_t{0});
    }
    ref.entry = -1;
}

void SharedTables::record_failure(const FileIdentity &file, std::int64_t now,
                                  std::string_view reason, bool transient) noexcept {
    const std::size_t n = reason.size() < kMaxLoadError - 1 ? reason.size() : kMaxLoadError - 1;
    std::memcpy(state_->last_error, reason.data(), n);
    state_->last_error[n] = '\0';
    state_->failed_file = file;
    state_->failed_at = now;
    state_->failed_transiently = transient ? 1 : 0;
}

void SharedTables::clear_failure() noexcept {
    state_->failed_at = 0;
    state_->failed_file = FileIdentity{};
    state_->failed_transiently = 0;
    state_->last_error[0] = '\0';
}

bool SharedTables::try_lock_loader(std::uint32_t pid) noexcept {
    return take_lock(&state_->loader_lock, pid);
}

void SharedTables::unlock_loader() noexcept {
    __atomic_store_n(&state_->loader_lock, 0, __ATOMIC_RELEASE);
}

}  // namespace apikey
