// Rules the module applies at configuration time and when it reloads a key
// file, kept out of the nginx glue so that unit tests reach them: what a
// name may look like, how large a key zone must be, and when a changed key
// file is loaded.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "shared_tables.h"

namespace apikey {

// Ids, owners, plans, scopes and categories end up in logs, headers and
// JSON: printable ASCII without blanks, quotes or backslashes, at most 128
// bytes, keeps every one of them safe.
bool is_identifier(std::string_view s) noexcept;

// A header api_key_source can name: letters, digits, '-' and '_', at most 64.
bool is_header_name(std::string_view s) noexcept;

// The name of the $http_ variable nginx gives a header ("X-Api-Key" ->
// "http_x_api_key"), compared without building it.
bool is_header_variable(std::string_view variable, std::string_view header) noexcept;

// api_key_realm goes into a quoted-string of WWW-Authenticate.
bool is_realm(std::string_view s) noexcept;

// A sixteenth of a key zone counts per-key usage for api_key_status (at
// least 64 keys).
std::size_t usage_capacity_for(std::size_t zone_size) noexcept;

// Shared memory a slab pool of this page size needs for key tables: its own
// header and page descriptors, and whole pages per allocation.
struct ZoneSizing {
    std::size_t page;             // ngx_pagesize
    std::size_t page_descriptor;  // sizeof(ngx_slab_page_t)

    // `tables` tables of this image size (two: the one in use and its
    // successor at a reload or under check=), the zone state and the usage
    // counters.
    std::size_t needed(std::size_t image_size, std::size_t usage_capacity,
                       unsigned tables = 2) const noexcept;
    // The smallest zone size that holds two tables and the usage counters
    // that size implies (they grow with the zone).
    std::size_t smallest_zone(std::size_t image_size) const noexcept;
};

// What check= does with the key file's current version.
enum class LoadDecision {
    up_to_date,      // the version in force, or one that failed and waits for a change
    forget_failure,  // the file is back to the version in force
    report_missing,  // cannot be stat()ed
    load,
};
LoadDecision decide_load(bool exists, const FileIdentity &file, const FileIdentity &loaded,
                         bool failed_for_file, bool gave_up_on_file, std::int64_t failed_at,
                         std::int64_t now, std::int64_t retry_seconds) noexcept;

}  // namespace apikey
