// Per-key usage counters (usage_table.h), against heap memory: a slot is
// claimed once per key by compare-and-swap, requests are counted by outcome
// and in the zone totals, a key that finds no slot is counted as untracked,
// and a second UsageTable adopting the same memory (another process mapping
// the zone) sees and adds to the same counters. Threads stand in for worker
// processes: the table holds plain integers changed by atomic builtins only.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/usage_table.h"

namespace apikey {
namespace {

constexpr std::size_t kAccepted = static_cast<std::size_t>(Outcome::accepted);
constexpr std::size_t kRateLimited = static_cast<std::size_t>(Outcome::rate_limited);

// bytes_for(capacity) of heap memory, 8-byte aligned like a shared zone's
// allocations, filled with `fill` so format() has to zero it.
class HeapTable {
public:
    explicit HeapTable(std::size_t capacity, unsigned char fill = 0xab)
        : bytes_(UsageTable::bytes_for(capacity)), memory_(new std::uint64_t[(bytes_ + 7) / 8]) {
        std::memset(memory_.get(), fill, bytes_);
        table = UsageTable::format(memory_.get(), capacity);
    }

    void *memory() { return memory_.get(); }
    std::size_t bytes() const { return bytes_; }
    // The slots array as the table lays it out (after the totals).
    UsageSlot *raw_slots() {
        return reinterpret_cast<UsageSlot *>(reinterpret_cast<unsigned char *>(memory_.get()) +
                                             sizeof(UsageTotals));
    }

    UsageTable table;

private:
    std::size_t bytes_;
    std::unique_ptr<std::uint64_t[]> memory_;
};

struct Seen {
    std::uint64_t slot;
    UsageSlot copy;
};

// Every slot in use, by key id. Fails the test if an id is in two slots.
std::map<std::string, Seen> used_slots(const UsageTable &table) {
    std::map<std::string, Seen> out;
    for (std::uint64_t i = 0; i < table.capacity(); i++) {
        const UsageSlot *s = table.slot(i);
        if (s == nullptr) continue;
        const std::string id(s->id, s->id_len);
        auto [it, inserted] = out.emplace(id, Seen{i, *s});
        EXPECT_TRUE(inserted) << "key " << id << " has two slots: " << it->second.slot << " and "
                              << i;
    }
    return out;
}

std::uint64_t sum(const std::uint64_t (&count)[kOutcomeCount]) {
    std::uint64_t n = 0;
    for (std::uint64_t c : count) n += c;
    return n;
}

TEST(UsageTable, Layout) {
    EXPECT_EQ(UsageTable::bytes_for(0), sizeof(UsageTotals));
    EXPECT_EQ(UsageTable::bytes_for(10), sizeof(UsageTotals) + 10 * 256);
    EXPECT_EQ(sizeof(UsageTotals) % alignof(UsageSlot), 0u) << "slots follow the totals";
}

TEST(UsageTable, DefaultConstructedIsInvalidAndCountsNothing) {
    UsageTable table;
    EXPECT_FALSE(table.valid());
    table.count("key_a", Outcome::accepted, 100);  // no crash, nothing to count in
}

TEST(UsageTable, FormatZeroesTheMemory) {
    HeapTable heap(16, 0xff);
    ASSERT_TRUE(heap.table.valid());
    EXPECT_EQ(heap.table.capacity(), 16u);
    const UsageTotals &t = heap.table.totals();
    EXPECT_EQ(sum(t.count), 0u);
    EXPECT_EQ(t.untracked, 0u);
    for (std::uint64_t i = 0; i < 16; i++) EXPECT_EQ(heap.table.slot(i), nullptr) << i;
    for (std::uint64_t i = 0; i < 16; i++) {
        const UsageSlot &s = heap.raw_slots()[i];
        EXPECT_EQ(s.id_hash, 0u);
        EXPECT_EQ(s.ready, 0u);
        EXPECT_EQ(s.last_used, 0);
        EXPECT_EQ(sum(s.count), 0u);
    }
}

TEST(UsageTable, FirstRequestClaimsASlot) {
    HeapTable heap(16);
    heap.table.count("key_a", Outcome::accepted, 1700000000);
    EXPECT_EQ(heap.table.totals().count[kAccepted], 1u);
    EXPECT_EQ(sum(heap.table.totals().count), 1u);
    EXPECT_EQ(heap.table.totals().untracked, 0u);
    const auto used = used_slots(heap.table);
    ASSERT_EQ(used.size(), 1u);
    const UsageSlot &s = used.at("key_a").copy;
    EXPECT_NE(s.id_hash, 0u);
    EXPECT_EQ(s.ready, 1u);
    EXPECT_EQ(s.count[kAccepted], 1u);
    EXPECT_EQ(sum(s.count), 1u);
    EXPECT_EQ(s.last_used, 1700000000);
}

TEST(UsageTable, CountsByOutcomeInOneSlot) {
    HeapTable heap(16);
    for (std::size_t o = 0; o < kOutcomeCount; o++) {
        for (std::size_t n = 0; n <= o; n++) heap.table.count("key_a", static_cast<Outcome>(o), 10);
    }
    heap.table.count("key_a", Outcome::accepted, 20);
    const auto used = used_slots(heap.table);
    ASSERT_EQ(used.size(), 1u);
    const UsageSlot &s = used.at("key_a").copy;
    for (std::size_t o = 0; o < kOutcomeCount; o++) {
        const std::uint64_t want = o + 1 + (o == kAccepted ? 1 : 0);
        EXPECT_EQ(s.count[o], want) << "outcome " << o;
        EXPECT_EQ(heap.table.totals().count[o], want) << "outcome " << o;
    }
    EXPECT_EQ(s.last_used, 20) << "the last request's time";
}

TEST(UsageTable, RequestWithoutKeyIsCountedInTheTotalsOnly) {
    HeapTable heap(16);
    heap.table.count("", Outcome::missing_key, 10);
    heap.table.count("", Outcome::invalid_key, 10);
    EXPECT_EQ(heap.table.totals().count[static_cast<std::size_t>(Outcome::missing_key)], 1u);
    EXPECT_EQ(heap.table.totals().count[static_cast<std::size_t>(Outcome::invalid_key)], 1u);
    EXPECT_EQ(heap.table.totals().untracked, 0u) << "no key is not an untracked key";
    EXPECT_TRUE(used_slots(heap.table).empty());
}

TEST(UsageTable, DifferentKeysGetDifferentSlots) {
    HeapTable heap(64);
    for (int round = 0; round < 3; round++) {
        for (int k = 0; k < 20; k++) {
            heap.table.count("key_" + std::to_string(k), Outcome::accepted, 100 + k);
        }
    }
    heap.table.count("key_7", Outcome::rate_limited, 500);
    const auto used = used_slots(heap.table);
    ASSERT_EQ(used.size(), 20u);
    for (int k = 0; k < 20; k++) {
        const UsageSlot &s = used.at("key_" + std::to_string(k)).copy;
        EXPECT_EQ(s.count[kAccepted], 3u) << k;
        EXPECT_EQ(s.count[kRateLimited], k == 7 ? 1u : 0u) << k;
        EXPECT_EQ(s.last_used, k == 7 ? 500 : 100 + k) << k;
    }
    EXPECT_EQ(heap.table.totals().count[kAccepted], 60u);
    EXPECT_EQ(heap.table.totals().untracked, 0u);
}

TEST(UsageTable, KeysBeyondCapacityAreUntracked) {
    HeapTable heap(4);
    for (int k = 0; k < 10; k++) heap.table.count("key_" + std::to_string(k), Outcome::accepted, 1);
    const auto used = used_slots(heap.table);
    EXPECT_EQ(used.size(), 4u) << "every slot is taken";
    EXPECT_EQ(heap.table.totals().untracked, 6u);
    EXPECT_EQ(heap.table.totals().count[kAccepted], 10u) << "the totals count every request";
    // A tracked key keeps its slot; an untracked one stays untracked.
    const std::string tracked = used.begin()->first;
    heap.table.count(tracked, Outcome::accepted, 2);
    EXPECT_EQ(heap.table.totals().untracked, 6u);
    EXPECT_EQ(used_slots(heap.table).at(tracked).copy.count[kAccepted], 2u);
    for (int k = 0; k < 10; k++) {
        const std::string id = "key_" + std::to_string(k);
        if (used.count(id) == 0) {
            heap.table.count(id, Outcome::revoked_key, 3);
            break;
        }
    }
    EXPECT_EQ(heap.table.totals().untracked, 7u);
    EXPECT_EQ(used_slots(heap.table).size(), 4u);
}

TEST(UsageTable, ZeroCapacityTracksNoKey) {
    HeapTable heap(0);
    ASSERT_TRUE(heap.table.valid());
    heap.table.count("key_a", Outcome::accepted, 1);
    heap.table.count("", Outcome::missing_key, 1);
    EXPECT_EQ(heap.table.totals().untracked, 1u);
    EXPECT_EQ(sum(heap.table.totals().count), 2u);
}

// A key looks at kProbe slots from where its hash points: with many more
// keys than slots some find no free slot even though the table is larger
// than kProbe. Whatever happens, every request is counted exactly once:
// in one key's slot, or as untracked.
TEST(UsageTable, ManyKeysEveryRequestCountedOnce) {
    HeapTable heap(100);
    std::uint64_t requests = 0;
    for (int k = 0; k < 1000; k++) {
        for (int n = 0; n < 1 + k % 3; n++) {
            heap.table.count("key_" + std::to_string(k), Outcome::accepted, 1);
            requests++;
        }
    }
    const auto used = used_slots(heap.table);
    EXPECT_LE(used.size(), 100u);
    EXPECT_GE(used.size(), UsageTable::kProbe) << "a key finds any free slot within its probe";
    std::uint64_t in_slots = 0;
    for (const auto &[id, seen] : used) {
        const int k = std::stoi(id.substr(4));
        EXPECT_EQ(seen.copy.count[kAccepted], static_cast<std::uint64_t>(1 + k % 3)) << id;
        in_slots += sum(seen.copy.count);
    }
    EXPECT_EQ(in_slots + heap.table.totals().untracked, requests);
    EXPECT_EQ(heap.table.totals().count[kAccepted], requests);
}

TEST(UsageTable, LongIdsAreCutToKMaxTrackedId) {
    HeapTable heap(16);
    const std::string id(kMaxTrackedId, 'x');
    heap.table.count(id + "-one", Outcome::accepted, 1);
    heap.table.count(id + "-two", Outcome::accepted, 1);
    const auto used = used_slots(heap.table);
    // Key files allow ids of at most 128 bytes (config_rules.h), so ids that
    // only differ after that do not occur; they share the slot of their cut.
    ASSERT_EQ(used.size(), 1u);
    EXPECT_EQ(used.begin()->first, id);
    EXPECT_EQ(used.begin()->second.copy.count[kAccepted], 2u);
}

TEST(UsageTable, ASlotBeingClaimedIsNotListed) {
    HeapTable heap(4);
    // What another process leaves between its compare-and-swap and its
    // store of `ready`: the hash is set, the id not yet written.
    heap.raw_slots()[2].id_hash = 12345;
    for (std::uint64_t i = 0; i < 4; i++) EXPECT_EQ(heap.table.slot(i), nullptr) << i;
    heap.raw_slots()[2].ready = 1;
    EXPECT_NE(heap.table.slot(2), nullptr);
}

TEST(UsageTable, AdoptSeesAndSharesTheCounters) {
    HeapTable heap(32);
    heap.table.count("key_a", Outcome::accepted, 10);
    heap.table.count("key_b", Outcome::expired_key, 11);

    UsageTable other = UsageTable::adopt(heap.memory());
    ASSERT_TRUE(other.valid());
    EXPECT_EQ(other.capacity(), 32u);
    EXPECT_EQ(&other.totals(), &heap.table.totals());
    auto seen = used_slots(other);
    ASSERT_EQ(seen.size(), 2u);
    EXPECT_EQ(seen.at("key_a").copy.count[kAccepted], 1u);
    EXPECT_EQ(seen.at("key_b").copy.count[static_cast<std::size_t>(Outcome::expired_key)], 1u);

    // Counting through either finds the same slot, never a second one.
    other.count("key_a", Outcome::accepted, 20);
    other.count("key_c", Outcome::accepted, 21);
    heap.table.count("key_c", Outcome::rate_limited, 22);
    const auto after = used_slots(heap.table);
    ASSERT_EQ(after.size(), 3u);
    EXPECT_EQ(after.at("key_a").slot, seen.at("key_a").slot);
    EXPECT_EQ(after.at("key_a").copy.count[kAccepted], 2u);
    EXPECT_EQ(after.at("key_a").copy.last_used, 20);
    EXPECT_EQ(after.at("key_c").copy.count[kAccepted], 1u);
    EXPECT_EQ(after.at("key_c").copy.count[kRateLimited], 1u);
    EXPECT_EQ(heap.table.totals().count[kAccepted], 3u);
}

TEST(UsageTable, AdoptOfACopyReadsTheSameTable) {
    // The table holds no pointers: a byte copy (the zone mapped at another
    // address) reads the same.
    constexpr auto kPlan = static_cast<std::size_t>(Outcome::plan_required);
    HeapTable heap(8);
    heap.table.count("key_a", Outcome::plan_required, 5);
    std::unique_ptr<std::uint64_t[]> copy(new std::uint64_t[(heap.bytes() + 7) / 8]);
    std::memcpy(copy.get(), heap.memory(), heap.bytes());
    UsageTable moved = UsageTable::adopt(copy.get());
    EXPECT_EQ(moved.capacity(), 8u);
    const auto used = used_slots(moved);
    ASSERT_EQ(used.size(), 1u);
    EXPECT_EQ(used.at("key_a").copy.count[kPlan], 1u);
    moved.count("key_a", Outcome::plan_required, 6);
    EXPECT_EQ(used_slots(moved).at("key_a").copy.count[kPlan], 2u);
    EXPECT_EQ(used_slots(heap.table).at("key_a").copy.count[kPlan], 1u)
        << "the original is untouched";
}

TEST(UsageTable, AnIdAtAnAddressThatHeldAnotherCountsAsItself) {
    // Each process remembers where it found an id by the address of the id's
    // text; a replaced key table may put another id at that address.
    HeapTable heap(64);
    char text[kMaxTrackedId + 16];
    std::memcpy(text, "key_a", 5);
    heap.table.count(std::string_view(text, 5), Outcome::accepted, 1);
    heap.table.count(std::string_view(text, 5), Outcome::accepted, 2);
    std::memcpy(text, "key_b", 5);
    heap.table.count(std::string_view(text, 5), Outcome::accepted, 3);
    heap.table.count(std::string_view(text, 4), Outcome::accepted, 4);  // "key_"
    std::memcpy(text, "key_a", 5);
    heap.table.count(std::string_view(text, 5), Outcome::revoked_key, 5);
    const auto used = used_slots(heap.table);
    ASSERT_EQ(used.size(), 3u);
    EXPECT_EQ(used.at("key_a").copy.count[kAccepted], 2u);
    EXPECT_EQ(used.at("key_a").copy.count[static_cast<std::size_t>(Outcome::revoked_key)], 1u);
    EXPECT_EQ(used.at("key_a").copy.last_used, 5);
    EXPECT_EQ(used.at("key_b").copy.count[kAccepted], 1u);
    EXPECT_EQ(used.at("key_").copy.count[kAccepted], 1u);

    // Longer ids, one byte changed anywhere: each is its own key.
    for (std::size_t len : {1u, 2u, 3u, 4u, 5u, 7u, 8u, 9u, 15u, 16u, 17u, 24u, 40u}) {
        HeapTable longer(256);
        std::map<std::string, int> want;
        for (std::size_t changed = 0; changed <= len; changed++) {
            std::memset(text, 'k', len);
            if (changed < len) text[changed] = 'z';
            for (int i = 0; i < 2; i++) {
                longer.table.count(std::string_view(text, len), Outcome::accepted, 7);
                want[std::string(text, len)]++;
            }
        }
        const auto seen = used_slots(longer.table);
        ASSERT_EQ(seen.size(), want.size()) << len;
        for (const auto &[id, n] : want) {
            EXPECT_EQ(seen.at(id).copy.count[kAccepted], static_cast<std::uint64_t>(n)) << id;
        }
    }

    // An id longer than a slot holds is tracked by its first kMaxTrackedId
    // bytes, the first time as every time after.
    std::memset(text, 'x', sizeof text);
    for (int i = 0; i < 3; i++) {
        heap.table.count(std::string_view(text, sizeof text), Outcome::accepted, 6);
    }
    EXPECT_EQ(used_slots(heap.table).at(std::string(kMaxTrackedId, 'x')).copy.count[kAccepted], 3u);
}

TEST(UsageTable, ASourceThatNeverChangesSkipsTheCompareAnotherDoesNot) {
    // With a source (the key table's build id), an id found at an address
    // before is known by the address; text of another source at the same
    // address (a replaced table) is compared again.
    HeapTable heap(64);
    char text[16];
    std::memcpy(text, "key_a", 5);
    heap.table.count(std::string_view(text, 5), Outcome::accepted, 1, 11);
    heap.table.count(std::string_view(text, 5), Outcome::accepted, 2, 11);
    std::memcpy(text, "key_b", 5);  // another table (source 12) at the same address
    heap.table.count(std::string_view(text, 5), Outcome::accepted, 3, 12);
    heap.table.count(std::string_view(text, 5), Outcome::accepted, 4, 12);
    heap.table.count(std::string_view(text, 5), Outcome::accepted, 5, 0);  // no source: compared
    std::memcpy(text, "key_a", 5);
    heap.table.count(std::string_view(text, 5), Outcome::accepted, 6, 13);
    const auto used = used_slots(heap.table);
    ASSERT_EQ(used.size(), 2u);
    EXPECT_EQ(used.at("key_a").copy.count[kAccepted], 3u);
    EXPECT_EQ(used.at("key_b").copy.count[kAccepted], 3u);
}

// ---- Concurrency: threads stand in for worker processes.

constexpr int kThreads = 8;

// Runs body(t) on kThreads threads that start together; each thread gets
// its own UsageTable adopted from the memory, as each worker has its own.
template <typename Body>
void run_together(void *memory, Body body) {
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; t++) {
        threads.emplace_back([&, t] {
            UsageTable mine = UsageTable::adopt(memory);
            ready++;
            while (ready.load() < kThreads) std::this_thread::yield();
            body(mine, t);
        });
    }
    for (auto &th : threads) th.join();
}

TEST(UsageTableConcurrency, OneKeyFromEveryThreadIsExact) {
    constexpr int kPerThread = 20000;
    HeapTable heap(64);
    run_together(heap.memory(), [](UsageTable &table, int t) {
        for (int i = 0; i < kPerThread; i++) {
            table.count("key_shared", i % 10 == 0 ? Outcome::rate_limited : Outcome::accepted,
                        1000 + t);
        }
    });
    const auto used = used_slots(heap.table);
    ASSERT_EQ(used.size(), 1u);
    const UsageSlot &s = used.at("key_shared").copy;
    EXPECT_EQ(s.count[kRateLimited], std::uint64_t{kThreads} * kPerThread / 10);
    EXPECT_EQ(s.count[kAccepted], std::uint64_t{kThreads} * kPerThread * 9 / 10);
    EXPECT_EQ(sum(heap.table.totals().count), std::uint64_t{kThreads} * kPerThread);
    EXPECT_EQ(heap.table.totals().untracked, 0u);
    EXPECT_GE(s.last_used, 1000);
    EXPECT_LT(s.last_used, 1000 + kThreads);
}

// Every round starts the threads together on fresh keys in a small table,
// so that several of them race to claim the same slot: the loser of a
// compare-and-swap must use the winner's slot when it is for the same key and
// move on when it is not. kKeys <= kProbe, so every key finds a slot.
TEST(UsageTableConcurrency, RacingClaimsNeverGiveAKeyTwoSlots) {
    constexpr int kRounds = 200;
    constexpr int kKeys = 32;  // a power of two: k * (2t + 1) % kKeys runs through all keys
    static_assert(kKeys <= UsageTable::kProbe);
    for (int round = 0; round < kRounds; round++) {
        HeapTable heap(kKeys + 8);
        run_together(heap.memory(), [](UsageTable &table, int t) {
            for (int k = 0; k < kKeys; k++) {
                // Every thread counts every key, in its own order.
                const int key = (k * (2 * t + 1)) % kKeys;
                table.count("key_" + std::to_string(key), Outcome::accepted, 1);
            }
        });
        const auto used = used_slots(heap.table);
        ASSERT_EQ(used.size(), static_cast<std::size_t>(kKeys)) << "round " << round;
        for (const auto &[id, seen] : used) {
            ASSERT_EQ(seen.copy.count[kAccepted], std::uint64_t{kThreads})
                << id << ", round " << round;
        }
        ASSERT_EQ(heap.table.totals().count[kAccepted], std::uint64_t{kThreads} * kKeys);
        ASSERT_EQ(heap.table.totals().untracked, 0u);
    }
}

TEST(UsageTableConcurrency, SharedAndOwnKeysTotalsExact) {
    constexpr int kPerThread = 4800;  // a multiple of kShared and of 100
    constexpr int kShared = 16;
    HeapTable heap(256);
    run_together(heap.memory(), [](UsageTable &table, int t) {
        const std::string own = "key_own_" + std::to_string(t);
        for (int i = 0; i < kPerThread; i++) {
            table.count("key_shared_" + std::to_string(i % kShared), Outcome::accepted, 1);
            table.count(own, Outcome::insufficient_scope, 1);
            if (i % 100 == 0) table.count("", Outcome::missing_key, 1);
        }
    });
    const auto used = used_slots(heap.table);
    ASSERT_EQ(used.size(), static_cast<std::size_t>(kShared + kThreads));
    for (int k = 0; k < kShared; k++) {
        EXPECT_EQ(used.at("key_shared_" + std::to_string(k)).copy.count[kAccepted],
                  std::uint64_t{kThreads} * kPerThread / kShared)
            << k;
    }
    const auto scope = static_cast<std::size_t>(Outcome::insufficient_scope);
    for (int t = 0; t < kThreads; t++) {
        const UsageSlot &s = used.at("key_own_" + std::to_string(t)).copy;
        EXPECT_EQ(s.count[scope], std::uint64_t{kPerThread}) << t;
        EXPECT_EQ(sum(s.count), std::uint64_t{kPerThread}) << t;
    }
    const UsageTotals &totals = heap.table.totals();
    EXPECT_EQ(totals.count[kAccepted], std::uint64_t{kThreads} * kPerThread);
    EXPECT_EQ(totals.count[scope], std::uint64_t{kThreads} * kPerThread);
    EXPECT_EQ(totals.count[static_cast<std::size_t>(Outcome::missing_key)],
              std::uint64_t{kThreads} * (kPerThread / 100));
    EXPECT_EQ(totals.untracked, 0u);
}

TEST(UsageTableConcurrency, FullTableCountsEveryRequestOnce) {
    constexpr int kPerThread = 2000;
    HeapTable heap(8);
    run_together(heap.memory(), [](UsageTable &table, int t) {
        for (int i = 0; i < kPerThread; i++) {
            table.count("key_" + std::to_string((i + t) % 40), Outcome::accepted, 1);
        }
    });
    const auto used = used_slots(heap.table);
    EXPECT_EQ(used.size(), 8u);
    std::uint64_t in_slots = 0;
    for (const auto &[id, seen] : used) in_slots += seen.copy.count[kAccepted];
    const std::uint64_t all = std::uint64_t{kThreads} * kPerThread;
    EXPECT_EQ(heap.table.totals().count[kAccepted], all);
    EXPECT_EQ(in_slots + heap.table.totals().untracked, all);
}

}  // namespace
}  // namespace apikey
