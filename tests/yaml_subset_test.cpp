// The fast reader must emit exactly what yaml-cpp emits for every text it
// accepts, and refuse (NotInSubset) everything it does not fully understand.
#include <gtest/gtest.h>

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/exceptions.h>
#include <yaml-cpp/mark.h>
#include <yaml-cpp/parser.h>

#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/yaml_subset.h"

namespace {

// Every event as one line of text: kind, line, tag and value.
class Recorder : public YAML::EventHandler {
public:
    std::vector<std::string> events;

    void OnDocumentStart(const YAML::Mark &) override { events.push_back("doc"); }
    void OnDocumentEnd() override { events.push_back("enddoc"); }
    void OnNull(const YAML::Mark &m, YAML::anchor_t) override {
        events.push_back("null@" + std::to_string(m.line));
    }
    void OnAlias(const YAML::Mark &m, YAML::anchor_t) override {
        events.push_back("alias@" + std::to_string(m.line));
    }
    void OnScalar(const YAML::Mark &m, const std::string &tag, YAML::anchor_t,
                  const std::string &value) override {
        events.push_back("scalar@" + std::to_string(m.line) + " " + tag + " [" + value + "]");
    }
    void OnSequenceStart(const YAML::Mark &m, const std::string &, YAML::anchor_t,
                         YAML::EmitterStyle::value) override {
        events.push_back("seq@" + std::to_string(m.line));
    }
    void OnSequenceEnd() override { events.push_back("endseq"); }
    void OnMapStart(const YAML::Mark &m, const std::string &, YAML::anchor_t,
                    YAML::EmitterStyle::value) override {
        events.push_back("map@" + std::to_string(m.line));
    }
    void OnMapEnd() override { events.push_back("endmap"); }
};

std::vector<std::string> yaml_cpp_events(const std::string &text) {
    Recorder r;
    std::istringstream in(text);
    YAML::Parser parser(in);
    parser.HandleNextDocument(r);
    return r.events;
}

std::vector<std::string> subset_events(const std::string &text) {
    Recorder r;
    apikey::read_yaml_subset(text, r);
    return r.events;
}

void expect_same_events(const std::string &text) {
    SCOPED_TRACE(text);
    EXPECT_EQ(subset_events(text), yaml_cpp_events(text));
}

const char *const kInSubset[] = {
    "version: 1\n",
    "version: 1\nprefixes:\n  jfi_sk_live_: live\n  wfk_: test\nkeys:\n",
    "keys:\n  - id: a\n    hash: sha256:00ff\n    owner: u\n",
    "keys:\n- id: a\n  scopes: [x:read, \"y\", 'z']\n  limits: {write: 5r/m, read: 1r/s}\n",
    "keys:\n  - id: a\n    scopes:\n      - x\n      - y\n    limits:\n      w: 1r/s\n",
    "keys:\n  - id: a\n    scopes:\n    - x\n    organization_id:\n",
    "a: null\nb: ~\nc: Null\nd: NULL\ne: \"null\"\nf:\n",
    "# comment\n\nversion: 1   \n  # indented comment\nkeys: []\n",
    "a: [ ]\nb: {}\nc: [a,b,  c ]\n",
    "a: x y z\nb: 2026-11-01T00:00:00Z\nc: sha256:abc\nd: 'it is'\n",
    "keys:\n  -\n    id: a\n  - id: b\n",
    "a:\n  b:\n    c: d\n  e: f\ng: h\n",
    "a: b\n",
    "a: b",
    "a:",
    "key :   value\n",
    "- a\n- b\n",           // not a key file, but valid YAML: the schema refuses it, not the reader
    "l: {write : 5r/m}\n",  // blanks before a flow key's colon are not part of the key
    // allowed_ips: colons inside plain scalars, in flow and block lists
    "keys:\n  - id: a\n    allowed_ips: [203.0.113.0/24, \"2001:db8::/32\", 2001:db8::1/128, "
    "'::1', fe80::/10]\n",
    "keys:\n  - id: a\n    allowed_ips:\n      - 2001:db8::/32\n      - \"::1\"\n"
    "      - \"::ffff:203.0.113.0/120\"\n      - 198.51.100.7\n",
};

// clang-format off
const char *const kOutsideSubset[] = {
    "",                                // no document
    "# only a comment\n",
    "--- \na: b\n",                    // document marker
    "a: &x b\nc: *x\n",                // anchors and aliases
    "a: |\n  text\n",                  // block scalar
    "a: \"esc\\\"aped\"\n",            // escapes
    "a: 'it''s'\n",
    "a:\tb\n",                         // tab
    "a: b # trailing comment\n",
    "a: b\r\n",
    "a: b\n  c: d\n",                  // bad indentation
    "a:\n  - - x\n",                   // sequence in a sequence item
    "a: [x, [y]]\n",
    "a: [x,\n  y]\n",                  // flow over two lines
    "a: {b: c: d}\n",
    "\"a\": b\n",                      // quoted key
    "a: b: c\n",
    "a: -b\n",
    "a: multi\n  line\n",
    "a: caf\xc3\xa9\n",                // non-ASCII goes to yaml-cpp
    "a: b\n...\n",
    "a: !tag b\n",
    "? a\n: b\n",
    "a: [x,,y]\n",
    // Found by fuzz/yaml_subset_fuzz.cpp, where the two readers disagreed:
    "a: [x?]\n",          // yaml-cpp ends a flow plain scalar at '?'
    "# caf\xc3\xa9\na: b\n",  // non-ASCII anywhere goes to yaml-cpp
};
// clang-format on

TEST(YamlSubset, EmitsExactlyWhatYamlCppEmits) {
    for (const char *text : kInSubset) expect_same_events(text);
}

TEST(YamlSubset, RefusesEverythingElse) {
    for (const char *text : kOutsideSubset) {
        SCOPED_TRACE(text);
        Recorder r;
        EXPECT_THROW(apikey::read_yaml_subset(text, r), apikey::NotInSubset);
        EXPECT_TRUE(r.events.empty()) << "nothing is emitted before the subset is confirmed";
    }
}

TEST(YamlSubset, RefusesANulEvenInAComment) {
    // yaml-cpp reads a file starting "#\0" as UTF-16 (found by the fuzzer).
    Recorder r;
    EXPECT_THROW(apikey::read_yaml_subset(std::string("#\0\na: b\n", 8), r), apikey::NotInSubset);
    EXPECT_TRUE(r.events.empty());
}

// Random key files built from the pieces a key file uses: whatever the
// subset reader accepts must match yaml-cpp event for event.
TEST(YamlSubset, RandomKeyFilesMatchYamlCpp) {
    std::mt19937 rng(20261124);
    const std::vector<std::string> scalars = {
        "a",     "key_1", "sha256:0f", "x y",           "null", "~",   "2026-11-01T00:00:00Z",
        "\"q\"", "'s'",   "5r/m",      "a:b",           "-x",   "x:",  "#c",
        "[a]",   "{}",    "\"a\\\"\"", "2001:db8::/32", "::1",  "a::", "::ffff:1.2.3.4/128"};
    const std::vector<std::string> indents = {"", " ", "  ", "    "};
    auto pick = [&](const auto &v) { return v[rng() % v.size()]; };
    int accepted = 0;
    for (int round = 0; round < 3000; round++) {
        std::string text = "version: 1\nkeys:\n";
        const int records = 1 + static_cast<int>(rng() % 3);
        const std::string item = pick(indents);
        for (int r = 0; r < records; r++) {
            text += item + "- id: " + pick(scalars) + "\n";
            const int fields = static_cast<int>(rng() % 4);
            for (int f = 0; f < fields; f++) {
                std::string field_indent = item + "  ";
                if (rng() % 10 == 0) field_indent = pick(indents);  // sometimes wrong
                switch (rng() % 4) {
                case 0: text += field_indent + "owner: " + pick(scalars) + "\n"; break;
                case 1:
                    text += field_indent + "scopes: [" + pick(scalars) + ", " + pick(scalars) +
                            "]\n";
                    break;
                case 2:
                    text += field_indent + "limits:\n" + field_indent + "  " + pick(scalars) +
                            ": " + pick(scalars) + "\n";
                    break;
                default: text += field_indent + "organization_id:\n"; break;
                }
            }
        }
        Recorder r;
        try {
            apikey::read_yaml_subset(text, r);
        } catch (const apikey::NotInSubset &) {
            continue;
        }
        accepted++;
        std::vector<std::string> expected;
        try {
            expected = yaml_cpp_events(text);
        } catch (const YAML::Exception &e) {
            ADD_FAILURE() << "the subset accepted what yaml-cpp refuses (" << e.what() << "):\n"
                          << text;
            continue;
        }
        EXPECT_EQ(r.events, expected) << text;
    }
    EXPECT_GT(accepted, 300) << "the generator should mostly stay inside the subset";
}

}  // namespace
