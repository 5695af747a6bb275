#include "status_report.h"

#include <algorithm>
#include <initializer_list>
#include <utility>

#include "grant_script.h"
#include "json.h"
#include "shm_atomic.h"
#include "timestamp.h"
#include "version.h"

namespace apikey {

namespace {

void json_string(std::string &out, std::string_view s) {
    out += '"';
    const std::size_t at = out.size();
    out.resize(at + json_escaped_max(s.size()));
    out.resize(at + json_escape(s, out.data() + at));
    out += '"';
}

void json_time(std::string &out, std::int64_t t) {
    if (t <= 0) {
        out += "null";
        return;
    }
    char buf[20];
    format_timestamp(t, buf);
    json_string(out, std::string_view(buf, sizeof buf));
}

struct CodeCount {
    std::string_view code;
    std::uint64_t n;
};

// Counters summed by code ("invalid_api_key" has three causes), in table
// order; at most one per outcome, so no allocation per key.
struct Codes {
    CodeCount at[kOutcomeCount];
    std::size_t size = 0;
    const CodeCount *begin() const { return at; }
    const CodeCount *end() const { return at + size; }
};

// Zeros left out unless asked for; index 0 is "accepted".
Codes by_code(const std::uint64_t (&count)[kOutcomeCount], bool zeros = false) {
    Codes out;
    for (std::size_t o = 0; o < kOutcomeCount; o++) {
        if (count[o] == 0 && !zeros) continue;
        const std::string_view code = o == 0 ? "accepted" : describe(static_cast<Outcome>(o)).code;
        bool merged = false;
        for (std::size_t i = 0; i < out.size && !merged; i++) {
            if (out.at[i].code == code) {
                out.at[i].n += count[o];
                merged = true;
            }
        }
        if (!merged) out.at[out.size++] = {code, count[o]};
    }
    return out;
}

// Refusals by code (accepted and rate-limited have their own fields).
void json_codes(std::string &out, const std::uint64_t (&count)[kOutcomeCount]) {
    out += '{';
    bool first = true;
    for (const CodeCount &c : by_code(count)) {
        if (c.code == "accepted" || c.code == describe(Outcome::rate_limited).code) continue;
        if (!first) out += ',';
        first = false;
        json_string(out, c.code);
        out += ':' + std::to_string(c.n);
    }
    out += '}';
}

// A snapshot of one slot's counters (each read atomically).
void snapshot(const UsageSlot &s, std::uint64_t (&count)[kOutcomeCount]) {
    for (std::size_t o = 0; o < kOutcomeCount; o++) count[o] = load_relaxed(&s.count[o]);
}

}  // namespace

std::string status_json(const std::vector<ZoneReport> &zones,
                        const std::vector<LimitZoneReport> &limit_zones) {
    std::string out = "{\"zones\":[";
    for (std::size_t z = 0; z < zones.size(); z++) {
        const ZoneReport &r = zones[z];
        if (z) out += ',';
        out += "{\"zone\":";
        json_string(out, r.zone);
        out += ",\"file\":";
        json_string(out, r.file);
        out += ",\"keys\":" + std::to_string(r.keys);
        out += ",\"generation\":" + std::to_string(r.generation);
        out += ",\"loaded_at\":";
        json_time(out, r.loaded_at);
        out += ",\"last_error\":";
        if (r.last_error.empty()) {
            out += "null";
        } else {
            json_string(out, r.last_error);
        }
        out += ",\"bytes_total\":" + std::to_string(r.bytes_total);
        out += ",\"bytes_free\":" + std::to_string(r.bytes_free);
        if (r.follows) {
            out += ",\"sync\":{\"state\":";
            out += r.stale ? "\"stale\"" : "\"ok\"";
            out += ",\"channel\":";
            json_string(out, r.channel);
            out += ",\"last_read_ms_ago\":";
            out += r.last_read_ms_ago < 0 ? "null" : std::to_string(r.last_read_ms_ago);
            out += ",\"version\":" + std::to_string(r.version);
            out += ",\"revoked\":" + std::to_string(r.revoked);
            out += ",\"revocations_applied\":" + std::to_string(r.revocations_applied);
            out += ",\"versions_installed\":" + std::to_string(r.versions_installed);
            out += ",\"refused\":" + std::to_string(r.entries_refused);
            out += ",\"ignored\":" + std::to_string(r.versions_ignored) + '}';
        }
        if (r.usage == nullptr || !r.usage->valid()) {
            out += '}';
            continue;
        }
        const UsageTotals &t = r.usage->totals();
        std::uint64_t totals[kOutcomeCount];
        for (std::size_t o = 0; o < kOutcomeCount; o++) totals[o] = load_relaxed(&t.count[o]);
        out += ",\"requests\":{\"accepted\":" + std::to_string(totals[0]);
        out += ",\"rate_limited\":" +
               std::to_string(totals[static_cast<std::size_t>(Outcome::rate_limited)]);
        out += ",\"denied\":";
        json_codes(out, totals);
        out += ",\"untracked\":" + std::to_string(load_relaxed(&t.untracked)) + "}";
        out += ",\"usage\":[";
        bool first = true;
        for (std::uint64_t i = 0; i < r.usage->capacity(); i++) {
            const UsageSlot *s = r.usage->slot(i);
            if (s == nullptr) continue;
            std::uint64_t count[kOutcomeCount];
            snapshot(*s, count);
            if (!first) out += ',';
            first = false;
            out += "{\"key_id\":";
            json_string(out, std::string_view(s->id, s->id_len));
            out += ",\"accepted\":" + std::to_string(count[0]);
            out += ",\"rate_limited\":" +
                   std::to_string(count[static_cast<std::size_t>(Outcome::rate_limited)]);
            out += ",\"denied\":";
            json_codes(out, count);
            out += ",\"last_used\":";
            json_time(out, load_relaxed(&s->last_used));
            out += '}';
        }
        out += "]}";
    }
    out += "],\"limit_zones\":[";
    for (std::size_t z = 0; z < limit_zones.size(); z++) {
        const LimitZoneReport &l = limit_zones[z];
        if (z) out += ',';
        out += "{\"name\":";
        json_string(out, l.zone);
        out += ",\"counters\":" + std::to_string(l.counters);
        out += ",\"synced\":";
        out += l.synced ? "true" : "false";
        if (l.synced) {
            out += ",\"sync\":{\"state\":";
            out += l.degraded ? "\"degraded\"" : "\"ok\"";
            out += ",\"last_success_ms_ago\":" + std::to_string(l.last_success_ms_ago);
            out += ",\"batches\":" + std::to_string(l.batches);
            out += ",\"failures\":" + std::to_string(l.failures);
            out += ",\"epoch_changes\":" + std::to_string(l.epoch_changes);
            out += ",\"granted\":" + std::to_string(l.granted);
            out += ",\"reported\":" + std::to_string(l.reported);
            out += ",\"last_batch_budgets\":" + std::to_string(l.last_batch_budgets);
            out += ",\"last_batch_ms\":" + std::to_string(l.last_batch_ms);
            out += ",\"refused_no_grant\":" + std::to_string(l.refused_no_grant);
            out += ",\"nodes_seen\":" + std::to_string(l.nodes_seen) + '}';
        }
        out += '}';
    }
    out += "]}\n";
    return out;
}

namespace {

// Unix milliseconds as seconds with three decimals ("1700000000.123").
std::string seconds_ms(std::int64_t ms) {
    if (ms < 0) ms = 0;
    char frac[4] = {static_cast<char>('0' + ms / 100 % 10), static_cast<char>('0' + ms / 10 % 10),
                    static_cast<char>('0' + ms % 10), '\0'};
    return std::to_string(ms / 1000) + '.' + frac;
}

// The requests a key made since its slot was claimed, refusals included.
std::uint64_t requests_of(const UsageSlot &s) {
    std::uint64_t n = 0;
    for (std::size_t o = 0; o < kOutcomeCount; o++) n += load_relaxed(&s.count[o]);
    return n;
}

struct Ranked {
    std::uint64_t requests;
    const UsageSlot *slot;
};

// a ranks before b: more requests, or as many and a smaller key id (ids are
// unique within a table; the slot's address settles anything else).
bool ranks_before(const Ranked &a, const Ranked &b) {
    if (a.requests != b.requests) return a.requests > b.requests;
    const std::string_view ia(a.slot->id, a.slot->id_len), ib(b.slot->id, b.slot->id_len);
    if (ia != ib) return ia < ib;
    return a.slot < b.slot;
}

// Writes the text exposition format (version 0.0.4) into out.
class Exposition {
public:
    explicit Exposition(std::string &out) : out_(out) {}

    // # HELP and # TYPE of a family; its samples must follow at once.
    void family(std::string_view name, const char *type, std::string_view help) {
        out_ += "# HELP ";
        out_ += name;
        out_ += ' ';
        out_ += help;
        out_ += "\n# TYPE ";
        out_ += name;
        out_ += ' ';
        out_ += type;
        out_ += '\n';
    }

    using Labels = std::initializer_list<std::pair<std::string_view, std::string_view>>;

    void sample(std::string_view name, Labels labels, std::string_view value) {
        out_ += name;
        if (labels.size() != 0) {
            out_ += '{';
            bool first = true;
            for (const auto &[label, v] : labels) {
                if (!first) out_ += ',';
                first = false;
                out_ += label;
                out_ += "=\"";
                label_value(v);
                out_ += '"';
            }
            out_ += '}';
        }
        out_ += ' ';
        out_ += value;
        out_ += '\n';
    }
    void sample(std::string_view name, Labels labels, std::uint64_t value) {
        sample(name, labels, std::to_string(value));
    }

private:
    // Backslash, quote and newline escaped; invalid UTF-8 becomes U+FFFD
    // (Prometheus refuses a scrape with a label value that is not UTF-8).
    void label_value(std::string_view value) {
        for (std::size_t i = 0; i < value.size();) {
            const char c = value[i];
            if (c == '\\' || c == '"') {
                out_ += '\\';
                out_ += c;
            } else if (c == '\n') {
                out_ += "\\n";
            } else if (static_cast<unsigned char>(c) >= 0x80) {
                const std::size_t n = utf8_sequence(value, i);
                if (n == 0) {
                    out_ += "\xef\xbf\xbd";
                    i++;
                } else {
                    out_.append(value.data() + i, n);
                    i += n;
                }
                continue;
            } else {
                out_ += c;
            }
            i++;
        }
    }

    std::string &out_;
};

bool has_usage(const ZoneReport &r) { return r.usage != nullptr && r.usage->valid(); }

// Key channels (cluster mode): what the node applied from the stream.
void channel_metrics(Exposition &e, const std::vector<ZoneReport> &zones,
                     const PrometheusOptions &options) {
    const struct {
        const char *name;
        const char *type;
        const char *text;
        std::uint64_t ZoneReport::*field;
    } metrics[] = {
        {"api_key_channel_version", "gauge", "Newest published key file version applied.",
         &ZoneReport::version},
        {"api_key_channel_revoked_keys", "gauge",
         "Keys revoked by the channel and not yet by the key table (the overlay).",
         &ZoneReport::revoked},
        {"api_key_channel_revocations_applied_total", "counter",
         "Revocations applied from the channel.", &ZoneReport::revocations_applied},
        {"api_key_channel_versions_installed_total", "counter",
         "Published key file versions installed.", &ZoneReport::versions_installed},
        {"api_key_channel_entries_refused_total", "counter",
         "Channel entries refused (unsigned, forged, malformed or unreadable).",
         &ZoneReport::entries_refused},
        {"api_key_channel_versions_ignored_total", "counter",
         "Published versions ignored because they were not newer than the one in force.",
         &ZoneReport::versions_ignored},
    };
    for (const auto &m : metrics) {
        e.family(m.name, m.type, m.text);
        for (const ZoneReport &r : zones) {
            if (r.follows) e.sample(m.name, {{"zone", r.zone}}, r.*m.field);
        }
    }
    if (options.now_unix_ms <= 0) return;
    e.family("api_key_channel_last_read_timestamp_seconds", "gauge",
             "When the node last read the channel's stream (0: never).");
    for (const ZoneReport &r : zones) {
        if (!r.follows) continue;
        e.sample("api_key_channel_last_read_timestamp_seconds", {{"zone", r.zone}},
                 r.last_read_ms_ago < 0 ? std::string("0")
                                        : seconds_ms(options.now_unix_ms - r.last_read_ms_ago));
    }
}

// Synced limit zones (cluster mode): the exchanges with Redis.
void limit_sync_metrics(Exposition &e, const std::vector<LimitZoneReport> &limit_zones,
                        const PrometheusOptions &options) {
    const struct {
        const char *name;
        const char *text;
        std::uint64_t LimitZoneReport::*field;
    } counters[] = {
        {"api_key_sync_batches_total", "Batches exchanged with Redis.", &LimitZoneReport::batches},
        {"api_key_sync_failures_total", "Batches that failed (timeout, connection).",
         &LimitZoneReport::failures},
        {"api_key_sync_epoch_changes_total", "Times Redis was found to have lost its data.",
         &LimitZoneReport::epoch_changes},
        {"api_key_sync_granted_total", "Requests granted by Redis.", &LimitZoneReport::granted},
        {"api_key_sync_overdraft_reported_total", "Overdraft requests reported to Redis.",
         &LimitZoneReport::reported},
        {"api_key_sync_refused_no_grant_total", "Requests refused for lack of a grant.",
         &LimitZoneReport::refused_no_grant},
    };
    for (const auto &c : counters) {
        e.family(c.name, "counter", c.text);
        for (const LimitZoneReport &l : limit_zones) {
            if (l.synced) e.sample(c.name, {{"zone", l.zone}}, l.*c.field);
        }
    }
    if (options.now_unix_ms > 0) {
        e.family("api_key_sync_last_success_timestamp_seconds", "gauge",
                 "When the last exchange with Redis succeeded (before the first: when syncing "
                 "started).");
        for (const LimitZoneReport &l : limit_zones) {
            if (!l.synced) continue;
            e.sample("api_key_sync_last_success_timestamp_seconds", {{"zone", l.zone}},
                     seconds_ms(options.now_unix_ms - l.last_success_ms_ago));
        }
    }
    e.family("api_key_sync_last_batch_duration_seconds", "gauge",
             "Duration of the last batch exchanged with Redis.");
    for (const LimitZoneReport &l : limit_zones) {
        if (!l.synced) continue;
        e.sample("api_key_sync_last_batch_duration_seconds", {{"zone", l.zone}},
                 seconds_ms(static_cast<std::int64_t>(l.last_batch_ms)));
    }
    e.family("api_key_sync_last_batch_budgets", "gauge", "Budgets in the last batch.");
    for (const LimitZoneReport &l : limit_zones) {
        if (l.synced)
            e.sample("api_key_sync_last_batch_budgets", {{"zone", l.zone}}, l.last_batch_budgets);
    }
    const std::string nodes_help =
        "Nginx nodes (this one included) that synced the zone through its Redis in the last " +
        std::to_string(kNodeSeenMs / 1000) + " seconds.";
    e.family("api_key_sync_nodes", "gauge", nodes_help);
    for (const LimitZoneReport &l : limit_zones) {
        if (l.synced) e.sample("api_key_sync_nodes", {{"zone", l.zone}}, l.nodes_seen);
    }
}

}  // namespace

bool parse_key_series(std::string_view value, KeySeries &out) noexcept {
    if (value == "off") {
        out.mode = KeySeries::Mode::off;
        return true;
    }
    if (value == "all") {
        out.mode = KeySeries::Mode::all;
        return true;
    }
    constexpr std::string_view top = "top=";
    if (value.substr(0, top.size()) != top) return false;
    value.remove_prefix(top.size());
    if (value.empty() || value.size() > 5 || value[0] == '0') return false;
    std::uint32_t n = 0;
    for (char c : value) {
        if (c < '0' || c > '9') return false;
        n = n * 10 + static_cast<std::uint32_t>(c - '0');
    }
    if (n > KeySeries::kMaxTop) return false;
    out.mode = KeySeries::Mode::top;
    out.top = n;
    return true;
}

std::vector<const UsageSlot *> select_keys(const UsageTable &usage, const KeySeries &keys) {
    std::vector<const UsageSlot *> out;
    if (!usage.valid() || keys.mode == KeySeries::Mode::off) return out;
    if (keys.mode == KeySeries::Mode::all) {
        for (std::uint64_t i = 0; i < usage.capacity(); i++) {
            if (const UsageSlot *s = usage.slot(i)) out.push_back(s);
        }
        return out;
    }
    if (keys.top == 0) return out;
    // A heap of the best `top` so far whose front is the worst of them.
    std::vector<Ranked> best;
    best.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(keys.top, usage.capacity())));
    for (std::uint64_t i = 0; i < usage.capacity(); i++) {
        const UsageSlot *s = usage.slot(i);
        if (s == nullptr) continue;
        const Ranked r{requests_of(*s), s};
        if (best.size() < keys.top) {
            best.push_back(r);
            std::push_heap(best.begin(), best.end(), ranks_before);
        } else if (ranks_before(r, best.front())) {
            std::pop_heap(best.begin(), best.end(), ranks_before);
            best.back() = r;
            std::push_heap(best.begin(), best.end(), ranks_before);
        }
    }
    std::sort_heap(best.begin(), best.end(), ranks_before);
    out.reserve(best.size());
    for (const Ranked &r : best) out.push_back(r.slot);
    return out;
}

std::string status_prometheus(const std::vector<ZoneReport> &zones,
                              const std::vector<LimitZoneReport> &limit_zones,
                              const PrometheusOptions &options) {
    std::string out;
    Exposition e(out);

    e.family("api_key_build_info", "gauge",
             "Version of the module and of the nginx it was built for (always 1).");
    e.sample("api_key_build_info",
             {{"version", kModuleVersion},
              {"nginx", options.nginx.empty() ? std::string_view("unknown") : options.nginx}},
             "1");

    auto zone_gauge = [&](const char *name, const char *help, auto value) {
        e.family(name, "gauge", help);
        for (const ZoneReport &r : zones) e.sample(name, {{"zone", r.zone}}, value(r));
    };
    zone_gauge("api_key_zone_keys", "Keys in the table in force.",
               [](const ZoneReport &r) { return r.keys; });
    zone_gauge("api_key_zone_generation", "Tables loaded into the zone since it was created.",
               [](const ZoneReport &r) { return r.generation; });
    zone_gauge("api_key_zone_loaded_timestamp_seconds",
               "When the table in force was loaded (0: never).", [](const ZoneReport &r) {
                   return static_cast<std::uint64_t>(std::max<std::int64_t>(r.loaded_at, 0));
               });
    zone_gauge("api_key_zone_load_error",
               "1 when the key file changed and the new version could not be loaded.",
               [](const ZoneReport &r) { return std::uint64_t{r.last_error.empty() ? 0u : 1u}; });
    e.family("api_key_zone_bytes", "gauge", "Shared memory of the zone, used and free.");
    for (const ZoneReport &r : zones) {
        e.sample("api_key_zone_bytes", {{"zone", r.zone}, {"state", "used"}},
                 r.bytes_total - r.bytes_free);
        e.sample("api_key_zone_bytes", {{"zone", r.zone}, {"state", "free"}}, r.bytes_free);
    }

    // Every code of every zone, zeros included: a series exists before its
    // first increment, so rate() and increase() see that one too.
    e.family("api_key_zone_requests_total", "counter",
             "Requests by outcome (code: accepted or the error code), including those without "
             "a known key.");
    for (const ZoneReport &r : zones) {
        if (!has_usage(r)) continue;
        const UsageTotals &t = r.usage->totals();
        std::uint64_t totals[kOutcomeCount];
        for (std::size_t o = 0; o < kOutcomeCount; o++) totals[o] = load_relaxed(&t.count[o]);
        for (const CodeCount &c : by_code(totals, true)) {
            e.sample("api_key_zone_requests_total", {{"zone", r.zone}, {"code", c.code}}, c.n);
        }
    }
    e.family("api_key_zone_untracked_requests_total", "counter",
             "Requests of keys that found no free usage slot (counted in the zone totals only).");
    for (const ZoneReport &r : zones) {
        if (!has_usage(r)) continue;
        e.sample("api_key_zone_untracked_requests_total", {{"zone", r.zone}},
                 load_relaxed(&r.usage->totals().untracked));
    }

    if (options.keys.mode != KeySeries::Mode::off) {
        std::vector<std::vector<const UsageSlot *>> selected;
        selected.reserve(zones.size());
        for (const ZoneReport &r : zones) {
            selected.push_back(has_usage(r) ? select_keys(*r.usage, options.keys)
                                            : std::vector<const UsageSlot *>{});
        }
        e.family("api_key_requests_total", "counter",
                 "Requests per key by outcome (the keys api_key_status keys= selects among "
                 "those used since the zone was created).");
        for (std::size_t z = 0; z < zones.size(); z++) {
            for (const UsageSlot *s : selected[z]) {
                std::uint64_t count[kOutcomeCount];
                snapshot(*s, count);
                const std::string_view id(s->id, s->id_len);
                for (const CodeCount &c : by_code(count)) {
                    e.sample("api_key_requests_total",
                             {{"zone", zones[z].zone}, {"key_id", id}, {"code", c.code}}, c.n);
                }
            }
        }
        e.family("api_key_last_used_timestamp_seconds", "gauge",
                 "When each key (of api_key_requests_total) was last used.");
        for (std::size_t z = 0; z < zones.size(); z++) {
            for (const UsageSlot *s : selected[z]) {
                e.sample("api_key_last_used_timestamp_seconds",
                         {{"zone", zones[z].zone}, {"key_id", std::string_view(s->id, s->id_len)}},
                         static_cast<std::uint64_t>(
                             std::max<std::int64_t>(load_relaxed(&s->last_used), 0)));
            }
        }
    }

    if (!limit_zones.empty()) {
        e.family("api_key_limit_zone_counters", "gauge",
                 "Rate-limit counters the limit zone can hold.");
        for (const LimitZoneReport &l : limit_zones) {
            e.sample("api_key_limit_zone_counters", {{"zone", l.zone}}, l.counters);
        }
    }

    bool any_follows = false;
    for (const ZoneReport &r : zones) any_follows |= r.follows;
    bool any_synced = false;
    for (const LimitZoneReport &l : limit_zones) any_synced |= l.synced;
    if (!any_synced && !any_follows) return out;
    // One family for both kinds of zone (their names never collide: nginx's
    // shared zones have one namespace): a key zone is ok or stale, a limit
    // zone ok or degraded.
    e.family("api_key_sync_state", "gauge", "Cluster sync state of a zone (1 for the current).");
    for (const ZoneReport &r : zones) {
        if (!r.follows) continue;
        e.sample("api_key_sync_state", {{"zone", r.zone}, {"state", "ok"}}, r.stale ? "0" : "1");
        e.sample("api_key_sync_state", {{"zone", r.zone}, {"state", "stale"}}, r.stale ? "1" : "0");
    }
    for (const LimitZoneReport &l : limit_zones) {
        if (!l.synced) continue;
        e.sample("api_key_sync_state", {{"zone", l.zone}, {"state", "ok"}}, l.degraded ? "0" : "1");
        e.sample("api_key_sync_state", {{"zone", l.zone}, {"state", "degraded"}},
                 l.degraded ? "1" : "0");
    }
    if (any_follows) channel_metrics(e, zones, options);
    if (any_synced) limit_sync_metrics(e, limit_zones, options);
    return out;
}

}  // namespace apikey
