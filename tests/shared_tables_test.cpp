// Key tables in a shared zone (shared_tables.h), against heap memory: a
// reload stages and publishes, check= installs only for the configuration
// in force, one writer at a time, and no table is freed while a live reader
// can see it, nor kept for a dead one.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/process_identity.h"
#include "core/shared_tables.h"
#include "core/table_builder.h"

namespace apikey {
namespace {

// A zone on the heap with a first-fit allocator that remembers every
// allocation, so leaks and double frees are seen, and that poisons freed
// memory, so a reader of a freed table sees garbage.
class HeapZone final : public ZoneMemory {
public:
    explicit HeapZone(std::size_t bytes) : bytes_(bytes), memory_(new unsigned char[bytes]) {}
    ~HeapZone() override { delete[] memory_; }

    unsigned char *base() override { return memory_; }

    void *allocate(std::size_t bytes) noexcept override {
        std::lock_guard<std::mutex> lock(mutex_);
        bytes = (bytes + 15) & ~std::size_t{15};
        std::size_t at = 16;  // offset 0 means "none" in the zone's state
        for (const auto &[offset, size] : live_) {
            if (offset - at >= bytes) break;
            at = offset + size;
        }
        if (at + bytes > bytes_) return nullptr;
        live_[at] = bytes;
        return memory_ + at;
    }

    void release(void *p) noexcept override {
        std::lock_guard<std::mutex> lock(mutex_);
        const std::size_t offset = static_cast<std::size_t>(static_cast<unsigned char *>(p) -
                                                            memory_);
        auto it = live_.find(offset);
        if (it == live_.end()) {
            bad_frees_++;
            return;
        }
        std::memset(p, 0xdd, it->second);
        live_.erase(it);
    }

    std::size_t allocations() {
        std::lock_guard<std::mutex> lock(mutex_);
        return live_.size();
    }
    int bad_frees() const { return bad_frees_; }

private:
    std::size_t bytes_;
    unsigned char *memory_;
    std::mutex mutex_;
    std::map<std::size_t, std::size_t> live_;
    int bad_frees_ = 0;
};

// A table whose key count tells which version it is.
TableImage image_of(unsigned keys) {
    TableBuilder b;
    for (unsigned i = 0; i < keys; i++) {
        KeySpec s;
        s.line = i + 1;
        s.hash = sha256("key-" + std::to_string(i));
        s.id = "key_" + std::to_string(i);
        s.owner = "owner";
        b.add_key(s);
    }
    return b.build();
}

FileIdentity file_version(std::uint64_t n) {
    FileIdentity f;
    f.ino = n;
    f.size = n;
    return f;
}

constexpr std::size_t kFixed = 2;  // the state and the usage table

struct Zone {
    explicit Zone(std::size_t bytes = 4 << 20) : memory(bytes) {
        state = SharedTables::create(memory, 64);
        shared.attach(&memory, state);
    }
    HeapZone memory;
    SharedTablesState *state;
    SharedTables shared;
};

// A reload: stage, then publish once "the cycle succeeded".
std::uint64_t reload(SharedTables &shared, unsigned keys, std::uint64_t version) {
    std::string error;
    EXPECT_TRUE(shared.stage(image_of(keys), file_version(version), "/keys.yaml", error)) << error;
    return shared.publish_staged(100);
}

TEST(SharedTables, AStagedTableIsInvisibleUntilPublished) {
    Zone z;
    ASSERT_TRUE(z.shared.join(this_process_identity()));
    const std::uint64_t config = reload(z.shared, 3, 1);
    EXPECT_EQ(config, 1u);

    std::string error;
    ASSERT_TRUE(z.shared.stage(image_of(5), file_version(2), "/other.yaml", error));
    EXPECT_TRUE(z.shared.has_staged());
    SharedTables::Ref ref = z.shared.acquire();
    EXPECT_EQ(ref.table.key_count(), 3u) << "staged is not in force";
    EXPECT_EQ(z.state->config_generation, 1u);
    EXPECT_STREQ(z.state->loaded_path, "/keys.yaml");
    z.shared.release(ref);

    EXPECT_EQ(z.shared.publish_staged(200), 2u);
    ref = z.shared.acquire();
    EXPECT_EQ(ref.table.key_count(), 5u);
    EXPECT_EQ(ref.generation, 2u);
    EXPECT_STREQ(z.state->loaded_path, "/other.yaml");
    EXPECT_EQ(z.state->loaded_file, file_version(2));
    z.shared.release(ref);
}

TEST(SharedTables, AFailedReloadChangesNothingAndLeavesNoTableBehind) {
    Zone z;
    ASSERT_TRUE(z.shared.join(this_process_identity()));
    reload(z.shared, 3, 1);
    z.shared.reclaim();
    const std::size_t before = z.memory.allocations();

    std::string error;
    ASSERT_TRUE(z.shared.stage(image_of(7), file_version(2), "/b.yaml", error));
    z.shared.discard_staged();  // the cycle failed

    EXPECT_FALSE(z.shared.has_staged());
    EXPECT_EQ(z.memory.allocations(), before);
    EXPECT_EQ(z.state->generation, 1u);
    EXPECT_EQ(z.state->config_generation, 1u);
    EXPECT_EQ(z.state->loaded_file, file_version(1));
    SharedTables::Ref ref = z.shared.acquire();
    EXPECT_EQ(ref.table.key_count(), 3u);
    z.shared.release(ref);
}

TEST(SharedTables, StagingAgainFreesATableAFailedCycleLeftStaged) {
    Zone z;
    reload(z.shared, 3, 1);
    std::string error;
    ASSERT_TRUE(z.shared.stage(image_of(4), file_version(2), "/k", error));
    ASSERT_TRUE(z.shared.stage(image_of(6), file_version(3), "/k", error));
    z.shared.publish_staged(1);
    z.shared.reclaim();
    EXPECT_EQ(z.memory.allocations(), kFixed + 1);
    EXPECT_EQ(z.memory.bad_frees(), 0);
}

TEST(SharedTables, ALoadOfAnOlderConfigurationIsNeverInstalled) {
    Zone z;
    const std::uint64_t old_config = reload(z.shared, 3, 1);
    reload(z.shared, 4, 2);  // a reload while an old worker was loading
    z.shared.reclaim();
    const std::size_t before = z.memory.allocations();

    std::string error;
    EXPECT_EQ(z.shared.install(image_of(9), file_version(3), "/old.yaml", old_config, 5, error),
              InstallResult::superseded);
    EXPECT_EQ(z.memory.allocations(), before) << "the copy is freed";
    EXPECT_EQ(z.state->generation, 2u);
    EXPECT_STREQ(z.state->loaded_path, "/keys.yaml");
}

TEST(SharedTables, ALoadOfTheConfigurationInForceIsInstalled) {
    Zone z;
    const std::uint64_t config = reload(z.shared, 3, 1);
    std::string error;
    EXPECT_EQ(z.shared.install(image_of(4), file_version(2), "/keys.yaml", config, 5, error),
              InstallResult::installed);
    EXPECT_EQ(z.state->generation, 2u);
    EXPECT_EQ(z.state->keys, 4u);
    EXPECT_EQ(z.state->loaded_at, 5);
}

TEST(SharedTables, AReaderKeepsItsTableUntilItReleasesIt) {
    Zone z;
    ASSERT_TRUE(z.shared.join(this_process_identity()));
    const std::uint64_t config = reload(z.shared, 3, 1);
    SharedTables::Ref held = z.shared.acquire();

    std::string error;
    ASSERT_EQ(z.shared.install(image_of(4), file_version(2), "/k", config, 1, error),
              InstallResult::installed);
    z.shared.reclaim();
    EXPECT_EQ(held.table.key_count(), 3u) << "still readable";
    EXPECT_EQ(z.memory.allocations(), kFixed + 2);

    z.shared.release(held);
    EXPECT_EQ(z.shared.reclaim(), 1u);
    EXPECT_EQ(z.memory.allocations(), kFixed + 1);
}

// A pin (the generation left in the slot after a request) keeps a table
// that is still current without any store; it goes as soon as a request
// ends on a replaced table, or when drop_pin() is called with none running.
TEST(SharedTables, APinOutlivesItsRequestOnlyWhileItsTableIsCurrent) {
    Zone z;
    ASSERT_TRUE(z.shared.join(this_process_identity()));
    const std::uint64_t config = reload(z.shared, 3, 1);
    const ReaderSlot *slot = nullptr;
    for (const ReaderSlot &r : z.state->readers) {
        if (r.owner == this_process_identity()) slot = &r;
    }
    ASSERT_NE(slot, nullptr);
    auto held = [&](std::uint64_t generation) {
        int n = 0;
        for (std::uint64_t g : slot->held) n += g == generation;
        return n;
    };

    SharedTables::Ref ref = z.shared.acquire();
    EXPECT_TRUE(ref.valid);
    z.shared.release(ref);
    EXPECT_TRUE(z.shared.pinned());
    EXPECT_EQ(held(1), 1) << "pinned after the request";
    ref = z.shared.acquire();
    EXPECT_EQ(ref.generation, 1u);
    EXPECT_EQ(ref.table.key_count(), 3u);
    z.shared.release(ref);
    EXPECT_EQ(held(1), 1);

    // Replaced while pinned, with no request running: the pin keeps it
    // until dropped, and only it.
    std::string error;
    ASSERT_EQ(z.shared.install(image_of(4), file_version(2), "/k", config, 1, error),
              InstallResult::installed);
    EXPECT_EQ(z.shared.reclaim(), 0u) << "an idle pin still protects the replaced table";
    z.shared.drop_pin();
    EXPECT_FALSE(z.shared.pinned());
    EXPECT_EQ(held(1), 0);
    EXPECT_EQ(z.shared.reclaim(), 1u);

    // Replaced while a request holds it: the pin goes when the request ends.
    ref = z.shared.acquire();
    EXPECT_EQ(ref.generation, 2u);
    ASSERT_EQ(z.shared.install(image_of(5), file_version(3), "/k", config, 1, error),
              InstallResult::installed);
    EXPECT_EQ(z.shared.reclaim(), 0u);
    z.shared.drop_pin();
    EXPECT_TRUE(z.shared.pinned()) << "never dropped under a running request";
    z.shared.release(ref);
    EXPECT_FALSE(z.shared.pinned());
    EXPECT_EQ(z.shared.reclaim(), 1u);

    // The next request pins the current table; the pin moves with it.
    ref = z.shared.acquire();
    EXPECT_EQ(ref.table.key_count(), 5u);
    z.shared.release(ref);
    EXPECT_EQ(held(3), 1);
    ASSERT_EQ(z.shared.install(image_of(6), file_version(4), "/k", config, 1, error),
              InstallResult::installed);
    ref = z.shared.acquire();
    EXPECT_EQ(ref.table.key_count(), 6u);
    z.shared.release(ref);
    EXPECT_EQ(held(3), 0) << "the old pin went with the new one";
    EXPECT_EQ(held(4), 1);
    EXPECT_EQ(z.shared.reclaim(), 1u);

    z.shared.leave();
    EXPECT_FALSE(z.shared.pinned());
    z.shared.reclaim();
    EXPECT_EQ(z.memory.allocations(), kFixed + 1);
    EXPECT_EQ(z.memory.bad_frees(), 0);
}

// Nested holds (a subrequest deciding while its parent's table is held,
// say) of a pinned table, and of a new one after a swap.
TEST(SharedTables, NestedHoldsAcrossASwapKeepEveryTableTheyRead) {
    Zone z;
    ASSERT_TRUE(z.shared.join(this_process_identity()));
    const std::uint64_t config = reload(z.shared, 3, 1);
    SharedTables::Ref outer = z.shared.acquire();
    SharedTables::Ref inner = z.shared.acquire();
    std::string error;
    ASSERT_EQ(z.shared.install(image_of(4), file_version(2), "/k", config, 1, error),
              InstallResult::installed);
    SharedTables::Ref newest = z.shared.acquire();
    EXPECT_EQ(newest.table.key_count(), 4u);
    z.shared.release(inner);
    EXPECT_EQ(z.shared.reclaim(), 0u);
    EXPECT_EQ(outer.table.key_count(), 3u);
    z.shared.release(outer);
    EXPECT_EQ(z.shared.reclaim(), 1u) << "the old table goes with its last holder";
    EXPECT_EQ(newest.table.key_count(), 4u);
    z.shared.release(newest);
    EXPECT_TRUE(z.shared.pinned());
    EXPECT_EQ(z.memory.bad_frees(), 0);
}

TEST(SharedTables, ATableHeldByADeadProcessIsFreed) {
    Zone z;
    const std::uint64_t config = reload(z.shared, 3, 1);
    // A reader slot of a process that has exited (its pid reaped).
    const pid_t child = fork();
    if (child == 0) _exit(0);
    ASSERT_GT(child, 0);
    ASSERT_EQ(waitpid(child, nullptr, 0), child);
    ReaderSlot &dead = z.state->readers[0];
    dead.owner = make_identity(static_cast<std::uint32_t>(child), 12345);
    dead.floor = kNoGeneration;
    dead.held[0] = 1;

    std::string error;
    ASSERT_EQ(z.shared.install(image_of(4), file_version(2), "/k", config, 1, error),
              InstallResult::installed);
    EXPECT_EQ(z.shared.reclaim(), 1u);
    EXPECT_EQ(z.memory.allocations(), kFixed + 1);
}

TEST(SharedTables, APidReusedByALiveProcessDoesNotKeepATable) {
    Zone z;
    const std::uint64_t config = reload(z.shared, 3, 1);
    // This process's pid, but another start time: the reader that owned
    // the slot is gone and its pid was given to someone else.
    const std::uint64_t me = this_process_identity();
    ReaderSlot &stale = z.state->readers[0];
    stale.owner = make_identity(identity_pid(me), identity_start(me) + 1);
    stale.floor = 1;

    std::string error;
    ASSERT_EQ(z.shared.install(image_of(4), file_version(2), "/k", config, 1, error),
              InstallResult::installed);
    EXPECT_EQ(z.shared.reclaim(), 1u);
}

TEST(SharedTables, ChecksFailWithNoRoomButNeverFreeATableInUse) {
    Zone z(1 << 20);
    ASSERT_TRUE(z.shared.join(this_process_identity()));
    const std::uint64_t config = reload(z.shared, 2000, 1);
    std::vector<SharedTables::Ref> held;
    std::string error;
    InstallResult last = InstallResult::installed;
    for (unsigned v = 2; v < 40 && last == InstallResult::installed; v++) {
        held.push_back(z.shared.acquire());
        last = z.shared.install(image_of(2000 + v), file_version(v), "/k", config, 1, error);
    }
    EXPECT_EQ(last, InstallResult::no_room) << "a full zone refuses, it does not overwrite";
    EXPECT_FALSE(error.empty());
    for (const SharedTables::Ref &ref : held) EXPECT_TRUE(ref.table.valid());
    for (SharedTables::Ref &ref : held) z.shared.release(ref);
    z.shared.reclaim();
    EXPECT_EQ(z.memory.allocations(), kFixed + 1);
    EXPECT_EQ(z.memory.bad_frees(), 0);
}

// Readers on several threads (each its own view and reader slot, as workers
// are) while two writers install and a third reloads: every table a reader
// gets is whole, generations only grow, and at the end exactly one table is
// left, with no double free.
TEST(SharedTables, ConcurrentReadersAndWritersNeverSeeAFreedTableOrLeakOne) {
    Zone z(64 << 20);
    const std::uint64_t config = reload(z.shared, 10, 1);
    std::atomic<bool> stop{false};
    std::atomic<int> broken{0};

    std::vector<std::thread> readers;
    for (int t = 0; t < 3; t++) {
        readers.emplace_back([&] {
            SharedTables view;
            view.attach(&z.memory, z.state);
            if (!view.join(this_process_identity())) {
                broken++;
                return;
            }
            std::uint64_t last_generation = 0;
            unsigned rounds = 0;
            while (!stop.load()) {
                SharedTables::Ref ref = view.acquire();
                const std::uint32_t keys = ref.table.key_count();
                if (!ref.table.valid() || keys < 10 || keys > 40 ||
                    ref.generation < last_generation) {
                    broken++;
                }
                last_generation = ref.generation;
                Digest d = sha256("key-" + std::to_string(keys - 1));
                if (ref.table.find(d) == nullptr) broken++;
                view.release(ref);
                if (++rounds % 64 == 0) view.drop_pin();  // the module's pin timer
            }
            view.leave();
        });
    }
    std::atomic<int> installed{0};
    std::vector<std::thread> writers;
    for (int w = 0; w < 2; w++) {
        writers.emplace_back([&, w] {
            SharedTables view;
            view.attach(&z.memory, z.state);
            std::string error;
            for (unsigned v = 0; v < 60; v++) {
                const unsigned keys = 10 + (v * 2 + w) % 30;
                if (view.install(image_of(keys), file_version(1000 + v * 2 + w), "/k", config, v,
                                 error) == InstallResult::installed) {
                    installed++;
                }
                view.reclaim();
            }
        });
    }
    for (std::thread &t : writers) t.join();
    stop = true;
    for (std::thread &t : readers) t.join();

    EXPECT_EQ(broken.load(), 0);
    EXPECT_GT(installed.load(), 0);
    EXPECT_EQ(z.state->generation, 1u + static_cast<unsigned>(installed.load()))
        << "one generation per install, none lost";
    z.shared.reclaim();
    EXPECT_EQ(z.memory.allocations(), kFixed + 1);
    EXPECT_EQ(z.memory.bad_frees(), 0);
}

TEST(SharedTables, TheLoadingClaimIsTakenOverFromADeadProcess) {
    Zone z;
    const pid_t child = fork();
    if (child == 0) _exit(0);
    ASSERT_EQ(waitpid(child, nullptr, 0), child);
    z.state->loading_by = make_identity(static_cast<std::uint32_t>(child), 7);
    EXPECT_TRUE(z.shared.try_claim_loading(this_process_identity()));
    EXPECT_FALSE(z.shared.try_claim_loading(make_identity(1, 1))) << "held by a live process";
    z.shared.end_loading();
    EXPECT_TRUE(z.shared.try_claim_loading(this_process_identity()));
}

}  // namespace
}  // namespace apikey
