// Replacing a file so that every reader (nginx at a reload, another
// apikeyctl) sees either the old bytes or the new ones, never a mix, and a
// crash or a full disk at any point leaves the old file in place.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <string_view>

namespace apikey::cli {

// Points in write_file_atomically where a test can make it fail (by throwing
// from the hook) to prove the old file survives.
enum class WriteStage {
    temp_created,   // the temp file exists, empty, with the final mode, owner and group
    data_written,   // it holds the new bytes, not yet synced
    before_rename,  // synced and closed
    renamed,        // the new file is in place; only the directory sync is left
};
using WriteHook = std::function<void(WriteStage, const std::string &temp_path)>;

// Writes data to a new temp file in path's directory (O_EXCL|O_NOFOLLOW,
// so nothing already at its name is ever opened) that has the old file's
// mode, owner and group (0644 minus the umask for a new file) before it gets
// any data, fsyncs it, renames it over path and fsyncs the directory. On any
// failure before the rename the temp file is removed and path is untouched.
// Throws Error.
// Returns a warning (else empty) when only the final directory sync failed:
// the new file is then in place, so that is not reported as a failure.
std::string write_file_atomically(const std::string &path, std::string_view data,
                                  const WriteHook &hook = {});

// The whole file; false if it does not exist. Throws Error for anything else.
bool read_file(const std::string &path, std::string &out);

// The file a path really names: a symlinked key file is replaced at its
// target, so the link survives the rename.
std::string resolve_link(const std::string &path);

// An exclusive flock on a lock file next to the key file (".NAME.lock").
// The key file itself cannot carry the lock: each write replaces its inode.
// The lock file is created if missing and never followed if it is a
// symlink, truncated or written: anything but a regular file at its name is
// refused with an Error. Waits up to `wait` for another apikeyctl, then
// throws Error.
class FileLock {
public:
    FileLock(const std::string &path, std::chrono::milliseconds wait);
    ~FileLock();
    FileLock(const FileLock &) = delete;
    FileLock &operator=(const FileLock &) = delete;

    static std::string lock_path_for(const std::string &path);

private:
    int fd_ = -1;
};

}  // namespace apikey::cli
