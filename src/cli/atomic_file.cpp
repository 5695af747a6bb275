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
#include <vector>

#include "cli/errors.h"

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
    explicit TempFile(const std::string &target) {
        std::string templ = directory_of(target) + "/." + base_name(target) + ".tmp.XXXXXX";
        std::vector<char> buf(templ.begin(), templ.end());
        buf.push_back('\0');
        fd_ = ::mkstemp(buf.data());
        if (fd_ < 0) fail(directory_of(target), "cannot create a temporary file", errno);
        path_.assign(buf.data());
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

    TempFile temp(path);
    if (hook) hook(WriteStage::temp_created, temp.path());
    write_all(temp.fd(), data, temp.path());
    if (hook) hook(WriteStage::data_written, temp.path());

    const mode_t mode = existed ? (old.st_mode & 07777) : (0644 & ~current_umask());
    if (::fchmod(temp.fd(), mode) != 0) fail(temp.path(), "cannot set the file mode", errno);
    // nginx workers may read the file as another user: a new owner or group
    // could lock them out, so failing to keep them is an error, not a shrug.
    if (existed && (old.st_uid != ::geteuid() || old.st_gid != ::getegid())) {
        if (::fchown(temp.fd(), old.st_uid, old.st_gid) != 0) {
            fail(path, "cannot keep the owner and group (" + std::to_string(old.st_uid) + ":" +
                           std::to_string(old.st_gid) + ") of the file",
                 errno);
        }
    }
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
    if (dfd < 0) return dir + ": written, but cannot open the directory to sync it: " + errno_text(errno);
    const int rc = ::fsync(dfd);
    const int err = errno;
    ::close(dfd);
    if (rc != 0 && err != EINVAL) return dir + ": written, but cannot sync the directory: " + errno_text(err);
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

FileLock::FileLock(const std::string &path, std::chrono::milliseconds wait) {
    const std::string lock = lock_path_for(path);
    fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0 && (errno == EACCES || errno == EROFS)) {
        // flock works on a read-only descriptor: someone else's lock file will do.
        fd_ = ::open(lock.c_str(), O_RDONLY | O_CLOEXEC);
    }
    if (fd_ < 0) fail(lock, "cannot open the lock file", errno);

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
