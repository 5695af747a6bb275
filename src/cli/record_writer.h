// Key records as text, in the plain block style the module's fast reader
// (core/yaml_subset.cpp) takes, so files apikeyctl writes load in one pass.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/table_builder.h"

namespace apikey::cli {

// A scalar that reads back as exactly `s` (a key-file identifier: printable
// ASCII, no blanks, quotes or backslashes). Plain when every reader agrees
// on it, else double-quoted, which never needs an escape for such text.
std::string yaml_scalar(std::string_view s);

std::string format_rate(const Rate &rate);      // "500r/m"
std::string format_time(std::int64_t seconds);  // "2026-11-01T00:00:00Z"

// "[203.0.113.0/24, \"2001:db8::/32\"]": canonical text, IPv6 quoted (a
// plain scalar with colons is one that readers may split).
std::string format_networks(const std::vector<IpNetwork> &networks);

// Where a record's "- " and its fields sit; new records copy the file's.
struct RecordLayout {
    std::size_t dash_indent = 2;
    std::size_t field_indent = 4;
};

// apikeyctl keeps each key's prefix in a comment inside its record: the file
// stores only hashes, so nothing else could tell `list` a key's environment
// or `rotate` which prefix to reuse. The module skips comments.
constexpr std::string_view kPrefixNote = "# prefix: ";
constexpr std::string_view kNoPrefix = "(none)";  // no key can start with "("

// The record's lines, each ending in eol. Optional fields are written only
// when set; prefix_note adds the comment above as the last line.
std::string render_record(const KeySpec &spec, const std::optional<std::string> &prefix_note,
                          const RecordLayout &layout = {}, std::string_view eol = "\n");

}  // namespace apikey::cli
