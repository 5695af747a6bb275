#include "cli/atomic_file.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "cli/errors.h"
#include "cli/key_generator.h"

namespace apikey::cli {

namespace {

std::string errno_text(int err) { return std::strerror(err); }

[[noreturn]] void fail(const std::string &path, const std::string &what, int err) {
    throw Error(path + ": " + what + ": " + errno_text(err));
}

std::string directory_of(const std::string &path) {
    const std::size_t slash = path.rfind('/');
    if (slash == std::string::npos) return ".";
    if (slash == 0) return "/";
    return path.substr(0, slash);
}

std::string base_name(const std::string &path) {
    const std::size_t slash = path.rfind('/');
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

void write_all(int fd, std::string_view data, const std::string &temp) {
    while (!data.empty()) {
        const ssize_t n = ::write(fd, data.data(), data.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            fail(temp, "cannot write", errno);
        }
        data.remove_prefix(static_cast<std::size_t>(n));
    }
}

// Owns the temp file until it has been renamed into place.
class TempFile {
public:
    // O_EXCL and O_NOFOLLOW: a name in the key file's directory is only
    // ours once the kernel has made a new file for it, so a file or link
    // planted there in advance is never opened, followed or truncated.
    TempFile(const std::string &target, mode_t mode) {
        const std::string stem = directory_of(target) + "/." + base_name(target) + ".tmp.";
        for (int attempt = 0; attempt < 100; attempt++) {
            std::string name = stem + random_string(kBase62, 12);
            fd_ = ::open(name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
            if (fd_ >= 0) {
                path_ = std::move(name);
                return;
            }
            if (errno != EEXIST)
                fail(directory_of(target), "cannot create a temporary file", errno);
        }
        throw Error(directory_of(target) +
                    ": cannot create a temporary file: 100 random names were all taken");
    }
    ~TempFile() {
        if (fd_ >= 0) ::close(fd_);
        if (!path_.empty()) ::unlink(path_.c_str());
    }
    TempFile(const TempFile &) = delete;
    TempFile &operator=(const TempFile &) = delete;

    int fd() const noexcept { return fd_; }
    const std::string &path() const noexcept { return path_; }

    // close() can report a deferred write error (NFS): check it.
    void close() {
        const int fd = fd_;
        fd_ = -1;
        if (::close(fd) != 0) fail(path_, "cannot close", errno);
    }
    void release() noexcept { path_.clear(); }

private:
    int fd_ = -1;
    std::string path_;
};

mode_t current_umask() {
    const mode_t mask = ::umask(0);
    ::umask(mask);
    return mask;
}

}  // namespace

std::string write_file_atomically(const std::string &path, std::string_view data,
                                  const WriteHook &hook) {
    struct stat old;
    bool existed = ::stat(path.c_str(), &old) == 0;
    if (!existed && errno != ENOENT) fail(path, "cannot stat", errno);
    if (existed && !S_ISREG(old.st_mode)) throw Error(path + ": not a regular file");

    const mode_t mode = existed ? (old.st_mode & 07777) : (0644 & ~current_umask());
    // Born with at most the owner's share of the old mode, and given the old
    // owner, group and full mode before the first byte goes in: a process
    // can keep reading through a descriptor it opened while the file was
    // more open than the key file, so the temp file never is.
    TempFile temp(path, mode & 0600);
    // nginx workers may read the file as another user: a new owner or group
    // could lock them out, so failing to keep them is an error, not a shrug.
    if (existed && (old.st_uid != ::geteuid() || old.st_gid != ::getegid())) {
        if (::fchown(temp.fd(), old.st_uid, old.st_gid) != 0) {
            fail(path,
                 "cannot keep the owner and group (" + std::to_string(old.st_uid) + ":" +
                     std::to_string(old.st_gid) + ") of the file",
                 errno);
        }
    }
    // After fchown, which clears set-id bits.
    if (::fchmod(temp.fd(), mode) != 0) fail(temp.path(), "cannot set the file mode", errno);
    if (hook) hook(WriteStage::temp_created, temp.path());
    write_all(temp.fd(), data, temp.path());
    if (hook) hook(WriteStage::data_written, temp.path());

    if (::fsync(temp.fd()) != 0) fail(temp.path(), "cannot sync", errno);
    temp.close();
    if (hook) hook(WriteStage::before_rename, temp.path());

    if (::rename(temp.path().c_str(), path.c_str()) != 0) {
        fail(path, "cannot replace the file", errno);
    }
    temp.release();
    if (hook) hook(WriteStage::renamed, path);

    // Without this, a power cut right after the rename could bring the old
    // directory entry back; the data itself is already safe.
    const std::string dir = directory_of(path);
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return dir + ": written, but cannot open the directory to sync it: " + errno_text(errno);
    const int rc = ::fsync(dfd);
    const int err = errno;
    ::close(dfd);
    if (rc != 0 && err != EINVAL)
        return dir + ": written, but cannot sync the directory: " + errno_text(err);
    return {};
}

bool read_file(const std::string &path, std::string &out) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return false;
        fail(path, "cannot open", errno);
    }
    struct stat st;
    if (::fstat(fd, &st) != 0) {
        const int err = errno;
        ::close(fd);
        fail(path, "cannot stat", err);
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        throw Error(path + ": not a regular file");
    }
    out.clear();
    out.reserve(static_cast<std::size_t>(st.st_size));
    char buf[65536];
    for (;;) {
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n == 0) break;
        if (n < 0) {
            if (errno == EINTR) continue;
            const int err = errno;
            ::close(fd);
            fail(path, "cannot read", err);
        }
        out.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fd);
    return true;
}

std::string resolve_link(const std::string &path) {
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) return path;
    char *real = ::realpath(path.c_str(), nullptr);
    if (!real) fail(path, "cannot resolve the symbolic link", errno);
    std::string out(real);
    std::free(real);
    return out;
}

std::string FileLock::lock_path_for(const std::string &path) {
    return directory_of(path) + "/." + base_name(path) + ".lock";
}

namespace {

const char *file_type(mode_t mode) {
    if (S_ISLNK(mode)) return "a symbolic link";
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO";
    if (S_ISSOCK(mode)) return "a socket";
    if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
    return "not a regular file";
}

[[noreturn]] void refuse_lock(const std::string &lock, const char *type) {
    throw Error(lock + ": the lock file is " + std::string(type) +
                ", not a regular file; refusing to use it (remove it and try again)");
}

}  // namespace

FileLock::FileLock(const std::string &path, std::chrono::milliseconds wait) {
    const std::string lock = lock_path_for(path);
    // apikeyctl often runs as root, and whoever can write the key file's
    // directory could plant a symlink or a device at this name to have root
    // create or open a file of their choosing. So: look first, never follow
    // a link, never block on a FIFO, never truncate, and check again on the
    // descriptor itself, since the name can change between the two.
    struct stat st;
    if (::lstat(lock.c_str(), &st) == 0) {
        if (!S_ISREG(st.st_mode)) refuse_lock(lock, file_type(st.st_mode));
    } else if (errno != ENOENT) {
        fail(lock, "cannot look at the lock file", errno);
    }
    constexpr int kFlags = O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
    fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | kFlags, 0644);
    if (fd_ < 0 && (errno == EACCES || errno == EROFS)) {
        // flock works on a read-only descriptor: someone else's lock file will do.
        fd_ = ::open(lock.c_str(), O_RDONLY | kFlags);
    }
    if (fd_ < 0) {
        if (errno == ELOOP) refuse_lock(lock, "a symbolic link");
        fail(lock, "cannot open the lock file", errno);
    }
    if (::fstat(fd_, &st) != 0) {
        const int err = errno;
        ::close(fd_);
        fd_ = -1;
        fail(lock, "cannot stat the lock file", err);
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd_);
        fd_ = -1;
        refuse_lock(lock, file_type(st.st_mode));
    }

    const auto deadline = std::chrono::steady_clock::now() + wait;
    while (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
        const int err = errno;
        if (err == EINTR) continue;
        if (err != EWOULDBLOCK || std::chrono::steady_clock::now() >= deadline) {
            ::close(fd_);
            fd_ = -1;
            if (err == EWOULDBLOCK) {
                throw Error(path + ": locked by another apikeyctl (lock file " + lock +
                            "); try again");
            }
            fail(lock, "cannot lock", err);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

FileLock::~FileLock() {
    if (fd_ >= 0) ::close(fd_);  // closing the descriptor drops the flock
}

}  // namespace apikey::cli
