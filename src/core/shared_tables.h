// Key tables in a shared memory zone that many processes read while one of
// them swaps in a new table (a reload, or a changed file under check=).
//
// A table is never written after it is published and never freed while a
// process may still read it:
//   - Each published table carries a generation number; the zone points at
//     the current one with a single atomic word.
//   - Each reading process owns a slot where it publishes the generations
//     its in-flight requests hold. A request first publishes the current
//     generation as a floor ("this or anything newer may be in use"), then
//     loads the pointer (which can only be as new or newer), records the
//     generation it got, and drops the floor.
//   - A replaced table goes on a retired list and is freed once no live
//     reader holds its generation or has a floor at or below it. Requests
//     hold a table only while they decide (they copy what they keep), so
//     no client can hold one for long. Slots of processes that died, or
//     whose pid was reused, are ignored.
// Request paths take no lock. A process keeps the generation of the table
// it read last published in its slot after the request ends (a pin), so
// while the table stays current a request costs one atomic load and a
// local counter, with no store at all; a pin is dropped when a request
// ends on a table that is no longer current, and by drop_pin(), which
// the module calls within 100 ms of the process's last pin, so that an
// idle or draining worker does not keep a replaced table from being
// freed for longer.
//
// Writers (the master at a reload, a worker's loader thread under check=)
// take one writer lock for the short copy-and-publish; generations only
// grow. A reload stages its table while nginx builds the new cycle and
// publishes it only once the cycle has succeeded; the publish moves the
// zone to a new configuration generation, and a check= load from an older
// configuration (old workers still draining) is never installed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

#include "key_table.h"
#include "shm_atomic.h"
#include "table_builder.h"
#include "usage_table.h"

namespace apikey {

// How a shared zone gets and returns memory (nginx's slab allocator in the
// module, malloc in tests). Offsets are relative to base().
class ZoneMemory {
public:
    virtual ~ZoneMemory() = default;
    virtual unsigned char *base() = 0;
    virtual void *allocate(std::size_t bytes) noexcept = 0;  // nullptr when full
    virtual void release(void *p) noexcept = 0;
};

// What identifies a version of the key file on disk: an atomic rename
// changes the inode, an edit in place the size or mtime.
struct FileIdentity {
    std::uint64_t dev = 0;
    std::uint64_t ino = 0;
    std::uint64_t size = 0;
    std::int64_t mtime_ns = 0;
    bool operator==(const FileIdentity &o) const noexcept {
        return dev == o.dev && ino == o.ino && size == o.size && mtime_ns == o.mtime_ns;
    }
    bool operator!=(const FileIdentity &o) const noexcept { return !(*this == o); }
};

// False (and errno set) when the file cannot be stat()ed.
bool identify_file(const std::string &path, FileIdentity &out) noexcept;

constexpr std::size_t kMaxReaders = 256;  // processes reading one zone at once
constexpr std::size_t kMaxRetired = 16;   // replaced tables awaiting release
constexpr std::size_t kMaxLoadError = 512;
constexpr std::size_t kMaxLoadedPath = 1024;

constexpr std::size_t kHeldPerReader = 4;
constexpr std::uint64_t kNoGeneration = ~std::uint64_t{0};

struct ReaderSlot {
    std::uint64_t owner;                 // process identity (process_identity.h); 0: free
    std::uint64_t floor;                 // generations >= floor may be in use
    std::uint64_t held[kHeldPerReader];  // generations held; 0: entry unused
};

struct RetiredTable {
    std::uint64_t offset;  // 0: free entry
    std::uint64_t generation;
};

// The zone's fixed part, allocated once when the zone is created and kept
// across reloads that reuse the zone.
struct SharedTablesState {
    std::uint64_t magic;
    std::uint64_t current;     // offset of the current PublishedTable, atomic
    std::uint64_t generation;  // of the current table
    std::int64_t loaded_at;    // unix seconds
    std::uint64_t keys;
    FileIdentity loaded_file;
    std::uint64_t writer_lock;        // owner identity: one install or publish at a time
    std::uint64_t loading_by;         // owner identity of the process parsing a changed file
    std::uint64_t config_generation;  // bumped by each configuration that publishes
    std::uint64_t staged;             // offset of a table staged by a reload, 0 if none
    FileIdentity staged_file;
    std::uint64_t staged_keys;
    char staged_path[kMaxLoadedPath];
    char loaded_path[kMaxLoadedPath];  // the file of the table in force (api_key_status)
    FileIdentity failed_file;          // the file version the last error is about
    std::int64_t failed_at;
    std::uint32_t failed_transiently;  // no room yet: retried, not given up
    std::uint32_t reserved2;
    char last_error[kMaxLoadError];  // empty after a successful load
    std::uint64_t usage;             // offset of the UsageTable, 0 if none
    std::uint64_t leaked;            // tables a reload had to abandon (every retired entry in use)
    std::uint64_t channel;           // offset of the ChannelState (channel_state.h), 0 if none
    RetiredTable retired[kMaxRetired];
    ReaderSlot readers[kMaxReaders];
};
static_assert(std::is_trivially_copyable_v<SharedTablesState>);

// A table image in shared memory, preceded by its generation.
struct PublishedTable {
    std::uint64_t generation;
    std::uint64_t size;
    // the KeyTable image follows, 8-byte aligned
};

// Bytes a zone needs to hold `tables` tables of this size at once, plus the
// fixed state; the allocator's own overhead is the caller's to add.
std::size_t shared_tables_bytes(std::size_t image_size, unsigned tables) noexcept;

enum class InstallResult { installed, no_room, superseded };

// One process's view of a zone: its reader slot and the local reference
// counts of the generations its requests use.
class SharedTables {
public:
    struct Ref {
        KeyTable table;
        std::uint64_t generation = 0;
        int entry = -1;      // local reference entry, -1: none held
        bool valid = false;  // table.valid(), known once per table (it never changes)
    };

    SharedTables() noexcept = default;

    // Creates the fixed state and a usage table of usage_capacity keys in a
    // new zone (nullptr if the zone is too small).
    static SharedTablesState *create(ZoneMemory &memory, std::size_t usage_capacity) noexcept;
    static bool is_state(const SharedTablesState *state) noexcept;

    void attach(ZoneMemory *memory, SharedTablesState *state) noexcept;
    SharedTablesState *state() const noexcept { return state_; }
    UsageTable &usage() noexcept { return usage_; }

    // A reload, while nginx builds the new cycle: copies the image into the
    // zone without publishing it (a table staged earlier and never
    // published is freed first). False with a reason when there is no room.
    bool stage(const TableImage &image, const FileIdentity &file, std::string_view path,
               std::string &error) noexcept;
    // The cycle succeeded: the staged table becomes current and the zone
    // moves to a new configuration generation, which is returned. Cannot fail.
    std::uint64_t publish_staged(std::int64_t now) noexcept;
    // The cycle failed: the staged table is freed, nothing else changes.
    void discard_staged() noexcept;
    bool has_staged() const noexcept;
    // A replaced table is waiting for its readers to let go.
    bool has_retired() const noexcept;

    // check=: copies the image into the zone and makes it current, unless
    // the configuration in force is no longer `config` (superseded: a
    // reload happened). no_room comes with a reason; the current table stays.
    InstallResult install(const TableImage &image, const FileIdentity &file, std::string_view path,
                          std::uint64_t config, std::int64_t now, std::string &error) noexcept;

    // Frees retired tables no live reader can still see; returns how many.
    unsigned reclaim() noexcept;

    // Registers this process as a reader (owner: its process identity).
    bool join(std::uint64_t owner) noexcept;
    void leave() noexcept;

    // The current table, held until release(). Lock-free; while the
    // pinned table is current, one load and no store.
    Ref acquire() noexcept {
        if (pin_entry_ >= 0 && load_seq(&state_->current) == pin_offset_) {
            // The pin's generation has been in this slot since an earlier
            // acquire, so the table at pin_offset_ cannot have been freed
            // (nor the offset given to another table): it is the pinned one.
            counts_[pin_entry_]++;
            return pin_;
        }
        return acquire_and_pin();
    }
    void release(Ref &ref) noexcept {
        if (ref.entry >= 0 && ref.entry == pin_entry_) {
            // The pin stays while its table is current.
            if (--counts_[ref.entry] == 0 && load_seq(&state_->current) != pin_offset_) {
                drop_pin();
            }
        } else {
            release_slow(ref);
        }
        ref.entry = -1;
    }
    // Releases the pin unless a request holds the table: the next acquire
    // pins the current table again.
    void drop_pin() noexcept;
    bool pinned() const noexcept { return pin_entry_ >= 0; }

    // A failed load of this file version. A file that is wrong waits for
    // the next change; a load that found no room (transient) is retried.
    // Either is reported once per version.
    void record_failure(const FileIdentity &file, std::int64_t now, std::string_view reason,
                        bool transient) noexcept;
    bool failed_for(const FileIdentity &file) const noexcept {
        return state_->failed_at != 0 && state_->failed_file == file;
    }
    bool gave_up_on(const FileIdentity &file) const noexcept {
        return failed_for(file) && !state_->failed_transiently;
    }
    // The file is back to the version in force: forget a failure.
    void clear_failure() noexcept;

    // Which process parses a changed file (the others skip it); a claim
    // left by a process that died is taken over.
    bool try_claim_loading(std::uint64_t owner) noexcept;
    void end_loading() noexcept;

private:
    static constexpr int kOverflow = -2;  // Ref::entry of a request counted under the floor

    void set_floor(std::uint64_t floor) noexcept;
    Ref acquire_and_pin() noexcept;
    void release_slow(Ref &ref) noexcept;
    const PublishedTable *current() const noexcept;
    void *copy_in(const TableImage &image, std::string &error) noexcept;
    // Makes the table at `offset` current; the writer lock is held.
    void discard_staged_locked() noexcept;
    bool has_retired_room() const noexcept;
    void publish_locked(std::uint64_t offset, std::uint64_t keys, const FileIdentity &file,
                        std::string_view path, std::int64_t now) noexcept;

    ZoneMemory *memory_ = nullptr;
    SharedTablesState *state_ = nullptr;
    UsageTable usage_;
    ReaderSlot *slot_ = nullptr;
    // Requests per generation, mirroring slot_->held. Beyond kHeldPerReader
    // distinct generations, requests are covered by a standing floor.
    std::uint32_t counts_[kHeldPerReader] = {};
    std::uint32_t overflow_count_ = 0;
    std::uint64_t overflow_floor_ = kNoGeneration;
    // The pinned table: its entry in counts_/slot_->held (-1: none), the
    // offset it has in the zone and what acquire returns for it.
    int pin_entry_ = -1;
    std::uint64_t pin_offset_ = 0;
    Ref pin_;
};

}  // namespace apikey
