// What the module's two nginx-facing files share: the configuration-time
// half (ngx_http_api_key_config.cpp: directives, zones, reloads, check=
// loads, process start and exit) and the request-time half
// (ngx_http_api_key_request.cpp: the access decision, refusals, hiding,
// headers, variables, api_key_status). Only these three files see nginx
// types; every decision is made in src/core.
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
}

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "core/access_policy.h"
#include "core/channel_state.h"
#include "core/config_rules.h"
#include "core/counter_table.h"
#include "core/grant_ledger.h"
#include "core/key_channel.h"
#include "core/key_digest_cache.h"
#include "core/limit_plan.h"
#include "core/limit_policy.h"
#include "core/redis_link.h"
#include "core/request_id.h"
#include "core/shared_tables.h"
#include "core/status_report.h"

extern "C" ngx_module_t ngx_http_api_key_module;

namespace ngx_api_key {

// nginx's slab allocator behind the core's ZoneMemory. Used when a table is
// staged, installed or freed, never per request; ngx_slab_alloc takes the
// zone's mutex itself, so a loader thread may call it too.
class SlabMemory final : public apikey::ZoneMemory {
public:
    ngx_slab_pool_t *pool = nullptr;

    unsigned char *base() override { return reinterpret_cast<unsigned char *>(pool); }
    void *allocate(std::size_t bytes) noexcept override { return ngx_slab_alloc(pool, bytes); }
    void release(void *p) noexcept override { ngx_slab_free(pool, p); }
};

struct KeyZone;
struct RedisConf;

// check=: parses a changed key file on a thread of its own and installs it,
// so the event loop never waits for a million keys. The event loop starts
// it, polls it from the zone's timer, and logs what it did.
class KeyLoader {
public:
    enum class Result { installed, failed, no_room, superseded };

    bool running() const noexcept { return thread_.joinable(); }
    bool finished() const noexcept { return done_.load(std::memory_order_acquire); }
    // False if the thread could not be started.
    bool start(KeyZone &zone, const apikey::FileIdentity &file) noexcept;
    // Joins a finished (or, at exit, a running) thread.
    void join() noexcept;

    Result result = Result::installed;
    bool first_report = false;  // the failure is new for this version of the file
    std::string message;

private:
    void run(KeyZone &zone, apikey::FileIdentity file) noexcept;

    std::thread thread_;
    std::atomic<bool> done_{false};
};

// How long a worker keeps its pin on a key zone's table (core/shared_tables.h):
// the period of worker_tick.
constexpr ngx_msec_t kPinMs = 100;

// One timer per worker for the module's periodic work, so that nginx's
// timer tree holds one node of ours, not one per zone and another for
// cluster mode (each node makes every timer of every connection a little
// dearer). Each tick drops the worker's pins on the key zones' tables, so
// that an idle or draining worker does not keep a replaced table in a zone,
// and runs sync_tick(). Armed (kPinMs) by a request that pins a table and
// by start_sync; kept armed while sync_tick() asks for it.
extern ngx_event_t worker_tick;

// One api_key_zone, in the cycle pool. The table image is parsed at
// configuration time (so nginx -t and a reload report file errors with
// their line), staged into the zone by init_zone and published only once
// the whole cycle has succeeded (init_module).
struct KeyZone {
    ngx_str_t name;
    std::string path;
    ngx_msec_t check = 0;           // check= interval, 0 when off
    size_t usage_capacity = 0;      // keys api_key_status can track
    std::uint64_t budget_salt = 0;  // budgets are per key zone
    apikey::TableImage image;       // released once staged
    apikey::FileIdentity file;      // the version of the file in `image`
    bool staged = false;            // this configuration staged a table not yet published
    std::uint64_t config = 0;       // the zone's configuration generation this cycle published
    SlabMemory memory;
    apikey::SharedTables shared;  // this process's view of the zone
    ngx_event_t check_event;
    KeyLoader loader;

    // Cluster mode (sync= channel=): versions and revocations published to
    // a Redis stream (ngx_http_api_key_channel.cpp).
    ngx_str_t redis_name = ngx_null_string;
    RedisConf *redis = nullptr;
    std::string channel;
    std::string copy_path;         // the node's copy of the newest published version
    std::string revocations_path;  // the revocations it applied, for a restart
    std::string load_path;         // what this configuration loaded: path or copy_path
    std::shared_ptr<const apikey::Ed25519Verifier> verify;  // verify=, null: none
    std::int64_t stale_ms = 10000;
    std::uint64_t copy_version = 0;   // the copy's version when it was read at configuration
    bool loaded_copy = false;         // this configuration loaded the copy, superseding path
    apikey::FileIdentity local_file;  // path's version when the copy superseded it
    apikey::ChannelState *channel_state = nullptr;
    // The sync process's only: a version read but not installed yet.
    apikey::TableImage pending_image;
    std::uint64_t pending_version = 0;
    bool read_failing = false;
    bool check_gap = true;  // after a start or an outage: were entries trimmed meanwhile?
    // Worker 0's timer: what it logged last.
    struct {
        bool stale;
        std::uint64_t installed, revocations, message_seq;
    } logged{};
    bool follows() const noexcept { return redis != nullptr; }
};

// One api_key_redis: where synced limit zones exchange their batches.
struct RedisConf {
    ngx_str_t name;
    apikey::RedisEndpoint endpoint;  // the password is read from password_file, never logged
    std::string prefix = "akm:";
};

// What a limit zone keeps at the start of its shared memory, besides the
// counters: found again by a reload that reuses the zone.
struct LimitZoneShared {
    std::uint64_t magic;
    std::uint64_t table_offset;  // from the slab pool's start
    std::uint64_t table_bytes;
    std::uint64_t sync_owner;  // owner_lock: one sync process at a time (old and new workers)
};

// One api_key_limit_zone: rate-limit counters that outlive reloads.
struct LimitZone {
    ngx_str_t name;
    apikey::CounterTable table;
    ngx_msec_t warned_at = 0;  // per worker: a full zone is logged at most every 10 s
    // Cluster mode (sync=): the Redis it syncs through, and how.
    ngx_str_t redis_name = ngx_null_string;
    RedisConf *redis = nullptr;
    apikey::SyncConfig sync;
    LimitZoneShared *shared = nullptr;
    bool synced() const noexcept { return redis != nullptr; }
};

// api_key_limit lines per configuration level.
constexpr size_t kMaxLimits = apikey::LimitPlan::kMaxBudgets;

struct Source {
    ngx_str_t header;  // lower case; empty for "bearer"
};

struct ScopeRuleConf {
    unsigned methods;
    ngx_array_t *scopes;  // of ngx_str_t
};

enum class StatusFormat : ngx_uint_t { json, prometheus };

// api_key_limit_headers: which rate-limit fields responses carry.
enum LimitHeaders : ngx_uint_t {
    kLimitHeadersOff = 0,
    kLimitHeadersX = 1,     // X-RateLimit-Limit, -Remaining, -Reset
    kLimitHeadersIetf = 2,  // RateLimit-Policy, RateLimit
    kLimitHeadersBoth = kLimitHeadersX | kLimitHeadersIetf,
};

struct ApiKeyMainConf {
    // Indexes of the $http_* variables that name a key's header, cleared
    // when the header is hidden (their cached values hold the key).
    ngx_array_t carrier_variables;  // of ngx_uint_t
    // A key's facts ($api_key_id, _owner, _organization_id, _plan, _scopes)
    // are read through indexed variables (a log format, set, map...): each
    // decision copies them. Otherwise they are copied only if a variable
    // is looked up by name at run time (SSI echo, njs).
    bool facts_indexed;
    ngx_uint_t policies;         // AccessPolicy objects built, their memo ids 1, 2, ...
    ngx_array_t source_headers;  // of ngx_str_t: every header=NAME of api_key_source
    ngx_array_t redis;           // of RedisConf *
};

struct ApiKeyLocConf {
    ngx_shm_zone_t *zone;      // NULL: api_key off
    ngx_array_t *sources;      // of Source
    bool bearer_source;        // sources has bearer (set at merge)
    bool header_sources;       // sources has a header=NAME (set at merge)
    ngx_array_t *scope_rules;  // of ScopeRuleConf
    ngx_array_t *plans;        // of ngx_str_t
    ngx_uint_t environment;
    ngx_flag_t dry_run;
    ngx_flag_t hide_credentials;
    ngx_flag_t optional;       // api_key_optional: a request without a key goes on
    ngx_uint_t status_format;  // StatusFormat; status_keys: its keys=
    apikey::KeySeries status_keys;
    ngx_array_t *limits;       // of apikey::ConfiguredLimit, zone: its ngx_shm_zone_t
    ngx_str_t limit_category;  // empty: auto
    ngx_uint_t limit_by;
    ngx_uint_t limit_headers;  // LimitHeaders
    ngx_str_t realm;
    ngx_str_t challenge;           // WWW-Authenticate when no key was sent
    ngx_str_t challenge_invalid;   // ... and when one was
    apikey::AccessPolicy *policy;  // built at merge, owned by the cf pool
};

// Per-worker state of the request path, seeded by init_process.
extern apikey::RequestIdGenerator request_ids;
extern apikey::KeyDigestCache key_digests;
extern std::uint64_t self_identity;  // process_identity.h: robust to pid reuse
extern ngx_http_output_header_filter_pt next_header_filter;

// Request time (ngx_http_api_key_request.cpp).
ngx_int_t access_handler(ngx_http_request_t *r) noexcept;
ngx_int_t subrequest_access_handler(ngx_http_request_t *r) noexcept;
ngx_int_t header_filter(ngx_http_request_t *r) noexcept;
ngx_int_t status_handler(ngx_http_request_t *r) noexcept;
ngx_int_t add_variables(ngx_conf_t *cf) noexcept;
// $api_key_id, _owner, _organization_id, _plan or _scopes: read from the key's record.
bool is_fact_variable(const ngx_str_t &name) noexcept;

// Process lifetime of cluster mode (ngx_http_api_key_sync.cpp): worker 0
// starts the sync process and stops it at exit.
void start_sync(ngx_cycle_t *cycle) noexcept;
void stop_sync(ngx_cycle_t *cycle) noexcept;
// worker_tick's part for cluster mode, in worker 0: logs the zones' state
// changes and restarts a sync process that ended. True while it wants more
// ticks (cluster mode runs here and the worker is not exiting).
bool sync_tick(ngx_log_t *log) noexcept;
// The sync process's clock in ms: CLOCK_MONOTONIC, the clock of ngx_current_msec.
std::int64_t monotonic_ms() noexcept;

// Key channels (ngx_http_api_key_channel.cpp): configuration, zone set-up,
// the sync process's tick for one key zone and the worker's log of it.
bool configure_channel(ngx_conf_t *cf, KeyZone &zone) noexcept;
bool init_channel(KeyZone &zone, bool reused, ngx_log_t *log) noexcept;
void follow_channel_tick(KeyZone &zone, apikey::RedisLink &link, bool connected) noexcept;
void log_channel(KeyZone &zone, ngx_log_t *log) noexcept;
// The file check= watches is the one a published version superseded.
bool channel_superseded(const KeyZone &zone, const apikey::FileIdentity &file) noexcept;

// Distinguishes limit zones from key zones among nginx's shared zones.
extern int limit_zone_tag;

template <typename F>
void for_each_limit_zone(ngx_cycle_t *cycle, F &&f) noexcept {
    for (ngx_list_part_t *part = &cycle->shared_memory.part; part; part = part->next) {
        auto *zones = static_cast<ngx_shm_zone_t *>(part->elts);
        for (ngx_uint_t i = 0; i < part->nelts; i++) {
            if (zones[i].tag == &limit_zone_tag && zones[i].data != nullptr) {
                f(*static_cast<LimitZone *>(zones[i].data));
            }
        }
    }
}

template <typename F>
void for_each_key_zone(ngx_cycle_t *cycle, F &&f) noexcept {
    for (ngx_list_part_t *part = &cycle->shared_memory.part; part; part = part->next) {
        auto *zones = static_cast<ngx_shm_zone_t *>(part->elts);
        for (ngx_uint_t i = 0; i < part->nelts; i++) {
            if (zones[i].tag == &ngx_http_api_key_module && zones[i].data != nullptr) {
                f(*static_cast<KeyZone *>(zones[i].data));
            }
        }
    }
}

// --- small conversions --------------------------------------------------------

inline std::string_view to_view(const ngx_str_t &s) noexcept {
    return {reinterpret_cast<const char *>(s.data), s.len};
}

inline ngx_str_t literal(std::string_view s) noexcept {
    return {s.size(), reinterpret_cast<u_char *>(const_cast<char *>(s.data()))};
}

// An ngx_array_t seen as a range of T (a null array is empty).
template <typename T>
struct Items {
    const T *first;
    const T *last;
    const T *begin() const noexcept { return first; }
    const T *end() const noexcept { return last; }
};

template <typename T>
Items<T> items(const ngx_array_t *a) noexcept {
    if (a == nullptr) return {nullptr, nullptr};
    const T *p = static_cast<const T *>(a->elts);
    return {p, p + a->nelts};
}

}  // namespace ngx_api_key
