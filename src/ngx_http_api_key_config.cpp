// Configuration time: directives, create and merge, the key and limit zones,
// a reload's staging and publishing of key tables, check= loads on a loader
// thread, and process start and exit.

#include "ngx_http_api_key_module.h"

#include <openssl/rand.h>
#include <signal.h>

#include <cstring>
#include <exception>
#include <new>
#include <optional>
#include <utility>
#include <vector>

#include "core/config_rules.h"
#include "core/key_file.h"
#include "core/process_identity.h"

namespace ngx_api_key {

int limit_zone_tag;

namespace {

// nginx's configuration callbacks return char *; these keep the casts in one place.
char *conf_error() noexcept { return static_cast<char *>(NGX_CONF_ERROR); }
char *conf_ok() noexcept { return static_cast<char *>(NGX_CONF_OK); }
char *conf_message(const char *text) noexcept { return const_cast<char *>(text); }

std::string to_string(const ngx_str_t &s) {
    return std::string(reinterpret_cast<const char *>(s.data), s.len);
}

template <typename T>
T *conf_arg(ngx_conf_t *cf) noexcept {
    return static_cast<T *>(cf->args->elts);
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

ngx_int_t init_key_zone(ngx_shm_zone_t *shm_zone, void *data) noexcept;
ngx_int_t init_limit_zone(ngx_shm_zone_t *shm_zone, void *data) noexcept;

// --- directives -----------------------------------------------------------------

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

// A failed cycle never publishes what it staged: the cycle's pool goes, and
// with it the staged table. A cycle that published has nothing left here.
void discard_staged_table(void *data) noexcept {
    auto *zone = static_cast<KeyZone *>(data);
    if (zone->staged && zone->shared.state() != nullptr) zone->shared.discard_staged();
    zone->staged = false;
}

// A "name=value" argument: the value when the name matches.
bool parameter(const ngx_str_t &arg, std::string_view name, ngx_str_t &value) noexcept {
    const std::string_view text = to_view(arg);
    if (text.size() <= name.size() || text.substr(0, name.size()) != name) return false;
    value = {arg.len - name.size(), arg.data + name.size()};
    return true;
}

// The smallest zone for the table, its usage counters and, with a channel,
// the overlay, which grows with the zone (a fixed point, reached at once).
size_t smallest_key_zone(const KeyZone &zone, const apikey::ZoneSizing &sizing) noexcept {
    const size_t tables = sizing.smallest_zone(zone.image.size());
    size_t size = tables;
    for (int i = 0; i < 3 && !zone.channel.empty(); i++) {
        size = tables + apikey::channel_state_bytes(apikey::channel_overlay_capacity(size)) +
               ngx_pagesize;
    }
    return size;
}

// api_key_zone NAME:SIZE file=PATH [check=TIME] [sync=REDIS channel=NAME [verify=PEM]
// [stale=TIME]];
char *api_key_zone(ngx_conf_t *cf, ngx_command_t *, void *) noexcept {
    ngx_str_t *value = conf_arg<ngx_str_t>(cf);
    ngx_str_t file = ngx_null_string;
    ngx_msec_t check = 0;
    ngx_str_t redis_name = ngx_null_string, channel = ngx_null_string, verify = ngx_null_string;
    ngx_msec_t stale = 10000;
    bool stale_set = false;

    for (ngx_uint_t i = 2; i < cf->args->nelts; i++) {
        std::string_view arg = to_view(value[i]);
        ngx_str_t v;
        if (parameter(value[i], "sync=", v)) {
            redis_name = v;
            continue;
        }
        if (parameter(value[i], "channel=", v)) {
            channel = v;
            continue;
        }
        if (parameter(value[i], "verify=", v)) {
            verify = v;
            if (ngx_conf_full_name(cf->cycle, &verify, 1) != NGX_OK) return conf_error();
            continue;
        }
        if (parameter(value[i], "stale=", v)) {
            stale = ngx_parse_time(&v, 0);
            if (stale == static_cast<ngx_msec_t>(NGX_ERROR) || stale < 100 || stale > 86400000) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid stale time \"%V\"", &value[i]);
                return conf_error();
            }
            stale_set = true;
            continue;
        }
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
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" must have \"file\" parameter", &value[0]);
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
        zone->budget_salt = apikey::key_zone_salt(to_view(name));
        zone->usage_capacity = apikey::usage_capacity_for(size);
        // The version is taken before reading: if the file changes during
        // the read, check= sees a difference and loads it again.
        if (!apikey::identify_file(zone->path, zone->file)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno, "stat() \"%V\" failed", &file);
            return conf_error();
        }
        zone->redis_name = redis_name;
        zone->channel = to_string(channel);
        zone->stale_ms = static_cast<std::int64_t>(stale);
        if (verify.len != 0) {
            std::string error;
            std::optional<apikey::Ed25519Verifier> key = apikey::Ed25519Verifier::load(
                to_string(verify), error);
            if (key)
                zone->verify = std::make_shared<const apikey::Ed25519Verifier>(std::move(*key));
            if (zone->verify == nullptr) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid verify key \"%V\": %s", &verify,
                                   error.c_str());
                return conf_error();
            }
        }
        if (stale_set && channel.len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"verify\" and \"stale\" need \"channel\"");
            return conf_error();
        }
        if (!configure_channel(cf, *zone)) return conf_error();
        zone->image = apikey::load_key_file(zone->load_path);

        const apikey::ZoneSizing sizing{ngx_pagesize, sizeof(ngx_slab_page_t)};
        // A channel's state and revocation overlay take their share first.
        const size_t channel_bytes = zone->channel.empty()
                                         ? 0
                                         : apikey::channel_state_bytes(
                                               apikey::channel_overlay_capacity(size)) +
                                               ngx_pagesize;
        if (size < sizing.needed(zone->image.size(), zone->usage_capacity) + channel_bytes) {
            // How the need is counted: the table in force plus room for the
            // next one, and the usage counters that zone size implies.
            const size_t smallest = smallest_key_zone(*zone, sizing);
            ngx_conf_log_error(
                NGX_LOG_EMERG, cf, 0,
                "zone \"%V\" is too small for \"%V\": %ui keys need at least %uzk (the table in "
                "force and room for the next one, for reloads and check=: %uzk each; usage "
                "counters: %uzk)",
                &name, &file, static_cast<ngx_uint_t>(zone->image.table().key_count()),
                smallest / 1024 + 1, zone->image.size() / 1024 + 1,
                apikey::UsageTable::bytes_for(apikey::usage_capacity_for(smallest)) / 1024 + 1);
            return conf_error();
        }
        ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(cf->pool, 0);
        if (cln == nullptr) return conf_error();
        cln->handler = discard_staged_table;
        cln->data = zone;
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
        } else if (arg.substr(0, 7) == "header=" && apikey::is_header_name(arg.substr(7))) {
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
        if (source.header.len != 0) {
            auto *amcf = static_cast<ApiKeyMainConf *>(
                ngx_http_conf_get_module_main_conf(cf, ngx_http_api_key_module));
            auto *header = static_cast<ngx_str_t *>(ngx_array_push(&amcf->source_headers));
            if (header == nullptr) return conf_error();
            *header = source.header;
        }
    }
    return conf_ok();
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
        if (!apikey::is_identifier(to_view(value[i]))) {
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
        if (!apikey::is_identifier(to_view(value[i]))) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid plan \"%V\"", &value[i]);
            return conf_error();
        }
        auto *slot = static_cast<ngx_str_t *>(ngx_array_push(lcf->plans));
        if (slot == nullptr) return conf_error();
        *slot = value[i];
    }
    return conf_ok();
}

// api_key_realm TEXT; checked here so that nginx -t points at this line.
char *api_key_realm(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept {
    char *rv = ngx_conf_set_str_slot(cf, cmd, conf);
    if (rv != NGX_CONF_OK) return rv;
    const auto *lcf = static_cast<ApiKeyLocConf *>(conf);
    if (!apikey::is_realm(to_view(lcf->realm))) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid realm \"%V\"", &lcf->realm);
        return conf_error();
    }
    return conf_ok();
}

ApiKeyMainConf *main_conf(ngx_conf_t *cf) noexcept {
    return static_cast<ApiKeyMainConf *>(
        ngx_http_conf_get_module_main_conf(cf, ngx_http_api_key_module));
}

// Reads a password at configuration time: the file's first line.
bool read_password(ngx_conf_t *cf, ngx_str_t &path, std::string &out) noexcept {
    if (ngx_conf_full_name(cf->cycle, &path, 1) != NGX_OK) return false;
    ngx_fd_t fd = ngx_open_file(path.data, NGX_FILE_RDONLY | NGX_FILE_NONBLOCK, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno, ngx_open_file_n " \"%V\" failed", &path);
        return false;
    }
    char buf[512];
    const ssize_t n = read(fd, buf, sizeof buf);
    ngx_close_file(fd);
    if (n < 0 || static_cast<size_t>(n) == sizeof buf) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "cannot read a password from \"%V\"", &path);
        return false;
    }
    out.assign(buf, static_cast<size_t>(n));
    ngx_explicit_memzero(buf, sizeof buf);
    const size_t end = out.find_first_of("\r\n");
    if (end != std::string::npos) out.resize(end);
    return true;
}

// api_key_redis NAME ADDRESS [db=N] [timeout=TIME] [password_file=PATH] [user=NAME] [prefix=P];
char *api_key_redis(ngx_conf_t *cf, ngx_command_t *, void *) noexcept {
    ngx_str_t *value = conf_arg<ngx_str_t>(cf);
    ApiKeyMainConf *amcf = main_conf(cf);
    for (const RedisConf *r : items<RedisConf *>(&amcf->redis)) {
        if (to_view(r->name) == to_view(value[1])) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "duplicate api_key_redis \"%V\"", &value[1]);
            return conf_error();
        }
    }
    try {
        auto *redis = pool_new<RedisConf>(cf->pool);
        redis->name = value[1];
        std::string host, path, error;
        int port = 0;
        if (!apikey::parse_redis_address(to_view(value[2]), host, port, path, error)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid address \"%V\": %s", &value[2],
                               error.c_str());
            return conf_error();
        }
        redis->endpoint.address = to_string(value[2]);
        for (ngx_uint_t i = 3; i < cf->args->nelts; i++) {
            ngx_str_t v;
            if (parameter(value[i], "db=", v)) {
                const ngx_int_t db = ngx_atoi(v.data, v.len);
                if (db == NGX_ERROR || db > 1000000) {
                    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid db \"%V\"", &value[i]);
                    return conf_error();
                }
                redis->endpoint.db = static_cast<int>(db);
            } else if (parameter(value[i], "timeout=", v)) {
                const ngx_msec_t t = ngx_parse_time(&v, 0);
                if (t == static_cast<ngx_msec_t>(NGX_ERROR) || t == 0 || t > 60000) {
                    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid timeout \"%V\"", &value[i]);
                    return conf_error();
                }
                redis->endpoint.timeout_ms = redis->endpoint.connect_timeout_ms = static_cast<int>(
                    t);
            } else if (parameter(value[i], "password_file=", v)) {
                if (!read_password(cf, v, redis->endpoint.password)) return conf_error();
            } else if (parameter(value[i], "user=", v)) {
                redis->endpoint.user = to_string(v);
            } else if (parameter(value[i], "prefix=", v)) {
                redis->prefix = to_string(v);
            } else {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid parameter \"%V\"", &value[i]);
                return conf_error();
            }
        }
        auto *slot = static_cast<RedisConf **>(ngx_array_push(&amcf->redis));
        if (slot == nullptr) return conf_error();
        *slot = redis;
    } catch (const std::exception &) {
        return conf_error();
    }
    return conf_ok();
}

// api_key_limit_zone NAME:SIZE [sync=REDIS] [interval=TIME] [overdraft=N] [fail=local|closed];
char *api_key_limit_zone(ngx_conf_t *cf, ngx_command_t *, void *) noexcept {
    ngx_str_t *value = conf_arg<ngx_str_t>(cf);
    ngx_shm_zone_t *shm_zone = add_zone(cf, value[1], &limit_zone_tag);
    if (shm_zone == nullptr) return conf_error();
    LimitZone *zone;
    try {
        zone = pool_new<LimitZone>(cf->pool);
    } catch (const std::exception &) {
        return conf_error();
    }
    zone->name = shm_zone->shm.name;
    bool sync_options = false;
    for (ngx_uint_t i = 2; i < cf->args->nelts; i++) {
        ngx_str_t v;
        if (parameter(value[i], "sync=", v)) {
            zone->redis_name = v;
        } else if (parameter(value[i], "interval=", v)) {
            const ngx_msec_t t = ngx_parse_time(&v, 0);
            if (t == static_cast<ngx_msec_t>(NGX_ERROR) || t < 10 || t > 10000) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid interval \"%V\"", &value[i]);
                return conf_error();
            }
            zone->sync.interval_ms = static_cast<std::uint32_t>(t);
            sync_options = true;
        } else if (parameter(value[i], "overdraft=", v)) {
            const ngx_int_t d = ngx_atoi(v.data, v.len);
            if (d == NGX_ERROR || d > 1000) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid overdraft \"%V\"", &value[i]);
                return conf_error();
            }
            zone->sync.overdraft = static_cast<std::uint32_t>(d);
            sync_options = true;
        } else if (parameter(value[i], "fail=", v)) {
            if (to_view(v) == "local") {
                zone->sync.fail = apikey::FailMode::local;
            } else if (to_view(v) == "closed") {
                zone->sync.fail = apikey::FailMode::closed;
            } else {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid fail \"%V\"", &value[i]);
                return conf_error();
            }
            sync_options = true;
        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid parameter \"%V\"", &value[i]);
            return conf_error();
        }
    }
    if (sync_options && zone->redis_name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"interval\", \"overdraft\" and \"fail\" need \"sync\"");
        return conf_error();
    }
    shm_zone->data = zone;
    shm_zone->init = init_limit_zone;
    return conf_ok();
}

// api_key_limit ZONE CATEGORY RATE;
char *api_key_limit(ngx_conf_t *cf, ngx_command_t *, void *conf) noexcept {
    auto *lcf = static_cast<ApiKeyLocConf *>(conf);
    ngx_str_t *value = conf_arg<ngx_str_t>(cf);

    if (lcf->limits == NGX_CONF_UNSET_PTR) {
        lcf->limits = ngx_array_create(cf->pool, 4, sizeof(apikey::ConfiguredLimit));
        if (lcf->limits == nullptr) return conf_error();
    }
    if (lcf->limits->nelts == kMaxLimits) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "too many \"api_key_limit\" here, at most %uz",
                           kMaxLimits);
        return conf_error();
    }
    if (!apikey::is_identifier(to_view(value[2]))) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid category \"%V\"", &value[2]);
        return conf_error();
    }
    std::optional<apikey::Rate> rate = apikey::parse_rate(to_view(value[3]));
    if (!rate) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid rate \"%V\"", &value[3]);
        return conf_error();
    }
    ngx_shm_zone_t *zone = ngx_shared_memory_add(cf, &value[1], 0, &limit_zone_tag);
    if (zone == nullptr) return conf_error();
    auto *limit = static_cast<apikey::ConfiguredLimit *>(ngx_array_push(lcf->limits));
    if (limit == nullptr) return conf_error();
    *limit = {zone, to_view(value[2]), *rate};
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
    if (!apikey::is_identifier(to_view(value[1]))) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid category \"%V\"", &value[1]);
        return conf_error();
    }
    lcf->limit_category = value[1];
    return conf_ok();
}

// api_key_status [json | prometheus] [keys=off | all | top=N];
char *api_key_status(ngx_conf_t *cf, ngx_command_t *, void *conf) noexcept {
    auto *lcf = static_cast<ApiKeyLocConf *>(conf);
    if (lcf->status_format != NGX_CONF_UNSET_UINT) return conf_message("is duplicate");
    StatusFormat format = StatusFormat::json;
    apikey::KeySeries keys;
    bool format_set = false, keys_set = false;
    ngx_str_t *value = conf_arg<ngx_str_t>(cf);
    for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
        const std::string_view v = to_view(value[i]);
        if (!format_set && !keys_set && (v == "json" || v == "prometheus")) {
            format = v == "json" ? StatusFormat::json : StatusFormat::prometheus;
            format_set = true;
        } else if (!keys_set && v.substr(0, 5) == "keys=") {
            if (!apikey::parse_key_series(v.substr(5), keys)) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid value \"%V\", expected \"keys=off\", \"keys=all\" or "
                                   "\"keys=top=N\" (N from 1 to %ui)",
                                   &value[i], static_cast<ngx_uint_t>(apikey::KeySeries::kMaxTop));
                return conf_error();
            }
            keys_set = true;
        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid parameter \"%V\"", &value[i]);
            return conf_error();
        }
    }
    lcf->status_format = static_cast<ngx_uint_t>(format);
    lcf->status_keys = keys;
    auto *clcf = static_cast<ngx_http_core_loc_conf_t *>(
        ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));
    clcf->handler = status_handler;
    return conf_ok();
}

ngx_conf_enum_t limit_by_values[] = {
    {ngx_string("key"), static_cast<ngx_uint_t>(apikey::LimitBy::key)},
    {ngx_string("owner"), static_cast<ngx_uint_t>(apikey::LimitBy::owner)},
    {ngx_string("organization"), static_cast<ngx_uint_t>(apikey::LimitBy::organization)},
    {ngx_null_string, 0},
};

ngx_conf_enum_t limit_headers_values[] = {
    {ngx_string("x"), kLimitHeadersX},
    {ngx_string("ietf"), kLimitHeadersIetf},
    {ngx_string("both"), kLimitHeadersBoth},
    {ngx_string("off"), kLimitHeadersOff},
    {ngx_null_string, 0},
};

ngx_conf_enum_t environment_values[] = {
    {ngx_string("any"), static_cast<ngx_uint_t>(apikey::RequiredEnvironment::any)},
    {ngx_string("live"), static_cast<ngx_uint_t>(apikey::RequiredEnvironment::live)},
    {ngx_string("test"), static_cast<ngx_uint_t>(apikey::RequiredEnvironment::test)},
    {ngx_null_string, 0},
};

constexpr ngx_uint_t kAnyLevel = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;

ngx_command_t commands[] = {
    {ngx_string("api_key_zone"), NGX_HTTP_MAIN_CONF | NGX_CONF_2MORE, api_key_zone, 0, 0, nullptr},
    {ngx_string("api_key"), kAnyLevel | NGX_CONF_TAKE1, api_key, NGX_HTTP_LOC_CONF_OFFSET, 0,
     nullptr},
    {ngx_string("api_key_source"), kAnyLevel | NGX_CONF_1MORE, api_key_source,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("api_key_scope"), kAnyLevel | NGX_CONF_1MORE, api_key_scope,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("api_key_plans"), kAnyLevel | NGX_CONF_1MORE, api_key_plans,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("api_key_environment"), kAnyLevel | NGX_CONF_TAKE1, ngx_conf_set_enum_slot,
     NGX_HTTP_LOC_CONF_OFFSET, offsetof(ApiKeyLocConf, environment), environment_values},
    {ngx_string("api_key_dry_run"), kAnyLevel | NGX_CONF_FLAG, ngx_conf_set_flag_slot,
     NGX_HTTP_LOC_CONF_OFFSET, offsetof(ApiKeyLocConf, dry_run), nullptr},
    {ngx_string("api_key_realm"), kAnyLevel | NGX_CONF_TAKE1, api_key_realm,
     NGX_HTTP_LOC_CONF_OFFSET, offsetof(ApiKeyLocConf, realm), nullptr},
    {ngx_string("api_key_limit_zone"), NGX_HTTP_MAIN_CONF | NGX_CONF_1MORE, api_key_limit_zone, 0,
     0, nullptr},
    {ngx_string("api_key_redis"), NGX_HTTP_MAIN_CONF | NGX_CONF_2MORE, api_key_redis, 0, 0,
     nullptr},
    {ngx_string("api_key_limit"), kAnyLevel | NGX_CONF_TAKE3, api_key_limit,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("api_key_limit_category"), kAnyLevel | NGX_CONF_TAKE1, api_key_limit_category,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("api_key_limit_by"), kAnyLevel | NGX_CONF_TAKE1, ngx_conf_set_enum_slot,
     NGX_HTTP_LOC_CONF_OFFSET, offsetof(ApiKeyLocConf, limit_by), limit_by_values},
    {ngx_string("api_key_limit_headers"), kAnyLevel | NGX_CONF_TAKE1, ngx_conf_set_enum_slot,
     NGX_HTTP_LOC_CONF_OFFSET, offsetof(ApiKeyLocConf, limit_headers), limit_headers_values},
    {ngx_string("api_key_status"), NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS | NGX_CONF_TAKE12,
     api_key_status, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("api_key_hide_credentials"), kAnyLevel | NGX_CONF_FLAG, ngx_conf_set_flag_slot,
     NGX_HTTP_LOC_CONF_OFFSET, offsetof(ApiKeyLocConf, hide_credentials), nullptr},
    {ngx_string("api_key_optional"), kAnyLevel | NGX_CONF_FLAG, ngx_conf_set_flag_slot,
     NGX_HTTP_LOC_CONF_OFFSET, offsetof(ApiKeyLocConf, optional), nullptr},
    ngx_null_command,
};

// --- create and merge -------------------------------------------------------------

void *create_main_conf(ngx_conf_t *cf) noexcept {
    auto *conf = static_cast<ApiKeyMainConf *>(ngx_pcalloc(cf->pool, sizeof(ApiKeyMainConf)));
    if (conf == nullptr) return nullptr;
    if (ngx_array_init(&conf->carrier_variables, cf->pool, 4, sizeof(ngx_uint_t)) != NGX_OK ||
        ngx_array_init(&conf->source_headers, cf->pool, 4, sizeof(ngx_str_t)) != NGX_OK ||
        ngx_array_init(&conf->redis, cf->pool, 1, sizeof(RedisConf *)) != NGX_OK) {
        return nullptr;
    }
    return conf;
}

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
    conf->optional = NGX_CONF_UNSET;
    conf->limits = static_cast<ngx_array_t *>(NGX_CONF_UNSET_PTR);
    conf->limit_by = NGX_CONF_UNSET_UINT;
    conf->limit_headers = NGX_CONF_UNSET_UINT;
    conf->status_format = NGX_CONF_UNSET_UINT;
    return conf;
}

bool make_challenge(ngx_conf_t *cf, ApiKeyLocConf *conf) noexcept {
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
    ngx_conf_merge_value(conf->optional, prev->optional, 0);
    ngx_conf_merge_str_value(conf->realm, prev->realm, "api");
    ngx_conf_merge_ptr_value(conf->limits, prev->limits, nullptr);
    ngx_conf_merge_str_value(conf->limit_category, prev->limit_category, "");
    ngx_conf_merge_uint_value(conf->limit_by, prev->limit_by,
                              static_cast<ngx_uint_t>(apikey::LimitBy::key));
    ngx_conf_merge_uint_value(conf->limit_headers, prev->limit_headers, kLimitHeadersX);

    if (conf->sources == nullptr) {
        conf->sources = ngx_array_create(cf->pool, 1, sizeof(Source));
        if (conf->sources == nullptr) return conf_error();
        auto *bearer = static_cast<Source *>(ngx_array_push(conf->sources));
        if (bearer == nullptr) return conf_error();
        *bearer = Source{ngx_null_string};
    }
    for (const Source &s : items<Source>(conf->sources)) {
        conf->bearer_source |= s.header.len == 0;
        conf->header_sources |= s.header.len != 0;
    }

    if (!make_challenge(cf, conf)) return conf_error();
    if (conf->zone == nullptr) return conf_ok();

    try {
        std::vector<apikey::ScopeRule> rules;
        for (const ScopeRuleConf &r : items<ScopeRuleConf>(conf->scope_rules)) {
            apikey::ScopeRule rule;
            rule.methods = r.methods;
            for (const ngx_str_t &s : items<ngx_str_t>(r.scopes))
                rule.scopes.push_back(to_string(s));
            rules.push_back(std::move(rule));
        }
        std::vector<std::string> plans;
        for (const ngx_str_t &s : items<ngx_str_t>(conf->plans)) plans.push_back(to_string(s));
        // Numbered per configuration: a note of an acceptance also names the
        // key table it was made in, and every configuration (a reload, or
        // a reconfiguration with master_process off) builds its tables
        // anew, so no note outlives the policies it numbers.
        auto *amcf = static_cast<ApiKeyMainConf *>(
            ngx_http_conf_get_module_main_conf(cf, ngx_http_api_key_module));
        const ngx_uint_t memo_id = ++amcf->policies <= 0xffff ? amcf->policies : 0;
        conf->policy = pool_new<apikey::AccessPolicy>(
            cf->pool, std::move(rules), std::move(plans),
            static_cast<apikey::RequiredEnvironment>(conf->environment),
            static_cast<std::uint16_t>(memo_id));
    } catch (const std::exception &e) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "api_key: %s", e.what());
        return conf_error();
    }
    return conf_ok();
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

// A $http_ variable that holds a key when it was evaluated before the
// access phase: Authorization, or a header some location reads a key from.
bool is_carrier_variable(const ApiKeyMainConf *amcf, const ngx_str_t &variable) noexcept {
    const std::string_view name = to_view(variable);
    if (apikey::is_header_variable(name, "authorization")) return true;
    for (const ngx_str_t &header : items<ngx_str_t>(&amcf->source_headers)) {
        if (apikey::is_header_variable(name, to_view(header))) return true;
    }
    return false;
}

// sync=NAME names an api_key_redis (declared anywhere in http{}).
RedisConf *find_redis(ngx_conf_t *cf, const ngx_str_t &name) noexcept {
    for (RedisConf *r : items<RedisConf *>(&main_conf(cf)->redis)) {
        if (to_view(r->name) == to_view(name)) return r;
    }
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "unknown api_key_redis \"%V\"", &name);
    return nullptr;
}

ngx_int_t resolve_sync(ngx_conf_t *cf) noexcept {
    ngx_int_t rc = NGX_OK;
    for_each_key_zone(cf->cycle, [&](KeyZone &zone) {
        if (zone.redis_name.len == 0) return;
        zone.redis = find_redis(cf, zone.redis_name);
        if (zone.redis == nullptr) rc = NGX_ERROR;
    });
    for_each_limit_zone(cf->cycle, [&](LimitZone &zone) {
        if (zone.redis_name.len == 0) return;
        zone.redis = find_redis(cf, zone.redis_name);
        if (zone.redis == nullptr) {
            rc = NGX_ERROR;
            return;
        }
        zone.sync.timeout_ms = static_cast<std::uint32_t>(zone.redis->endpoint.timeout_ms);
    });
    return rc;
}

ngx_int_t postconfiguration(ngx_conf_t *cf) noexcept {
    if (ngx_process != NGX_PROCESS_SIGNALLER &&
        (check_zones(cf) != NGX_OK || resolve_sync(cf) != NGX_OK)) {
        return NGX_ERROR;
    }

    auto *cmcf = static_cast<ngx_http_core_main_conf_t *>(
        ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module));
    // Main requests are decided in the access phase (with nginx's `satisfy`);
    // subrequests skip that phase, so they are decided in pre-access.
    auto *h = static_cast<ngx_http_handler_pt *>(
        ngx_array_push(&cmcf->phases[NGX_HTTP_ACCESS_PHASE].handlers));
    if (h == nullptr) return NGX_ERROR;
    *h = access_handler;
    h = static_cast<ngx_http_handler_pt *>(
        ngx_array_push(&cmcf->phases[NGX_HTTP_PREACCESS_PHASE].handlers));
    if (h == nullptr) return NGX_ERROR;
    *h = subrequest_access_handler;

    // Every indexed variable is known by now (directives registered them).
    auto *amcf = static_cast<ApiKeyMainConf *>(
        ngx_http_conf_get_module_main_conf(cf, ngx_http_api_key_module));
    const auto *vars = static_cast<const ngx_http_variable_t *>(cmcf->variables.elts);
    for (ngx_uint_t i = 0; i < cmcf->variables.nelts; i++) {
        if (is_fact_variable(vars[i].name)) amcf->facts_indexed = true;
        if (!is_carrier_variable(amcf, vars[i].name)) continue;
        auto *index = static_cast<ngx_uint_t *>(ngx_array_push(&amcf->carrier_variables));
        if (index == nullptr) return NGX_ERROR;
        *index = i;
    }

    next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = header_filter;
    return NGX_OK;
}

// --- zones ---------------------------------------------------------------------

// nginx's own "[crit] ngx_slab_alloc() failed: no memory" would precede the
// module's message; the zone's name goes into the slab pool's log context.
void quiet_slab_pool(ngx_shm_zone_t *shm_zone, ngx_slab_pool_t *shpool, const char *what) noexcept {
    shpool->log_nomem = 0;
    const size_t len = std::strlen(what) + shm_zone->shm.name.len + sizeof(" in  zone \"\"");
    auto *ctx = static_cast<u_char *>(ngx_slab_alloc(shpool, len));
    if (ctx == nullptr) return;
    ngx_sprintf(ctx, " in %s zone \"%V\"%Z", what, &shm_zone->shm.name);
    shpool->log_ctx = ctx;
}

ngx_int_t init_key_zone(ngx_shm_zone_t *shm_zone, void *data) noexcept {
    auto *zone = static_cast<KeyZone *>(shm_zone->data);
    auto *shpool = reinterpret_cast<ngx_slab_pool_t *>(shm_zone->shm.addr);
    zone->memory.pool = shpool;

    // A reload with the same zone name and size reuses the zone (and its
    // usage counters): the new table is staged beside the old one, which
    // the old workers go on reading until it is freed (core/shared_tables.h).
    auto *state = static_cast<apikey::SharedTablesState *>(shpool->data);
    const bool reused = data != nullptr && apikey::SharedTables::is_state(state);
    if (!reused) {
        quiet_slab_pool(shm_zone, shpool, "api_key");
        state = apikey::SharedTables::create(zone->memory, zone->usage_capacity);
        if (state == nullptr) {
            ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0, "api_key_zone \"%V\" is too small",
                          &shm_zone->shm.name);
            return NGX_ERROR;
        }
        shpool->data = state;
    }
    zone->shared.attach(&zone->memory, state);
    if (!init_channel(*zone, reused, shm_zone->shm.log)) return NGX_ERROR;

    std::string error;
    bool staged = zone->shared.stage(zone->image, zone->file, zone->load_path, error);
    // A table check= replaced moments ago may still be pinned by an idle
    // worker, for kPinMs at most: wait that out before giving up.
    for (ngx_msec_t waited = 0; !staged && waited <= 2 * kPinMs && zone->shared.has_retired();
         waited += 10) {
        ngx_msleep(10);
        staged = zone->shared.stage(zone->image, zone->file, zone->load_path, error);
    }
    if (!staged) {
        const apikey::ZoneSizing sizing{ngx_pagesize, sizeof(ngx_slab_page_t)};
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "api_key_zone \"%V\": %s; a zone of %uzk holds three tables of this file",
                      &shm_zone->shm.name, error.c_str(),
                      sizing.needed(zone->image.size(), zone->usage_capacity, 3) / 1024 + 1);
        return NGX_ERROR;
    }
    zone->staged = true;
    zone->image = apikey::TableImage();
    return NGX_OK;
}

constexpr std::uint64_t kLimitZoneMagic = 0x314b'4d4c'4b41'5031ull;  // "1PAKLMK1"

ngx_int_t init_limit_zone(ngx_shm_zone_t *shm_zone, void *data) noexcept {
    auto *zone = static_cast<LimitZone *>(shm_zone->data);
    auto *shpool = reinterpret_cast<ngx_slab_pool_t *>(shm_zone->shm.addr);
    const apikey::SyncConfig *sync = zone->synced() ? &zone->sync : nullptr;

    // A reload with the same name and size hands over the previous zone:
    // its counters stay, and every worker, old or new, keeps using them.
    // The memory is checked again, not trusted to the old process's object.
    // Old workers go on using the table while they drain, so it is never
    // formatted again under them: other sync settings (or another layout)
    // fail the reload, as limit_req_zone does when its key changes.
    auto *shared = static_cast<LimitZoneShared *>(shpool->data);
    if (data != nullptr) {
        if (shared != nullptr && shared->magic == kLimitZoneMagic) {
            zone->shared = shared;
            zone->table = apikey::CounterTable::adopt(reinterpret_cast<u_char *>(shpool) +
                                                          shared->table_offset,
                                                      shared->table_bytes, sync);
            if (zone->table.valid()) return NGX_OK;
        }
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "api_key_limit_zone \"%V\" has other sync settings or another counter "
                      "layout than before; give it another name or restart nginx",
                      &shm_zone->shm.name);
        return NGX_ERROR;
    } else {
        quiet_slab_pool(shm_zone, shpool, "api_key_limit");
        shared = static_cast<LimitZoneShared *>(ngx_slab_calloc(shpool, sizeof(LimitZoneShared)));
        if (shared == nullptr) {
            ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                          "api_key_limit_zone \"%V\" is too small", &shm_zone->shm.name);
            return NGX_ERROR;
        }
        zone->shared = shared;
        shpool->data = shared;
    }

    // The rest of the zone (but the slab pool's own bookkeeping) becomes one table.
    for (ngx_uint_t pages = shpool->pfree; pages > 0; pages--) {
        size_t bytes = pages * ngx_pagesize;
        void *memory = ngx_slab_alloc(shpool, bytes);
        if (memory == nullptr) continue;
        zone->table = apikey::CounterTable::format(memory, bytes, sync);
        shared->table_offset = static_cast<std::uint64_t>(static_cast<u_char *>(memory) -
                                                          reinterpret_cast<u_char *>(shpool));
        shared->table_bytes = bytes;
        shared->magic = kLimitZoneMagic;
        return NGX_OK;
    }
    ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0, "api_key_limit_zone \"%V\" is too small",
                  &shm_zone->shm.name);
    return NGX_ERROR;
}

// Runs once nginx has committed the new cycle (listening sockets open,
// nothing left to fail): only now do its key tables take effect. A cycle
// that failed earlier never gets here, and its pool's cleanup frees what it
// staged.
ngx_int_t init_module(ngx_cycle_t *cycle) noexcept {
    for_each_key_zone(cycle, [&](KeyZone &zone) {
        if (!zone.staged) return;
        zone.config = zone.shared.publish_staged(ngx_time());
        zone.staged = false;
        [[maybe_unused]] const apikey::SharedTablesState *state = zone.shared.state();
        ngx_log_debug3(NGX_LOG_DEBUG_HTTP, cycle->log, 0,
                       "api_key_zone: published generation %uL, configuration %uL, %uL keys",
                       state->generation, zone.config, state->keys);
    });
    return NGX_OK;
}

}  // namespace

// --- check= ----------------------------------------------------------------------

void KeyLoader::run(KeyZone &zone, apikey::FileIdentity file) noexcept {
    try {
        apikey::TableImage image = apikey::load_key_file(zone.path);
        std::string error;
        switch (
            zone.shared.install(image, file, zone.path, zone.config, std::time(nullptr), error)) {
        case apikey::InstallResult::installed: result = Result::installed; break;
        case apikey::InstallResult::superseded: result = Result::superseded; break;
        case apikey::InstallResult::no_room:
            result = Result::no_room;
            message = error;
            break;
        }
    } catch (const std::exception &e) {
        result = Result::failed;
        message = e.what();
    }
    if (result == Result::failed || result == Result::no_room) {
        // Before the claim goes, so that no other worker loads this version again at once.
        first_report = !zone.shared.failed_for(file);
        zone.shared.record_failure(file, std::time(nullptr), message, result == Result::no_room);
    }
    zone.shared.end_loading();
    done_.store(true, std::memory_order_release);
}

bool KeyLoader::start(KeyZone &zone, const apikey::FileIdentity &file) noexcept {
    result = Result::installed;
    first_report = false;
    message.clear();
    done_.store(false, std::memory_order_relaxed);
    // Signals stay with the event loop: the thread starts with all blocked.
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    bool started = true;
    try {
        thread_ = std::thread([this, &zone, file] { run(zone, file); });
    } catch (const std::exception &) {
        started = false;
    }
    pthread_sigmask(SIG_SETMASK, &previous, nullptr);
    return started;
}

void KeyLoader::join() noexcept {
    if (thread_.joinable()) thread_.join();
}

namespace {

void report_load(KeyZone &zone, ngx_log_t *log) noexcept {
    KeyLoader &loader = zone.loader;
    const apikey::SharedTablesState *state = zone.shared.state();
    switch (loader.result) {
    case KeyLoader::Result::installed:
        ngx_log_error(NGX_LOG_NOTICE, log, 0,
                      "api_key_zone \"%V\": loaded %uL keys from \"%s\" (generation %uL)",
                      &zone.name, static_cast<uint64_t>(state->keys), zone.path.c_str(),
                      static_cast<uint64_t>(state->generation));
        break;
    case KeyLoader::Result::superseded:
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, log, 0,
                       "api_key_zone \"%V\": a reload replaced the configuration; load dropped",
                       &zone.name);
        break;
    case KeyLoader::Result::failed:
    case KeyLoader::Result::no_room:
        if (loader.first_report) {
            ngx_log_error(
                NGX_LOG_ERR, log, 0,
                "api_key_zone \"%V\": %s; the key table loaded before stays in force%s", &zone.name,
                loader.message.c_str(),
                loader.result == KeyLoader::Result::no_room ? " (retried every few seconds)" : "");
        }
        break;
    }
}

// check=: one worker notices a new version of the file and hands it to its
// loader thread; the others go on serving meanwhile. A version that is
// wrong is reported once and not retried until the file changes again; one
// that found no room is retried every few seconds.
void start_load_if_changed(KeyZone &zone, ngx_log_t *log) noexcept {
    constexpr std::int64_t kRetrySeconds = 3;
    apikey::SharedTables &shared = zone.shared;
    const apikey::SharedTablesState *state = shared.state();
    if (state->config_generation != zone.config) return;  // a reload replaced this configuration

    apikey::FileIdentity file;
    const bool exists = apikey::identify_file(zone.path, file);
    const int stat_error = errno;
    // A published version superseded this version of the file.
    if (exists && channel_superseded(zone, file)) return;
    apikey::LoadDecision decision = apikey::decide_load(
        exists, file, state->loaded_file, shared.failed_for(file), shared.gave_up_on(file),
        state->failed_at, ngx_time(), kRetrySeconds);
    if (decision == apikey::LoadDecision::up_to_date) return;
    if (!shared.try_claim_loading(self_identity)) return;

    // Again under the claim: another worker may have just done the work.
    decision = apikey::decide_load(exists, file, state->loaded_file, shared.failed_for(file),
                                   shared.gave_up_on(file), state->failed_at, ngx_time(),
                                   kRetrySeconds);
    switch (decision) {
    case apikey::LoadDecision::up_to_date: break;
    case apikey::LoadDecision::forget_failure: shared.clear_failure(); break;
    case apikey::LoadDecision::report_missing: {
        const bool first = !shared.failed_for(file);
        const std::string why = zone.path + ": stat() failed: " + std::strerror(stat_error);
        shared.record_failure(file, ngx_time(), why, false);
        if (first) {
            ngx_log_error(NGX_LOG_ERR, log, 0,
                          "api_key_zone \"%V\": %s; the key table loaded before stays in force",
                          &zone.name, why.c_str());
        }
        break;
    }
    case apikey::LoadDecision::load:
        if (zone.loader.start(zone, file)) return;  // the thread ends the claim
        ngx_log_error(NGX_LOG_ALERT, log, 0, "api_key_zone \"%V\": cannot start a loader thread",
                      &zone.name);
        break;
    }
    shared.end_loading();
}

void check_timer(ngx_event_t *ev) noexcept {
    constexpr ngx_msec_t kPollMs = 20;
    auto *zone = static_cast<KeyZone *>(ev->data);
    // Exiting workers never load: the configuration in force is another's.
    if (ngx_exiting || ngx_quit || ngx_terminate) return;
    zone->shared.reclaim();
    if (zone->loader.running()) {
        if (!zone->loader.finished()) {
            ngx_add_timer(ev, kPollMs);
            return;
        }
        zone->loader.join();
        report_load(*zone, ev->log);
    }
    start_load_if_changed(*zone, ev->log);
    ngx_add_timer(ev, zone->loader.running() ? kPollMs : zone->check);
}

// --- process start and exit ----------------------------------------------------

bool random_bytes(void *out, size_t n, ngx_log_t *log) noexcept {
    if (RAND_bytes(static_cast<unsigned char *>(out), static_cast<int>(n)) == 1) return true;
    ngx_log_error(NGX_LOG_ALERT, log, 0, "api_key: RAND_bytes() failed");
    return false;
}

// With debug logging, ngx_add_timer reads its event's data as a connection
// for the log line's fd (ngx_event_ident): a timer without a connection
// gives it, as nginx's resolver does, a struct with an ident after three
// pointers.
struct TimerIdent {
    void *unused[3];
    ngx_int_t ident;
};
TimerIdent worker_tick_ident = {{}, -1};

void on_worker_tick(ngx_event_t *ev) noexcept {
    for_each_key_zone(const_cast<ngx_cycle_t *>(ngx_cycle),
                      [](KeyZone &zone) { zone.shared.drop_pin(); });
    if (sync_tick(ev->log) && !ev->timer_set) ngx_add_timer(ev, kPinMs);
}

ngx_int_t init_process(ngx_cycle_t *cycle) noexcept {
    uint64_t seed;
    apikey::SipKey secret;
    if (!random_bytes(&seed, sizeof seed, cycle->log)) return NGX_ERROR;
    if (!random_bytes(&secret, sizeof secret, cycle->log)) return NGX_ERROR;
    request_ids = apikey::RequestIdGenerator(seed);
    key_digests.seed(secret);
    self_identity = apikey::this_process_identity();

    bool joined = true;
    for_each_key_zone(cycle, [&](KeyZone &zone) {
        if (!zone.shared.join(self_identity)) {
            ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                          "api_key_zone \"%V\": more than %uz processes read the zone", &zone.name,
                          apikey::kMaxReaders);
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
    if (!joined) return NGX_ERROR;
    ngx_memzero(&worker_tick, sizeof(ngx_event_t));
    worker_tick.handler = on_worker_tick;
    worker_tick.data = &worker_tick_ident;
    worker_tick.log = cycle->log;
    worker_tick.cancelable = 1;  // a graceful shutdown does not wait for it
    start_sync(cycle);
    return NGX_OK;
}

void exit_process(ngx_cycle_t *cycle) noexcept {
    stop_sync(cycle);
    for_each_key_zone(cycle, [](KeyZone &zone) {
        zone.loader.join();  // a load in flight finishes (or is dropped as superseded)
        zone.shared.leave();
    });
}

ngx_http_module_t module_ctx = {
    add_variables,      // preconfiguration
    postconfiguration,  // postconfiguration
    create_main_conf,   // create main configuration
    nullptr,            // init main configuration
    nullptr,            // create server configuration
    nullptr,            // merge server configuration
    create_loc_conf,    // create location configuration
    merge_loc_conf,     // merge location configuration
};

}  // namespace

}  // namespace ngx_api_key

ngx_module_t ngx_http_api_key_module = {
    NGX_MODULE_V1,
    &ngx_api_key::module_ctx,
    ngx_api_key::commands,
    NGX_HTTP_MODULE,
    nullptr,                    // init master
    ngx_api_key::init_module,   // init module
    ngx_api_key::init_process,  // init process
    nullptr,                    // init thread
    nullptr,                    // exit thread
    ngx_api_key::exit_process,  // exit process
    nullptr,                    // exit master
    NGX_MODULE_V1_PADDING,
};
