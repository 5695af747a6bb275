// A fast reader for the plain block-style YAML that key files are written in.
//
// yaml-cpp spends about 390,000 instructions per key record (30 s for a
// million keys), almost all in its regex-driven scanner. This reader
// understands only a strict subset of YAML: block maps and sequences
// indented with spaces, one-line flow sequences and maps, plain scalars,
// quoted scalars without escapes, full-line comments. For that subset it
// emits exactly the events yaml-cpp emits (same order, same line numbers),
// into the same handler, so validation is shared and cannot disagree.
// Anything else throws NotInSubset and the caller hands the whole file to
// yaml-cpp.
#pragma once

#include <stdexcept>
#include <string_view>

namespace YAML {
class EventHandler;
struct Mark;
}  // namespace YAML

namespace apikey {

class NotInSubset : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// A handler may also take scalars as views into the text, without a
// std::string per scalar (tag "!" for quoted, "?" for plain, as OnScalar).
class ScalarViewHandler {
public:
    virtual void OnScalarView(const YAML::Mark &mark, bool quoted, std::string_view value) = 0;

protected:
    ~ScalarViewHandler() = default;
};

// Emits the document's events; throws NotInSubset, or whatever the handler
// throws. Nothing is emitted unless the whole text is in the subset.
void read_yaml_subset(std::string_view text, YAML::EventHandler &handler);

// The same in one pass, for a caller that can drop what it was given: the
// events are emitted while the text is read, so NotInSubset may come after
// some of them (never with other events than read_yaml_subset emits).
void read_yaml_subset_at_once(std::string_view text, YAML::EventHandler &handler);

// Whether read_yaml_subset would read the text (emits nothing).
bool in_yaml_subset(std::string_view text);

}  // namespace apikey
