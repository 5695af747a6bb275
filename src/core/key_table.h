// The compiled key table: one contiguous, pointer-free image (offsets only),
// so the same bytes work in a heap buffer, in a unit test, and in a shared
// memory zone mapped at different addresses by different processes.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <string_view>
#include <type_traits>

#include "digest.h"
#include "ip_network.h"

namespace apikey {

enum class Environment : std::uint8_t { none = 0, live = 1, test = 2 };

std::string_view environment_name(Environment env) noexcept;

constexpr std::size_t kMaxScopes = 128;  // distinct scopes per key file
constexpr std::size_t kMaxPlans = 64;    // distinct plans per key file
constexpr std::int64_t kNever = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t kUnknownTime = std::numeric_limits<std::int64_t>::min();
constexpr std::uint8_t kNoPlan = 0xff;

// One bit per interned scope name: a scope check is two AND-NOTs.
struct ScopeSet {
    std::uint64_t words[2];

    void set(unsigned bit) noexcept { words[bit >> 6] |= std::uint64_t{1} << (bit & 63); }
    bool test(unsigned bit) const noexcept { return words[bit >> 6] >> (bit & 63) & 1; }
    bool contains_all(const ScopeSet &need) const noexcept {
        return ((need.words[0] & ~words[0]) | (need.words[1] & ~words[1])) == 0;
    }
};

struct StrRef {
    std::uint32_t off;  // into the string area
    std::uint32_t len;
};

// A string of a key record: the offset of a length byte in the string area,
// the bytes follow it. Strings a record names are identifiers (at most 128
// bytes), so 4 bytes stand for the 8 of a StrRef. Offset 0 is the empty
// string (a personal key's organization).
struct StrOff {
    std::uint32_t off;
    bool empty() const noexcept { return off == 0; }
};

struct LimitOverride {
    StrRef category;
    std::uint32_t count;
    std::uint32_t period_seconds;
};

// A time of a key record in 5 bytes: 0 when absent, else seconds since the
// epoch plus one. Key file times lie in 1970..9999 (timestamp.h): 38 bits.
struct PackedTime {
    std::uint8_t bytes[5];

    static constexpr std::int64_t kMax = (std::int64_t{1} << 40) - 2;
    static bool fits(std::int64_t t) noexcept { return t >= 0 && t <= kMax; }
    // t must fit, or be `absent`.
    static PackedTime pack(std::int64_t t, std::int64_t absent) noexcept {
        const std::uint64_t v = t == absent ? 0 : static_cast<std::uint64_t>(t) + 1;
        PackedTime p;
        for (int i = 0; i < 5; i++) p.bytes[i] = static_cast<std::uint8_t>(v >> (8 * i));
        return p;
    }
    std::int64_t get(std::int64_t absent) const noexcept {
        std::uint32_t low;
        std::memcpy(&low, bytes, sizeof low);
        const std::uint64_t v = std::uint64_t{bytes[4]} << 32 | low;
        return v == 0 ? absent : static_cast<std::int64_t>(v - 1);
    }
};

// 72 bytes a key; what many keys share (scope sets, owners, organizations,
// plans, limit categories) is stored once.
struct KeyRecord {
    Digest hash;
    PackedTime created;  // read them through created_at(), expires_at(), revoked_at()
    PackedTime expires;
    PackedTime revoked;
    std::uint8_t networks;  // allowed_ips: IpNetworks stored right after the id's
                            // bytes in the string area; 0: any address
    StrOff id;              // not interned: the bytes after it are this record's
    StrOff owner;
    StrOff organization;       // empty: a personal key
    std::uint32_t scope_set;   // index into the table's distinct scope sets (KeyTable::scopes)
    std::uint32_t limits_off;  // first LimitOverride of this key
    std::uint16_t limits_count;
    std::uint8_t plan;  // index into plan names, kNoPlan when absent
    std::uint8_t reserved;

    std::int64_t created_at() const noexcept { return created.get(kUnknownTime); }
    std::int64_t expires_at() const noexcept { return expires.get(kNever); }
    std::int64_t revoked_at() const noexcept { return revoked.get(kNever); }
};

struct PrefixEntry {
    StrRef text;
    Environment environment;
    std::uint8_t reserved[7];
};

// Records are stored in bucket order, bucket b holding the keys whose first
// 8 digest bytes, scaled to the bucket count, are b (so the records are
// sorted by them): the index is one uint32 per bucket, where it starts.
struct TableHeader {
    std::uint32_t magic;
    std::uint32_t layout_version;
    std::uint64_t image_size;
    std::uint64_t build_id;  // distinct for every table built by a process
    std::uint32_t key_count;
    std::uint32_t bucket_count;  // at least 1; bucket_count + 1 starts
    std::uint32_t scope_count;
    std::uint32_t plan_count;
    std::uint32_t prefix_count;
    std::uint32_t limit_count;
    std::uint32_t scope_set_count;
    std::uint32_t reserved;
    std::uint64_t buckets_off;
    std::uint64_t records_off;
    std::uint64_t limits_off;
    std::uint64_t scope_sets_off;
    std::uint64_t scope_names_off;
    std::uint64_t plan_names_off;
    std::uint64_t prefixes_off;
    std::uint64_t strings_off;
};

static_assert(std::is_trivially_copyable_v<KeyRecord>);
static_assert(std::is_trivially_copyable_v<TableHeader>);
static_assert(sizeof(KeyRecord) == 72, "KeyRecord is part of the shared memory layout");
static_assert(alignof(KeyRecord) == 4 && sizeof(KeyRecord) % 8 == 0);
static_assert(kMaxPlans < kNoPlan && kMaxAllowedIps <= 0xff);

constexpr std::uint32_t kTableMagic = 0x5441'4b31;  // "1KAT"
// 2: plan narrowed to one byte, allowed_ips (KeyRecord::networks) added.
// 3: 72-byte records in bucket order; length-prefixed strings, interned
//    scope sets, 5-byte times.
constexpr std::uint32_t kTableLayoutVersion = 3;

// A read-only view of an image. Cheap to copy; never owns memory.
class KeyTable {
public:
    KeyTable() noexcept = default;
    explicit KeyTable(const void *image) noexcept
        : base_(static_cast<const unsigned char *>(image)) {}

    bool valid() const noexcept;
    const TableHeader &header() const noexcept { return *at<TableHeader>(0); }
    std::uint64_t build_id() const noexcept { return header().build_id; }
    std::uint32_t key_count() const noexcept { return header().key_count; }

    // The digest's bucket, then a scan of its records (two on average, next
    // to each other); the full digest is compared.
    const KeyRecord *find(const Digest &digest) const noexcept;

    const KeyRecord &record(std::uint32_t index) const noexcept {
        return at<KeyRecord>(header().records_off)[index];
    }
    std::uint32_t index_of(const KeyRecord &record) const noexcept {
        return static_cast<std::uint32_t>(&record - at<KeyRecord>(header().records_off));
    }

    std::string_view text(StrRef ref) const noexcept {
        return {reinterpret_cast<const char *>(base_ + header().strings_off + ref.off), ref.len};
    }
    std::string_view text(StrOff ref) const noexcept {
        const unsigned char *p = base_ + header().strings_off + ref.off;
        return {reinterpret_cast<const char *>(p + 1), *p};
    }

    const ScopeSet &scopes(const KeyRecord &record) const noexcept {
        return at<ScopeSet>(header().scope_sets_off)[record.scope_set];
    }
    std::uint32_t scope_set_count() const noexcept { return header().scope_set_count; }

    std::uint32_t scope_count() const noexcept { return header().scope_count; }
    std::string_view scope_name(std::uint32_t bit) const noexcept {
        return text(at<StrRef>(header().scope_names_off)[bit]);
    }
    int find_scope(std::string_view name) const noexcept;  // -1 if no key has it

    std::uint32_t plan_count() const noexcept { return header().plan_count; }
    std::string_view plan_name(std::uint8_t plan) const noexcept {
        return plan == kNoPlan ? std::string_view{}
                               : text(at<StrRef>(header().plan_names_off)[plan]);
    }
    int find_plan(std::string_view name) const noexcept;

    std::uint32_t prefix_count() const noexcept { return header().prefix_count; }
    const PrefixEntry &prefix(std::uint32_t i) const noexcept {
        return at<PrefixEntry>(header().prefixes_off)[i];
    }

    // The environment of the longest declared prefix the key starts with;
    // false when the file declares prefixes and none matches.
    bool environment_of(std::string_view key, Environment &env) const noexcept;

    const LimitOverride *limits(const KeyRecord &record) const noexcept {
        return at<LimitOverride>(header().limits_off) + record.limits_off;
    }

    // record.networks entries. Packed after the id (never interned, so the
    // bytes after it belong to this record alone): a key without
    // allowed_ips costs no byte, and one with them no index.
    const IpNetwork *networks(const KeyRecord &record) const noexcept {
        const unsigned char *id = base_ + header().strings_off + record.id.off;
        return reinterpret_cast<const IpNetwork *>(id + 1 + *id);
    }

private:
    template <typename T>
    const T *at(std::uint64_t off) const noexcept {
        return reinterpret_cast<const T *>(base_ + off);
    }

    const unsigned char *base_ = nullptr;
};

// The first 8 bytes of a digest (uniform already), scaled to [0, buckets):
// buckets in the order of these bytes, as little-endian numbers.
inline std::uint32_t bucket_of(const Digest &digest, std::uint32_t buckets) noexcept {
    std::uint64_t h;
    std::memcpy(&h, digest.data(), sizeof h);
    return static_cast<std::uint32_t>((static_cast<unsigned __int128>(h) * buckets) >> 64);
}

}  // namespace apikey
