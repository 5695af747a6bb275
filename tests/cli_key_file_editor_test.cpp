// apikeyctl's text-level key file edits: appends and revocations change
// only the bytes they must, in every layout the module accepts, and refuse
// what they cannot do safely.
#include <gtest/gtest.h>

#include <string>

#include "cli/key_file_editor.h"
#include "cli/record_writer.h"
#include "core/digest.h"
#include "core/timestamp.h"

namespace apikey::cli {
namespace {

std::string hash_of(const std::string &key) {
    char out[71];
    format_digest(sha256(key), out);
    return std::string(out, sizeof out);
}

const std::string H1 = hash_of("jfi_sk_live_1111111111111111111111111111");
const std::string H2 = hash_of("jfi_sk_live_2222222222222222222222222222");
const std::string H3 = hash_of("jfi_sk_live_3333333333333333333333333333");
constexpr std::int64_t T = 1795000000;  // 2026-11-18T11:06:40Z

// Three records in the style t/harness.py writes, comments included.
// clang-format off
const std::string kThree =
    "# written by hand\n"
    "version: 1\n"
    "prefixes:\n"
    "  jfi_sk_live_: live\n"
    "  jfi_sk_test_: test\n"
    "keys:\n"
    "  - id: key_a\n"
    "    hash: " + H1 + "\n"
    "    owner: user_1\n"
    "    scopes: [a:read]\n"
    "\n"
    "  # the second key\n"
    "  - id: key_b\n"
    "    hash: " + H2 + "\n"
    "    owner: user_2\n"
    "    plan: pro\n"
    "  - id: key_c\n"
    "    hash: " + H3 + "\n"
    "    owner: user_3\n"
    "    limits: {write: 5r/s}\n";
// clang-format on

KeySpec new_spec(const std::string &id = "key_new") {
    KeySpec s;
    s.id = id;
    s.hash = sha256("jfi_sk_live_" + id + "_0000000000000000000000000");
    s.owner = "user_9";
    s.organization = "org_9";
    s.plan = "pro";
    s.scopes = {"a:read", "b:write"};
    s.limits = {{"write", Rate{500, 60}}};
    s.created_at = T;
    return s;
}

// text == before + inserted + after, with `inserted` at `at`.
void expect_insert(const std::string &before, const std::string &after, std::size_t at,
                   const std::string &inserted) {
    ASSERT_EQ(after.size(), before.size() + inserted.size()) << after;
    EXPECT_EQ(after.substr(0, at), before.substr(0, at));
    EXPECT_EQ(after.substr(at, inserted.size()), inserted) << after;
    EXPECT_EQ(after.substr(at + inserted.size()), before.substr(at));
}

TEST(CliEditorAppend, KeepsExistingBytes) {
    KeyFileEditor ed(kThree);
    ed.append_record(new_spec(), std::string("jfi_sk_live_"));
    const std::string &t = ed.text();
    ASSERT_EQ(t.substr(0, kThree.size()), kThree) << "every existing byte is kept";
    // clang-format off
    EXPECT_EQ(t.substr(kThree.size()),
              "  - id: key_new\n"
              "    hash: " + hash_of("jfi_sk_live_key_new_0000000000000000000000000") + "\n"
              "    owner: user_9\n"
              "    organization_id: org_9\n"
              "    plan: pro\n"
              "    scopes: [a:read, b:write]\n"
              "    created_at: 2026-11-18T11:06:40Z\n"
              "    limits: {write: 500r/m}\n"
              "    # prefix: jfi_sk_live_\n");
    // clang-format on
    ASSERT_EQ(ed.model().records.size(), 4u);
    EXPECT_EQ(ed.model().records[3].id, "key_new");
    EXPECT_EQ(ed.model().records[3].fingerprint, fingerprint(new_spec()));
}

TEST(CliEditorAppend, BeforeALaterSection) {
    // keys first, prefixes after: the record goes after the last key, not at the end
    const std::string text = "version: 1\nkeys:\n  - id: key_a\n    hash: " + H1 +
                             "\n    owner: u\nprefixes:\n  jfi_sk_live_: live\n";
    KeyFileEditor ed(text);
    ed.append_record(new_spec(), std::nullopt);
    const std::size_t at = text.find("prefixes:");
    expect_insert(text, ed.text(), at, render_record(new_spec(), std::nullopt));
    EXPECT_EQ(ed.model().prefixes.size(), 1u);
}

TEST(CliEditorAppend, CopiesTheLastRecordsIndentation) {
    const std::string text = "version: 1\nkeys:\n- id: key_a\n  hash: " + H1 + "\n  owner: u\n";
    KeyFileEditor ed(text);
    ed.append_record(new_spec(), std::nullopt);
    ASSERT_EQ(ed.text().substr(0, text.size()), text);
    EXPECT_EQ(ed.text().substr(text.size(), 16), "- id: key_new\n  ");
}

TEST(CliEditorAppend, EmptyKeysForms) {
    for (const std::string keys : {"keys:", "keys: []", "keys: ~", "keys: null"}) {
        const std::string text = "version: 1\n" + keys + "\nprefixes: {wfk_: live}\n";
        KeyFileEditor ed(text);
        ed.append_record(new_spec(), std::nullopt);
        EXPECT_EQ(ed.text(), "version: 1\nkeys:\n" + render_record(new_spec(), std::nullopt) +
                                 "prefixes: {wfk_: live}\n")
            << keys;
    }
}

TEST(CliEditorAppend, NoKeysFieldAndNoFinalNewline) {
    KeyFileEditor ed("version: 1");
    ed.append_record(new_spec(), std::nullopt);
    EXPECT_EQ(ed.text(), "version: 1\nkeys:\n" + render_record(new_spec(), std::nullopt));

    const std::string text = "version: 1\nkeys:\n  - id: key_a\n    hash: " + H1 + "\n    owner: u";
    KeyFileEditor ed2(text);
    ed2.append_record(new_spec(), std::nullopt);
    EXPECT_EQ(ed2.text(), text + "\n" + render_record(new_spec(), std::nullopt));
}

TEST(CliEditorAppend, NewFile) {
    KeyFileEditor ed{std::string(KeyFileEditor::kNewFile)};
    ed.add_prefix("jfi_sk_live_", Environment::live);
    ed.append_record(new_spec(), std::string("jfi_sk_live_"));
    EXPECT_EQ(ed.text().substr(0, 48), "version: 1\nprefixes:\n  jfi_sk_live_: live\nkeys:\n");
    EXPECT_EQ(ed.model().records.size(), 1u);
}

TEST(CliEditorAppend, CrLfFile) {
    const std::string text = "version: 1\r\nkeys:\r\n  - id: key_a\r\n    hash: " + H1 +
                             "\r\n    owner: u\r\n";
    KeyFileEditor ed(text);
    ed.append_record(new_spec(), std::nullopt);
    EXPECT_EQ(ed.text(), text + render_record(new_spec(), std::nullopt, {}, "\r\n"));
}

TEST(CliEditorAppend, AfterAFlowStyleRecord) {
    const std::string text = "version: 1\nkeys:\n  - {id: key_a, hash: " + H1 + ", owner: u}\n";
    KeyFileEditor ed(text);
    ed.append_record(new_spec(), std::nullopt);
    EXPECT_EQ(ed.text(), text + render_record(new_spec(), std::nullopt));
}

TEST(CliEditorAppend, DuplicateIdRefused) {
    KeyFileEditor ed(kThree);
    EXPECT_THROW(ed.append_record(new_spec("key_b"), std::nullopt), EditError);
    EXPECT_EQ(ed.text(), kThree);
}

TEST(CliEditorAppend, DuplicateHashRefusedByTheCore) {
    KeyFileEditor ed(kThree);
    KeySpec s = new_spec();
    parse_digest(H2, s.hash);
    EXPECT_THROW(ed.append_record(s, std::nullopt), EditError);
    EXPECT_EQ(ed.text(), kThree) << "nothing changes when the result would not load";
}

TEST(CliEditorAppend, QuotesWhatPlainWouldChange) {
    KeyFileEditor ed(kThree);
    KeySpec s = new_spec();
    s.owner = "null";  // plain, it would read as "absent"
    s.plan = "-pro";
    s.scopes = {"a,b", "#x"};
    ed.append_record(s, std::nullopt);
    EXPECT_NE(ed.text().find("owner: \"null\"\n"), std::string::npos) << ed.text();
    EXPECT_NE(ed.text().find("scopes: [\"a,b\", \"#x\"]"), std::string::npos);
    EXPECT_EQ(ed.model().records.back().fingerprint, fingerprint(s));
}

TEST(CliEditorRevoke, InsertsIntoTheRightRecordOnly) {
    KeyFileEditor ed(kThree);
    ed.revoke("key_b", T);
    const std::size_t at = kThree.find("  - id: key_c");
    expect_insert(kThree, ed.text(), at, "    revoked_at: 2026-11-18T11:06:40Z\n");
    EXPECT_EQ(ed.model().records[0].revoked_at, kNever);
    EXPECT_EQ(ed.model().records[1].revoked_at, T);
    EXPECT_EQ(ed.model().records[2].revoked_at, kNever);
}

TEST(CliEditorRevoke, FirstAndLastRecords) {
    KeyFileEditor ed(kThree);
    ed.revoke("key_a", T);
    // after the record's last field, before the blank line and comment that follow
    const std::size_t at = kThree.find("\n\n  # the second") + 1;
    expect_insert(kThree, ed.text(), at, "    revoked_at: 2026-11-18T11:06:40Z\n");

    KeyFileEditor ed2(kThree);
    ed2.revoke("key_c", T);
    EXPECT_EQ(ed2.text(), kThree + "    revoked_at: 2026-11-18T11:06:40Z\n");
}

TEST(CliEditorRevoke, FillsANullRevokedAtInPlace) {
    for (const std::string null_form : {"revoked_at:", "revoked_at: ~", "revoked_at: null"}) {
        const std::string text = "version: 1\nkeys:\n  - id: key_a\n    hash: " + H1 + "\n    " +
                                 null_form + "\n    owner: u\n";
        KeyFileEditor ed(text);
        ed.revoke("key_a", T);
        EXPECT_EQ(ed.text(), "version: 1\nkeys:\n  - id: key_a\n    hash: " + H1 +
                                 "\n    revoked_at: 2026-11-18T11:06:40Z\n    owner: u\n")
            << null_form;
    }
    // the null field first, on the "- " line
    const std::string text =
        "version: 1\nkeys:\n  - revoked_at: ~\n    id: key_a\n    hash: " + H1 + "\n    owner: u\n";
    KeyFileEditor ed(text);
    ed.revoke("key_a", T);
    const std::string head = "version: 1\nkeys:\n  - revoked_at: 2026-11-18T11:06:40Z\n";
    EXPECT_EQ(ed.text().substr(0, head.size()), head);
}

TEST(CliEditorRevoke, AfterABlockList) {
    // clang-format off
    const std::string text = "version: 1\nkeys:\n  - id: key_a\n    hash: " + H1 +
                             "\n    owner: u\n    scopes:\n      - a:read\n      - b:read\n"
                             "  - id: key_b\n    hash: " + H2 + "\n    owner: u\n";
    // clang-format on
    KeyFileEditor ed(text);
    ed.revoke("key_a", T);
    expect_insert(text, ed.text(), text.find("  - id: key_b"),
                  "    revoked_at: 2026-11-18T11:06:40Z\n");
}

TEST(CliEditorRevoke, DashOnItsOwnLine) {
    const std::string text = "version: 1\nkeys:\n  -\n    id: key_a\n    hash: " + H1 +
                             "\n    owner: u\n";
    KeyFileEditor ed(text);
    ed.revoke("key_a", T);
    EXPECT_EQ(ed.text(), text + "    revoked_at: 2026-11-18T11:06:40Z\n");
}

TEST(CliEditorRevoke, LastLineWithoutNewline) {
    const std::string text = "version: 1\nkeys:\n  - id: key_a\n    hash: " + H1 + "\n    owner: u";
    KeyFileEditor ed(text);
    ed.revoke("key_a", T);
    EXPECT_EQ(ed.text(), text + "\n    revoked_at: 2026-11-18T11:06:40Z\n");
}

TEST(CliEditorRevoke, UnknownId) {
    KeyFileEditor ed(kThree);
    EXPECT_THROW(ed.revoke("key_zzz", T), EditError);
    EXPECT_EQ(ed.text(), kThree);
}

TEST(CliEditorRevoke, AlreadyRevoked) {
    KeyFileEditor ed(kThree);
    ed.revoke("key_b", T);
    const std::string once = ed.text();
    try {
        ed.revoke("key_b", T + 10);
        FAIL() << "a second revoke must fail";
    } catch (const EditError &e) {
        EXPECT_NE(std::string(e.what()).find("already revoked"), std::string::npos) << e.what();
    }
    EXPECT_EQ(ed.text(), once);
}

TEST(CliEditorRevoke, FlowStyleRecordRefused) {
    const std::string text = "version: 1\nkeys:\n  - {id: key_a, hash: " + H1 + ", owner: u}\n";
    KeyFileEditor ed(text);
    EXPECT_THROW(ed.revoke("key_a", T), EditError);
    EXPECT_EQ(ed.text(), text);
}

// --- revocations scheduled ahead, several ids at once

std::string one_record(const std::string &revoked_at_line) {
    return "version: 1\nkeys:\n  - id: key_a\n    hash: " + H1 + "\n    owner: u\n" +
           revoked_at_line + "    plan: pro\n";
}

TEST(CliEditorRevoke, AScheduledRevocationIsBroughtForwardToNow) {
    const std::string text = one_record("    revoked_at: 2099-01-01T00:00:00Z\n");
    KeyFileEditor ed(text);
    ed.revoke("key_a", T);
    EXPECT_EQ(ed.text(), one_record("    revoked_at: 2026-11-18T11:06:40Z\n"));
    EXPECT_EQ(ed.model().records[0].revoked_at, T);
}

TEST(CliEditorRevoke, AnEarlierRevocationReplacesALaterOneButNeverTheReverse) {
    KeyFileEditor ed(one_record("    revoked_at: 2026-11-18T12:06:40Z\n"));  // T + 1h
    const auto first = ed.revoke_all({"key_a"}, T);
    ASSERT_EQ(first.size(), 1u);
    EXPECT_EQ(first[0].status, RevokeOutcome::Status::revoked);
    EXPECT_EQ(first[0].previous, T + 3600) << "the schedule it replaced";
    EXPECT_EQ(ed.model().records[0].revoked_at, T);

    const std::string once = ed.text();
    const auto later = ed.revoke_all({"key_a"}, T + 60);
    EXPECT_EQ(later[0].status, RevokeOutcome::Status::already_revoked);
    EXPECT_EQ(later[0].previous, T);
    EXPECT_EQ(ed.text(), once) << "a revocation in force is never moved later";
}

TEST(CliEditorRevoke, ARevocationAlreadyInForceKeepsItsTime) {
    const std::string text = one_record("    revoked_at: 2026-11-18T10:06:40Z\n");  // T - 1h
    KeyFileEditor ed(text);
    const auto out = ed.revoke_all({"key_a"}, T);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].status, RevokeOutcome::Status::already_revoked);
    EXPECT_EQ(out[0].previous, T - 3600);
    EXPECT_EQ(out[0].reason, "key \"key_a\" is already revoked since 2026-11-18T10:06:40Z");
    EXPECT_EQ(ed.text(), text);
    EXPECT_FALSE(ed.changed());
}

TEST(CliEditorRevoke, ReplacingAScheduleKeepsTheCommentAndSpacingAroundIt) {
    KeyFileEditor ed(
        one_record("    revoked_at:   \"2099-01-01T00:00:00Z\"   # planned cut-over\n"));
    ed.revoke("key_a", T);
    EXPECT_EQ(ed.text(),
              one_record("    revoked_at:   2026-11-18T11:06:40Z   # planned cut-over\n"));

    // on the "- " line, plain, with a comment
    // clang-format off
    const std::string text = "version: 1\nkeys:\n"
                             "  - revoked_at: 2099-01-01 # later\n"
                             "    id: key_a\n    hash: " + H1 + "\n    owner: u\n";
    // clang-format on
    KeyFileEditor dash(text);
    dash.revoke("key_a", T);
    // clang-format off
    EXPECT_EQ(dash.text(), "version: 1\nkeys:\n  - revoked_at: 2026-11-18T11:06:40Z # later\n"
                           "    id: key_a\n    hash: " + H1 + "\n    owner: u\n");
    // clang-format on
}

TEST(CliEditorRevoke, AMixedListRevokesTheRevocableOnesAndReportsTheRest) {
    // key_b revoked an hour before T; key_c scheduled for 2099
    std::string text = kThree;
    text.insert(text.find("  - id: key_c"), "    revoked_at: 2026-11-18T10:06:40Z\n");
    text += "    revoked_at: 2099-01-01T00:00:00Z\n";
    KeyFileEditor ed(text);

    const auto out = ed.revoke_all({"key_a", "key_b", "key_nope", "key_c", "key_a"}, T);
    ASSERT_EQ(out.size(), 4u) << "a repeated id counts once";
    EXPECT_EQ(out[0].id, "key_a");
    EXPECT_EQ(out[0].status, RevokeOutcome::Status::revoked);
    EXPECT_EQ(out[0].previous, kNever);
    EXPECT_EQ(out[1].id, "key_b");
    EXPECT_EQ(out[1].status, RevokeOutcome::Status::already_revoked);
    EXPECT_NE(out[1].reason.find("already revoked since 2026-11-18T10:06:40Z"), std::string::npos);
    EXPECT_EQ(out[2].id, "key_nope");
    EXPECT_EQ(out[2].status, RevokeOutcome::Status::unknown_id);
    EXPECT_EQ(out[2].reason, "no key with id \"key_nope\"");
    EXPECT_EQ(out[3].id, "key_c");
    EXPECT_EQ(out[3].status, RevokeOutcome::Status::revoked);

    // byte for byte: one line added to key_a, key_c's value replaced, the rest as it was
    std::string want = text;
    want.insert(want.find("\n\n  # the second") + 1, "    revoked_at: 2026-11-18T11:06:40Z\n");
    want.replace(want.rfind("2099-01-01T00:00:00Z"), 20, "2026-11-18T11:06:40Z");
    EXPECT_EQ(ed.text(), want);
    EXPECT_EQ(ed.model().records[0].revoked_at, T);
    EXPECT_EQ(ed.model().records[1].revoked_at, T - 3600);
    EXPECT_EQ(ed.model().records[2].revoked_at, T);
}

TEST(CliEditorRevoke, NothingRevocableLeavesTheTextAlone) {
    KeyFileEditor ed(kThree);
    ed.revoke("key_b", T - 10);
    const std::string once = ed.text();
    const auto out = ed.revoke_all({"key_zzz", "key_b"}, T);
    EXPECT_EQ(out[0].status, RevokeOutcome::Status::unknown_id);
    EXPECT_EQ(out[1].status, RevokeOutcome::Status::already_revoked);
    EXPECT_EQ(ed.text(), once);
}

TEST(CliEditorRevoke, ARecordItCannotEditDoesNotHoldBackTheOthers) {
    // clang-format off
    const std::string text = "version: 1\nkeys:\n  - {id: key_a, hash: " + H1 + ", owner: u}\n"
                             "  - id: key_b\n    hash: " + H2 + "\n    owner: u\n";
    // clang-format on
    KeyFileEditor ed(text);
    const auto out = ed.revoke_all({"key_a", "key_b"}, T);
    EXPECT_EQ(out[0].status, RevokeOutcome::Status::refused);
    EXPECT_NE(out[0].reason.find("block style"), std::string::npos) << out[0].reason;
    EXPECT_EQ(out[1].status, RevokeOutcome::Status::revoked);
    EXPECT_EQ(ed.text(), text + "    revoked_at: 2026-11-18T11:06:40Z\n");
}

TEST(CliEditorRevoke, ALayoutThatDefeatsTheEditIsNamedAndTheRestStillRevoked) {
    // the scheduled time on a line of its own: filling "revoked_at:" would
    // make a two-line scalar, which the re-read refuses
    // clang-format off
    const std::string a = "  - id: key_a\n    hash: " + H1 + "\n    owner: u\n"
                          "    revoked_at:\n      2099-01-01T00:00:00Z\n";
    // clang-format on
    const std::string b = "  - id: key_b\n    hash: " + H2 + "\n    owner: u\n";
    const std::string text = "version: 1\nkeys:\n" + a + b;
    KeyFileEditor ed(text);
    ASSERT_EQ(ed.model().records[0].revoked_at, 4070908800) << "the core reads the schedule";
    const auto out = ed.revoke_all({"key_a", "key_b"}, T);
    EXPECT_EQ(out[0].status, RevokeOutcome::Status::refused);
    EXPECT_NE(out[0].reason.find("cannot be revoked safely"), std::string::npos) << out[0].reason;
    EXPECT_EQ(out[1].status, RevokeOutcome::Status::revoked);
    EXPECT_EQ(ed.text(), text + "    revoked_at: 2026-11-18T11:06:40Z\n");
}

TEST(CliEditorPrefix, BlockFlowAndMissing) {
    KeyFileEditor block(kThree);
    block.add_prefix("wfk_", Environment::live);
    expect_insert(kThree, block.text(), kThree.find("keys:"), "  wfk_: live\n");

    const std::string flow = "version: 1\nprefixes: {a_: live}\nkeys:\n";
    KeyFileEditor f(flow);
    f.add_prefix("b_", Environment::test);
    EXPECT_EQ(f.text(), "version: 1\nprefixes: {a_: live, b_: test}\nkeys:\n");

    KeyFileEditor none("# c\nversion: 1\nkeys:\n");
    none.add_prefix("b_", Environment::test);
    EXPECT_EQ(none.text(), "# c\nversion: 1\nprefixes:\n  b_: test\nkeys:\n");

    KeyFileEditor empty("version: 1\nprefixes: {}\nkeys:\n");
    empty.add_prefix("b_", Environment::test);
    EXPECT_EQ(empty.text(), "version: 1\nprefixes:\n  b_: test\nkeys:\n");

    EXPECT_THROW(block.add_prefix("wfk_", Environment::test), EditError);
}

TEST(CliEditorNotes, PrefixNotes) {
    KeyFileEditor ed(kThree);
    ed.append_record(new_spec("key_x"), std::string("jfi_sk_live_"));
    ed.append_record(new_spec("key_y"), std::string());
    const auto notes = prefix_notes(ed.text(), ed.model());
    ASSERT_EQ(notes.size(), 5u);
    EXPECT_FALSE(notes[0].has_value());
    EXPECT_FALSE(notes[1].has_value()) << "a comment before a record is not its note";
    EXPECT_EQ(notes[3], std::optional<std::string>("jfi_sk_live_"));
    EXPECT_EQ(notes[4], std::optional<std::string>(""));
}

TEST(CliEditorAppend, AllowedIpsAreWrittenAndReadBack) {
    KeySpec spec = new_spec();
    for (const char *text : {"203.0.113.0/24", "2001:db8::/32", "198.51.100.7", "::1"}) {
        IpNetwork n{};
        std::string error;
        ASSERT_TRUE(parse_network(text, n, error)) << error;
        spec.allowed_ips.push_back(n);
    }
    KeyFileEditor ed(kThree);
    ed.append_record(spec, std::string("jfi_sk_live_"));
    // IPv6 quoted: a plain "2001:db8::" would read as a map.
    EXPECT_NE(ed.text().find("    limits: {write: 500r/m}\n"
                             "    allowed_ips: [203.0.113.0/24, \"2001:db8::/32\", 198.51.100.7, "
                             "\"::1\"]\n"
                             "    # prefix: jfi_sk_live_\n"),
              std::string::npos)
        << ed.text();
    EXPECT_EQ(ed.model().records[3].fingerprint, fingerprint(spec));
    EXPECT_NE(fingerprint(spec), fingerprint(new_spec()));
    const KeySpec back = ed.record("key_new");
    EXPECT_EQ(back.allowed_ips.size(), 4u);
    EXPECT_TRUE(back.allowed_ips == spec.allowed_ips);
    const KeyRecord *r = ed.model().image.table().find(spec.hash);
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r->networks, 4u);
}

TEST(CliEditor, RefusesAFileNginxWouldRefuse) {
    EXPECT_THROW(KeyFileEditor("version: 2\nkeys:\n"), KeyFileError);
    EXPECT_THROW(KeyFileEditor(kThree + "  - id: key_a\n    hash: " + H3 + "\n    owner: u\n"),
                 KeyFileError);
}

TEST(CliEditor, RecordReturnsTheFullSpec) {
    KeyFileEditor ed(kThree);
    const KeySpec c = ed.record("key_c");
    EXPECT_EQ(c.owner, "user_3");
    ASSERT_EQ(c.limits.size(), 1u);
    EXPECT_EQ(c.limits[0].first, "write");
    EXPECT_THROW(ed.record("key_nope"), EditError);
}

}  // namespace
}  // namespace apikey::cli
