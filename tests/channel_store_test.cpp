// The channel's on-disk store (channel_store.h) on real files: the published
// copy and the revocations file round-trip, the module's key-file loader
// reads the published copy as it is, every truncation and an edit are
// refused, malformed and oversized files are refused as a whole, a missing
// file is told apart from a broken one, paths that are not regular files
// are refused without blocking, and a write that fails leaves the old file
// byte for byte and no temporary file behind.
#include <gtest/gtest.h>

#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "core/channel_store.h"
#include "core/digest.h"
#include "core/key_file.h"

namespace apikey {
namespace {

namespace fs = std::filesystem;

std::string hex_sha256(std::string_view data) {
    char text[71];
    format_digest(sha256(data), text);
    return std::string(text + 7, 64);  // without "sha256:"
}

std::string header_for(std::uint64_t version, std::string_view content) {
    return "# apikey published version " + std::to_string(version) + " sha256 " +
           hex_sha256(content) + "\n";
}

// A key file the loader accepts (SPEC.md): two keys.
std::string key_file_text() {
    char a[71], b[71];
    format_digest(sha256("abc"), a);
    format_digest(sha256("def"), b);
    return "# published by the channel\nversion: 1\nkeys:\n"
           "  - id: key_a\n    hash: " +
           std::string(a, 71) +
           "\n    owner: user_1\n    scopes: [read]\n"
           "  - id: key_b\n    hash: " +
           std::string(b, 71) + "\n    owner: user_2\n";
}

class ChannelStore : public ::testing::Test {
protected:
    void SetUp() override {
        std::string templ = (fs::temp_directory_path() / "channel_store_test.XXXXXX").string();
        ASSERT_NE(::mkdtemp(templ.data()), nullptr);
        dir_ = templ;
        copy_ = dir_ + "/published.yaml";
        revocations_ = dir_ + "/revocations";
    }
    void TearDown() override {
        ::chmod(dir_.c_str(), 0700);
        std::error_code ec;
        fs::remove_all(dir_, ec);
    }

    static std::string slurp(const std::string &p) {
        std::ifstream in(p, std::ios::binary);
        std::stringstream ss;
        ss << in.rdbuf();
        return ss.str();
    }
    static void put(const std::string &p, const std::string &text) {
        std::ofstream(p, std::ios::binary | std::ios::trunc) << text;
    }
    static mode_t mode_of(const std::string &p) {
        struct stat st;
        EXPECT_EQ(::stat(p.c_str(), &st), 0);
        return st.st_mode & 07777;
    }
    // Names in the directory other than these.
    std::vector<std::string> strays(std::vector<std::string> expected) const {
        std::vector<std::string> out;
        for (const auto &e : fs::directory_iterator(dir_)) {
            const std::string name = e.path().filename().string();
            bool known = false;
            for (const auto &x : expected) known = known || name == x;
            if (!known) out.push_back(name);
        }
        return out;
    }

    // The copy at path is refused, with a reason that names the path and says `why`.
    void expect_copy_refused(const std::string &path, const std::string &why) {
        std::uint64_t version = 7;
        std::string sha = "unchanged", content = "unchanged", error;
        bool missing = true;
        EXPECT_FALSE(read_published_version(path, version, sha, missing, error));
        EXPECT_FALSE(missing) << "refused, not missing";
        EXPECT_EQ(error.rfind(path + ":", 0), 0u) << error;
        EXPECT_NE(error.find(why), std::string::npos) << error << "\nlacks " << why;
        EXPECT_EQ(version, 7u);
        error.clear();
        missing = true;
        EXPECT_FALSE(read_published_copy(path, version, sha, content, missing, error));
        EXPECT_FALSE(missing);
        EXPECT_TRUE(content.empty()) << "nothing of a refused copy is handed out";
        EXPECT_FALSE(error.empty());
    }

    // The revocations file holding `text` is refused as a whole, with `why`.
    void expect_revocations_refused(const std::string &text, const std::string &why) {
        put(revocations_, text);
        std::vector<StoredRevocation> out = {{"left_over", 1}};
        std::string error;
        EXPECT_FALSE(read_revocations(revocations_, out, error)) << text;
        EXPECT_TRUE(out.empty()) << "all or nothing";
        EXPECT_EQ(error.rfind(revocations_ + ":", 0), 0u) << error;
        EXPECT_NE(error.find(why), std::string::npos) << error << "\nlacks " << why;
    }

    std::string dir_, copy_, revocations_;
};

// ---- the published copy

TEST_F(ChannelStore, PublishedCopyRoundTrip) {
    const std::string content = key_file_text();
    std::string error;
    ASSERT_TRUE(write_published_copy(copy_, 42, hex_sha256(content), content, error)) << error;
    EXPECT_EQ(slurp(copy_), header_for(42, content) + content);
    EXPECT_EQ(mode_of(copy_), 0640u);
    EXPECT_TRUE(strays({"published.yaml"}).empty());

    std::uint64_t version = 0;
    std::string sha, read_back;
    bool missing = false;
    EXPECT_TRUE(read_published_version(copy_, version, sha, missing, error)) << error;
    EXPECT_EQ(version, 42u);
    EXPECT_EQ(sha, hex_sha256(content));
    EXPECT_TRUE(read_published_copy(copy_, version, sha, read_back, missing, error));
    EXPECT_EQ(read_back, content);

    // A newer version replaces it.
    const std::string newer = content + "  - id: key_c\n    hash: sha256:" + hex_sha256("x") +
                              "\n    owner: user_3\n";
    ASSERT_TRUE(write_published_copy(copy_, 43, hex_sha256(newer), newer, error)) << error;
    EXPECT_TRUE(read_published_copy(copy_, version, sha, read_back, missing, error));
    EXPECT_EQ(version, 43u);
    EXPECT_EQ(read_back, newer);
    EXPECT_TRUE(strays({"published.yaml"}).empty());
}

TEST_F(ChannelStore, PublishedCopyEdgeVersionsAndContent) {
    const std::uint64_t versions[] = {0, 1, std::numeric_limits<std::uint64_t>::max()};
    for (std::uint64_t v : versions) {
        for (const std::string &content : {std::string(), std::string("no newline at the end")}) {
            std::string error;
            ASSERT_TRUE(write_published_copy(copy_, v, hex_sha256(content), content, error));
            std::uint64_t version = 99;
            std::string sha, read_back;
            bool missing = false;
            EXPECT_TRUE(read_published_copy(copy_, version, sha, read_back, missing, error))
                << error;
            EXPECT_EQ(version, v);
            EXPECT_EQ(read_back, content);
        }
    }
    // A body larger than one read() and a first line at the largest.
    std::string big;
    for (int i = 0; big.size() < 300000; i++) big += "# line " + std::to_string(i) + "\n";
    std::string error;
    ASSERT_TRUE(write_published_copy(copy_, std::numeric_limits<std::uint64_t>::max(),
                                     hex_sha256(big), big, error));
    std::uint64_t version = 0;
    std::string sha, read_back;
    bool missing = false;
    EXPECT_TRUE(read_published_copy(copy_, version, sha, read_back, missing, error));
    EXPECT_EQ(read_back, big);
}

TEST_F(ChannelStore, KeyFileLoaderReadsThePublishedCopy) {
    const std::string content = key_file_text();
    std::string error;
    ASSERT_TRUE(write_published_copy(copy_, 5, hex_sha256(content), content, error)) << error;
    const TableImage image = load_key_file(copy_);
    const KeyTable table = image.table();
    ASSERT_TRUE(table.valid());
    EXPECT_EQ(table.key_count(), 2u);
    const KeyRecord *a = table.find(sha256("abc"));
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(table.text(a->id), "key_a");
    EXPECT_NE(table.find(sha256("def")), nullptr);
}

TEST_F(ChannelStore, PublishedCopyWriteChecksTheHash) {
    const std::string content = key_file_text();
    std::string error;
    EXPECT_FALSE(write_published_copy(copy_, 1, hex_sha256("other"), content, error));
    EXPECT_NE(error.find("sha256"), std::string::npos) << error;
    std::string upper = hex_sha256(content);
    for (char &c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    EXPECT_FALSE(write_published_copy(copy_, 1, upper, content, error));
    EXPECT_FALSE(write_published_copy(copy_, 1, "abc", content, error));
    EXPECT_FALSE(fs::exists(copy_));
    EXPECT_TRUE(strays({}).empty());
}

TEST_F(ChannelStore, PublishedCopyMissing) {
    std::uint64_t version = 3;
    std::string sha, content = "x", error = "stale";
    bool missing = false;
    EXPECT_FALSE(read_published_version(copy_, version, sha, missing, error));
    EXPECT_TRUE(missing);
    EXPECT_TRUE(error.empty()) << "missing is not an error: " << error;
    missing = false;
    EXPECT_FALSE(read_published_copy(copy_, version, sha, content, missing, error));
    EXPECT_TRUE(missing);
    EXPECT_TRUE(content.empty());
    EXPECT_EQ(version, 3u);
}

TEST_F(ChannelStore, PublishedCopyEditsAreRefused) {
    const std::string content = key_file_text();
    const std::string good = header_for(9, content) + content;
    std::string edited = good;
    edited[edited.size() - 3] ^= 1;
    put(copy_, edited);
    expect_copy_refused(copy_, "truncated or edited");
    put(copy_, good + "\n");
    expect_copy_refused(copy_, "truncated or edited");
    put(copy_, header_for(9, "other") + content);
    expect_copy_refused(copy_, "truncated or edited");
    put(copy_, good);
    std::uint64_t version = 0;
    std::string sha, error;
    bool missing = false;
    EXPECT_TRUE(read_published_version(copy_, version, sha, missing, error)) << error;
}

TEST_F(ChannelStore, PublishedCopyEveryTruncationIsRefused) {
    const std::string content = "version: 1\nkeys: []\n";
    const std::string good = header_for(12, content) + content;
    for (std::size_t n = 0; n < good.size(); n++) {
        put(copy_, good.substr(0, n));
        std::uint64_t version = 0;
        std::string sha, error;
        bool missing = false;
        EXPECT_FALSE(read_published_version(copy_, version, sha, missing, error)) << "cut at " << n;
        EXPECT_FALSE(missing);
    }
}

TEST_F(ChannelStore, PublishedCopyMalformedHeadersAreRefused) {
    const std::string content = "version: 1\nkeys: []\n";
    const std::string sha = hex_sha256(content);
    std::string upper = sha;
    for (char &c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    const std::string lines[] = {
        "version: 1\n",
        "# apikey published version 1 sha256 " + sha,  // no newline before the body
        "# apikey published version 01 sha256 " + sha + "\n",
        "# apikey published version -1 sha256 " + sha + "\n",
        "# apikey published version +1 sha256 " + sha + "\n",
        "# apikey published version  1 sha256 " + sha + "\n",
        "# apikey published version 1  sha256 " + sha + "\n",
        "# apikey published version 1 sha256 " + sha + " \n",
        "# apikey published version 1 sha256 " + sha + "\r\n",
        "# apikey published version 1 sha256 " + upper + "\n",
        "# apikey published version 1 sha256 " + sha.substr(1) + "\n",
        "# apikey published version 1 sha256 sha256:" + sha + "\n",
        "# apikey published version 18446744073709551616 sha256 " + sha + "\n",
        "# apikey published version x sha256 " + sha + "\n",
        "# apikey published version 1\n",
        "# Apikey published version 1 sha256 " + sha + "\n",
    };
    for (const std::string &line : lines) {
        put(copy_, line + content);
        SCOPED_TRACE(line);
        expect_copy_refused(copy_, "not a published-copy header");
    }
    // A first line without end is refused after a bounded read.
    put(copy_, std::string(10 * 1024 * 1024, '#'));
    expect_copy_refused(copy_, "not a published-copy header");
}

TEST_F(ChannelStore, PublishedCopyHostilePathsAreRefused) {
    const std::string content = "version: 1\nkeys: []\n";
    std::string error;
    const std::string real = dir_ + "/real.yaml";
    ASSERT_TRUE(write_published_copy(real, 1, hex_sha256(content), content, error)) << error;

    fs::create_symlink("real.yaml", copy_);
    expect_copy_refused(copy_, "symbolic link");
    fs::remove(copy_);
    fs::create_symlink("nowhere.yaml", copy_);
    expect_copy_refused(copy_, "symbolic link");  // dangling: refused, not missing
    fs::remove(copy_);
    ASSERT_EQ(::mkfifo(copy_.c_str(), 0600), 0);
    expect_copy_refused(copy_, "FIFO");  // and does not block
    fs::remove(copy_);
    fs::create_directory(copy_);
    expect_copy_refused(copy_, "directory");
}

TEST_F(ChannelStore, PublishedCopyOversizedIsRefusedUnread) {
    // Sparse: the size alone refuses it, nothing is read.
    put(copy_, header_for(1, ""));
    ASSERT_EQ(::truncate(copy_.c_str(), static_cast<off_t>(kMaxKeyFileBytes) + 1), 0);
    expect_copy_refused(copy_, "larger than");
}

// Writes that fail at the write() (a file size limit applies to root too):
// the old file stays byte for byte, no temporary file is left.
TEST_F(ChannelStore, FailedWritesKeepTheOldFiles) {
    const std::string content = key_file_text();
    std::string error;
    ASSERT_TRUE(write_published_copy(copy_, 1, hex_sha256(content), content, error)) << error;
    ASSERT_TRUE(write_revocations(revocations_, {{"key_a", 10}}, error)) << error;
    const std::string old_copy = slurp(copy_);
    const std::string old_revocations = slurp(revocations_);

    struct rlimit saved;
    ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
    auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit small = saved;
    small.rlim_cur = 4096;
    ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
    const std::string big(1 << 20, '#');
    std::string copy_error, revocations_error;
    const bool copy_written = write_published_copy(copy_, 2, hex_sha256(big), big, copy_error);
    std::vector<StoredRevocation> many;
    for (int i = 0; i < 1000; i++) many.push_back({"key_" + std::to_string(i), i});
    const bool revocations_written = write_revocations(revocations_, many, revocations_error);
    ::setrlimit(RLIMIT_FSIZE, &saved);
    std::signal(SIGXFSZ, old_handler);

    EXPECT_FALSE(copy_written);
    EXPECT_NE(copy_error.find("cannot write"), std::string::npos) << copy_error;
    EXPECT_FALSE(revocations_written);
    EXPECT_NE(revocations_error.find("cannot write"), std::string::npos) << revocations_error;
    EXPECT_EQ(slurp(copy_), old_copy);
    EXPECT_EQ(slurp(revocations_), old_revocations);
    EXPECT_TRUE(strays({"published.yaml", "revocations"}).empty());
}

TEST_F(ChannelStore, UnwritableDirectoryKeepsTheOldFiles) {
    if (::geteuid() == 0) GTEST_SKIP() << "root writes a mode 0555 directory anyway";
    std::string error;
    ASSERT_TRUE(write_published_copy(copy_, 1, hex_sha256("a"), "a", error)) << error;
    ASSERT_TRUE(write_revocations(revocations_, {{"key_a", 10}}, error)) << error;
    const std::string old_copy = slurp(copy_);
    const std::string old_revocations = slurp(revocations_);
    ASSERT_EQ(::chmod(dir_.c_str(), 0555), 0);
    EXPECT_FALSE(write_published_copy(copy_, 2, hex_sha256("b"), "b", error));
    EXPECT_NE(error.find("cannot create a temporary file"), std::string::npos) << error;
    EXPECT_FALSE(write_revocations(revocations_, {{"key_b", 20}}, error));
    ::chmod(dir_.c_str(), 0700);
    EXPECT_EQ(slurp(copy_), old_copy);
    EXPECT_EQ(slurp(revocations_), old_revocations);
}

TEST_F(ChannelStore, ADirectoryInTheWayIsNotReplaced) {
    fs::create_directory(copy_);
    std::string error;
    EXPECT_FALSE(write_published_copy(copy_, 1, hex_sha256("a"), "a", error));
    EXPECT_NE(error.find("cannot replace"), std::string::npos) << error;
    EXPECT_TRUE(fs::is_directory(copy_));
    EXPECT_TRUE(strays({"published.yaml"}).empty());
    EXPECT_FALSE(write_published_copy(dir_ + "/", 1, hex_sha256("a"), "a", error));
}

// ---- the revocations file

TEST_F(ChannelStore, RevocationsRoundTrip) {
    const std::vector<StoredRevocation> entries = {
        {"key_a", 1700000000},
        {"key_b", 0},
        {std::string(128, 'k'), std::numeric_limits<std::int64_t>::max()},
        {"key_a", 1600000000},  // twice: kept as written, the overlay keeps the earlier
    };
    std::string error;
    ASSERT_TRUE(write_revocations(revocations_, entries, error)) << error;
    EXPECT_EQ(slurp(revocations_),
              "# apikey revocations v1\n1700000000 key_a\n0 key_b\n9223372036854775807 " +
                  std::string(128, 'k') + "\n1600000000 key_a\n# end 4\n");
    EXPECT_EQ(mode_of(revocations_), 0640u);
    std::vector<StoredRevocation> out = {{"left_over", 1}};
    ASSERT_TRUE(read_revocations(revocations_, out, error)) << error;
    EXPECT_EQ(out, entries);

    ASSERT_TRUE(write_revocations(revocations_, {}, error)) << error;
    EXPECT_EQ(slurp(revocations_), "# apikey revocations v1\n# end 0\n");
    ASSERT_TRUE(read_revocations(revocations_, out, error)) << error;
    EXPECT_TRUE(out.empty());
    EXPECT_TRUE(strays({"revocations"}).empty());
}

TEST_F(ChannelStore, RevocationsMissingIsEmpty) {
    std::vector<StoredRevocation> out = {{"left_over", 1}};
    std::string error;
    EXPECT_TRUE(read_revocations(revocations_, out, error)) << error;
    EXPECT_TRUE(out.empty());
}

TEST_F(ChannelStore, RevocationsWriteRefusesWhatCannotBeRead) {
    std::string error;
    const std::vector<StoredRevocation> bad[] = {
        {{"key a", 1}},
        {{"", 1}},
        {{"key\"a", 1}},
        {{"key_a\n1 key_b", 1}},
        {{std::string(129, 'k'), 1}},
        {{"key_a", 1}, {"key_b", -1}},
    };
    for (const auto &entries : bad) {
        EXPECT_FALSE(write_revocations(revocations_, entries, error)) << entries.back().id;
        EXPECT_FALSE(error.empty());
    }
    EXPECT_FALSE(fs::exists(revocations_));
    EXPECT_TRUE(strays({}).empty());
}

TEST_F(ChannelStore, RevocationsBrokenFilesAreRefusedWhole) {
    const std::string h = "# apikey revocations v1\n";
    expect_revocations_refused("", "empty");
    expect_revocations_refused("1 key_a\n# end 1\n", "not an apikey revocations file");
    expect_revocations_refused("# apikey revocations v2\n# end 0\n",
                               "not an apikey revocations file");
    expect_revocations_refused(h + "1 key_a\nabc key_b\n# end 2\n", "expected");
    expect_revocations_refused(h + "+1 key_a\n# end 1\n", "expected");
    expect_revocations_refused(h + "-1 key_a\n# end 1\n", "expected");
    expect_revocations_refused(h + "01 key_a\n# end 1\n", "expected");
    expect_revocations_refused(h + "9223372036854775808 key_a\n# end 1\n", "expected");
    expect_revocations_refused(h + "1.5 key_a\n# end 1\n", "expected");
    expect_revocations_refused(h + "1\n# end 1\n", "expected");
    expect_revocations_refused(h + "1  key_a\n# end 1\n", "not a valid key id");
    expect_revocations_refused(h + "1 key_a \n# end 1\n", "not a valid key id");
    expect_revocations_refused(h + "1 key_a\r\n# end 1\n", "not a valid key id");
    expect_revocations_refused(h + "1 key\"a\n# end 1\n", "not a valid key id");
    expect_revocations_refused(h + "1 " + std::string(129, 'k') + "\n# end 1\n",
                               "not a valid key id");
    expect_revocations_refused(h + "1 " + std::string(250, 'k') + "\n# end 1\n",
                               ":2: longer than 200 bytes");
    expect_revocations_refused(h + "\n# end 0\n", "expected");
    expect_revocations_refused(h + "# a comment\n# end 0\n", "neither an entry nor the end line");
    expect_revocations_refused(h + "1 key_a\n# end 2\n", "counts 2 entries, not 1");
    expect_revocations_refused(h + "1 key_a\n# end 01\n", "neither an entry nor the end line");
    expect_revocations_refused(h + "1 key_a\n# end 1\n2 key_b\n", "after the end line");
    expect_revocations_refused(h + "1 key_a\n", "no end line");
    expect_revocations_refused(h + "1 key_a\n# end 1", "no newline");
    expect_revocations_refused(h + std::string(100000, 'k'), ":2: longer than 200 bytes");
}

TEST_F(ChannelStore, RevocationsEveryTruncationIsRefused) {
    std::string error;
    ASSERT_TRUE(
        write_revocations(revocations_, {{"key_a", 1}, {"key_b", 22}, {"key_c", 333}}, error));
    const std::string good = slurp(revocations_);
    for (std::size_t n = 0; n < good.size(); n++) {
        put(revocations_, good.substr(0, n));
        std::vector<StoredRevocation> out;
        EXPECT_FALSE(read_revocations(revocations_, out, error)) << "cut at " << n;
        EXPECT_TRUE(out.empty());
    }
}

TEST_F(ChannelStore, RevocationsBounds) {
    // The most entries the store takes, and one more.
    std::string text = "# apikey revocations v1\n";
    for (std::size_t i = 0; i < kMaxStoredRevocations; i++) text += "1 k\n";
    put(revocations_, text + "# end " + std::to_string(kMaxStoredRevocations) + "\n");
    std::vector<StoredRevocation> out;
    std::string error;
    ASSERT_TRUE(read_revocations(revocations_, out, error)) << error;
    EXPECT_EQ(out.size(), kMaxStoredRevocations);
    expect_revocations_refused(text + "1 k\n# end " + std::to_string(kMaxStoredRevocations + 1) +
                                   "\n",
                               "more than 1000000 entries");

    std::vector<StoredRevocation> too_many(kMaxStoredRevocations + 1, StoredRevocation{"k", 1});
    EXPECT_FALSE(write_revocations(revocations_, too_many, error));
    EXPECT_NE(error.find("more than"), std::string::npos) << error;

    // Sparse and huge: refused by its size, unread.
    put(revocations_, "# apikey revocations v1\n");
    ASSERT_EQ(::truncate(revocations_.c_str(), off_t{1} << 32), 0);
    out = {{"left_over", 1}};
    EXPECT_FALSE(read_revocations(revocations_, out, error));
    EXPECT_TRUE(out.empty());
    EXPECT_NE(error.find("larger than"), std::string::npos) << error;
}

TEST_F(ChannelStore, RevocationsHostilePathsAreRefused) {
    std::string error;
    const std::string real = dir_ + "/real";
    ASSERT_TRUE(write_revocations(real, {{"key_a", 1}}, error)) << error;
    const auto refused = [&](const std::string &why) {
        std::vector<StoredRevocation> out = {{"left_over", 1}};
        EXPECT_FALSE(read_revocations(revocations_, out, error));
        EXPECT_TRUE(out.empty());
        EXPECT_NE(error.find(why), std::string::npos) << error;
    };
    fs::create_symlink("real", revocations_);
    refused("symbolic link");
    fs::remove(revocations_);
    fs::create_symlink("nowhere", revocations_);
    refused("symbolic link");  // dangling: refused, not "no revocations"
    fs::remove(revocations_);
    ASSERT_EQ(::mkfifo(revocations_.c_str(), 0600), 0);
    refused("FIFO");
    fs::remove(revocations_);
    fs::create_directory(revocations_);
    refused("directory");
}

}  // namespace
}  // namespace apikey
