// What api_key_status serves (status_report.h): status_json is one valid
// JSON document (checked by the strict reader of tests/support/strict_json.h)
// with every odd byte of a key id, zone, file or error escaped; and
// status_prometheus is well-formed text exposition: HELP and TYPE once per
// metric family and before its samples, the samples of a family together,
// label values escaped, no series twice; api_key_build_info always, per-key
// series as keys= selects them (off, all, the top N by requests).
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/status_report.h"
#include "core/usage_table.h"
#include "core/version.h"
#include "support/strict_json.h"

namespace apikey {
namespace {

using strict_json::Value;

constexpr std::int64_t kLoaded = 1700000000;  // 2023-11-14T22:13:20Z
constexpr std::int64_t kUsed = 1700000100;    // 2023-11-14T22:15:00Z

// A usage table on the heap.
class HeapUsage {
public:
    explicit HeapUsage(std::size_t capacity)
        : memory_(new std::uint64_t[(UsageTable::bytes_for(capacity) + 7) / 8]) {
        table = UsageTable::format(memory_.get(), capacity);
    }
    void count(std::string_view id, Outcome o, int times = 1, std::int64_t now = kUsed) {
        for (int i = 0; i < times; i++) table.count(id, o, now);
    }

    UsageTable table;

private:
    std::unique_ptr<std::uint64_t[]> memory_;
};

ZoneReport zone(std::string_view name, const UsageTable *usage = nullptr) {
    ZoneReport r;
    r.zone = name;
    r.file = "/etc/nginx/keys.yaml";
    r.keys = 3;
    r.generation = 2;
    r.loaded_at = kLoaded;
    r.bytes_total = 1048576;
    r.bytes_free = 786432;
    r.usage = usage;
    return r;
}

// ---- JSON

Value parse_json(const std::string &text) {
    EXPECT_TRUE(!text.empty() && text.back() == '\n') << "one document, then a newline";
    auto doc = strict_json::parse(text);
    EXPECT_TRUE(doc) << "not valid JSON:\n" << text;
    return doc ? *doc : Value{};
}

std::vector<std::string> names(const Value &object) {
    std::vector<std::string> out;
    for (const auto &m : object.members) out.push_back(m.first);
    return out;
}

// The member, which must be there exactly once.
const Value &at(const Value &object, std::string_view name) {
    static const Value missing;
    int n = 0;
    for (const auto &m : object.members) n += m.first == name;
    EXPECT_EQ(n, 1) << "member " << name;
    const Value *v = object.get(name);
    return v ? *v : missing;
}

std::string number(const Value &v) {
    EXPECT_EQ(v.kind, Value::number) << v.str;
    return v.str;
}

// The usage entry of a key id (decoded), or nullptr.
const Value *usage_of(const Value &zone, std::string_view id) {
    const Value *found = nullptr;
    for (const Value &u : at(zone, "usage").items) {
        if (at(u, "key_id").str == id) {
            EXPECT_EQ(found, nullptr) << "key " << id << " listed twice";
            found = &u;
        }
    }
    return found;
}

TEST(StatusJson, NoZones) {
    const std::string text = status_json({});
    EXPECT_EQ(text, "{\"zones\":[],\"limit_zones\":[]}\n");
    const Value doc = parse_json(text);
    EXPECT_EQ(at(doc, "zones").kind, Value::array);
}

TEST(StatusJson, SyncedLimitZonesReportTheirSyncState) {
    LimitZoneReport plain;
    plain.zone = "local";
    plain.counters = 100;
    LimitZoneReport synced;
    synced.zone = "shared";
    synced.counters = 50;
    synced.synced = true;
    synced.degraded = true;
    synced.batches = 7;
    synced.failures = 2;
    synced.nodes_seen = 3;
    const Value doc = parse_json(status_json({}, {plain, synced}));
    const Value &zones = at(doc, "limit_zones");
    ASSERT_EQ(zones.kind, Value::array);
    ASSERT_EQ(zones.items.size(), 2u);
    EXPECT_EQ(at(zones.items[0], "synced").kind, Value::boolean);
    EXPECT_EQ(at(at(zones.items[1], "sync"), "state").str, "degraded");
    EXPECT_EQ(at(at(zones.items[1], "sync"), "batches").str, "7");
    EXPECT_EQ(at(at(zones.items[1], "sync"), "nodes_seen").kind, Value::number);
    EXPECT_EQ(at(at(zones.items[1], "sync"), "nodes_seen").str, "3");
    const std::string prom = status_prometheus({}, {plain, synced});
    EXPECT_NE(prom.find("api_key_sync_state{zone=\"shared\",state=\"degraded\"} 1"),
              std::string::npos)
        << prom;
    EXPECT_NE(prom.find("api_key_sync_failures_total{zone=\"shared\"} 2"), std::string::npos);
    EXPECT_NE(prom.find("\n# HELP api_key_sync_nodes "), std::string::npos) << prom;
    EXPECT_NE(prom.find("\n# TYPE api_key_sync_nodes gauge\n"), std::string::npos) << prom;
    EXPECT_NE(prom.find("\napi_key_sync_nodes{zone=\"shared\"} 3\n"), std::string::npos) << prom;
    EXPECT_NE(prom.find("\napi_key_limit_zone_counters{zone=\"local\"} 100\n"), std::string::npos)
        << prom;
    EXPECT_EQ(prom.find("api_key_sync_state{zone=\"local\""), std::string::npos)
        << "unsynced zones have no sync series";
    EXPECT_EQ(prom.find("api_key_sync_batches_total{zone=\"local\""), std::string::npos)
        << "unsynced zones have no sync series";
}

TEST(StatusJson, ZoneWithoutUsageTable) {
    UsageTable invalid;  // default-constructed: no usage memory
    const Value doc = parse_json(status_json({zone("keys"), zone("other", &invalid)}));
    const Value &zones = at(doc, "zones");
    ASSERT_EQ(zones.items.size(), 2u);
    for (const Value &z : zones.items) {
        EXPECT_EQ(names(z),
                  (std::vector<std::string>{"zone", "file", "keys", "generation", "loaded_at",
                                            "last_error", "bytes_total", "bytes_free"}));
    }
    const Value &z = zones.items[0];
    EXPECT_EQ(at(z, "zone").str, "keys");
    EXPECT_EQ(at(zones.items[1], "zone").str, "other");
    EXPECT_EQ(at(z, "file").str, "/etc/nginx/keys.yaml");
    EXPECT_EQ(number(at(z, "keys")), "3");
    EXPECT_EQ(number(at(z, "generation")), "2");
    EXPECT_EQ(at(z, "loaded_at").str, "2023-11-14T22:13:20Z");
    EXPECT_EQ(at(z, "last_error").kind, Value::null);
    EXPECT_EQ(number(at(z, "bytes_total")), "1048576");
    EXPECT_EQ(number(at(z, "bytes_free")), "786432");
}

TEST(StatusJson, NeverLoadedAndLastError) {
    ZoneReport r = zone("keys");
    r.loaded_at = 0;
    r.last_error = "keys.yaml:3: invalid hash";
    const Value doc = parse_json(status_json({r}));
    const Value &z = at(doc, "zones").items.at(0);
    EXPECT_EQ(at(z, "loaded_at").kind, Value::null);
    EXPECT_EQ(at(z, "last_error").str, "keys.yaml:3: invalid hash");
}

TEST(StatusJson, RequestsAndUsage) {
    HeapUsage usage(64);
    usage.count("key_a", Outcome::accepted, 5);
    usage.count("key_a", Outcome::rate_limited, 2);
    usage.count("key_a", Outcome::insufficient_scope, 1);
    usage.count("key_b", Outcome::revoked_key, 3, kUsed + 7);
    // invalid_api_key has three causes: one code in the report
    usage.count("key_b", Outcome::invalid_key, 1, kUsed + 7);
    usage.count("key_b", Outcome::wrong_environment, 1, kUsed + 7);
    usage.count("key_b", Outcome::multiple_keys, 1, kUsed + 7);
    usage.count("", Outcome::missing_key, 4);

    const Value doc = parse_json(status_json({zone("keys", &usage.table)}));
    const Value &z = at(doc, "zones").items.at(0);
    EXPECT_EQ(names(z), (std::vector<std::string>{"zone", "file", "keys", "generation", "loaded_at",
                                                  "last_error", "bytes_total", "bytes_free",
                                                  "requests", "usage"}));
    const Value &requests = at(z, "requests");
    EXPECT_EQ(number(at(requests, "accepted")), "5");
    EXPECT_EQ(number(at(requests, "rate_limited")), "2");
    EXPECT_EQ(number(at(requests, "untracked")), "0");
    const Value &denied = at(requests, "denied");
    EXPECT_EQ(names(denied), (std::vector<std::string>{"missing_api_key", "invalid_api_key",
                                                       "revoked_api_key", "insufficient_scope"}))
        << "by code, in table order, zeros left out, accepted and rate-limited not repeated";
    EXPECT_EQ(number(at(denied, "missing_api_key")), "4");
    EXPECT_EQ(number(at(denied, "invalid_api_key")), "3");
    EXPECT_EQ(number(at(denied, "revoked_api_key")), "3");
    EXPECT_EQ(number(at(denied, "insufficient_scope")), "1");

    EXPECT_EQ(at(z, "usage").items.size(), 2u) << "only keys that were used";
    const Value *a = usage_of(z, "key_a");
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(names(*a), (std::vector<std::string>{"key_id", "accepted", "rate_limited", "denied",
                                                   "last_used"}));
    EXPECT_EQ(number(at(*a, "accepted")), "5");
    EXPECT_EQ(number(at(*a, "rate_limited")), "2");
    EXPECT_EQ(names(at(*a, "denied")), std::vector<std::string>{"insufficient_scope"});
    EXPECT_EQ(at(*a, "last_used").str, "2023-11-14T22:15:00Z");
    const Value *b = usage_of(z, "key_b");
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(number(at(*b, "accepted")), "0");
    EXPECT_EQ(number(at(at(*b, "denied"), "invalid_api_key")), "3");
    EXPECT_EQ(number(at(at(*b, "denied"), "revoked_api_key")), "3");
    EXPECT_EQ(at(*b, "last_used").str, "2023-11-14T22:15:07Z");
}

TEST(StatusJson, UntrackedAndAnEmptyUsageList) {
    HeapUsage full(0);
    full.count("key_a", Outcome::accepted, 2);
    const Value doc = parse_json(status_json({zone("keys", &full.table)}));
    const Value &z = at(doc, "zones").items.at(0);
    EXPECT_EQ(number(at(at(z, "requests"), "untracked")), "2");
    EXPECT_EQ(number(at(at(z, "requests"), "accepted")), "2");
    EXPECT_EQ(at(at(z, "requests"), "denied").members.size(), 0u);
    EXPECT_EQ(at(z, "usage").kind, Value::array);
    EXPECT_TRUE(at(z, "usage").items.empty());
}

// Key ids from a key file are printable ASCII without quotes or backslashes
// (is_identifier), but the report must stay valid whatever it is given.
const std::vector<std::string> kOddIds = {
    "quote\"d",
    "back\\slash",
    "new\nline\r\ttab",
    std::string("nul\0byte", 8),
    "\x01\x1f\x7f",
    "</script><script>alert(1)</script>",
    "caf\xc3\xa9 \xe2\x82\xac \xf0\x9d\x84\x9e",  // valid UTF-8: kept
    "bad\xff\xfe utf8 \xc0\xaf \xed\xa0\x80",     // invalid: U+FFFD
    "\\u0022",
};

TEST(StatusJson, OddKeyIdsAreEscaped) {
    HeapUsage usage(64);
    for (const std::string &id : kOddIds) usage.count(id, Outcome::accepted);
    const std::string text = status_json({zone("keys", &usage.table)});
    const Value doc = parse_json(text);
    const Value &z = at(doc, "zones").items.at(0);
    EXPECT_EQ(at(z, "usage").items.size(), kOddIds.size());
    for (const std::string &id : kOddIds) {
        const Value *u = usage_of(z, strict_json::replace_invalid_utf8(id));
        EXPECT_NE(u, nullptr) << "key id " << testing::PrintToString(id);
    }
    // Nothing raw below 0x20 and no raw invalid byte: only the final newline.
    for (std::size_t i = 0; i + 1 < text.size(); i++) {
        EXPECT_GE(static_cast<unsigned char>(text[i]), 0x20) << "at " << i;
    }
}

TEST(StatusJson, OddZoneFileAndErrorAreEscaped) {
    ZoneReport r = zone("zo\"ne\\");
    r.file = "/tmp/a \"b\"\n\xff.yaml";
    r.last_error = "line 1: \"\x01\" is not allowed\n";
    const Value doc = parse_json(status_json({r}));
    const Value &z = at(doc, "zones").items.at(0);
    EXPECT_EQ(at(z, "zone").str, "zo\"ne\\");
    EXPECT_EQ(at(z, "file").str, "/tmp/a \"b\"\n\xef\xbf\xbd.yaml");
    EXPECT_EQ(at(z, "last_error").str, "line 1: \"\x01\" is not allowed\n");
}

// ---- Prometheus text exposition format (version 0.0.4)

struct Sample {
    std::string name;
    std::vector<std::pair<std::string, std::string>> labels;  // values unescaped
    std::string value;

    std::string label(std::string_view name) const {
        for (const auto &[k, v] : labels) {
            if (k == name) return v;
        }
        return "<none>";
    }
};

struct Family {
    std::string help, type;
    std::size_t samples = 0;
};

struct Exposition {
    std::vector<Sample> samples;
    std::map<std::string, Family> families;
};

bool metric_name(std::string_view s) {
    if (s.empty()) return false;
    for (std::size_t i = 0; i < s.size(); i++) {
        const char c = s[i];
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
                        (i > 0 && c >= '0' && c <= '9');
        if (!ok) return false;
    }
    return true;
}

bool label_name(std::string_view s) {
    return metric_name(s) && s.find(':') == std::string_view::npos;
}

// What the module writes as a value: digits, optionally a point and digits.
bool decimal(std::string_view s) {
    const std::size_t point = s.find('.');
    const std::string_view whole = s.substr(0, point);
    const std::string_view frac = point == std::string_view::npos ? "" : s.substr(point + 1);
    if (whole.empty() || (point != std::string_view::npos && frac.empty())) return false;
    for (std::string_view part : {whole, frac}) {
        for (char c : part) {
            if (c < '0' || c > '9') return false;
        }
    }
    return true;
}

// Reads the exposition into out and checks its rules; failures name the line.
void read_prometheus(const std::string &text, Exposition &out) {
    EXPECT_TRUE(!text.empty() && text.back() == '\n') << "ends with a newline";
    std::string current;  // the family whose samples are being read
    std::set<std::string> finished, series;
    std::size_t start = 0;
    for (int n = 1; start < text.size(); n++) {
        const std::size_t end = text.find('\n', start);
        const std::string line = text.substr(start, end - start);
        start = end == std::string::npos ? text.size() : end + 1;
        SCOPED_TRACE("line " + std::to_string(n) + ": " + line);
        EXPECT_FALSE(line.empty()) << "no blank lines";
        if (line.rfind("# ", 0) == 0) {
            const std::size_t sp1 = line.find(' ', 2);
            const std::string keyword = line.substr(2, sp1 - 2);
            ASSERT_NE(sp1, std::string::npos);
            const std::size_t sp2 = line.find(' ', sp1 + 1);
            ASSERT_NE(sp2, std::string::npos);
            const std::string name = line.substr(sp1 + 1, sp2 - sp1 - 1);
            const std::string rest = line.substr(sp2 + 1);
            EXPECT_TRUE(metric_name(name)) << name;
            Family &f = out.families[name];
            EXPECT_EQ(f.samples, 0u) << "HELP and TYPE come before the samples";
            EXPECT_EQ(finished.count(name), 0u);
            if (keyword == "HELP") {
                EXPECT_TRUE(f.help.empty()) << "one HELP per family";
                EXPECT_FALSE(rest.empty());
                EXPECT_EQ(rest.find('\\'), std::string::npos) << "nothing to escape in HELP";
                f.help = rest;
            } else if (keyword == "TYPE") {
                EXPECT_TRUE(f.type.empty()) << "one TYPE per family";
                EXPECT_TRUE(rest == "counter" || rest == "gauge") << rest;
                f.type = rest;
            } else {
                ADD_FAILURE() << "a comment that is neither HELP nor TYPE";
            }
            if (current != name) {
                if (!current.empty()) finished.insert(current);
                current = name;
            }
            continue;
        }
        Sample s;
        std::size_t i = line.find_first_of("{ ");
        ASSERT_NE(i, std::string::npos);
        s.name = line.substr(0, i);
        EXPECT_TRUE(metric_name(s.name)) << s.name;
        if (line[i] == '{') {
            i++;
            while (i < line.size() && line[i] != '}') {
                const std::size_t eq = line.find('=', i);
                ASSERT_NE(eq, std::string::npos);
                const std::string lname = line.substr(i, eq - i);
                EXPECT_TRUE(label_name(lname)) << lname;
                ASSERT_LT(eq + 1, line.size());
                ASSERT_EQ(line[eq + 1], '"');
                std::string value;
                std::size_t j = eq + 2;
                for (; j < line.size() && line[j] != '"'; j++) {
                    if (line[j] != '\\') {
                        value += line[j];
                        continue;
                    }
                    ASSERT_LT(j + 1, line.size());
                    const char e = line[++j];
                    ASSERT_TRUE(e == '\\' || e == '"' || e == 'n') << "escape \\" << e;
                    value += e == 'n' ? '\n' : e;
                }
                ASSERT_LT(j, line.size()) << "unterminated label value";
                for (const auto &l : s.labels) EXPECT_NE(l.first, lname) << "label twice";
                s.labels.emplace_back(lname, value);
                i = j + 1;
                if (i < line.size() && line[i] == ',') i++;
            }
            ASSERT_LT(i, line.size());
            i++;  // '}'
        }
        ASSERT_LT(i, line.size());
        ASSERT_EQ(line[i], ' ');
        s.value = line.substr(i + 1);
        EXPECT_TRUE(decimal(s.value)) << "value " << s.value;
        EXPECT_EQ(s.name, current) << "a sample of the family just introduced by HELP/TYPE";
        Family &f = out.families[s.name];
        EXPECT_FALSE(f.type.empty()) << "TYPE before the samples";
        f.samples++;
        std::string key = s.name;
        for (const auto &[k, v] : s.labels) key += "\n" + k + "=" + v;
        EXPECT_TRUE(series.insert(key).second) << "a series twice";
        out.samples.push_back(std::move(s));
    }
    for (const auto &[name, f] : out.families) {
        EXPECT_FALSE(f.help.empty()) << name << " has HELP";
        EXPECT_FALSE(f.type.empty()) << name << " has TYPE";
        if (f.type == "counter") {
            EXPECT_EQ(name.substr(name.size() - 6), "_total") << name;
        }
    }
}

Exposition parse_prometheus(const std::string &text) {
    Exposition out;
    read_prometheus(text, out);
    return out;
}

std::vector<const Sample *> find(const Exposition &e, std::string_view name) {
    std::vector<const Sample *> out;
    for (const Sample &s : e.samples) {
        if (s.name == name) out.push_back(&s);
    }
    return out;
}

TEST(PrometheusChecker, RefusesWhatIsNotExposition) {
    // The checker must be able to say no: each of these fails it.
    const std::string head = "# HELP api_key_x h\n# TYPE api_key_x gauge\n";
    const std::string bad[] = {
        "api_key_x{zone=\"a\"} 1\n",                                  // no HELP, no TYPE
        head + "api_key_x{zone=\"a\" 1\n",                            // no '}'
        head + "api_key_x{zone=\"a\\t\"} 1\n",                        // an escape Prometheus lacks
        head + "api_key_x{zone=\"a\"} x\n",                           // not a number
        head + "api_key_x{zone=\"a\"} 1.\n",                          // not a number either
        head + "api_key_x{zone=\"a\"} 1\napi_key_x{zone=\"a\"} 2\n",  // one series twice
        "# HELP api_key_x h\n# TYPE api_key_x counter\napi_key_x 1\n",  // a counter without _total
        "# HELP a h\n# TYPE a gauge\n# HELP b h\n# TYPE b gauge\na 1\n",  // a's sample after b
    };
    for (const std::string &text : bad) {
        ::testing::TestPartResultArray failures;
        {
            ::testing::ScopedFakeTestPartResultReporter reporter(
                ::testing::ScopedFakeTestPartResultReporter::INTERCEPT_ONLY_CURRENT_THREAD,
                &failures);
            parse_prometheus(text);
        }
        EXPECT_GT(failures.size(), 0) << "accepted: " << text;
    }
}

TEST(StatusPrometheus, FamiliesWithoutUsage) {
    ZoneReport r = zone("keys");
    r.last_error = "bad";
    const Exposition e = parse_prometheus(status_prometheus({r, zone("other")}));
    const std::map<std::string, std::string> want = {
        {"api_key_build_info", "gauge"},
        {"api_key_zone_keys", "gauge"},
        {"api_key_zone_generation", "gauge"},
        {"api_key_zone_loaded_timestamp_seconds", "gauge"},
        {"api_key_zone_load_error", "gauge"},
        {"api_key_zone_bytes", "gauge"},
        {"api_key_zone_requests_total", "counter"},
        {"api_key_zone_untracked_requests_total", "counter"},
        {"api_key_requests_total", "counter"},
        {"api_key_last_used_timestamp_seconds", "gauge"},
    };
    std::map<std::string, std::string> got;
    for (const auto &[name, f] : e.families) got[name] = f.type;
    EXPECT_EQ(got, want);

    auto keys = find(e, "api_key_zone_keys");
    ASSERT_EQ(keys.size(), 2u);
    EXPECT_EQ(keys[0]->label("zone"), "keys");
    EXPECT_EQ(keys[0]->value, "3");
    EXPECT_EQ(keys[1]->label("zone"), "other");
    auto loaded = find(e, "api_key_zone_loaded_timestamp_seconds");
    ASSERT_EQ(loaded.size(), 2u);
    EXPECT_EQ(loaded[0]->value, std::to_string(kLoaded));
    auto error = find(e, "api_key_zone_load_error");
    ASSERT_EQ(error.size(), 2u);
    EXPECT_EQ(error[0]->value, "1");
    EXPECT_EQ(error[1]->value, "0");
    auto bytes = find(e, "api_key_zone_bytes");
    ASSERT_EQ(bytes.size(), 4u);
    EXPECT_EQ(bytes[0]->label("state"), "used");
    EXPECT_EQ(bytes[0]->value, "262144");
    EXPECT_EQ(bytes[1]->label("state"), "free");
    EXPECT_EQ(bytes[1]->value, "786432");
    EXPECT_TRUE(find(e, "api_key_zone_requests_total").empty());
    EXPECT_TRUE(find(e, "api_key_requests_total").empty());
}

TEST(StatusPrometheus, RequestsPerZoneAndPerKey) {
    HeapUsage usage(64);
    usage.count("key_a", Outcome::accepted, 5);
    usage.count("key_a", Outcome::rate_limited, 2);
    usage.count("key_b", Outcome::invalid_key, 1, kUsed + 7);
    usage.count("key_b", Outcome::wrong_environment, 1, kUsed + 7);
    usage.count("", Outcome::missing_key, 4);
    HeapUsage full(0);
    full.count("key_z", Outcome::accepted, 3);
    const Exposition e = parse_prometheus(
        status_prometheus({zone("keys", &usage.table), zone("tiny", &full.table)}));

    std::map<std::string, std::string> zone_requests;
    std::map<std::string, std::set<std::string>> zone_codes;
    for (const Sample *s : find(e, "api_key_zone_requests_total")) {
        zone_codes[s->label("zone")].insert(s->label("code"));
        if (s->value == "0") continue;
        zone_requests[s->label("zone") + " " + s->label("code")] = s->value;
    }
    EXPECT_EQ(zone_requests, (std::map<std::string, std::string>{
                                 {"keys accepted", "5"},
                                 {"keys missing_api_key", "4"},
                                 {"keys invalid_api_key", "2"},
                                 {"keys rate_limit_exceeded", "2"},
                                 {"tiny accepted", "3"},
                             }));
    std::set<std::string> every_code = {"accepted"};
    for (std::size_t o = 1; o < kOutcomeCount; o++) {
        every_code.insert(std::string(describe(static_cast<Outcome>(o)).code));
    }
    EXPECT_EQ(zone_codes["keys"], every_code)
        << "zone totals list every code, zeros included (a series exists before its first "
           "increment)";
    EXPECT_EQ(zone_codes["tiny"], every_code);
    std::map<std::string, std::string> untracked;
    for (const Sample *s : find(e, "api_key_zone_untracked_requests_total")) {
        untracked[s->label("zone")] = s->value;
    }
    EXPECT_EQ(untracked, (std::map<std::string, std::string>{{"keys", "0"}, {"tiny", "3"}}));

    std::map<std::string, std::string> per_key;
    for (const Sample *s : find(e, "api_key_requests_total")) {
        EXPECT_EQ(s->labels.size(), 3u);
        per_key[s->label("zone") + " " + s->label("key_id") + " " + s->label("code")] = s->value;
    }
    EXPECT_EQ(per_key, (std::map<std::string, std::string>{
                           {"keys key_a accepted", "5"},
                           {"keys key_a rate_limit_exceeded", "2"},
                           {"keys key_b invalid_api_key", "2"},
                       }));
    std::map<std::string, std::string> last_used;
    for (const Sample *s : find(e, "api_key_last_used_timestamp_seconds")) {
        last_used[s->label("zone") + " " + s->label("key_id")] = s->value;
    }
    EXPECT_EQ(last_used, (std::map<std::string, std::string>{
                             {"keys key_a", std::to_string(kUsed)},
                             {"keys key_b", std::to_string(kUsed + 7)},
                         }));
}

TEST(StatusPrometheus, LabelValuesAreEscaped) {
    HeapUsage usage(64);
    const std::vector<std::string> ids = {"quote\"d", "back\\slash", "new\nline", "all\\\"\n\\n",
                                          "{zone=\"x\"} 1"};
    for (const std::string &id : ids) usage.count(id, Outcome::accepted);
    const std::string zone_name = "z\"o\\n\ne";
    const std::string text = status_prometheus({zone(zone_name, &usage.table)});
    const Exposition e = parse_prometheus(text);
    std::set<std::string> got;
    for (const Sample *s : find(e, "api_key_requests_total")) {
        EXPECT_EQ(s->label("zone"), zone_name);
        got.insert(s->label("key_id"));
    }
    EXPECT_EQ(got, std::set<std::string>(ids.begin(), ids.end()));
    for (const Sample *s : find(e, "api_key_zone_keys")) EXPECT_EQ(s->label("zone"), zone_name);
}

TEST(StatusPrometheus, ManyKeysStayGroupedByFamily) {
    HeapUsage a(64), b(64);
    for (int k = 0; k < 30; k++) {
        a.count("key_" + std::to_string(k), k % 2 ? Outcome::accepted : Outcome::expired_key);
        b.count("key_" + std::to_string(k), Outcome::rate_limited);
    }
    const Exposition e = parse_prometheus(
        status_prometheus({zone("a", &a.table), zone("b", &b.table)}));
    EXPECT_EQ(find(e, "api_key_requests_total").size(), 60u);
    EXPECT_EQ(find(e, "api_key_last_used_timestamp_seconds").size(), 60u);
}

// ---- api_key_build_info

TEST(StatusPrometheus, BuildInfoIsAlwaysThereFirst) {
    PrometheusOptions options;
    options.nginx = "1.22.1";
    for (const std::string &text :
         {status_prometheus({}, {}, options), status_prometheus({zone("keys")}, {}, options)}) {
        EXPECT_EQ(text.rfind("# HELP api_key_build_info ", 0), 0u) << text;
        const Exposition e = parse_prometheus(text);
        EXPECT_EQ(e.families.at("api_key_build_info").type, "gauge");
        auto info = find(e, "api_key_build_info");
        ASSERT_EQ(info.size(), 1u);
        EXPECT_EQ(info[0]->labels.size(), 2u);
        EXPECT_EQ(info[0]->label("version"), std::string(kModuleVersion));
        EXPECT_EQ(info[0]->label("nginx"), "1.22.1");
        EXPECT_EQ(info[0]->value, "1");
    }
    const Exposition e = parse_prometheus(status_prometheus({}));  // outlives `info`
    auto info = find(e, "api_key_build_info");
    ASSERT_EQ(info.size(), 1u);
    EXPECT_EQ(info[0]->label("nginx"), "unknown") << "no nginx version given";
}

TEST(StatusPrometheus, ModuleVersionLooksLikeOne) {
    // MAJOR.MINOR.PATCH, as debian/changelog's upstream version
    // (t/test_prometheus.py compares the two).
    const std::string v(kModuleVersion);
    int dots = 0;
    for (char c : v) {
        EXPECT_TRUE((c >= '0' && c <= '9') || c == '.') << v;
        dots += c == '.';
    }
    EXPECT_EQ(dots, 2) << v;
}

// ---- keys=: which keys get series of their own

TEST(KeySeriesParse, Values) {
    KeySeries k;
    EXPECT_EQ(k.mode, KeySeries::Mode::top) << "the default is bounded";
    EXPECT_EQ(k.top, 100u);
    ASSERT_TRUE(parse_key_series("off", k));
    EXPECT_EQ(k.mode, KeySeries::Mode::off);
    ASSERT_TRUE(parse_key_series("all", k));
    EXPECT_EQ(k.mode, KeySeries::Mode::all);
    ASSERT_TRUE(parse_key_series("top=1", k));
    EXPECT_EQ(k.mode, KeySeries::Mode::top);
    EXPECT_EQ(k.top, 1u);
    ASSERT_TRUE(parse_key_series("top=10000", k));
    EXPECT_EQ(k.top, 10000u);
    ASSERT_TRUE(parse_key_series("top=250", k));
    EXPECT_EQ(k.top, 250u);
    for (const char *bad : {"", "on", "ALL", "Off", "top", "top=", "top=0", "top=00", "top=01",
                            "top=10001", "top=99999", "top=100000", "top=-1", "top=+1", "top=1x",
                            "top= 1", "top=1 ", "keys=all", "top=18446744073709551617"}) {
        KeySeries before;
        before.mode = KeySeries::Mode::top;
        before.top = 7;
        EXPECT_FALSE(parse_key_series(bad, before)) << bad;
        EXPECT_EQ(before.mode, KeySeries::Mode::top) << bad << ": untouched";
        EXPECT_EQ(before.top, 7u) << bad << ": untouched";
    }
}

KeySeries keys_top(std::uint32_t n) {
    KeySeries k;
    k.mode = KeySeries::Mode::top;
    k.top = n;
    return k;
}

KeySeries keys_mode(KeySeries::Mode mode) {
    KeySeries k;
    k.mode = mode;
    return k;
}

std::vector<std::string> ids_of(const std::vector<const UsageSlot *> &slots) {
    std::vector<std::string> out;
    for (const UsageSlot *s : slots) out.emplace_back(s->id, s->id_len);
    return out;
}

TEST(SelectKeys, TopByRequestsTiesToTheSmallerId) {
    HeapUsage usage(64);
    usage.count("key_a", Outcome::accepted, 3);
    usage.count("key_b", Outcome::accepted, 1);
    usage.count("key_b", Outcome::rate_limited, 4);  // 5, refusals count
    usage.count("key_c", Outcome::invalid_key, 5);   // 5, ties with key_b
    usage.count("key_d", Outcome::accepted, 9);
    usage.count("key_e", Outcome::revoked_key, 1);
    usage.count("", Outcome::missing_key, 50);  // no key: zone totals only
    EXPECT_EQ(ids_of(select_keys(usage.table, keys_top(3))),
              (std::vector<std::string>{"key_d", "key_b", "key_c"}))
        << "busiest first; key_b before key_c at 5 requests each";
    EXPECT_EQ(ids_of(select_keys(usage.table, keys_top(2))),
              (std::vector<std::string>{"key_d", "key_b"}));
    EXPECT_EQ(ids_of(select_keys(usage.table, keys_top(1))), std::vector<std::string>{"key_d"});
    EXPECT_EQ(ids_of(select_keys(usage.table, keys_top(100))),
              (std::vector<std::string>{"key_d", "key_b", "key_c", "key_a", "key_e"}))
        << "fewer keys than N: all of them";
    EXPECT_TRUE(select_keys(usage.table, keys_mode(KeySeries::Mode::off)).empty());
    std::vector<std::string> all = ids_of(
        select_keys(usage.table, keys_mode(KeySeries::Mode::all)));
    std::sort(all.begin(), all.end());
    EXPECT_EQ(all, (std::vector<std::string>{"key_a", "key_b", "key_c", "key_d", "key_e"}));

    HeapUsage none(0);
    none.count("key_a", Outcome::accepted);
    EXPECT_TRUE(select_keys(none.table, keys_top(5)).empty());
    EXPECT_TRUE(select_keys(UsageTable{}, keys_mode(KeySeries::Mode::all)).empty());
}

TEST(SelectKeys, MatchesAFullSortOnManyKeys) {
    // Against the obvious reference: sort every key by (requests desc, id asc).
    constexpr int kKeys = 3000;
    HeapUsage usage(16384);  // sparse enough that every key finds a slot
    std::map<std::string, int> requests;
    std::uint64_t seed = 12345;
    auto next = [&seed] {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        return static_cast<int>(seed >> 33);
    };
    for (int k = 0; k < kKeys; k++) {
        const std::string id = "key_" + std::to_string(next() % 100000);
        const int n = 1 + next() % 20;  // many ties
        usage.count(id, k % 3 ? Outcome::accepted : Outcome::rate_limited, n);
        requests[id] += n;
    }
    std::vector<std::pair<int, std::string>> ranked;
    for (const auto &[id, n] : requests) ranked.emplace_back(-n, id);
    std::sort(ranked.begin(), ranked.end());
    ASSERT_EQ(usage.table.totals().untracked, 0u) << "the test's keys all found a slot";
    for (std::uint32_t top : {1u, 7u, 100u, 1000u, 10000u}) {
        std::vector<std::string> want;
        for (std::size_t i = 0; i < ranked.size() && i < top; i++) want.push_back(ranked[i].second);
        EXPECT_EQ(ids_of(select_keys(usage.table, keys_top(top))), want) << "top=" << top;
    }
}

std::set<std::string> key_ids(const Exposition &e, std::string_view family) {
    std::set<std::string> out;
    for (const Sample *s : find(e, family)) out.insert(s->label("key_id"));
    return out;
}

TEST(StatusPrometheus, KeysOffExportsZoneTotalsOnly) {
    HeapUsage usage(64);
    usage.count("key_a", Outcome::accepted, 5);
    usage.count("key_b", Outcome::insufficient_scope, 2);
    PrometheusOptions options;
    options.keys = keys_mode(KeySeries::Mode::off);
    const Exposition e = parse_prometheus(
        status_prometheus({zone("keys", &usage.table)}, {}, options));
    EXPECT_EQ(e.families.count("api_key_requests_total"), 0u) << "no per-key family at all";
    EXPECT_EQ(e.families.count("api_key_last_used_timestamp_seconds"), 0u);
    std::map<std::string, std::string> codes;
    for (const Sample *s : find(e, "api_key_zone_requests_total"))
        codes[s->label("code")] = s->value;
    EXPECT_EQ(codes["accepted"], "5") << "zone totals are always exported";
    EXPECT_EQ(codes["insufficient_scope"], "2");
    EXPECT_EQ(find(e, "api_key_zone_untracked_requests_total").size(), 1u);
}

TEST(StatusPrometheus, KeysAllAndTheBoundedDefault) {
    HeapUsage usage(512);
    std::set<std::string> every;
    for (int k = 0; k < 150; k++) {
        const std::string id = "key_" + std::to_string(1000 + k);
        usage.count(id, Outcome::accepted, 1 + k);  // key_1149 is the busiest
        every.insert(id);
    }
    PrometheusOptions all;
    all.keys = keys_mode(KeySeries::Mode::all);
    Exposition e = parse_prometheus(status_prometheus({zone("keys", &usage.table)}, {}, all));
    EXPECT_EQ(key_ids(e, "api_key_requests_total"), every) << "keys=all: every used key";
    EXPECT_EQ(key_ids(e, "api_key_last_used_timestamp_seconds"), every);

    e = parse_prometheus(status_prometheus({zone("keys", &usage.table)}));
    std::set<std::string> busiest;
    for (int k = 50; k < 150; k++) busiest.insert("key_" + std::to_string(1000 + k));
    EXPECT_EQ(key_ids(e, "api_key_requests_total"), busiest)
        << "the default: the 100 keys with the most requests";
    EXPECT_EQ(key_ids(e, "api_key_last_used_timestamp_seconds"), busiest);
    std::uint64_t zone_accepted = 0;
    for (const Sample *s : find(e, "api_key_zone_requests_total")) {
        if (s->label("code") == "accepted") zone_accepted = std::stoull(s->value);
    }
    EXPECT_EQ(zone_accepted, 150u * 151u / 2) << "zone totals count every key";
}

TEST(StatusPrometheus, KeysTopNPerZoneWithItsCounts) {
    HeapUsage a(64), b(64);
    a.count("key_1", Outcome::accepted, 10);
    a.count("key_2", Outcome::accepted, 2);
    a.count("key_2", Outcome::rate_limited, 9);  // 11: the busiest, by refusals
    a.count("key_3", Outcome::accepted, 1);
    b.count("key_9", Outcome::expired_key, 1);
    b.count("key_8", Outcome::accepted, 1);
    PrometheusOptions options;
    options.keys = keys_top(2);
    const Exposition e = parse_prometheus(
        status_prometheus({zone("a", &a.table), zone("b", &b.table)}, {}, options));
    std::map<std::string, std::string> got;
    for (const Sample *s : find(e, "api_key_requests_total")) {
        got[s->label("zone") + " " + s->label("key_id") + " " + s->label("code")] = s->value;
    }
    EXPECT_EQ(got, (std::map<std::string, std::string>{
                       {"a key_1 accepted", "10"},
                       {"a key_2 accepted", "2"},
                       {"a key_2 rate_limit_exceeded", "9"},
                       {"b key_8 accepted", "1"},
                       {"b key_9 expired_api_key", "1"},
                   }))
        << "N per key zone; every code of a selected key";
    std::set<std::string> last_used;
    for (const Sample *s : find(e, "api_key_last_used_timestamp_seconds")) {
        last_used.insert(s->label("zone") + " " + s->label("key_id"));
    }
    EXPECT_EQ(last_used, (std::set<std::string>{"a key_1", "a key_2", "b key_8", "b key_9"}));
}

// ---- units, timestamps and grouping in cluster mode

TEST(StatusPrometheus, ClusterFamiliesAreGroupedWithTimestampsInSeconds) {
    ZoneReport follows = zone("keys");
    follows.follows = true;
    follows.channel = "prod";
    follows.last_read_ms_ago = 250;
    follows.version = 1700000000123;
    follows.versions_ignored = 4;
    ZoneReport never = zone("quiet");
    never.follows = true;
    never.channel = "prod";
    never.stale = true;
    LimitZoneReport synced;
    synced.zone = "limits";
    synced.counters = 10;
    synced.synced = true;
    synced.last_success_ms_ago = 1500;
    synced.last_batch_ms = 7;
    synced.last_batch_budgets = 12;
    LimitZoneReport plain;
    plain.zone = "local";
    plain.counters = 20;
    PrometheusOptions options;
    options.now_unix_ms = 1700000010000;
    // Both a following key zone and a synced limit zone: the sync_state
    // family must not be split by the channel families (the checker fails
    // on a family whose samples are not together).
    const std::string text = status_prometheus({follows, never}, {plain, synced}, options);
    const Exposition e = parse_prometheus(text);

    std::map<std::string, std::string> state;
    for (const Sample *s : find(e, "api_key_sync_state")) {
        state[s->label("zone") + " " + s->label("state")] = s->value;
    }
    EXPECT_EQ(state, (std::map<std::string, std::string>{{"keys ok", "1"},
                                                         {"keys stale", "0"},
                                                         {"quiet ok", "0"},
                                                         {"quiet stale", "1"},
                                                         {"limits ok", "1"},
                                                         {"limits degraded", "0"}}));
    auto read = find(e, "api_key_channel_last_read_timestamp_seconds");
    ASSERT_EQ(read.size(), 2u);
    EXPECT_EQ(read[0]->value, "1700000009.750");
    EXPECT_EQ(read[1]->label("zone"), "quiet");
    EXPECT_EQ(read[1]->value, "0") << "never read";
    auto ignored = find(e, "api_key_channel_versions_ignored_total");
    ASSERT_EQ(ignored.size(), 2u);
    EXPECT_EQ(ignored[0]->value, "4");
    auto success = find(e, "api_key_sync_last_success_timestamp_seconds");
    ASSERT_EQ(success.size(), 1u);
    EXPECT_EQ(success[0]->label("zone"), "limits");
    EXPECT_EQ(success[0]->value, "1700000008.500");
    auto duration = find(e, "api_key_sync_last_batch_duration_seconds");
    ASSERT_EQ(duration.size(), 1u);
    EXPECT_EQ(duration[0]->value, "0.007");
    auto budgets = find(e, "api_key_sync_last_batch_budgets");
    ASSERT_EQ(budgets.size(), 1u);
    EXPECT_EQ(budgets[0]->value, "12");
    std::map<std::string, std::string> counters;
    for (const Sample *s : find(e, "api_key_limit_zone_counters")) {
        counters[s->label("zone")] = s->value;
    }
    EXPECT_EQ(counters, (std::map<std::string, std::string>{{"local", "20"}, {"limits", "10"}}));

    for (const auto &[name, f] : e.families) {
        EXPECT_EQ(name.find("_ms"), std::string::npos) << name << ": base units (seconds)";
        EXPECT_EQ(name.find("_ago"), std::string::npos) << name << ": timestamps, not ages";
    }
    EXPECT_EQ(e.families.count("api_key_sync_last_success_seconds"), 0u) << "renamed";

    // Without the wall clock the timestamps are left out, nothing else.
    const Exposition no_clock = parse_prometheus(status_prometheus({follows}, {synced}));
    EXPECT_EQ(no_clock.families.count("api_key_sync_last_success_timestamp_seconds"), 0u);
    EXPECT_EQ(no_clock.families.count("api_key_channel_last_read_timestamp_seconds"), 0u);
    EXPECT_EQ(no_clock.families.count("api_key_sync_last_batch_duration_seconds"), 1u);
}

TEST(StatusPrometheus, InvalidUtf8InLabelsBecomesReplacementCharacters) {
    HeapUsage usage(64);
    usage.count(
        "bad\xff"
        "id",
        Outcome::accepted);
    usage.count("caf\xc3\xa9", Outcome::accepted);
    const Exposition e = parse_prometheus(status_prometheus({zone("z\xc0\xaf", &usage.table)}));
    EXPECT_EQ(key_ids(e, "api_key_requests_total"), (std::set<std::string>{"bad\xef\xbf\xbd"
                                                                           "id",
                                                                           "caf\xc3\xa9"}));
    for (const Sample *s : find(e, "api_key_zone_keys")) {
        EXPECT_EQ(s->label("zone"), "z\xef\xbf\xbd\xef\xbf\xbd");
    }
}

}  // namespace
}  // namespace apikey
