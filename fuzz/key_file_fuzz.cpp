// libFuzzer target: the key-file reader and validator, then the table builder.
//
// Any input: read_key_file() either throws KeyFileError (the only exception
// allowed out of it: the glue and apikeyctl turn it into "path:line:
// reason") or hands the sink records that already satisfy the schema. Those
// records must then build into a table that finds every one of them by its
// digest and gives back exactly what the file said, and build() must refuse
// the file exactly when two records share an id or a hash.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "core/key_file.h"
#include "core/table_builder.h"

namespace {

using namespace apikey;

[[noreturn]] void fail(const char *what, const std::string &detail = "") {
    std::fprintf(stderr, "key_file_fuzz: %s %s\n", what, detail.c_str());
    std::abort();
}

void require(bool ok, const char *what, const std::string &detail = "") {
    if (!ok) fail(what, detail);
}

// What the README promises for ids, owners, organizations, plans, scopes
// and limit categories: 1-128 printable ASCII, no blanks, quotes or backslashes.
bool is_identifier(std::string_view s) {
    if (s.empty() || s.size() > 128) return false;
    for (char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (u <= 0x20 || u >= 0x7f || c == '"' || c == '\\') return false;
    }
    return true;
}

struct Prefix {
    std::uint32_t line;
    std::string text;
    Environment env;
};

class Sink final : public KeyFileSink {
public:
    void on_prefix(std::uint32_t line, std::string_view prefix, Environment env) override {
        require(line >= 1, "prefix on line 0");
        require(!prefix.empty() && prefix.size() <= 64 && is_identifier(prefix),
                "prefix outside the schema passed validation:", std::string(prefix));
        require(env == Environment::live || env == Environment::test, "prefix environment");
        prefixes.push_back({line, std::string(prefix), env});
        builder.add_prefix(line, prefix, env);  // may throw KeyFileError (duplicate prefix)
    }

    void on_key(const KeySpec &spec) override {
        require(spec.line >= 1, "key record on line 0");
        require(is_identifier(spec.id), "id outside the schema:", spec.id);
        require(is_identifier(spec.owner), "owner outside the schema:", spec.owner);
        require(spec.organization.empty() || is_identifier(spec.organization),
                "organization outside the schema:", spec.organization);
        require(spec.plan.empty() || is_identifier(spec.plan),
                "plan outside the schema:", spec.plan);
        for (const std::string &s : spec.scopes) {
            require(is_identifier(s), "scope outside the schema:", s);
        }
        std::set<std::string> categories;
        for (const auto &[category, rate] : spec.limits) {
            require(is_identifier(category), "limit category outside the schema:", category);
            require(categories.insert(category).second,
                    "duplicate limit category passed:", category);
            require(rate.count >= 1 && rate.count <= 1000000000, "rate count out of range");
            require(rate.period_seconds == 1 || rate.period_seconds == 60 ||
                        rate.period_seconds == 3600 || rate.period_seconds == 86400,
                    "rate period");
        }
        require(spec.allowed_ips.size() <= kMaxAllowedIps, "more than 64 networks passed");
        for (std::size_t i = 0; i < spec.allowed_ips.size(); i++) {
            const IpNetwork &n = spec.allowed_ips[i];
            require(n.bits <= 128, "a prefix length over 128");
            IpNetwork back{};
            std::string error;
            const std::string text = format_network(n);
            require(parse_network(text, back, error) && back == n,
                    "a network does not read back from its own text:", text);
            for (std::size_t k = 0; k < i; k++) {
                require(spec.allowed_ips[k] != n, "duplicate network passed:", text);
            }
        }
        keys.push_back(spec);
        builder.add_key(spec);  // may throw KeyFileError (too many scopes or plans)
    }

    std::vector<Prefix> prefixes;
    std::vector<KeySpec> keys;
    TableBuilder builder;
};

void check_table(const Sink &sink, const KeyTable &table) {
    require(table.valid(), "built table is not valid");
    require(table.key_count() == sink.keys.size(), "key count");
    require(table.prefix_count() == sink.prefixes.size(), "prefix count");

    for (const KeySpec &spec : sink.keys) {
        const KeyRecord *r = table.find(spec.hash);
        require(r != nullptr, "a record is not found by its own hash:", spec.id);
        require(table.index_of(*r) < table.key_count(), "record outside the table");
        require(r->hash == spec.hash, "found the wrong record");
        require(table.text(r->id) == spec.id, "id differs:", spec.id);
        require(table.text(r->owner) == spec.owner, "owner differs:", spec.id);
        require(table.text(r->organization) == spec.organization, "organization differs:", spec.id);
        require(table.plan_name(r->plan) == spec.plan, "plan differs:", spec.id);
        require(r->created_at() == spec.created_at && r->expires_at() == spec.expires_at &&
                    r->revoked_at() == spec.revoked_at,
                "times differ:", spec.id);

        std::set<std::string> want(spec.scopes.begin(), spec.scopes.end());
        std::set<std::string> got;
        for (std::uint32_t bit = 0; bit < table.scope_count(); bit++) {
            if (table.scopes(*r).test(bit)) got.insert(std::string(table.scope_name(bit)));
        }
        require(got == want, "scopes differ:", spec.id);
        for (const std::string &s : spec.scopes) {
            const int bit = table.find_scope(s);
            require(bit >= 0 && table.scopes(*r).test(static_cast<unsigned>(bit)),
                    "find_scope:", s);
        }
        if (!spec.plan.empty()) {
            require(table.find_plan(spec.plan) == r->plan, "find_plan:", spec.plan);
        }

        require(r->networks == spec.allowed_ips.size(), "network count:", spec.id);
        for (std::size_t i = 0; i < spec.allowed_ips.size(); i++) {
            require(table.networks(*r)[i] == spec.allowed_ips[i], "network differs:", spec.id);
        }

        require(r->limits_count == spec.limits.size(), "limit count:", spec.id);
        const LimitOverride *limits = table.limits(*r);
        for (std::size_t i = 0; i < spec.limits.size(); i++) {
            require(table.text(limits[i].category) == spec.limits[i].first &&
                        limits[i].count == spec.limits[i].second.count &&
                        limits[i].period_seconds == spec.limits[i].second.period_seconds,
                    "limit differs:", spec.id);
        }
    }

    // The environment of a key is that of the longest declared prefix it starts with.
    for (const Prefix &p : sink.prefixes) {
        const std::string key = p.text + "0123456789abcdef";
        Environment want = Environment::none;
        std::size_t best = 0;
        for (const Prefix &q : sink.prefixes) {
            if (q.text.size() > best && key.compare(0, q.text.size(), q.text) == 0) {
                best = q.text.size();
                want = q.env;
            }
        }
        Environment got = Environment::none;
        require(table.environment_of(key, got) && got == want, "environment_of:", key);
    }
    Environment env = Environment::live;
    const bool matched = table.environment_of("\x01no-such-prefix", env);
    require(matched == sink.prefixes.empty(), "a key without a declared prefix");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char *>(data), size);
    Sink sink;
    try {
        read_key_file(text, sink);
    } catch (const KeyFileError &e) {
        require(e.line() >= 1, "an error on line 0:", e.what());
        require(e.what()[0] != '\0', "an error without a reason");
        return 0;
    }

    std::set<std::string> ids;
    std::set<Digest> hashes;
    bool duplicate = false;
    for (const KeySpec &spec : sink.keys) {
        duplicate |= !ids.insert(spec.id).second;
        duplicate |= !hashes.insert(spec.hash).second;
    }

    TableImage image;
    try {
        image = sink.builder.build();
    } catch (const KeyFileError &e) {
        require(duplicate, "build() refused a file without duplicates:", e.what());
        require(e.line() >= 1, "a build error on line 0:", e.what());
        return 0;
    }
    require(!duplicate, "build() accepted duplicate ids or hashes");
    require(image.size() % 8 == 0 && image.size() >= sizeof(TableHeader), "image size");
    check_table(sink, image.table());
    return 0;
}
