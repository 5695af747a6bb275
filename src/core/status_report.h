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
    // A zone that follows a key channel (cluster mode), else the rest is unused.
    bool follows = false;
    std::string_view channel;
    bool stale = false;                  // nothing read from the stream for stale=
    std::int64_t last_read_ms_ago = -1;  // -1: never read
    std::uint64_t version = 0;           // newest published version applied
    std::uint64_t revoked = 0;           // revocations in the overlay
    std::uint64_t revocations_applied = 0;
    std::uint64_t versions_installed = 0;
    std::uint64_t entries_refused = 0;   // unsigned, forged, malformed or broken
    std::uint64_t versions_ignored = 0;  // equal or older versions
};

// One api_key_limit_zone; the sync fields only when it is synced (cluster mode).
struct LimitZoneReport {
    std::string_view zone;
    std::uint64_t counters = 0;  // capacity
    bool synced = false;
    bool degraded = false;  // no exchange with Redis for fail_after
    std::int64_t last_success_ms_ago = 0;
    std::uint64_t batches = 0;
    std::uint64_t failures = 0;
    std::uint64_t epoch_changes = 0;
    std::uint64_t granted = 0;
    std::uint64_t reported = 0;  // overdraft reported to Redis
    std::uint64_t last_batch_budgets = 0;
    std::uint64_t last_batch_ms = 0;
    std::uint64_t refused_no_grant = 0;
    std::uint64_t nodes_seen = 0;  // nodes that synced the zone through its Redis lately
};

// Which keys get series of their own in the Prometheus text (keys= of
// api_key_status). Zone totals are always there; per-key series multiply
// with the keys in use, so the default is bounded: the 100 busiest keys of
// each key zone.
struct KeySeries {
    enum class Mode : std::uint8_t { off, all, top };
    static constexpr std::uint32_t kDefaultTop = 100;
    static constexpr std::uint32_t kMaxTop = 10000;
    Mode mode = Mode::top;
    std::uint32_t top = kDefaultTop;  // with Mode::top: 1 .. kMaxTop
};

// The value of keys=: "off", "all" or "top=N" (1 <= N <= KeySeries::kMaxTop).
// False, and out untouched, when it is none of them.
bool parse_key_series(std::string_view value, KeySeries &out) noexcept;

struct PrometheusOptions {
    KeySeries keys;
    std::string_view nginx;  // label nginx of api_key_build_info (NGINX_VERSION)
    // Wall clock (unix ms) at the time of the report: turns the reports'
    // "ms ago" fields into *_timestamp_seconds. 0: those series are left out.
    std::int64_t now_unix_ms = 0;
};

// The keys of one zone with series under `keys`: every used slot (all), none
// (off) or the `top` with the most requests (accepted and refused) since the
// zone was created, ties to the smaller key id; busiest first for top, slot
// order for all. O(slots log top) time, O(top) memory for top.
std::vector<const UsageSlot *> select_keys(const UsageTable &usage, const KeySeries &keys);

// status_json lists every key used since the zone was created (keys= does
// not apply: it is no time series database's cardinality). Both may throw
// std::bad_alloc (the caller answers 500).
std::string status_json(const std::vector<ZoneReport> &zones,
                        const std::vector<LimitZoneReport> &limit_zones = {});
std::string status_prometheus(const std::vector<ZoneReport> &zones,
                              const std::vector<LimitZoneReport> &limit_zones = {},
                              const PrometheusOptions &options = {});

}  // namespace apikey
