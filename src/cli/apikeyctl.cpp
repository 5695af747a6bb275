// apikeyctl: issues, revokes, rotates and lists the keys of an
// ngx_http_api_key_module key file, checks it as nginx -t does, and
// publishes it (and revocations) to the nodes that follow a key channel.
// Everything it reads or writes goes through the module's own reader and
// validator (src/core), so the two can never disagree about a file.

#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cli/atomic_file.h"
#include "cli/channel_target.h"
#include "cli/duration.h"
#include "cli/errors.h"
#include "cli/key_file_update.h"
#include "cli/key_issuer.h"
#include "cli/record_writer.h"
#include "core/credential.h"
#include "core/digest.h"
#include "core/json.h"
#include "core/key_channel.h"
#include "core/key_file.h"
#include "core/rate.h"

namespace apikey::cli {
namespace {

// ---------------------------------------------------------------------------
// help texts (the README's man-page section repeats them)

constexpr std::string_view kToolHelp = R"(Usage: apikeyctl [-f FILE] COMMAND [OPTIONS] [ARGS]

Manages the YAML key file of ngx_http_api_key_module. The file holds only
SHA-256 hashes of keys: a new key is printed once, on stdout, and stored
nowhere.

Commands:
  create    issue a new key and print it once
  revoke    revoke keys by id (they then get 401 revoked_api_key)
  rotate    issue a new key with the attributes of an existing one
  list      show the keys in the file (never any secret)
  check     validate key files exactly as nginx -t does
  hash      read a key from stdin and print its sha256: hash
  publish   send the key file to the nginx nodes that follow a key channel

Options:
  -f, --file FILE   the key file (default: $APIKEYCTL_FILE)
  -h, --help        this text; "apikeyctl COMMAND --help" for one command

Changes are validated with the module's own reader before they are
written, and written atomically (temporary file in the same directory,
fsync, rename) under a lock (.FILE.lock next to the file). They keep the
file's mode, owner and group, and every byte of the records they do not
touch. nginx applies them at the next "nginx -s reload"; nodes that follow
a key channel in Redis get them when they are published ("publish", and
"revoke --publish" for revocations). The file stays the source of truth.

Exit status: 0 success, 1 error (the message names the file; for revoke,
also any id that was not revoked), 2 usage error.
)";

constexpr std::string_view kCreateHelp = R"(Usage: apikeyctl create --owner ID [OPTIONS]

Generates a key from OpenSSL's CSPRNG (the prefix, then 40 random base62
characters), appends its record with the key's sha256: hash to the key file
and prints the key on stdout, once, followed by a newline; nothing else goes
to stdout. The new id and a reminder go to stderr. A missing key file is
created.

Options:
  --owner ID             owner of the key (required)
  --organization ID      organization (alias --org); without it the key is personal
  --plan NAME            plan, as api_key_plans checks it
  --scope SCOPE          a scope the key holds; repeat for more
  --scopes A,B,...       several scopes at once
  --limit CATEGORY=RATE  a per-key limit, e.g. write=500r/m; repeatable
  --allow-ip NETWORK     accept the key only from this network: an IPv4 or
                         IPv6 CIDR (203.0.113.0/24, 2001:db8::/32) or a single
                         address; repeatable (at most 64). Without it the key
                         works from any address
  --expires WHEN         a duration from now (90d, 12h, 30m, 2w, 1d12h) or a
                         time (2027-01-30T00:00:00Z, 2027-01-30)
  --prefix PREFIX        key prefix, e.g. jfi_sk_live_. If the file declares
                         prefixes it must be one of them, unless
                         --environment is given to declare it
  --environment ENV      live or test. With --prefix, declares PREFIX for ENV
                         when the file does not yet; alone, picks the one
                         prefix the file declares for ENV
  --id ID                the record's id (default: key_ + 12 random characters)
  --length N             random characters after the prefix (32 to 192, default 40)

Without --prefix and --environment the file's only prefix is used; a file
that declares no prefixes gets keys without one.
)";

constexpr std::string_view kRevokeHelp = R"(Usage: apikeyctl revoke [OPTIONS] ID...

Sets revoked_at to the current time on each key. After the next reload
nginx answers 401 revoked_api_key to it (not invalid_api_key). A key whose
revoked_at is scheduled for later is revoked now: the earlier time replaces
the later one. A key whose revoked_at has already passed keeps it.

Every id that can be revoked is, in one atomic write; every other one (an
unknown id, a key already revoked) is named on stderr with the reason.
Repeated ids count once.

Options:
  --publish      once the file is written, also publish a revocation entry
                 for each key revoked now (with the revoked_at written to
                 the file) on a key channel, so the nginx nodes that follow
                 it refuse the keys within a sync interval, without a
                 reload. Needs --redis and --channel; takes every option of
                 "apikeyctl publish --help" but --file.

With --publish, the options are checked and the password and signing key
read before the file is touched. If the file is written but Redis then
fails, the keys are revoked in the file but NOT on the channel: the exit
status is 1, and "apikeyctl publish" sends the file (which holds the
revocations) to the channel when Redis is back.

Exit status: 0 if every id was revoked now (and, with --publish,
published), 1 if any was not or the revocations could not be published
(the others still are revoked in the file, unless it could not be written
at all), 2 usage error.
)";

constexpr std::string_view kRotateHelp = R"(Usage: apikeyctl rotate [OPTIONS] ID

Issues a new key with the same owner, organization, plan, scopes, limits
and allowed_ips as key ID, and prints it once on stdout, as create does. The old key stays
valid until it is revoked ("apikeyctl revoke ID"), so clients can switch
over without downtime.

Options:
  --expires WHEN     expiry of the new key, as for create (default: none)
  --prefix PREFIX    prefix of the new key (default: the old key's, as noted
                     by apikeyctl, or the file's only prefix)
  --id ID            the new record's id
  --length N         random characters after the prefix (32 to 192, default 40)
)";

constexpr std::string_view kListHelp = R"(Usage: apikeyctl list [--json]

Lists every key in file order: id, owner, organization, plan, scopes,
environment, status (active, expired, revoked), the created, expires and
revoked times, and the networks the key is restricted to (allowed_ips; "-"
and null when it works from any address). Never prints keys or hashes. The environment comes from the
prefix apikeyctl noted in the record when it issued the key ("-" when it is
unknown or the file declares no prefixes).

Options:
  --json   a JSON array of objects instead of a table
)";

constexpr std::string_view kCheckHelp = R"(Usage: apikeyctl check [FILE...]

Validates key files with the module's own reader and validator, exactly as
nginx -t and a reload do, and reports a problem in the same
"FILE:LINE: reason" form. Without FILE, checks --file or $APIKEYCTL_FILE.
Exit status 0 if every file is valid, 1 if any is not.
)";

constexpr std::string_view kHashHelp = R"(Usage: apikeyctl hash < KEYFILE

Reads one key from stdin (never from the command line, so it stays out of
shell history and ps) and prints its "sha256:<64 hex>" hash, for importing
keys issued elsewhere into a key file. On a terminal it prompts, without
echo. A key nginx would refuse as malformed is an error.
)";

constexpr std::string_view kPublishHelp =
    R"(Usage: apikeyctl publish --redis ADDRESS --channel NAME [OPTIONS]

Publishes the key file's current content as a new version on a key channel
in Redis; the nginx nodes that follow the channel fetch it, check its
SHA-256 (and signature) and install it without a reload. The file stays the
source of truth, Redis only carries it.

The file is first read and validated with the module's own reader and
validator: a file nginx would refuse is never published (exit status 1,
with the reader's "FILE:LINE: reason"). It is read and published under the
file's lock (.FILE.lock), so versions go out in the order of the file's
changes. Versions are numbered in increasing order (the time in
milliseconds, or the newest published + 1); a node never installs a version
at or below the one it has. Publishing the same content again reuses what
is stored in Redis. Never prints a key or a hash of one.

Options:
  --redis ADDRESS        Redis: IP:PORT, [IPv6]:PORT or unix:/path (numeric,
                         as api_key_redis takes it)
  --channel NAME         the channel (1 to 64 of A-Z a-z 0-9 _ . -)
  --sign KEY.pem         sign the entry with this Ed25519 private key (PEM,
                         from "openssl genpkey -algorithm ed25519"); nodes
                         that verify refuse unsigned or wrongly signed entries
  --redis-password-file PATH
                         AUTH with the first line of PATH (a password is
                         never taken from the command line)
  --redis-user NAME      the ACL user for AUTH (Redis 6 and later)
  --redis-db N           SELECT N first
  --redis-prefix P       the prefix of the Redis keys, as api_key_redis
                         prefix= (default akm:)

Timeouts: 2 s to connect, 5 s per command. Exit status: 0 when the version
is published, 1 on any error (no node installs anything then), 2 usage
error.
)";

// ---------------------------------------------------------------------------
// command line

struct OptionSpec {
    std::string_view name;  // without "--"
    char short_name;        // 0 for none
    bool takes_value;
};

struct Invocation;
using Handler = int (*)(const Invocation &);

struct Command {
    std::string_view name;
    std::string_view help;
    std::vector<OptionSpec> options;
    std::size_t min_args;
    std::size_t max_args;
    Handler run;
};

const std::vector<OptionSpec> kCommonOptions = {{"file", 'f', true}, {"help", 'h', false}};

struct Invocation {
    const Command *command = nullptr;
    std::map<std::string, std::vector<std::string>, std::less<>> options;
    std::vector<std::string> args;

    bool has(std::string_view name) const { return options.find(name) != options.end(); }

    // The last value of a single-valued option.
    std::optional<std::string> value(std::string_view name) const {
        auto it = options.find(name);
        if (it == options.end()) return std::nullopt;
        return it->second.back();
    }

    std::vector<std::string> values(std::string_view name) const {
        auto it = options.find(name);
        return it == options.end() ? std::vector<std::string>{} : it->second;
    }

    // The key file: --file, else $APIKEYCTL_FILE.
    std::string file() const {
        if (auto f = value("file")) {
            if (f->empty()) throw UsageError("--file needs a path");
            return *f;
        }
        const char *env = std::getenv("APIKEYCTL_FILE");
        if (env && *env) return env;
        throw UsageError(std::string(command->name) +
                         ": no key file: give --file FILE or set APIKEYCTL_FILE");
    }
};

// Reads options in any order among the arguments ("--name value",
// "--name=value", "-f value", "-fvalue"); "--" ends them.
void parse_options(const std::vector<std::string> &argv, std::size_t from,
                   const std::vector<OptionSpec> &specs, std::string_view where, Invocation &inv) {
    auto find_long = [&](std::string_view name) -> const OptionSpec * {
        for (const OptionSpec &o : specs) {
            if (o.name == name) return &o;
        }
        return nullptr;
    };
    auto find_short = [&](char c) -> const OptionSpec * {
        for (const OptionSpec &o : specs) {
            if (o.short_name == c) return &o;
        }
        return nullptr;
    };

    bool options_done = false;
    for (std::size_t i = from; i < argv.size(); i++) {
        const std::string &a = argv[i];
        if (options_done || a.size() < 2 || a[0] != '-') {
            inv.args.push_back(a);
            continue;
        }
        if (a == "--") {
            options_done = true;
            continue;
        }
        const OptionSpec *spec;
        std::optional<std::string> inline_value;
        std::string shown;
        if (a[1] == '-') {
            const std::size_t eq = a.find('=');
            shown = a.substr(0, eq);
            spec = find_long(std::string_view(a).substr(2, eq == std::string::npos ? eq : eq - 2));
            if (eq != std::string::npos) inline_value = a.substr(eq + 1);
        } else {
            shown = a.substr(0, 2);
            spec = find_short(a[1]);
            if (a.size() > 2) inline_value = a.substr(2);
        }
        if (!spec) throw UsageError(std::string(where) + "unknown option \"" + shown + "\"");
        std::string v;
        if (spec->takes_value) {
            if (inline_value) {
                v = *inline_value;
            } else if (i + 1 < argv.size()) {
                v = argv[++i];
            } else {
                throw UsageError(std::string(where) + "option \"" + shown + "\" needs a value");
            }
        } else if (inline_value) {
            throw UsageError(std::string(where) + "option \"" + shown + "\" takes no value");
        }
        inv.options[std::string(spec->name)].push_back(v);
    }
}

// ---------------------------------------------------------------------------
// option values

// The key file's rule for ids, owners, plans, scopes and categories
// (core/key_file.cpp), checked here only to give a clearer message: the
// result is validated by the core before anything is written.
std::string identifier(std::string_view option, const std::string &v) {
    bool ok = !v.empty() && v.size() <= 128;
    for (char c : v) {
        if (c <= 0x20 || c >= 0x7f || c == '"' || c == '\\') ok = false;
    }
    if (!ok) {
        throw UsageError("invalid " + std::string(option) + " \"" + v +
                         "\" (1 to 128 printable characters, no blanks, quotes or backslashes)");
    }
    return v;
}

std::int64_t now_seconds() { return static_cast<std::int64_t>(std::time(nullptr)); }

std::int64_t expiry(const std::string &text, std::int64_t now) {
    auto t = parse_time_or_duration(text, now);
    if (!t) {
        throw UsageError("invalid --expires \"" + text +
                         "\" (a duration such as 90d, 12h, 30m, or a time such as "
                         "2027-01-30T00:00:00Z)");
    }
    if (*t <= now) throw UsageError("--expires \"" + text + "\" is not in the future");
    return *t;
}

std::size_t random_length(const Invocation &inv) {
    auto v = inv.value("length");
    if (!v) return kDefaultRandomChars;
    std::size_t n = 0;
    bool ok = !v->empty() && v->size() <= 4;
    for (char c : *v) {
        if (c < '0' || c > '9') ok = false;
        n = n * 10 + static_cast<std::size_t>(c - '0');
    }
    if (!ok || n < kMinRandomChars || n > 192) {
        throw UsageError("invalid --length \"" + *v + "\" (32 to 192)");
    }
    return n;
}

std::optional<std::string> prefix_option(const Invocation &inv) {
    auto p = inv.value("prefix");
    if (!p) return std::nullopt;
    // Only what may appear in a key (RFC 6750 b64token), and what the key
    // file allows for a prefix (64 characters).
    bool ok = p->size() <= 64;
    for (char c : *p) {
        const bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
                           (c >= 'A' && c <= 'Z');
        if (!alnum && std::string_view("-._~+/=").find(c) == std::string_view::npos) ok = false;
    }
    if (!ok) {
        throw UsageError("invalid --prefix \"" + *p +
                         "\" (up to 64 characters of A-Z a-z 0-9 - . _ ~ + / =)");
    }
    return p;
}

Environment environment_option(const Invocation &inv) {
    auto e = inv.value("environment");
    if (!e) return Environment::none;
    if (*e == "live") return Environment::live;
    if (*e == "test") return Environment::test;
    throw UsageError("invalid --environment \"" + *e + "\" (live or test)");
}

// Prints the one copy of a new key. If stdout fails the record is already
// in the file, so say which one to revoke rather than leave a mystery key.
void print_key_once(const std::string &key, const std::string &id, const std::string &path) {
    std::fwrite(key.data(), 1, key.size(), stdout);
    std::fputc('\n', stdout);
    if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
        throw Error(path + ": key " + id +
                    " was added, but printing it failed; revoke it with: apikeyctl revoke " + id);
    }
}

void report(const UpdateResult &r) {
    if (!r.warning.empty()) std::cerr << "apikeyctl: warning: " << r.warning << "\n";
}

// The options of publish, which revoke --publish takes too.
const std::vector<OptionSpec> kChannelOptionSpecs = {
    {"redis", 0, true},       {"channel", 0, true},
    {"sign", 0, true},        {"redis-password-file", 0, true},
    {"redis-user", 0, true},  {"redis-db", 0, true},
    {"redis-prefix", 0, true}};

ChannelOptions channel_options(const Invocation &inv) {
    ChannelOptions o;
    o.redis = inv.value("redis");
    o.channel = inv.value("channel");
    o.sign = inv.value("sign");
    o.password_file = inv.value("redis-password-file");
    o.user = inv.value("redis-user");
    o.db = inv.value("redis-db");
    o.prefix = inv.value("redis-prefix");
    return o;
}

std::vector<OptionSpec> with_channel_options(std::vector<OptionSpec> specs) {
    specs.insert(specs.end(), kChannelOptionSpecs.begin(), kChannelOptionSpecs.end());
    return specs;
}

// ---------------------------------------------------------------------------
// commands

int cmd_create(const Invocation &inv) {
    const std::string path = inv.file();
    const std::int64_t now = now_seconds();

    IssueRequest req;
    auto owner = inv.value("owner");
    if (!owner) throw UsageError("create: --owner is required");
    req.attributes.owner = identifier("--owner", *owner);
    if (auto org = inv.value("organization"))
        req.attributes.organization = identifier("--organization", *org);
    if (auto org = inv.value("org"))
        req.attributes.organization = identifier("--organization", *org);
    if (auto plan = inv.value("plan")) req.attributes.plan = identifier("--plan", *plan);
    std::vector<std::string> scopes = inv.values("scope");
    for (const std::string &list : inv.values("scopes")) {
        std::size_t start = 0;
        while (start <= list.size()) {
            std::size_t comma = list.find(',', start);
            if (comma == std::string::npos) comma = list.size();
            scopes.push_back(list.substr(start, comma - start));
            start = comma + 1;
        }
    }
    for (const std::string &s : scopes) {
        bool seen = false;
        for (const std::string &t : req.attributes.scopes) seen |= t == s;
        if (!seen) req.attributes.scopes.push_back(identifier("scope", s));
    }
    for (const std::string &l : inv.values("limit")) {
        const std::size_t eq = l.find('=');
        auto rate = eq == std::string::npos ? std::nullopt
                                            : parse_rate(std::string_view(l).substr(eq + 1));
        if (!rate)
            throw UsageError("invalid --limit \"" + l + "\" (CATEGORY=RATE, e.g. write=500r/m)");
        const std::string category = identifier("limit category", l.substr(0, eq));
        for (const auto &existing : req.attributes.limits) {
            if (existing.first == category)
                throw UsageError("--limit " + category + " given twice");
        }
        req.attributes.limits.emplace_back(category, *rate);
    }
    for (const std::string &text : inv.values("allow-ip")) {
        IpNetwork net;
        std::string error;
        if (!parse_network(text, net, error)) throw UsageError("--allow-ip: " + error);
        for (const IpNetwork &seen : req.attributes.allowed_ips) {
            if (seen == net) throw UsageError("--allow-ip " + format_network(net) + " given twice");
        }
        if (req.attributes.allowed_ips.size() == kMaxAllowedIps) {
            throw UsageError("more than " + std::to_string(kMaxAllowedIps) + " --allow-ip");
        }
        req.attributes.allowed_ips.push_back(net);
    }
    if (auto when = inv.value("expires")) req.attributes.expires_at = expiry(*when, now);
    if (auto id = inv.value("id")) req.attributes.id = identifier("--id", *id);
    req.attributes.created_at = now;
    req.random_chars = random_length(inv);
    const std::optional<std::string> prefix = prefix_option(inv);
    const Environment wanted = environment_option(inv);

    IssuedKey issued;
    PrefixChoice choice;
    UpdateOptions options;
    options.create_if_missing = true;
    const UpdateResult result = update_key_file(
        path,
        [&](KeyFileEditor &editor) {
            choice = choose_prefix(editor.model(), prefix, wanted, true);
            req.prefix = choice;
            issued = issue_key(editor, req);
        },
        options);

    print_key_once(issued.key, issued.id, result.path);
    report(result);
    std::string env(environment_name(choice.environment));
    std::cerr << "apikeyctl: " << (result.created ? "created " : "") << result.path
              << ": added key " << issued.id << " (owner " << req.attributes.owner
              << (env.empty() ? "" : ", environment " + env) << ")"
              << (choice.declare ? " and declared prefix " + choice.prefix : "") << "\n"
              << "apikeyctl: the key above is shown only this once and is not stored; "
                 "keep it now. nginx accepts it after \"nginx -s reload\".\n";
    return 0;
}

int cmd_revoke(const Invocation &inv) {
    const std::string path = inv.file();
    for (const std::string &id : inv.args) identifier("id", id);
    // Everything --publish needs is checked and read before the file is
    // touched: a usage error must not come after a revocation.
    const ChannelOptions channel = channel_options(inv);
    const bool publish = inv.has("publish");
    std::optional<ChannelTarget> target;
    if (publish) {
        target = channel_target(channel, "revoke");
    } else {
        for (const OptionSpec &o : kChannelOptionSpecs) {
            if (inv.has(o.name)) {
                throw UsageError("revoke: --" + std::string(o.name) + " needs --publish");
            }
        }
    }
    std::int64_t now = 0;
    std::vector<RevokeOutcome> outcomes;
    const UpdateResult result = update_key_file(path, [&](KeyFileEditor &editor) {
        // Taken under the lock: "already revoked" and the time written both
        // mean "as of this write", however long the lock took.
        now = now_seconds();
        outcomes = editor.revoke_all(inv.args, now);
    });
    report(result);
    std::size_t revoked = 0;
    for (const RevokeOutcome &o : outcomes) {
        if (o.status != RevokeOutcome::Status::revoked) {
            std::cerr << "apikeyctl: " << result.path << ": " << o.reason << "\n";
            continue;
        }
        revoked++;
        std::cerr << "apikeyctl: " << result.path << ": revoked " << o.id << " (revoked_at "
                  << format_time(now);
        if (o.previous != kNever)
            std::cerr << ", instead of the scheduled " << format_time(o.previous);
        std::cerr << ")\n";
    }
    bool published = false;
    if (publish && revoked > 0) {
        // Exactly the keys revoked now, at the time written to the file.
        std::vector<ChannelRevocation> list;
        for (const RevokeOutcome &o : outcomes) {
            if (o.status == RevokeOutcome::Status::revoked) list.push_back({o.id, now});
        }
        std::string error;
        try {
            const std::unique_ptr<RedisLink> link = connect_channel(*target);
            published = publish_revocations(*link, target->prefix, target->channel, list,
                                            target->signer ? &*target->signer : nullptr, error);
        } catch (const Error &e) {
            error = e.what();
        }
        if (published) {
            std::cerr << "apikeyctl: published " << list.size() << " revocation(s) to channel "
                      << target->channel << ": the nodes that follow it refuse the key(s) "
                      << "within a sync interval, others after \"nginx -s reload\".\n";
        } else {
            std::cerr << "apikeyctl: " << result.path << ": the file was edited, but the "
                      << "revocation was NOT published to channel " << target->channel << ": "
                      << error << "\n"
                      << "apikeyctl: nodes that follow the channel accept the key(s) until they "
                         "get the file; once Redis is back, publish it (it holds the "
                         "revocations) with: apikeyctl -f "
                      << path << " publish " << channel_retry_options(channel) << "\n";
        }
    }
    if (revoked > 0 && !published) {
        std::cerr << "apikeyctl: nginx refuses the key(s) with revoked_api_key after "
                     "\"nginx -s reload\".\n";
    }
    const bool publish_failed = publish && revoked > 0 && !published;
    if (revoked == outcomes.size()) return publish_failed ? 1 : 0;
    // Scripts revoking a list must not take a partial result for success.
    std::cerr << "apikeyctl: " << result.path << ": " << outcomes.size() - revoked << " of "
              << outcomes.size() << " key(s) not revoked"
              << (revoked > 0 ? "; the others were" : "; nothing was written") << "\n";
    return 1;
}

int cmd_publish(const Invocation &inv) {
    const std::string path = inv.file();
    const ChannelTarget target = channel_target(channel_options(inv), "publish");
    const std::string real = resolve_link(path);
    // Under the file's lock, as every edit is: two publishes, or a publish
    // and an edit, cannot go out in the opposite order of the file's
    // versions (a node installs only newer version numbers).
    const FileLock lock(real, std::chrono::milliseconds(10000));
    // The module's own reader and validator: a file nginx would refuse is
    // never published ("path:line: reason" otherwise).
    const KeyFileEditor editor = open_key_file(real);
    const std::size_t keys = editor.model().records.size();
    std::uint64_t version = 0;
    std::string error;
    bool published = false;
    try {
        const std::unique_ptr<RedisLink> link = connect_channel(target);
        published = publish_version(*link, target.prefix, target.channel, editor.text(),
                                    target.signer ? &*target.signer : nullptr, version, error);
    } catch (const Error &e) {
        error = e.what();
    }
    if (!published) {
        throw Error(real + ": not published to channel " + target.channel + ": " + error);
    }
    std::cerr << "apikeyctl: published version " << version << " of " << real << " (" << keys
              << " keys, sha256 " << sha256_hex(editor.text()).substr(0, 12)
              << "\u2026) to channel " << target.channel << "\n";
    return 0;
}

int cmd_rotate(const Invocation &inv) {
    const std::string path = inv.file();
    const std::int64_t now = now_seconds();
    const std::string old_id = identifier("id", inv.args[0]);

    IssueRequest req;
    if (auto when = inv.value("expires")) req.attributes.expires_at = expiry(*when, now);
    if (auto id = inv.value("id")) req.attributes.id = identifier("--id", *id);
    req.random_chars = random_length(inv);
    const std::optional<std::string> prefix = prefix_option(inv);

    IssuedKey issued;
    std::int64_t old_revoked_at = kNever;
    const UpdateResult result = update_key_file(path, [&](KeyFileEditor &editor) {
        const RecordInfo *info = editor.model().find(old_id);
        if (!info) throw EditError("no key with id \"" + old_id + "\"");
        old_revoked_at = info->revoked_at;
        const KeySpec old = editor.record(old_id);

        std::optional<std::string> use = prefix;
        if (!use) {
            const auto notes = prefix_notes(editor.text(), editor.model());
            use = known_prefix(
                editor.model(),
                notes[static_cast<std::size_t>(info - editor.model().records.data())]);
            if (!use) {
                throw EditError("cannot tell which prefix key \"" + old_id +
                                "\" was issued with (it was not created by apikeyctl); "
                                "give --prefix");
            }
        }
        req.prefix = choose_prefix(editor.model(), use, Environment::none, false);
        req.attributes.owner = old.owner;
        req.attributes.organization = old.organization;
        req.attributes.plan = old.plan;
        req.attributes.scopes = old.scopes;
        req.attributes.limits = old.limits;
        req.attributes.allowed_ips = old.allowed_ips;
        req.attributes.created_at = now;
        issued = issue_key(editor, req);
    });

    print_key_once(issued.key, issued.id, result.path);
    report(result);
    std::cerr << "apikeyctl: " << result.path << ": added key " << issued.id << ", a rotation of "
              << old_id << " (owner " << req.attributes.owner << ")\n"
              << "apikeyctl: the key above is shown only this once and is not stored; keep it now. "
                 "nginx accepts it after \"nginx -s reload\".\n";
    // A revoked_at still ahead is only a schedule: the old key works until then.
    if (old_revoked_at <= now) {
        std::cerr << "apikeyctl: " << old_id << " is already revoked.\n";
    } else {
        std::string until;
        if (old_revoked_at != kNever)
            until = "its scheduled revocation at " + format_time(old_revoked_at) + " or ";
        std::cerr << "apikeyctl: " << old_id << " stays valid until " << until
                  << "you run: apikeyctl -f " << path << " revoke " << old_id << "\n";
    }
    return 0;
}

std::string json_string(std::string_view s) {
    std::string out(json_escaped_max(s.size()) + 2, '\0');
    out[0] = '"';
    std::size_t n = json_escape(s, &out[1]);
    out[n + 1] = '"';
    out.resize(n + 2);
    return out;
}

struct ListRow {
    KeySpec spec;
    std::string environment;  // "" when unknown or none
    std::optional<std::string> prefix;
    std::string status;
};

int cmd_list(const Invocation &inv) {
    const std::string path = inv.file();
    const KeyFileEditor editor = open_key_file(path);
    const KeyFileModel &model = editor.model();
    const auto notes = prefix_notes(editor.text(), model);
    const KeyTable table = model.image.table();
    const std::int64_t now = now_seconds();

    // A file whose prefixes all name one environment tells every key's.
    std::string single_env;
    for (const PrefixDecl &p : model.prefixes) {
        const std::string e(environment_name(p.environment));
        single_env = (single_env.empty() || single_env == e) ? e : "?";
    }

    std::vector<ListRow> rows;
    rows.reserve(model.records.size());
    parse_key_file(editor.text(), [&](const KeySpec &spec) {
        ListRow row;
        row.spec = spec;
        row.spec.hash = {};  // never carried further than this
        row.prefix = notes[rows.size()];
        if (!model.prefixes.empty()) {
            Environment env;
            if (row.prefix && table.environment_of(*row.prefix, env)) {
                row.environment = std::string(environment_name(env));
            } else if (single_env != "?") {
                row.environment = single_env;
            }
        }
        row.status = spec.revoked_at <= now   ? "revoked"
                     : spec.expires_at <= now ? "expired"
                                              : "active";
        rows.push_back(std::move(row));
    });

    auto time_or = [](std::int64_t t, std::int64_t none) -> std::optional<std::string> {
        if (t == none) return std::nullopt;
        return format_time(t);
    };

    if (inv.has("json")) {
        auto opt = [](const std::optional<std::string> &s) { return s ? json_string(*s) : "null"; };
        auto opt_text = [&](const std::string &s) {
            return s.empty() ? std::string("null") : json_string(s);
        };
        std::string out = "[";
        for (std::size_t i = 0; i < rows.size(); i++) {
            const ListRow &r = rows[i];
            const KeySpec &s = r.spec;
            out += i ? ",\n  {" : "\n  {";
            out += "\"id\": " + json_string(s.id);
            out += ", \"owner\": " + json_string(s.owner);
            out += ", \"organization_id\": " + opt_text(s.organization);
            out += ", \"plan\": " + opt_text(s.plan);
            out += ", \"scopes\": [";
            for (std::size_t k = 0; k < s.scopes.size(); k++)
                out += (k ? ", " : "") + json_string(s.scopes[k]);
            out += "], \"limits\": {";
            for (std::size_t k = 0; k < s.limits.size(); k++) {
                out += (k ? ", " : "") + json_string(s.limits[k].first) + ": " +
                       json_string(format_rate(s.limits[k].second));
            }
            out += "}, \"allowed_ips\": ";
            if (s.allowed_ips.empty()) out += "null";
            for (std::size_t k = 0; k < s.allowed_ips.size(); k++) {
                out += (k ? ", " : "[") + json_string(format_network(s.allowed_ips[k]));
            }
            if (!s.allowed_ips.empty()) out += "]";
            out += ", \"environment\": " + opt_text(r.environment);
            out += ", \"prefix\": " + opt(r.prefix);
            out += ", \"status\": " + json_string(r.status);
            out += ", \"created_at\": " + opt(time_or(s.created_at, kUnknownTime));
            out += ", \"expires_at\": " + opt(time_or(s.expires_at, kNever));
            out += ", \"revoked_at\": " + opt(time_or(s.revoked_at, kNever));
            out += ", \"line\": " + std::to_string(s.line) + "}";
        }
        out += rows.empty() ? "]\n" : "\n]\n";
        std::fwrite(out.data(), 1, out.size(), stdout);
    } else {
        std::vector<std::vector<std::string>> cells;
        cells.push_back({"ID", "OWNER", "ORGANIZATION", "PLAN", "SCOPES", "ENV", "STATUS",
                         "CREATED", "EXPIRES", "REVOKED", "ALLOWED_IPS"});
        auto dash = [](const std::string &s) { return s.empty() ? std::string("-") : s; };
        for (const ListRow &r : rows) {
            const KeySpec &s = r.spec;
            std::string scopes;
            for (const std::string &sc : s.scopes) scopes += (scopes.empty() ? "" : ",") + sc;
            std::string networks;
            for (const IpNetwork &n : s.allowed_ips)
                networks += (networks.empty() ? "" : ",") + format_network(n);
            cells.push_back({s.id, s.owner, dash(s.organization), dash(s.plan), dash(scopes),
                             dash(r.environment), r.status,
                             time_or(s.created_at, kUnknownTime).value_or("-"),
                             time_or(s.expires_at, kNever).value_or("-"),
                             time_or(s.revoked_at, kNever).value_or("-"), dash(networks)});
        }
        std::vector<std::size_t> width(cells[0].size(), 0);
        for (const auto &row : cells) {
            for (std::size_t c = 0; c < row.size(); c++)
                width[c] = std::max(width[c], row[c].size());
        }
        std::string out;
        for (const auto &row : cells) {
            std::string line;
            for (std::size_t c = 0; c < row.size(); c++) {
                line += row[c];
                if (c + 1 < row.size()) line.append(width[c] - row[c].size() + 2, ' ');
            }
            out += line + "\n";
        }
        std::fwrite(out.data(), 1, out.size(), stdout);
    }
    if (std::fflush(stdout) != 0) throw Error("cannot write to stdout");
    return 0;
}

int cmd_check(const Invocation &inv) {
    std::vector<std::string> files = inv.args;
    if (files.empty()) files.push_back(inv.file());
    int status = 0;
    for (const std::string &f : files) {
        try {
            const TableImage image = load_key_file(f);
            const KeyTable table = image.table();
            std::cout << f << ": ok (" << table.key_count() << " keys, " << table.prefix_count()
                      << " prefixes)\n";
        } catch (const KeyFileLoadError &e) {
            std::cerr << "apikeyctl: " << e.what() << "\n";
            status = 1;
        } catch (const std::exception &e) {  // what nginx reports as "cannot load"
            std::cerr << "apikeyctl: " << f << ": " << e.what() << "\n";
            status = 1;
        }
    }
    return status;
}

// Reads stdin; on a terminal, with the echo off so the key is not shown.
std::string read_key_from_stdin() {
    const bool tty = ::isatty(STDIN_FILENO) == 1;
    termios saved{};
    bool echo_off = false;
    if (tty && ::tcgetattr(STDIN_FILENO, &saved) == 0) {
        termios quiet = saved;
        quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
        echo_off = ::tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet) == 0;
        std::cerr << "Key: " << std::flush;
    }
    std::string text;
    char buf[4096];
    for (;;) {
        const ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (n == 0) break;
        text.append(buf, static_cast<std::size_t>(n));
        if (tty && text.find('\n') != std::string::npos) break;  // one line is the key
        if (text.size() > 65536) throw Error("stdin: more than 64 KiB; expected one key");
    }
    if (echo_off) {
        ::tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved);
        std::cerr << "\n";
    }
    return text;
}

int cmd_hash(const Invocation &) {
    std::string text = read_key_from_stdin();
    // A key never contains blanks (b64token), so trimming them and the
    // line end cannot change a real key, only forgive a paste.
    auto blank = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
    std::size_t b = 0, e = text.size();
    while (b < e && blank(text[b])) b++;
    while (e > b && blank(text[e - 1])) e--;
    const std::string key = text.substr(b, e - b);
    if (key.empty()) throw Error("stdin: no key (expected one key, e.g. apikeyctl hash < key.txt)");
    if (key.find('\n') != std::string::npos)
        throw Error("stdin: more than one line; expected one key");
    if (!is_well_formed_key(key)) {
        throw Error(
            "stdin: not a well-formed key (16 to 256 characters of A-Z a-z 0-9 - . _ ~ + / =); "
            "nginx refuses such a key before it looks it up");
    }
    char out[71];
    format_digest(sha256(key), out);
    std::fwrite(out, 1, sizeof out, stdout);
    std::fputc('\n', stdout);
    if (std::fflush(stdout) != 0) throw Error("cannot write to stdout");
    return 0;
}

const std::vector<Command> &commands() {
    // clang-format off
    static const std::vector<Command> list = {
        {"create", kCreateHelp,
         {{"owner", 0, true}, {"organization", 0, true}, {"org", 0, true}, {"plan", 0, true},
          {"scope", 0, true}, {"scopes", 0, true}, {"limit", 0, true}, {"allow-ip", 0, true},
          {"expires", 0, true}, {"prefix", 0, true}, {"environment", 0, true}, {"id", 0, true},
          {"length", 0, true}},
         0, 0, cmd_create},
        {"revoke", kRevokeHelp, with_channel_options({{"publish", 0, false}}), 1, SIZE_MAX,
         cmd_revoke},
        {"rotate", kRotateHelp,
         {{"expires", 0, true}, {"prefix", 0, true}, {"id", 0, true}, {"length", 0, true}},
         1, 1, cmd_rotate},
        {"list", kListHelp, {{"json", 0, false}}, 0, 0, cmd_list},
        {"check", kCheckHelp, {}, 0, SIZE_MAX, cmd_check},
        {"hash", kHashHelp, {}, 0, 0, cmd_hash},
        {"publish", kPublishHelp, kChannelOptionSpecs, 0, 0, cmd_publish},
    };
    // clang-format on
    return list;
}

const Command *find_command(std::string_view name) {
    for (const Command &c : commands()) {
        if (c.name == name) return &c;
    }
    return nullptr;
}

// The hint after a usage error, naming the help that would have helped.
std::string help_hint(const Command *c) {
    return c ? "Try 'apikeyctl " + std::string(c->name) + " --help'." : "Try 'apikeyctl --help'.";
}

int run(const std::vector<std::string> &argv, const Command *&current) {
    // Options before the command: only the common ones.
    Invocation global;
    std::size_t i = 0;
    std::vector<std::string> head;
    for (; i < argv.size(); i++) {
        const std::string &a = argv[i];
        if (a.empty() || a[0] != '-' || a == "-") break;
        head.push_back(a);
        // "-f FILE" / "--file FILE": the value belongs to the option
        if ((a == "-f" || a == "--file") && i + 1 < argv.size()) head.push_back(argv[++i]);
    }
    parse_options(head, 0, kCommonOptions, "", global);
    if (!global.args.empty()) throw UsageError("unexpected \"" + global.args[0] + "\"");

    if (i == argv.size()) {
        if (global.has("help")) {
            std::cout << kToolHelp;
            return 0;
        }
        throw UsageError("no command given");
    }
    std::string name = argv[i++];
    if (name == "help") {
        if (i == argv.size()) {
            std::cout << kToolHelp;
            return 0;
        }
        const Command *c = find_command(argv[i]);
        if (!c) throw UsageError("unknown command \"" + argv[i] + "\"");
        std::cout << c->help;
        return 0;
    }
    const Command *cmd = find_command(name);
    if (!cmd) throw UsageError("unknown command \"" + name + "\"");
    current = cmd;
    if (global.has("help")) {
        std::cout << cmd->help;
        return 0;
    }

    Invocation inv = global;
    inv.command = cmd;
    std::vector<OptionSpec> specs = kCommonOptions;
    specs.insert(specs.end(), cmd->options.begin(), cmd->options.end());
    parse_options(argv, i, specs, std::string(cmd->name) + ": ", inv);
    if (inv.has("help")) {
        std::cout << cmd->help;
        return 0;
    }
    if (inv.args.size() < cmd->min_args) {
        throw UsageError(std::string(cmd->name) + ": missing ID");
    }
    if (inv.args.size() > cmd->max_args) {
        throw UsageError(std::string(cmd->name) + ": unexpected argument \"" +
                         inv.args[cmd->max_args] + "\"");
    }
    return cmd->run(inv);
}

}  // namespace
}  // namespace apikey::cli

int main(int argc, char **argv) {
    // A closed stdout must be an error we can report (the key's record is
    // already written by then), not a silent SIGPIPE death.
    std::signal(SIGPIPE, SIG_IGN);
    using namespace apikey::cli;
    const std::vector<std::string> args(argv + 1, argv + argc);
    const Command *current = nullptr;
    try {
        return run(args, current);
    } catch (const UsageError &e) {
        std::cerr << "apikeyctl: " << e.what() << "\n" << help_hint(current) << "\n";
        return 2;
    } catch (const std::exception &e) {
        std::cerr << "apikeyctl: " << e.what() << "\n";
        return 1;
    } catch (...) {
        std::cerr << "apikeyctl: unexpected error\n";
        return 1;
    }
}
