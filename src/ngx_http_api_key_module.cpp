// nginx glue for the API key core: directives, configuration merge, the key
// zone, the access handler, variables and responses. This is the only file
// that sees nginx types; everything it decides is delegated to src/core.

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
}

#include <openssl/rand.h>

#include <cstring>
#include <exception>
#include <new>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/access_policy.h"
#include "core/counter_table.h"
#include "core/credential.h"
#include "core/key_file.h"
#include "core/limit_policy.h"
#include "core/outcome.h"
#include "core/request_id.h"
#include "core/shared_tables.h"
#include "core/status_report.h"

extern "C" ngx_module_t ngx_http_api_key_module;

namespace {

using apikey::Outcome;

// --- configuration ----------------------------------------------------------

// nginx's slab allocator behind the core's ZoneMemory. ngx_slab_alloc and
// ngx_slab_free take the zone's mutex themselves; they are only used when
// a table is installed or released, never per request.
class SlabMemory final : public apikey::ZoneMemory {
public:
    ngx_slab_pool_t *pool = nullptr;

    unsigned char *base() override { return reinterpret_cast<unsigned char *>(pool); }
    void *allocate(std::size_t bytes) noexcept override { return ngx_slab_alloc(pool, bytes); }
    void release(void *p) noexcept override { ngx_slab_free(pool, p); }
};

// One api_key_zone. Lives in the cycle pool; the table image is parsed at
// configuration time (so nginx -t and a reload see file errors with their
// line) and installed into the shared zone by init_zone.
struct KeyZone {
    ngx_str_t name;
    std::string path;
    ngx_msec_t check = 0;          // check= interval, 0 when off
    size_t usage_capacity = 0;     // keys api_key_status can track
    apikey::TableImage image;      // released once installed
    apikey::FileIdentity file;     // the version of the file in `image`
    SlabMemory memory;
    apikey::SharedTables shared;   // this process's view of the zone
    ngx_event_t check_event;
};

// One api_key_limit_zone: rate-limit counters that outlive reloads.
struct LimitZone {
    ngx_str_t name;
    apikey::CounterTable table;
    ngx_msec_t warned_at;  // per worker: a full zone is logged at most every 10 s
};

// Distinguishes limit zones from key zones among nginx's shared zones.
int limit_zone_tag;

// api_key_limit lines per configuration level; a request checks each once.
constexpr size_t kMaxLimits = 8;

struct Source {
    ngx_str_t header;  // lower case; empty for "bearer"
};

struct LimitConf {
    ngx_shm_zone_t *zone;
    ngx_str_t category;
    apikey::Rate rate;
};

struct ScopeRuleConf {
    unsigned methods;
    ngx_array_t *scopes;  // of ngx_str_t
};

struct ApiKeyLocConf {
    ngx_shm_zone_t *zone;     // NULL: api_key off
    ngx_array_t *sources;     // of Source
    ngx_array_t *scope_rules; // of ScopeRuleConf
    ngx_array_t *plans;       // of ngx_str_t
    ngx_uint_t environment;
    ngx_flag_t dry_run;
    ngx_flag_t hide_credentials;
    ngx_uint_t status_format; // api_key_status: 0 JSON, 1 Prometheus
    ngx_array_t *limits;      // of LimitConf
    ngx_str_t limit_category; // empty: auto
    ngx_uint_t limit_by;
    ngx_str_t realm;
    ngx_str_t challenge;           // WWW-Authenticate when no key was sent
    ngx_str_t challenge_invalid;   // ... and when one was
    apikey::AccessPolicy *policy;  // built at merge, owned by the cf pool
};

// Per request: what the access handler found and decided, for variables and
// headers. It outlives internal redirects (see get_ctx), so a key hidden from
// the request on the first pass is still known by its digest on the next.
struct RequestCtx {
    char request_id[apikey::kRequestIdLength];
    bool key_sent;
    bool identified;      // digest and environment are set
    Outcome presented;    // the outcome of reading the key when not identified
    apikey::Digest digest;
    std::string_view uncached_key;  // to remember once the table has found it
    Outcome outcome;
    apikey::Environment environment;
    const apikey::KeyRecord *record;  // in table_ref's table
    KeyZone *zone;
    apikey::SharedTables::Ref table_ref;  // held until the request's pool goes
    bool dry_run;
    bool counted;  // in the zone's usage counters
    bool limits_applied;
    Outcome limit_outcome;
    bool limited;  // a limit applied: rate-limit headers and $api_key_limit_remaining
    apikey::WindowDecision limit;
    apikey::Rate limit_rate;          // of the limit reported, for the 429 message
    std::string_view limit_category;  // points into the location's configuration
    u_char numbers[4][NGX_INT64_LEN];  // header values, written without the pool
};

ngx_conf_enum_t limit_by_values[] = {
    {ngx_string("key"), static_cast<ngx_uint_t>(apikey::LimitBy::key)},
    {ngx_string("owner"), static_cast<ngx_uint_t>(apikey::LimitBy::owner)},
    {ngx_string("organization"), static_cast<ngx_uint_t>(apikey::LimitBy::organization)},
    {ngx_null_string, 0},
};

ngx_conf_enum_t environment_values[] = {
    {ngx_string("any"), static_cast<ngx_uint_t>(apikey::RequiredEnvironment::any)},
    {ngx_string("live"), static_cast<ngx_uint_t>(apikey::RequiredEnvironment::live)},
    {ngx_string("test"), static_cast<ngx_uint_t>(apikey::RequiredEnvironment::test)},
    {ngx_null_string, 0},
};

apikey::RequestIdGenerator request_ids;
apikey::KeyDigestCache key_digests;  // per worker, seeded in init_process
ngx_http_output_header_filter_pt next_header_filter;

// nginx's configuration callbacks return char *; these keep the casts in one place.
char *conf_error() noexcept { return static_cast<char *>(NGX_CONF_ERROR); }
char *conf_ok() noexcept { return static_cast<char *>(NGX_CONF_OK); }
char *conf_message(const char *text) noexcept { return const_cast<char *>(text); }

std::string to_string(const ngx_str_t &s) {
    return std::string(reinterpret_cast<const char *>(s.data), s.len);
}

std::string_view to_view(const ngx_str_t &s) noexcept {
    return {reinterpret_cast<const char *>(s.data), s.len};
}

ngx_str_t literal(std::string_view s) noexcept {
    return {s.size(), reinterpret_cast<u_char *>(const_cast<char *>(s.data()))};
}

template <typename T>
T *conf_arg(ngx_conf_t *cf) noexcept {
    return static_cast<T *>(cf->args->elts);
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

// Places a C++ object in pool memory; the pool's cleanup runs its destructor,
// so a reload that frees the old cycle frees these too.
template <typename T, typename... Args>
T *pool_new(ngx_pool_t *pool, Args &&...args) {
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(pool, sizeof(T));
    if (cln == nullptr) throw std::bad_alloc();
    T *object = new (cln->data) T(std::forward<Args>(args)...);
    cln->handler = [](void *p) { static_cast<T *>(p)->~T(); };
    return object;
}

// A sixteenth of a key zone counts per-key usage for api_key_status.
size_t usage_capacity_for(size_t zone_size) noexcept {
    const size_t capacity = zone_size / 16 / sizeof(apikey::UsageSlot);
    return capacity < 64 ? 64 : capacity;
}

// Shared memory a slab pool needs for `tables` tables of this size (two:
// the one in use and its successor, at a reload or under check=), the zone
// state and the usage counters: its own header and page descriptors, and
// whole pages per allocation.
size_t zone_size_needed(size_t image_size, size_t usage_capacity, unsigned tables = 2) noexcept {
    const size_t page = ngx_pagesize;
    auto pages_of = [page](size_t bytes) { return (bytes + page - 1) / page; };
    const size_t pages = tables * pages_of(apikey::shared_tables_bytes(image_size, 1)) +
                         pages_of(apikey::UsageTable::bytes_for(usage_capacity)) + 6;
    return pages * (page + sizeof(ngx_slab_page_t)) + page;
}

ngx_int_t init_key_zone(ngx_shm_zone_t *shm_zone, void *data) noexcept {
    auto *zone = static_cast<KeyZone *>(shm_zone->data);
    auto *shpool = reinterpret_cast<ngx_slab_pool_t *>(shm_zone->shm.addr);
    zone->memory.pool = shpool;

    // A reload with the same zone name and size reuses the zone (and its
    // usage counters): the new table is installed beside the old one, and
    // the old workers go on reading the old one, which is freed only when
    // none of them can see it any more (see core/shared_tables.h).
    auto *state = static_cast<apikey::SharedTablesState *>(shpool->data);
    if (data == nullptr || !apikey::SharedTables::is_state(state)) {
        state = apikey::SharedTables::create(zone->memory, zone->usage_capacity);
        if (state == nullptr) {
            ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0, "api_key_zone \"%V\" is too small",
                          &shm_zone->shm.name);
            return NGX_ERROR;
        }
        shpool->data = state;
    }
    zone->shared.attach(&zone->memory, state);

    // At a reload, requests that started before the previous reload may
    // still hold its table: then three tables must fit.
    std::string error;
    if (!zone->shared.install(zone->image, zone->file, ngx_time(), error)) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "api_key_zone \"%V\": %s; requests that started before an earlier "
                      "reload still hold its table; a zone of %uzk holds three tables of this file",
                      &shm_zone->shm.name, error.c_str(),
                      zone_size_needed(zone->image.size(), zone->usage_capacity, 3) / 1024 + 1);
        return NGX_ERROR;
    }
    zone->image = apikey::TableImage();
    return NGX_OK;
}

// The NAME:SIZE argument of api_key_zone and api_key_limit_zone, in
// limit_req_zone's words; nullptr after an error was logged.
ngx_shm_zone_t *add_zone(ngx_conf_t *cf, ngx_str_t &arg, void *tag) noexcept {
    const std::string_view text = to_view(arg);
    const size_t colon = text.find(':');
    if (colon == std::string_view::npos || colon == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid zone \"%V\"", &arg);
        return nullptr;
    }
    ngx_str_t name = {colon, arg.data};
    ngx_str_t size_text = {text.size() - colon - 1, arg.data + colon + 1};
    const ssize_t size = ngx_parse_size(&size_text);
    if (size == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid zone size \"%V\"", &arg);
        return nullptr;
    }
    if (size < static_cast<ssize_t>(8 * ngx_pagesize)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "zone \"%V\" is too small", &arg);
        return nullptr;
    }
    ngx_shm_zone_t *shm_zone = ngx_shared_memory_add(cf, &name, static_cast<size_t>(size), tag);
    if (shm_zone == nullptr) return nullptr;
    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "duplicate zone \"%V\"", &name);
        return nullptr;
    }
    return shm_zone;
}

// api_key_zone NAME:SIZE file=PATH [check=TIME];
char *api_key_zone(ngx_conf_t *cf, ngx_command_t *, void *) noexcept {
    ngx_str_t *value = conf_arg<ngx_str_t>(cf);
    ngx_str_t file = ngx_null_string;
    ngx_msec_t check = 0;

    for (ngx_uint_t i = 2; i < cf->args->nelts; i++) {
        std::string_view arg = to_view(value[i]);
        if (arg.substr(0, 5) == "file=" && arg.size() > 5) {
            file.data = value[i].data + 5;
            file.len = value[i].len - 5;
            if (ngx_conf_full_name(cf->cycle, &file, 1) != NGX_OK) return conf_error();
            continue;
        }
        if (arg.substr(0, 6) == "check=") {
            ngx_str_t s = {value[i].len - 6, value[i].data + 6};
            check = ngx_parse_time(&s, 0);
            if (check == static_cast<ngx_msec_t>(NGX_ERROR) || check == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid check time \"%V\"", &value[i]);
                return conf_error();
            }
            continue;
        }
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid parameter \"%V\"", &value[i]);
        return conf_error();
    }

    if (file.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" must have \"file\" parameter",
                           &value[0]);
        return conf_error();
    }

    ngx_shm_zone_t *shm_zone = add_zone(cf, value[1], &ngx_http_api_key_module);
    if (shm_zone == nullptr) return conf_error();
    const ngx_str_t name = shm_zone->shm.name;
    const size_t size = shm_zone->shm.size;

    shm_zone->init = init_key_zone;
    // "nginx -s reload|stop|quit" reads the configuration only to find the
    // pid file: a million-key file, or a broken one, must not delay or
    // block the signal. The master reads and checks the file itself.
    if (ngx_process == NGX_PROCESS_SIGNALLER) return conf_ok();

    try {
        KeyZone *zone = pool_new<KeyZone>(cf->pool);
        zone->name = name;
        zone->path = to_string(file);
        zone->check = check;
        zone->usage_capacity = usage_capacity_for(size);
        // The version is taken before reading: if the file changes during
        // the read, check= sees a difference and loads it again.
        if (!apikey::identify_file(zone->path, zone->file)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno, "cannot stat \"%V\"", &file);
            return conf_error();
        }
        zone->image = apikey::load_key_file(zone->path);

        if (size < zone_size_needed(zone->image.size(), zone->usage_capacity)) {
            // The usage counters grow with the zone: the smallest zone that
            // fits is found by going up until the need stops growing.
            size_t needed = zone_size_needed(zone->image.size(), 0);
            for (int i = 0; i < 16; i++) {
                size_t more = zone_size_needed(zone->image.size(), usage_capacity_for(needed));
                if (more <= needed) break;
                needed = more;
            }
            needed += 2 * ngx_pagesize;  // a stated size a little above needs one slot more
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "zone \"%V\" is too small for \"%V\": %ui keys need at least %uzk "
                               "(room for two tables, for reloads and check=)",
                               &name, &file,
                               static_cast<ngx_uint_t>(zone->image.table().key_count()),
                               needed / 1024 + 1);
            return conf_error();
        }
        shm_zone->data = zone;
    } catch (const apikey::KeyFileLoadError &e) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%s", e.what());
        return conf_error();
    } catch (const std::exception &e) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "cannot load \"%V\": %s", &file, e.what());
        return conf_error();
    }
    return conf_ok();
}

// api_key ZONE | off;
char *api_key(ngx_conf_t *cf, ngx_command_t *, void *conf) noexcept {
    auto *lcf = static_cast<ApiKeyLocConf *>(conf);
    ngx_str_t *value = conf_arg<ngx_str_t>(cf);

    if (lcf->zone != NGX_CONF_UNSET_PTR) return conf_message("is duplicate");
    if (ngx_strcmp(value[1].data, "off") == 0) {
        lcf->zone = nullptr;
        return conf_ok();
    }
    lcf->zone = ngx_shared_memory_add(cf, &value[1], 0, &ngx_http_api_key_module);
    return lcf->zone ? conf_ok() : conf_error();
}

bool is_header_name(std::string_view name) noexcept {
    if (name.empty() || name.size() > 64) return false;
    for (char c : name) {
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_')) {
            return false;
        }
    }
    return true;
}

// api_key_source bearer | header=NAME ...;
char *api_key_source(ngx_conf_t *cf, ngx_command_t *, void *conf) noexcept {
    auto *lcf = static_cast<ApiKeyLocConf *>(conf);
    ngx_str_t *value = conf_arg<ngx_str_t>(cf);

    if (lcf->sources != NGX_CONF_UNSET_PTR) return conf_message("is duplicate");
    lcf->sources = ngx_array_create(cf->pool, cf->args->nelts - 1, sizeof(Source));
    if (lcf->sources == nullptr) return conf_error();

    for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
        std::string_view arg = to_view(value[i]);
        Source source{};
        if (arg == "bearer") {
            source.header = ngx_null_string;
        } else if (arg.substr(0, 7) == "header=" && is_header_name(arg.substr(7))) {
            source.header.len = arg.size() - 7;
            source.header.data = static_cast<u_char *>(ngx_pnalloc(cf->pool, source.header.len));
            if (source.header.data == nullptr) return conf_error();
            ngx_strlow(source.header.data, value[i].data + 7, source.header.len);
            if (to_view(source.header) == "authorization") {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "use \"bearer\" to read the Authorization header");
                return conf_error();
            }
        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid source \"%V\"", &value[i]);
            return conf_error();
        }
        for (const Source &s : items<Source>(lcf->sources)) {
            if (to_view(s.header) == to_view(source.header)) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "duplicate source \"%V\"", &value[i]);
                return conf_error();
            }
        }
        auto *slot = static_cast<Source *>(ngx_array_push(lcf->sources));
        if (slot == nullptr) return conf_error();
        *slot = source;
    }
    return conf_ok();
}

// Scope and plan names follow the key file's rule for identifiers.
bool is_identifier(const ngx_str_t &s) noexcept {
    if (s.len == 0 || s.len > 128) return false;
    for (size_t i = 0; i < s.len; i++) {
        u_char c = s.data[i];
        if (c <= 0x20 || c >= 0x7f || c == '"' || c == '\\') return false;
    }
    return true;
}

// api_key_scope [METHOD ...] SCOPE ...;
char *api_key_scope(ngx_conf_t *cf, ngx_command_t *, void *conf) noexcept {
    auto *lcf = static_cast<ApiKeyLocConf *>(conf);
    ngx_str_t *value = conf_arg<ngx_str_t>(cf);

    if (lcf->scope_rules == NGX_CONF_UNSET_PTR) {
        lcf->scope_rules = ngx_array_create(cf->pool, 4, sizeof(ScopeRuleConf));
        if (lcf->scope_rules == nullptr) return conf_error();
    }

    unsigned methods = 0;
    ngx_uint_t i = 1;
    for (; i < cf->args->nelts; i++) {
        unsigned bit = apikey::method_bit(to_view(value[i]));
        if (bit == 0) break;
        methods |= bit;
    }
    if (i == cf->args->nelts) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "no scope given after the methods");
        return conf_error();
    }

    auto *rule = static_cast<ScopeRuleConf *>(ngx_array_push(lcf->scope_rules));
    if (rule == nullptr) return conf_error();
    rule->methods = methods ? methods : apikey::kAnyMethod;
    rule->scopes = ngx_array_create(cf->pool, cf->args->nelts - i, sizeof(ngx_str_t));
    if (rule->scopes == nullptr) return conf_error();

    for (; i < cf->args->nelts; i++) {
        if (!is_identifier(value[i])) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid scope \"%V\"", &value[i]);
            return conf_error();
        }
        auto *slot = static_cast<ngx_str_t *>(ngx_array_push(rule->scopes));
        if (slot == nullptr) return conf_error();
        *slot = value[i];
    }
    return conf_ok();
}

// api_key_plans PLAN ...;
char *api_key_plans(ngx_conf_t *cf, ngx_command_t *, void *conf) noexcept {
    auto *lcf = static_cast<ApiKeyLocConf *>(conf);
    ngx_str_t *value = conf_arg<ngx_str_t>(cf);

    if (lcf->plans != NGX_CONF_UNSET_PTR) return conf_message("is duplicate");
    lcf->plans = ngx_array_create(cf->pool, cf->args->nelts - 1, sizeof(ngx_str_t));
    if (lcf->plans == nullptr) return conf_error();
    for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
        if (!is_identifier(value[i])) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid plan \"%V\"", &value[i]);
            return conf_error();
        }
        auto *slot = static_cast<ngx_str_t *>(ngx_array_push(lcf->plans));
        if (slot == nullptr) return conf_error();
        *slot = value[i];
    }
    return conf_ok();
}

ngx_int_t init_limit_zone(ngx_shm_zone_t *shm_zone, void *data) noexcept {
    auto *zone = static_cast<LimitZone *>(shm_zone->data);
    auto *shpool = reinterpret_cast<ngx_slab_pool_t *>(shm_zone->shm.addr);

    // A reload with the same name and size hands over the previous zone:
    // its counters stay, and every worker, old or new, keeps using them.
    if (data != nullptr) {
        zone->table = static_cast<LimitZone *>(data)->table;
        return NGX_OK;
    }

    // Otherwise the whole zone (but the slab pool's own bookkeeping) becomes one table.
    for (ngx_uint_t pages = shpool->pfree; pages > 0; pages--) {
        size_t bytes = pages * ngx_pagesize;
        void *memory = ngx_slab_alloc(shpool, bytes);
        if (memory == nullptr) continue;
        zone->table = apikey::CounterTable::format(memory, bytes);
        shpool->data = memory;
        return NGX_OK;
    }
    ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0, "api_key_limit_zone \"%V\" is too small",
                  &shm_zone->shm.name);
    return NGX_ERROR;
}

// api_key_limit_zone NAME:SIZE;
char *api_key_limit_zone(ngx_conf_t *cf, ngx_command_t *, void *) noexcept {
    ngx_str_t *value = conf_arg<ngx_str_t>(cf);
    ngx_shm_zone_t *shm_zone = add_zone(cf, value[1], &limit_zone_tag);
    if (shm_zone == nullptr) return conf_error();
    auto *zone = static_cast<LimitZone *>(ngx_pcalloc(cf->pool, sizeof(LimitZone)));
    if (zone == nullptr) return conf_error();
    zone->name = shm_zone->shm.name;
    shm_zone->data = zone;
    shm_zone->init = init_limit_zone;
    return conf_ok();
}

// api_key_limit ZONE CATEGORY RATE;
char *api_key_limit(ngx_conf_t *cf, ngx_command_t *, void *conf) noexcept {
    auto *lcf = static_cast<ApiKeyLocConf *>(conf);
    ngx_str_t *value = conf_arg<ngx_str_t>(cf);

    if (lcf->limits == NGX_CONF_UNSET_PTR) {
        lcf->limits = ngx_array_create(cf->pool, 4, sizeof(LimitConf));
        if (lcf->limits == nullptr) return conf_error();
    }
    if (lcf->limits->nelts == kMaxLimits) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "too many \"api_key_limit\" here, at most %uz",
                           kMaxLimits);
        return conf_error();
    }
    if (!is_identifier(value[2])) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid category \"%V\"", &value[2]);
        return conf_error();
    }
    std::optional<apikey::Rate> rate = apikey::parse_rate(to_view(value[3]));
    if (!rate) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid rate \"%V\"", &value[3]);
        return conf_error();
    }
    auto *limit = static_cast<LimitConf *>(ngx_array_push(lcf->limits));
    if (limit == nullptr) return conf_error();
    limit->zone = ngx_shared_memory_add(cf, &value[1], 0, &limit_zone_tag);
    if (limit->zone == nullptr) return conf_error();
    limit->category = value[2];
    limit->rate = *rate;
    return conf_ok();
}

// api_key_limit_category auto | NAME;
char *api_key_limit_category(ngx_conf_t *cf, ngx_command_t *, void *conf) noexcept {
    auto *lcf = static_cast<ApiKeyLocConf *>(conf);
    ngx_str_t *value = conf_arg<ngx_str_t>(cf);
    if (lcf->limit_category.data != nullptr) return conf_message("is duplicate");
    if (to_view(value[1]) == "auto") {
        lcf->limit_category = {0, reinterpret_cast<u_char *>(const_cast<char *>(""))};
        return conf_ok();
    }
    if (!is_identifier(value[1])) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid category \"%V\"", &value[1]);
        return conf_error();
    }
    lcf->limit_category = value[1];
    return conf_ok();
}

ngx_int_t status_handler(ngx_http_request_t *r) noexcept;

// api_key_status [json | prometheus];
char *api_key_status(ngx_conf_t *cf, ngx_command_t *, void *conf) noexcept {
    auto *lcf = static_cast<ApiKeyLocConf *>(conf);
    ngx_str_t *value = conf_arg<ngx_str_t>(cf);
    if (lcf->status_format != NGX_CONF_UNSET_UINT) return conf_message("is duplicate");
    lcf->status_format = 0;
    if (cf->args->nelts == 2) {
        if (to_view(value[1]) == "prometheus") {
            lcf->status_format = 1;
        } else if (to_view(value[1]) != "json") {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid format \"%V\"", &value[1]);
            return conf_error();
        }
    }
    auto *clcf = static_cast<ngx_http_core_loc_conf_t *>(
        ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));
    clcf->handler = status_handler;
    return conf_ok();
}

ngx_command_t commands[] = {
    {ngx_string("api_key_zone"), NGX_HTTP_MAIN_CONF | NGX_CONF_2MORE, api_key_zone, 0, 0,
     nullptr},
    {ngx_string("api_key"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1, api_key,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("api_key_source"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_1MORE,
     api_key_source, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("api_key_scope"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_1MORE, api_key_scope,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("api_key_plans"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_1MORE, api_key_plans,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("api_key_environment"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_enum_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(ApiKeyLocConf, environment),
     environment_values},
    {ngx_string("api_key_dry_run"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_FLAG,
     ngx_conf_set_flag_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(ApiKeyLocConf, dry_run),
     nullptr},
    {ngx_string("api_key_realm"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_str_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(ApiKeyLocConf, realm), nullptr},
    {ngx_string("api_key_limit_zone"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, api_key_limit_zone,
     0, 0, nullptr},
    {ngx_string("api_key_limit"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE3, api_key_limit,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("api_key_limit_category"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     api_key_limit_category, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("api_key_limit_by"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_enum_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(ApiKeyLocConf, limit_by),
     limit_by_values},
    {ngx_string("api_key_status"), NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS | NGX_CONF_TAKE1,
     api_key_status, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("api_key_hide_credentials"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_FLAG,
     ngx_conf_set_flag_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ApiKeyLocConf, hide_credentials), nullptr},
    ngx_null_command,
};

void *create_loc_conf(ngx_conf_t *cf) noexcept {
    auto *conf = static_cast<ApiKeyLocConf *>(ngx_pcalloc(cf->pool, sizeof(ApiKeyLocConf)));
    if (conf == nullptr) return nullptr;
    conf->zone = static_cast<ngx_shm_zone_t *>(NGX_CONF_UNSET_PTR);
    conf->sources = static_cast<ngx_array_t *>(NGX_CONF_UNSET_PTR);
    conf->scope_rules = static_cast<ngx_array_t *>(NGX_CONF_UNSET_PTR);
    conf->plans = static_cast<ngx_array_t *>(NGX_CONF_UNSET_PTR);
    conf->environment = NGX_CONF_UNSET_UINT;
    conf->dry_run = NGX_CONF_UNSET;
    conf->hide_credentials = NGX_CONF_UNSET;
    conf->limits = static_cast<ngx_array_t *>(NGX_CONF_UNSET_PTR);
    conf->limit_by = NGX_CONF_UNSET_UINT;
    conf->status_format = NGX_CONF_UNSET_UINT;
    return conf;
}


bool make_challenge(ngx_conf_t *cf, ApiKeyLocConf *conf) noexcept {
    for (size_t i = 0; i < conf->realm.len; i++) {
        u_char c = conf->realm.data[i];
        if (c < 0x20 || c == 0x7f || c == '"' || c == '\\') {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid api_key_realm \"%V\"", &conf->realm);
            return false;
        }
    }
    static constexpr char invalid[] = ", error=\"invalid_token\"";
    size_t len = sizeof("Bearer realm=\"\"") - 1 + conf->realm.len;
    auto *p = static_cast<u_char *>(ngx_pnalloc(cf->pool, len + sizeof(invalid) - 1));
    if (p == nullptr) return false;
    conf->challenge.data = p;
    conf->challenge.len = len;
    conf->challenge_invalid.data = p;
    conf->challenge_invalid.len = len + sizeof(invalid) - 1;
    p = ngx_sprintf(p, "Bearer realm=\"%V\"", &conf->realm);
    ngx_memcpy(p, invalid, sizeof(invalid) - 1);
    return true;
}

char *merge_loc_conf(ngx_conf_t *cf, void *parent, void *child) noexcept {
    auto *prev = static_cast<ApiKeyLocConf *>(parent);
    auto *conf = static_cast<ApiKeyLocConf *>(child);

    ngx_conf_merge_ptr_value(conf->zone, prev->zone, nullptr);
    ngx_conf_merge_ptr_value(conf->sources, prev->sources, nullptr);
    ngx_conf_merge_ptr_value(conf->scope_rules, prev->scope_rules, nullptr);
    ngx_conf_merge_ptr_value(conf->plans, prev->plans, nullptr);
    ngx_conf_merge_uint_value(conf->environment, prev->environment,
                              static_cast<ngx_uint_t>(apikey::RequiredEnvironment::any));
    ngx_conf_merge_value(conf->dry_run, prev->dry_run, 0);
    ngx_conf_merge_value(conf->hide_credentials, prev->hide_credentials, 1);
    ngx_conf_merge_str_value(conf->realm, prev->realm, "api");
    ngx_conf_merge_ptr_value(conf->limits, prev->limits, nullptr);
    ngx_conf_merge_str_value(conf->limit_category, prev->limit_category, "");
    ngx_conf_merge_uint_value(conf->limit_by, prev->limit_by,
                              static_cast<ngx_uint_t>(apikey::LimitBy::key));

    if (conf->sources == nullptr) {
        conf->sources = ngx_array_create(cf->pool, 1, sizeof(Source));
        if (conf->sources == nullptr) return conf_error();
        auto *bearer = static_cast<Source *>(ngx_array_push(conf->sources));
        if (bearer == nullptr) return conf_error();
        *bearer = Source{ngx_null_string};
    }

    if (!make_challenge(cf, conf)) return conf_error();
    if (conf->zone == nullptr) return conf_ok();

    try {
        std::vector<apikey::ScopeRule> rules;
        for (const ScopeRuleConf &r : items<ScopeRuleConf>(conf->scope_rules)) {
            apikey::ScopeRule rule;
            rule.methods = r.methods;
            for (const ngx_str_t &s : items<ngx_str_t>(r.scopes)) rule.scopes.push_back(to_string(s));
            rules.push_back(std::move(rule));
        }
        std::vector<std::string> plans;
        for (const ngx_str_t &s : items<ngx_str_t>(conf->plans)) plans.push_back(to_string(s));
        conf->policy = pool_new<apikey::AccessPolicy>(
            cf->pool, std::move(rules), std::move(plans),
            static_cast<apikey::RequiredEnvironment>(conf->environment));
    } catch (const std::exception &e) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "api_key: %s", e.what());
        return conf_error();
    }
    return conf_ok();
}

// --- request path -------------------------------------------------------------

unsigned method_of(const ngx_http_request_t *r) noexcept {
    switch (r->method) {
    case NGX_HTTP_GET: return apikey::kGet;
    case NGX_HTTP_HEAD: return apikey::kHead;
    case NGX_HTTP_POST: return apikey::kPost;
    case NGX_HTTP_PUT: return apikey::kPut;
    case NGX_HTTP_PATCH: return apikey::kPatch;
    case NGX_HTTP_DELETE: return apikey::kDelete;
    case NGX_HTTP_OPTIONS: return apikey::kOptions;
    default: return apikey::kOtherMethod;
    }
}

bool is_source_header(const ApiKeyLocConf *lcf, const ngx_table_elt_t &h) noexcept {
    for (const Source &s : items<Source>(lcf->sources)) {
        if (s.header.len != 0 && s.header.len == h.key.len &&
            ngx_strncmp(s.header.data, h.lowcase_key, h.key.len) == 0) {
            return true;
        }
    }
    return false;
}

template <typename F>
void for_each_header(ngx_http_request_t *r, F &&f) noexcept {
    for (ngx_list_part_t *part = &r->headers_in.headers.part; part; part = part->next) {
        auto *h = static_cast<ngx_table_elt_t *>(part->elts);
        for (ngx_uint_t i = 0; i < part->nelts; i++) f(h[i]);
    }
}

// Reads every configured source; all of them, not just the first that has a
// key, so that two different keys in one request are noticed.
apikey::KeyCollector collect_key(ngx_http_request_t *r, const ApiKeyLocConf *lcf) noexcept {
    apikey::KeyCollector keys;
    for (const Source &s : items<Source>(lcf->sources)) {
        if (s.header.len == 0) {
            if (r->headers_in.authorization == nullptr) continue;
            std::string_view token;
            switch (apikey::parse_bearer(to_view(r->headers_in.authorization->value), token)) {
            case apikey::BearerParse::token: keys.offer(token); break;
            case apikey::BearerParse::empty_token: keys.offer_malformed(); break;
            case apikey::BearerParse::not_bearer: break;
            }
            continue;
        }
        for_each_header(r, [&](const ngx_table_elt_t &h) {
            if (h.value.len != 0 && h.key.len == s.header.len &&
                ngx_strncmp(h.lowcase_key, s.header.data, s.header.len) == 0) {
                keys.offer(to_view(h.value));
            }
        });
    }
    return keys;
}

// The proxy module of nginx 1.22 forwards every element of the request's
// header list, so the carrier has to leave the list itself. The list is
// rebuilt rather than edited in place: other fields of headers_in point at
// its elements, and they must stay valid.
ngx_int_t hide_credentials(ngx_http_request_t *r, const ApiKeyLocConf *lcf) noexcept {
    ngx_uint_t total = 0, carriers = 0;
    for_each_header(r, [&](const ngx_table_elt_t &h) {
        total++;
        if (&h == r->headers_in.authorization || is_source_header(lcf, h)) carriers++;
    });
    if (carriers == 0) return NGX_OK;

    ngx_list_t kept;
    if (ngx_list_init(&kept, r->pool, total - carriers + 1, sizeof(ngx_table_elt_t)) != NGX_OK) {
        return NGX_ERROR;
    }
    bool hide_bearer = false;
    for (const Source &s : items<Source>(lcf->sources)) hide_bearer |= s.header.len == 0;
    for_each_header(r, [&](const ngx_table_elt_t &h) {
        bool carrier = (hide_bearer && &h == r->headers_in.authorization) || is_source_header(lcf, h);
        if (!carrier) *static_cast<ngx_table_elt_t *>(ngx_list_push(&kept)) = h;
    });
    r->headers_in.headers = kept;
    // The copy's `last` still points at the local list's first part; a
    // module that adds a header later (e.g. ngx.req.set_header) must find
    // the request's own list there.
    r->headers_in.headers.last = &r->headers_in.headers.part;
    if (hide_bearer) r->headers_in.authorization = nullptr;
    return NGX_OK;
}

ngx_table_elt_t *add_header(ngx_http_request_t *r, std::string_view name,
                            const ngx_str_t &value) noexcept {
    auto *h = static_cast<ngx_table_elt_t *>(ngx_list_push(&r->headers_out.headers));
    if (h == nullptr) return nullptr;
    h->hash = 1;
    h->key = literal(name);
    h->value = value;
    return h;
}

// Decimal digits into a caller's buffer: the rate-limit headers are on the
// accept path, where ngx_sprintf and a pool allocation per header add up.
ngx_str_t number(u_char (&buf)[NGX_INT64_LEN], std::uint64_t value) noexcept {
    u_char *end = buf + NGX_INT64_LEN;
    u_char *p = end;
    do {
        *--p = static_cast<u_char>('0' + value % 10);
        value /= 10;
    } while (value != 0 && p > buf);
    return {static_cast<size_t>(end - p), p};
}

// The one place every refusal goes through: the SPEC's envelope as JSON.
ngx_int_t send_refusal(ngx_http_request_t *r, const ApiKeyLocConf *lcf, RequestCtx *ctx,
                       const apikey::Verdict &verdict, bool key_sent) noexcept {
    const apikey::OutcomeInfo &info = apikey::describe(verdict.outcome);

    if (ngx_http_discard_request_body(r) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;

    char limit_detail[apikey::kMaxLimitDetail];
    std::string_view detail = verdict.missing_scope;
    if (verdict.outcome == Outcome::rate_limited) {
        detail = {limit_detail,
                  apikey::describe_limit(limit_detail, ctx->limit_rate, ctx->limit_category)};
    }
    auto *body = static_cast<u_char *>(ngx_pnalloc(r->pool, apikey::kMaxErrorBody));
    if (body == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    size_t len = apikey::write_error_body(
        reinterpret_cast<char *>(body), verdict.outcome,
        std::string_view(ctx->request_id, apikey::kRequestIdLength), detail);

    r->headers_out.status = info.status;
    r->headers_out.content_length_n = static_cast<off_t>(len);
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = nullptr;

    static const ngx_str_t no_store = ngx_string("no-store");
    if (add_header(r, "Cache-Control", no_store) == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    if (verdict.outcome == Outcome::rate_limited) {
        ngx_str_t retry = number(ctx->numbers[3], ctx->limit.retry_after_s);
        if (add_header(r, "Retry-After", retry) == nullptr) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }
    if (info.status == NGX_HTTP_UNAUTHORIZED) {
        r->headers_out.www_authenticate =
            add_header(r, "WWW-Authenticate", key_sent ? lcf->challenge_invalid : lcf->challenge);
        if (r->headers_out.www_authenticate == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_int_t rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) return rc;

    auto *b = static_cast<ngx_buf_t *>(ngx_calloc_buf(r->pool));
    if (b == nullptr) return NGX_ERROR;
    b->pos = body;
    b->last = body + len;
    b->memory = 1;
    b->last_buf = 1;
    b->last_in_chain = 1;
    ngx_chain_t out = {b, nullptr};
    return ngx_http_output_filter(r, &out);
}

void log_refusal(ngx_http_request_t *r, const ApiKeyLocConf *lcf, const RequestCtx *ctx) noexcept {
    const apikey::OutcomeInfo &info = apikey::describe(ctx->outcome);
    ngx_str_t code = literal(info.code);
    ngx_str_t id = ngx_null_string;
    if (ctx->record) id = literal(ctx->table_ref.table.text(ctx->record->id));
    // Never the key itself: the id is public, the key is a secret.
    if (lcf->dry_run) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "api key dry run: would refuse with \"%V\"%s%V%s", &code,
                      id.len ? ", key id \"" : "", &id, id.len ? "\"" : "");
    } else {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0, "api key refused: \"%V\"%s%V%s", &code,
                      id.len ? ", key id \"" : "", &id, id.len ? "\"" : "");
    }
}

// Runs when the request's pool is destroyed, after the log phase: the
// table the request read stays in place until then.
void ctx_cleanup(void *data) noexcept {
    auto *ctx = static_cast<RequestCtx *>(data);
    if (ctx->zone != nullptr) ctx->zone->shared.release(ctx->table_ref);
}

// nginx clears module contexts on an internal redirect (index, try_files,
// error_page); the pool cleanup entry keeps ours findable, as realip does.
RequestCtx *get_ctx(ngx_http_request_t *r) noexcept {
    auto *ctx = static_cast<RequestCtx *>(ngx_http_get_module_ctx(r, ngx_http_api_key_module));
    if (ctx == nullptr && (r->internal || r->filter_finalize)) {
        for (ngx_pool_cleanup_t *cln = r->pool->cleanup; cln; cln = cln->next) {
            if (cln->handler == ctx_cleanup) {
                ctx = static_cast<RequestCtx *>(cln->data);
                ngx_http_set_ctx(r, ctx, ngx_http_api_key_module);
                break;
            }
        }
    }
    return ctx;
}

RequestCtx *create_ctx(ngx_http_request_t *r, const ApiKeyLocConf *lcf) noexcept {
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(r->pool, sizeof(RequestCtx));
    if (cln == nullptr) return nullptr;
    auto *ctx = new (cln->data) RequestCtx{};
    cln->handler = ctx_cleanup;
    ngx_http_set_ctx(r, ctx, ngx_http_api_key_module);
    request_ids.next(ctx->request_id);
    ctx->zone = static_cast<KeyZone *>(lcf->zone->data);
    ctx->table_ref = ctx->zone->shared.acquire();

    apikey::KeyCollector keys = collect_key(r, lcf);
    ctx->key_sent = keys.state() != apikey::KeyCollector::State::none;
    switch (keys.state()) {
    case apikey::KeyCollector::State::none: ctx->presented = Outcome::missing_key; break;
    case apikey::KeyCollector::State::malformed: ctx->presented = Outcome::invalid_key; break;
    case apikey::KeyCollector::State::multiple: ctx->presented = Outcome::multiple_keys; break;
    case apikey::KeyCollector::State::one:
        bool cached = false;
        ctx->presented = apikey::identify_key(ctx->table_ref.table, keys.key(), ctx->environment,
                                              ctx->digest, &key_digests, &cached);
        ctx->identified = ctx->presented == Outcome::accepted;
        if (ctx->identified && !cached) ctx->uncached_key = keys.key();
        break;
    }
    return ctx;
}

void warn_zone_full(ngx_http_request_t *r, LimitZone *zone) noexcept {
    if (zone->warned_at != 0 && ngx_current_msec - zone->warned_at < 10000) return;
    zone->warned_at = ngx_current_msec ? ngx_current_msec : 1;
    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "api_key_limit_zone \"%V\" is full: an active counter was evicted, "
                  "so its key may get more than its limit; make the zone larger",
                  &zone->name);
}

// Every configured limit of the request's category, in order. Limits that
// land on the same budget (same zone and period, e.g. after a key's own
// rate replaced both) count once, at the strictest rate. A refusal by one
// takes back what the earlier ones counted: refused requests spend nothing.
Outcome apply_limits(ngx_http_request_t *r, const ApiKeyLocConf *lcf, RequestCtx *ctx) noexcept {
    struct Budget {
        LimitZone *zone;
        std::uint64_t id;
        apikey::Rate rate;
        apikey::CounterResult result;
    } budgets[kMaxLimits];
    size_t n = 0;

    const apikey::KeyTable &table = ctx->table_ref.table;
    const std::string_view category =
        apikey::request_category(to_view(lcf->limit_category), method_of(r));
    char kind;
    const std::string_view holder = apikey::budget_holder(
        table, *ctx->record, static_cast<apikey::LimitBy>(lcf->limit_by), kind);

    for (const LimitConf &limit : items<LimitConf>(lcf->limits)) {
        if (to_view(limit.category) != category) continue;
        auto *zone = static_cast<LimitZone *>(limit.zone->data);
        const apikey::Rate rate = apikey::effective_rate(table, *ctx->record, category, limit.rate);
        const std::uint64_t id =
            apikey::budget_id(kind, holder, category, rate.period_seconds * 1000);
        size_t i = 0;
        while (i < n && !(budgets[i].zone == zone && budgets[i].id == id)) i++;
        if (i < n) {
            if (rate.count < budgets[i].rate.count) budgets[i].rate = rate;
        } else if (n < kMaxLimits) {
            budgets[n++] = {zone, id, rate, {}};
        }
    }

    const bool commit = !lcf->dry_run;
    for (size_t i = 0; i < n; i++) {
        Budget &b = budgets[i];
        const apikey::WindowLimit window{b.rate.count, b.rate.period_seconds * 1000};
        b.result = b.zone->table.consume(b.id, window, static_cast<std::int64_t>(ngx_current_msec),
                                         commit, static_cast<std::uint32_t>(ngx_pid));
        if (b.result.evicted_active) warn_zone_full(r, b.zone);

        // The headers report the limit closest to refusing.
        if (!ctx->limited || !b.result.decision.allowed ||
            b.result.decision.remaining < ctx->limit.remaining) {
            ctx->limit = b.result.decision;
            ctx->limited = true;
            ctx->limit_rate = b.rate;
            ctx->limit_category = category;
        }
        if (!b.result.decision.allowed) {
            for (size_t k = 0; commit && k < i; k++) {
                budgets[k].zone->table.refund(budgets[k].result, budgets[k].id,
                                              static_cast<std::uint32_t>(ngx_pid));
            }
            return Outcome::rate_limited;
        }
    }
    return Outcome::accepted;
}

// extract -> hash -> lookup -> revoked -> expired -> environment -> plan ->
// scopes -> limits -> accept, every refusal through send_refusal.
ngx_int_t access_handler(ngx_http_request_t *r) noexcept {
    auto *lcf = static_cast<ApiKeyLocConf *>(ngx_http_get_module_loc_conf(r, ngx_http_api_key_module));
    if (lcf->zone == nullptr) return NGX_DECLINED;

    RequestCtx *ctx = get_ctx(r);
    if (ctx == nullptr) {
        ctx = create_ctx(r, lcf);
        if (ctx == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    auto *zone = static_cast<KeyZone *>(lcf->zone->data);
    if (ctx->zone != zone) {  // an internal redirect into a location of another zone
        ctx->zone->shared.release(ctx->table_ref);
        ctx->zone = zone;
        ctx->table_ref = zone->shared.acquire();
    }
    if (!ctx->table_ref.table.valid()) return NGX_HTTP_INTERNAL_SERVER_ERROR;

    apikey::Verdict verdict;
    verdict.environment = ctx->environment;
    if (ctx->identified) {
        verdict = lcf->policy->check_digest(ctx->table_ref.table, ctx->digest, ctx->environment,
                                            method_of(r), ngx_time());
    } else {
        verdict.outcome = ctx->presented;
    }
    ctx->record = verdict.record;
    // Only keys the table knows are remembered: random keys cannot push
    // real ones out of the cache. (The key's bytes are the request's header
    // memory, still there even when the header was hidden.)
    if (ctx->record != nullptr && !ctx->uncached_key.empty()) {
        key_digests.remember(ctx->uncached_key, ctx->digest);
        ctx->uncached_key = {};
    }
    ctx->dry_run = lcf->dry_run;
    if (verdict.outcome == Outcome::accepted && lcf->limits != nullptr) {
        // Once per request: an internal redirect (index, try_files) runs the
        // access phase again, and must not spend the budget twice.
        if (!ctx->limits_applied) {
            ctx->limits_applied = true;
            ctx->limit_outcome = apply_limits(r, lcf, ctx);
        }
        verdict.outcome = ctx->limit_outcome;
    }
    ctx->outcome = verdict.outcome;
    if (!ctx->counted) {  // once per request, not again after an internal redirect
        ctx->counted = true;
        zone->shared.usage().count(
            ctx->record ? ctx->table_ref.table.text(ctx->record->id) : std::string_view(),
            verdict.outcome, ngx_time());
    }

    if (verdict.outcome != Outcome::accepted) {
        log_refusal(r, lcf, ctx);
        if (!lcf->dry_run) {
            ngx_http_finalize_request(r, send_refusal(r, lcf, ctx, verdict, ctx->key_sent));
            return NGX_DONE;
        }
    }

    if (lcf->hide_credentials && hide_credentials(r, lcf) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    return verdict.outcome == Outcome::accepted ? NGX_OK : NGX_DECLINED;
}

ngx_int_t header_filter(ngx_http_request_t *r) noexcept {
    RequestCtx *ctx = r == r->main ? get_ctx(r) : nullptr;
    if (ctx != nullptr) {
        ngx_str_t id = {apikey::kRequestIdLength, reinterpret_cast<u_char *>(ctx->request_id)};
        if (add_header(r, "X-Request-Id", id) == nullptr) return NGX_ERROR;
        if (ctx->limited && !ctx->dry_run) {
            const std::pair<std::string_view, std::uint64_t> headers[] = {
                {"X-RateLimit-Limit", ctx->limit.limit},
                {"X-RateLimit-Remaining", ctx->limit.allowed ? ctx->limit.remaining : 0},
                {"X-RateLimit-Reset", ctx->limit.reset_s},
            };
            for (size_t i = 0; i < 3; i++) {
                ngx_str_t text = number(ctx->numbers[i], headers[i].second);
                if (add_header(r, headers[i].first, text) == nullptr) return NGX_ERROR;
            }
        }
    }
    return next_header_filter(r);
}

// --- variables ----------------------------------------------------------------

enum class Var : uintptr_t {
    id, owner, organization_id, plan, environment, scopes, error, request_id, limit_remaining,
};

void set_value(ngx_http_variable_value_t *v, std::string_view s) noexcept {
    if (s.empty()) {
        v->not_found = 1;
        return;
    }
    v->data = reinterpret_cast<u_char *>(const_cast<char *>(s.data()));
    v->len = static_cast<unsigned>(s.size());
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
}

ngx_int_t scopes_value(ngx_http_request_t *r, ngx_http_variable_value_t *v,
                       const apikey::KeyTable &table, const apikey::ScopeSet &scopes) noexcept {
    size_t len = 0;
    for (uint32_t bit = 0; bit < table.scope_count(); bit++) {
        if (scopes.test(bit)) len += table.scope_name(bit).size() + 1;
    }
    if (len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }
    auto *p = static_cast<u_char *>(ngx_pnalloc(r->pool, len));
    if (p == nullptr) return NGX_ERROR;
    u_char *q = p;
    for (uint32_t bit = 0; bit < table.scope_count(); bit++) {
        if (!scopes.test(bit)) continue;
        std::string_view name = table.scope_name(bit);
        if (q != p) *q++ = ' ';
        q = ngx_cpymem(q, name.data(), name.size());
    }
    set_value(v, std::string_view(reinterpret_cast<char *>(p), static_cast<size_t>(q - p)));
    return NGX_OK;
}

ngx_int_t variable(ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t data) noexcept {
    RequestCtx *ctx = get_ctx(r->main);
    v->not_found = 1;
    if (ctx == nullptr) return NGX_OK;

    if (ctx->zone == nullptr) return NGX_OK;
    const apikey::KeyRecord *rec = ctx->record;
    const apikey::KeyTable &table = ctx->table_ref.table;
    switch (static_cast<Var>(data)) {
    case Var::request_id:
        set_value(v, std::string_view(ctx->request_id, apikey::kRequestIdLength));
        break;
    case Var::error: set_value(v, apikey::describe(ctx->outcome).code); break;
    case Var::environment: set_value(v, apikey::environment_name(ctx->environment)); break;
    case Var::id:
        if (rec) set_value(v, table.text(rec->id));
        break;
    case Var::owner:
        if (rec) set_value(v, table.text(rec->owner));
        break;
    case Var::organization_id:
        if (rec) set_value(v, table.text(rec->organization));
        break;
    case Var::plan:
        if (rec) set_value(v, table.plan_name(rec->plan));
        break;
    case Var::scopes:
        if (rec) return scopes_value(r, v, table, rec->scopes);
        break;
    case Var::limit_remaining:
        if (ctx->limited) {
            auto *buf = static_cast<u_char(*)[NGX_INT64_LEN]>(
                ngx_pnalloc(r->pool, NGX_INT64_LEN));
            if (buf == nullptr) return NGX_ERROR;
            set_value(v, to_view(number(*buf, ctx->limit.allowed ? ctx->limit.remaining : 0)));
        }
        break;
    }
    return NGX_OK;
}

ngx_int_t add_variables(ngx_conf_t *cf) noexcept {
    static const std::pair<std::string_view, Var> vars[] = {
        {"api_key_id", Var::id},
        {"api_key_owner", Var::owner},
        {"api_key_organization_id", Var::organization_id},
        {"api_key_plan", Var::plan},
        {"api_key_environment", Var::environment},
        {"api_key_scopes", Var::scopes},
        {"api_key_error", Var::error},
        {"api_key_request_id", Var::request_id},
        {"api_key_limit_remaining", Var::limit_remaining},
    };
    for (const auto &[name, which] : vars) {
        ngx_str_t n = literal(name);
        ngx_http_variable_t *var = ngx_http_add_variable(cf, &n, NGX_HTTP_VAR_NOCACHEABLE);
        if (var == nullptr) return NGX_ERROR;
        var->get_handler = variable;
        var->data = static_cast<uintptr_t>(which);
    }
    return NGX_OK;
}

// Every zone named by "api_key" or "api_key_limit" must have been declared.
ngx_int_t check_zones(ngx_conf_t *cf) noexcept {
    for (ngx_list_part_t *part = &cf->cycle->shared_memory.part; part; part = part->next) {
        auto *zones = static_cast<ngx_shm_zone_t *>(part->elts);
        for (ngx_uint_t i = 0; i < part->nelts; i++) {
            if (zones[i].data != nullptr) continue;
            if (zones[i].tag == &ngx_http_api_key_module) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "unknown api_key_zone \"%V\"",
                                   &zones[i].shm.name);
                return NGX_ERROR;
            }
            if (zones[i].tag == &limit_zone_tag) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "unknown api_key_limit_zone \"%V\"",
                                   &zones[i].shm.name);
                return NGX_ERROR;
            }
        }
    }
    return NGX_OK;
}

ngx_int_t postconfiguration(ngx_conf_t *cf) noexcept {
    if (ngx_process != NGX_PROCESS_SIGNALLER && check_zones(cf) != NGX_OK) return NGX_ERROR;

    auto *cmcf = static_cast<ngx_http_core_main_conf_t *>(
        ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module));
    auto *h = static_cast<ngx_http_handler_pt *>(
        ngx_array_push(&cmcf->phases[NGX_HTTP_ACCESS_PHASE].handlers));
    if (h == nullptr) return NGX_ERROR;
    *h = access_handler;

    next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = header_filter;
    return NGX_OK;
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

// Logged once per version of the file, however often it is retried.
void record_load_failure(KeyZone &zone, const apikey::FileIdentity &file, const std::string &why,
                         bool transient, ngx_log_t *log) noexcept {
    const bool reported = zone.shared.failed_for(file);
    zone.shared.record_failure(file, ngx_time(), why, transient);
    if (reported) return;
    ngx_log_error(NGX_LOG_ERR, log, 0,
                  "api_key_zone \"%V\": %s; the key table loaded before stays in force%s",
                  &zone.name, why.c_str(), transient ? " (retried every few seconds)" : "");
}

// check=: one worker notices a new version of the file, loads it and swaps
// it in for all; the others go on serving meanwhile. A version that is
// wrong is reported once and not retried until the file changes again; one
// that found no room (replaced tables still in use by long requests) is
// retried every few seconds.
void load_changed_file(KeyZone &zone, ngx_log_t *log) noexcept {
    constexpr std::int64_t kRetrySeconds = 3;
    apikey::FileIdentity file;
    const bool exists = apikey::identify_file(zone.path, file);
    const int stat_error = errno;
    const apikey::SharedTablesState *state = zone.shared.state();
    const bool current = exists && file == state->loaded_file;
    if (current && state->failed_at == 0) return;
    if (zone.shared.gave_up_on(file)) return;
    if (zone.shared.failed_for(file) && ngx_time() - state->failed_at < kRetrySeconds) return;
    if (!zone.shared.try_lock_loader(static_cast<std::uint32_t>(ngx_pid))) return;

    // Again under the lock: another worker may have just done the work.
    if (exists && file == state->loaded_file) {
        zone.shared.clear_failure();  // the file is back to the version in force
    } else if (zone.shared.gave_up_on(file)) {
        // reported already
    } else if (!exists) {
        record_load_failure(zone, file, zone.path + ": cannot stat: " + std::strerror(stat_error),
                            false, log);
    } else {
        try {
            apikey::TableImage image = apikey::load_key_file(zone.path);
            std::string error;
            if (zone.shared.install(image, file, ngx_time(), error)) {
                ngx_log_error(NGX_LOG_NOTICE, log, 0,
                              "api_key_zone \"%V\": loaded %uL keys from \"%s\" (generation %uL)",
                              &zone.name, static_cast<uint64_t>(state->keys), zone.path.c_str(),
                              static_cast<uint64_t>(state->generation));
            } else {
                record_load_failure(zone, file, error, true, log);
            }
        } catch (const std::exception &e) {
            record_load_failure(zone, file, e.what(), false, log);
        }
    }
    zone.shared.unlock_loader();
}

void check_timer(ngx_event_t *ev) noexcept {
    auto *zone = static_cast<KeyZone *>(ev->data);
    zone->shared.reclaim();
    load_changed_file(*zone, ev->log);
    if (!ngx_exiting && !ngx_quit && !ngx_terminate) ngx_add_timer(ev, zone->check);
}

ngx_int_t init_process(ngx_cycle_t *cycle) noexcept {
    uint64_t seed;
    if (RAND_bytes(reinterpret_cast<unsigned char *>(&seed), sizeof seed) != 1) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0, "api_key: RAND_bytes() failed");
        return NGX_ERROR;
    }
    request_ids = apikey::RequestIdGenerator(seed);
    apikey::SipKey secret;
    if (RAND_bytes(reinterpret_cast<unsigned char *>(&secret), sizeof secret) != 1) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0, "api_key: RAND_bytes() failed");
        return NGX_ERROR;
    }
    key_digests.seed(secret);

    bool joined = true;
    for_each_key_zone(cycle, [&](KeyZone &zone) {
        if (!zone.shared.join(static_cast<std::uint32_t>(ngx_pid))) {
            ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                          "api_key_zone \"%V\": more than %uz processes read the zone",
                          &zone.name, apikey::kMaxReaders);
            joined = false;
        }
        if (zone.check) {
            ngx_event_t *ev = &zone.check_event;
            ngx_memzero(ev, sizeof(ngx_event_t));
            ev->handler = check_timer;
            ev->data = &zone;
            ev->log = cycle->log;
            ev->cancelable = 1;  // a graceful shutdown does not wait for it
            // Workers start their checks at staggered times.
            ngx_add_timer(ev, zone.check / 2 + ngx_random() % (zone.check / 2 + 1));
        }
    });
    return joined ? NGX_OK : NGX_ERROR;
}

void exit_process(ngx_cycle_t *cycle) noexcept {
    for_each_key_zone(cycle, [](KeyZone &zone) { zone.shared.leave(); });
}

// api_key_status: usage across all workers, read from the zones themselves.
ngx_int_t status_handler(ngx_http_request_t *r) noexcept {
    if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD))) return NGX_HTTP_NOT_ALLOWED;
    if (ngx_http_discard_request_body(r) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    auto *lcf = static_cast<ApiKeyLocConf *>(ngx_http_get_module_loc_conf(r, ngx_http_api_key_module));
    const bool prometheus = lcf->status_format == 1;

    std::string text;
    try {
        std::vector<apikey::ZoneReport> zones;
        for_each_key_zone(const_cast<ngx_cycle_t *>(ngx_cycle), [&](KeyZone &zone) {
            const apikey::SharedTablesState *state = zone.shared.state();
            if (state == nullptr) return;
            apikey::ZoneReport report;
            report.zone = to_view(zone.name);
            report.file = zone.path;
            report.keys = state->keys;
            report.generation = state->generation;
            report.loaded_at = state->loaded_at;
            report.last_error =
                std::string_view(state->last_error, strnlen(state->last_error, apikey::kMaxLoadError));
            report.bytes_total = static_cast<uint64_t>(zone.memory.pool->end - zone.memory.base());
            report.bytes_free = static_cast<uint64_t>(zone.memory.pool->pfree) * ngx_pagesize;
            report.usage = &zone.shared.usage();
            zones.push_back(report);
        });
        text = prometheus ? apikey::status_prometheus(zones) : apikey::status_json(zones);
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "api_key_status: %s", e.what());
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = static_cast<off_t>(text.size());
    if (prometheus) {
        ngx_str_set(&r->headers_out.content_type, "text/plain; version=0.0.4; charset=utf-8");
    } else {
        ngx_str_set(&r->headers_out.content_type, "application/json");
    }
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    static const ngx_str_t no_store = ngx_string("no-store");
    if (add_header(r, "Cache-Control", no_store) == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;

    ngx_int_t rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) return rc;
    ngx_buf_t *b = ngx_create_temp_buf(r->pool, text.size() ? text.size() : 1);
    if (b == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    b->last = ngx_cpymem(b->pos, text.data(), text.size());
    b->last_buf = 1;
    b->last_in_chain = 1;
    ngx_chain_t out = {b, nullptr};
    return ngx_http_output_filter(r, &out);
}

ngx_http_module_t module_ctx = {
    add_variables,      // preconfiguration
    postconfiguration,  // postconfiguration
    nullptr,            // create main configuration
    nullptr,            // init main configuration
    nullptr,            // create server configuration
    nullptr,            // merge server configuration
    create_loc_conf,    // create location configuration
    merge_loc_conf,     // merge location configuration
};

}  // namespace

ngx_module_t ngx_http_api_key_module = {
    NGX_MODULE_V1,
    &module_ctx,
    commands,
    NGX_HTTP_MODULE,
    nullptr,       // init master
    nullptr,       // init module
    init_process,  // init process
    nullptr,       // init thread
    nullptr,       // exit thread
    exit_process,  // exit process
    nullptr,       // exit master
    NGX_MODULE_V1_PADDING,
};
