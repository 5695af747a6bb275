// The revocation overlay (revocation_overlay.h) against heap memory (and one
// shared mapping across fork()): adds, earlier times, full tables, lookups
// that only answer "revoked" from the revocation time on, retain() keeping
// and dropping entries, ids of every length and of any bytes, long collision
// runs, memory copied to another address, and readers racing a writer that
// appends and rewrites without pause, where a kept revocation must never be
// missed and a key never revoked never reported, except by the documented
// fail-closed answer (counted).
#include <gtest/gtest.h>

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/revocation_overlay.h"

namespace apikey {
namespace {

using Add = RevocationOverlay::Add;
using Check = RevocationOverlay::Check;

// revocation_overlay_bytes(capacity) of 8-byte aligned heap memory, filled
// with garbage so format() has to clear it.
class HeapOverlay {
public:
    explicit HeapOverlay(std::uint32_t capacity, bool format = true)
        : bytes_(revocation_overlay_bytes(capacity)), memory_(new std::uint64_t[bytes_ / 8 + 1]) {
        std::memset(memory_.get(), 0xab, bytes_);
        if (format) revocation_overlay_format(memory_.get(), capacity);
        overlay = RevocationOverlay(memory_.get());
    }
    void *memory() { return memory_.get(); }
    std::size_t bytes() const { return bytes_; }
    RevocationOverlayHeader &header() {
        return *static_cast<RevocationOverlayHeader *>(static_cast<void *>(memory_.get()));
    }
    RevocationBuffer &buffer(unsigned index) {
        auto *base = reinterpret_cast<unsigned char *>(memory_.get()) +
                     sizeof(RevocationOverlayHeader);
        const std::size_t one = sizeof(RevocationBuffer) +
                                header().table_size * sizeof(RevocationSlot);
        return *reinterpret_cast<RevocationBuffer *>(base + index * one);
    }
    RevocationSlot *slots(unsigned index) {
        return reinterpret_cast<RevocationSlot *>(&buffer(index) + 1);
    }
    unsigned active() { return static_cast<unsigned>(header().current & 1); }

    RevocationOverlay overlay;

private:
    std::size_t bytes_;
    std::unique_ptr<std::uint64_t[]> memory_;
};

std::map<std::string, std::int64_t> entries(const RevocationOverlay &overlay) {
    std::map<std::string, std::int64_t> out;
    overlay.for_each([&](std::string_view id, std::int64_t at) {
        EXPECT_TRUE(out.emplace(std::string(id), at).second) << "listed twice: " << id;
    });
    return out;
}

TEST(RevocationOverlay, Layout) {
    EXPECT_EQ(revocation_overlay_bytes(0), 0u);
    EXPECT_EQ(revocation_overlay_bytes(kMaxRevocationCapacity + 1), 0u);
    EXPECT_GT(revocation_overlay_bytes(kMaxRevocationCapacity), 0u);
    // A power of two of slots, capacity at most 3/4 of it, at least 8.
    const std::pair<std::uint32_t, std::uint32_t> sizes[] = {
        {1, 8}, {6, 8}, {7, 16}, {12, 16}, {13, 32}, {768, 1024}, {769, 2048}};
    for (const auto &[capacity, table] : sizes) {
        HeapOverlay h(capacity);
        EXPECT_EQ(h.header().table_size, table) << "capacity " << capacity;
        EXPECT_EQ(revocation_overlay_bytes(capacity),
                  sizeof(RevocationOverlayHeader) +
                      2 * (sizeof(RevocationBuffer) + table * sizeof(RevocationSlot)));
    }
}

TEST(RevocationOverlay, FormatAndValid) {
    HeapOverlay h(100, false);
    EXPECT_FALSE(revocation_overlay_valid(h.memory(), 100)) << "garbage is not an overlay";
    revocation_overlay_format(h.memory(), 100);
    EXPECT_TRUE(revocation_overlay_valid(h.memory(), 100));
    EXPECT_FALSE(revocation_overlay_valid(h.memory(), 101)) << "another capacity: reformat";
    EXPECT_FALSE(revocation_overlay_valid(nullptr, 100));
    EXPECT_TRUE(h.overlay.empty());
    EXPECT_EQ(h.overlay.size(), 0u);
    EXPECT_EQ(h.overlay.capacity(), 100u);
    EXPECT_EQ(h.overlay.unsure_answers(), 0u);
    EXPECT_FALSE(h.overlay.revoked("key_a", 1000, nullptr));
    EXPECT_FALSE(RevocationOverlay().revoked("key_a", 1000, nullptr)) << "unattached: clear";
}

TEST(RevocationOverlay, AddAndLookup) {
    HeapOverlay h(16);
    RevocationOverlay &o = h.overlay;
    EXPECT_EQ(o.add("key_a", 100), Add::added);
    EXPECT_EQ(o.size(), 1u);
    EXPECT_FALSE(o.empty());
    std::int64_t at = -1;
    EXPECT_TRUE(o.revoked("key_a", 100, &at));
    EXPECT_EQ(at, 100);
    EXPECT_TRUE(o.revoked("key_a", 5000, &at));
    EXPECT_EQ(at, 100);
    at = -1;
    EXPECT_EQ(o.check("key_a", 99, &at), Check::clear) << "revoked only from its time on";
    EXPECT_EQ(at, -1) << "at is left alone when the answer is clear";
    EXPECT_FALSE(o.revoked("key_b", 5000, &at));
    EXPECT_FALSE(o.revoked("key_", 5000, &at));
    EXPECT_FALSE(o.revoked("key_aa", 5000, &at));
    EXPECT_TRUE(o.revoked("key_a", 100, nullptr)) << "at may be null";
    // A second view over the same memory (another worker) sees the same.
    RevocationOverlay other(h.memory());
    EXPECT_TRUE(other.revoked("key_a", 100, &at));
    EXPECT_EQ(other.size(), 1u);
}

TEST(RevocationOverlay, TimesOnlyMoveEarlier) {
    HeapOverlay h(16);
    RevocationOverlay &o = h.overlay;
    EXPECT_EQ(o.add("key_a", 100), Add::added);
    EXPECT_EQ(o.add("key_a", 100), Add::already);
    EXPECT_EQ(o.add("key_a", 200), Add::already) << "a later time changes nothing";
    EXPECT_EQ(o.add("key_a", 50), Add::earlier);
    EXPECT_EQ(o.size(), 1u);
    std::int64_t at = 0;
    EXPECT_TRUE(o.revoked("key_a", 60, &at));
    EXPECT_EQ(at, 50);
    EXPECT_EQ(o.add("key_a", 100), Add::already);
    EXPECT_TRUE(o.revoked("key_a", 50, &at));
    EXPECT_EQ(at, 50);
}

TEST(RevocationOverlay, ScheduledRevocation) {
    HeapOverlay h(16);
    EXPECT_EQ(h.overlay.add("key_a", 1000), Add::added);
    EXPECT_EQ(h.overlay.check("key_a", 999, nullptr), Check::clear);
    EXPECT_EQ(h.overlay.check("key_a", 1000, nullptr), Check::revoked);
}

TEST(RevocationOverlay, FullRefusesNewIdsOnly) {
    HeapOverlay h(5);
    RevocationOverlay &o = h.overlay;
    for (int i = 0; i < 5; i++) EXPECT_EQ(o.add("key_" + std::to_string(i), 10 + i), Add::added);
    EXPECT_EQ(o.add("key_5", 1), Add::full);
    EXPECT_EQ(o.size(), 5u);
    EXPECT_FALSE(o.revoked("key_5", 100, nullptr));
    EXPECT_EQ(o.add("key_2", 1), Add::earlier) << "existing entries still move earlier";
    EXPECT_EQ(o.add("key_3", 100), Add::already);
    std::int64_t at = 0;
    EXPECT_TRUE(o.revoked("key_2", 1, &at));
    EXPECT_EQ(at, 1);
    for (int i = 0; i < 5; i++) EXPECT_TRUE(o.revoked("key_" + std::to_string(i), 100, nullptr));
}

TEST(RevocationOverlay, InvalidIds) {
    HeapOverlay h(16);
    RevocationOverlay &o = h.overlay;
    EXPECT_EQ(o.add("", 1), Add::invalid);
    EXPECT_EQ(o.add(std::string(kMaxRevokedId + 1, 'x'), 1), Add::invalid);
    EXPECT_TRUE(o.empty());
    ASSERT_EQ(o.add("x", 1), Add::added);  // not empty: the lookups below probe
    EXPECT_FALSE(o.revoked("", 100, nullptr));
    EXPECT_FALSE(o.revoked(std::string(kMaxRevokedId + 1, 'x'), 100, nullptr));
}

TEST(RevocationOverlay, IdsOfAnyLengthAndAnyBytes) {
    HeapOverlay h(64);
    RevocationOverlay &o = h.overlay;
    std::vector<std::string> ids = {
        "a",
        std::string(1, '\0'),
        std::string(1, '\xff'),
        std::string(kMaxRevokedId, 'z'),
        std::string(kMaxRevokedId - 1, 'z') + "y",  // differs in the very last byte
        std::string("a\0b", 3),
        std::string("abcdefgh\0", 9),  // the padding of "abcdefgh", but one byte longer
        "abcdefgh",
    };
    std::string all_bytes;
    for (int c = 0; c < 128; c++) all_bytes.push_back(static_cast<char>(c * 2 + 1));
    ids.push_back(all_bytes);
    for (std::size_t i = 0; i < ids.size(); i++) {
        ASSERT_EQ(o.add(ids[i], static_cast<std::int64_t>(i)), Add::added) << i;
    }
    for (std::size_t i = 0; i < ids.size(); i++) {
        std::int64_t at = -1;
        EXPECT_TRUE(o.revoked(ids[i], 1000, &at)) << i;
        EXPECT_EQ(at, static_cast<std::int64_t>(i)) << i;
    }
    const std::string absent[] = {
        "b",
        std::string(2, '\0'),
        std::string("a\0c", 3),
        "abcdefg",
        std::string(kMaxRevokedId - 1, 'z'),
        std::string(kMaxRevokedId - 1, 'z') + "x",
        all_bytes.substr(0, 127),
    };
    for (const std::string &id : absent) EXPECT_FALSE(o.revoked(id, 1000, nullptr)) << id;
    const auto listed = entries(o);
    EXPECT_EQ(listed.size(), ids.size());
    for (std::size_t i = 0; i < ids.size(); i++) {
        ASSERT_EQ(listed.count(ids[i]), 1u) << i;
        EXPECT_EQ(listed.at(ids[i]), static_cast<std::int64_t>(i));
    }
}

TEST(RevocationOverlay, LongCollisionRuns) {
    // Capacity 96: 128 slots. 60 ids with one home slot, and 30 more with
    // the next one, make one run of 90 slots that wraps around the table.
    HeapOverlay h(96);
    RevocationOverlay &o = h.overlay;
    const std::uint32_t mask = h.header().table_size - 1;
    std::vector<std::string> home, next, unused;
    for (int i = 0; home.size() < 60 || next.size() < 30 || unused.size() < 10; i++) {
        std::string id = "k" + std::to_string(i);
        const std::uint32_t slot = static_cast<std::uint32_t>(revocation_id_hash(id)) & mask;
        if (slot == 120 && home.size() < 60) {
            home.push_back(id);
        } else if (slot == 121 && next.size() < 30) {
            next.push_back(id);
        } else if ((slot == 120 || slot == 121) && unused.size() < 10) {
            unused.push_back(id);
        }
    }
    for (const auto &id : home) ASSERT_EQ(o.add(id, 1), Add::added);
    for (const auto &id : next) ASSERT_EQ(o.add(id, 2), Add::added);
    for (const auto &id : home) EXPECT_TRUE(o.revoked(id, 5, nullptr)) << id;
    for (const auto &id : next) EXPECT_TRUE(o.revoked(id, 5, nullptr)) << id;
    for (const auto &id : unused) EXPECT_FALSE(o.revoked(id, 5, nullptr)) << id;
    EXPECT_EQ(o.add(home[59], 0), Add::earlier) << "found at the end of the run";
    // A rewrite lays the run out again; every id is still found.
    o.retain([](std::string_view, std::int64_t) { return true; });
    for (const auto &id : home) EXPECT_TRUE(o.revoked(id, 5, nullptr)) << id;
    for (const auto &id : next) EXPECT_TRUE(o.revoked(id, 5, nullptr)) << id;
    for (const auto &id : unused) EXPECT_FALSE(o.revoked(id, 5, nullptr)) << id;
    EXPECT_EQ(o.unsure_answers(), 0u);
}

TEST(RevocationOverlay, AHashMatchIsNotEnough) {
    HeapOverlay h(16);
    ASSERT_EQ(h.overlay.add("alpha", 1), Add::added);
    // Give the slot another id under the same hash: a lookup of "alpha"
    // must compare the id, not trust the hash.
    RevocationSlot *table = h.slots(h.active());
    bool changed = false;
    for (std::uint32_t i = 0; i < h.header().table_size; i++) {
        if (table[i].hash == 0) continue;
        std::memcpy(table[i].id, "alphb", 5);
        changed = true;
    }
    ASSERT_TRUE(changed);
    EXPECT_FALSE(h.overlay.revoked("alpha", 5, nullptr));
    EXPECT_FALSE(h.overlay.revoked("alphb", 5, nullptr)) << "filed under another hash";
}

TEST(RevocationOverlay, RetainKeepsAndDrops) {
    HeapOverlay h(10);
    RevocationOverlay &o = h.overlay;
    for (int i = 0; i < 10; i++) ASSERT_EQ(o.add("key_" + std::to_string(i), 100 + i), Add::added);
    EXPECT_EQ(o.add("key_10", 1), Add::full);
    const unsigned before = h.active();
    std::map<std::string, std::int64_t> asked;
    o.retain([&](std::string_view id, std::int64_t at) {
        asked.emplace(std::string(id), at);
        return (id.back() - '0') % 2 == 0;
    });
    EXPECT_NE(h.active(), before) << "rewritten into the other buffer";
    EXPECT_EQ(asked.size(), 10u) << "every entry is offered once";
    EXPECT_EQ(asked["key_3"], 103);
    EXPECT_EQ(o.size(), 5u);
    for (int i = 0; i < 10; i++) {
        std::int64_t at = 0;
        EXPECT_EQ(o.revoked("key_" + std::to_string(i), 1000, &at), i % 2 == 0) << i;
        if (i % 2 == 0) {
            EXPECT_EQ(at, 100 + i);
        }
    }
    // The room is back; adds go into the new active buffer.
    for (int i = 10; i < 15; i++) EXPECT_EQ(o.add("key_" + std::to_string(i), 1), Add::added);
    EXPECT_EQ(o.add("key_15", 1), Add::full);
    EXPECT_EQ(o.add("key_4", 7), Add::earlier);
    // And back into the first buffer.
    o.retain([](std::string_view id, std::int64_t) { return id != "key_12"; });
    EXPECT_EQ(h.active(), before);
    const auto listed = entries(o);
    const std::map<std::string, std::int64_t> expected = {
        {"key_0", 100}, {"key_2", 102}, {"key_4", 7},  {"key_6", 106}, {"key_8", 108},
        {"key_10", 1},  {"key_11", 1},  {"key_13", 1}, {"key_14", 1}};
    EXPECT_EQ(listed, expected);
    EXPECT_EQ(o.size(), 9u);
    EXPECT_FALSE(o.revoked("key_12", 1000, nullptr));
    o.retain([](std::string_view, std::int64_t) { return false; });
    EXPECT_TRUE(o.empty());
    EXPECT_FALSE(o.revoked("key_0", 1000, nullptr));
    EXPECT_EQ(h.buffer(0).seq % 2, 0u);
    EXPECT_EQ(h.buffer(1).seq % 2, 0u);
    EXPECT_EQ(o.unsure_answers(), 0u);
}

TEST(RevocationOverlay, UnsureReadsFailClosed) {
    HeapOverlay h(16);
    RevocationOverlay &o = h.overlay;
    ASSERT_EQ(o.add("key_a", 100), Add::added);
    // The active buffer odd for good: what a reader would see if the writer
    // rewrote it under every retry. The protocol never rewrites the active
    // buffer, so this stands in for losing kReadTries races in a row.
    RevocationBuffer &b = h.buffer(h.active());
    b.seq |= 1;
    std::int64_t at = 0;
    EXPECT_EQ(o.check("never_revoked", 500, &at), Check::unsure);
    EXPECT_EQ(at, 500) << "unsure answers give now as the time";
    EXPECT_TRUE(o.revoked("key_a", 500, &at)) << "fails closed";
    EXPECT_EQ(o.unsure_answers(), 2u);
    b.seq += 1;
    EXPECT_EQ(o.check("never_revoked", 500, &at), Check::clear);
    EXPECT_EQ(o.unsure_answers(), 2u);
}

TEST(RevocationOverlay, WriterThatDiedInARewrite) {
    HeapOverlay h(16);
    RevocationOverlay &o = h.overlay;
    ASSERT_EQ(o.add("key_a", 100), Add::added);
    // A rewrite of the inactive buffer left half done: its sequence odd,
    // its slots garbage. Readers never look at it; the next retain() redoes it.
    const unsigned inactive = h.active() ^ 1;
    h.buffer(inactive).seq = 7;
    std::memset(h.slots(inactive), 0x5a, h.header().table_size * sizeof(RevocationSlot));
    EXPECT_TRUE(o.revoked("key_a", 100, nullptr));
    EXPECT_FALSE(o.revoked("key_b", 100, nullptr));
    o.retain([](std::string_view, std::int64_t) { return true; });
    EXPECT_EQ(h.active(), inactive);
    EXPECT_EQ(h.buffer(inactive).seq, 8u);
    EXPECT_EQ(entries(o), (std::map<std::string, std::int64_t>{{"key_a", 100}}));
    EXPECT_TRUE(o.revoked("key_a", 100, nullptr));
    EXPECT_EQ(o.unsure_answers(), 0u);
}

TEST(RevocationOverlay, WorksAtAnyAddress) {
    HeapOverlay a(32);
    for (int i = 0; i < 20; i++)
        ASSERT_EQ(a.overlay.add("key_" + std::to_string(i), i), Add::added);
    a.overlay.retain([](std::string_view id, std::int64_t) { return id != "key_7"; });
    ASSERT_EQ(a.overlay.add("key_20", 20), Add::added);
    // Another process maps the zone elsewhere: the same bytes at another address.
    HeapOverlay b(32, false);
    std::memcpy(b.memory(), a.memory(), a.bytes());
    ASSERT_TRUE(revocation_overlay_valid(b.memory(), 32));
    RevocationOverlay o(b.memory());
    EXPECT_EQ(o.size(), 20u);
    for (int i = 0; i <= 20; i++) {
        std::int64_t at = -1;
        EXPECT_EQ(o.revoked("key_" + std::to_string(i), 100, &at), i != 7) << i;
        if (i != 7) {
            EXPECT_EQ(at, i);
        }
    }
    EXPECT_EQ(o.add("key_21", 21), Add::added);
    o.retain([](std::string_view id, std::int64_t) { return id != "key_0"; });
    EXPECT_TRUE(o.revoked("key_21", 100, nullptr));
    EXPECT_FALSE(o.revoked("key_0", 100, nullptr));
    EXPECT_TRUE(a.overlay.revoked("key_0", 100, nullptr)) << "the original is untouched";
    EXPECT_FALSE(a.overlay.revoked("key_21", 100, nullptr));
}

TEST(RevocationOverlay, SharedAcrossProcesses) {
    const std::size_t bytes = revocation_overlay_bytes(64);
    void *memory = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1,
                          0);
    ASSERT_NE(memory, MAP_FAILED);
    revocation_overlay_format(memory, 64);
    RevocationOverlay o(memory);
    ASSERT_EQ(o.add("key_parent", 1), Add::added);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        // Worker 0's sync thread in another process: sees, adds, rewrites.
        RevocationOverlay c(memory);
        int status = c.revoked("key_parent", 10, nullptr) ? 0 : 1;
        if (c.add("key_child", 2) != Add::added) status = 2;
        c.retain([](std::string_view id, std::int64_t) { return id != "key_parent"; });
        ::_exit(status);
    }
    int status = -1;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
    std::int64_t at = 0;
    EXPECT_TRUE(o.revoked("key_child", 10, &at));
    EXPECT_EQ(at, 2);
    EXPECT_FALSE(o.revoked("key_parent", 10, nullptr));
    ::munmap(memory, bytes);
}

// One writer adds kept revocations, churns entries that retain() drops and
// rewrites the table without pause; readers check that every kept
// revocation they know was added is seen (with its time or an earlier one),
// and that keys never revoked are never reported, except as `unsure`.
TEST(RevocationOverlay, ReadersRacingAWriter) {
    constexpr std::uint32_t kCapacity = 512;
    constexpr int kKept = 300;
    constexpr int kReaders = 3;
    HeapOverlay h(kCapacity);
    std::atomic<int> kept_added{0};
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> retains{0};

    std::thread writer([&] {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
        RevocationOverlay o(h.memory());
        int kept = 0;
        std::uint64_t churn = 0;
        while (std::chrono::steady_clock::now() < deadline) {
            if (kept < kKept) {
                const std::string id = "kept_" + std::to_string(kept);
                if (o.add(id, kept) != Add::added) ADD_FAILURE() << "cannot add " << id;
                if (kept % 7 == 0) o.add(id, kept - 1000);  // moves earlier
                kept_added.store(++kept, std::memory_order_release);
            }
            for (int i = 0; i < 4; i++) {
                const Add r = o.add("drop_" + std::to_string(churn++), 1);
                if (r == Add::full) break;
            }
            // Two rewrites in a row: the second rewrites the buffer that
            // readers of the first flip may still be probing.
            for (int i = 0; i < 2; i++) {
                o.retain(
                    [](std::string_view id, std::int64_t) { return id.substr(0, 5) == "kept_"; });
            }
            retains.fetch_add(2, std::memory_order_relaxed);
        }
        stop.store(true, std::memory_order_release);
    });

    std::atomic<std::uint64_t> lookups{0}, unsure{0}, missed{0}, false_positives{0};
    std::vector<std::thread> readers;
    for (int r = 0; r < kReaders; r++) {
        readers.emplace_back([&, r] {
            RevocationOverlay o(h.memory());
            std::mt19937 rng(static_cast<unsigned>(r) + 1);
            std::uint64_t n_lookups = 0, n_unsure = 0, n_missed = 0, n_false = 0;
            while (!stop.load(std::memory_order_acquire)) {
                const int known = kept_added.load(std::memory_order_acquire);
                if (known > 0) {
                    const int i = static_cast<int>(rng() % static_cast<unsigned>(known));
                    std::int64_t at = 0;
                    const Check c = o.check("kept_" + std::to_string(i), 1 << 20, &at);
                    n_lookups++;
                    if (c == Check::unsure) {
                        n_unsure++;
                    } else if (c != Check::revoked || at > i) {
                        n_missed++;
                    }
                }
                std::int64_t at = 0;
                const Check c = o.check("never_" + std::to_string(rng() % 1000), 1 << 20, &at);
                n_lookups++;
                if (c == Check::unsure) {
                    n_unsure++;
                } else if (c != Check::clear) {
                    n_false++;
                }
            }
            lookups += n_lookups;
            unsure += n_unsure;
            missed += n_missed;
            false_positives += n_false;
        });
    }
    writer.join();
    for (auto &t : readers) t.join();

    EXPECT_EQ(missed.load(), 0u) << "a kept revocation was not seen";
    EXPECT_EQ(false_positives.load(), 0u) << "a key never revoked was reported revoked";
    EXPECT_EQ(unsure.load(), h.overlay.unsure_answers());
    EXPECT_LE(unsure.load() * 1000, lookups.load()) << "fail-closed answers must stay rare";
    EXPECT_GT(retains.load(), 10u);
    EXPECT_GT(lookups.load(), 1000u);
    std::printf("[ info ] %llu lookups, %llu retains, %llu unsure\n",
                static_cast<unsigned long long>(lookups.load()),
                static_cast<unsigned long long>(retains.load()),
                static_cast<unsigned long long>(unsure.load()));
    // Every kept revocation is there at the end, with its (earliest) time.
    for (int i = 0; i < kept_added.load(); i++) {
        std::int64_t at = 0;
        ASSERT_TRUE(h.overlay.revoked("kept_" + std::to_string(i), 1 << 20, &at)) << i;
        EXPECT_EQ(at, i % 7 == 0 ? i - 1000 : i);
    }
}

}  // namespace
}  // namespace apikey
