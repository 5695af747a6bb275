#include "cli/key_file_update.h"

#include "cli/errors.h"

namespace apikey::cli {

namespace {

KeyFileEditor parse_or_explain(const std::string &path, std::string text) {
    if (text.size() > kMaxKeyFileBytes) throw Error(path + ": the file is larger than 1 GiB");
    try {
        return KeyFileEditor(std::move(text));
    } catch (const KeyFileError &e) {
        // The form nginx -t prints, so the two point at the same line.
        throw Error(path + ":" + std::to_string(e.line()) + ": " + e.what());
    }
}

}  // namespace

KeyFileEditor open_key_file(const std::string &path) {
    std::string text;
    if (!read_file(path, text)) throw Error(path + ": cannot open: No such file or directory");
    return parse_or_explain(path, std::move(text));
}

UpdateResult update_key_file(const std::string &path,
                             const std::function<void(KeyFileEditor &)> &edit,
                             const UpdateOptions &options) {
    UpdateResult result;
    result.path = resolve_link(path);
    FileLock lock(result.path, options.lock_wait);

    // Read only under the lock, so two concurrent edits cannot both start
    // from the same old file and lose one of the changes.
    std::string text;
    if (!read_file(result.path, text)) {
        if (!options.create_if_missing) {
            throw Error(result.path + ": cannot open: No such file or directory");
        }
        text = std::string(KeyFileEditor::kNewFile);
        result.created = true;
    }
    KeyFileEditor editor = parse_or_explain(result.path, std::move(text));
    try {
        edit(editor);
    } catch (const EditError &e) {
        throw Error(result.path + ": " + e.what());
    }
    result.changed = result.created || editor.changed();
    if (result.changed) {
        result.warning = write_file_atomically(result.path, editor.text(), options.hook);
    }
    return result;
}

}  // namespace apikey::cli
