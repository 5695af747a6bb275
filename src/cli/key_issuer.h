// Issuing a key into a key file: which prefix it gets, the random key and
// id, the record, and proof (through the module's own lookup) that nginx
// will recognise the key. Shared by `create` and `rotate`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "cli/key_file_editor.h"
#include "cli/key_generator.h"

namespace apikey::cli {

struct PrefixChoice {
    std::string prefix;
    Environment environment = Environment::none;
    bool declare = false;  // add "prefix: environment" to the file first
};

// given: --prefix; wanted: --environment (none when not given).
// With declared prefixes: a given prefix must be one of them, unless
// may_declare and wanted name its environment; without one, the only
// prefix (of the wanted environment) is taken. A file without prefixes
// takes any prefix, and gets a prefixes map only while it has no keys:
// declaring one would invalidate every existing key that lacks it.
// Throws EditError saying what to do instead.
PrefixChoice choose_prefix(const KeyFileModel &model, const std::optional<std::string> &given,
                           Environment wanted, bool may_declare);

struct IssueRequest {
    KeySpec attributes;  // owner ... expires_at; an empty id means "generate one"
    PrefixChoice prefix;
    std::size_t random_chars = kDefaultRandomChars;
    RandomBytes random = openssl_random_bytes;
};

struct IssuedKey {
    std::string key;  // the only copy: print it once, never store it
    std::string id;
};

// Declares the prefix if asked, appends the record (with a prefix note) and
// checks that the module's identify_key + table lookup finds it by the key.
IssuedKey issue_key(KeyFileEditor &editor, const IssueRequest &request);

// The prefix a record's key was issued with: apikeyctl's note, else the
// file's only prefix; nullopt when that cannot be told.
std::optional<std::string> known_prefix(const KeyFileModel &model,
                                        const std::optional<std::string> &note);

}  // namespace apikey::cli
