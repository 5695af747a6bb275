#include "redis_link.h"

#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <sys/time.h>

#include <cstdio>
#include <new>

namespace apikey {

RedisReply RedisReply::of_integer(std::int64_t v) {
    RedisReply r;
    r.type = Type::integer;
    r.integer = v;
    return r;
}

RedisReply RedisReply::of_string(std::string s) {
    RedisReply r;
    r.type = Type::string;
    r.str = std::move(s);
    return r;
}

RedisReply RedisReply::of_error(std::string s) {
    RedisReply r;
    r.type = Type::error;
    r.str = std::move(s);
    return r;
}

std::string describe(const RedisReply &r) {
    switch (r.type) {
    case RedisReply::Type::nil: return "nil";
    case RedisReply::Type::integer: return std::to_string(r.integer);
    case RedisReply::Type::string: return "\"" + r.str + "\"";
    case RedisReply::Type::status: return "+" + r.str;
    case RedisReply::Type::error: return "(error " + r.str + ")";
    case RedisReply::Type::array: {
        std::string s = "[";
        for (std::size_t i = 0; i < r.elements.size(); i++) {
            if (i > 0) s += ", ";
            s += describe(r.elements[i]);
        }
        return s + "]";
    }
    }
    return "?";
}

bool parse_redis_address(std::string_view address, std::string &host, int &port, std::string &path,
                         std::string &error) {
    host.clear();
    path.clear();
    port = 0;
    if (address.substr(0, 5) == "unix:") {
        path = std::string(address.substr(5));
        if (path.empty() || path[0] != '/') {
            error = "a unix socket address needs an absolute path (unix:/path)";
            return false;
        }
        return true;
    }
    std::string_view h;
    std::string_view p;
    if (!address.empty() && address[0] == '[') {  // [IPv6]:port
        const std::size_t close = address.find(']');
        if (close == std::string_view::npos || close + 1 >= address.size() ||
            address[close + 1] != ':') {
            error = "expected [IPv6]:port";
            return false;
        }
        h = address.substr(1, close - 1);
        p = address.substr(close + 2);
    } else {
        const std::size_t colon = address.rfind(':');
        if (colon == std::string_view::npos) {
            error = "expected host:port or unix:/path";
            return false;
        }
        h = address.substr(0, colon);
        p = address.substr(colon + 1);
    }
    host = std::string(h);
    unsigned char buf[16];
    if (inet_pton(AF_INET, host.c_str(), buf) != 1 && inet_pton(AF_INET6, host.c_str(), buf) != 1) {
        error = "the Redis host must be a numeric address (names would block while resolving)";
        return false;
    }
    if (p.empty() || p.size() > 5) {
        error = "invalid port";
        return false;
    }
    int v = 0;
    for (char c : p) {
        if (c < '0' || c > '9') {
            error = "invalid port";
            return false;
        }
        v = v * 10 + (c - '0');
    }
    if (v < 1 || v > 65535) {
        error = "invalid port";
        return false;
    }
    port = v;
    return true;
}

RedisScript::RedisScript(std::string_view text) : text_(text) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(text_.data(), text_.size(), md, &len, EVP_sha1(), nullptr);
    static const char hex[] = "0123456789abcdef";
    for (unsigned i = 0; i < len; i++) {
        sha1_ += hex[md[i] >> 4];
        sha1_ += hex[md[i] & 15];
    }
}

RedisResult RedisLink::run_script(const RedisScript &script, const std::vector<std::string> &keys,
                                  const std::vector<std::string> &args) noexcept {
    try {
        std::vector<std::string> argv;
        argv.reserve(3 + keys.size() + args.size());
        argv.emplace_back("EVALSHA");
        argv.push_back(script.sha1());
        argv.push_back(std::to_string(keys.size()));
        argv.insert(argv.end(), keys.begin(), keys.end());
        argv.insert(argv.end(), args.begin(), args.end());
        RedisResult r = command(argv);
        // The server lost its script cache (restart, SCRIPT FLUSH, failover):
        // EVAL runs the text and caches it again. NOSCRIPT means the script did
        // not run, so running it now is not a second execution.
        if (r.ok && r.reply.type == RedisReply::Type::error &&
            r.reply.str.compare(0, 8, "NOSCRIPT") == 0) {
            script_reloads_++;
            argv[0] = "EVAL";
            argv[1] = script.text();
            r = command(argv);
        }
        return r;
    } catch (const std::bad_alloc &) {
        RedisResult r;
        r.error = "out of memory";
        return r;
    }
}

namespace {

timeval to_timeval(int ms) {
    timeval tv{};
    if (ms < 1) ms = 1;
    tv.tv_sec = ms / 1000;
    tv.tv_usec = (ms % 1000) * 1000;
    return tv;
}

RedisReply copy_reply(const redisReply *r) {
    RedisReply out;
    switch (r->type) {
    case REDIS_REPLY_INTEGER:
        out.type = RedisReply::Type::integer;
        out.integer = r->integer;
        break;
    case REDIS_REPLY_STRING:
        out.type = RedisReply::Type::string;
        out.str.assign(r->str, r->len);
        break;
    case REDIS_REPLY_STATUS:
        out.type = RedisReply::Type::status;
        out.str.assign(r->str, r->len);
        break;
    case REDIS_REPLY_ERROR:
        out.type = RedisReply::Type::error;
        out.str.assign(r->str, r->len);
        break;
    case REDIS_REPLY_ARRAY:
        out.type = RedisReply::Type::array;
        out.elements.reserve(r->elements);
        for (std::size_t i = 0; i < r->elements; i++) {
            out.elements.push_back(copy_reply(r->element[i]));
        }
        break;
    default: out.type = RedisReply::Type::nil; break;
    }
    return out;
}

class HiredisLink final : public RedisLink {
public:
    ~HiredisLink() override { close(); }

    RedisResult connect(const RedisEndpoint &endpoint) noexcept override {
        close();
        RedisResult r;
        try {
            std::string host;
            std::string path;
            int port = 0;
            if (!parse_redis_address(endpoint.address, host, port, path, r.error)) return r;
            const timeval ctv = to_timeval(endpoint.connect_timeout_ms);
            ctx_ = path.empty() ? redisConnectWithTimeout(host.c_str(), port, ctv)
                                : redisConnectUnixWithTimeout(path.c_str(), ctv);
            if (ctx_ == nullptr) {
                r.error = "cannot allocate a Redis context";
                return r;
            }
            if (ctx_->err != 0) {
                r.error = std::string("connect: ") + ctx_->errstr;
                close();
                return r;
            }
            if (redisSetTimeout(ctx_, to_timeval(endpoint.timeout_ms)) != REDIS_OK) {
                r.error = "cannot set the socket timeout";
                close();
                return r;
            }
            if (!endpoint.password.empty()) {
                std::vector<std::string> auth{"AUTH"};
                if (!endpoint.user.empty()) auth.push_back(endpoint.user);
                auth.push_back(endpoint.password);
                RedisResult a = command(auth);
                if (!a.ok) return a;
                if (a.reply.type == RedisReply::Type::error) {
                    // The server's words, never the password.
                    r.error = "AUTH refused: " + a.reply.str;
                    close();
                    return r;
                }
            }
            if (endpoint.db != 0) {
                RedisResult s = command({"SELECT", std::to_string(endpoint.db)});
                if (!s.ok) return s;
                if (s.reply.type == RedisReply::Type::error) {
                    r.error = "SELECT refused: " + s.reply.str;
                    close();
                    return r;
                }
            }
            r.ok = true;
            return r;
        } catch (const std::bad_alloc &) {
            close();
            r.ok = false;
            r.error = "out of memory";
            return r;
        }
    }

    bool connected() const noexcept override { return ctx_ != nullptr; }

    void close() noexcept override {
        if (ctx_ != nullptr) redisFree(ctx_);
        ctx_ = nullptr;
    }

    RedisResult command(const std::vector<std::string> &argv) noexcept override {
        RedisResult r;
        if (ctx_ == nullptr) {
            r.error = "not connected";
            return r;
        }
        try {
            std::vector<const char *> ptrs;
            std::vector<std::size_t> lens;
            ptrs.reserve(argv.size());
            lens.reserve(argv.size());
            for (const std::string &a : argv) {
                ptrs.push_back(a.data());
                lens.push_back(a.size());
            }
            void *raw = redisCommandArgv(ctx_, static_cast<int>(argv.size()), ptrs.data(),
                                         lens.data());
            auto *reply = static_cast<redisReply *>(raw);
            if (reply == nullptr) {
                // Timeout, reset, protocol error: the context cannot be used
                // again (a late reply would be read as the next one's).
                r.error = ctx_->err != 0 ? std::string(ctx_->errstr) : "no reply";
                close();
                return r;
            }
            try {
                r.reply = copy_reply(reply);
            } catch (...) {
                freeReplyObject(reply);
                throw;
            }
            freeReplyObject(reply);
            r.ok = true;
            return r;
        } catch (const std::bad_alloc &) {
            close();  // the reply may be half read
            r.ok = false;
            r.error = "out of memory";
            return r;
        }
    }

private:
    redisContext *ctx_ = nullptr;
};

}  // namespace

std::unique_ptr<RedisLink> make_hiredis_link() {
    return std::unique_ptr<RedisLink>(new (std::nothrow) HiredisLink());
}

}  // namespace apikey
