// apikeyctl's --redis/--channel/--sign options (cli/channel_target.h): what
// is a usage error (exit 2) and what a file error (exit 1), the password
// file read as api_key_redis password_file= reads it and never echoed, the
// CLI's timeouts, and the retry line printed after a failed publish.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "cli/channel_target.h"
#include "cli/errors.h"
#include "support/channel_keys.h"

namespace apikey::cli {
namespace {

namespace fs = std::filesystem;

class ApikeyctlChannelTarget : public ::testing::Test {
protected:
    void SetUp() override {
        std::string templ = (fs::temp_directory_path() / "apikeyctl-channel-XXXXXX").string();
        ASSERT_NE(::mkdtemp(templ.data()), nullptr);
        dir_ = templ;
    }
    void TearDown() override { fs::remove_all(dir_); }

    std::string write(const std::string &name, const std::string &text) {
        const std::string p = dir_ + "/" + name;
        std::ofstream(p, std::ios::binary) << text;
        return p;
    }

    static ChannelOptions minimal() {
        ChannelOptions o;
        o.redis = "127.0.0.1:6379";
        o.channel = "main";
        return o;
    }

    std::string dir_;
};

TEST_F(ApikeyctlChannelTarget, Defaults) {
    const ChannelTarget t = channel_target(minimal(), "publish");
    EXPECT_EQ(t.endpoint.address, "127.0.0.1:6379");
    EXPECT_EQ(t.endpoint.connect_timeout_ms, 2000);
    EXPECT_EQ(t.endpoint.timeout_ms, 5000);
    EXPECT_EQ(t.endpoint.password, "");
    EXPECT_EQ(t.endpoint.db, 0);
    EXPECT_EQ(t.prefix, "akm:");
    EXPECT_EQ(t.channel, "main");
    EXPECT_FALSE(t.signer);
}

TEST_F(ApikeyctlChannelTarget, EveryOption) {
    ChannelOptions o = minimal();
    o.redis = "unix:/run/redis/redis.sock";
    o.password_file = write("pw", "s3cret\r\nsecond line\n");
    o.user = "publisher";
    o.db = "3";
    o.prefix = "prod:";
    o.sign = write("key.pem", test::ed25519_pem_pair().private_pem);
    const ChannelTarget t = channel_target(o, "publish");
    EXPECT_EQ(t.endpoint.password, "s3cret");
    EXPECT_EQ(t.endpoint.user, "publisher");
    EXPECT_EQ(t.endpoint.db, 3);
    EXPECT_EQ(t.prefix, "prod:");
    EXPECT_TRUE(t.signer);
}

TEST_F(ApikeyctlChannelTarget, UsageErrors) {
    auto usage = [&](ChannelOptions o) -> std::string {
        try {
            channel_target(o, "publish");
        } catch (const UsageError &e) {
            return e.what();
        }
        return "no usage error";
    };
    ChannelOptions o = minimal();
    o.redis.reset();
    EXPECT_EQ(usage(o), "publish: --redis ADDRESS is required");
    o = minimal();
    o.channel.reset();
    EXPECT_EQ(usage(o), "publish: --channel NAME is required");
    o = minimal();
    o.redis = "localhost:6379";
    EXPECT_NE(usage(o).find("numeric"), std::string::npos) << usage(o);
    o.redis = "127.0.0.1";
    EXPECT_EQ(usage(o).rfind("invalid --redis \"127.0.0.1\"", 0), 0u) << usage(o);
    o = minimal();
    o.channel = "a{b}";
    EXPECT_EQ(usage(o), "invalid --channel \"a{b}\" (1 to 64 of A-Z a-z 0-9 _ . -)");
    o = minimal();
    o.db = "x";
    EXPECT_EQ(usage(o), "invalid --redis-db \"x\"");
    o.db = "-1";
    EXPECT_EQ(usage(o), "invalid --redis-db \"-1\"");
    o = minimal();
    o.user = "u";
    EXPECT_EQ(usage(o), "--redis-user needs --redis-password-file");
    o = minimal();
    o.prefix = "";
    EXPECT_EQ(usage(o), "invalid --redis-prefix (1 to 64 bytes)");
}

TEST_F(ApikeyctlChannelTarget, FileErrors) {
    auto error = [&](ChannelOptions o) -> std::string {
        try {
            channel_target(o, "publish");
        } catch (const Error &e) {
            return e.what();
        }
        return "no error";
    };
    ChannelOptions o = minimal();
    o.sign = write("ec.pem", test::ec_pem_pair().private_pem);
    EXPECT_EQ(error(o),
              "--sign " + *o.sign + ": not an Ed25519 key (openssl genpkey -algorithm ed25519)");
    o.sign = dir_ + "/missing.pem";
    EXPECT_EQ(error(o).rfind("--sign " + *o.sign + ": cannot open", 0), 0u) << error(o);
    o = minimal();
    o.password_file = dir_ + "/missing";
    EXPECT_EQ(error(o).rfind(*o.password_file + ": cannot open the Redis password file", 0), 0u);
}

TEST_F(ApikeyctlChannelTarget, PasswordFile) {
    EXPECT_EQ(read_password_file(write("a", "pw\n")), "pw");
    EXPECT_EQ(read_password_file(write("b", "pw")), "pw");
    EXPECT_EQ(read_password_file(write("c", std::string(511, 'p'))), std::string(511, 'p'));
    const std::string big = write("d", std::string(512, 'p'));
    try {
        read_password_file(big);
        FAIL() << "a 512-byte password file was read";
    } catch (const Error &e) {
        EXPECT_EQ(std::string(e.what()),
                  big + ": cannot read a password from it (at most 511 bytes)");
    }
    const std::string empty = write("e", "\nsecret on the second line\n");
    try {
        read_password_file(empty);
        FAIL() << "an empty first line was taken";
    } catch (const Error &e) {
        EXPECT_EQ(std::string(e.what()), empty + ": the Redis password file is empty");
    }
    EXPECT_THROW(read_password_file(dir_), Error);  // a directory
}

TEST_F(ApikeyctlChannelTarget, RetryOptionsAreQuotedForTheShell) {
    ChannelOptions o = minimal();
    o.sign = "/etc/my keys/channel.pem";
    o.prefix = "it's:";
    EXPECT_EQ(channel_retry_options(o),
              "--redis 127.0.0.1:6379 --channel main --sign '/etc/my keys/channel.pem' "
              "--redis-prefix 'it'\\''s:'");
}

}  // namespace
}  // namespace apikey::cli
