// Reading and validating the YAML key file (schema in SPEC.md).
#pragma once

#include <cstdint>
#include <istream>
#include <stdexcept>
#include <string>
#include <string_view>

#include "table_builder.h"

namespace apikey {

// Files above this are refused before parsing: a key file is a list of
// records, and a million keys take about 250 MB of YAML.
constexpr std::uint64_t kMaxKeyFileBytes = 1024ull * 1024 * 1024 - 1;

// What the reader reports; the module builds a table from it, apikeyctl reads it too.
class KeyFileSink {
public:
    virtual ~KeyFileSink() = default;
    virtual void on_prefix(std::uint32_t line, std::string_view prefix, Environment env) = 0;
    virtual void on_key(const KeySpec &spec) = 0;
};

// Feeds the document through the sink; throws KeyFileError (line + reason)
// for anything that is not exactly the schema. Plain block-style files take
// the fast subset reader (yaml_subset.h), everything else yaml-cpp.
void read_key_file(std::string_view text, KeyFileSink &sink);
void read_key_file(std::istream &in, KeyFileSink &sink);

// "path:line: reason", the form nginx -t, reloads and apikeyctl print.
class KeyFileLoadError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Opens, size-checks, parses, validates and compiles a key file.
TableImage load_key_file(const std::string &path);

}  // namespace apikey
