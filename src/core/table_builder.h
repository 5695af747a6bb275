// Builds a KeyTable image from validated records, in one pass per key, so a
// million-key file never exists as a tree of small objects.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "key_table.h"
#include "rate.h"

namespace apikey {

// A validation error that belongs to a line of the key file.
class KeyFileError : public std::runtime_error {
public:
    KeyFileError(std::uint32_t line, const std::string &reason)
        : std::runtime_error(reason), line_(line) {}
    std::uint32_t line() const noexcept { return line_; }

private:
    std::uint32_t line_;
};

struct KeySpec {
    std::uint32_t line = 0;  // where the record starts, for error messages
    Digest hash{};
    std::string id;
    std::string owner;
    std::string organization;
    std::string plan;
    std::vector<std::string> scopes;
    std::vector<std::pair<std::string, Rate>> limits;
    std::vector<IpNetwork> allowed_ips;  // empty: any address
    std::int64_t created_at = kUnknownTime;
    std::int64_t expires_at = kNever;
    std::int64_t revoked_at = kNever;
};

// The image, 8-byte aligned so its structs can be read in place.
class TableImage {
public:
    const void *data() const noexcept { return words_.get(); }
    std::size_t size() const noexcept { return size_; }
    KeyTable table() const noexcept { return KeyTable(data()); }

private:
    friend class TableBuilder;
    struct Free {
        void operator()(std::uint64_t *p) const noexcept;
    };
    // calloc()ed: a large image comes as fresh zero pages, written once.
    std::unique_ptr<std::uint64_t[], Free> words_;
    std::size_t size_ = 0;
};

class TableBuilder {
public:
    TableBuilder();

    // Room for about this many keys and string bytes, so that the vectors
    // never grow by copying; only a hint (pages never written cost nothing).
    void reserve(std::size_t keys, std::size_t string_bytes);

    // Both throw KeyFileError naming the offending line.
    void add_prefix(std::uint32_t line, std::string_view prefix, Environment env);
    void add_key(const KeySpec &spec);

    // Throws KeyFileError for duplicate ids or hashes.
    TableImage build();

private:
    // Open addressing over strings of strings_ (StrOff), for owners,
    // organizations and limit categories: no std::string per lookup.
    class Interner {
    public:
        // The offset of s in `strings`, stored there by `store` if new.
        template <typename Store>
        std::uint32_t intern(std::string_view s, const std::string &strings, Store &&store);

    private:
        void grow(const std::string &strings);
        std::vector<std::uint64_t> slots_;  // hash << 32 | offset; 0: free
        std::size_t used_ = 0;
    };

    StrRef store(std::string_view s);
    StrOff store_counted(std::uint32_t line, std::string_view s);
    StrOff intern_counted(std::uint32_t line, std::string_view s);
    std::uint32_t scope_set_of(const KeySpec &spec);
    PackedTime time(const KeySpec &spec, const char *name, std::int64_t t, std::int64_t absent);

    std::vector<KeyRecord> records_;  // in file order until build()
    std::vector<std::uint32_t> lines_;
    std::vector<std::uint32_t> id_hashes_;
    std::vector<LimitOverride> limits_;
    std::vector<PrefixEntry> prefixes_;
    std::vector<StrRef> scope_names_;
    std::vector<StrRef> plan_names_;
    std::vector<ScopeSet> scope_sets_;
    std::unordered_map<std::string, std::uint32_t> scope_bits_;
    std::unordered_map<std::string, std::uint8_t> plan_ids_;
    struct ScopeSetHash {
        std::size_t operator()(const std::pair<std::uint64_t, std::uint64_t> &w) const noexcept {
            return static_cast<std::size_t>(w.first * 0x9e3779b97f4a7c15ull ^ w.second);
        }
    };
    std::unordered_map<std::pair<std::uint64_t, std::uint64_t>, std::uint32_t, ScopeSetHash>
        scope_set_ids_;
    Interner interned_;
    std::string strings_;
    // Neighbouring keys mostly share scopes and plan.
    std::vector<std::string> last_scopes_;
    std::uint32_t last_scope_set_ = 0;
    std::string last_plan_;
    std::uint8_t last_plan_id_ = kNoPlan;
};

}  // namespace apikey
