// Text from a key file, quoted for an error message. The file is written by
// people and tools: a stray escape sequence or newline in it must not reach
// a terminal or forge a log line, so anything but printable ASCII is shown
// as \xNN.
#pragma once

#include <string>
#include <string_view>

namespace apikey {

std::string quoted(std::string_view text);

}  // namespace apikey
