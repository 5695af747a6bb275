// The module's version, as api_key_build_info reports it. It is the upstream
// part of the newest debian/changelog entry (t/test_prometheus.py checks that
// the two agree): bump both together.
#pragma once

#include <string_view>

namespace apikey {

inline constexpr std::string_view kModuleVersion = "0.3.0";

}  // namespace apikey
