#include "cli/key_file_model.h"

namespace apikey::cli {

namespace {

// FNV-1a: not a security boundary, only a check that our own edits touched
// what they meant to, so speed over strength.
class Fnv {
public:
    void bytes(const void *data, std::size_t n) noexcept {
        const auto *p = static_cast<const unsigned char *>(data);
        for (std::size_t i = 0; i < n; i++) {
            h_ = (h_ ^ p[i]) * 0x100000001b3ull;
        }
    }
    // Length first, so ("ab","c") and ("a","bc") differ.
    void text(std::string_view s) noexcept {
        number(s.size());
        bytes(s.data(), s.size());
    }
    void number(std::uint64_t v) noexcept { bytes(&v, sizeof v); }
    std::uint64_t value() const noexcept { return h_; }

private:
    std::uint64_t h_ = 0xcbf29ce484222325ull;
};

class ModelSink final : public KeyFileSink {
public:
    ModelSink(KeyFileModel &model, const std::function<void(const KeySpec &)> &on_key)
        : model_(model), on_key_(on_key) {}

    void on_prefix(std::uint32_t line, std::string_view prefix, Environment env) override {
        builder.add_prefix(line, prefix, env);
        model_.prefixes.push_back({line, std::string(prefix), env});
    }

    void on_key(const KeySpec &spec) override {
        builder.add_key(spec);
        model_.records.push_back({spec.line, spec.id, fingerprint(spec), spec.revoked_at});
        if (on_key_) on_key_(spec);
    }

    TableBuilder builder;

private:
    KeyFileModel &model_;
    const std::function<void(const KeySpec &)> &on_key_;
};

}  // namespace

const RecordInfo *KeyFileModel::find(std::string_view id) const noexcept {
    for (const RecordInfo &r : records) {
        if (r.id == id) return &r;
    }
    return nullptr;
}

std::uint64_t fingerprint(const KeySpec &spec) noexcept {
    Fnv f;
    f.bytes(spec.hash.data(), spec.hash.size());
    f.text(spec.id);
    f.text(spec.owner);
    f.text(spec.organization);
    f.text(spec.plan);
    f.number(spec.scopes.size());
    for (const std::string &s : spec.scopes) f.text(s);
    f.number(spec.limits.size());
    for (const auto &[category, rate] : spec.limits) {
        f.text(category);
        f.number(rate.count);
        f.number(rate.period_seconds);
    }
    f.number(spec.allowed_ips.size());
    for (const IpNetwork &n : spec.allowed_ips) f.bytes(&n, sizeof n);
    f.number(static_cast<std::uint64_t>(spec.created_at));
    f.number(static_cast<std::uint64_t>(spec.expires_at));
    f.number(static_cast<std::uint64_t>(spec.revoked_at));
    return f.value();
}

KeyFileModel parse_key_file(std::string_view text,
                            const std::function<void(const KeySpec &)> &on_key) {
    if (text.size() > kMaxKeyFileBytes) {
        throw KeyFileError(1, "the file would be larger than 1 GiB");
    }
    KeyFileModel model;
    ModelSink sink(model, on_key);
    read_key_file(text, sink);
    model.image = sink.builder.build();
    return model;
}

}  // namespace apikey::cli
