// The key channel's node side (follow_channel) against a fake Redis that
// holds one stream and some strings: every malformed entry shape is refused
// with a reason and never applied, and never wedges the stream; signatures
// (unsigned, another key, a changed field, another channel); versions
// (older or replayed, the newest of a read, a failed fetch falling back);
// chunks (missing, short, wrong hash, too big); the `more` flag and link
// failures that consume nothing. Also the wire format itself (keys, signed
// messages) and the Ed25519 key loaders. tests/key_channel_redis_test.cpp
// runs the publisher and the follower against a real redis-server.
#include "core/key_channel.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/ed25519.h"
#include "support/channel_keys.h"

namespace apikey {
namespace {

constexpr const char *kPrefix = "akm:";
constexpr const char *kChannel = "main";

RedisReply str(std::string s) { return RedisReply::of_string(std::move(s)); }

RedisReply array(std::vector<RedisReply> elements) {
    RedisReply r;
    r.type = RedisReply::Type::array;
    r.elements = std::move(elements);
    return r;
}

RedisReply field_list(const std::vector<std::string> &fields) {
    std::vector<RedisReply> e;
    for (const std::string &f : fields) e.push_back(str(f));
    return array(std::move(e));
}

std::pair<std::uint64_t, std::uint64_t> id_key(const std::string &id) {
    const std::size_t dash = id.find('-');
    return {std::stoull(id.substr(0, dash)), std::stoull(id.substr(dash + 1))};
}

// One stream and a string store, as much of Redis as follow_channel uses.
class FakeChannelRedis : public RedisLink {
public:
    RedisResult connect(const RedisEndpoint &) noexcept override {
        RedisResult r;
        r.ok = true;
        return r;
    }
    bool connected() const noexcept override { return true; }
    void close() noexcept override {}

    RedisResult command(const std::vector<std::string> &argv) noexcept override {
        log.push_back(argv);
        RedisResult r;
        if (argv[0] == "XREAD") {
            if (fail_xread) {
                r.error = "timeout";
                return r;
            }
            r.ok = true;
            if (xread_reply) {
                r.reply = *xread_reply;
                return r;
            }
            EXPECT_EQ(argv.size(), 6u);
            EXPECT_EQ(argv[1], "COUNT");
            EXPECT_EQ(argv[3], "STREAMS");
            EXPECT_EQ(argv[4], channel_stream_key(kPrefix, kChannel));
            const std::size_t count = std::stoul(argv[2]);
            std::vector<RedisReply> out;
            for (const auto &e : stream) {
                if (id_key(e.first) <= id_key(argv[5])) continue;
                if (out.size() == count) break;
                out.push_back(array({str(e.first), e.second}));
            }
            if (out.empty()) return r;  // nil, as Redis answers
            r.reply = array({array({str(argv[4]), array(std::move(out))})});
            return r;
        }
        if (argv[0] == "GET") {
            if (argv[1] == fail_get) {
                r.error = "connection reset";
                return r;
            }
            r.ok = true;
            auto it = values.find(argv[1]);
            if (it != values.end()) r.reply = it->second;
            return r;
        }
        r.ok = true;
        r.reply = RedisReply::of_error("ERR unexpected command " + argv[0]);
        return r;
    }

    // Appends an entry with the next id ("N-0").
    std::string add(RedisReply fields) {
        const std::string id = std::to_string(++last_ms) + "-0";
        stream.emplace_back(id, std::move(fields));
        return id;
    }
    std::string add(const std::vector<std::string> &fields) { return add(field_list(fields)); }

    // Stores content's chunks and appends its version entry.
    std::string publish(const std::string &content, std::uint64_t version,
                        const Ed25519Signer *sign = nullptr, const char *channel = kChannel) {
        const std::string sha = sha256_hex(content);
        store(content);
        return add(version_entry_fields(channel, version, sha, content.size(), sign));
    }

    void store(const std::string &content) {
        const std::string sha = sha256_hex(content);
        for (std::uint64_t i = 0; i < channel_chunk_count(content.size()); i++) {
            values[channel_blob_key(kPrefix, kChannel, sha, i)] = str(
                content.substr(i * kChannelChunkBytes, kChannelChunkBytes));
        }
    }

    std::size_t gets() const {
        std::size_t n = 0;
        for (const auto &c : log) n += c[0] == "GET";
        return n;
    }

    std::vector<std::pair<std::string, RedisReply>> stream;
    std::map<std::string, RedisReply> values;
    std::vector<std::vector<std::string>> log;
    std::optional<RedisReply> xread_reply;
    bool fail_xread = false;
    std::string fail_get;
    std::uint64_t last_ms = 1000;
};

ChannelFollowConfig config(const Ed25519Verifier *verify = nullptr) {
    ChannelFollowConfig c;
    c.prefix = kPrefix;
    c.channel = kChannel;
    c.verify = verify;
    return c;
}

const std::string kContent = "version: 1\nkeys: []\n";

// The reasons of a result's refusals, by entry id.
std::map<std::string, std::string> reasons(const ChannelFollowResult &r) {
    std::map<std::string, std::string> m;
    for (const ChannelRefusal &x : r.refused) m[x.entry_id] = x.reason;
    return m;
}

struct Keys {
    Keys() {
        const test::PemPair pair = test::ed25519_pem_pair();
        const test::PemPair other = test::ed25519_pem_pair();
        std::string error;
        signer.emplace(*Ed25519Signer::from_pem(pair.private_pem, error));
        verifier.emplace(*Ed25519Verifier::from_pem(pair.public_pem, error));
        other_signer.emplace(*Ed25519Signer::from_pem(other.private_pem, error));
    }
    std::optional<Ed25519Signer> signer;
    std::optional<Ed25519Verifier> verifier;
    std::optional<Ed25519Signer> other_signer;
};

const Keys &keys() {
    static const Keys k;
    return k;
}

// ---- the wire format ------------------------------------------------------

TEST(KeyChannelFormat, KeysShareTheChannelsHashTag) {
    EXPECT_EQ(channel_stream_key("akm:", "main"), "akm:k:{main}:log");
    EXPECT_EQ(channel_blob_key("akm:", "main", "ab12", 3), "akm:k:{main}:blob:ab12:3");
    EXPECT_EQ(channel_version_key("akm:", "main"), "akm:k:{main}:version");
    EXPECT_EQ(channel_blobs_key("akm:", "main"), "akm:k:{main}:blobs");
}

TEST(KeyChannelFormat, ChannelNames) {
    EXPECT_TRUE(is_channel_name("main"));
    EXPECT_TRUE(is_channel_name("eu-west_1.prod"));
    EXPECT_TRUE(is_channel_name(std::string(64, 'a')));
    EXPECT_FALSE(is_channel_name(""));
    EXPECT_FALSE(is_channel_name(std::string(65, 'a')));
    EXPECT_FALSE(is_channel_name("a b"));
    EXPECT_FALSE(is_channel_name("a}b"));  // would break the hash tag
    EXPECT_FALSE(is_channel_name("a:b"));
    EXPECT_FALSE(is_channel_name("a\nb"));
}

TEST(KeyChannelFormat, ChunkCount) {
    EXPECT_EQ(channel_chunk_count(0), 0u);
    EXPECT_EQ(channel_chunk_count(1), 1u);
    EXPECT_EQ(channel_chunk_count(kChannelChunkBytes), 1u);
    EXPECT_EQ(channel_chunk_count(kChannelChunkBytes + 1), 2u);
    EXPECT_EQ(channel_chunk_count(kChannelMaxVersionBytes), 256u);
}

TEST(KeyChannelFormat, SignedMessagesAreCanonical) {
    EXPECT_EQ(version_signed_message("main", 1700000000123, std::string(64, 'a'), 20, 1),
              "apikey-channel-v1\nmain\nversion\n1700000000123\n" + std::string(64, 'a') +
                  "\n20\n1\n");
    EXPECT_EQ(revoke_signed_message("main", "key_abc", 1700000000),
              "apikey-channel-v1\nmain\nrevoke\nkey_abc\n1700000000\n");
}

TEST(KeyChannelFormat, EntryFields) {
    const std::string sha = sha256_hex(kContent);
    EXPECT_EQ(version_entry_fields("main", 7, sha, 20, nullptr),
              (std::vector<std::string>{"type", "version", "v", "7", "sha256", sha, "size", "20",
                                        "chunks", "1"}));
    EXPECT_EQ(revoke_entry_fields("main", "key_a", 12, nullptr),
              (std::vector<std::string>{"type", "revoke", "id", "key_a", "at", "12"}));
    const std::vector<std::string> s = revoke_entry_fields("main", "key_a", 12, &*keys().signer);
    ASSERT_EQ(s.size(), 8u);
    EXPECT_EQ(s[6], "sig");
    EXPECT_EQ(s[7].size(), 88u);
    EXPECT_EQ(s[7].substr(86), "==");
}

TEST(KeyChannelFormat, Sha256Hex) {
    EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

// ---- following: the happy path ------------------------------------------

TEST(KeyChannelFollow, EmptyStreamIsOkAndConsumesNothing) {
    FakeChannelRedis redis;
    const ChannelFollowResult r = follow_channel(redis, config(), "0-0", 0);
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.last_id, "0-0");
    EXPECT_FALSE(r.version);
    EXPECT_TRUE(r.revocations.empty());
    EXPECT_FALSE(r.more);
    ASSERT_EQ(redis.log.size(), 1u);
    EXPECT_EQ(redis.log[0], (std::vector<std::string>{"XREAD", "COUNT", "100", "STREAMS",
                                                      "akm:k:{main}:log", "0-0"}));
}

TEST(KeyChannelFollow, RevocationsAndAVersion) {
    FakeChannelRedis redis;
    redis.add(revoke_entry_fields(kChannel, "key_a", 1700000000, nullptr));
    redis.publish(kContent, 5);
    const std::string last = redis.add(revoke_entry_fields(kChannel, "key_b", 1700000001, nullptr));
    const ChannelFollowResult r = follow_channel(redis, config(), "0-0", 0);
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.last_id, last);
    ASSERT_EQ(r.revocations.size(), 2u);
    EXPECT_EQ(r.revocations[0].id, "key_a");
    EXPECT_EQ(r.revocations[0].at, 1700000000);
    EXPECT_EQ(r.revocations[1].id, "key_b");
    ASSERT_TRUE(r.version);
    EXPECT_EQ(r.version->version, 5u);
    EXPECT_EQ(r.version->sha256, sha256_hex(kContent));
    EXPECT_EQ(r.version->content, kContent);
    EXPECT_TRUE(r.refused.empty());

    // The next tick starts after the last entry: nothing again.
    const ChannelFollowResult again = follow_channel(redis, config(), r.last_id, 5);
    ASSERT_TRUE(again.ok);
    EXPECT_EQ(again.last_id, last);
    EXPECT_TRUE(again.revocations.empty());
    EXPECT_FALSE(again.version);
}

TEST(KeyChannelFollow, FieldsInAnyOrder) {
    FakeChannelRedis redis;
    redis.add({"at", "12", "id", "key_a", "type", "revoke"});
    const ChannelFollowResult r = follow_channel(redis, config(), "0-0", 0);
    ASSERT_TRUE(r.ok);
    ASSERT_EQ(r.revocations.size(), 1u);
    EXPECT_EQ(r.revocations[0].at, 12);
}

TEST(KeyChannelFollow, MultiChunkContent) {
    FakeChannelRedis redis;
    std::string big(2 * kChannelChunkBytes + 12345, '\0');
    for (std::size_t i = 0; i < big.size(); i++) big[i] = static_cast<char>('a' + i % 26);
    redis.publish(big, 9);
    const ChannelFollowResult r = follow_channel(redis, config(), "0-0", 0);
    ASSERT_TRUE(r.ok) << r.error;
    ASSERT_TRUE(r.version);
    EXPECT_TRUE(r.version->content == big);
    EXPECT_EQ(redis.gets(), 3u);
}

TEST(KeyChannelFollow, EmptyContentHasNoChunks) {
    FakeChannelRedis redis;
    redis.publish("", 3);
    const ChannelFollowResult r = follow_channel(redis, config(), "0-0", 0);
    ASSERT_TRUE(r.ok);
    ASSERT_TRUE(r.version);  // the caller's reader refuses it, not the channel
    EXPECT_EQ(r.version->content, "");
    EXPECT_EQ(redis.gets(), 0u);
}

// ---- malformed entries ----------------------------------------------------

struct Malformed {
    const char *what;
    std::vector<std::string> fields;
    const char *reason;
};

TEST(KeyChannelFollow, MalformedEntriesAreRefusedAndSkipped) {
    const std::string sha = sha256_hex(kContent);
    const std::string good_sig = revoke_entry_fields(kChannel, "key_a", 1, &*keys().signer)[7];
    // The same 64 bytes with one of the four bits under the padding set: a
    // lenient decoder would take it, so a signature would have two spellings.
    const std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string spare_bits = good_sig;
    spare_bits[85] = alphabet[alphabet.find(good_sig[85]) + 1];
    // clang-format off
    const std::vector<Malformed> cases = {
        {"no type", {"id", "key_a", "at", "1"}, "missing field type"},
        {"two types", {"type", "revoke", "type", "revoke", "id", "key_a", "at", "1"}, "duplicate field type"},
        {"unknown type", {"type", "add", "id", "key_a", "at", "1"}, "unknown type"},
        {"empty type", {"type", "", "id", "key_a", "at", "1"}, "unknown type"},
        {"type case", {"type", "Revoke", "id", "key_a", "at", "1"}, "unknown type"},
        {"unknown field", {"type", "revoke", "id", "key_a", "at", "1", "by", "me"}, "unknown field"},
        {"field of the other type", {"type", "revoke", "id", "key_a", "at", "1", "v", "3"}, "unknown field"},
        {"duplicate id", {"type", "revoke", "id", "key_a", "id", "key_b", "at", "1"}, "duplicate field id"},
        {"duplicate sig", {"type", "revoke", "id", "key_a", "at", "1", "sig", good_sig, "sig", good_sig}, "duplicate field sig"},
        {"missing id", {"type", "revoke", "at", "1"}, "missing field id"},
        {"missing at", {"type", "revoke", "id", "key_a"}, "missing field at"},
        {"id with a blank", {"type", "revoke", "id", "key a", "at", "1"}, "malformed field id"},
        {"id with a quote", {"type", "revoke", "id", "key\"a", "at", "1"}, "malformed field id"},
        {"empty id", {"type", "revoke", "id", "", "at", "1"}, "malformed field id"},
        {"long id", {"type", "revoke", "id", std::string(129, 'k'), "at", "1"}, "malformed field id"},
        {"negative at", {"type", "revoke", "id", "key_a", "at", "-1"}, "malformed field at"},
        {"at with a sign", {"type", "revoke", "id", "key_a", "at", "+1"}, "malformed field at"},
        {"at with leading zero", {"type", "revoke", "id", "key_a", "at", "01"}, "malformed field at"},
        {"fractional at", {"type", "revoke", "id", "key_a", "at", "1.5"}, "malformed field at"},
        {"at too large", {"type", "revoke", "id", "key_a", "at", "9223372036854775808"}, "malformed field at"},
        {"empty at", {"type", "revoke", "id", "key_a", "at", ""}, "malformed field at"},
        {"missing v", {"type", "version", "sha256", sha, "size", "20", "chunks", "1"}, "missing field v"},
        {"missing sha256", {"type", "version", "v", "3", "size", "20", "chunks", "1"}, "missing field sha256"},
        {"missing size", {"type", "version", "v", "3", "sha256", sha, "chunks", "1"}, "missing field size"},
        {"missing chunks", {"type", "version", "v", "3", "sha256", sha, "size", "20"}, "missing field chunks"},
        {"duplicate v", {"type", "version", "v", "3", "v", "4", "sha256", sha, "size", "20", "chunks", "1"}, "duplicate field v"},
        {"v zero", {"type", "version", "v", "0", "sha256", sha, "size", "20", "chunks", "1"}, "malformed field v"},
        {"v leading zero", {"type", "version", "v", "03", "sha256", sha, "size", "20", "chunks", "1"}, "malformed field v"},
        {"v not a number", {"type", "version", "v", "three", "sha256", sha, "size", "20", "chunks", "1"}, "malformed field v"},
        {"v overflows", {"type", "version", "v", "18446744073709551616", "sha256", sha, "size", "20", "chunks", "1"}, "malformed field v"},
        {"v negative", {"type", "version", "v", "-3", "sha256", sha, "size", "20", "chunks", "1"}, "malformed field v"},
        {"sha upper case", {"type", "version", "v", "3", "sha256", "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855", "size", "20", "chunks", "1"}, "malformed field sha256"},
        {"sha short", {"type", "version", "v", "3", "sha256", sha.substr(1), "size", "20", "chunks", "1"}, "malformed field sha256"},
        {"sha prefixed", {"type", "version", "v", "3", "sha256", "sha256:" + sha, "size", "20", "chunks", "1"}, "malformed field sha256"},
        {"size not a number", {"type", "version", "v", "3", "sha256", sha, "size", "20 ", "chunks", "1"}, "malformed field size"},
        {"chunks not a number", {"type", "version", "v", "3", "sha256", sha, "size", "20", "chunks", "x"}, "malformed field chunks"},
        {"chunks too many", {"type", "version", "v", "3", "sha256", sha, "size", "20", "chunks", "2"}, "chunks does not match size"},
        {"chunks zero", {"type", "version", "v", "3", "sha256", sha, "size", "20", "chunks", "0"}, "chunks does not match size"},
        {"sig not base64", {"type", "revoke", "id", "key_a", "at", "1", "sig", std::string(86, '*') + "=="}, "malformed field sig"},
        {"sig short", {"type", "revoke", "id", "key_a", "at", "1", "sig", good_sig.substr(4)}, "malformed field sig"},
        {"sig unpadded", {"type", "revoke", "id", "key_a", "at", "1", "sig", good_sig.substr(0, 86)}, "malformed field sig"},
        {"sig with spare bits", {"type", "revoke", "id", "key_a", "at", "1", "sig", spare_bits}, "malformed field sig"},
        {"odd field count", {"type", "revoke", "id", "key_a", "at"}, "not a field list"},
        {"too many fields", {"type", "revoke", "id", "key_a", "at", "1", "a", "1", "b", "2", "c", "3", "d", "4", "e", "5", "f", "6"}, "too many fields"},
    };
    // clang-format on
    ASSERT_EQ(alphabet.find(good_sig[85]) % 16, 0u) << "the last 4 bits are padding";

    FakeChannelRedis redis;
    std::map<std::string, const Malformed *> by_id;
    for (const Malformed &m : cases) by_id[redis.add(m.fields)] = &m;
    // Shapes no field list can have: not an array, elements that are not strings.
    const std::string not_array = redis.add(str("type"));
    RedisReply with_integer = field_list({"type", "revoke", "id", "key_a", "at"});
    with_integer.elements.push_back(RedisReply::of_integer(1));
    const std::string integer_value = redis.add(with_integer);
    const std::string nil_fields = redis.add(RedisReply{});
    // And after all of them, good entries: nothing above wedged the stream.
    redis.add(revoke_entry_fields(kChannel, "key_after", 99, nullptr));
    const std::string last = redis.publish(kContent, 42);

    ChannelFollowConfig c = config();
    c.max_entries = 1000;
    const ChannelFollowResult r = follow_channel(redis, c, "0-0", 0);
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.last_id, last);
    const auto why = reasons(r);
    for (const auto &[id, m] : by_id) {
        auto it = why.find(id);
        ASSERT_NE(it, why.end()) << m->what << " was not refused";
        EXPECT_EQ(it->second, m->reason) << m->what;
    }
    EXPECT_EQ(why.at(not_array), "not a field list");
    EXPECT_EQ(why.at(integer_value), "not a field list");
    EXPECT_EQ(why.at(nil_fields), "not a field list");
    EXPECT_EQ(r.refused.size(), cases.size() + 3);
    for (const ChannelRefusal &x : r.refused) EXPECT_FALSE(x.ignored) << x.reason;
    ASSERT_EQ(r.revocations.size(), 1u) << "only the good revocation is applied";
    EXPECT_EQ(r.revocations[0].id, "key_after");
    ASSERT_TRUE(r.version);
    EXPECT_EQ(r.version->version, 42u);
    // Refusals come in stream order.
    for (std::size_t i = 1; i < r.refused.size(); i++)
        EXPECT_LT(id_key(r.refused[i - 1].entry_id), id_key(r.refused[i].entry_id));
}

TEST(KeyChannelFollow, ReasonsNeverRepeatWhatRedisHeld) {
    // Key material pasted into an entry by mistake must not reach a log.
    const std::string secret = "jfi_sk_live_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    FakeChannelRedis redis;
    redis.add({"type", "revoke", "id", secret + " x", "at", "1"});
    redis.add({"type", "revoke", "id", "key_a", "at", "1", secret, "1"});
    redis.add({"type", secret, "id", "key_a", "at", "1"});
    redis.add({"type", "revoke", "id", "key_a", "at", secret});
    redis.add({"type", "revoke", "id", "key_a", "at", "1", "sig", secret});
    const ChannelFollowResult r = follow_channel(redis, config(), "0-0", 0);
    ASSERT_TRUE(r.ok);
    ASSERT_EQ(r.refused.size(), 5u);
    for (const ChannelRefusal &x : r.refused) {
        EXPECT_EQ(x.reason.find("jfi_"), std::string::npos) << x.reason;
        EXPECT_LE(x.reason.size(), 40u) << x.reason;
    }
}

// ---- signatures -----------------------------------------------------------

TEST(KeyChannelSignature, SignedEntriesPassVerification) {
    FakeChannelRedis redis;
    redis.add(revoke_entry_fields(kChannel, "key_a", 7, &*keys().signer));
    redis.publish(kContent, 11, &*keys().signer);
    const ChannelFollowResult r = follow_channel(redis, config(&*keys().verifier), "0-0", 0);
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_TRUE(r.refused.empty());
    ASSERT_EQ(r.revocations.size(), 1u);
    ASSERT_TRUE(r.version);
    EXPECT_EQ(r.version->version, 11u);
}

TEST(KeyChannelSignature, UnverifiedNodesAcceptSignedEntriesToo) {
    FakeChannelRedis redis;
    redis.add(revoke_entry_fields(kChannel, "key_a", 7, &*keys().signer));
    const ChannelFollowResult r = follow_channel(redis, config(), "0-0", 0);
    ASSERT_EQ(r.revocations.size(), 1u);
}

TEST(KeyChannelSignature, UnsignedEntriesAreRefused) {
    FakeChannelRedis redis;
    const std::string a = redis.add(revoke_entry_fields(kChannel, "key_a", 7, nullptr));
    const std::string b = redis.publish(kContent, 11);
    const ChannelFollowResult r = follow_channel(redis, config(&*keys().verifier), "0-0", 0);
    ASSERT_TRUE(r.ok);
    EXPECT_TRUE(r.revocations.empty());
    EXPECT_FALSE(r.version);
    EXPECT_EQ(reasons(r),
              (std::map<std::string, std::string>{{a, "unsigned entry"}, {b, "unsigned entry"}}));
    EXPECT_EQ(r.last_id, b);
    EXPECT_EQ(redis.gets(), 0u) << "an unsigned version is not even fetched";
}

TEST(KeyChannelSignature, AnotherKeysSignatureIsRefused) {
    FakeChannelRedis redis;
    const std::string a = redis.add(
        revoke_entry_fields(kChannel, "key_a", 7, &*keys().other_signer));
    const std::string b = redis.publish(kContent, 11, &*keys().other_signer);
    const ChannelFollowResult r = follow_channel(redis, config(&*keys().verifier), "0-0", 0);
    EXPECT_TRUE(r.revocations.empty());
    EXPECT_FALSE(r.version);
    EXPECT_EQ(reasons(r),
              (std::map<std::string, std::string>{{a, "bad signature"}, {b, "bad signature"}}));
}

// Each signed field, changed after signing.
TEST(KeyChannelSignature, TamperedFieldsAreRefused) {
    FakeChannelRedis redis;
    const Ed25519Signer *s = &*keys().signer;
    const std::string other = "version: 1\nkeys: [] # other\n";
    redis.store(other);
    std::vector<std::string> ids;
    auto tampered = [&](std::vector<std::string> f, const std::string &field,
                        const std::string &value) {
        for (std::size_t i = 0; i + 1 < f.size(); i += 2) {
            if (f[i] == field) f[i + 1] = value;
        }
        ids.push_back(redis.add(f));
    };
    const std::vector<std::string> rev = revoke_entry_fields(kChannel, "key_a", 7, s);
    tampered(rev, "id", "key_b");
    tampered(rev, "at", "8");
    const std::vector<std::string> ver = version_entry_fields(kChannel, 11, sha256_hex(kContent),
                                                              kContent.size(), s);
    tampered(ver, "v", "12");
    tampered(ver, "sha256", sha256_hex(other));
    // size and chunks are checked together: move to another size with the same count.
    std::vector<std::string> resized = ver;
    resized[7] = std::to_string(kContent.size() + 1);
    ids.push_back(redis.add(resized));
    const ChannelFollowResult r = follow_channel(redis, config(&*keys().verifier), "0-0", 0);
    ASSERT_TRUE(r.ok);
    EXPECT_TRUE(r.revocations.empty());
    EXPECT_FALSE(r.version);
    ASSERT_EQ(r.refused.size(), ids.size());
    for (const ChannelRefusal &x : r.refused) EXPECT_EQ(x.reason, "bad signature") << x.entry_id;
}

TEST(KeyChannelSignature, EntriesOfAnotherChannelAreRefused) {
    FakeChannelRedis redis;
    // Signed for channel "staging" by the right key, copied into "main".
    const std::string a = redis.add(revoke_entry_fields("staging", "key_a", 7, &*keys().signer));
    const std::string b = redis.publish(kContent, 11, &*keys().signer, "staging");
    const ChannelFollowResult r = follow_channel(redis, config(&*keys().verifier), "0-0", 0);
    EXPECT_TRUE(r.revocations.empty());
    EXPECT_FALSE(r.version);
    EXPECT_EQ(reasons(r),
              (std::map<std::string, std::string>{{a, "bad signature"}, {b, "bad signature"}}));
}

TEST(KeyChannelSignature, ASignatureDoesNotMoveBetweenEntryTypes) {
    FakeChannelRedis redis;
    const std::vector<std::string> rev = revoke_entry_fields(kChannel, "key_a", 7, &*keys().signer);
    std::vector<std::string> ver = version_entry_fields(kChannel, 11, sha256_hex(kContent),
                                                        kContent.size(), nullptr);
    ver.push_back("sig");
    ver.push_back(rev[7]);
    redis.store(kContent);
    const std::string id = redis.add(ver);
    const ChannelFollowResult r = follow_channel(redis, config(&*keys().verifier), "0-0", 0);
    EXPECT_EQ(reasons(r), (std::map<std::string, std::string>{{id, "bad signature"}}));
}

// ---- versions -------------------------------------------------------------

TEST(KeyChannelVersion, OlderAndEqualVersionsAreRefused) {
    FakeChannelRedis redis;
    const Ed25519Signer *s = &*keys().signer;
    const std::string older = redis.publish(kContent, 9, s);
    const std::string equal = redis.publish(kContent, 10, s);
    const ChannelFollowResult r = follow_channel(redis, config(&*keys().verifier), "0-0", 10);
    ASSERT_TRUE(r.ok);
    EXPECT_FALSE(r.version);
    EXPECT_EQ(reasons(r),
              (std::map<std::string, std::string>{{older, "replayed or older version"},
                                                  {equal, "replayed or older version"}}));
    for (const ChannelRefusal &x : r.refused) EXPECT_TRUE(x.ignored) << "a node catching up";
    EXPECT_EQ(redis.gets(), 0u);
}

TEST(KeyChannelVersion, AReplayedEntryLaterInTheStreamIsRefused) {
    FakeChannelRedis redis;
    const std::string first = redis.publish(kContent, 12, &*keys().signer);
    const ChannelFollowResult r1 = follow_channel(redis, config(&*keys().verifier), "0-0", 0);
    ASSERT_TRUE(r1.version);
    // Someone with write access re-adds the same signed entry.
    const std::string replay = redis.add(redis.stream[0].second);
    const ChannelFollowResult r2 = follow_channel(redis, config(&*keys().verifier), r1.last_id,
                                                  r1.version->version);
    EXPECT_FALSE(r2.version);
    EXPECT_EQ(reasons(r2),
              (std::map<std::string, std::string>{{replay, "replayed or older version"}}));
    // And twice in the same read: the first copy counts, the second is a replay.
    FakeChannelRedis again;
    again.publish(kContent, 12, &*keys().signer);
    const std::string copy = again.add(again.stream[0].second);
    const ChannelFollowResult r3 = follow_channel(again, config(&*keys().verifier), "0-0", 0);
    ASSERT_TRUE(r3.version);
    EXPECT_EQ(reasons(r3),
              (std::map<std::string, std::string>{{copy, "replayed or older version"}}));
    EXPECT_EQ(again.gets(), 1u);
}

TEST(KeyChannelVersion, OnlyTheNewestOfAReadIsFetched) {
    FakeChannelRedis redis;
    redis.publish("version: 1\nkeys: [] # 1\n", 20);
    redis.publish("version: 1\nkeys: [] # 3\n", 40);
    redis.publish("version: 1\nkeys: [] # 2\n", 30);  // out of order: the number decides
    const ChannelFollowResult r = follow_channel(redis, config(), "0-0", 0);
    ASSERT_TRUE(r.version);
    EXPECT_EQ(r.version->version, 40u);
    EXPECT_EQ(r.version->content, "version: 1\nkeys: [] # 3\n");
    ASSERT_EQ(r.refused.size(), 2u);
    for (const ChannelRefusal &x : r.refused) {
        EXPECT_EQ(x.reason, "superseded by a newer version");
        EXPECT_TRUE(x.ignored) << "superseded versions are not problems";
    }
    EXPECT_EQ(redis.gets(), 1u);
}

TEST(KeyChannelVersion, AFailedFetchFallsBackToTheNextNewest) {
    FakeChannelRedis redis;
    redis.publish("version: 1\nkeys: [] # 1\n", 20);
    const std::string broken = redis.publish("version: 1\nkeys: [] # 2\n", 30);
    redis.values.erase(
        channel_blob_key(kPrefix, kChannel, sha256_hex("version: 1\nkeys: [] # 2\n"), 0));
    const ChannelFollowResult r = follow_channel(redis, config(), "0-0", 0);
    ASSERT_TRUE(r.ok);
    ASSERT_TRUE(r.version);
    EXPECT_EQ(r.version->version, 20u);
    EXPECT_EQ(reasons(r), (std::map<std::string, std::string>{{broken, "chunk 0 missing"}}));
    EXPECT_FALSE(r.refused[0].ignored);
}

TEST(KeyChannelVersion, FetchAttemptsAreBounded) {
    FakeChannelRedis redis;
    std::vector<std::string> ids;
    for (int i = 1; i <= 5; i++) {
        const std::string content = "version: 1\nkeys: [] # " + std::to_string(i) + "\n";
        ids.push_back(
            redis.add(version_entry_fields(kChannel, 10 + i, sha256_hex(content), 30, nullptr)));
    }
    const ChannelFollowResult r = follow_channel(redis, config(), "0-0", 0);
    ASSERT_TRUE(r.ok);
    EXPECT_FALSE(r.version);
    EXPECT_EQ(redis.gets(), kChannelMaxFetchAttempts);
    ASSERT_EQ(r.refused.size(), 5u);
    EXPECT_EQ(reasons(r).at(ids[0]), "not fetched: too many failed versions");
    EXPECT_EQ(reasons(r).at(ids[4]), "chunk 0 missing");
    EXPECT_EQ(r.last_id, ids[4]);
}

// ---- chunks ---------------------------------------------------------------

TEST(KeyChannelChunks, MissingShortLongAndForeignChunksAreRefused) {
    const std::string content(kChannelChunkBytes + 100, 'x');
    const std::string sha = sha256_hex(content);
    auto key = [&](int i) { return channel_blob_key(kPrefix, kChannel, sha, i); };
    struct Case {
        const char *what;
        std::function<void(FakeChannelRedis &)> damage;
        const char *reason;
    };
    const std::vector<Case> cases = {
        {"second chunk missing", [&](FakeChannelRedis &r) { r.values.erase(key(1)); },
         "chunk 1 missing"},
        {"first chunk short",
         [&](FakeChannelRedis &r) { r.values[key(0)] = str(std::string(100, 'x')); },
         "chunk 0 has the wrong size"},
        {"last chunk long",
         [&](FakeChannelRedis &r) { r.values[key(1)] = str(std::string(101, 'x')); },
         "chunk 1 has the wrong size"},
        {"last chunk empty", [&](FakeChannelRedis &r) { r.values[key(1)] = str(""); },
         "chunk 1 has the wrong size"},
        {"chunk of another type",
         [&](FakeChannelRedis &r) { r.values[key(0)] = RedisReply::of_error("WRONGTYPE"); },
         "chunk 0 is not a string"},
        {"same size, other bytes",
         [&](FakeChannelRedis &r) { r.values[key(1)] = str(std::string(100, 'y')); },
         "content does not match its sha256"},
    };
    for (const Case &c : cases) {
        FakeChannelRedis redis;
        const std::string id = redis.publish(content, 7);
        c.damage(redis);
        const std::string after = redis.add(revoke_entry_fields(kChannel, "key_a", 1, nullptr));
        const ChannelFollowResult r = follow_channel(redis, config(), "0-0", 0);
        ASSERT_TRUE(r.ok) << c.what << ": " << r.error;
        EXPECT_FALSE(r.version) << c.what;
        EXPECT_EQ(reasons(r), (std::map<std::string, std::string>{{id, c.reason}})) << c.what;
        EXPECT_EQ(r.revocations.size(), 1u) << c.what;
        EXPECT_EQ(r.last_id, after) << c.what;
    }
}

TEST(KeyChannelChunks, TooBigIsRefusedBeforeAnyFetch) {
    FakeChannelRedis redis;
    const std::string content(1000, 'x');
    const std::string id = redis.publish(content, 7);
    ChannelFollowConfig c = config();
    c.max_version_bytes = 999;
    const ChannelFollowResult r = follow_channel(redis, c, "0-0", 0);
    EXPECT_FALSE(r.version);
    EXPECT_EQ(reasons(r),
              (std::map<std::string, std::string>{{id, "version larger than the limit"}}));
    EXPECT_EQ(redis.gets(), 0u);
    c.max_version_bytes = 1000;
    EXPECT_TRUE(follow_channel(redis, c, "0-0", 0).version);
}

TEST(KeyChannelChunks, AClaimedHugeSizeDoesNotAllocateIt) {
    // 1 GiB claimed, no chunk stored: refused at the first GET, and the
    // node never reserved the claimed size (ASan/valgrind would see it).
    FakeChannelRedis redis;
    const std::string id = redis.add(
        version_entry_fields(kChannel, 7, std::string(64, 'a'), kChannelMaxVersionBytes, nullptr));
    const ChannelFollowResult r = follow_channel(redis, config(), "0-0", 0);
    EXPECT_EQ(reasons(r), (std::map<std::string, std::string>{{id, "chunk 0 missing"}}));
    EXPECT_EQ(redis.gets(), 1u);
}

// ---- reading the stream ---------------------------------------------------

TEST(KeyChannelRead, MoreWhenMaxEntriesWereReturned) {
    FakeChannelRedis redis;
    std::vector<std::string> ids;
    for (int i = 0; i < 5; i++)
        ids.push_back(
            redis.add(revoke_entry_fields(kChannel, "key_" + std::to_string(i), i, nullptr)));
    ChannelFollowConfig c = config();
    c.max_entries = 2;
    ChannelFollowResult r = follow_channel(redis, c, "0-0", 0);
    ASSERT_TRUE(r.ok);
    EXPECT_TRUE(r.more);
    EXPECT_EQ(r.last_id, ids[1]);
    EXPECT_EQ(r.revocations.size(), 2u);
    EXPECT_EQ(redis.log.back()[2], "2");
    r = follow_channel(redis, c, r.last_id, 0);
    EXPECT_TRUE(r.more);
    EXPECT_EQ(r.last_id, ids[3]);
    r = follow_channel(redis, c, r.last_id, 0);
    EXPECT_FALSE(r.more);
    EXPECT_EQ(r.last_id, ids[4]);
    ASSERT_EQ(r.revocations.size(), 1u);
    EXPECT_EQ(r.revocations[0].id, "key_4");
    r = follow_channel(redis, c, r.last_id, 0);
    EXPECT_FALSE(r.more);
    EXPECT_TRUE(r.revocations.empty());
}

TEST(KeyChannelRead, MaxEntriesIsClamped) {
    FakeChannelRedis redis;
    ChannelFollowConfig c = config();
    c.max_entries = 0;
    follow_channel(redis, c, "0-0", 0);
    EXPECT_EQ(redis.log.back()[2], "1");
    c.max_entries = 1000000;
    follow_channel(redis, c, "0-0", 0);
    EXPECT_EQ(redis.log.back()[2], std::to_string(kChannelMaxEntriesPerRead));
}

TEST(KeyChannelRead, AFailedXreadConsumesNothing) {
    FakeChannelRedis redis;
    redis.add(revoke_entry_fields(kChannel, "key_a", 1, nullptr));
    redis.fail_xread = true;
    ChannelFollowResult r = follow_channel(redis, config(), "5-1", 0);
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(r.error, "XREAD: timeout");
    EXPECT_EQ(r.last_id, "5-1");
    EXPECT_TRUE(r.revocations.empty());

    redis.fail_xread = false;
    redis.xread_reply = RedisReply::of_error("WRONGTYPE Operation against a key");
    r = follow_channel(redis, config(), "5-1", 0);
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(r.error, "XREAD: WRONGTYPE Operation against a key");
    EXPECT_EQ(r.last_id, "5-1");
}

TEST(KeyChannelRead, AReplyOfAnotherShapeConsumesNothing) {
    const std::vector<RedisReply> shapes = {
        RedisReply::of_integer(1),
        array({}),
        array({array({str("akm:k:{main}:log")})}),
        array({array({str("akm:k:{main}:log"), str("x")})}),
        array({array({str("akm:k:{main}:log"), array({str("1-0")})})}),
        array({array({str("akm:k:{main}:log"), array({array({str("1-0")})})})}),
        array({array({str("akm:k:{main}:log"),
                      array({array({str("not-an-id"), field_list({"type", "revoke"})})})})}),
        array({array({str("akm:k:{main}:log"),
                      array({array({RedisReply::of_integer(1), field_list({})})})})}),
    };
    for (const RedisReply &shape : shapes) {
        FakeChannelRedis redis;
        redis.xread_reply = shape;
        const ChannelFollowResult r = follow_channel(redis, config(), "3-0", 0);
        EXPECT_FALSE(r.ok) << describe(shape);
        EXPECT_EQ(r.error, "XREAD: unexpected reply") << describe(shape);
        EXPECT_EQ(r.last_id, "3-0");
    }
}

TEST(KeyChannelRead, ALinkFailureWhileFetchingConsumesNothing) {
    FakeChannelRedis redis;
    redis.add(revoke_entry_fields(kChannel, "key_a", 1, nullptr));
    redis.publish(kContent, 7);
    redis.fail_get = channel_blob_key(kPrefix, kChannel, sha256_hex(kContent), 0);
    ChannelFollowResult r = follow_channel(redis, config(), "0-0", 0);
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(r.error, "GET of a chunk: connection reset");
    EXPECT_EQ(r.last_id, "0-0");
    EXPECT_TRUE(r.revocations.empty()) << "read again next time, with the version";
    EXPECT_TRUE(r.refused.empty());
    EXPECT_FALSE(r.version);
    // The link is back: everything is there.
    redis.fail_get.clear();
    r = follow_channel(redis, config(), "0-0", 0);
    ASSERT_TRUE(r.ok);
    EXPECT_EQ(r.revocations.size(), 1u);
    EXPECT_TRUE(r.version);
}

TEST(KeyChannelRead, InvalidArgumentsAreErrors) {
    FakeChannelRedis redis;
    EXPECT_EQ(follow_channel(redis, config(), "$", 0).error, "invalid stream id to read from");
    EXPECT_EQ(follow_channel(redis, config(), "", 0).error, "invalid stream id to read from");
    EXPECT_EQ(follow_channel(redis, config(), "12", 0).error, "invalid stream id to read from");
    ChannelFollowConfig c = config();
    c.channel = "a b";
    EXPECT_EQ(follow_channel(redis, c, "0-0", 0).error, "invalid channel name");
    EXPECT_TRUE(redis.log.empty());
}

// ---- keys -----------------------------------------------------------------

class KeyChannelEd25519 : public ::testing::Test {
protected:
    std::string write(const std::string &text) {
        char path[] = "/tmp/akm-channel-key-XXXXXX";
        const int fd = mkstemp(path);
        EXPECT_GE(fd, 0);
        EXPECT_EQ(::write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
        ::close(fd);
        files_.push_back(path);
        return path;
    }
    void TearDown() override {
        for (const std::string &f : files_) std::remove(f.c_str());
    }
    std::vector<std::string> files_;
};

TEST_F(KeyChannelEd25519, SignAndVerifyFromFiles) {
    const test::PemPair pair = test::ed25519_pem_pair();
    std::string error;
    auto signer = Ed25519Signer::load(write(pair.private_pem), error);
    ASSERT_TRUE(signer) << error;
    auto verifier = Ed25519Verifier::load(write(pair.public_pem), error);
    ASSERT_TRUE(verifier) << error;
    const std::string sig = signer->sign("message");
    ASSERT_EQ(sig.size(), kEd25519SignatureBytes);
    EXPECT_TRUE(verifier->verify("message", sig));
    EXPECT_FALSE(verifier->verify("messagE", sig));
    EXPECT_FALSE(verifier->verify("message", sig.substr(1)));
    std::string flipped = sig;
    flipped[10] ^= 1;
    EXPECT_FALSE(verifier->verify("message", flipped));
    // Deterministic (RFC 8032): the same message, the same signature.
    EXPECT_EQ(signer->sign("message"), sig);
}

TEST_F(KeyChannelEd25519, WrongKeysAreRefusedWithAReason) {
    const test::PemPair ed = test::ed25519_pem_pair();
    const test::PemPair ec = test::ec_pem_pair();
    const test::PemPair rsa = test::rsa_pem_pair();
    std::string error;
    auto refused_signer = [&](const std::string &pem) {
        error.clear();
        const bool loaded = Ed25519Signer::from_pem(pem, error).has_value();
        return !loaded && !error.empty();
    };
    auto refused_verifier = [&](const std::string &pem) {
        error.clear();
        const bool loaded = Ed25519Verifier::from_pem(pem, error).has_value();
        return !loaded && !error.empty();
    };
    EXPECT_TRUE(refused_signer(ec.private_pem));
    EXPECT_EQ(error, "not an Ed25519 key (openssl genpkey -algorithm ed25519)");
    EXPECT_TRUE(refused_signer(rsa.private_pem));
    EXPECT_EQ(error, "not an Ed25519 key (openssl genpkey -algorithm ed25519)");
    EXPECT_TRUE(refused_signer(ed.public_pem));
    EXPECT_EQ(error, "a public key; signing needs the private key");
    EXPECT_TRUE(refused_signer(ed.encrypted_private_pem));
    EXPECT_NE(error.find("encrypted"), std::string::npos) << error;
    EXPECT_TRUE(refused_signer("garbage"));
    EXPECT_TRUE(refused_signer(""));
    EXPECT_TRUE(refused_signer(std::string(kMaxPemFileBytes + 1, 'A')));

    EXPECT_TRUE(refused_verifier(ec.public_pem));
    EXPECT_EQ(error, "not an Ed25519 key (openssl genpkey -algorithm ed25519)");
    EXPECT_TRUE(refused_verifier(rsa.public_pem));
    EXPECT_TRUE(refused_verifier(ed.private_pem));
    EXPECT_EQ(error, "a private key; give the public key (openssl pkey -in KEY -pubout)");
    EXPECT_TRUE(refused_verifier("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"));
    EXPECT_TRUE(refused_verifier(""));
}

TEST_F(KeyChannelEd25519, FileErrorsNameTheFile) {
    std::string error;
    EXPECT_FALSE(Ed25519Signer::load("/nonexistent/key.pem", error));
    EXPECT_EQ(error.rfind("/nonexistent/key.pem: cannot open", 0), 0u) << error;
    EXPECT_FALSE(Ed25519Verifier::load("/tmp", error));
    EXPECT_EQ(error, "/tmp: not a regular file");
    const std::string ec = write(test::ec_pem_pair().public_pem);
    EXPECT_FALSE(Ed25519Verifier::load(ec, error));
    EXPECT_EQ(error, ec + ": not an Ed25519 key (openssl genpkey -algorithm ed25519)");
}

}  // namespace
}  // namespace apikey
