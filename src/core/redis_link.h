// A blocking link to one Redis server, for the cluster-mode sync process (and
// the differential test of the grant script). The sync process is the only
// user: it is allowed to block, for at most the configured timeout per call,
// because no request ever waits for it.
//
// The interface is abstract so the sync engine can be driven by a fake in
// tests; HiredisLink is the real one (Debian's libhiredis 0.14: blocking API,
// socket timeouts, no TLS). Nothing here throws across the interface: every
// call returns a result carrying an error string instead.
//
// Addresses are numeric on purpose: "127.0.0.1:6379", "[::1]:6379" or
// "unix:/run/redis/redis.sock". hiredis resolves names with getaddrinfo while
// connecting, a blocking call we cannot bound with a timeout, so names are
// refused at parse time.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace apikey {

// One reply, copied out of hiredis' tree (so it outlives the call).
struct RedisReply {
    enum class Type { nil, integer, string, status, error, array };
    Type type = Type::nil;
    std::int64_t integer = 0;
    std::string str;  // string, status and error replies
    std::vector<RedisReply> elements;

    bool operator==(const RedisReply &o) const {
        return type == o.type && integer == o.integer && str == o.str && elements == o.elements;
    }
    bool operator!=(const RedisReply &o) const { return !(*this == o); }

    static RedisReply of_integer(std::int64_t v);
    static RedisReply of_string(std::string s);
    static RedisReply of_error(std::string s);
};

// A readable form for test failures and logs ("[\"ok\", 12, ...]").
std::string describe(const RedisReply &reply);

// A call's outcome. `ok` false means the exchange failed (connect refused,
// timeout, connection lost, out of memory): the link is closed and whether
// Redis executed the command is unknown. An error *reply* (NOSCRIPT, WRONGTYPE,
// a script error) is ok == true with reply.type == error: the exchange worked.
struct RedisResult {
    bool ok = false;
    std::string error;  // when !ok
    RedisReply reply;   // when ok
};

struct RedisEndpoint {
    std::string address;   // "host:port" (numeric) or "unix:/path"
    std::string user;      // ACL user (Redis 6+); empty: AUTH with the password only
    std::string password;  // empty: no AUTH (never logged)
    int db = 0;            // SELECT when not 0
    int connect_timeout_ms = 50;
    int timeout_ms = 50;  // every command
};

// Parses an address. On success fills exactly one of (host, port) or path.
// Names (anything not a numeric IPv4/IPv6 address) are refused.
bool parse_redis_address(std::string_view address, std::string &host, int &port, std::string &path,
                         std::string &error);

// A script with its SHA-1 (hex), computed once.
class RedisScript {
public:
    explicit RedisScript(std::string_view text);
    const std::string &text() const noexcept { return text_; }
    const std::string &sha1() const noexcept { return sha1_; }

private:
    std::string text_;
    std::string sha1_;
};

class RedisLink {
public:
    virtual ~RedisLink() = default;

    // Connects (AUTH, SELECT included). Closes any previous connection first.
    virtual RedisResult connect(const RedisEndpoint &endpoint) noexcept = 0;
    virtual bool connected() const noexcept = 0;
    virtual void close() noexcept = 0;

    // One command, arguments binary-safe.
    virtual RedisResult command(const std::vector<std::string> &argv) noexcept = 0;

    // EVALSHA, and on NOSCRIPT (a restarted or flushed server) EVAL, which
    // also caches the script again. `keys` and `args` as for EVAL.
    RedisResult run_script(const RedisScript &script, const std::vector<std::string> &keys,
                           const std::vector<std::string> &args) noexcept;

    // How many times run_script had to fall back to EVAL (for status/tests).
    std::uint64_t script_reloads() const noexcept { return script_reloads_; }

private:
    std::uint64_t script_reloads_ = 0;
};

// The hiredis implementation.
std::unique_ptr<RedisLink> make_hiredis_link();

}  // namespace apikey
