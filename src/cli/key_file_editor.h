// Text-level edits of a key file: append a record, revoke one, declare a
// prefix. Every byte outside the edit stays as it was (comments, order,
// quoting, layout), and every edit is re-read with the module's validator
// and checked to have changed exactly what it meant to, so a layout this
// code does not understand fails loudly instead of corrupting a record.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "cli/key_file_model.h"

namespace apikey::cli {

// An edit that cannot be done safely on this file; says why, without the path.
class EditError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

class KeyFileEditor {
public:
    // Parses and validates text; throws KeyFileError if nginx would refuse it.
    explicit KeyFileEditor(std::string text);

    // What a new file starts as.
    static constexpr std::string_view kNewFile = "version: 1\nkeys:\n";

    const std::string &text() const noexcept { return text_; }
    const KeyFileModel &model() const noexcept { return model_; }
    bool changed() const noexcept { return changed_; }

    // Adds a record after the last one, in the last one's layout.
    // prefix_note: see render_record.
    void append_record(const KeySpec &spec, const std::optional<std::string> &prefix_note);

    // Sets revoked_at on one record: replaces a null "revoked_at:" line or
    // inserts one after the record's last field. Fails for an unknown id and
    // for a key that is already revoked.
    void revoke(std::string_view id, std::int64_t at);

    // Adds "prefix: environment" to the prefixes map, creating the map
    // after "version:" if the file has none.
    void add_prefix(std::string_view prefix, Environment env);

    // The full record; throws EditError for an unknown id.
    KeySpec record(std::string_view id) const;


private:
    // (before, after) -> whether the edit changed exactly what it meant to.
    using Expectation = std::function<bool(const KeyFileModel &, const KeyFileModel &)>;

    // Re-reads candidate and takes it only if it loads and meets expected.
    void commit(std::string candidate, const Expectation &expected);

    std::string text_;
    KeyFileModel model_;
    std::string eol_;
    bool changed_ = false;
};

// The prefix apikeyctl noted in each record (see kPrefixNote), in the order
// of model.records; nullopt where there is none. One pass over the text.
std::vector<std::optional<std::string>> prefix_notes(std::string_view text,
                                                     const KeyFileModel &model);

}  // namespace apikey::cli
