#include "status_report.h"

#include "grant_script.h"
#include "json.h"
#include "shm_atomic.h"
#include "timestamp.h"

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
// order, zeros left out; index 0 is "accepted".
std::vector<CodeCount> by_code(const std::uint64_t (&count)[kOutcomeCount]) {
    std::vector<CodeCount> out;
    for (std::size_t o = 0; o < kOutcomeCount; o++) {
        if (count[o] == 0) continue;
        const std::string_view code = o == 0 ? "accepted" : describe(static_cast<Outcome>(o)).code;
        bool merged = false;
        for (CodeCount &c : out) {
            if (c.code == code) {
                c.n += count[o];
                merged = true;
            }
        }
        if (!merged) out.push_back({code, count[o]});
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

// Prometheus label values: backslash, quote and newline escaped.
void label(std::string &out, std::string_view name, std::string_view value) {
    out += name;
    out += "=\"";
    for (char c : value) {
        if (c == '\\' || c == '"') {
            out += '\\';
            out += c;
        } else if (c == '\n') {
            out += "\\n";
        } else {
            out += c;
        }
    }
    out += '"';
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

// Key channels (cluster mode): what the node applied from the stream.
template <typename Help>
void channel_metrics(std::string &out, const std::vector<ZoneReport> &zones, Help &help) {
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
    };
    for (const auto &m : metrics) {
        help(m.name, m.type, m.text);
        for (const ZoneReport &r : zones) {
            if (!r.follows) continue;
            out += m.name;
            out += '{';
            label(out, "zone", r.zone);
            out += "} " + std::to_string(r.*m.field) + '\n';
        }
    }
}

}  // namespace

std::string status_prometheus(const std::vector<ZoneReport> &zones,
                              const std::vector<LimitZoneReport> &limit_zones) {
    std::string out;
    auto help = [&out](const char *name, const char *type, const char *text) {
        out += "# HELP ";
        out += name;
        out += ' ';
        out += text;
        out += "\n# TYPE ";
        out += name;
        out += ' ';
        out += type;
        out += '\n';
    };
    auto zone_gauge = [&](const char *name, const char *text, auto value) {
        help(name, "gauge", text);
        for (const ZoneReport &r : zones) {
            out += name;
            out += '{';
            label(out, "zone", r.zone);
            out += "} " + std::to_string(value(r)) + '\n';
        }
    };
    zone_gauge("api_key_zone_keys", "Keys in the table in force.",
               [](const ZoneReport &r) { return r.keys; });
    zone_gauge("api_key_zone_generation", "Tables loaded into the zone since it was created.",
               [](const ZoneReport &r) { return r.generation; });
    zone_gauge("api_key_zone_loaded_timestamp_seconds", "When the table in force was loaded.",
               [](const ZoneReport &r) { return r.loaded_at; });
    zone_gauge("api_key_zone_load_error",
               "1 when the key file changed and the new version could not be loaded.",
               [](const ZoneReport &r) { return r.last_error.empty() ? 0 : 1; });
    help("api_key_zone_bytes", "gauge", "Shared memory of the zone, used and free.");
    for (const ZoneReport &r : zones) {
        for (const auto &[state, bytes] :
             {std::pair<const char *, std::uint64_t>{"used", r.bytes_total - r.bytes_free},
              {"free", r.bytes_free}}) {
            out += "api_key_zone_bytes{";
            label(out, "zone", r.zone);
            out += ',';
            label(out, "state", state);
            out += "} " + std::to_string(bytes) + '\n';
        }
    }

    help("api_key_zone_requests_total", "counter",
         "Requests by outcome, including those without a known key.");
    for (const ZoneReport &r : zones) {
        if (r.usage == nullptr || !r.usage->valid()) continue;
        std::uint64_t totals[kOutcomeCount];
        const UsageTotals &t = r.usage->totals();
        for (std::size_t o = 0; o < kOutcomeCount; o++) totals[o] = load_relaxed(&t.count[o]);
        for (const CodeCount &c : by_code(totals)) {
            out += "api_key_zone_requests_total{";
            label(out, "zone", r.zone);
            out += ',';
            label(out, "code", c.code);
            out += "} " + std::to_string(c.n) + '\n';
        }
    }

    help("api_key_zone_untracked_requests_total", "counter",
         "Requests of keys that found no free usage slot (counted in the zone totals only).");
    for (const ZoneReport &r : zones) {
        if (r.usage == nullptr || !r.usage->valid()) continue;
        out += "api_key_zone_untracked_requests_total{";
        label(out, "zone", r.zone);
        out += "} " + std::to_string(load_relaxed(&r.usage->totals().untracked)) + '\n';
    }

    help("api_key_requests_total", "counter",
         "Requests per key by outcome (keys used since start).");
    std::string last_used;
    for (const ZoneReport &r : zones) {
        if (r.usage == nullptr || !r.usage->valid()) continue;
        for (std::uint64_t i = 0; i < r.usage->capacity(); i++) {
            const UsageSlot *s = r.usage->slot(i);
            if (s == nullptr) continue;
            std::uint64_t count[kOutcomeCount];
            snapshot(*s, count);
            const std::string_view id(s->id, s->id_len);
            for (const CodeCount &c : by_code(count)) {
                out += "api_key_requests_total{";
                label(out, "zone", r.zone);
                out += ',';
                label(out, "key_id", id);
                out += ',';
                label(out, "code", c.code);
                out += "} " + std::to_string(c.n) + '\n';
            }
            last_used += "api_key_last_used_timestamp_seconds{";
            label(last_used, "zone", r.zone);
            last_used += ',';
            label(last_used, "key_id", id);
            last_used += "} " + std::to_string(load_relaxed(&s->last_used)) + '\n';
        }
    }
    help("api_key_last_used_timestamp_seconds", "gauge", "When each key was last used.");
    out += last_used;

    bool any_follows = false;
    for (const ZoneReport &r : zones) any_follows |= r.follows;
    bool any_synced = false;
    for (const LimitZoneReport &l : limit_zones) any_synced |= l.synced;
    if (!any_synced && !any_follows) return out;
    // One family for both kinds of zone: a key zone is ok or stale, a limit zone ok or degraded.
    help("api_key_sync_state", "gauge", "Cluster sync state of a zone (1 for the current).");
    for (const ZoneReport &r : zones) {
        if (!r.follows) continue;
        for (const char *state : {"ok", "stale"}) {
            out += "api_key_sync_state{";
            label(out, "zone", r.zone);
            out += ',';
            label(out, "state", state);
            out += "} ";
            out += (r.stale == (std::string_view(state) == "stale")) ? "1\n" : "0\n";
        }
    }
    if (any_follows) channel_metrics(out, zones, help);
    if (!any_synced) return out;
    for (const LimitZoneReport &l : limit_zones) {
        if (!l.synced) continue;
        for (const char *state : {"ok", "degraded"}) {
            out += "api_key_sync_state{";
            label(out, "zone", l.zone);
            out += ',';
            label(out, "state", state);
            out += "} ";
            out += (l.degraded == (std::string_view(state) == "degraded")) ? "1\n" : "0\n";
        }
    }
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
        help(c.name, "counter", c.text);
        for (const LimitZoneReport &l : limit_zones) {
            if (!l.synced) continue;
            out += c.name;
            out += '{';
            label(out, "zone", l.zone);
            out += "} " + std::to_string(l.*c.field) + '\n';
        }
    }
    help("api_key_sync_last_success_seconds", "gauge",
         "Seconds since the last exchange with Redis.");
    for (const LimitZoneReport &l : limit_zones) {
        if (!l.synced) continue;
        out += "api_key_sync_last_success_seconds{";
        label(out, "zone", l.zone);
        out += "} " + std::to_string(l.last_success_ms_ago / 1000) + '\n';
    }
    const std::string nodes_help =
        "Nginx nodes (this one included) that synced the zone through its Redis in the last " +
        std::to_string(kNodeSeenMs / 1000) + " seconds.";
    help("api_key_sync_nodes", "gauge", nodes_help.c_str());
    for (const LimitZoneReport &l : limit_zones) {
        if (!l.synced) continue;
        out += "api_key_sync_nodes{";
        label(out, "zone", l.zone);
        out += "} " + std::to_string(l.nodes_seen) + '\n';
    }
    return out;
}

}  // namespace apikey
