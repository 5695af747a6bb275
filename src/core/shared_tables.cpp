#include "shared_tables.h"

#include "owner_lock.h"
#include "process_identity.h"
#include "shm_atomic.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <iterator>
#include <new>

namespace apikey {

namespace {

// 4: a twelfth outcome (ip_not_allowed) in the usage counters.
constexpr std::uint64_t kStateMagic = 0x3453'4554'4b41'5031ull;  // "1PAKTES4"

std::uint64_t align8(std::uint64_t n) noexcept { return (n + 7) & ~std::uint64_t{7}; }

template <std::size_t N>
void copy_text(char (&out)[N], std::string_view text) noexcept {
    const std::size_t n = text.size() < N - 1 ? text.size() : N - 1;
    std::memcpy(out, text.data(), n);
    out[n] = '\0';
}

// Held by a writer only for one copy-and-publish, so waiting is short; a
// writer that died is taken over (owner_lock.h).
class WriterLock {
public:
    explicit WriterLock(std::uint64_t *word) noexcept : word_(word) {
        owner_lock(word_, this_process_identity());
    }
    ~WriterLock() { owner_unlock(word_); }
    WriterLock(const WriterLock &) = delete;
    WriterLock &operator=(const WriterLock &) = delete;

private:
    std::uint64_t *word_;
};

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
    const std::uint64_t off = load_seq(&state_->current);
    return off ? reinterpret_cast<const PublishedTable *>(memory_->base() + off) : nullptr;
}

void *SharedTables::copy_in(const TableImage &image, std::string &error) noexcept {
    reclaim();
    const std::size_t bytes = sizeof(PublishedTable) + align8(image.size());
    void *p = memory_->allocate(bytes);
    if (p == nullptr) {
        error = "the zone has no room for the new key table (" + std::to_string(bytes / 1024 + 1) +
                "k) beside the ones in use";
        return nullptr;
    }
    auto *published = static_cast<PublishedTable *>(p);
    published->generation = 0;  // set when published
    published->size = image.size();
    std::memcpy(published + 1, image.data(), image.size());
    return p;
}

void SharedTables::publish_locked(std::uint64_t offset, std::uint64_t keys,
                                  const FileIdentity &file, std::string_view path,
                                  std::int64_t now) noexcept {
    const std::uint64_t old_offset = state_->current;
    const std::uint64_t old_generation = state_->generation;
    auto *published = reinterpret_cast<PublishedTable *>(memory_->base() + offset);
    published->generation = old_generation + 1;

    // The pointer first, the number second: a reader that sees the new
    // number is then sure to see the new pointer too.
    store_seq(&state_->current, offset);
    store_seq(&state_->generation, published->generation);
    if (old_offset != 0) {
        RetiredTable *slot = nullptr;
        for (RetiredTable &r : state_->retired) {
            if (load_seq(&r.offset) == 0) {
                slot = &r;
                break;
            }
        }
        if (slot != nullptr) {
            slot->generation = old_generation;
            store_seq(&slot->offset, old_offset);
        } else {
            // Never freed while someone might read it: abandoned instead.
            state_->leaked++;
        }
    }
    state_->keys = keys;
    state_->loaded_at = now;
    state_->loaded_file = file;
    copy_text(state_->loaded_path, path);
    state_->failed_at = 0;
    state_->failed_file = FileIdentity{};
    state_->failed_transiently = 0;
    state_->last_error[0] = '\0';
}

bool SharedTables::has_retired_room() const noexcept {
    if (state_->current == 0) return true;
    for (const RetiredTable &r : state_->retired) {
        if (load_seq(&r.offset) == 0) return true;
    }
    return false;
}

bool SharedTables::stage(const TableImage &image, const FileIdentity &file, std::string_view path,
                         std::string &error) noexcept {
    WriterLock lock(&state_->writer_lock);
    discard_staged_locked();
    void *p = copy_in(image, error);
    if (p == nullptr) return false;
    state_->staged_file = file;
    state_->staged_keys = image.table().key_count();
    copy_text(state_->staged_path, path);
    store_seq(&state_->staged,
              static_cast<std::uint64_t>(static_cast<unsigned char *>(p) - memory_->base()));
    return true;
}

bool SharedTables::has_staged() const noexcept { return load_seq(&state_->staged) != 0; }

bool SharedTables::has_retired() const noexcept {
    for (const RetiredTable &r : state_->retired) {
        if (load_seq(&r.offset) != 0) return true;
    }
    return false;
}

std::uint64_t SharedTables::publish_staged(std::int64_t now) noexcept {
    WriterLock lock(&state_->writer_lock);
    const std::uint64_t offset = state_->staged;
    if (offset != 0) {
        reclaim();
        publish_locked(offset, state_->staged_keys, state_->staged_file, state_->staged_path, now);
        store_seq(&state_->staged, std::uint64_t{0});
    }
    const std::uint64_t config = state_->config_generation + 1;
    store_seq(&state_->config_generation, config);
    return config;
}

void SharedTables::discard_staged_locked() noexcept {
    const std::uint64_t offset = state_->staged;
    if (offset == 0) return;
    store_seq(&state_->staged, std::uint64_t{0});
    memory_->release(memory_->base() + offset);
}

void SharedTables::discard_staged() noexcept {
    WriterLock lock(&state_->writer_lock);
    discard_staged_locked();
}

InstallResult SharedTables::install(const TableImage &image, const FileIdentity &file,
                                    std::string_view path, std::uint64_t config, std::int64_t now,
                                    std::string &error) noexcept {
    if (load_seq(&state_->config_generation) != config) return InstallResult::superseded;
    reclaim();
    if (!has_retired_room()) {
        error = "too many replaced key tables are still being read";
        return InstallResult::no_room;
    }
    // The copy is made before the lock: a million keys take a while to
    // copy, and a reload's master must not wait for that.
    void *p = copy_in(image, error);
    if (p == nullptr) return InstallResult::no_room;
    const std::uint64_t offset = static_cast<std::uint64_t>(static_cast<unsigned char *>(p) -
                                                            memory_->base());

    WriterLock lock(&state_->writer_lock);
    if (state_->config_generation != config) {
        memory_->release(p);
        return InstallResult::superseded;
    }
    // Again under the lock: another writer may have taken the last retired
    // entry meanwhile, and a table that cannot be retired would be abandoned.
    if (!has_retired_room()) {
        memory_->release(p);
        error = "too many replaced key tables are still being read";
        return InstallResult::no_room;
    }
    publish_locked(offset, image.table().key_count(), file, path, now);
    return InstallResult::installed;
}

unsigned SharedTables::reclaim() noexcept {
    unsigned freed = 0;
    for (RetiredTable &r : state_->retired) {
        const std::uint64_t offset = load_seq(&r.offset);
        if (offset == 0) continue;
        bool in_use = false;
        for (const ReaderSlot &reader : state_->readers) {
            const std::uint64_t owner = load_seq(&reader.owner);
            if (owner == 0) continue;
            bool holds = load_seq(&reader.floor) <= r.generation;
            for (const std::uint64_t &g : reader.held)
                holds = holds || load_seq(&g) == r.generation;
            if (holds && process_alive(owner)) {
                in_use = true;
                break;
            }
        }
        if (in_use) continue;
        // Two processes may reclaim at once: only the one that clears the
        // entry frees the table.
        std::uint64_t expected = offset;
        if (compare_exchange_seq(&r.offset, expected, std::uint64_t{0})) {
            memory_->release(memory_->base() + offset);
            freed++;
        }
    }
    return freed;
}

bool SharedTables::join(std::uint64_t owner) noexcept {
    for (ReaderSlot &slot : state_->readers) {
        std::uint64_t holder = load_seq(&slot.owner);
        if (holder != 0 && process_alive(holder)) continue;
        store_seq(&slot.floor, kNoGeneration);
        for (std::uint64_t &g : slot.held) store_seq(&g, std::uint64_t{0});
        if (compare_exchange_seq(&slot.owner, holder, owner)) {
            slot_ = &slot;
            return true;
        }
    }
    return false;
}

void SharedTables::leave() noexcept {
    if (slot_ == nullptr) return;
    store_seq(&slot_->floor, kNoGeneration);
    for (std::uint64_t &g : slot_->held) store_seq(&g, std::uint64_t{0});
    store_seq(&slot_->owner, std::uint64_t{0});
    slot_ = nullptr;
    pin_entry_ = -1;
    for (std::uint32_t &c : counts_) c = 0;
}

void SharedTables::set_floor(std::uint64_t floor) noexcept {
    // Only this process writes its slot: skip the store when nothing changes.
    if (load_relaxed(&slot_->floor) != floor) store_seq(&slot_->floor, floor);
}

SharedTables::Ref SharedTables::acquire_and_pin() noexcept {
    Ref ref;
    if (slot_ != nullptr) {
        const std::uint64_t floor = load_seq(&state_->generation);
        if (floor < load_relaxed(&slot_->floor)) store_seq(&slot_->floor, floor);
    }
    const PublishedTable *table = current();
    if (table == nullptr) return ref;
    ref.table = KeyTable(table + 1);
    ref.generation = table->generation;
    ref.valid = ref.table.valid();
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
        store_seq(&slot_->held[free_entry], ref.generation);  // before the floor goes
    }
    if (ref.entry >= 0) {
        counts_[ref.entry]++;
        // The new pin replaces the old one (whose entry may just have been
        // reused for it); the old one's table is no longer current.
        if (pin_entry_ >= 0 && pin_entry_ != ref.entry && counts_[pin_entry_] == 0) {
            store_seq(&slot_->held[pin_entry_], std::uint64_t{0});
        }
        pin_entry_ = ref.entry;
        pin_offset_ = static_cast<std::uint64_t>(reinterpret_cast<const unsigned char *>(table) -
                                                 memory_->base());
        pin_ = ref;
    } else {
        // More distinct generations in flight than entries: keep a floor.
        ref.entry = kOverflow;
        overflow_count_++;
        if (ref.generation < overflow_floor_) overflow_floor_ = ref.generation;
    }
    set_floor(overflow_count_ ? overflow_floor_ : kNoGeneration);
    return ref;
}

void SharedTables::release_slow(Ref &ref) noexcept {
    if (ref.entry == kOverflow) {
        if (overflow_count_ > 0 && --overflow_count_ == 0) {
            overflow_floor_ = kNoGeneration;
            set_floor(kNoGeneration);
        }
    } else if (ref.entry >= 0 && counts_[ref.entry] > 0 && --counts_[ref.entry] == 0) {
        store_seq(&slot_->held[ref.entry], std::uint64_t{0});  // not the pin's (release)
    }
}

void SharedTables::drop_pin() noexcept {
    if (pin_entry_ < 0 || counts_[pin_entry_] != 0) return;
    store_seq(&slot_->held[pin_entry_], std::uint64_t{0});
    pin_entry_ = -1;
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

bool SharedTables::try_claim_loading(std::uint64_t owner) noexcept {
    return owner_try_lock(&state_->loading_by, owner);
}

void SharedTables::end_loading() noexcept { owner_unlock(&state_->loading_by); }

}  // namespace apikey
