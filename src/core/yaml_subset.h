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
}

namespace apikey {

class NotInSubset : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Emits the document's events; throws NotInSubset, or whatever the handler throws.
void read_yaml_subset(std::string_view text, YAML::EventHandler &handler);

}  // namespace apikey
