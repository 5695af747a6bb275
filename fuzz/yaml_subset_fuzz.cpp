// libFuzzer target, differential: the fast YAML subset reader against yaml-cpp.
//
// read_yaml_subset() either throws NotInSubset without having emitted
// anything, or emits a document. In the second case yaml-cpp must accept
// the same text and emit exactly the same events: same kinds in the same
// order, same marks (line, column, byte offset), tags, anchors, values and
// collection styles, and no second document. Any difference is a crash.
//
// Marks: by default only their line numbers are compared, which is what the
// reader promises (yaml_subset.h: "same order, same line numbers") and all
// the schema handler uses. APIKEY_FUZZ_STRICT=1 compares columns and byte
// offsets too; the known difference there (the column of an empty value at
// the end of the file) is in fuzz/README.md.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/exceptions.h>
#include <yaml-cpp/mark.h>
#include <yaml-cpp/parser.h>

#include "core/yaml_subset.h"

namespace {

bool lines_only() {
    static const bool v = [] {
        const char *e = std::getenv("APIKEY_FUZZ_STRICT");
        return e == nullptr || std::string_view(e) != "1";
    }();
    return v;
}

// Every event as one line of text with all of its arguments.
class Recorder final : public YAML::EventHandler {
public:
    std::vector<std::string> events;

    void OnDocumentStart(const YAML::Mark &m) override { add("doc", m); }
    void OnDocumentEnd() override { events.push_back("enddoc"); }
    void OnNull(const YAML::Mark &m, YAML::anchor_t a) override { add("null", m, "", a); }
    void OnAlias(const YAML::Mark &m, YAML::anchor_t a) override { add("alias", m, "", a); }
    void OnScalar(const YAML::Mark &m, const std::string &tag, YAML::anchor_t a,
                  const std::string &value) override {
        add("scalar", m, tag, a);
        events.back() += " [" + value + "]";
    }
    void OnSequenceStart(const YAML::Mark &m, const std::string &tag, YAML::anchor_t a,
                         YAML::EmitterStyle::value style) override {
        add("seq", m, tag, a);
        events.back() += style_name(style);
    }
    void OnSequenceEnd() override { events.push_back("endseq"); }
    void OnMapStart(const YAML::Mark &m, const std::string &tag, YAML::anchor_t a,
                    YAML::EmitterStyle::value style) override {
        add("map", m, tag, a);
        events.back() += style_name(style);
    }
    void OnMapEnd() override { events.push_back("endmap"); }

private:
    static const char *style_name(YAML::EmitterStyle::value s) {
        switch (s) {
        case YAML::EmitterStyle::Block: return " block";
        case YAML::EmitterStyle::Flow: return " flow";
        default: return " default";
        }
    }

    void add(const char *kind, const YAML::Mark &m, const std::string &tag = "",
             YAML::anchor_t anchor = 0) {
        std::string e = kind;
        e += "@" + std::to_string(m.line);
        if (!lines_only()) {
            e += ":" + std::to_string(m.column) + "+" + std::to_string(m.pos);
        }
        e += " tag=" + tag + " anchor=" + std::to_string(anchor);
        events.push_back(std::move(e));
    }
};

[[noreturn]] void mismatch(std::string_view text, const std::vector<std::string> &subset,
                           const std::vector<std::string> &yaml_cpp, const char *why) {
    std::fprintf(stderr, "yaml_subset_fuzz: %s\n--- input (%zu bytes):\n%.*s\n", why, text.size(),
                 static_cast<int>(text.size()), text.data());
    std::size_t first = 0;
    while (first < subset.size() && first < yaml_cpp.size() && subset[first] == yaml_cpp[first]) {
        first++;
    }
    std::fprintf(stderr, "--- events differ from #%zu; subset reader:\n", first);
    for (std::size_t i = 0; i < subset.size(); i++) {
        std::fprintf(stderr, "%s %3zu %s\n", i == first ? "=>" : "  ", i, subset[i].c_str());
    }
    std::fprintf(stderr, "--- yaml-cpp:\n");
    for (std::size_t i = 0; i < yaml_cpp.size(); i++) {
        std::fprintf(stderr, "%s %3zu %s\n", i == first ? "=>" : "  ", i, yaml_cpp[i].c_str());
    }
    std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char *>(data), size);

    Recorder subset;
    try {
        apikey::read_yaml_subset(text, subset);
    } catch (const apikey::NotInSubset &) {
        if (!subset.events.empty()) {
            mismatch(text, subset.events, {}, "NotInSubset after events were emitted");
        }
        return 0;
    }
    // Anything else thrown by the reader escapes and is reported as a crash.

    Recorder full;
    std::vector<std::string> second;
    try {
        std::istringstream in{std::string(text)};
        YAML::Parser parser(in);
        parser.HandleNextDocument(full);
        Recorder more;
        if (parser.HandleNextDocument(more)) second = more.events;
        if (second.empty() && !more.events.empty()) second = more.events;
    } catch (const YAML::Exception &e) {
        full.events.push_back(std::string("yaml-cpp refused: ") + e.what());
        mismatch(text, subset.events, full.events,
                 "the subset reader accepted what yaml-cpp refuses");
    }
    if (subset.events != full.events) {
        mismatch(text, subset.events, full.events, "events differ");
    }
    if (!second.empty()) {
        mismatch(text, subset.events, second, "yaml-cpp sees a second document");
    }
    return 0;
}
