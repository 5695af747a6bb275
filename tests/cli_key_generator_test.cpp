// apikeyctl's key and id generator: alphabet, length, uniqueness, and the
// rejection sampling that keeps every symbol equally likely.
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>

#include "cli/key_generator.h"
#include "core/credential.h"

namespace apikey::cli {
namespace {

TEST(CliKeyGenerator, KeyIsPrefixPlusBase62) {
    const std::string key = generate_key("jfi_sk_live_");
    ASSERT_EQ(key.size(), std::string("jfi_sk_live_").size() + kDefaultRandomChars);
    EXPECT_EQ(key.substr(0, 12), "jfi_sk_live_");
    for (char c : key.substr(12)) {
        EXPECT_NE(kBase62.find(c), std::string_view::npos) << "unexpected character " << c;
    }
    EXPECT_TRUE(is_well_formed_key(key)) << "the module must accept the key's syntax";
}

TEST(CliKeyGenerator, LengthIsHonoured) {
    EXPECT_EQ(generate_key("wfk_", kMinRandomChars).size(), 4 + kMinRandomChars);
    EXPECT_EQ(generate_key("", 100).size(), 100u);
    EXPECT_GE(kDefaultRandomChars, 32u);
}

TEST(CliKeyGenerator, KeysAreUnique) {
    std::set<std::string> seen;
    for (int i = 0; i < 2000; i++) seen.insert(generate_key("k_", kMinRandomChars));
    EXPECT_EQ(seen.size(), 2000u);
}

TEST(CliKeyGenerator, AllSymbolsAppear) {
    // 62 symbols in 20,000 draws: each is expected ~322 times.
    std::map<char, int> count;
    for (char c : random_string(kBase62, 20000)) count[c]++;
    EXPECT_EQ(count.size(), 62u);
    for (const auto &[c, n] : count) EXPECT_GT(n, 200) << c;
}

TEST(CliKeyGenerator, KeyIdFormat) {
    std::set<std::string> seen;
    for (int i = 0; i < 1000; i++) {
        const std::string id = generate_key_id();
        ASSERT_EQ(id.size(), 4 + kKeyIdRandomChars);
        EXPECT_EQ(id.substr(0, 4), "key_");
        for (char c : id.substr(4)) EXPECT_NE(kBase36.find(c), std::string_view::npos) << id;
        seen.insert(id);
    }
    EXPECT_EQ(seen.size(), 1000u);
}

TEST(CliKeyGenerator, NoModuloBias) {
    // Feed every byte value equally often: with rejection sampling each
    // symbol comes out exactly equally often (bytes 248..255 are dropped for
    // base62; a plain modulo would favour the first 8 symbols).
    unsigned next = 0;
    RandomBytes cycle = [&next](unsigned char *out, std::size_t n) {
        for (std::size_t i = 0; i < n; i++) out[i] = static_cast<unsigned char>(next++ & 0xff);
    };
    const std::string s = random_string(kBase62, 62 * 4 * 50, cycle);
    std::map<char, int> count;
    for (char c : s) count[c]++;
    ASSERT_EQ(count.size(), 62u);
    for (const auto &[c, n] : count) EXPECT_EQ(n, 4 * 50) << c;
}

TEST(CliKeyGenerator, RejectedBytesAreSkipped) {
    int calls = 0;
    RandomBytes high_then_zero = [&calls](unsigned char *out, std::size_t n) {
        for (std::size_t i = 0; i < n; i++) out[i] = calls == 0 ? 250 : 0;
        calls++;
    };
    EXPECT_EQ(random_string(kBase62, 5, high_then_zero), "00000");
    EXPECT_EQ(calls, 2) << "an all-rejected batch is followed by another";
}

TEST(CliKeyGenerator, BadAlphabet) { EXPECT_THROW(random_string("a", 3), std::invalid_argument); }

}  // namespace
}  // namespace apikey::cli
