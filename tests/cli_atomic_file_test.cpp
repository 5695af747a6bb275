// apikeyctl's file writer: a failure at any point before the rename (a
// simulated crash, or a real write error from a file size limit) leaves the
// old file byte-identical and no temporary file behind; the mode survives.
#include <gtest/gtest.h>

#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "cli/atomic_file.h"
#include "cli/errors.h"
#include "cli/key_file_update.h"
#include "core/digest.h"

namespace apikey::cli {
namespace {

namespace fs = std::filesystem;

class CliAtomicFile : public ::testing::Test {
protected:
    void SetUp() override {
        std::string templ = (fs::temp_directory_path() / "apikeyctl-unit-XXXXXX").string();
        ASSERT_NE(::mkdtemp(templ.data()), nullptr);
        dir_ = templ;
        path_ = dir_ + "/keys.yaml";
    }
    void TearDown() override { fs::remove_all(dir_); }

    static std::string slurp(const std::string &p) {
        std::ifstream in(p, std::ios::binary);
        std::stringstream ss;
        ss << in.rdbuf();
        return ss.str();
    }
    static void put(const std::string &p, const std::string &text, mode_t mode) {
        std::ofstream(p, std::ios::binary) << text;
        ASSERT_EQ(::chmod(p.c_str(), mode), 0);
    }
    static mode_t mode_of(const std::string &p) {
        struct stat st;
        EXPECT_EQ(::stat(p.c_str(), &st), 0);
        return st.st_mode & 07777;
    }
    // Names in the directory other than the key file and its lock file.
    std::vector<std::string> strays() const {
        std::vector<std::string> out;
        for (const auto &e : fs::directory_iterator(dir_)) {
            const std::string name = e.path().filename().string();
            if (name != "keys.yaml" && name != ".keys.yaml.lock") out.push_back(name);
        }
        return out;
    }

    std::string dir_;
    std::string path_;
};

const std::string kOld = "version: 1\nkeys:\n";

TEST_F(CliAtomicFile, WritesNewFile) {
    const std::string warning = write_file_atomically(path_, "hello\n");
    EXPECT_EQ(warning, "");
    EXPECT_EQ(slurp(path_), "hello\n");
    const mode_t mask = ::umask(0);
    ::umask(mask);
    EXPECT_EQ(mode_of(path_), 0644 & ~mask);
    EXPECT_TRUE(strays().empty());
}

TEST_F(CliAtomicFile, ReplaceKeepsMode) {
    for (mode_t mode : {0600, 0640, 0604}) {
        put(path_, kOld, mode);
        write_file_atomically(path_, "new contents\n");
        EXPECT_EQ(slurp(path_), "new contents\n");
        EXPECT_EQ(mode_of(path_), mode);
    }
    EXPECT_TRUE(strays().empty());
}

TEST_F(CliAtomicFile, FailureBeforeRenameLeavesOldFile) {
    for (WriteStage stage :
         {WriteStage::temp_created, WriteStage::data_written, WriteStage::before_rename}) {
        put(path_, kOld, 0640);
        std::string temp_seen;
        auto crash = [&](WriteStage s, const std::string &temp) {
            if (s != stage) return;
            temp_seen = temp;
            EXPECT_TRUE(fs::exists(temp)) << "the temp file exists at the failure point";
            EXPECT_EQ(fs::path(temp).parent_path(), fs::path(dir_)) << "in the same directory";
            throw std::runtime_error("simulated crash");
        };
        EXPECT_THROW(write_file_atomically(path_, std::string(100000, 'x'), crash),
                     std::runtime_error);
        EXPECT_FALSE(temp_seen.empty());
        EXPECT_EQ(slurp(path_), kOld)
            << "old file byte-identical (stage " << static_cast<int>(stage) << ")";
        EXPECT_EQ(mode_of(path_), 0640u);
        EXPECT_TRUE(strays().empty())
            << "no temp file left: " << (strays().empty() ? "" : strays()[0]);
    }
}

TEST_F(CliAtomicFile, FailureAfterRenameKeepsNewFile) {
    put(path_, kOld, 0600);
    auto late = [](WriteStage s, const std::string &) {
        if (s == WriteStage::renamed) throw std::runtime_error("after rename");
    };
    EXPECT_THROW(write_file_atomically(path_, "new\n", late), std::runtime_error);
    EXPECT_EQ(slurp(path_), "new\n");
    EXPECT_TRUE(strays().empty());
}

TEST_F(CliAtomicFile, RealWriteErrorLeavesOldFile) {
    // A file size limit makes write() fail with EFBIG part-way, as a full
    // disk fails with ENOSPC: a real error from the kernel, not a hook.
    put(path_, kOld, 0644);
    struct rlimit saved;
    ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
    auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit small = saved;
    small.rlim_cur = 4096;
    ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
    std::string message;
    try {
        write_file_atomically(path_, std::string(1 << 20, 'y'));
    } catch (const Error &e) {
        message = e.what();
    }
    ::setrlimit(RLIMIT_FSIZE, &saved);
    std::signal(SIGXFSZ, old_handler);
    EXPECT_NE(message.find("cannot write"), std::string::npos) << message;
    EXPECT_NE(message.find(dir_), std::string::npos) << "the error names the file: " << message;
    EXPECT_EQ(slurp(path_), kOld);
    EXPECT_TRUE(strays().empty());
}

TEST_F(CliAtomicFile, ThroughASymlinkTheLinkSurvives) {
    put(dir_ + "/real.yaml", kOld, 0640);
    fs::create_symlink("real.yaml", path_);
    const std::string target = resolve_link(path_);
    write_file_atomically(target, "via link\n");
    EXPECT_TRUE(fs::is_symlink(path_));
    EXPECT_EQ(slurp(path_), "via link\n");
    EXPECT_EQ(mode_of(dir_ + "/real.yaml"), 0640u);
}

TEST_F(CliAtomicFile, ReadFile) {
    std::string out;
    EXPECT_FALSE(read_file(path_, out));
    put(path_, kOld, 0644);
    EXPECT_TRUE(read_file(path_, out));
    EXPECT_EQ(out, kOld);
    EXPECT_THROW(read_file(dir_, out), Error) << "a directory is not a key file";
}

TEST_F(CliAtomicFile, LockIsExclusive) {
    {
        FileLock first(path_, std::chrono::milliseconds(0));
        EXPECT_TRUE(fs::exists(FileLock::lock_path_for(path_)));
        EXPECT_THROW(FileLock(path_, std::chrono::milliseconds(50)), Error);
    }
    FileLock again(path_, std::chrono::milliseconds(0));  // released with the first
}

// --- the lock file and the temp file are never someone else's file

TEST_F(CliAtomicFile, ASymlinkedLockFileIsRefusedAndItsTargetUntouched) {
    const std::string victim = dir_ + "/victim";
    put(victim, "precious\n", 0600);
    put(path_, kOld, 0644);
    fs::create_symlink(victim, FileLock::lock_path_for(path_));
    try {
        FileLock lock(path_, std::chrono::milliseconds(0));
        FAIL() << "a symlinked lock file must be refused";
    } catch (const Error &e) {
        EXPECT_NE(std::string(e.what()).find("symbolic link"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find(FileLock::lock_path_for(path_)), std::string::npos);
    }
    EXPECT_THROW(update_key_file(path_, [](KeyFileEditor &) {}), Error);
    EXPECT_EQ(slurp(victim), "precious\n");
    EXPECT_EQ(mode_of(victim), 0600u);
    EXPECT_EQ(slurp(path_), kOld);
}

TEST_F(CliAtomicFile, ADanglingLockSymlinkCreatesNothingAtItsTarget) {
    const std::string target = dir_ + "/would-be-created";
    fs::create_symlink(target, FileLock::lock_path_for(path_));
    EXPECT_THROW(FileLock(path_, std::chrono::milliseconds(0)), Error);
    EXPECT_FALSE(fs::exists(target));
}

TEST_F(CliAtomicFile, ALockPathThatIsNotARegularFileIsRefusedWithoutHanging) {
    const std::string lock = FileLock::lock_path_for(path_);
    ASSERT_EQ(::mkfifo(lock.c_str(), 0600), 0);
    try {
        FileLock l(path_, std::chrono::milliseconds(0));
        FAIL() << "a FIFO is not a lock file";
    } catch (const Error &e) {
        EXPECT_NE(std::string(e.what()).find("a FIFO, not a regular file"), std::string::npos)
            << e.what();
    }
    fs::remove(lock);
    fs::create_directory(lock);
    EXPECT_THROW(FileLock(path_, std::chrono::milliseconds(0)), Error);
}

TEST_F(CliAtomicFile, AnExistingLockFileIsNeitherTruncatedNorWritten) {
    const std::string lock = FileLock::lock_path_for(path_);
    put(lock, "left by an older tool\n", 0644);
    { FileLock l(path_, std::chrono::milliseconds(0)); }
    EXPECT_EQ(slurp(lock), "left by an older tool\n");
}

TEST_F(CliAtomicFile, TheTempFileHasTheOldModeBeforeAnyDataGoesIn) {
    put(path_, kOld, 0640);
    bool seen = false;
    write_file_atomically(path_, "new\n", [&](WriteStage s, const std::string &temp) {
        if (s != WriteStage::temp_created) return;
        seen = true;
        struct stat st;
        ASSERT_EQ(::lstat(temp.c_str(), &st), 0);
        EXPECT_TRUE(S_ISREG(st.st_mode));
        EXPECT_EQ(st.st_mode & 07777, 0640u);
        EXPECT_EQ(st.st_size, 0);
        EXPECT_EQ(fs::path(temp).parent_path(), fs::path(dir_));
    });
    EXPECT_TRUE(seen);
    EXPECT_EQ(slurp(path_), "new\n");
    EXPECT_TRUE(strays().empty());
}

// --- the whole update: lock, read, edit, validate, write

std::string record(const std::string &id, const std::string &key) {
    char h[71];
    format_digest(sha256(key), h);
    return "  - id: " + id + "\n    hash: " + std::string(h, 71) + "\n    owner: u\n";
}

TEST_F(CliAtomicFile, UpdateFailureBeforeRenameLeavesOldFile) {
    const std::string old = "version: 1\nkeys:\n" + record("key_a", "k_aaaaaaaaaaaaaaaaaaaa");
    put(path_, old, 0640);
    UpdateOptions opt;
    opt.hook = [](WriteStage s, const std::string &) {
        if (s == WriteStage::before_rename) throw Error("disk full (simulated)");
    };
    const auto revoke = [](KeyFileEditor &ed) { ed.revoke("key_a", 1800000000); };
    EXPECT_THROW(update_key_file(path_, revoke, opt), Error);
    EXPECT_EQ(slurp(path_), old);
    EXPECT_TRUE(strays().empty());

    const UpdateResult r = update_key_file(path_, revoke);
    EXPECT_TRUE(r.changed);
    EXPECT_EQ(slurp(path_), old + "    revoked_at: 2027-01-15T08:00:00Z\n");
    EXPECT_EQ(mode_of(path_), 0640u);
}

TEST_F(CliAtomicFile, UpdateNamesTheFileAndLine) {
    put(path_, "version: 1\nkeys:\n  - id: key_a\n    owner: u\n", 0644);
    try {
        update_key_file(path_, [](KeyFileEditor &) {});
        FAIL();
    } catch (const Error &e) {
        EXPECT_EQ(std::string(e.what()), path_ + ":3: key record has no \"hash\"");
    }
    try {
        update_key_file(dir_ + "/missing.yaml", [](KeyFileEditor &) {});
        FAIL();
    } catch (const Error &e) {
        EXPECT_NE(std::string(e.what()).find("missing.yaml: cannot open"), std::string::npos);
    }
}

TEST_F(CliAtomicFile, UpdateEditErrorWritesNothing) {
    const std::string old = "version: 1\nkeys:\n" + record("key_a", "k_aaaaaaaaaaaaaaaaaaaa");
    put(path_, old, 0644);
    try {
        update_key_file(path_, [](KeyFileEditor &ed) { ed.revoke("key_b", 1800000000); });
        FAIL();
    } catch (const Error &e) {
        EXPECT_EQ(std::string(e.what()), path_ + ": no key with id \"key_b\"");
    }
    EXPECT_EQ(slurp(path_), old);
}

TEST_F(CliAtomicFile, UpdateCreatesMissingFile) {
    UpdateOptions opt;
    opt.create_if_missing = true;
    const auto unchanged = [](KeyFileEditor &) {};
    const UpdateResult r = update_key_file(path_, unchanged, opt);
    EXPECT_TRUE(r.created);
    EXPECT_EQ(slurp(path_), "version: 1\nkeys:\n");
}

}  // namespace
}  // namespace apikey::cli
