// The grant script (Lua) against its C++ reference model, on a real Redis:
// the same random batches go through EVALSHA on a private redis-server and
// through grant_model_eval fed with the TIME the script used (the script
// returns it), and every reply must be identical; the recorded counts too.
// Also: SCRIPT FLUSH mid-run (NOSCRIPT, then EVAL), FLUSHALL (the epoch
// changes), nodes seen (two zones; members planted around the kNodeSeenMs
// boundary, in Redis and the model alike), and the hiredis link itself
// (address forms, AUTH, SELECT, unix sockets, timeouts). And what a batch
// costs Redis per budget.
//
// Needs Debian's redis-server (scripts/setup installs it; CI has it). Without
// it these tests FAIL, on purpose: the model test's proof is only as good as
// the model's agreement with the script.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/grant_script.h"
#include "core/redis_link.h"
#include "support/redis_server.h"

extern char **environ;

namespace apikey {
namespace {

using test::free_port;
using test::RedisServer;
class GrantScriptRedis : public ::testing::Test {
protected:
    void SetUp() override {
        std::string error;
        if (!server_.start(error)) FAIL() << error;
        link_ = make_hiredis_link();
        RedisEndpoint ep;
        ep.address = server_.address();
        ep.timeout_ms = 5000;  // the cost test sends big batches
        const RedisResult r = link_->connect(ep);
        ASSERT_TRUE(r.ok) << r.error;
    }

    RedisResult cmd(const std::vector<std::string> &argv) {
        RedisResult r = link_->command(argv);
        EXPECT_TRUE(r.ok) << r.error;
        return r;
    }

    RedisServer server_;
    std::unique_ptr<RedisLink> link_;
    const RedisScript script_{kGrantScript};
};

// ---- the differential test ------------------------------------------------

struct SimNode {
    std::uint64_t id;
    std::uint64_t seq = 0;
    std::string epoch;
};

struct SimBudget {
    std::uint64_t id;
    std::uint32_t limit;
    std::uint32_t period;
    std::vector<std::int64_t> granted_buckets;  // for give-backs that hit
};

std::string budget_key(std::uint64_t id) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "akm:l:{%016llx}", static_cast<unsigned long long>(id));
    return buf;
}

std::string hex_id(std::uint64_t id) {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(id));
    return buf;
}

TEST_F(GrantScriptRedis, EveryReplyMatchesTheModel) {
    std::mt19937_64 rng(20260115);
    GrantStore model;
    std::vector<SimNode> nodes = {{0x1111, 0, ""}, {0x2222, 0, ""}, {0x3333, 0, ""}};
    std::vector<SimBudget> budgets;
    const std::uint32_t limits[] = {5, 16, 17, 100, 1000};
    const std::uint32_t periods[] = {100, 250, 1000, 60'000};
    for (std::uint64_t i = 0; i < 8; i++) {
        budgets.push_back({0xb000 + i, limits[rng() % 5], periods[rng() % 4], {}});
    }
    auto pick = [&](std::uint64_t n) { return static_cast<std::size_t>(rng() % n); };
    int compared = 0, stale = 0, epochs = 0, grants = 0, give_backs_hit = 0, flushes = 0,
        reloads_expected = 0, content_checks = 0, planted = 0;
    const char *zones[] = {"lz", "other zone"};
    std::map<std::uint32_t, int> nodes_seen;  // count -> replies
    std::int64_t last_now = 0;
    for (int step = 0; step < 1600; step++) {
        // Disturbances.
        if (step > 0 && step % 400 == 0) {
            cmd({"FLUSHALL"});
            model.flushall();
            flushes++;
        }
        if (step > 0 && step % 250 == 0) {
            cmd({"SCRIPT", "FLUSH"});
            reloads_expected++;
        }
        // Members last seen about kNodeSeenMs ago (as a node that stopped
        // would leave them), on both sides: the next batches of that zone
        // must drop exactly the same ones.
        // (Not into a set about to expire: Redis' clock is ahead of last_now.)
        const std::string zkey = std::string("akm:n:") + zones[step % 80 == 20 ? 0 : 1];
        const auto zit = model.zsets.find(zkey);
        if (step % 40 == 20 && last_now > 0 &&
            (zit == model.zsets.end() || zit->second.expire_at > last_now + 1000)) {
            for (int j = 0; j < 3; j++) {
                const std::int64_t score = last_now - kNodeSeenMs +
                                           static_cast<std::int64_t>(rng() % 9) - 2;
                const std::string member = hex_id(0xdead0000 + rng() % 4);
                cmd({"ZADD", zkey, std::to_string(score), member});
                model.zsets[zkey].members[member] = score;  // a new set has no TTL, as in Redis
                planted++;
            }
        }
        const int pause = static_cast<int>(rng() % 100);
        // Time passes (Redis' own clock): windows of 100 ms to 1 s drain.
        if (pause < 1) {
            std::this_thread::sleep_for(std::chrono::milliseconds(100 + rng() % 200));
        } else if (pause < 25) {
            std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 4));
        }

        SimNode &node = nodes[pick(nodes.size())];
        GrantBatchHeader h;
        h.node = node.id;
        const int seq_roll = static_cast<int>(rng() % 20);
        h.seq = seq_roll == 0 && node.seq > 0 ? node.seq - pick(2) : ++node.seq;  // replays
        const int epoch_roll = static_cast<int>(rng() % 30);
        h.epoch_seen = epoch_roll == 0 ? "bogus:1" : epoch_roll == 1 ? "" : node.epoch;
        h.epoch_candidate = rng();
        const std::uint32_t quarantines[] = {0, 0, 50, 300};
        h.quarantine_ms = quarantines[pick(4)];
        h.zone = zones[rng() % 3 == 0 ? 1 : 0];

        std::vector<GrantRequest> batch;
        const std::size_t count = pick(5);
        for (std::size_t i = 0; i < count; i++) {
            SimBudget &b = budgets[pick(budgets.size())];
            GrantRequest g;
            g.budget = b.id;
            g.limit = b.limit;
            g.period_ms = b.period;
            g.want = rng() % 3 == 0 ? 0 : static_cast<std::uint32_t>(1 + rng() % b.limit);
            g.lease_ms = static_cast<std::uint32_t>(20 + rng() % 2000);
            if (rng() % 4 == 0) {
                g.give_back = static_cast<std::uint32_t>(1 + rng() % 10);
                g.give_back_bucket = !b.granted_buckets.empty() && rng() % 3 != 0
                                         ? b.granted_buckets[pick(b.granted_buckets.size())]
                                         : static_cast<std::int64_t>(rng() % 100'000'000'000ull);
            }
            const std::size_t k = rng() % 3 == 0 ? 1 + pick(3) : 0;
            for (std::size_t j = 0; j < k; j++) {
                g.history.push_back({static_cast<std::int64_t>(rng() % (2 * b.period)),
                                     static_cast<std::uint32_t>(1 + rng() % 5)});
            }
            batch.push_back(g);
        }
        std::vector<std::string> keys, args;
        grant_script_call("akm:", h, batch, keys, args);
        const RedisResult r = link_->run_script(script_, keys, args);
        ASSERT_TRUE(r.ok) << r.error;
        ASSERT_EQ(r.reply.type, RedisReply::Type::array) << describe(r.reply);
        ASSERT_GE(r.reply.elements.size(), 3u);
        const std::int64_t now = r.reply.elements[2].integer;
        ASSERT_GE(now, last_now) << "Redis' clock went back";
        last_now = now;
        const RedisReply expected = grant_model_eval(model, now, keys, args);
        ASSERT_EQ(describe(r.reply), describe(expected))
            << "step " << step << ": script and model disagree";
        ASSERT_EQ(r.reply, expected);
        compared++;

        GrantReply g;
        std::string err;
        ASSERT_TRUE(parse_grant_reply(r.reply, batch.size(), g, err)) << err;
        EXPECT_GE(g.nodes, 1u) << "a node sees itself";
        nodes_seen[g.nodes]++;
        if (g.status == GrantStatus::stale) stale++;
        if (g.status == GrantStatus::epoch_changed) epochs++;
        if (g.status != GrantStatus::stale && h.epoch_seen != "bogus:1") node.epoch = g.epoch;
        if (g.status == GrantStatus::applied) {
            for (std::size_t i = 0; i < batch.size(); i++) {
                if (g.results[i].grant > 0) {
                    grants++;
                    for (SimBudget &b : budgets) {
                        if (b.id == batch[i].budget)
                            b.granted_buckets.push_back(g.results[i].lease_bucket);
                    }
                }
                if (batch[i].give_back > 0) {
                    for (SimBudget &b : budgets) {
                        if (b.id != batch[i].budget) continue;
                        for (std::int64_t e : b.granted_buckets)
                            give_backs_hit += e == batch[i].give_back_bucket;
                    }
                }
            }
        }

        // What is recorded: every live field, in Redis as in the model.
        if (step % 25 == 0) {
            content_checks++;
            for (const SimBudget &b : budgets) {
                const std::string key = budget_key(b.id);
                const RedisResult all = cmd({"HGETALL", key});
                const std::int64_t w = redis_bucket_ms(b.period);
                auto live = [&](std::int64_t bucket, std::int64_t c) {
                    return c > 0 && (bucket + 1) * w - 1 + b.period > now;
                };
                std::map<std::int64_t, std::int64_t> in_redis, in_model;
                for (std::size_t i = 0; i + 1 < all.reply.elements.size(); i += 2) {
                    const std::int64_t f = std::stoll(all.reply.elements[i].str);
                    const std::int64_t c = std::stoll(all.reply.elements[i + 1].str);
                    if (live(f, c)) in_redis[f] = c;
                }
                auto it = model.hashes.find(key);
                if (it != model.hashes.end()) {
                    for (const auto &[f, c] : it->second.fields) {
                        if (live(f, c)) in_model[f] = c;
                    }
                }
                ASSERT_EQ(in_redis, in_model) << "step " << step << " budget " << key;
            }
            for (const char *zone : zones) {
                const std::string key = std::string("akm:n:") + zone;
                const RedisResult all = cmd({"ZRANGE", key, "0", "-1", "WITHSCORES"});
                std::map<std::string, std::int64_t> in_redis, in_model;
                for (std::size_t i = 0; i + 1 < all.reply.elements.size(); i += 2) {
                    in_redis[all.reply.elements[i].str] = std::stoll(all.reply.elements[i + 1].str);
                }
                auto it = model.zsets.find(key);
                if (it != model.zsets.end() &&
                    !(it->second.expire_at != 0 && now > it->second.expire_at)) {
                    in_model = it->second.members;
                }
                ASSERT_EQ(in_redis, in_model) << "step " << step << " nodes seen " << key;
                if (!in_redis.empty()) {
                    const RedisResult ttl = cmd({"PTTL", key});
                    EXPECT_GT(ttl.reply.integer, 0) << key << " expires";
                    EXPECT_LE(ttl.reply.integer, kNodeSeenMs) << key;
                }
            }
        }
    }
    EXPECT_GE(link_->script_reloads(), static_cast<std::uint64_t>(reloads_expected))
        << "NOSCRIPT after SCRIPT FLUSH must fall back to EVAL";
    EXPECT_GT(stale, 0);
    EXPECT_GT(epochs, 0);
    EXPECT_GT(grants, 100);
    EXPECT_EQ(flushes, 3);
    EXPECT_GT(nodes_seen.rbegin()->first, 3u) << "planted members were counted";
    EXPECT_GT(planted, 0);
    std::string seen;
    for (const auto &[n, c] : nodes_seen) {
        seen += " " + std::to_string(n) + ":" + std::to_string(c);
    }
    std::printf(
        "[grant script] %d replies identical to the model (%d stale, %d epoch changes, %d "
        "grants, %d give-backs to granted buckets, %d content checks, %d FLUSHALL, %llu "
        "script reloads, %d members planted; replies by nodes seen:%s)\n",
        compared, stale, epochs, grants, give_backs_hit, content_checks, flushes,
        static_cast<unsigned long long>(link_->script_reloads()), planted, seen.c_str());
}

// ---- what a batch costs Redis ------------------------------------------------

std::map<std::string, double> commandstats(RedisLink &link, const std::string &command) {
    std::map<std::string, double> out;
    const RedisResult r = link.command({"INFO", "commandstats"});
    const std::string needle = "cmdstat_" + command + ":";
    const std::size_t at = r.reply.str.find(needle);
    if (at == std::string::npos) return out;
    const std::size_t end = r.reply.str.find('\r', at);
    std::string line = r.reply.str.substr(at + needle.size(), end - at - needle.size());
    std::size_t p = 0;
    while (p < line.size()) {
        const std::size_t eq = line.find('=', p);
        const std::size_t comma = line.find(',', eq);
        out[line.substr(p, eq - p)] = std::atof(line.substr(eq + 1, comma - eq - 1).c_str());
        if (comma == std::string::npos) break;
        p = comma + 1;
    }
    return out;
}

TEST_F(GrantScriptRedis, CostPerBudgetInABatchOfAThousand) {
    struct Case {
        const char *what;
        std::uint32_t limit, period;
        int batches;
        int sleep_ms;
    };
    // 1000r/m: few buckets per hash. 1000r/s: grants every tick fill the
    // window's 50 buckets of 20 ms (run over more than a period).
    const Case cases[] = {{"1000r/m", 1000, 60'000, 30, 5}, {"1000r/s", 1000, 1000, 60, 25}};
    for (const Case &c : cases) {
        cmd({"FLUSHALL"});
        GrantBatchHeader h;
        h.node = 0x77;
        h.epoch_candidate = 0xe;
        std::vector<GrantRequest> batch;
        for (std::uint64_t i = 0; i < 1000; i++) {
            GrantRequest g;
            g.budget = 0x10000 + i;
            g.limit = c.limit;
            g.period_ms = c.period;
            g.want = 5;
            g.lease_ms = 250;
            g.history = {{0, 1}};  // reported overdraft
            batch.push_back(g);
        }
        std::vector<std::string> keys, args;
        double wall_us = 0;
        for (int i = 0; i < c.batches; i++) {
            if (i == 5) cmd({"CONFIG", "RESETSTAT"});  // warm: hashes hold their buckets
            h.seq++;
            grant_script_call("akm:", h, batch, keys, args);
            const auto t0 = std::chrono::steady_clock::now();
            const RedisResult r = link_->run_script(script_, keys, args);
            const auto t1 = std::chrono::steady_clock::now();
            ASSERT_TRUE(r.ok) << r.error;
            ASSERT_EQ(r.reply.type, RedisReply::Type::array) << describe(r.reply);
            if (i == 0) h.epoch_seen = r.reply.elements[1].str;
            if (i >= 5) wall_us += std::chrono::duration<double, std::micro>(t1 - t0).count();
            std::this_thread::sleep_for(std::chrono::milliseconds(c.sleep_ms));
        }
        const auto stats = commandstats(*link_, "evalsha");
        ASSERT_TRUE(stats.count("usec_per_call")) << "no evalsha in INFO commandstats";
        const RedisResult fields = cmd({"HLEN", budget_key(0x10000)});
        const double per_budget = stats.at("usec_per_call") / 1000.0;
        std::printf(
            "[grant script] %s: Redis %.1f us per budget (usec_per_call %.0f for 1000 "
            "budgets, %d calls), round trip %.1f ms per batch, %lld buckets per hash\n",
            c.what, per_budget, stats.at("usec_per_call"), static_cast<int>(stats.at("calls")),
            wall_us / (c.batches - 5) / 1000.0, static_cast<long long>(fields.reply.integer));
        EXPECT_LT(per_budget, 500.0) << "sanity only";
    }
}

// ---- the link ------------------------------------------------------------------

TEST(RedisLink, AddressesAreNumericOrUnix) {
    std::string host, path, err;
    int port = 0;
    EXPECT_TRUE(parse_redis_address("127.0.0.1:6379", host, port, path, err));
    EXPECT_EQ(host, "127.0.0.1");
    EXPECT_EQ(port, 6379);
    EXPECT_TRUE(parse_redis_address("[::1]:7000", host, port, path, err));
    EXPECT_EQ(host, "::1");
    EXPECT_TRUE(parse_redis_address("unix:/run/redis/redis.sock", host, port, path, err));
    EXPECT_EQ(path, "/run/redis/redis.sock");
    EXPECT_FALSE(parse_redis_address("localhost:6379", host, port, path, err))
        << "names would block in getaddrinfo";
    EXPECT_FALSE(parse_redis_address("127.0.0.1", host, port, path, err));
    EXPECT_FALSE(parse_redis_address("127.0.0.1:0", host, port, path, err));
    EXPECT_FALSE(parse_redis_address("127.0.0.1:65536", host, port, path, err));
    EXPECT_FALSE(parse_redis_address("unix:relative", host, port, path, err));
}

TEST(RedisLink, ScriptShaIsSha1OfTheText) {
    EXPECT_EQ(RedisScript("return 1").sha1(), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
}

TEST(RedisLink, ARefusedConnectionIsAnErrorNotAnException) {
    auto link = make_hiredis_link();
    RedisEndpoint ep;
    ep.address = "127.0.0.1:" + std::to_string(free_port());
    const RedisResult r = link->connect(ep);
    EXPECT_FALSE(r.ok);
    EXPECT_FALSE(r.error.empty());
    EXPECT_FALSE(link->connected());
    EXPECT_FALSE(link->command({"PING"}).ok);
}

TEST_F(GrantScriptRedis, LinkAuthSelectUnixAndTimeouts) {
    // AUTH with a password, and a wrong one (whose text is never echoed).
    cmd({"CONFIG", "SET", "requirepass", "s3cret-pw"});
    {
        auto l = make_hiredis_link();
        RedisEndpoint ep;
        ep.address = server_.address();
        ep.password = "s3cret-pw";
        ep.db = 3;
        ASSERT_TRUE(l->connect(ep).ok);
        ASSERT_TRUE(l->command({"SET", "in-db-3", "x"}).ok);
        ep.password = "wrong-pw";
        const RedisResult bad = l->connect(ep);
        EXPECT_FALSE(bad.ok);
        EXPECT_NE(bad.error.find("AUTH"), std::string::npos) << bad.error;
        EXPECT_EQ(bad.error.find("wrong-pw"), std::string::npos);
    }
    cmd({"AUTH", "s3cret-pw"});
    cmd({"CONFIG", "SET", "requirepass", ""});
    EXPECT_EQ(cmd({"EXISTS", "in-db-3"}).reply.integer, 0);
    cmd({"SELECT", "3"});
    EXPECT_EQ(cmd({"EXISTS", "in-db-3"}).reply.integer, 1) << "SELECT db=3 was applied";
    cmd({"SELECT", "0"});

    // A unix socket.
    {
        auto l = make_hiredis_link();
        RedisEndpoint ep;
        ep.address = "unix:" + server_.unix_socket();
        ASSERT_TRUE(l->connect(ep).ok);
        const RedisResult r = l->command({"PING"});
        ASSERT_TRUE(r.ok);
        EXPECT_EQ(r.reply.str, "PONG");
    }

    // A server that does not answer in time: the call fails, the link closes.
    {
        auto l = make_hiredis_link();
        RedisEndpoint ep;
        ep.address = server_.address();
        ep.timeout_ms = 50;
        ASSERT_TRUE(l->connect(ep).ok);
        cmd({"CLIENT", "PAUSE", "400", "ALL"});
        const auto t0 = std::chrono::steady_clock::now();
        const RedisResult r = l->command({"PING"});
        const double ms = std::chrono::duration<double, std::milli>(
                              std::chrono::steady_clock::now() - t0)
                              .count();
        EXPECT_FALSE(r.ok);
        EXPECT_FALSE(l->connected()) << "a late reply must never be read as the next one's";
        EXPECT_LT(ms, 300) << "bounded by the timeout";
        std::this_thread::sleep_for(std::chrono::milliseconds(450));
        ASSERT_TRUE(l->connect(ep).ok);
        EXPECT_TRUE(l->command({"PING"}).ok);
    }

    // An error reply is a reply: the exchange worked.
    const RedisResult e = link_->command({"NOSUCHCOMMAND"});
    EXPECT_TRUE(e.ok);
    EXPECT_EQ(e.reply.type, RedisReply::Type::error);
    EXPECT_TRUE(link_->connected());
}

}  // namespace
}  // namespace apikey
