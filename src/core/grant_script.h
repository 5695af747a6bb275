// Cluster mode's Redis side: the grant script (Lua, one EVALSHA per batch,
// all budgets of the batch in it) and a C++ reference model of exactly the
// same logic on an in-memory store, so the sync engine can be tested without
// Redis and the script can be tested against the model
// (tests/grant_script_redis_test.cpp compares every reply).
//
// Redis keys (PREFIX is the api_key_redis prefix, "akm:" by default):
//   PREFIX epoch           "<candidate hex>:<created ms>", set with SET NX when
//                          missing: a new value means Redis lost its data
//   PREFIX s:<node hex>    the node's last applied batch sequence number
//                          (duplicated or late batches are not applied twice)
//   PREFIX l:{<budget hex>} hash: field = absolute bucket index, value = count
//                          recorded in that bucket; PEXPIRE'd when its newest
//                          bucket leaves the window
//   PREFIX n:<zone name>   sorted set, the nodes seen syncing the limit zone:
//                          member = node hex, score = Redis ms of its latest
//                          batch (any batch, whatever its reply); members
//                          older than kNodeSeenMs are dropped, the set is
//                          PEXPIRE'd kNodeSeenMs; every reply carries its size
//
// KEYS: PREFIX epoch, PREFIX s:<node>, PREFIX n:<zone>, then one hash per
// budget. See grant_script.cpp for ARGV and the reply.
//
// Buckets. Redis counts in buckets of ceil(period / 50) ms of ITS clock
// (TIME inside the script), the same width as the limiter's buckets for
// limits over 16, whatever the limit (a hash's bucket width never changes
// with a reload's new rate). A count recorded in bucket b is treated as if it
// came at the bucket's last millisecond: it counts while
// (b + 1) * w - 1 + period > now. Every record stands for requests that came
// no later than it says: reported overdraft and re-seeded history at
// `now - age`, the age measured by the node before the batch left (so Redis'
// now - age is at or after the request); a grant in the bucket where its
// lease ENDS. So a record never leaves Redis' window before the requests it
// covers leave the real one. Rounding up to the bucket is the only
// imprecision (<= 2% of the period, as on one node). For limits up to 16 the
// node's own window is an exact log and Redis' buckets are coarser: the
// bound below does not depend on either (it never looks inside the local
// window), only liveness does, by at most a bucket.
//
// Why accepted <= N + n*D in every trailing window, whatever the local
// window regime, the interval, message delays, losses and duplicates, and
// Redis pauses:
//   Each accepted request passed a check at some moment c (Redis time): a
//   grant's check is the script run that recorded it (total + grant <= N
//   there); an overdraft's check is the script run whose reply gave the view
//   it used (view total + unacked < N). Take the window ending at t and the
//   request in it with the latest check c*. Every other request in the window
//   is either recorded by c* (its grant, its report or its re-seed; records
//   made at or after the request and counting at least until it leaves, so
//   counting at c*, which is between them), and all those are in the total
//   checked at c*; or not yet recorded at c*. A node's unrecorded requests
//   with checks <= c* were all still unacknowledged just before its first
//   reply from a run later than c* (every reply that acknowledges also
//   replaces the view), and unacknowledged overdraft is capped at D per node.
//   So at most N + n*D (N with D = 0).
//   - The node may age its view (ledger_view_total): a request still in a
//     window ending after the moment of the check is recorded, if at all, in a
//     record that still counts then, so records that left by then cover none
//     of the window. Ageing uses the reply's ARRIVAL time: never too early.
//   - A lease is used only while node_now < send_time + (expiry - now):
//     measured from when the batch LEFT the node, so never past the end of
//     the bucket it is recorded in, however slow the reply.
//   - Give-backs return only units the node will never use, and are applied
//     at most once (sequence numbers; never resent after a failed batch;
//     never across an epoch; never more than the bucket holds).
//   - A node restarted without its shared memory loses what it had not
//     reported (<= D): count it as one more node for that window.
//   tests/cluster_model_test.cpp checks the bound on random traffic with all
//   of the above, and that it is reached (it is tight).
//
// Data loss (epoch change): the script makes a new epoch and for
// quarantine_ms grants nothing, and the nodes treat the budget as full until
// a reply after it (a quarantine view never ages), so no check happens in
// [loss, epoch + quarantine). Nodes hear of the new epoch within a tick (a
// batch goes every tick, even empty), re-seed from their local windows (all
// they accepted that still counts) and drop old leases. If every node
// re-seeds within the quarantine, the proof above holds across the loss; a
// node that cannot reach Redis in time leaves at most its own window (N)
// unrecorded (measured: <= 1.8 (N + n*D) in such windows).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "redis_link.h"

namespace apikey {

constexpr unsigned kRedisBucketsPerPeriod = 50;

// A node counts as seen (status: nodes_seen) for this long after its latest
// batch reached Redis. The script's text has the same number.
constexpr std::int64_t kNodeSeenMs = 10'000;

// The width of Redis' buckets for a period: ceil(period / 50), at least 1 ms.
std::int64_t redis_bucket_ms(std::uint32_t period_ms) noexcept;

// Lua's math.floor(a / b) on integers (b > 0).
std::int64_t floor_div64(std::int64_t a, std::int64_t b) noexcept;

// The script, one call per batch. See grant_script.cpp for its text.
extern const std::string_view kGrantScript;

// Requests a node accepted and reports: `count` of them `age_ms` before the
// batch was built (or later). Unacked overdraft is one entry; re-seeding a
// Redis that lost its data sends the node's whole local window.
struct ReseedEntry {
    std::int64_t age_ms;
    std::uint32_t count;
};

// One budget in a batch.
struct GrantRequest {
    std::uint64_t budget = 0;
    std::uint32_t limit = 0;
    std::uint32_t period_ms = 0;
    std::uint32_t want = 0;       // units asked for (0: none)
    std::uint32_t lease_ms = 0;   // the grant should last at least this long
    std::uint32_t give_back = 0;  // unused units of an earlier grant
    std::int64_t give_back_bucket = 0;
    std::vector<ReseedEntry> history;  // accepted requests to record
    // Node side only (not sent): what `history` stands for.
    bool reseed = false;       // the local window (epoch change), else unacked overdraft
    std::uint32_t report = 0;  // unacked overdraft in `history` (0 when reseed)
};

struct GrantBatchHeader {
    std::uint64_t node = 0;             // random per zone, kept across reloads
    std::uint64_t seq = 0;              // strictly increasing per node (< 2^53)
    std::string epoch_seen;             // "" before the node's first reply
    std::uint64_t epoch_candidate = 0;  // random; becomes the epoch if Redis has none
    std::uint32_t quarantine_ms = 0;    // no grants this long after a new epoch
    std::string zone;                   // the limit zone's name (PREFIX n:<zone>)
};

// Builds the EVALSHA keys and arguments for a batch.
void grant_script_call(std::string_view prefix, const GrantBatchHeader &header,
                       const std::vector<GrantRequest> &budgets, std::vector<std::string> &keys,
                       std::vector<std::string> &args);

enum class GrantStatus {
    applied,        // everything in the batch was recorded; results per budget
    epoch_changed,  // epoch_seen is not Redis' epoch: nothing applied
    stale,          // the sequence number was already applied: nothing applied
};

// Per budget, all durations relative to the script's `now`.
struct GrantResult {
    std::uint32_t grant = 0;
    std::uint32_t lease_ms = 0;     // the grant may be used for this long (from now)
    std::int64_t lease_bucket = 0;  // where it was recorded (for giving back)
    std::uint32_t total = 0;        // recorded in the trailing window, this batch included
    std::uint32_t room_ms = 0;      // until total < limit (0: already)
    std::uint32_t reset_ms = 0;     // until nothing recorded counts
};

struct GrantReply {
    GrantStatus status = GrantStatus::stale;
    std::string epoch;
    std::int64_t now_ms = 0;           // Redis TIME in ms
    std::uint32_t quarantine_ms = 0;   // left of the quarantine
    std::uint64_t last_seq = 0;        // the node's last applied seq (after this batch)
    std::uint32_t nodes = 0;           // nodes seen syncing the zone (this one included)
    std::vector<GrantResult> results;  // when applied, one per budget, in order
};

// Parses the script's reply for a batch of `budgets` budgets.
bool parse_grant_reply(const RedisReply &reply, std::size_t budgets, GrantReply &out,
                       std::string &error);

// ---- the reference model ---------------------------------------------------

// The part of Redis the script touches, with expiry on the caller's clock.
// Keys expire when now > expire_at, as in Redis.
struct GrantStore {
    struct Hash {
        std::map<std::int64_t, std::int64_t> fields;  // bucket -> count
        std::int64_t expire_at = 0;                   // 0: never
    };
    struct Text {
        std::string value;
        std::int64_t expire_at = 0;
    };
    struct SortedSet {
        std::map<std::string, std::int64_t> members;  // member -> score
        std::int64_t expire_at = 0;
    };
    std::map<std::string, Hash> hashes;
    std::map<std::string, Text> strings;
    std::map<std::string, SortedSet> zsets;

    void flushall() {
        hashes.clear();
        strings.clear();
        zsets.clear();
    }
};

// Runs the script's logic on `store` at Redis time now_ms, on the very keys
// and arguments grant_script_call produced, and returns the reply the script
// would give (an error reply for malformed arguments).
RedisReply grant_model_eval(GrantStore &store, std::int64_t now_ms,
                            const std::vector<std::string> &keys,
                            const std::vector<std::string> &args);

}  // namespace apikey
