// The key channel end to end on a private redis-server: what publish_version
// and publish_revocations write, follow_channel reads back (content,
// version, order, signatures, several chunks); the same content published
// again stores nothing new; only the newest contents keep their chunks; the
// version number stays above the newest even when the clock or the counter
// says otherwise, and when another publisher takes the number or trims the
// chunks between the two steps of a publish.
//
// Skipped (not failed) when redis-server is not installed; the fake-Redis
// tests (key_channel_test.cpp) cover the parsing and refusals either way.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/ed25519.h"
#include "core/key_channel.h"
#include "core/redis_link.h"
#include "support/channel_keys.h"
#include "support/redis_server.h"

namespace apikey {
namespace {

constexpr const char *kPrefix = "akm:";
constexpr const char *kChannel = "main";

class KeyChannelRedis : public ::testing::Test {
protected:
    void SetUp() override {
        if (test::find_redis_server().empty()) GTEST_SKIP() << "redis-server is not installed";
        std::string error;
        if (!server_.start(error)) FAIL() << error;
        link_ = make_hiredis_link();
        RedisEndpoint ep = server_.endpoint();
        ep.timeout_ms = 5000;  // 4 MiB chunks
        const RedisResult r = link_->connect(ep);
        ASSERT_TRUE(r.ok) << r.error;
        const test::PemPair pair = test::ed25519_pem_pair();
        signer_ = Ed25519Signer::from_pem(pair.private_pem, error);
        verifier_ = Ed25519Verifier::from_pem(pair.public_pem, error);
        ASSERT_TRUE(signer_ && verifier_) << error;
    }

    std::uint64_t publish(const std::string &content, bool sign = true) {
        std::uint64_t version = 0;
        std::string error;
        EXPECT_TRUE(publish_version(*link_, kPrefix, kChannel, content, sign ? &*signer_ : nullptr,
                                    version, error))
            << error;
        return version;
    }

    ChannelFollowResult follow(std::string_view last_id, std::uint64_t loaded, bool verify = true,
                               std::size_t max_entries = 100) {
        ChannelFollowConfig c;
        c.prefix = kPrefix;
        c.channel = kChannel;
        c.verify = verify ? &*verifier_ : nullptr;
        c.max_entries = max_entries;
        ChannelFollowResult r = follow_channel(*link_, c, last_id, loaded);
        EXPECT_TRUE(r.ok) << r.error;
        return r;
    }

    RedisReply cmd(const std::vector<std::string> &argv) {
        const RedisResult r = link_->command(argv);
        EXPECT_TRUE(r.ok) << r.error;
        return r.reply;
    }

    std::vector<std::string> blob_keys() {
        std::vector<std::string> keys;
        for (const RedisReply &k : cmd({"KEYS", "akm:k:{main}:blob:*"}).elements)
            keys.push_back(k.str);
        std::sort(keys.begin(), keys.end());
        return keys;
    }

    test::RedisServer server_;
    std::unique_ptr<RedisLink> link_;
    std::optional<Ed25519Signer> signer_;
    std::optional<Ed25519Verifier> verifier_;
};

std::string content_of(int n, std::size_t size = 0) {
    std::string s = "version: 1\nkeys: []  # " + std::to_string(n) + "\n";
    while (s.size() < size) s += "# " + std::to_string(s.size()) + " padding\n";
    return s;
}

TEST_F(KeyChannelRedis, PublishThenFollowGivesTheSameContentAndVersion) {
    const std::string content = content_of(1);
    const std::uint64_t v = publish(content);
    EXPECT_GT(v, 1'700'000'000'000u) << "unix milliseconds";
    const ChannelFollowResult r = follow("0-0", 0);
    ASSERT_TRUE(r.version);
    EXPECT_EQ(r.version->version, v);
    EXPECT_EQ(r.version->content, content);
    EXPECT_EQ(r.version->sha256, sha256_hex(content));
    EXPECT_TRUE(r.refused.empty());
    EXPECT_FALSE(r.more);
    // Exactly the documented entry.
    const RedisReply entries = cmd({"XRANGE", "akm:k:{main}:log", "-", "+"});
    ASSERT_EQ(entries.elements.size(), 1u);
    const std::vector<RedisReply> &f = entries.elements[0].elements[1].elements;
    std::vector<std::string> names;
    for (std::size_t i = 0; i < f.size(); i += 2) names.push_back(f[i].str);
    EXPECT_EQ(names, (std::vector<std::string>{"type", "v", "sha256", "size", "chunks", "sig"}));
    EXPECT_EQ(cmd({"GET", "akm:k:{main}:version"}).str, std::to_string(v));
    EXPECT_EQ(cmd({"TTL", channel_blob_key(kPrefix, kChannel, sha256_hex(content), 0)}).integer, -1)
        << "blobs never expire";
}

TEST_F(KeyChannelRedis, TwoPublishesAreOrdered) {
    const std::uint64_t v1 = publish(content_of(1));
    const std::uint64_t v2 = publish(content_of(2));
    EXPECT_GT(v2, v1);
    // From the start: the newest only.
    ChannelFollowResult r = follow("0-0", 0);
    ASSERT_TRUE(r.version);
    EXPECT_EQ(r.version->version, v2);
    EXPECT_EQ(r.version->content, content_of(2));
    // A node that has v1 gets v2; one that has v2 refuses both as old.
    r = follow("0-0", v1);
    ASSERT_TRUE(r.version);
    EXPECT_EQ(r.version->version, v2);
    r = follow("0-0", v2);
    EXPECT_FALSE(r.version);
    ASSERT_EQ(r.refused.size(), 2u);
    EXPECT_EQ(r.refused[0].reason, "replayed or older version");
    // Step by step, one entry per read.
    r = follow("0-0", 0, true, 1);
    ASSERT_TRUE(r.version);
    EXPECT_EQ(r.version->version, v1);
    EXPECT_TRUE(r.more);
    r = follow(r.last_id, v1, true, 1);
    ASSERT_TRUE(r.version);
    EXPECT_EQ(r.version->version, v2);
}

TEST_F(KeyChannelRedis, RevocationsRoundTrip) {
    std::string error;
    ASSERT_TRUE(publish_revocations(*link_, kPrefix, kChannel,
                                    {{"key_a", 1'800'000'000}, {"key_b", 1'800'000'001}}, &*signer_,
                                    error))
        << error;
    const ChannelFollowResult r = follow("0-0", 0);
    ASSERT_EQ(r.revocations.size(), 2u);
    EXPECT_EQ(r.revocations[0].id, "key_a");
    EXPECT_EQ(r.revocations[0].at, 1'800'000'000);
    EXPECT_EQ(r.revocations[1].id, "key_b");
    EXPECT_EQ(r.revocations[1].at, 1'800'000'001);
    EXPECT_TRUE(r.refused.empty());
    EXPECT_FALSE(r.version);
}

TEST_F(KeyChannelRedis, ManyRevocationsGoInSeveralTransactions) {
    std::vector<ChannelRevocation> list;
    for (int i = 0; i < 1234; i++) list.push_back({"key_" + std::to_string(i), i});
    std::string error;
    ASSERT_TRUE(publish_revocations(*link_, kPrefix, kChannel, list, nullptr, error)) << error;
    std::vector<ChannelRevocation> got;
    std::string last = "0-0";
    for (;;) {
        const ChannelFollowResult r = follow(last, 0, false, 500);
        got.insert(got.end(), r.revocations.begin(), r.revocations.end());
        last = r.last_id;
        if (!r.more) break;
    }
    ASSERT_EQ(got.size(), list.size());
    for (std::size_t i = 0; i < got.size(); i++) EXPECT_EQ(got[i].id, list[i].id);
}

TEST_F(KeyChannelRedis, InvalidRevocationsAreNotSent) {
    std::string error;
    EXPECT_FALSE(publish_revocations(*link_, kPrefix, kChannel, {{"key_a", 1}, {"bad id", 2}},
                                     nullptr, error));
    EXPECT_EQ(error, "invalid revocation (id or time)");
    EXPECT_EQ(cmd({"EXISTS", "akm:k:{main}:log"}).integer, 0);
}

TEST_F(KeyChannelRedis, UnsignedPublishesAreRefusedByAVerifyingNode) {
    publish(content_of(1), false);
    const ChannelFollowResult r = follow("0-0", 0);
    EXPECT_FALSE(r.version);
    ASSERT_EQ(r.refused.size(), 1u);
    EXPECT_EQ(r.refused[0].reason, "unsigned entry");
    EXPECT_TRUE(follow("0-0", 0, false).version) << "a node without verify= takes it";
}

TEST_F(KeyChannelRedis, LargeContentInSeveralChunks) {
    const std::string content = content_of(1, 2 * kChannelChunkBytes + 1000);
    const std::uint64_t v = publish(content);
    EXPECT_EQ(blob_keys().size(), 3u);
    const ChannelFollowResult r = follow("0-0", 0);
    ASSERT_TRUE(r.version);
    EXPECT_EQ(r.version->version, v);
    EXPECT_TRUE(r.version->content == content);
}

TEST_F(KeyChannelRedis, TheSameContentAgainStoresNothingNew) {
    const std::string content = content_of(1, kChannelChunkBytes + 10);
    const std::uint64_t v1 = publish(content);
    cmd({"CONFIG", "RESETSTAT"});
    const std::uint64_t v2 = publish(content);
    EXPECT_GT(v2, v1);
    const std::string stats = cmd({"INFO", "commandstats"}).str;
    // The script's SET of the version counter is the only one.
    EXPECT_NE(stats.find("cmdstat_set:calls=1,"), std::string::npos) << stats;
    EXPECT_EQ(blob_keys().size(), 2u);
    EXPECT_EQ(cmd({"LRANGE", "akm:k:{main}:blobs", "0", "-1"}).elements.size(), 1u);
}

TEST_F(KeyChannelRedis, OnlyTheNewestContentsKeepTheirChunks) {
    for (int i = 1; i <= 6; i++) publish(content_of(i));
    std::vector<std::string> expected;
    for (int i = 6; i > 6 - static_cast<int>(kChannelKeptContents); i--)
        expected.push_back(channel_blob_key(kPrefix, kChannel, sha256_hex(content_of(i)), 0));
    std::sort(expected.begin(), expected.end());
    EXPECT_EQ(blob_keys(), expected);
    // The newest is still what a node gets; the oldest entries are refused
    // as missing only if they were the newest of a read.
    const ChannelFollowResult r = follow("0-0", 0);
    ASSERT_TRUE(r.version);
    EXPECT_EQ(r.version->content, content_of(6));
    const ChannelFollowResult first = follow("0-0", 0, true, 1);
    EXPECT_FALSE(first.version);
    ASSERT_EQ(first.refused.size(), 1u);
    EXPECT_EQ(first.refused[0].reason, "chunk 0 missing");
}

TEST_F(KeyChannelRedis, TheVersionStaysAboveTheNewestWhateverTheClock) {
    // A counter ahead of the clock (a publisher whose clock ran fast).
    cmd({"SET", "akm:k:{main}:version", "99999999999999"});
    EXPECT_EQ(publish(content_of(1)), 100000000000000u);
    // The counter lost: the stream still has the newest version.
    cmd({"DEL", "akm:k:{main}:version"});
    EXPECT_EQ(publish(content_of(2)), 100000000000001u);
    std::uint64_t newest = 0;
    std::string error;
    ASSERT_TRUE(newest_channel_version(*link_, kPrefix, kChannel, newest, error)) << error;
    EXPECT_EQ(newest, 100000000000001u);
    // Garbage in the counter is an error, not a version 0.
    cmd({"SET", "akm:k:{main}:version", "soon"});
    std::uint64_t v = 0;
    EXPECT_FALSE(publish_version(*link_, kPrefix, kChannel, content_of(3), nullptr, v, error));
    EXPECT_EQ(error, "akm:k:{main}:version holds no version number");
}

// Runs `before` once, just before the first script reaches the real link:
// another publisher acting between a publish's two steps.
class InterleavingLink : public RedisLink {
public:
    InterleavingLink(RedisLink &real, std::function<void()> before)
        : real_(real), before_(std::move(before)) {}
    RedisResult connect(const RedisEndpoint &ep) noexcept override { return real_.connect(ep); }
    bool connected() const noexcept override { return real_.connected(); }
    void close() noexcept override { real_.close(); }
    RedisResult command(const std::vector<std::string> &argv) noexcept override {
        if ((argv[0] == "EVALSHA" || argv[0] == "EVAL") && before_) {
            auto f = std::move(before_);
            before_ = nullptr;
            f();
        }
        return real_.command(argv);
    }

private:
    RedisLink &real_;
    std::function<void()> before_;
};

TEST_F(KeyChannelRedis, AnotherPublisherTakingTheNumberMeansANewOne) {
    const std::uint64_t v1 = publish(content_of(1));
    const std::uint64_t taken = v1 + 10'000'000;  // ahead of this publisher's clock
    InterleavingLink link(*link_, [&] {
        cmd({"SET", "akm:k:{main}:version", std::to_string(taken)});
    });
    std::uint64_t v2 = 0;
    std::string error;
    ASSERT_TRUE(publish_version(link, kPrefix, kChannel, content_of(2), &*signer_, v2, error))
        << error;
    EXPECT_EQ(v2, taken + 1) << "signed again with the new number";
    const ChannelFollowResult r = follow("0-0", v1);
    ASSERT_TRUE(r.version);
    EXPECT_EQ(r.version->version, v2);
}

TEST_F(KeyChannelRedis, ChunksTrimmedMeanwhileAreStoredAgain) {
    const std::string content = content_of(1, kChannelChunkBytes + 10);
    const std::string chunk1 = channel_blob_key(kPrefix, kChannel, sha256_hex(content), 1);
    InterleavingLink link(*link_, [&] { cmd({"DEL", chunk1}); });
    std::uint64_t v = 0;
    std::string error;
    ASSERT_TRUE(publish_version(link, kPrefix, kChannel, content, &*signer_, v, error)) << error;
    EXPECT_EQ(cmd({"EXISTS", chunk1}).integer, 1);
    const ChannelFollowResult r = follow("0-0", 0);
    ASSERT_TRUE(r.version);
    EXPECT_TRUE(r.version->content == content);
}

TEST_F(KeyChannelRedis, AWrongTypeAtTheStreamIsAnErrorNotAnAdvance) {
    cmd({"SET", "akm:k:{main}:log", "x"});
    ChannelFollowConfig c;
    c.channel = kChannel;
    const ChannelFollowResult r = follow_channel(*link_, c, "0-0", 0);
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(r.error.rfind("XREAD: WRONGTYPE", 0), 0u) << r.error;
    EXPECT_EQ(r.last_id, "0-0");
}

TEST_F(KeyChannelRedis, StreamIsCapped) {
    // MAXLEN ~ 10000: Redis trims whole macro nodes, so a little over.
    std::vector<ChannelRevocation> list;
    for (int i = 0; i < 12000; i++) list.push_back({"k" + std::to_string(i), i});
    std::string error;
    ASSERT_TRUE(publish_revocations(*link_, kPrefix, kChannel, list, nullptr, error)) << error;
    const std::int64_t len = cmd({"XLEN", "akm:k:{main}:log"}).integer;
    EXPECT_GE(len, 10000);
    EXPECT_LT(len, 11000);
}

}  // namespace
}  // namespace apikey
