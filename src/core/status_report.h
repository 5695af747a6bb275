// The text api_key_status serves: JSON, or Prometheus' text exposition format.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "usage_table.h"

namespace apikey {

struct ZoneReport {
    std::string_view zone;
    std::string_view file;
    std::uint64_t keys = 0;
    std::uint64_t generation = 0;
    std::int64_t loaded_at = 0;
    std::string_view last_error;  // empty when the last load succeeded
    std::uint64_t bytes_total = 0;
    std::uint64_t bytes_free = 0;
    const UsageTable *usage = nullptr;
};

// Both list only keys that were used since the zone was created; they may
// throw std::bad_alloc (the caller answers 500).
std::string status_json(const std::vector<ZoneReport> &zones);
std::string status_prometheus(const std::vector<ZoneReport> &zones);

}  // namespace apikey
