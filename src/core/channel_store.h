// The node's on-disk copy of what it applied from the key channel, so that a
// restart while Redis is down still serves the newest published key file
// and keeps the revocations the channel delivered.
//
// Two files, each replaced atomically (a temp file in the same directory,
// created O_CREAT|O_EXCL|O_NOFOLLOW with mode 0640, written, fsynced,
// renamed over the old one, then the directory fsynced), so a crash or a
// full disk leaves either the old file or the new one, never a mix:
//   - The published copy: the published YAML key file, preceded by one
//     comment line
//         # apikey published version <n> sha256 <64 lowercase hex>
//     where the hash is SHA-256 of everything after that line. YAML ignores
//     comments, so the key-file loader reads the copy as it is; the reader
//     here checks the header and the hash, so a truncated or edited copy is
//     refused, not served.
//   - The revocations file:
//         # apikey revocations v1
//         <at> <id>          one line per entry, unix seconds, is_identifier() ids
//         # end <count>
//     The end line makes a file cut at a line boundary detectable too.
//     Reading is all-or-nothing: a broken file yields an error, no entries.
//
// Reads refuse anything but a regular file at the path (a symlink, FIFO,
// device or directory): lstat() first, an O_NOFOLLOW|O_NONBLOCK open, and
// fstat() again on the descriptor, which must be the file lstat() saw.
// Everything read is bounded before it is allocated.
//
// No function throws; failures come back as false with a reason naming the
// path. A write that failed only at the final directory fsync also returns
// false ("written, but ..."): the new file is in place, and writing it again
// is harmless. Written by worker 0's sync process, read at start.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace apikey {

// At most as many revocations as the overlay holds (revocation_overlay.h).
constexpr std::size_t kMaxStoredRevocations = 1000000;
// "<at> <id>" is at most 19 + 1 + 128 bytes; anything longer is not ours.
constexpr std::size_t kMaxRevocationLine = 200;

struct StoredRevocation {
    std::string id;
    std::int64_t at = 0;  // unix seconds, >= 0
    bool operator==(const StoredRevocation &o) const noexcept { return id == o.id && at == o.at; }
};

// Writes `content` (a published key file) with its header line. sha256_hex
// must be the lowercase SHA-256 of content: it is checked, since a copy
// whose header disagrees with its body would only be refused when read.
// The whole file stays within kMaxKeyFileBytes (key_file.h).
bool write_published_copy(const std::string &path, std::uint64_t version,
                          std::string_view sha256_hex, std::string_view content,
                          std::string &error) noexcept;

// The version and hash of the copy at path, after checking the header line
// (read with a bound) and that the rest of the file hashes to it. The body
// is streamed through the hash, not kept. False when there is no copy to
// trust: `missing` tells "nothing at the path" (a node that never applied a
// version; error empty) from a copy that is refused (error says why).
bool read_published_version(const std::string &path, std::uint64_t &version,
                            std::string &sha256_hex, bool &missing, std::string &error) noexcept;

// The same, and the content after the header, as it was published (empty
// unless true): what it checked is then what the caller parses.
bool read_published_copy(const std::string &path, std::uint64_t &version, std::string &sha256_hex,
                         std::string &content, bool &missing, std::string &error) noexcept;

// Renames `from` over `to` (same directory) and syncs the directory, so the
// new file survives a power cut. False with a reason.
bool replace_file(const std::string &from, const std::string &to, std::string &error) noexcept;

// At most kMaxStoredRevocations entries, each with an is_identifier() id
// and a time >= 0; anything else is refused before a byte is written.
bool write_revocations(const std::string &path, const std::vector<StoredRevocation> &entries,
                       std::string &error) noexcept;

// All entries of the file, in file order (an id may appear more than once:
// the overlay keeps the earliest time), or false with a reason and no
// entries. A missing file is no error: no revocations.
bool read_revocations(const std::string &path, std::vector<StoredRevocation> &out,
                      std::string &error) noexcept;

}  // namespace apikey
