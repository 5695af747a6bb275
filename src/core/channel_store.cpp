#include "channel_store.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <initializer_list>
#include <limits>

#include "config_rules.h"
#include "key_file.h"

namespace apikey {

namespace {

constexpr std::string_view kPublishedPrefix = "# apikey published version ";
constexpr std::string_view kShaWord = " sha256 ";
// The prefix, 20 digits, the sha256 word, 64 hex digits and the newline
// are 120 bytes: a first line longer than this is not a header.
constexpr std::size_t kMaxHeaderLine = 128;
constexpr std::string_view kRevocationsHeader = "# apikey revocations v1";
constexpr std::string_view kEndPrefix = "# end ";
constexpr mode_t kFileMode = 0640;
constexpr std::size_t kChunk = 65536;

std::string errno_text(int err) { return std::strerror(err); }

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

const char *file_type(mode_t mode) noexcept {
    if (S_ISLNK(mode)) return "a symbolic link";
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO";
    if (S_ISSOCK(mode)) return "a socket";
    if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
    return "not a regular file";
}

class Fd {
public:
    Fd() noexcept = default;
    explicit Fd(int fd) noexcept : fd_(fd) {}
    ~Fd() {
        if (fd_ >= 0) ::close(fd_);
    }
    Fd(const Fd &) = delete;
    Fd &operator=(const Fd &) = delete;
    int get() const noexcept { return fd_; }
    void reset(int fd) noexcept {
        if (fd_ >= 0) ::close(fd_);
        fd_ = fd;
    }
    // close() can report a deferred write error (NFS): the writer checks it.
    int close() noexcept {
        const int fd = fd_;
        fd_ = -1;
        return ::close(fd);
    }

private:
    int fd_ = -1;
};

bool is_lower_hex(std::string_view s, std::size_t length) noexcept {
    if (s.size() != length) return false;
    for (char c : s) {
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    }
    return true;
}

// Decimal digits only, no sign, no leading zero (one spelling per number,
// as the writer spells it), at most max.
bool parse_decimal(std::string_view s, std::uint64_t max, std::uint64_t &out) noexcept {
    if (s.empty() || s.size() > 20 || (s.size() > 1 && s[0] == '0')) return false;
    std::uint64_t v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return false;
        const std::uint64_t d = static_cast<std::uint64_t>(c - '0');
        if (v > (max - d) / 10) return false;
        v = v * 10 + d;
    }
    out = v;
    return true;
}

// SHA-256 through EVP, fed in pieces: the published copy is hashed as it
// is read, never held whole just to be hashed.
class Sha256Stream {
public:
    Sha256Stream() noexcept : ctx_(EVP_MD_CTX_new()) {
        ok_ = ctx_ != nullptr && EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) == 1;
    }
    ~Sha256Stream() { EVP_MD_CTX_free(ctx_); }
    Sha256Stream(const Sha256Stream &) = delete;
    Sha256Stream &operator=(const Sha256Stream &) = delete;

    void update(std::string_view data) noexcept {
        if (ok_ && !data.empty()) ok_ = EVP_DigestUpdate(ctx_, data.data(), data.size()) == 1;
    }
    // 64 lowercase hex digits, or false if OpenSSL failed anywhere.
    bool finish(std::string &hex) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int len = 0;
        if (!ok_ || EVP_DigestFinal_ex(ctx_, md, &len) != 1 || len != 32) return false;
        static constexpr char digits[] = "0123456789abcdef";
        hex.resize(64);
        for (unsigned i = 0; i < 32; i++) {
            hex[2 * i] = digits[md[i] >> 4];
            hex[2 * i + 1] = digits[md[i] & 0xf];
        }
        return true;
    }

private:
    EVP_MD_CTX *ctx_;
    bool ok_;
};

// ---- writing ------------------------------------------------------------

bool write_all(int fd, std::string_view data) noexcept {
    while (!data.empty()) {
        const ssize_t n = ::write(fd, data.data(), data.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        data.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
}

// A name in the target's directory nobody else uses: the pid, a counter and
// the clock. O_EXCL makes a clash (or a planted file) a retry, not a risk.
std::string temp_name(const std::string &path) {
    static std::atomic<std::uint64_t> counter{0};
    const auto tick = std::chrono::steady_clock::now().time_since_epoch().count();
    return directory_of(path) + "/." + base_name(path) + ".tmp." + std::to_string(::getpid()) +
           "." + std::to_string(counter.fetch_add(1, std::memory_order_relaxed)) + "." +
           std::to_string(static_cast<std::uint64_t>(tick) % 1000000007u);
}

// The pieces, one after the other, in a new file that replaces path.
bool sync_directory_of(const std::string &path, std::string &error) noexcept;

bool write_atomically(const std::string &path, std::initializer_list<std::string_view> pieces,
                      std::string &error) {
    if (base_name(path).empty()) {
        error = path + ": not a file name";
        return false;
    }
    std::string temp;
    Fd fd;
    for (int attempt = 0; attempt < 100 && fd.get() < 0; attempt++) {
        temp = temp_name(path);
        // O_EXCL and O_NOFOLLOW: the name is only ours once the kernel made
        // a new file for it; a file or link planted there is never opened.
        fd.reset(
            ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, kFileMode));
        if (fd.get() < 0 && errno != EEXIST) {
            error = directory_of(path) + ": cannot create a temporary file: " + errno_text(errno);
            return false;
        }
    }
    if (fd.get() < 0) {
        error = directory_of(path) + ": cannot create a temporary file: the names were all taken";
        return false;
    }
    // From here on, a failure removes the temp file; the old file is untouched.
    const auto fail = [&](const std::string &what, int err) {
        fd.reset(-1);
        ::unlink(temp.c_str());
        error = temp + ": " + what + ": " + errno_text(err);
        return false;
    };
    // Exactly 0640 whatever the umask: the workers that read it at start
    // run as the user that wrote it, and nobody else needs to write it.
    if (::fchmod(fd.get(), kFileMode) != 0) return fail("cannot set the file mode", errno);
    for (std::string_view piece : pieces) {
        if (!write_all(fd.get(), piece)) return fail("cannot write", errno);
    }
    if (::fsync(fd.get()) != 0) return fail("cannot sync", errno);
    if (fd.close() != 0) return fail("cannot close", errno);
    if (::rename(temp.c_str(), path.c_str()) != 0) {
        const int err = errno;
        ::unlink(temp.c_str());
        error = path + ": cannot replace the file: " + errno_text(err);
        return false;
    }
    return sync_directory_of(path, error);
}

// Without this, a power cut right after a rename could bring the old
// directory entry back.
bool sync_directory_of(const std::string &path, std::string &error) noexcept {
    const std::string dir = directory_of(path);
    Fd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (dfd.get() < 0) {
        error = dir + ": written, but cannot open the directory to sync it: " + errno_text(errno);
        return false;
    }
    if (::fsync(dfd.get()) != 0 && errno != EINVAL) {
        error = dir + ": written, but cannot sync the directory: " + errno_text(errno);
        return false;
    }
    return true;
}

// ---- reading ------------------------------------------------------------

enum class FileState { found, missing, refused };

// Opens path for reading if it is a regular file, and nothing else: no
// symlink is followed, no FIFO blocks the caller, and a file swapped in
// between the look and the open is refused.
FileState open_regular(const std::string &path, Fd &fd, struct stat &st, std::string &error) {
    struct stat seen;
    if (::lstat(path.c_str(), &seen) != 0) {
        if (errno == ENOENT) return FileState::missing;
        error = path + ": cannot look at the file: " + errno_text(errno);
        return FileState::refused;
    }
    if (!S_ISREG(seen.st_mode)) {
        error = path + ": " + file_type(seen.st_mode) + ", not a regular file: refused";
        return FileState::refused;
    }
    fd.reset(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
    if (fd.get() < 0) {
        if (errno == ENOENT) return FileState::missing;  // removed since
        if (errno == ELOOP) {
            error = path + ": a symbolic link, not a regular file: refused";
        } else {
            error = path + ": cannot open: " + errno_text(errno);
        }
        return FileState::refused;
    }
    if (::fstat(fd.get(), &st) != 0) {
        error = path + ": cannot stat: " + errno_text(errno);
        return FileState::refused;
    }
    if (!S_ISREG(st.st_mode) || st.st_dev != seen.st_dev || st.st_ino != seen.st_ino) {
        error = path + ": replaced while it was opened: refused";
        return FileState::refused;
    }
    return FileState::found;
}

// One read(), retried on EINTR: bytes read, 0 at the end, -1 on error.
ssize_t read_some(int fd, char *buf, std::size_t size) noexcept {
    for (;;) {
        const ssize_t n = ::read(fd, buf, size);
        if (n >= 0 || errno != EINTR) return n;
    }
}

bool parse_published_header(std::string_view line, std::uint64_t &version, std::string &sha) {
    if (line.size() < kPublishedPrefix.size() + 1 || line.back() != '\n') return false;
    line.remove_suffix(1);
    if (line.substr(0, kPublishedPrefix.size()) != kPublishedPrefix) return false;
    line.remove_prefix(kPublishedPrefix.size());
    const std::size_t space = line.find(' ');
    if (space == std::string_view::npos) return false;
    std::uint64_t v = 0;
    if (!parse_decimal(line.substr(0, space), std::numeric_limits<std::uint64_t>::max(), v)) {
        return false;
    }
    line.remove_prefix(space);
    if (line.substr(0, kShaWord.size()) != kShaWord) return false;
    line.remove_prefix(kShaWord.size());
    if (!is_lower_hex(line, 64)) return false;
    version = v;
    sha.assign(line);
    return true;
}

FileState read_copy(const std::string &path, std::uint64_t &version, std::string &sha,
                    std::string *content, std::string &error) {
    Fd fd;
    struct stat st;
    const FileState opened = open_regular(path, fd, st, error);
    if (opened != FileState::found) return opened;
    if (static_cast<std::uint64_t>(st.st_size) > kMaxKeyFileBytes) {
        error = path + ": larger than a key file may be: refused";
        return FileState::refused;
    }
    if (content != nullptr) content->reserve(static_cast<std::size_t>(st.st_size));

    std::string header;
    bool in_header = true;
    std::uint64_t total = 0;
    std::uint64_t header_version = 0;
    std::string header_sha;
    Sha256Stream hash;
    char buf[kChunk];
    for (;;) {
        const ssize_t n = read_some(fd.get(), buf, sizeof buf);
        if (n < 0) {
            error = path + ": cannot read: " + errno_text(errno);
            return FileState::refused;
        }
        if (n == 0) break;
        total += static_cast<std::uint64_t>(n);
        if (total > kMaxKeyFileBytes) {  // it grew while it was read
            error = path + ": larger than a key file may be: refused";
            return FileState::refused;
        }
        std::string_view chunk(buf, static_cast<std::size_t>(n));
        if (in_header) {
            const std::size_t nl = chunk.find('\n');
            const std::size_t take = nl == std::string_view::npos ? chunk.size() : nl + 1;
            if (header.size() + take > kMaxHeaderLine) {
                error = path + ": the first line is not a published-copy header: refused";
                return FileState::refused;
            }
            header.append(chunk.substr(0, take));
            chunk.remove_prefix(take);
            if (nl == std::string_view::npos) continue;
            in_header = false;
            if (!parse_published_header(header, header_version, header_sha)) {
                error = path + ": the first line is not a published-copy header: refused";
                return FileState::refused;
            }
        }
        hash.update(chunk);
        if (content != nullptr) content->append(chunk);
    }
    if (in_header) {
        error = path + (total == 0 ? ": empty" : ": the header line is cut off") + ": refused";
        return FileState::refused;
    }
    std::string actual;
    if (!hash.finish(actual)) {
        error = path + ": cannot compute SHA-256 (OpenSSL)";
        return FileState::refused;
    }
    if (actual != header_sha) {
        error = path + ": the content's sha256 is " + actual + ", the header says " + header_sha +
                " (truncated or edited): refused";
        return FileState::refused;
    }
    version = header_version;
    sha = std::move(header_sha);
    return FileState::found;
}

// Parses the revocations file a line at a time (each without its newline).
class RevocationsParser {
public:
    explicit RevocationsParser(const std::string &path) : path_(path) {}

    bool line(std::string_view text, std::string &error) {
        line_++;
        if (line_ == 1) {
            if (text == kRevocationsHeader) return true;
            return fail("not an apikey revocations file (v1)", error);
        }
        if (ended_) return fail("a line after the end line", error);
        if (!text.empty() && text[0] == '#') {
            std::uint64_t count = 0;
            if (text.substr(0, kEndPrefix.size()) != kEndPrefix ||
                !parse_decimal(text.substr(kEndPrefix.size()), kMaxStoredRevocations, count)) {
                return fail("neither an entry nor the end line", error);
            }
            if (count != entries_.size()) {
                return fail("the end line counts " + std::to_string(count) + " entries, not " +
                                std::to_string(entries_.size()),
                            error);
            }
            ended_ = true;
            return true;
        }
        if (entries_.size() >= kMaxStoredRevocations) {
            return fail("more than " + std::to_string(kMaxStoredRevocations) + " entries", error);
        }
        const std::size_t space = text.find(' ');
        std::uint64_t at = 0;
        if (space == std::string_view::npos ||
            !parse_decimal(text.substr(0, space),
                           static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()),
                           at)) {
            return fail("expected \"<unix seconds> <key id>\"", error);
        }
        const std::string_view id = text.substr(space + 1);
        if (!is_identifier(id)) return fail("not a valid key id", error);
        entries_.push_back(StoredRevocation{std::string(id), static_cast<std::int64_t>(at)});
        return true;
    }

    bool finish(std::string &error) {
        if (line_ == 0) return fail("empty", error);
        if (!ended_) return fail("no end line: the file is cut short", error);
        return true;
    }

    std::vector<StoredRevocation> &entries() { return entries_; }
    std::size_t line_number() const noexcept { return line_; }

private:
    bool fail(const std::string &reason, std::string &error) {
        error = path_ + ":" + std::to_string(line_) + ": " + reason;
        return false;
    }

    const std::string &path_;
    std::size_t line_ = 0;
    bool ended_ = false;
    std::vector<StoredRevocation> entries_;
};

bool read_revocations_file(const std::string &path, std::vector<StoredRevocation> &out,
                           std::string &error) {
    Fd fd;
    struct stat st;
    const FileState opened = open_regular(path, fd, st, error);
    if (opened == FileState::missing) return true;
    if (opened == FileState::refused) return false;
    // Header, the most entries of the longest lines, and the end line.
    constexpr std::uint64_t kMaxBytes = std::uint64_t{kMaxStoredRevocations + 3} *
                                        (kMaxRevocationLine + 1);
    if (static_cast<std::uint64_t>(st.st_size) > kMaxBytes) {
        error = path + ": larger than " + std::to_string(kMaxStoredRevocations) +
                " revocations can be: refused";
        return false;
    }

    RevocationsParser parser(path);
    std::string pending;  // a line split across reads, at most kMaxRevocationLine bytes
    std::uint64_t total = 0;
    char buf[kChunk];
    for (;;) {
        const ssize_t n = read_some(fd.get(), buf, sizeof buf);
        if (n < 0) {
            error = path + ": cannot read: " + errno_text(errno);
            return false;
        }
        if (n == 0) break;
        total += static_cast<std::uint64_t>(n);
        if (total > kMaxBytes) {
            error = path + ": larger than " + std::to_string(kMaxStoredRevocations) +
                    " revocations can be: refused";
            return false;
        }
        std::string_view chunk(buf, static_cast<std::size_t>(n));
        for (;;) {
            const std::size_t nl = chunk.find('\n');
            if (nl == std::string_view::npos) {
                pending.append(chunk);
                break;
            }
            std::string_view text = chunk.substr(0, nl);
            if (!pending.empty()) {
                pending.append(text);
                text = pending;
            }
            if (text.size() > kMaxRevocationLine) {
                error = path + ":" + std::to_string(parser.line_number() + 1) + ": longer than " +
                        std::to_string(kMaxRevocationLine) + " bytes";
                return false;
            }
            if (!parser.line(text, error)) return false;
            pending.clear();
            chunk.remove_prefix(nl + 1);
        }
        if (pending.size() > kMaxRevocationLine) {
            error = path + ":" + std::to_string(parser.line_number() + 1) + ": longer than " +
                    std::to_string(kMaxRevocationLine) + " bytes";
            return false;
        }
    }
    if (!pending.empty()) {
        error = path + ":" + std::to_string(parser.line_number() + 1) +
                ": the last line has no newline: the file is cut short";
        return false;
    }
    if (!parser.finish(error)) return false;
    out.swap(parser.entries());
    return true;
}

}  // namespace

bool write_published_copy(const std::string &path, std::uint64_t version,
                          std::string_view sha256_hex, std::string_view content,
                          std::string &error) noexcept {
    try {
        if (!is_lower_hex(sha256_hex, 64)) {
            error = path + ": the sha256 must be 64 lowercase hex digits";
            return false;
        }
        Sha256Stream hash;
        hash.update(content);
        std::string actual;
        if (!hash.finish(actual)) {
            error = path + ": cannot compute SHA-256 (OpenSSL)";
            return false;
        }
        if (actual != sha256_hex) {
            error = path + ": the content's sha256 is " + actual + ", not " +
                    std::string(sha256_hex);
            return false;
        }
        const std::string header = std::string(kPublishedPrefix) + std::to_string(version) +
                                   std::string(kShaWord) + actual + "\n";
        if (content.size() > kMaxKeyFileBytes - header.size()) {
            error = path + ": larger than a key file may be";
            return false;
        }
        return write_atomically(path, {header, content}, error);
    } catch (...) {  // std::bad_alloc
        error = "out of memory";
        return false;
    }
}

bool read_published_version(const std::string &path, std::uint64_t &version,
                            std::string &sha256_hex, bool &missing, std::string &error) noexcept {
    missing = false;
    error.clear();
    try {
        const FileState result = read_copy(path, version, sha256_hex, nullptr, error);
        missing = result == FileState::missing;
        return result == FileState::found;
    } catch (...) {
        error = "out of memory";
        return false;
    }
}

bool read_published_copy(const std::string &path, std::uint64_t &version, std::string &sha256_hex,
                         std::string &content, bool &missing, std::string &error) noexcept {
    missing = false;
    error.clear();
    content.clear();
    try {
        const FileState result = read_copy(path, version, sha256_hex, &content, error);
        missing = result == FileState::missing;
        if (result != FileState::found) content.clear();
        return result == FileState::found;
    } catch (...) {
        content.clear();
        error = "out of memory";
        return false;
    }
}

bool replace_file(const std::string &from, const std::string &to, std::string &error) noexcept {
    if (::rename(from.c_str(), to.c_str()) != 0) {
        error = to + ": cannot replace the file: " + errno_text(errno);
        return false;
    }
    return sync_directory_of(to, error);
}

bool write_revocations(const std::string &path, const std::vector<StoredRevocation> &entries,
                       std::string &error) noexcept {
    try {
        if (entries.size() > kMaxStoredRevocations) {
            error = path + ": more than " + std::to_string(kMaxStoredRevocations) + " revocations";
            return false;
        }
        std::string text(kRevocationsHeader);
        text += '\n';
        for (std::size_t i = 0; i < entries.size(); i++) {
            const StoredRevocation &e = entries[i];
            // The id is not quoted: one that fails is_identifier() may hold
            // anything, and this message goes to the error log.
            if (!is_identifier(e.id) || e.at < 0) {
                error = path + ": revocation " + std::to_string(i + 1) +
                        (e.at < 0 ? " has a negative time" : " has an invalid key id");
                return false;
            }
            text += std::to_string(e.at);
            text += ' ';
            text += e.id;
            text += '\n';
        }
        text += kEndPrefix;
        text += std::to_string(entries.size());
        text += '\n';
        return write_atomically(path, {text}, error);
    } catch (...) {
        error = "out of memory";
        return false;
    }
}

bool read_revocations(const std::string &path, std::vector<StoredRevocation> &out,
                      std::string &error) noexcept {
    out.clear();
    try {
        return read_revocations_file(path, out, error);
    } catch (...) {
        out.clear();
        error = "out of memory";
        return false;
    }
}

}  // namespace apikey
