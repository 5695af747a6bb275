// Builds a KeyTable image from validated records, in one pass per key, so a
// million-key file never exists as a tree of small objects.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
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
    const void *data() const noexcept { return words_.data(); }
    std::size_t size() const noexcept { return size_; }
    KeyTable table() const noexcept { return KeyTable(data()); }

private:
    friend class TableBuilder;
    std::vector<std::uint64_t> words_;
    std::size_t size_ = 0;
};

class TableBuilder {
public:
    // Both throw KeyFileError naming the offending line.
    void add_prefix(std::uint32_t line, std::string_view prefix, Environment env);
    void add_key(const KeySpec &spec);

    // Throws KeyFileError for duplicate ids or hashes.
    TableImage build();

private:
    std::uint32_t intern(std::string_view s);
    StrRef store(std::string_view s);

    std::vector<KeyRecord> records_;
    std::vector<std::uint32_t> lines_;
    std::vector<LimitOverride> limits_;
    std::vector<PrefixEntry> prefixes_;
    std::vector<StrRef> scope_names_;
    std::vector<StrRef> plan_names_;
    std::unordered_map<std::string, std::uint32_t> scope_bits_;
    std::unordered_map<std::string, std::uint8_t> plan_ids_;
    std::unordered_map<std::string, StrRef> interned_;
    std::string strings_;
};

}  // namespace apikey
