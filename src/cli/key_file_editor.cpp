#include "cli/key_file_editor.h"

#include <cstring>
#include <unordered_map>
#include <utility>

#include "cli/record_writer.h"

namespace apikey::cli {

namespace {

constexpr std::size_t npos = std::string_view::npos;

struct Line {
    std::size_t begin = 0;  // offset of the first byte
    std::size_t end = 0;    // offset of the '\n' (or the end of the text)
    std::size_t next = 0;   // offset of the following line
    std::size_t indent = 0;
    std::string_view content;  // after the indentation, without '\r' and trailing blanks

    bool blank() const noexcept { return content.empty(); }
    bool comment() const noexcept { return !content.empty() && content.front() == '#'; }
};

Line line_at(std::string_view text, std::size_t begin) {
    Line l;
    l.begin = begin;
    const void *nl = std::memchr(text.data() + begin, '\n', text.size() - begin);
    l.end = nl ? static_cast<std::size_t>(static_cast<const char *>(nl) - text.data())
               : text.size();
    l.next = nl ? l.end + 1 : text.size();
    std::string_view raw = text.substr(begin, l.end - begin);
    while (l.indent < raw.size() && raw[l.indent] == ' ') l.indent++;
    l.content = raw.substr(l.indent);
    while (!l.content.empty() && (l.content.back() == ' ' || l.content.back() == '\r')) {
        l.content.remove_suffix(1);
    }
    return l;
}

// Finds lines by number walking forward only, so visiting every record of a
// big file costs one pass over it, not one pass per record.
class LineCursor {
public:
    explicit LineCursor(std::string_view text) : text_(text) {}

    // 1-based line number, as KeySpec::line and KeyFileError count.
    std::size_t offset_of(std::uint32_t line) {
        while (number_ < line) {
            const void *nl = std::memchr(text_.data() + offset_, '\n', text_.size() - offset_);
            if (!nl)
                throw EditError("line " + std::to_string(line) + " is past the end of the file");
            offset_ = static_cast<std::size_t>(static_cast<const char *>(nl) - text_.data()) + 1;
            number_++;
        }
        return offset_;
    }

private:
    std::string_view text_;
    std::size_t offset_ = 0;
    std::uint32_t number_ = 1;
};

// "name:" at the start of s, followed by the end or a blank; npos otherwise.
std::size_t field_colon(std::string_view s, std::string_view name) {
    if (s.size() < name.size() + 1 || s.substr(0, name.size()) != name || s[name.size()] != ':') {
        return npos;
    }
    if (s.size() > name.size() + 1 && s[name.size() + 1] != ' ') return npos;
    return name.size();
}

bool is_null_or(std::string_view value, std::string_view empty_collection) {
    return value.empty() || value == "~" || value == "null" || value == "Null" || value == "NULL" ||
           value == empty_collection;
}

// The lines of one record of the "keys" list.
struct RecordSpan {
    std::size_t start = 0;      // offset of the line the record's map starts on
    std::size_t dash_line = 0;  // offset of the line holding its "-"
    std::size_t dash_indent = 0;
    std::size_t field_indent = 0;
    std::size_t end_fields = 0;  // after the last line with a field or value
    std::size_t end = 0;         // after the last line, comments included
    bool block = true;           // false: "- {id: ...}", which we do not edit
};

// From the line a record's map starts on (KeySpec::line): the record goes on
// while lines are blank or indented deeper than its "-".
RecordSpan span_at(std::string_view text, std::size_t start) {
    RecordSpan s;
    s.start = start;
    const Line first = line_at(text, start);
    if (first.blank()) {  // a layout only yaml-cpp reads; the caller refuses to edit it
        s.block = false;
        s.end_fields = s.end = first.next;
        return s;
    }
    if (first.content.substr(0, 2) == "- ") {
        std::size_t at = 2;
        while (at < first.content.size() && first.content[at] == ' ') at++;
        s.dash_line = start;
        s.dash_indent = first.indent;
        s.field_indent = first.indent + at;
        s.block = first.content[at] != '{';
    } else {
        // "-" alone, the map on the next line: find that "-".
        s.block = first.content.front() != '{';
        s.field_indent = first.indent;
        bool found = false;
        for (std::size_t pos = start; pos > 0;) {
            const std::size_t newline = pos - 1;  // ends the line before pos
            const std::size_t before = newline == 0 ? npos : text.rfind('\n', newline - 1);
            pos = before == npos ? 0 : before + 1;
            const Line prev = line_at(text, pos);
            if (prev.blank() || prev.comment()) continue;
            found = prev.content == "-" && prev.indent < first.indent;
            s.dash_line = pos;
            s.dash_indent = prev.indent;
            break;
        }
        if (!found) s.block = false;
    }

    s.end_fields = s.end = first.next;
    for (std::size_t pos = first.next; pos < text.size();) {
        const Line l = line_at(text, pos);
        if (!l.blank()) {
            if (l.indent <= s.dash_indent) break;
            s.end = l.next;
            if (!l.comment()) s.end_fields = l.next;
        }
        pos = l.next;
    }
    return s;
}

// Inserts lines (each ending in eol) at offset `at`, the start of a line or
// the end of the text; a last line without a newline gets one first.
std::string insert_lines(const std::string &text, std::size_t at, std::string_view lines,
                         std::string_view eol) {
    std::string out;
    out.reserve(text.size() + lines.size() + eol.size());
    out.append(text, 0, at);
    if (at == text.size() && !text.empty() && text.back() != '\n') out += eol;
    out += lines;
    out.append(text, at, npos);
    return out;
}

// A top-level "name:" line; nullopt if there is none.
std::optional<Line> top_level_field(std::string_view text, std::string_view name) {
    for (std::size_t pos = 0; pos < text.size();) {
        const Line l = line_at(text, pos);
        if (l.indent == 0 && field_colon(l.content, name) != npos) return l;
        pos = l.next;
    }
    return std::nullopt;
}

std::string value_after_colon(std::string_view content, std::string_view name) {
    std::string_view v = content.substr(name.size() + 1);
    while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
    return std::string(v);
}

}  // namespace

KeyFileEditor::KeyFileEditor(std::string text) : text_(std::move(text)) {
    model_ = parse_key_file(text_);
    const std::size_t nl = text_.find('\n');
    eol_ = nl != npos && nl > 0 && text_[nl - 1] == '\r' ? "\r\n" : "\n";
}

std::optional<std::string> KeyFileEditor::try_commit(std::string candidate,
                                                     const Expectation &expected) {
    KeyFileModel after;
    try {
        after = parse_key_file(candidate);
    } catch (const KeyFileError &e) {
        return "the edited file would not load (line " + std::to_string(e.line()) + ": " +
               e.what() + ")";
    }
    if (!expected(model_, after)) {
        return std::string(
            "the edit did not come out as intended (an unusual layout near the change?); "
            "edit the file by hand");
    }
    text_ = std::move(candidate);
    model_ = std::move(after);
    changed_ = true;
    return std::nullopt;
}

void KeyFileEditor::commit(std::string candidate, const Expectation &expected) {
    if (auto why = try_commit(std::move(candidate), expected)) {
        throw EditError(*why + "; nothing was written");
    }
}

namespace {

bool same_records(const std::vector<RecordInfo> &a, const std::vector<RecordInfo> &b,
                  std::size_t count, std::size_t except = npos) {
    if (a.size() < count || b.size() < count) return false;
    for (std::size_t i = 0; i < count; i++) {
        if (i == except) continue;
        if (a[i].id != b[i].id || a[i].fingerprint != b[i].fingerprint) return false;
    }
    return true;
}

bool same_prefixes(const std::vector<PrefixDecl> &a, const std::vector<PrefixDecl> &b,
                   std::size_t count) {
    if (a.size() < count || b.size() < count) return false;
    for (std::size_t i = 0; i < count; i++) {
        if (a[i].prefix != b[i].prefix || a[i].environment != b[i].environment) return false;
    }
    return true;
}

}  // namespace

void KeyFileEditor::append_record(const KeySpec &spec,
                                  const std::optional<std::string> &prefix_note) {
    if (model_.find(spec.id)) throw EditError("a key with id \"" + spec.id + "\" already exists");

    std::string candidate;
    if (!model_.records.empty()) {
        LineCursor cursor(text_);
        const RecordSpan last = span_at(text_, cursor.offset_of(model_.records.back().line));
        RecordLayout layout;
        layout.dash_indent = last.dash_indent;
        layout.field_indent = last.block ? last.field_indent : last.dash_indent + 2;
        candidate = insert_lines(text_, last.end, render_record(spec, prefix_note, layout, eol_),
                                 eol_);
    } else if (auto keys = top_level_field(text_, "keys")) {
        const std::string value = value_after_colon(keys->content, "keys");
        if (!is_null_or(value, "[]")) {
            throw EditError("cannot append to \"keys: " + value + "\"; write it as \"keys:\"");
        }
        candidate = text_.substr(0, keys->begin) + "keys:" + eol_ +
                    render_record(spec, prefix_note, {}, eol_) + text_.substr(keys->next);
    } else {
        candidate = insert_lines(text_, text_.size(),
                                 "keys:" + eol_ + render_record(spec, prefix_note, {}, eol_), eol_);
    }

    const std::uint64_t expected = fingerprint(spec);
    commit(std::move(candidate), [&](const KeyFileModel &before, const KeyFileModel &after) {
        const std::size_t n = before.records.size();
        return after.records.size() == n + 1 && same_records(before.records, after.records, n) &&
               after.records[n].id == spec.id && after.records[n].fingerprint == expected &&
               after.prefixes.size() == before.prefixes.size() &&
               same_prefixes(before.prefixes, after.prefixes, before.prefixes.size());
    });
}

namespace {

// One revocation as a change to the text: [from, to) becomes `text`.
struct RevokeEdit {
    std::size_t from = 0;
    std::size_t to = 0;
    std::string text;
    std::size_t record = 0;      // index in model.records
    std::size_t outcome = 0;     // index in revoke_all's result
    std::uint64_t expected = 0;  // the record's fingerprint after the edit
};

// Where the scalar after "name:" sits in the line (value_begin is the first
// byte after the colon), as [begin, end); begin == end when it is empty.
// The scalar only, so a comment after it survives the edit.
std::pair<std::size_t, std::size_t> scalar_extent(std::string_view text, std::size_t value_begin,
                                                  std::size_t content_end) {
    std::size_t b = value_begin;
    while (b < content_end && text[b] == ' ') b++;
    if (b == content_end || text[b] == '#') return {value_begin, value_begin};
    if (text[b] == '"' || text[b] == '\'') {
        const std::size_t close = text.substr(0, content_end).find(text[b], b + 1);
        // An unclosed or odd quote is left whole to the re-read to refuse.
        return {b, close == npos ? content_end : close + 1};
    }
    std::size_t e = b;
    while (e < content_end && !(text[e] == '#' && text[e - 1] == ' ')) e++;
    while (e > b && text[e - 1] == ' ') e--;
    return {b, e};
}

// The edit that sets revoked_at in one block-style record: the value of its
// "revoked_at:" line if it has one (null or a time), else a new line after
// its last field.
RevokeEdit revoked_at_edit(std::string_view text, const RecordSpan &span, const std::string &when,
                           std::string_view eol) {
    RevokeEdit edit;
    for (std::size_t pos = span.start; pos < span.end_fields;) {
        const Line l = line_at(text, pos);
        std::string_view field;
        std::size_t field_at = 0;
        if (pos == span.dash_line) {
            field_at = l.begin + span.field_indent;
            field = l.content.substr(span.field_indent - l.indent);
        } else if (l.indent == span.field_indent) {
            field_at = l.begin + l.indent;
            field = l.content;
        }
        const std::size_t colon = field_colon(field, "revoked_at");
        if (colon != npos) {
            const std::size_t value_begin = field_at + colon + 1;
            const std::size_t content_end = l.begin + l.indent + l.content.size();
            const auto [from, to] = scalar_extent(text, value_begin, content_end);
            edit.from = from;
            edit.to = to;
            edit.text = from == to ? " " + when : when;
            return edit;
        }
        pos = l.next;
    }
    edit.from = edit.to = span.end_fields;
    edit.text = std::string(span.field_indent, ' ') + "revoked_at: " + when + std::string(eol);
    return edit;
}

}  // namespace

std::vector<RevokeOutcome> KeyFileEditor::revoke_all(const std::vector<std::string> &ids,
                                                     std::int64_t at) {
    using Status = RevokeOutcome::Status;
    std::vector<RevokeOutcome> out;
    std::unordered_map<std::string_view, std::size_t> wanted;  // id -> index in out
    for (const std::string &id : ids) {
        if (!wanted.emplace(id, out.size()).second) continue;
        RevokeOutcome o;
        o.id = id;
        o.reason = "no key with id \"" + id + "\"";
        out.push_back(std::move(o));
    }

    // One walk over the records, whatever the number of ids, so revoking a
    // batch in a million-key file costs one pass, not one per id.
    const std::string when = format_time(at);
    std::vector<RevokeEdit> edits;  // in file order
    LineCursor cursor(text_);
    for (std::size_t i = 0; i < model_.records.size(); i++) {
        const RecordInfo &r = model_.records[i];
        const auto it = wanted.find(r.id);
        if (it == wanted.end()) continue;
        RevokeOutcome &o = out[it->second];
        o.previous = r.revoked_at;
        // Already in force: moving it later would un-revoke the key for a
        // while, and rewriting it to `at` would lose when it really began.
        if (r.revoked_at <= at) {
            o.status = Status::already_revoked;
            o.reason = "key \"" + o.id + "\" is already revoked since " + format_time(r.revoked_at);
            continue;
        }
        const RecordSpan span = span_at(text_, cursor.offset_of(r.line));
        if (!span.block) {
            o.status = Status::refused;
            o.reason = "key \"" + o.id + "\" (line " + std::to_string(r.line) +
                       ") is not written in block style; set \"revoked_at: " + when +
                       "\" in it by hand";
            continue;
        }
        RevokeEdit edit = revoked_at_edit(text_, span, when, eol_);
        edit.record = i;
        edit.outcome = it->second;
        o.status = Status::revoked;
        edits.push_back(std::move(edit));
    }
    if (edits.empty()) return out;

    // What each edited record must read back as: all of it as before but
    // revoked_at, so an edit that lands anywhere else is caught.
    std::size_t next = 0, index = 0;
    parse_key_file(text_, [&](const KeySpec &spec) {
        if (next < edits.size() && edits[next].record == index) {
            KeySpec revoked = spec;
            revoked.revoked_at = at;
            edits[next++].expected = fingerprint(revoked);
        }
        index++;
    });

    std::string candidate;
    candidate.reserve(text_.size() + edits.size() * (when.size() + 32));
    std::size_t copied = 0;
    for (const RevokeEdit &e : edits) {
        candidate.append(text_, copied, e.from - copied);
        if (e.from == text_.size() && !text_.empty() && text_.back() != '\n') candidate += eol_;
        candidate += e.text;
        copied = e.to;
    }
    candidate.append(text_, copied, npos);

    const auto why = try_commit(
        std::move(candidate), [&](const KeyFileModel &before, const KeyFileModel &after) {
            const std::size_t n = before.records.size();
            if (after.records.size() != n || after.prefixes.size() != before.prefixes.size() ||
                !same_prefixes(before.prefixes, after.prefixes, before.prefixes.size())) {
                return false;
            }
            std::size_t e = 0;
            for (std::size_t i = 0; i < n; i++) {
                std::uint64_t want = before.records[i].fingerprint;
                if (e < edits.size() && edits[e].record == i) want = edits[e++].expected;
                if (after.records[i].id != before.records[i].id ||
                    after.records[i].fingerprint != want) {
                    return false;
                }
            }
            return true;
        });
    if (!why) return out;

    if (edits.size() == 1) {
        RevokeOutcome &o = out[edits[0].outcome];
        o.status = Status::refused;
        o.reason = "key \"" + o.id + "\" cannot be revoked safely: " + *why;
        return out;
    }
    // Some record's layout defeats the edit; one at a time finds which, and
    // still revokes the rest.
    for (const RevokeEdit &e : edits) {
        out[e.outcome] = revoke_all({out[e.outcome].id}, at).front();
    }
    return out;
}

void KeyFileEditor::revoke(std::string_view id, std::int64_t at) {
    const RevokeOutcome o = revoke_all({std::string(id)}, at).front();
    if (o.status != RevokeOutcome::Status::revoked) throw EditError(o.reason);
}

void KeyFileEditor::add_prefix(std::string_view prefix, Environment env) {
    for (const PrefixDecl &p : model_.prefixes) {
        if (p.prefix == prefix)
            throw EditError("prefix \"" + std::string(prefix) + "\" is already declared");
    }
    const std::string entry = yaml_scalar(prefix) + ": " + std::string(environment_name(env));

    std::string candidate;
    const auto section = top_level_field(text_, "prefixes");
    if (!model_.prefixes.empty()) {
        if (!section) throw EditError("cannot find the \"prefixes:\" line");
        LineCursor cursor(text_);
        const Line last = line_at(text_, cursor.offset_of(model_.prefixes.back().line));
        if (last.begin == section->begin) {
            // prefixes: {a: live, b: test} on one line
            const std::size_t close = last.begin + last.indent + last.content.size() - 1;
            if (text_[close] != '}')
                throw EditError("cannot add to the \"prefixes:\" map as written");
            candidate = text_.substr(0, close) + ", " + entry + text_.substr(close);
        } else {
            candidate = insert_lines(text_, last.next, std::string(last.indent, ' ') + entry + eol_,
                                     eol_);
        }
    } else if (section) {
        const std::string value = value_after_colon(section->content, "prefixes");
        if (!is_null_or(value, "{}")) {
            throw EditError("cannot add to \"prefixes: " + value + "\"; write it as \"prefixes:\"");
        }
        candidate = text_.substr(0, section->begin) + "prefixes:" + eol_ + "  " + entry + eol_ +
                    text_.substr(section->next);
    } else {
        const auto version = top_level_field(text_, "version");
        if (!version)
            throw EditError("cannot find the \"version:\" line to add \"prefixes:\" after");
        candidate = insert_lines(text_, version->next, "prefixes:" + eol_ + "  " + entry + eol_,
                                 eol_);
    }

    commit(std::move(candidate), [&](const KeyFileModel &before, const KeyFileModel &after) {
        const std::size_t n = before.prefixes.size();
        return after.prefixes.size() == n + 1 &&
               same_prefixes(before.prefixes, after.prefixes, n) &&
               after.prefixes[n].prefix == prefix && after.prefixes[n].environment == env &&
               after.records.size() == before.records.size() &&
               same_records(before.records, after.records, before.records.size());
    });
}

KeySpec KeyFileEditor::record(std::string_view id) const {
    if (!model_.find(id)) throw EditError("no key with id \"" + std::string(id) + "\"");
    KeySpec found;
    parse_key_file(text_, [&](const KeySpec &spec) {
        if (spec.id == id) found = spec;
    });
    return found;
}

std::vector<std::optional<std::string>> prefix_notes(std::string_view text,
                                                     const KeyFileModel &model) {
    std::vector<std::optional<std::string>> notes;
    notes.reserve(model.records.size());
    LineCursor cursor(text);
    for (const RecordInfo &r : model.records) {
        const RecordSpan span = span_at(text, cursor.offset_of(r.line));
        std::optional<std::string> note;
        for (std::size_t pos = span.start; pos < span.end;) {
            const Line l = line_at(text, pos);
            if (l.indent > span.dash_indent &&
                l.content.substr(0, kPrefixNote.size()) == kPrefixNote) {
                std::string_view v = l.content.substr(kPrefixNote.size());
                note = v == kNoPrefix ? std::string() : std::string(v);
            }
            pos = l.next;
        }
        notes.push_back(std::move(note));
    }
    return notes;
}

}  // namespace apikey::cli
