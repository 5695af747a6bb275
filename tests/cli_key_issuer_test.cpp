// apikeyctl's choice of prefix for a new key, and proof that an issued key
// opens its record through the module's own lookup.
#include <gtest/gtest.h>

#include "cli/key_issuer.h"
#include "core/access_policy.h"
#include "core/digest.h"

namespace apikey::cli {
namespace {

const std::string kPrefixed =
    "version: 1\nprefixes:\n  jfi_sk_live_: live\n  jfi_sk_test_: test\nkeys:\n";

KeySpec owner_only() {
    KeySpec s;
    s.owner = "user_1";
    s.created_at = 1793491200;
    return s;
}

TEST(CliChoosePrefix, DeclaredPrefixes) {
    const KeyFileEditor ed(kPrefixed);
    const auto &m = ed.model();
    auto c = choose_prefix(m, std::string("jfi_sk_test_"), Environment::none, true);
    EXPECT_EQ(c.prefix, "jfi_sk_test_");
    EXPECT_EQ(c.environment, Environment::test);
    EXPECT_FALSE(c.declare);

    c = choose_prefix(m, std::nullopt, Environment::live, true);
    EXPECT_EQ(c.prefix, "jfi_sk_live_");

    EXPECT_THROW(choose_prefix(m, std::nullopt, Environment::none, true), EditError)
        << "two prefixes: the user must choose";
    EXPECT_THROW(choose_prefix(m, std::string("wfk_"), Environment::none, true), EditError)
        << "undeclared prefix without --environment";
    EXPECT_THROW(choose_prefix(m, std::string("jfi_sk_live_"), Environment::test, true), EditError)
        << "declared for another environment";

    c = choose_prefix(m, std::string("wfk_"), Environment::live, true);
    EXPECT_TRUE(c.declare);
    EXPECT_THROW(choose_prefix(m, std::string("wfk_"), Environment::live, false), EditError)
        << "rotate never declares";
}

TEST(CliChoosePrefix, FileWithoutPrefixes) {
    const KeyFileEditor empty("version: 1\nkeys:\n");
    auto c = choose_prefix(empty.model(), std::string("wfk_"), Environment::none, true);
    EXPECT_EQ(c.prefix, "wfk_");
    EXPECT_EQ(c.environment, Environment::none);
    EXPECT_FALSE(c.declare);
    c = choose_prefix(empty.model(), std::nullopt, Environment::none, true);
    EXPECT_EQ(c.prefix, "");
    c = choose_prefix(empty.model(), std::string("wfk_"), Environment::live, true);
    EXPECT_TRUE(c.declare);

    // With keys, declaring the first prefix would invalidate them.
    KeyFileEditor with_key("version: 1\nkeys:\n");
    IssueRequest req;
    req.attributes = owner_only();
    issue_key(with_key, req);
    EXPECT_THROW(choose_prefix(with_key.model(), std::string("wfk_"), Environment::live, true),
                 EditError);
}

TEST(CliIssueKey, KeyOpensItsRecord) {
    KeyFileEditor ed(kPrefixed);
    IssueRequest req;
    req.attributes = owner_only();
    req.prefix = choose_prefix(ed.model(), std::string("jfi_sk_test_"), Environment::none, true);
    const IssuedKey k = issue_key(ed, req);
    EXPECT_EQ(k.key.substr(0, 12), "jfi_sk_test_");
    EXPECT_EQ(k.key.size(), 12 + kDefaultRandomChars);
    EXPECT_EQ(k.id.substr(0, 4), "key_");
    EXPECT_EQ(ed.text().find(k.key), std::string::npos) << "the key itself is never written";

    const KeyTable table = ed.model().image.table();
    const Identity id = identify_key(table, k.key);
    ASSERT_EQ(id.outcome, Outcome::accepted);
    EXPECT_EQ(id.environment, Environment::test);
    const KeyRecord *r = table.find(id.digest);
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(table.text(r->id), k.id);
}

TEST(CliIssueKey, NeverLandsInALongerPrefix) {
    // "wf" is live, "wfk" test: a random part starting with 'k' would make a
    // test key. The generator must draw again.
    KeyFileEditor ed("version: 1\nprefixes: {wf: live, wfk: test}\nkeys:\n");
    int call = 0;
    IssueRequest req;
    req.attributes = owner_only();
    req.attributes.id = "key_fixed";
    req.random = [&call](unsigned char *out, std::size_t n) {
        const unsigned char k = static_cast<unsigned char>(kBase62.find('k'));
        for (std::size_t i = 0; i < n; i++) out[i] = call == 0 ? k : 1;
        call++;
    };
    req.prefix = choose_prefix(ed.model(), std::string("wf"), Environment::none, true);
    const IssuedKey key = issue_key(ed, req);
    EXPECT_EQ(key.key, "wf" + std::string(kDefaultRandomChars, '1'));
    EXPECT_EQ(call, 2);
}

TEST(CliIssueKey, ExplicitIdMustBeNew) {
    KeyFileEditor ed(kPrefixed);
    IssueRequest req;
    req.attributes = owner_only();
    req.attributes.id = "key_same";
    req.prefix = choose_prefix(ed.model(), std::nullopt, Environment::live, true);
    issue_key(ed, req);
    EXPECT_THROW(issue_key(ed, req), EditError);
    EXPECT_EQ(ed.model().records.size(), 1u);
}

TEST(CliKnownPrefix, NoteOrOnlyPrefix) {
    const KeyFileEditor two(kPrefixed);
    EXPECT_EQ(known_prefix(two.model(), std::string("x_")), std::optional<std::string>("x_"));
    EXPECT_FALSE(known_prefix(two.model(), std::nullopt).has_value());
    const KeyFileEditor one("version: 1\nprefixes: {wfk_: live}\nkeys:\n");
    EXPECT_EQ(known_prefix(one.model(), std::nullopt), std::optional<std::string>("wfk_"));
}

}  // namespace
}  // namespace apikey::cli
