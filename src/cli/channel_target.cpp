#include "cli/channel_target.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "cli/errors.h"

namespace apikey::cli {

namespace {

// Quotes a value for a shell command line we print, only when it needs it.
std::string shell_word(const std::string &s) {
    bool plain = !s.empty();
    for (char c : s) {
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                        (c >= '0' && c <= '9') || std::strchr("-_.:/[]@%+=,", c) != nullptr;
        if (!ok) plain = false;
    }
    if (plain) return s;
    std::string out = "'";
    for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
}

}  // namespace

std::string read_password_file(const std::string &path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        throw Error(path + ": cannot open the Redis password file: " + std::strerror(errno));
    }
    struct stat st;
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        throw Error(path + ": the Redis password file is not a regular file");
    }
    char buf[512];
    ssize_t n;
    do {
        n = ::read(fd, buf, sizeof buf);
    } while (n < 0 && errno == EINTR);
    ::close(fd);
    if (n < 0 || static_cast<std::size_t>(n) == sizeof buf) {
        OPENSSL_cleanse(buf, sizeof buf);
        throw Error(path + ": cannot read a password from it (at most 511 bytes)");
    }
    std::string password(buf, static_cast<std::size_t>(n));
    OPENSSL_cleanse(buf, sizeof buf);
    const std::size_t end = password.find_first_of("\r\n");
    if (end != std::string::npos) password.resize(end);
    if (password.empty()) throw Error(path + ": the Redis password file is empty");
    return password;
}

ChannelTarget channel_target(const ChannelOptions &o, const std::string &command) {
    ChannelTarget t;
    if (!o.redis) throw UsageError(command + ": --redis ADDRESS is required");
    if (!o.channel) throw UsageError(command + ": --channel NAME is required");
    std::string host, path, why;
    int port = 0;
    if (!parse_redis_address(*o.redis, host, port, path, why)) {
        throw UsageError("invalid --redis \"" + *o.redis + "\": " + why +
                         " (IP:PORT, [IPv6]:PORT or unix:/path)");
    }
    t.endpoint.address = *o.redis;
    t.endpoint.connect_timeout_ms = kCliConnectTimeoutMs;
    t.endpoint.timeout_ms = kCliCommandTimeoutMs;
    if (!is_channel_name(*o.channel)) {
        throw UsageError("invalid --channel \"" + *o.channel + "\" (1 to 64 of A-Z a-z 0-9 _ . -)");
    }
    t.channel = *o.channel;
    if (o.prefix) {
        if (o.prefix->empty() || o.prefix->size() > 64) {
            throw UsageError("invalid --redis-prefix (1 to 64 bytes)");
        }
        t.prefix = *o.prefix;
    }
    if (o.db) {
        int db = 0;
        bool ok = !o.db->empty() && o.db->size() <= 7;
        for (char c : *o.db) {
            if (c < '0' || c > '9') ok = false;
            db = db * 10 + (c - '0');
        }
        if (!ok || db > 1000000) throw UsageError("invalid --redis-db \"" + *o.db + "\"");
        t.endpoint.db = db;
    }
    if (o.user) {
        if (o.user->empty()) throw UsageError("--redis-user needs a name");
        if (!o.password_file) throw UsageError("--redis-user needs --redis-password-file");
        t.endpoint.user = *o.user;
    }
    if (o.password_file) t.endpoint.password = read_password_file(*o.password_file);
    if (o.sign) {
        std::string error;
        t.signer = Ed25519Signer::load(*o.sign, error);
        if (!t.signer) throw Error("--sign " + error);
    }
    return t;
}

std::unique_ptr<RedisLink> connect_channel(const ChannelTarget &target) {
    std::unique_ptr<RedisLink> link = make_hiredis_link();
    if (!link) throw Error("out of memory");
    const RedisResult r = link->connect(target.endpoint);
    if (!r.ok) throw Error("Redis " + target.endpoint.address + ": " + r.error);
    return link;
}

std::string channel_retry_options(const ChannelOptions &o) {
    std::string s;
    auto add = [&](const char *name, const std::optional<std::string> &v) {
        if (v) s += std::string(s.empty() ? "" : " ") + name + " " + shell_word(*v);
    };
    add("--redis", o.redis);
    add("--channel", o.channel);
    add("--sign", o.sign);
    add("--redis-password-file", o.password_file);
    add("--redis-user", o.user);
    add("--redis-db", o.db);
    add("--redis-prefix", o.prefix);
    return s;
}

}  // namespace apikey::cli
