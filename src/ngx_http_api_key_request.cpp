// Request time: the access decision (main requests in the access phase,
// subrequests in pre-access), the one refusal function, credential hiding,
// the response headers, the $api_key_* variables and api_key_status.

#include "ngx_http_api_key_module.h"

#include <cstring>
#include <exception>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/credential.h"
#include "core/outcome.h"
#include "core/ratelimit_fields.h"
#include "core/revocation_overlay.h"
#include "core/shm_atomic.h"
#include "core/status_report.h"
#include "core/sync_batch.h"

namespace ngx_api_key {

apikey::RequestIdGenerator request_ids;
apikey::KeyDigestCache key_digests;
std::uint64_t self_identity;
ngx_event_t worker_tick;
ngx_http_output_header_filter_pt next_header_filter;

namespace {

using apikey::Outcome;

// What variables and logs need of a key, copied out of the table into the
// request's pool: a request holds a key table only while it decides, so no
// client, however slow, can keep a replaced table (and its revoked keys)
// alive.
struct KeyFacts {
    ngx_str_t id, owner, organization, plan, scopes;
};

// The limits a response reports: the one closest to refusing (X-RateLimit-*,
// Retry-After, the 429 message) and, for the IETF fields, every limit of the
// deciding location (RateLimit-Policy lists them all; RateLimit those that
// were decided).
struct LimitReport {
    bool limited = false;
    apikey::WindowDecision decision{};
    apikey::Rate rate{};
    std::string_view category;  // points into the location's configuration
    ngx_uint_t headers = kLimitHeadersX;
    size_t entries = 0;  // filled only when the IETF fields are sent
    size_t decided = 0;  // entries[0, decided) have RateLimit values
    apikey::RateLimitEntry *entry =
        nullptr;  // kMaxLimits, from the pool when the IETF fields are on
};

// A budget this request has spent (or, in dry run, only looked at). Each
// budget is spent at most once per request, however many locations
// (internal redirects) and subrequests apply it.
struct SpentBudget {
    LimitZone *zone;
    std::uint64_t id;
    apikey::CounterResult result;
    bool committed;
};
constexpr size_t kMaxSpent = 16;

// One access decision: a main request's (in each location it reaches) or a
// subrequest's.
struct Decision {
    Outcome outcome = Outcome::internal_error;
    bool key_sent = false;
    bool anonymous = false;          // api_key_optional and no key: no opinion
    std::string_view missing_scope;  // in the location's policy
    const LimitReport *limit;        // the request's report, or the subrequest's own
};

// Per main request, shared by its subrequests. It lives in a pool cleanup
// entry so that it is found again after an internal redirect (nginx clears
// module contexts then), and it holds nothing that needs releasing.
struct RequestCtx {
    char request_id[apikey::kRequestIdLength];

    // The header list as the client sent it, saved before the first hiding:
    // every location and subrequest reads its sources from it.
    bool headers_saved;
    ngx_list_t client_headers;
    ngx_table_elt_t *client_authorization;

    // The last key identified, and in which zone (prefixes are per file).
    const char *key_data;
    size_t key_len;
    const KeyZone *identified_in;
    Outcome presented;  // accepted: the digest and environment are set
    apikey::Environment environment;
    apikey::Digest digest;

    // The decision variables and response headers report: the main
    // request's latest, or an auth subrequest's while the main request has
    // none of its own.
    bool decided;
    bool decided_by_main;
    bool dry_run;
    bool counted;  // in the zone's usage counters, once per request
    Outcome outcome;
    KeyFacts facts;
    u_char *facts_room;  // kFactsRoom bytes for the first decision's facts, null once used
    // Set when the decision left its facts to be copied on demand
    // (ApiKeyMainConf::facts_indexed): the record, by table and index, and
    // its digest in case the table is replaced before they are read.
    KeyZone *facts_zone;
    std::uint64_t facts_build;
    std::uint32_t facts_index;
    apikey::Digest facts_digest;
    LimitReport limit;

    size_t spent_count;
    SpentBudget *spent;  // kMaxSpent, from the pool once a limit applies

    // X-RateLimit-Limit, -Remaining and -Reset, written without the pool.
    u_char rate_limit_digits[3][NGX_INT64_LEN];
};
static_assert(std::is_trivially_destructible_v<RequestCtx>,
              "lives in pool memory with no destructor run");

void ctx_marker(void *) noexcept {}

// nginx clears module contexts on an internal redirect (index, try_files,
// error_page); the pool cleanup entry keeps ours findable, as realip does.
RequestCtx *find_ctx(ngx_http_request_t *r) noexcept {
    r = r->main;
    auto *ctx = static_cast<RequestCtx *>(ngx_http_get_module_ctx(r, ngx_http_api_key_module));
    if (ctx == nullptr && (r->internal || r->filter_finalize)) {
        for (ngx_pool_cleanup_t *cln = r->pool->cleanup; cln; cln = cln->next) {
            if (cln->handler == ctx_marker) {
                ctx = static_cast<RequestCtx *>(cln->data);
                ngx_http_set_ctx(r, ctx, ngx_http_api_key_module);
                break;
            }
        }
    }
    return ctx;
}

// From the request pool's newest block when it has room, else as
// ngx_palloc. nginx allocates first fit from the pool's current block on,
// so what the module took from an older block's last bytes would send
// nginx's own small allocations later in the request (chain links,
// buffers) on to the next block, every one of them a longer walk.
void *alloc_late(ngx_pool_t *pool, size_t size) noexcept {
    ngx_pool_t *newest = pool->current;
    while (newest->d.next != nullptr) newest = newest->d.next;
    u_char *m = ngx_align_ptr(newest->d.last, NGX_ALIGNMENT);
    if (newest != pool->current && size <= pool->max &&
        static_cast<size_t>(newest->d.end - m) >= size) {
        newest->d.last = m + size;
        return m;
    }
    return ngx_palloc(pool, size);
}

// Room for the facts of a request's first decision: most keys' id, owner,
// organization, plan and scopes fit.
constexpr size_t kFactsRoom = 160;

// The context, the pool cleanup entry that finds it and the room for the
// first facts, in one allocation.
struct CtxBlock {
    ngx_pool_cleanup_t cleanup;
    RequestCtx ctx;
    u_char facts_room[kFactsRoom];
};
static_assert(std::is_trivially_destructible_v<CtxBlock>);

RequestCtx *main_ctx(ngx_http_request_t *r) noexcept {
    RequestCtx *ctx = find_ctx(r);
    if (ctx != nullptr) return ctx;
    ngx_pool_t *pool = r->main->pool;
    auto *block = static_cast<CtxBlock *>(alloc_late(pool, sizeof(CtxBlock)));
    if (block == nullptr) return nullptr;
    // Not value-initialised: zeroing the spent-budget array on every
    // request would cost more than the rest of this function.
    ctx = new (&block->ctx) RequestCtx;
    ctx->headers_saved = false;
    ctx->key_data = nullptr;
    ctx->key_len = 0;
    ctx->identified_in = nullptr;
    ctx->decided = false;
    ctx->decided_by_main = false;
    ctx->dry_run = false;
    ctx->counted = false;
    ctx->spent_count = 0;
    ctx->spent = nullptr;
    ctx->facts_room = block->facts_room;
    ctx->facts_zone = nullptr;
    // What ngx_pool_cleanup_add does, without its second allocation.
    ngx_pool_cleanup_t *cln = &block->cleanup;
    cln->handler = ctx_marker;
    cln->data = ctx;
    cln->next = pool->cleanup;
    pool->cleanup = cln;
    ngx_http_set_ctx(r->main, ctx, ngx_http_api_key_module);
    request_ids.next(ctx->request_id);
    return ctx;
}

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

bool is_header(const ngx_table_elt_t &h, const ngx_str_t &lowercase_name) noexcept {
    return h.key.len == lowercase_name.len &&
           ngx_strncmp(h.lowcase_key, lowercase_name.data, lowercase_name.len) == 0;
}

template <typename F>
void for_each_header(const ngx_list_t &list, F &&f) noexcept {
    for (const ngx_list_part_t *part = &list.part; part; part = part->next) {
        auto *h = static_cast<ngx_table_elt_t *>(part->elts);
        for (ngx_uint_t i = 0; i < part->nelts; i++) f(h[i]);
    }
}

// Reads every configured source of the location, all of them, so that two
// different keys in one request are noticed; from the headers as the
// client sent them, even after an earlier location hid them.
apikey::KeyCollector collect_key(ngx_http_request_t *r, const ApiKeyLocConf *lcf,
                                 const RequestCtx *ctx) noexcept {
    const ngx_list_t &headers = ctx->headers_saved ? ctx->client_headers : r->headers_in.headers;
    const ngx_table_elt_t *authorization = ctx->headers_saved ? ctx->client_authorization
                                                              : r->headers_in.authorization;
    apikey::KeyCollector keys;
    for (const Source &s : items<Source>(lcf->sources)) {
        if (s.header.len == 0) {
            if (authorization == nullptr) continue;
            std::string_view token;
            switch (apikey::parse_bearer(to_view(authorization->value), token)) {
            case apikey::BearerParse::token: keys.offer(token); break;
            case apikey::BearerParse::empty_token: keys.offer_malformed(); break;
            case apikey::BearerParse::not_bearer: break;
            }
            continue;
        }
        for_each_header(headers, [&](const ngx_table_elt_t &h) {
            if (h.value.len != 0 && is_header(h, s.header)) keys.offer(to_view(h.value));
        });
    }
    return keys;
}

// Syntax, prefix and SHA-256 (or the digest memo), once per key and zone
// in a request, however many locations and subrequests look at it. `note`:
// the memo's note of the key in this table, when the memo knew the key.
Outcome identify(RequestCtx *ctx, const KeyZone *zone, const apikey::KeyTable &table,
                 std::string_view key, bool &remember, apikey::MemoNote *&note) noexcept {
    remember = false;
    note = nullptr;
    if (key.data() == ctx->key_data && key.size() == ctx->key_len && zone == ctx->identified_in) {
        return ctx->presented;
    }
    ctx->key_data = key.data();
    ctx->key_len = key.size();
    ctx->identified_in = zone;
    // The memo writes the digest where it is kept, with no copy between.
    if (key.size() <= apikey::kMaxKeyLength && key_digests.find(key, ctx->digest, note)) {
        // What identify_key does with the memo (a remembered key passed the
        // syntax check), and the environment as the memo noted it when it
        // was read from this very table: a table never changes once built.
        const std::uint64_t build = table.build_id();
        auto environment = apikey::Environment::none;
        Outcome outcome = Outcome::invalid_key;
        if (build != 0 && note->table == build) {
            environment = static_cast<apikey::Environment>(note->value);
            outcome = Outcome::accepted;
        } else if (table.environment_of(key, environment)) {
            outcome = Outcome::accepted;
            *note = {build, static_cast<std::uint8_t>(environment)};
        } else {
            note = nullptr;
        }
        ctx->environment = environment;
        return ctx->presented = outcome;
    }
    const apikey::Identity id = apikey::identify_key(table, key);  // syntax, prefix, SHA-256
    ctx->environment = id.environment;
    ctx->digest = id.digest;
    remember = id.outcome == Outcome::accepted;
    return ctx->presented = id.outcome;
}

// Holds the zone's current table for the length of one decision.
class TableHold {
public:
    // Inlined: the request path's table reference is a few instructions.
    [[gnu::always_inline]] explicit TableHold(KeyZone *zone) noexcept
        : zone_(zone), ref_(zone->shared.acquire()) {
        if (!worker_tick.timer_set && zone->shared.pinned()) ngx_add_timer(&worker_tick, kPinMs);
    }
    [[gnu::always_inline]] ~TableHold() { zone_->shared.release(ref_); }
    TableHold(const TableHold &) = delete;
    TableHold &operator=(const TableHold &) = delete;
    const apikey::KeyTable &table() const noexcept { return ref_.table; }
    bool valid() const noexcept { return ref_.valid; }

private:
    KeyZone *zone_;
    apikey::SharedTables::Ref ref_;
};

void warn_zone_full(ngx_http_request_t *r, LimitZone *zone) noexcept {
    if (zone->warned_at != 0 && ngx_current_msec - zone->warned_at < 10000) return;
    zone->warned_at = ngx_current_msec ? ngx_current_msec : 1;
    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "api_key_limit_zone \"%V\" is full: an active counter was evicted, "
                  "so its key may get more than its limit; make the zone larger",
                  &zone->name);
}

SpentBudget *find_spent(RequestCtx *ctx, const LimitZone *zone, std::uint64_t id) noexcept {
    for (size_t i = 0; i < ctx->spent_count; i++) {
        if (ctx->spent[i].zone == zone && ctx->spent[i].id == id) return &ctx->spent[i];
    }
    return nullptr;
}

// Refused requests spend nothing: a refused main request takes back all it
// spent, in whichever location; a refused subrequest (an SSI include, say)
// only what it spent itself, since the page around it was served.
void refund_from(RequestCtx *ctx, size_t first) noexcept {
    for (size_t i = first; i < ctx->spent_count; i++) {
        SpentBudget &s = ctx->spent[i];
        if (s.committed) s.zone->table.refund(s.result, s.id, self_identity);
    }
    ctx->spent_count = first;
}

// Budget ids of the keys this worker has seen (core/limit_plan.h).
apikey::BudgetIdMemo budget_ids;

// The location's budgets for this request (core/limit_plan.h); a budget
// this request already spent in an earlier location or subrequest is not
// spent again.
Outcome apply_limits(ngx_http_request_t *r, const ApiKeyLocConf *lcf, RequestCtx *ctx,
                     const KeyZone *key_zone, const apikey::KeyTable &table,
                     const apikey::KeyRecord &record, unsigned method,
                     LimitReport &report) noexcept {
    const std::string_view category = apikey::request_category(to_view(lcf->limit_category),
                                                               method);
    const apikey::LimitPlan plan(static_cast<const apikey::ConfiguredLimit *>(lcf->limits->elts),
                                 lcf->limits->nelts, category, table, record,
                                 static_cast<apikey::LimitBy>(lcf->limit_by), key_zone->budget_salt,
                                 &budget_ids);
    const bool commit = !lcf->dry_run;
    const size_t spent_before = r == r->main ? 0 : ctx->spent_count;
    const bool ietf = (lcf->limit_headers & kLimitHeadersIetf) != 0;
    // Allocated on first use: a request without limits keeps its context
    // small enough for the request pool's first block.
    if (ctx->spent == nullptr) {
        ctx->spent = static_cast<SpentBudget *>(
            ngx_palloc(r->pool, kMaxSpent * sizeof(SpentBudget)));
        if (ctx->spent == nullptr) return Outcome::internal_error;
    }
    if (ietf && report.entry == nullptr) {
        report.entry = static_cast<apikey::RateLimitEntry *>(
            ngx_palloc(r->pool, kMaxLimits * sizeof(apikey::RateLimitEntry)));
        if (report.entry == nullptr) return Outcome::internal_error;
    }
    if (ietf) {
        for (const apikey::PlannedBudget &b : plan) {
            report.entry[report.entries++] = {category, b.rate, 0, 0};
        }
    }
    for (const apikey::PlannedBudget &b : plan) {
        auto *zone = static_cast<LimitZone *>(static_cast<const ngx_shm_zone_t *>(b.zone)->data);
        SpentBudget *spent = find_spent(ctx, zone, b.id);
        if (spent == nullptr || (commit && !spent->committed)) {
            if (spent == nullptr) {
                if (ctx->spent_count == kMaxSpent) return Outcome::internal_error;
                spent = &ctx->spent[ctx->spent_count++];
            }
            const apikey::WindowLimit window{b.rate.count, b.rate.period_seconds * 1000};
            spent->zone = zone;
            spent->id = b.id;
            // Constructed in place from the returned value (no copy).
            ::new (static_cast<void *>(&spent->result)) apikey::CounterResult(zone->table.consume(
                b.id, window, static_cast<std::int64_t>(ngx_current_msec), commit, self_identity));
            spent->committed = commit && spent->result.decision.allowed;
            if (spent->result.evicted_active) warn_zone_full(r, zone);
        }
        const apikey::WindowDecision &d = spent->result.decision;
        if (!report.limited || apikey::reports_before(d, report.decision)) {
            report.limited = true;
            report.decision = d;
            report.rate = b.rate;
            report.category = category;
        }
        if (ietf) report.entry[report.decided++] = apikey::ratelimit_entry(category, b.rate, d);
        if (!d.allowed) {
            if (commit) {
                refund_from(ctx, spent_before);
                // What this request counted before the refusal was taken back.
                for (size_t i = 0; i + 1 < report.decided; i++) {
                    apikey::RateLimitEntry &e = report.entry[i];
                    if (e.remaining < e.rate.count) e.remaining++;
                }
            }
            return Outcome::rate_limited;
        }
    }
    return Outcome::accepted;
}

// Copies what variables and logs need of the key out of the table.
bool copy_facts(ngx_http_request_t *r, const apikey::KeyTable &table,
                const apikey::KeyRecord &record, KeyFacts &facts) noexcept {
    const std::string_view id = table.text(record.id);
    const std::string_view owner = table.text(record.owner);
    const std::string_view organization = table.text(record.organization);
    const std::string_view plan = table.plan_name(record.plan);
    const apikey::ScopeSet &scopes = table.scopes(record);
    size_t scopes_len = 0;
    for (uint32_t bit = 0; bit < table.scope_count(); bit++) {
        if (scopes.test(bit)) scopes_len += table.scope_name(bit).size() + 1;
    }
    auto *p = static_cast<u_char *>(ngx_pnalloc(
        r->pool, id.size() + owner.size() + organization.size() + plan.size() + scopes_len + 1));
    if (p == nullptr) return false;
    auto put = [&p](std::string_view s) {
        ngx_str_t out = {s.size(), p};
        if (!s.empty()) p = ngx_cpymem(p, s.data(), s.size());  // an absent field has no data
        return out;
    };
    facts.id = put(id);
    facts.owner = put(owner);
    facts.organization = put(organization);
    facts.plan = put(plan);
    facts.scopes = {0, p};
    for (uint32_t bit = 0; bit < table.scope_count(); bit++) {
        if (!scopes.test(bit)) continue;
        if (p != facts.scopes.data) *p++ = ' ';
        p = ngx_cpymem(p, table.scope_name(bit).data(), table.scope_name(bit).size());
    }
    facts.scopes.len = static_cast<size_t>(p - facts.scopes.data);
    return true;
}

// Per worker: the facts of the keys decided last, as copy_facts wrote them,
// by table (its build id) and record. A table never changes once built, so
// a hit is what copying would give, in one allocation and one copy instead
// of a walk over the table's strings and scopes. Each request still gets its
// own copy in its pool: an entry may go to another key while it runs.
class FactsMemo {
public:
    static constexpr size_t kEntries = 256;
    static constexpr size_t kMaxBytes = 216;  // longer facts are copied every time

    // alloc(n): where the n bytes go.
    template <typename Alloc>
    bool find(const apikey::KeyTable &table, const apikey::KeyRecord &record, Alloc &&alloc,
              KeyFacts &facts) noexcept {
        const Entry &e = entry(record);
        if (e.record != &record || e.build != table.build_id() || e.build == 0) return false;
        u_char *p = alloc(e.total);
        if (p == nullptr) return false;
        std::memcpy(p, e.bytes, e.total);
        facts.id = {e.len[0], p};
        p += e.len[0];
        facts.owner = {e.len[1], p};
        p += e.len[1];
        facts.organization = {e.len[2], p};
        p += e.len[2];
        facts.plan = {e.len[3], p};
        facts.scopes = {e.len[4], p + e.len[3]};
        return true;
    }

    void remember(const apikey::KeyTable &table, const apikey::KeyRecord &record,
                  const KeyFacts &facts) noexcept {
        const ngx_str_t *in[] = {&facts.id, &facts.owner, &facts.organization, &facts.plan,
                                 &facts.scopes};
        size_t total = 0;
        for (const ngx_str_t *f : in) total += f->len;
        Entry &e = entry(record);
        if (total > kMaxBytes || table.build_id() == 0) return;
        u_char *p = e.bytes;
        for (size_t i = 0; i < 5; i++) {
            e.len[i] = static_cast<std::uint16_t>(in[i]->len);
            if (in[i]->len != 0) p = ngx_cpymem(p, in[i]->data, in[i]->len);
        }
        e.total = static_cast<std::uint16_t>(total);
        e.build = table.build_id();
        e.record = &record;
    }

private:
    struct Entry {
        std::uint64_t build;
        const apikey::KeyRecord *record;  // null: empty
        std::uint16_t len[5];             // id, owner, organization, plan, scopes
        std::uint16_t total;
        u_char bytes[kMaxBytes];
    };

    Entry &entry(const apikey::KeyRecord &record) noexcept {
        const auto address = reinterpret_cast<std::uintptr_t>(&record);
        static_assert(kEntries == 256, "the top 8 bits of the product pick the entry");
        return entries_[(address * 0x9e3779b97f4a7c15ull) >> 56];
    }

    Entry entries_[kEntries] = {};
};

FactsMemo facts_memo;

// The key's facts for the request: from the memo, or copied out of the
// table (and remembered).
bool request_facts(ngx_http_request_t *r, RequestCtx *ctx, const apikey::KeyTable &table,
                   const apikey::KeyRecord &record, KeyFacts &facts) noexcept {
    // The room in the context serves the first decision only: a variable
    // of an earlier one may still point at what it holds.
    auto alloc = [r, ctx](size_t n) {
        if (ctx->facts_room != nullptr && n <= kFactsRoom) {
            return std::exchange(ctx->facts_room, nullptr);
        }
        return static_cast<u_char *>(alloc_late(r->pool, n));
    };
    if (facts_memo.find(table, record, alloc, facts)) return true;
    if (!copy_facts(r, table, record, facts)) return false;
    facts_memo.remember(table, record, facts);
    return true;
}

// The facts a decision left to be copied on demand: from the table it
// read if that is still current, else from the key's record in the table
// now in force (none if the key left the file meanwhile).
bool late_facts(ngx_http_request_t *r, RequestCtx *ctx) noexcept {
    KeyZone *zone = std::exchange(ctx->facts_zone, nullptr);
    ctx->facts = KeyFacts{};
    TableHold hold(zone);
    if (!hold.valid()) return true;
    const apikey::KeyTable &table = hold.table();
    const apikey::KeyRecord *record = table.build_id() == ctx->facts_build
                                          ? &table.record(ctx->facts_index)
                                          : table.find(ctx->facts_digest);
    if (record == nullptr) return true;
    if (request_facts(r, ctx, table, *record, ctx->facts)) return true;
    ctx->facts = KeyFacts{};
    return false;
}

void log_refusal(ngx_http_request_t *r, const ApiKeyLocConf *lcf, Outcome outcome,
                 const ngx_str_t &id) noexcept {
    ngx_str_t code = literal(apikey::describe(outcome).code);
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

// api_key_optional: a request without a key goes on as nobody's (empty
// variables, no budget, not counted), and another access method may still
// decide; a key that is sent is checked as always.
Decision &anonymous(ngx_http_request_t *r, RequestCtx *ctx, bool reports, Decision &d) noexcept {
    d.anonymous = true;
    d.outcome = Outcome::accepted;
    if (reports) {
        ctx->decided = true;
        ctx->decided_by_main = r == r->main;
        ctx->outcome = Outcome::accepted;
        ctx->facts = KeyFacts{};
        ctx->facts_zone = nullptr;
    }
    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0, "api key: none sent, optional");
    return d;
}

// A revocation published on the zone's channel (core/revocation_overlay.h)
// ranks where the table's own revoked_at does: right after the lookup. It
// can only take access away.
void revoke_by_channel(const KeyZone *zone, const apikey::KeyTable &table,
                       apikey::Verdict &verdict) noexcept {
    if (verdict.outcome == Outcome::revoked_key) return;
    const apikey::RevocationOverlay overlay(apikey::channel_overlay_memory(zone->channel_state));
    if (overlay.empty()) return;
    std::int64_t at = 0;
    if (overlay.revoked(table.text(verdict.record->id), ngx_time(), &at)) {
        verdict.outcome = Outcome::revoked_key;
        verdict.missing_scope = {};
    }
}

// extract -> hash -> lookup -> revoked -> expired -> environment -> plan ->
// allowed_ips -> scopes -> limits. The zone's table is held for this function only.
Decision decide(ngx_http_request_t *r, const ApiKeyLocConf *lcf, RequestCtx *ctx,
                LimitReport &own) noexcept {
    // The main request's decision is what variables and headers report; an
    // auth subrequest's stands in while the main request has none.
    const bool is_main = r == r->main;
    const bool reports = is_main || !ctx->decided_by_main;
    LimitReport &limit = reports ? ctx->limit : own;
    limit.limited = false;
    limit.entries = limit.decided = 0;
    limit.headers = lcf->limit_headers;
    Decision d;
    d.limit = &limit;
    auto *zone = static_cast<KeyZone *>(lcf->zone->data);
    TableHold hold(zone);
    const apikey::KeyTable &table = hold.table();
    if (!hold.valid()) return d;  // internal_error: no table, refuse

    apikey::KeyCollector keys = collect_key(r, lcf, ctx);
    d.key_sent = keys.state() != apikey::KeyCollector::State::none;
    if (!d.key_sent && lcf->optional) return anonymous(r, ctx, reports, d);
    bool remember = false;
    apikey::MemoNote *note = nullptr;
    Outcome presented = Outcome::missing_key;
    switch (keys.state()) {
    case apikey::KeyCollector::State::none: break;
    case apikey::KeyCollector::State::malformed: presented = Outcome::invalid_key; break;
    case apikey::KeyCollector::State::multiple: presented = Outcome::multiple_keys; break;
    case apikey::KeyCollector::State::one:
        presented = identify(ctx, zone, table, keys.key(), remember, note);
        break;
    }

    apikey::Verdict verdict;
    verdict.outcome = presented;
    const unsigned method = method_of(r);
    if (presented == Outcome::accepted) {
        // The address as realip left it; read only for a key with allowed_ips.
        const apikey::ClientSource client{apikey::socket_client_address, r->connection->sockaddr};
        apikey::AccessPolicy &policy = *lcf->policy;
        if (note != nullptr && note->record != apikey::MemoNote::kNoRecord) {
            // The memo noted where this key's digest is in this very table,
            // and maybe that this policy accepted it there.
            const apikey::KeyRecord &record = table.record(note->record);
            if (policy.accepted_as_noted(*note, record, method, ngx_time())) {
                verdict.outcome = Outcome::accepted;
                verdict.environment = ctx->environment;
                verdict.record = &record;
            } else {
                verdict = policy.check_record(table, record, ctx->environment, method, ngx_time(),
                                              client);
                if (verdict.outcome == Outcome::accepted) policy.note_acceptance(*note, method);
            }
        } else {
            verdict = policy.check_digest(table, ctx->digest, ctx->environment, method, ngx_time(),
                                          client);
            if (note != nullptr && verdict.record != nullptr) {
                note->record = table.index_of(*verdict.record);
                if (verdict.outcome == Outcome::accepted) policy.note_acceptance(*note, method);
            }
        }
    }
    // After the memo, so a remembered key cannot pass it by.
    if (zone->channel_state != nullptr && verdict.record != nullptr) {
        revoke_by_channel(zone, table, verdict);
    }
    // Only keys the table knows are remembered: random keys cannot push
    // real ones out of the memo.
    if (verdict.record != nullptr && remember) {
        apikey::MemoNote first;
        first.table = table.build_id();
        first.value = static_cast<std::uint8_t>(ctx->environment);
        first.record = table.index_of(*verdict.record);
        if (verdict.outcome == Outcome::accepted) lcf->policy->note_acceptance(first, method);
        key_digests.remember(keys.key(), ctx->digest, first);
    }
    d.outcome = verdict.outcome;
    d.missing_scope = verdict.missing_scope;
    if (d.outcome == Outcome::accepted && lcf->limits != nullptr) {
        d.outcome = apply_limits(r, lcf, ctx, zone, table, *verdict.record, method, limit);
    }

    if (!ctx->counted) {
        ctx->counted = true;
        zone->shared.usage().count(verdict.record ? table.text(verdict.record->id)
                                                  : std::string_view(),
                                   d.outcome, ngx_time(), table.build_id());
    }

    if (reports) {
        ctx->decided = true;
        ctx->decided_by_main = is_main;
        ctx->dry_run = lcf->dry_run;
        ctx->outcome = d.outcome;
        ctx->facts_zone = nullptr;
        if (verdict.record == nullptr) {
            ctx->facts = KeyFacts{};
        } else if (!static_cast<const ApiKeyMainConf *>(
                        ngx_http_get_module_main_conf(r, ngx_http_api_key_module))
                        ->facts_indexed) {
            ctx->facts_zone = zone;
            ctx->facts_build = table.build_id();
            ctx->facts_index = table.index_of(*verdict.record);
            ctx->facts_digest = ctx->digest;
        } else if (!request_facts(r, ctx, table, *verdict.record, ctx->facts)) {
            ctx->facts = KeyFacts{};
            d.outcome = ctx->outcome = Outcome::internal_error;
        }
    }

    // The key id only for a line that is written: most requests log none.
    if (d.outcome != Outcome::accepted || (r->connection->log->log_level & NGX_LOG_DEBUG_HTTP)) {
        ngx_str_t id = ngx_null_string;
        if (verdict.record != nullptr) id = literal(table.text(verdict.record->id));
        ngx_log_debug4(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "api key: \"%s\" in \"%V\"%s, key id \"%V\"",
                       apikey::describe(d.outcome).code.data(), &zone->name,
                       is_main ? "" : " (subrequest)", &id);
        if (d.outcome != Outcome::accepted) log_refusal(r, lcf, d.outcome, id);
    }
    return d;
}

ngx_table_elt_t *add_header(ngx_http_request_t *r, std::string_view name,
                            const ngx_str_t &value) noexcept {
    // ngx_list_push's own first step, without the call, when the last part has room.
    ngx_list_t &list = r->headers_out.headers;
    ngx_table_elt_t *h;
    if (list.last->nelts < list.nalloc) {
        h = static_cast<ngx_table_elt_t *>(list.last->elts) + list.last->nelts++;
    } else {
        h = static_cast<ngx_table_elt_t *>(ngx_list_push(&list));
        if (h == nullptr) return nullptr;
    }
    h->hash = 1;
#if defined(nginx_version) && nginx_version >= 1023000
    h->next = nullptr;  // one element of its name (auth_request walks the chain)
#endif
    h->key = literal(name);
    h->value = value;
    return h;
}

// Decimal digits into a caller's buffer: the rate-limit headers are on the
// accept path, where ngx_sprintf and a pool allocation per header add up.
ngx_str_t decimal(u_char (&buf)[NGX_INT64_LEN], std::uint64_t value) noexcept {
    u_char *end = buf + NGX_INT64_LEN;
    u_char *p = end;
    do {
        *--p = static_cast<u_char>('0' + value % 10);
        value /= 10;
    } while (value != 0 && p > buf);
    return {static_cast<size_t>(end - p), p};
}

// The one place every refusal goes through: the SPEC's envelope as JSON,
// sent here and now. It never hands nginx a status code (which error_page
// could route to an unprotected location): whatever fails, the answer is
// the refusal or a closed connection.
ngx_int_t send_refusal(ngx_http_request_t *r, const ApiKeyLocConf *lcf, const RequestCtx *ctx,
                       const Decision &d) noexcept {
    const apikey::OutcomeInfo &info = apikey::describe(d.outcome);

    // A body that cannot be read or discarded (malformed chunks, a broken
    // Expect) is left unread: the refusal goes out and the connection closes.
    if (ngx_http_discard_request_body(r) != NGX_OK) r->keepalive = 0;

    char limit_detail[apikey::kMaxLimitDetail];
    std::string_view detail = d.missing_scope;
    if (d.outcome == Outcome::rate_limited) {
        detail = {limit_detail,
                  apikey::describe_limit(limit_detail, d.limit->rate, d.limit->category)};
    }
    auto *body = static_cast<u_char *>(ngx_pnalloc(r->pool, apikey::kMaxErrorBody));
    if (body == nullptr) return NGX_ERROR;
    size_t len = apikey::write_error_body(
        reinterpret_cast<char *>(body), d.outcome,
        std::string_view(ctx->request_id, apikey::kRequestIdLength), detail);

    // After `error_page 404 /protected` nginx would send the 404 it saved
    // in place of this status: the refusal's own status goes out.
    r->err_status = 0;
    r->headers_out.status = info.status;
    r->headers_out.status_line.len = 0;
    r->headers_out.content_length_n = static_cast<off_t>(len);
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = nullptr;

    static const ngx_str_t no_store = ngx_string("no-store");
    if (add_header(r, "Cache-Control", no_store) == nullptr) return NGX_ERROR;
    if (d.outcome == Outcome::rate_limited) {
        auto *digits = static_cast<u_char(*)[NGX_INT64_LEN]>(ngx_pnalloc(r->pool, NGX_INT64_LEN));
        if (digits == nullptr) return NGX_ERROR;
        if (add_header(r, "Retry-After", decimal(*digits, d.limit->decision.retry_after_s)) ==
            nullptr) {
            return NGX_ERROR;
        }
    }
    if (info.status == NGX_HTTP_UNAUTHORIZED) {
        r->headers_out.www_authenticate = add_header(
            r, "WWW-Authenticate", d.key_sent ? lcf->challenge_invalid : lcf->challenge);
        if (r->headers_out.www_authenticate == nullptr) return NGX_ERROR;
    }

    ngx_int_t rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK) return NGX_ERROR;
    if (r->header_only) return rc;

    auto *b = static_cast<ngx_buf_t *>(ngx_calloc_buf(r->pool));
    if (b == nullptr) return NGX_ERROR;
    b->pos = body;
    b->last = body + len;
    b->memory = 1;
    b->last_buf = r == r->main ? 1 : 0;
    b->last_in_chain = 1;
    ngx_chain_t out = {b, nullptr};
    rc = ngx_http_output_filter(r, &out);
    return rc > NGX_OK ? NGX_ERROR : rc;
}

// The refusal, or (when even that cannot be built) a closed connection.
ngx_int_t refuse(ngx_http_request_t *r, const ApiKeyLocConf *lcf, const RequestCtx *ctx,
                 const Decision &d) noexcept {
    ngx_http_finalize_request(r, send_refusal(r, lcf, ctx, d));
    return NGX_DONE;
}

// The headers that carry a key in a location: Authorization for bearer,
// and every header= source.
class CarrierTest {
public:
    explicit CarrierTest(const ApiKeyLocConf *lcf) noexcept
        : sources_(items<Source>(lcf->sources)),
          bearer_(lcf->bearer_source),
          named_(lcf->header_sources) {}
    bool bearer() const noexcept { return bearer_; }

    bool operator()(const ngx_table_elt_t &h) const noexcept {
        if (bearer_ && h.key.len == 13 && std::memcmp(h.lowcase_key, "authorization", 13) == 0) {
            return true;
        }
        if (named_) {
            for (const Source &s : sources_) {
                if (s.header.len != 0 && is_header(h, s.header)) return true;
            }
        }
        return false;
    }

private:
    Items<Source> sources_;
    bool bearer_;
    bool named_;
};

// The proxy module forwards every element of the request's header list, so
// the carrier has to leave the list itself. No element moves and none is
// copied (other fields of headers_in point at the elements): the list's
// parts are rebuilt as runs of the elements that stay, in the list's own
// first part and in new part headers from the pool. Parts of the old chain
// are never changed, so the client's list, saved by value before the first
// hiding, still reads every header as sent; and the new last part is full
// (nalloc), so a module that adds a header later (e.g. ngx.req.set_header)
// gets a part of its own instead of writing over a hidden element.
bool unlink_carriers(ngx_list_t &list, ngx_pool_t *pool, ngx_uint_t first_part,
                     ngx_uint_t first_index, const CarrierTest &is_carrier) noexcept {
    const ngx_list_t old = list;  // list.part is rewritten below
    ngx_list_part_t *tail = nullptr;
    auto emit = [&](ngx_table_elt_t *elts, ngx_uint_t n) {
        ngx_list_part_t *p = &list.part;
        if (tail != nullptr) {
            p = static_cast<ngx_list_part_t *>(ngx_palloc(pool, sizeof(ngx_list_part_t)));
            if (p == nullptr) return false;
            tail->next = p;
        }
        p->elts = elts;
        p->nelts = n;
        p->next = nullptr;
        tail = p;
        return true;
    };
    auto runs = [&] {
        ngx_uint_t ordinal = 0;
        for (const ngx_list_part_t *part = &old.part; part; part = part->next, ordinal++) {
            auto *h = static_cast<ngx_table_elt_t *>(part->elts);
            ngx_uint_t run = 0;
            // Before the first carrier (first_part, first_index) nothing is one.
            const ngx_uint_t from = ordinal < first_part    ? part->nelts
                                    : ordinal == first_part ? first_index
                                                            : 0;
            for (ngx_uint_t i = from; i < part->nelts; i++) {
                if ((ordinal == first_part && i == first_index) || is_carrier(h[i])) {
                    if (i > run && !emit(h + run, i - run)) return false;
                    run = i + 1;
                }
            }
            if (part->nelts > run && !emit(h + run, part->nelts - run)) return false;
        }
        return true;
    };
    if (!runs()) {
        list = old;  // out of memory: the request is refused with the list as it was
        return false;
    }
    if (tail == nullptr) {
        // Nothing stays: an empty first part, with room of its own.
        auto *room = static_cast<ngx_table_elt_t *>(ngx_palloc(pool, 4 * sizeof(ngx_table_elt_t)));
        if (room == nullptr) {
            list = old;
            return false;
        }
        list.part = {room, 0, nullptr};
        list.last = &list.part;
        list.nalloc = 4;
        return true;
    }
    list.last = tail;
    list.nalloc = tail->nelts;
    return true;
}

bool hide_credentials(ngx_http_request_t *r, const ApiKeyLocConf *lcf, RequestCtx *ctx) noexcept {
    const CarrierTest is_carrier(lcf);
    ngx_list_t &headers = r->headers_in.headers;
    bool found = false;
    ngx_uint_t ordinal = 0, at = 0;
    const ngx_table_elt_t *authorization = r->headers_in.authorization;
    const auto *first = static_cast<const ngx_table_elt_t *>(headers.part.elts);
    if (!lcf->header_sources && authorization != nullptr && headers.part.next == nullptr &&
        headers.part.nelts != 0 && authorization == first + headers.part.nelts - 1) {
        // Bearer only, and the Authorization header the last of the list:
        // the only carrier, without a scan. A client cannot send two (nginx
        // answers a second with 400), and a module can only add elements
        // after it.
        found = true;
        at = headers.part.nelts - 1;
    }
    for (const ngx_list_part_t *part = &headers.part; part && !found; part = part->next) {
        auto *h = static_cast<const ngx_table_elt_t *>(part->elts);
        for (at = 0; at < part->nelts; at++) {
            if (is_carrier(h[at])) {
                found = true;
                break;
            }
        }
        if (!found) ordinal++;
    }
    if (found) {
        if (!ctx->headers_saved) {
            ctx->client_headers = headers;
            ctx->client_authorization = r->headers_in.authorization;
            ctx->headers_saved = true;
        }
        if (ordinal == 0 && headers.part.next == nullptr && at != 0 &&
            at + 1 == headers.part.nelts) {
            // The usual case, the key the last of fewer than 20 headers: what
            // unlink_carriers would do, in place.
            headers.part.nelts = at;
            headers.last = &headers.part;
            headers.nalloc = at;
        } else if (!unlink_carriers(headers, r->pool, ordinal, at, is_carrier)) {
            return false;
        }
    }
    if (is_carrier.bearer()) r->headers_in.authorization = nullptr;

    // $http_x_api_key or $http_authorization evaluated before this phase (a
    // map, limit_req_zone, a log format) keep the key in their cached values.
    auto *amcf = static_cast<ApiKeyMainConf *>(
        ngx_http_get_module_main_conf(r, ngx_http_api_key_module));
    for (ngx_uint_t index : items<ngx_uint_t>(&amcf->carrier_variables)) {
        r->variables[index].valid = 0;
        r->variables[index].not_found = 0;
    }
    return true;
}

// After the decision: hide the carriers, or refuse. NGX_OK when accepted
// (a dry run's refusal goes on as NGX_DECLINED).
[[gnu::always_inline]] inline ngx_int_t conclude(ngx_http_request_t *r, const ApiKeyLocConf *lcf,
                                                 RequestCtx *ctx, Decision &d) noexcept {
    // No opinion, so that with `satisfy any` another method must still allow it.
    if (d.anonymous) return NGX_DECLINED;
    if (d.outcome != Outcome::accepted && !lcf->dry_run) return refuse(r, lcf, ctx, d);
    if (lcf->hide_credentials && !hide_credentials(r, lcf, ctx)) {
        d.outcome = Outcome::internal_error;
        return refuse(r, lcf, ctx, d);
    }
    return d.outcome == Outcome::accepted ? NGX_OK : NGX_DECLINED;
}

ngx_int_t add_ietf_headers(ngx_http_request_t *r, const LimitReport &limit) noexcept {
    const size_t size = apikey::ratelimit_field_size(limit.entries);
    auto *p = static_cast<char *>(ngx_pnalloc(r->pool, 2 * size));
    if (p == nullptr) return NGX_ERROR;
    const size_t policy = apikey::format_ratelimit_policy(p, size, limit.entry, limit.entries);
    const size_t values = apikey::format_ratelimit(p + size, size, limit.entry, limit.decided);
    if (policy != 0 && add_header(r, "RateLimit-Policy", literal({p, policy})) == nullptr) {
        return NGX_ERROR;
    }
    if (values != 0 && add_header(r, "RateLimit", literal({p + size, values})) == nullptr) {
        return NGX_ERROR;
    }
    return NGX_OK;
}

// The decimal digits of `value`, written backwards to end just before
// `end`, two at a time; returns where they start.
[[gnu::always_inline]] inline u_char *digits_before(u_char *end, std::uint32_t value) noexcept {
    static constexpr char kPairs[] =
        "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
        "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
        "8081828384858687888990919293949596979899";
    while (value >= 100) {
        const std::uint32_t rest = value % 100;
        value /= 100;
        end -= 2;
        std::memcpy(end, kPairs + 2 * rest, 2);
    }
    if (value >= 10) {
        end -= 2;
        std::memcpy(end, kPairs + 2 * value, 2);
    } else {
        *--end = static_cast<u_char>('0' + value);
    }
    return end;
}

// The digits of the last X-RateLimit-Limit this worker sent, right-aligned:
// a location's limit is the same from one request to the next.
struct LimitDigits {
    std::uint32_t value = 0;
    std::uint32_t len = 1;
    u_char digits[10] = {0, 0, 0, 0, 0, 0, 0, 0, 0, '0'};
};
LimitDigits last_limit;
static_assert(NGX_INT64_LEN >= sizeof last_limit.digits);

// X-RateLimit-Limit, -Remaining and -Reset: three list elements pushed at
// once when the list's last part has room (ngx_list_push one at a time
// otherwise), their digits in the request's context.
ngx_int_t add_x_headers(ngx_http_request_t *r, RequestCtx *ctx,
                        const apikey::WindowDecision &limit) noexcept {
    ngx_list_t &list = r->headers_out.headers;
    ngx_table_elt_t *h = nullptr;
    if (list.last->nelts + 3 <= list.nalloc) {
        h = static_cast<ngx_table_elt_t *>(list.last->elts) + list.last->nelts;
        list.last->nelts += 3;
    }
    auto add = [&](size_t i, std::string_view name, std::uint32_t value) {
        u_char *end = ctx->rate_limit_digits[i] + NGX_INT64_LEN;
        u_char *start;
        if (i == 0) {
            u_char *memo_end = last_limit.digits + sizeof last_limit.digits;
            if (value != last_limit.value) {
                last_limit.value = value;
                last_limit.len = static_cast<std::uint32_t>(memo_end -
                                                            digits_before(memo_end, value));
            }
            std::memcpy(end - sizeof last_limit.digits, last_limit.digits,
                        sizeof last_limit.digits);
            start = end - last_limit.len;
        } else {
            start = digits_before(end, value);
        }
        const ngx_str_t text = {static_cast<size_t>(end - start), start};
        if (h == nullptr) return add_header(r, name, text) != nullptr;
        ngx_table_elt_t &e = h[i];
        e.hash = 1;
#if defined(nginx_version) && nginx_version >= 1023000
        e.next = nullptr;  // one element of its name (auth_request walks the chain)
#endif
        e.key = literal(name);
        e.value = text;
        return true;
    };
    return add(0, "X-RateLimit-Limit", limit.limit) &&
                   add(1, "X-RateLimit-Remaining", limit.allowed ? limit.remaining : 0) &&
                   add(2, "X-RateLimit-Reset", limit.reset_s)
               ? NGX_OK
               : NGX_ERROR;
}

ngx_int_t add_rate_limit_headers(ngx_http_request_t *r, RequestCtx *ctx) noexcept {
    const LimitReport &report = ctx->limit;
    if ((report.headers & kLimitHeadersX) && add_x_headers(r, ctx, report.decision) != NGX_OK) {
        return NGX_ERROR;
    }
    if (report.headers & kLimitHeadersIetf) return add_ietf_headers(r, report);
    return NGX_OK;
}

}  // namespace

// Main requests, in the access phase (so `satisfy` sees the outcome).
ngx_int_t access_handler(ngx_http_request_t *r) noexcept {
    auto *lcf = static_cast<ApiKeyLocConf *>(
        ngx_http_get_module_loc_conf(r, ngx_http_api_key_module));
    if (lcf->zone == nullptr) return NGX_DECLINED;
    RequestCtx *ctx = main_ctx(r);
    if (ctx == nullptr) return NGX_ERROR;  // no memory even for the refusal: close
    // The main request reports in its context, so decide() needs no other.
    Decision d = decide(r, lcf, ctx, ctx->limit);
    return conclude(r, lcf, ctx, d);
}

namespace {

// Out of line: every main request passes through the handler below.
__attribute__((noinline)) ngx_int_t decide_subrequest(ngx_http_request_t *r,
                                                      const ApiKeyLocConf *lcf) noexcept {
    RequestCtx *ctx = main_ctx(r);
    if (ctx == nullptr) return NGX_ERROR;
    LimitReport own;
    Decision d = decide(r, lcf, ctx, own);
    const ngx_int_t rc = conclude(r, lcf, ctx, d);
    return rc == NGX_OK ? NGX_DECLINED : rc;  // other pre-access handlers still run
}

}  // namespace

// Subrequests (auth_request, SSI, mirror, ...) skip the access phase; they
// are decided here, in pre-access, which they do run.
ngx_int_t subrequest_access_handler(ngx_http_request_t *r) noexcept {
    if (r == r->main) return NGX_DECLINED;
    auto *lcf = static_cast<ApiKeyLocConf *>(
        ngx_http_get_module_loc_conf(r, ngx_http_api_key_module));
    if (lcf->zone == nullptr) return NGX_DECLINED;
    return decide_subrequest(r, lcf);
}

ngx_int_t header_filter(ngx_http_request_t *r) noexcept {
    RequestCtx *ctx = r == r->main ? find_ctx(r) : nullptr;
    if (ctx != nullptr) {
        ngx_str_t id = {apikey::kRequestIdLength, reinterpret_cast<u_char *>(ctx->request_id)};
        if (add_header(r, "X-Request-Id", id) == nullptr) return NGX_ERROR;
        if (ctx->decided && ctx->limit.limited && !ctx->dry_run &&
            add_rate_limit_headers(r, ctx) != NGX_OK) {
            return NGX_ERROR;
        }
    }
    return next_header_filter(r);
}

// --- variables ----------------------------------------------------------------

namespace {

enum class Var : uintptr_t {
    id,
    owner,
    organization_id,
    plan,
    environment,
    scopes,
    error,
    request_id,
    limit_remaining,
    sync_stale,
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

// Read from the key's record.
bool is_fact(Var var) noexcept {
    return var == Var::id || var == Var::owner || var == Var::organization_id || var == Var::plan ||
           var == Var::scopes;
}

ngx_int_t variable(ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t data) noexcept {
    RequestCtx *ctx = find_ctx(r);
    v->not_found = 1;
    if (static_cast<Var>(data) == Var::sync_stale) {
        // The location's key zone, whether or not a key was checked yet.
        const auto *lcf = static_cast<const ApiKeyLocConf *>(
            ngx_http_get_module_loc_conf(r, ngx_http_api_key_module));
        if (lcf->zone == nullptr) return NGX_OK;
        const auto *zone = static_cast<const KeyZone *>(lcf->zone->data);
        if (zone->channel_state == nullptr) return NGX_OK;
        const bool stale = apikey::channel_stale(
            zone->channel_state, static_cast<std::int64_t>(ngx_current_msec), zone->stale_ms);
        set_value(v, stale ? "1" : "0");
        return NGX_OK;
    }
    if (ctx == nullptr) return NGX_OK;
    if (static_cast<Var>(data) == Var::request_id) {
        set_value(v, std::string_view(ctx->request_id, apikey::kRequestIdLength));
        return NGX_OK;
    }
    if (!ctx->decided) return NGX_OK;
    if (ctx->facts_zone != nullptr && is_fact(static_cast<Var>(data)) && !late_facts(r, ctx)) {
        return NGX_ERROR;
    }
    const KeyFacts &facts = ctx->facts;
    switch (static_cast<Var>(data)) {
    case Var::request_id:
    case Var::sync_stale: break;
    case Var::error: set_value(v, apikey::describe(ctx->outcome).code); break;
    case Var::environment:
        if (ctx->presented == Outcome::accepted) {
            set_value(v, apikey::environment_name(ctx->environment));
        }
        break;
    case Var::id: set_value(v, to_view(facts.id)); break;
    case Var::owner: set_value(v, to_view(facts.owner)); break;
    case Var::organization_id: set_value(v, to_view(facts.organization)); break;
    case Var::plan: set_value(v, to_view(facts.plan)); break;
    case Var::scopes: set_value(v, to_view(facts.scopes)); break;
    case Var::limit_remaining:
        if (ctx->limit.limited) {
            auto *buf = static_cast<u_char(*)[NGX_INT64_LEN]>(ngx_pnalloc(r->pool, NGX_INT64_LEN));
            if (buf == nullptr) return NGX_ERROR;
            const apikey::WindowDecision &limit = ctx->limit.decision;
            set_value(v, to_view(decimal(*buf, limit.allowed ? limit.remaining : 0)));
        }
        break;
    }
    return NGX_OK;
}

constexpr std::pair<std::string_view, Var> kVariables[] = {
    {"api_key_id", Var::id},
    {"api_key_owner", Var::owner},
    {"api_key_organization_id", Var::organization_id},
    {"api_key_plan", Var::plan},
    {"api_key_environment", Var::environment},
    {"api_key_scopes", Var::scopes},
    {"api_key_error", Var::error},
    {"api_key_request_id", Var::request_id},
    {"api_key_limit_remaining", Var::limit_remaining},
    {"api_key_sync_stale", Var::sync_stale},
};

}  // namespace

bool is_fact_variable(const ngx_str_t &name) noexcept {
    for (const auto &[n, which] : kVariables) {
        if (is_fact(which) && name.len == n.size() &&
            ngx_strncasecmp(name.data, reinterpret_cast<u_char *>(const_cast<char *>(n.data())),
                            n.size()) == 0) {
            return true;
        }
    }
    return false;
}

ngx_int_t add_variables(ngx_conf_t *cf) noexcept {
    for (const auto &[name, which] : kVariables) {
        ngx_str_t n = literal(name);
        ngx_http_variable_t *var = ngx_http_add_variable(cf, &n, NGX_HTTP_VAR_NOCACHEABLE);
        if (var == nullptr) return NGX_ERROR;
        var->get_handler = variable;
        var->data = static_cast<uintptr_t>(which);
    }
    return NGX_OK;
}

// --- api_key_status -------------------------------------------------------------

namespace {

constexpr std::string_view kPrometheusType = "text/plain; version=0.0.4; charset=utf-8";

// The status page's response: text, no-store.
ngx_int_t send_status(ngx_http_request_t *r, ngx_uint_t status, std::string_view content_type,
                      std::string_view text) noexcept {
    r->headers_out.status = status;
    r->headers_out.content_length_n = static_cast<off_t>(text.size());
    r->headers_out.content_type = literal(content_type);
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

}  // namespace

// Usage across all workers, read from the zones themselves.
ngx_int_t status_handler(ngx_http_request_t *r) noexcept {
    if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD))) return NGX_HTTP_NOT_ALLOWED;
    if (ngx_http_discard_request_body(r) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    auto *lcf = static_cast<ApiKeyLocConf *>(
        ngx_http_get_module_loc_conf(r, ngx_http_api_key_module));
    bool prometheus = lcf->status_format == static_cast<ngx_uint_t>(StatusFormat::prometheus);
    // ?format= overrides the directive's format for this request; an
    // unknown one is refused in the directive's format.
    ngx_str_t format;
    static u_char format_arg[] = "format";
    if (ngx_http_arg(r, format_arg, sizeof(format_arg) - 1, &format) == NGX_OK) {
        const std::string_view f = to_view(format);
        if (f == "json" || f == "prometheus") {
            prometheus = f == "prometheus";
        } else if (prometheus) {
            return send_status(r, NGX_HTTP_BAD_REQUEST, "text/plain; charset=utf-8",
                               "format must be json or prometheus\n");
        } else {
            return send_status(r, NGX_HTTP_BAD_REQUEST, "application/json",
                               "{\"error\":{\"code\":\"invalid_format\",\"message\":"
                               "\"format must be json or prometheus\"}}\n");
        }
    }

    std::string text;
    try {
        std::vector<apikey::ZoneReport> zones;
        for_each_key_zone(const_cast<ngx_cycle_t *>(ngx_cycle), [&](KeyZone &zone) {
            const apikey::SharedTablesState *state = zone.shared.state();
            if (state == nullptr) return;
            apikey::ZoneReport report;
            report.zone = to_view(zone.name);
            // The file in force, which may be another configuration's
            // while this worker drains requests after a reload.
            report.file = std::string_view(state->loaded_path,
                                           strnlen(state->loaded_path, apikey::kMaxLoadedPath));
            report.keys = state->keys;
            report.generation = state->generation;
            report.loaded_at = state->loaded_at;
            report.last_error = std::string_view(state->last_error,
                                                 strnlen(state->last_error, apikey::kMaxLoadError));
            report.bytes_total = static_cast<uint64_t>(zone.memory.pool->end - zone.memory.base());
            report.bytes_free = static_cast<uint64_t>(zone.memory.pool->pfree) * ngx_pagesize;
            report.usage = &zone.shared.usage();
            if (const apikey::ChannelState *cs = zone.channel_state) {
                const std::int64_t now_ms = static_cast<std::int64_t>(ngx_current_msec);
                const std::int64_t last = apikey::load_acquire(&cs->last_read_ms);
                report.follows = true;
                report.channel = zone.channel;
                report.stale = apikey::channel_stale(cs, now_ms, zone.stale_ms);
                report.last_read_ms_ago = last == 0 ? -1 : std::max<std::int64_t>(0, now_ms - last);
                report.version = apikey::load_relaxed(&cs->loaded_version);
                report.revoked = apikey::RevocationOverlay(
                                     apikey::channel_overlay_memory(zone.channel_state))
                                     .size();
                report.revocations_applied = apikey::load_relaxed(&cs->revocations_applied);
                report.versions_installed = apikey::load_relaxed(&cs->versions_installed);
                report.entries_refused = apikey::load_relaxed(&cs->entries_refused);
                report.versions_ignored = apikey::load_relaxed(&cs->versions_ignored);
            }
            zones.push_back(report);
        });
        std::vector<apikey::LimitZoneReport> limit_zones;
        const std::int64_t now = static_cast<std::int64_t>(ngx_current_msec);
        for_each_limit_zone(const_cast<ngx_cycle_t *>(ngx_cycle), [&](LimitZone &zone) {
            if (!zone.table.valid()) return;
            apikey::LimitZoneReport report;
            report.zone = to_view(zone.name);
            report.counters = zone.table.capacity();
            report.synced = zone.synced();
            if (report.synced) {
                const apikey::SyncNodeState &node = zone.table.sync_node();
                report.degraded = apikey::sync_degraded(node, zone.sync, now);
                report.last_success_ms_ago = now - apikey::load_relaxed(&node.last_success_ms);
                report.batches = apikey::load_relaxed(&node.batches);
                report.failures = apikey::load_relaxed(&node.failures);
                report.epoch_changes = apikey::load_relaxed(&node.epoch_changes);
                report.granted = apikey::load_relaxed(&node.granted);
                report.reported = apikey::load_relaxed(&node.reported);
                report.last_batch_budgets = apikey::load_relaxed(&node.last_batch_budgets);
                report.last_batch_ms = apikey::load_relaxed(&node.last_batch_ms);
                report.refused_no_grant = apikey::load_relaxed(&node.refused_no_grant);
                report.nodes_seen = apikey::load_relaxed(&node.nodes_seen);
            }
            limit_zones.push_back(report);
        });
        if (prometheus) {
            apikey::PrometheusOptions options;
            options.keys = lcf->status_keys;
            options.nginx = NGINX_VERSION;
            const ngx_time_t *tp = ngx_timeofday();
            options.now_unix_ms = static_cast<std::int64_t>(tp->sec) * 1000 + tp->msec;
            text = apikey::status_prometheus(zones, limit_zones, options);
        } else {
            text = apikey::status_json(zones, limit_zones);
        }
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "api_key_status: %s", e.what());
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return send_status(r, NGX_HTTP_OK, prometheus ? kPrometheusType : "application/json", text);
}

}  // namespace ngx_api_key
