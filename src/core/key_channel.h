// The key channel: how a key file's changes reach every nginx node through
// Redis. The key file stays the source of truth; Redis is only the bus.
// apikeyctl publishes the file's current content as a version, and each
// revocation as soon as it is written to the file; every node's sync process
// follows the channel's stream (follow_channel, each tick), puts revocations
// into its overlay at once and installs a newer version once it is fetched
// and verified.
//
// Redis keys (PREFIX as api_key_redis prefix=, default "akm:"; the {channel}
// hash tag keeps them all in one cluster slot, so the publish script may
// touch them together):
//   PREFIX k:{CH}:log              the stream, XADD ... MAXLEN ~ 10000
//   PREFIX k:{CH}:blob:SHA256:I    chunk I (from 0) of a version's content,
//                                  4 MiB each but the last, content-addressed
//                                  (publishing the same bytes again reuses them)
//   PREFIX k:{CH}:version          the newest version number published
//   PREFIX k:{CH}:blobs            the contents whose chunks are kept, newest
//                                  first ("SHA256:CHUNKS")
// Blobs have no expiry: the newest version's content must stay fetchable
// for as long as it is the newest, however quiet the channel (a node that
// starts or reconnects a month later still needs it), and Redis' volatile-*
// eviction policies never evict a key without one. Instead the publish
// script deletes the chunks of all but the kChannelKeptContents newest
// contents, in the same atomic step that appends the entry, so Redis holds a
// bounded number of copies of the file. A node that is so far behind that a
// version's chunks are gone refuses that entry ("chunk missing") and takes
// the newer one that follows it in the stream.
//
// Stream entries (field order as written; a reader accepts any order):
//   type version v N sha256 HEX size BYTES chunks K [sig BASE64]
//   type revoke  id KEY_ID at UNIX_SECONDS          [sig BASE64]
// N: the publisher's max(now in unix ms, newest version + 1); K: exactly
// ceil(BYTES / 4 MiB); HEX: 64 lowercase hex digits; numbers in decimal
// without leading zeros; KEY_ID as the key file allows ids; BASE64: the
// standard alphabet with padding, 88 characters (64 bytes).
//
// The signature (Ed25519, ed25519.h) covers this message, every line ending
// in "\n" (the values cannot hold one, and each is checked strictly, so one
// message means one entry):
//   "apikey-channel-v1\n" CH "\n" "version\n" N "\n" HEX "\n" BYTES "\n" K "\n"
//   "apikey-channel-v1\n" CH "\n" "revoke\n" KEY_ID "\n" UNIX_SECONDS "\n"
// The channel name is in it, so an entry cannot be replayed into another
// channel; the version number is in it and nodes refuse a version at or
// below the one they loaded, so an old version cannot be replayed either.
// Replaying a revocation only revokes again. With verify set, whoever can
// write to Redis can delay a change (delete chunks, trim the stream), but
// never add a key or undo a revocation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ed25519.h"
#include "redis_link.h"

namespace apikey {

constexpr std::string_view kChannelDefaultPrefix = "akm:";
constexpr std::size_t kChannelChunkBytes = 4 * 1024 * 1024;
constexpr std::uint64_t kChannelMaxVersionBytes = 1024ull * 1024 * 1024;
constexpr std::size_t kChannelStreamMaxLen = 10000;  // XADD MAXLEN ~
constexpr std::size_t kChannelKeptContents = 3;      // the newest and two before it
constexpr std::size_t kChannelMaxEntriesPerRead = 10000;
// Fetches a follow_channel call tries before it gives up on older versions
// of the same read: each may cost up to max_version_bytes.
constexpr std::size_t kChannelMaxFetchAttempts = 3;

// 1 to 64 of A-Z a-z 0-9 _ . -
bool is_channel_name(std::string_view name) noexcept;

std::string channel_stream_key(std::string_view prefix, std::string_view channel);
std::string channel_blob_key(std::string_view prefix, std::string_view channel,
                             std::string_view sha256_hex, std::uint64_t index);
std::string channel_version_key(std::string_view prefix, std::string_view channel);
std::string channel_blobs_key(std::string_view prefix, std::string_view channel);

// ceil(size / kChannelChunkBytes)
std::uint64_t channel_chunk_count(std::uint64_t size) noexcept;

// 64 lowercase hex digits of SHA-256(content).
std::string sha256_hex(std::string_view content);

// The signed messages (see above).
std::string version_signed_message(std::string_view channel, std::uint64_t version,
                                   std::string_view sha256_hex, std::uint64_t size,
                                   std::uint64_t chunks);
std::string revoke_signed_message(std::string_view channel, std::string_view id, std::int64_t at);

// The field/value pairs of an entry, as XADD takes them, signed when sign
// is set. Throw std::runtime_error if signing fails.
std::vector<std::string> version_entry_fields(std::string_view channel, std::uint64_t version,
                                              std::string_view sha256_hex, std::uint64_t size,
                                              const Ed25519Signer *sign);
std::vector<std::string> revoke_entry_fields(std::string_view channel, std::string_view id,
                                             std::int64_t at, const Ed25519Signer *sign);

// ---- node side ---------------------------------------------------------

struct ChannelFollowConfig {
    std::string prefix{kChannelDefaultPrefix};
    std::string channel;
    const Ed25519Verifier *verify = nullptr;  // null: entries are not verified
    std::uint64_t max_version_bytes = kChannelMaxVersionBytes;
    std::size_t max_entries = 100;  // per call (1 to kChannelMaxEntriesPerRead)
};

struct ChannelRevocation {
    std::string id;
    std::int64_t at = 0;  // unix seconds, as written to revoked_at
};

struct ChannelVersion {
    std::uint64_t version = 0;
    std::string sha256;  // hex
    std::string content;
};

// An entry that was read and not applied. Reasons are short fixed phrases
// (naming at most a field of the protocol or a chunk number), never a value
// read from Redis, so they can be logged as they are.
struct ChannelRefusal {
    std::string entry_id;
    std::string reason;
    // Not a problem, only a version this node does not need: at or below
    // the one it loaded ("replayed or older version": a node catching up
    // or restarted, or a replay), or one a newer version of the same read
    // supersedes ("superseded by a newer version"). Count it; do not alarm.
    bool ignored = false;
};

struct ChannelFollowResult {
    // false: the XREAD, or the link while fetching a version, failed. Then
    // nothing was consumed: retry with the same last_id (the one this
    // result carries, which is the one given).
    bool ok = false;
    std::string error;
    // Where the next call starts: the id of the last entry read, refused
    // ones included, so a bad entry can never wedge a node.
    std::string last_id;
    std::vector<ChannelRevocation> revocations;  // in stream order
    // The newest version above loaded_version that was fetched and whose
    // content matched its sha256. Not parsed: the caller must load it with
    // the module's key-file reader (load_key_file) before it installs it, and
    // keep what it has if that fails; a signature proves who published the
    // bytes, not that this node's reader accepts them.
    std::optional<ChannelVersion> version;
    std::vector<ChannelRefusal> refused;
    // max_entries entries were read: there may be more, call again now
    // rather than wait for the next tick.
    bool more = false;
};

// One tick of a node: XREAD COUNT max_entries STREAMS <stream> <last_id>
// ("0-0" at first; never blocks in Redis), then every entry is parsed
// strictly and, with cfg.verify, refused unless signed with its key.
// Version entries at or below loaded_version are ignored ("replayed or
// older version"); of the others the newest is fetched (GET of each chunk)
// and checked against its size and sha256, and if that fails it is refused
// and the next newest tried (at most kChannelMaxFetchAttempts). The older
// versions of the same read are then ignored as superseded.
//
// Blocking: one XREAD, plus one GET per chunk when there is a new version.
// hiredis applies the link's timeout to each socket read, not to a whole
// reply, so a 4 MiB chunk trips it only if the transfer stalls. Memory:
// about one version's content plus one chunk.
ChannelFollowResult follow_channel(RedisLink &link, const ChannelFollowConfig &cfg,
                                   std::string_view last_id, std::uint64_t loaded_version) noexcept;

// ---- publisher side (apikeyctl) ----------------------------------------
// The link must be connected. Neither checks the content: apikeyctl
// publishes only a file the module's reader accepts.

// Stores content's chunks (those not already there), then appends a version
// entry numbered max(now in unix ms, newest version + 1) with a script that
// refuses the number unless it is above the channel's newest (then a new
// number is signed and tried again), checks the chunks are still there and
// trims the kept contents. False with error (never key material) on failure.
bool publish_version(RedisLink &link, std::string_view prefix, std::string_view channel,
                     std::string_view content, const Ed25519Signer *sign,
                     std::uint64_t &version_out, std::string &error);

// Appends one revoke entry per revocation, in MULTI/EXEC transactions of up
// to 500 (all of a transaction or none of it). On failure, error says how
// many were published before it.
bool publish_revocations(RedisLink &link, std::string_view prefix, std::string_view channel,
                         const std::vector<ChannelRevocation> &revocations,
                         const Ed25519Signer *sign, std::string &error);

// The newest version number published on the channel (0 if none): the
// larger of the version counter and the newest version entry among the
// stream's last 100.
bool newest_channel_version(RedisLink &link, std::string_view prefix, std::string_view channel,
                            std::uint64_t &version_out, std::string &error);

}  // namespace apikey
