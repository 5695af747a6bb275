// What apikeyctl knows about a key file, read with the module's own reader
// and validator (apikey::read_key_file + TableBuilder), so the CLI can never
// accept a file nginx refuses or see a record nginx does not.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "core/key_file.h"

namespace apikey::cli {

struct PrefixDecl {
    std::uint32_t line = 0;
    std::string prefix;
    Environment environment = Environment::none;
};

// One record, small on purpose: a million-key file must not turn into a
// million KeySpecs. The fingerprint lets an edit prove that it changed
// exactly the record it meant to and nothing else.
struct RecordInfo {
    std::uint32_t line = 0;
    std::string id;
    std::uint64_t fingerprint = 0;
    std::int64_t revoked_at = kNever;
};

struct KeyFileModel {
    std::vector<PrefixDecl> prefixes;
    std::vector<RecordInfo> records;
    TableImage image;  // the table nginx would load

    const RecordInfo *find(std::string_view id) const noexcept;
};

// Every field the module reads, and nothing else (not the line).
std::uint64_t fingerprint(const KeySpec &spec) noexcept;

// Reads and validates `text` exactly as the module does; throws KeyFileError
// (line + reason). on_key, when set, sees every full record in file order.
KeyFileModel parse_key_file(std::string_view text,
                            const std::function<void(const KeySpec &)> &on_key = {});

}  // namespace apikey::cli
