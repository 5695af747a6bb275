// One change to a key file, start to finish: lock, read, edit, validate,
// write atomically. Readers (nginx, `apikeyctl list`) need no lock: they
// only ever see a whole old file or a whole new one.
#pragma once

#include <chrono>
#include <functional>
#include <string>

#include "cli/atomic_file.h"
#include "cli/key_file_editor.h"

namespace apikey::cli {

struct UpdateOptions {
    bool create_if_missing = false;  // start from KeyFileEditor::kNewFile
    std::chrono::milliseconds lock_wait{10000};
    WriteHook hook;  // for tests
};

struct UpdateResult {
    std::string path;  // the file written (a symlink's target)
    bool created = false;
    bool changed = false;
    std::string warning;  // see write_file_atomically
};

// edit may throw; then nothing is written. Throws Error naming the file,
// with "path:line: reason" when the current file does not load.
UpdateResult update_key_file(const std::string &path,
                             const std::function<void(KeyFileEditor &)> &edit,
                             const UpdateOptions &options = {});

// Reads and parses a key file without locking; throws Error like above.
KeyFileEditor open_key_file(const std::string &path);

}  // namespace apikey::cli
