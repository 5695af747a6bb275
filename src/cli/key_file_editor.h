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

// What revoke_all did with one id.
struct RevokeOutcome {
    enum class Status {
        revoked,          // revoked_at is now the given time
        unknown_id,       // no record has this id
        already_revoked,  // revoked_at was already at or before the given time; kept
        refused,          // the record cannot be edited safely; see reason
    };
    std::string id;
    Status status = Status::unknown_id;
    // revoked: revoked_at before the edit (kNever, or the later time a
    // scheduled revocation was set for); already_revoked: since when.
    std::int64_t previous = kNever;
    std::string reason;  // unless revoked: why, naming the id but not the file
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

    // Revokes, as of `at`, every key in ids that is not revoked by then, in
    // one edit: fills a null "revoked_at:", brings forward one scheduled
    // after `at` (the earlier revocation wins), or inserts the field after
    // the record's last one. Ids that cannot be revoked are reported in the
    // result, not thrown, so that one bad id never holds back the others.
    // One outcome per distinct id, in the order given.
    std::vector<RevokeOutcome> revoke_all(const std::vector<std::string> &ids, std::int64_t at);

    // revoke_all for one id; throws EditError with the reason if it is not
    // revoked now.
    void revoke(std::string_view id, std::int64_t at);

    // Adds "prefix: environment" to the prefixes map, creating the map
    // after "version:" if the file has none.
    void add_prefix(std::string_view prefix, Environment env);

    // The full record; throws EditError for an unknown id.
    KeySpec record(std::string_view id) const;

private:
    // (before, after) -> whether the edit changed exactly what it meant to.
    using Expectation = std::function<bool(const KeyFileModel &, const KeyFileModel &)>;

    // Re-reads candidate and takes it only if it loads and meets expected;
    // otherwise leaves everything as it was and says why.
    std::optional<std::string> try_commit(std::string candidate, const Expectation &expected);
    // try_commit, throwing EditError instead.
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
