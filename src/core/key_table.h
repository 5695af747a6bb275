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

struct LimitOverride {
    StrRef category;
    std::uint32_t count;
    std::uint32_t period_seconds;
};

struct KeyRecord {
    Digest hash;
    ScopeSet scopes;
    std::int64_t created_at;  // kUnknownTime when absent
    std::int64_t expires_at;  // kNever when absent
    std::int64_t revoked_at;  // kNever when absent
    StrRef id;
    StrRef owner;
    StrRef organization;       // len 0: a personal key
    std::uint32_t limits_off;  // first LimitOverride of this key
    std::uint16_t limits_count;
    std::uint8_t plan;      // index into plan names, kNoPlan when absent
    std::uint8_t networks;  // allowed_ips: IpNetworks stored right after the id's
                            // bytes in the string area; 0: any address
};

struct PrefixEntry {
    StrRef text;
    Environment environment;
    std::uint8_t reserved[7];
};

struct TableHeader {
    std::uint32_t magic;
    std::uint32_t layout_version;
    std::uint64_t image_size;
    std::uint64_t build_id;  // distinct for every table built by a process
    std::uint32_t key_count;
    std::uint32_t bucket_mask;  // bucket count - 1, a power of two
    std::uint32_t scope_count;
    std::uint32_t plan_count;
    std::uint32_t prefix_count;
    std::uint32_t limit_count;
    std::uint64_t buckets_off;
    std::uint64_t records_off;
    std::uint64_t limits_off;
    std::uint64_t scope_names_off;
    std::uint64_t plan_names_off;
    std::uint64_t prefixes_off;
    std::uint64_t strings_off;
};

static_assert(std::is_trivially_copyable_v<KeyRecord>);
static_assert(std::is_trivially_copyable_v<TableHeader>);
static_assert(sizeof(KeyRecord) == 104, "KeyRecord is part of the shared memory layout");
static_assert(kMaxPlans < kNoPlan && kMaxAllowedIps <= 0xff);

constexpr std::uint32_t kTableMagic = 0x5441'4b31;  // "1KAT"
// 2: plan narrowed to one byte, allowed_ips (KeyRecord::networks) added.
constexpr std::uint32_t kTableLayoutVersion = 2;

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

    // Open addressing over the digest's first bytes (already uniform) with
    // linear probing; load factor at most 1/2, so a miss ends within a few slots.
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
        return at<IpNetwork>(header().strings_off + record.id.off + record.id.len);
    }

private:
    template <typename T>
    const T *at(std::uint64_t off) const noexcept {
        return reinterpret_cast<const T *>(base_ + off);
    }

    const unsigned char *base_ = nullptr;
};

inline std::uint64_t bucket_hash(const Digest &digest) noexcept {
    std::uint64_t h;
    std::memcpy(&h, digest.data(), sizeof h);
    return h;
}

}  // namespace apikey
