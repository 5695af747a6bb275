#include "yaml_subset.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/mark.h>

#include <cstring>
#include <string>
#include <utility>

namespace apikey {

namespace {

struct Line {
    std::string_view content;  // from the first non-blank byte, trailing blanks cut
    std::size_t indent = 0;
    std::size_t pos = 0;  // byte offset of content
    int number = 0;       // 0-based, as yaml-cpp counts
};

[[noreturn]] void bail(const char *why) { throw NotInSubset(why); }

// The tags yaml-cpp gives: "?" for plain scalars and collections, "!" for
// quoted scalars. Built once, not once per event.
const std::string &plain_tag() {
    static const std::string tag("?");
    return tag;
}
const std::string &quoted_tag() {
    static const std::string tag("!");
    return tag;
}

// What the reader needs to know about the whole text first: whether it is
// printable ASCII and newlines only, and whether a '#' appears anywhere (if
// not, no line needs looking at for comments).
struct TextScan {
    bool printable = true;
    bool has_hash = false;
};

TextScan scan_text(std::string_view text) noexcept {
    const auto *p = reinterpret_cast<const unsigned char *>(text.data());
    const std::size_t n = text.size();
    std::size_t i = 0;
    TextScan scan;
#if defined(__GNUC__)
    // 16 bytes at a time (GCC and Clang vector extensions: SSE2 on x86-64,
    // NEON on arm64), 256 between two looks at the result.
    typedef unsigned char Bytes __attribute__((vector_size(16)));
    typedef signed char Flags __attribute__((vector_size(16)));
    for (; i + 256 <= n; i += 256) {
        Flags bad = {}, hash = {};
        for (std::size_t k = 0; k < 256; k += 16) {
            Bytes v;
            std::memcpy(&v, p + i + k, sizeof v);
            bad |= ((v < 0x20) & (v != '\n')) | (v >= 0x7f);
            hash |= v == '#';
        }
        std::uint64_t words[4];
        std::memcpy(words, &bad, 16);
        std::memcpy(words + 2, &hash, 16);
        if (words[0] | words[1]) {
            scan.printable = false;
            return scan;
        }
        if (words[2] | words[3]) scan.has_hash = true;
    }
#endif
    for (; i < n; i++) {
        const unsigned char u = p[i];
        if ((u < 0x20 && u != '\n') || u >= 0x7f) {
            scan.printable = false;
            return scan;
        }
        if (u == '#') scan.has_hash = true;
    }
    return scan;
}

// Characters for is_safe_plain and key_colon, by what they may start or end.
enum : unsigned char {
    kIndicator = 1,  // may not start a plain scalar
    kFlow = 2,       // ends a plain scalar inside a flow collection
    kColon = 4,
    kOpener = 8,  // a quote or flow opener: not a "key: value" line for the subset
};

struct CharTable {
    unsigned char kind[256];
    constexpr CharTable() : kind() {
        for (char c : std::string_view("-?:,[]{}#&*!|>'\"%@`"))
            kind[static_cast<unsigned char>(c)] |= kIndicator;
        for (char c : std::string_view(",[]{}?")) kind[static_cast<unsigned char>(c)] |= kFlow;
        kind[static_cast<unsigned char>(':')] |= kColon;
        for (char c : std::string_view("\"'[{")) kind[static_cast<unsigned char>(c)] |= kOpener;
    }
};
constexpr CharTable kChars;

unsigned char kind_of(char c) noexcept { return kChars.kind[static_cast<unsigned char>(c)]; }

bool is_null_word(std::string_view s) noexcept {
    return s == "~" || s == "null" || s == "Null" || s == "NULL";
}

// A plain scalar that means the same to every YAML reader: no indicator
// first, nothing that could start a comment, a mapping or a flow item.
bool is_safe_plain(std::string_view s, bool in_flow) noexcept {
    if (s.empty()) return false;
    if (kind_of(s.front()) & kIndicator) return false;
    if (s.back() == ':') return false;
    if (!in_flow) {
        // Only ": " matters: memchr skips to each ':' (a hash has one).
        const char *p = s.data();
        const char *end = p + s.size();
        while ((p = static_cast<const char *>(std::memchr(p, ':', end - p))) != nullptr) {
            if (++p < end && *p == ' ') return false;
        }
        return true;
    }
    // yaml-cpp ends a plain scalar at '?' inside a flow collection.
    for (std::size_t i = 0; i < s.size(); i++) {
        const unsigned char kind = kind_of(s[i]);
        if (!(kind & (kColon | kFlow))) continue;
        if (kind & kFlow) return false;
        if (i + 1 < s.size() && s[i + 1] == ' ') return false;  // ": "
    }
    return true;
}

// Emit = false only checks that the text is inside the subset, so that the
// real pass never has to stop half-way through feeding the handler.
template <bool Emit>
class Reader {
public:
    Reader(std::string_view text, const TextScan &scan, YAML::EventHandler *handler)
        : text_(text),
          h_(handler),
          views_(dynamic_cast<ScalarViewHandler *>(handler)),
          has_hash_(scan.has_hash) {
        load_line();
    }

    void document() {
        if (!has_line_ || line_.indent != 0) bail("no top-level map at column 0");
        emit(&YAML::EventHandler::OnDocumentStart, mark(line_.number, 0, line_.pos));
        block_node(0);
        if (has_line_) bail("content after the top-level map");
        emit(&YAML::EventHandler::OnDocumentEnd);
    }

private:
    static YAML::Mark mark(int line, std::size_t column, std::size_t pos) {
        YAML::Mark m;
        m.pos = static_cast<int>(pos);
        m.line = line;
        m.column = static_cast<int>(column);
        return m;
    }

    YAML::Mark mark_at(std::size_t column_in_line) const {
        return mark(line_.number, line_.indent + column_in_line, line_.pos + column_in_line);
    }

    // Where yaml-cpp places an empty value: at the next token.
    YAML::Mark next_token_mark() const {
        if (has_line_) return mark(line_.number, line_.indent, line_.pos);
        const bool ends_with_newline = text_.empty() || text_.back() == '\n';
        return mark(ends_with_newline ? line_count_ : line_count_ - 1, 0, text_.size());
    }

    // Moves to the next line that holds content; blank lines and full-line
    // comments are skipped. The text is printable ASCII and newlines
    // (printable_text), so only a '#' in a content line is left to refuse.
    void load_line() {
        has_line_ = false;
        while (next_ < text_.size()) {
            std::size_t end = text_.find('\n', next_);
            if (end == std::string_view::npos) end = text_.size();
            std::string_view raw = text_.substr(next_, end - next_);
            std::size_t start = next_;
            next_ = end + 1;
            int number = line_count_++;

            std::size_t indent = 0;
            while (indent < raw.size() && raw[indent] == ' ') indent++;
            std::string_view content = raw.substr(indent);
            while (!content.empty() && content.back() == ' ') content.remove_suffix(1);
            if (content.empty() || content.front() == '#') continue;
            if (has_hash_ && std::memchr(content.data(), '#', content.size()) != nullptr) {
                bail("a comment after content");
            }
            if (number == 0 && (content.substr(0, 3) == "---" || content.front() == '%')) {
                bail("document markers and directives");
            }
            if (indent == 0 && (content.substr(0, 3) == "---" || content.substr(0, 3) == "...")) {
                bail("document markers");
            }
            line_ = {content, indent, start + indent, number};
            has_line_ = true;
            return;
        }
    }

    static bool is_item(std::string_view content) noexcept {
        return content == "-" || content.substr(0, 2) == "- ";
    }

    // Offset of the ':' that makes content a "key: value" line, or npos.
    static std::size_t key_colon(std::string_view content) noexcept {
        for (std::size_t i = 0; i < content.size(); i++) {
            const unsigned char kind = kind_of(content[i]);
            if (!(kind & (kOpener | kColon))) continue;
            if (kind & kOpener) return std::string_view::npos;
            if (i + 1 == content.size() || content[i + 1] == ' ') return i;
        }
        return std::string_view::npos;
    }

    // Key files nest four levels deep; anything deeper goes to yaml-cpp,
    // whose events the schema refuses at the first level too many, so no
    // input can drive either reader's recursion far.
    void block_node(std::size_t indent) {
        if (++depth_ > kMaxDepth) bail("nesting deeper than a key file needs");
        if (is_item(line_.content)) {
            sequence(indent);
        } else {
            map(indent);
        }
        depth_--;
    }

    // After a "key:" with nothing behind it: a nested block, a sequence at
    // the same indentation (YAML allows it for maps' values), or null.
    void nested_value(std::size_t parent_indent) {
        if (has_line_ && line_.indent > parent_indent) {
            block_node(line_.indent);
        } else if (has_line_ && line_.indent == parent_indent && is_item(line_.content)) {
            sequence(parent_indent);
        } else {
            emit(&YAML::EventHandler::OnNull, next_token_mark(), 0);
        }
    }

    void map(std::size_t indent) {
        emit(&YAML::EventHandler::OnMapStart, mark_at(0), plain_tag(), 0,
             YAML::EmitterStyle::Block);
        while (has_line_ && line_.indent == indent) {
            std::size_t colon = key_colon(line_.content);
            if (colon == std::string_view::npos) bail("a map line without \"key:\"");
            std::string_view key = line_.content.substr(0, colon);
            while (!key.empty() && key.back() == ' ') key.remove_suffix(1);
            if (!is_safe_plain(key, false)) bail("a key that is not a plain scalar");
            scalar(key, mark_at(0), false);

            std::size_t value_at = colon + 1;
            while (value_at < line_.content.size() && line_.content[value_at] == ' ') value_at++;
            if (value_at < line_.content.size()) {
                inline_value(line_.content.substr(value_at), value_at);
                load_line();
            } else {
                load_line();
                nested_value(indent);
            }
        }
        if (has_line_ && line_.indent > indent) bail("indentation");
        emit(&YAML::EventHandler::OnMapEnd);
    }

    void sequence(std::size_t indent) {
        emit(&YAML::EventHandler::OnSequenceStart, mark_at(0), plain_tag(), 0,
             YAML::EmitterStyle::Block);
        while (has_line_ && line_.indent == indent && is_item(line_.content)) {
            if (line_.content == "-") {
                load_line();
                if (has_line_ && line_.indent > indent) {
                    block_node(line_.indent);
                } else {
                    emit(&YAML::EventHandler::OnNull, next_token_mark(), 0);
                }
                continue;
            }
            std::size_t at = 1;
            while (at < line_.content.size() && line_.content[at] == ' ') at++;
            std::string_view item = line_.content.substr(at);
            if (is_item(item)) bail("a sequence inside a sequence item");
            if (key_colon(item) != std::string_view::npos) {
                // "- key: value" starts a map whose keys line up after "- ".
                line_.content = item;
                line_.indent += at;
                line_.pos += at;
                map(line_.indent);
            } else {
                inline_value(item, at);
                load_line();
            }
        }
        if (has_line_ && line_.indent > indent) bail("indentation");
        emit(&YAML::EventHandler::OnSequenceEnd);
    }

    void scalar(std::string_view text, const YAML::Mark &m, bool quoted) {
        if (!quoted && is_null_word(text)) {
            emit(&YAML::EventHandler::OnNull, m, 0);
        } else {
            if constexpr (Emit) {
                if (views_ != nullptr) {
                    views_->OnScalarView(m, quoted, text);
                } else {
                    h_->OnScalar(m, quoted ? quoted_tag() : plain_tag(), 0, std::string(text));
                }
            }
        }
    }

    // A scalar, quoted scalar, or one-line flow collection starting at
    // column `at` of the current line.
    void inline_value(std::string_view v, std::size_t at) {
        switch (v.front()) {
        case '[': flow(v, at, false); return;
        case '{': flow(v, at, true); return;
        case '"':
        case '\'': quoted_scalar(v, at); return;
        default:
            if (!is_safe_plain(v, false)) bail("a plain scalar outside the subset");
            scalar(v, mark_at(at), false);
        }
    }

    void quoted_scalar(std::string_view v, std::size_t at) {
        const char q = v.front();
        if (v.size() < 2 || v.back() != q) bail("a quoted scalar that does not end on its line");
        std::string_view inner = v.substr(1, v.size() - 2);
        if (inner.find(q) != std::string_view::npos || inner.find('\\') != std::string_view::npos) {
            bail("escapes in quoted scalars");
        }
        scalar(inner, mark_at(at), true);
    }

    void flow(std::string_view v, std::size_t at, bool is_map) {
        const char close = is_map ? '}' : ']';
        if (v.back() != close) bail("a flow collection that does not end on its line");
        if (is_map) {
            emit(&YAML::EventHandler::OnMapStart, mark_at(at), plain_tag(), 0,
                 YAML::EmitterStyle::Flow);
        } else {
            emit(&YAML::EventHandler::OnSequenceStart, mark_at(at), plain_tag(), 0,
                 YAML::EmitterStyle::Flow);
        }
        std::string_view inner = v.substr(1, v.size() - 2);
        std::size_t base = at + 1;
        bool blank = inner.find_first_not_of(' ') == std::string_view::npos;
        while (!blank) {
            std::size_t comma = inner.find(',');
            std::string_view item = inner.substr(0, comma);
            std::size_t lead = item.find_first_not_of(' ');
            if (lead == std::string_view::npos) bail("an empty flow item");
            item.remove_prefix(lead);
            while (item.back() == ' ') item.remove_suffix(1);
            std::size_t col = base + lead;
            if (is_map) {
                std::size_t colon = item.find(": ");
                if (colon == std::string_view::npos) bail("a flow map entry without \": \"");
                std::string_view key = item.substr(0, colon);
                while (!key.empty() && key.back() == ' ') key.remove_suffix(1);
                std::string_view value = item.substr(colon + 2);
                std::size_t vlead = value.find_first_not_of(' ');
                if (vlead == std::string_view::npos) bail("an empty flow map value");
                value.remove_prefix(vlead);
                if (!is_safe_plain(key, true)) bail("a flow key outside the subset");
                scalar(key, mark_at(col), false);
                flow_scalar(value, col + colon + 2 + vlead);
            } else {
                flow_scalar(item, col);
            }
            if (comma == std::string_view::npos) break;
            base += comma + 1;
            inner.remove_prefix(comma + 1);
        }
        if (is_map) {
            emit(&YAML::EventHandler::OnMapEnd);
        } else {
            emit(&YAML::EventHandler::OnSequenceEnd);
        }
    }

    void flow_scalar(std::string_view item, std::size_t col) {
        if (item.front() == '"' || item.front() == '\'') {
            quoted_scalar(item, col);
        } else if (is_safe_plain(item, true)) {
            scalar(item, mark_at(col), false);
        } else {
            bail("a flow item outside the subset");
        }
    }

    template <typename... Params, typename... Args>
    void emit(void (YAML::EventHandler::*event)(Params...), Args &&...args) {
        if constexpr (Emit) (h_->*event)(std::forward<Args>(args)...);
    }

    static constexpr int kMaxDepth = 8;

    std::string_view text_;
    YAML::EventHandler *h_;
    ScalarViewHandler *views_;
    bool has_hash_;
    int depth_ = 0;
    std::size_t next_ = 0;
    int line_count_ = 0;
    Line line_;
    bool has_line_ = false;
};

}  // namespace

void read_yaml_subset(std::string_view text, YAML::EventHandler &handler) {
    // Printable ASCII and newlines only, comments included: yaml-cpp guesses
    // the encoding from the first bytes (a NUL makes it UTF-16), and
    // everything else is its to read.
    const TextScan scan = scan_text(text);
    if (!scan.printable) bail("a byte outside printable ASCII");
    Reader<false>(text, scan, nullptr).document();
    Reader<true>(text, scan, &handler).document();
}

void read_yaml_subset_at_once(std::string_view text, YAML::EventHandler &handler) {
    const TextScan scan = scan_text(text);
    if (!scan.printable) bail("a byte outside printable ASCII");
    Reader<true>(text, scan, &handler).document();
}

bool in_yaml_subset(std::string_view text) {
    const TextScan scan = scan_text(text);
    if (!scan.printable) return false;
    try {
        Reader<false>(text, scan, nullptr).document();
    } catch (const NotInSubset &) {
        return false;
    }
    return true;
}

}  // namespace apikey
