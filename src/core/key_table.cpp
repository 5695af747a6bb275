#include "key_table.h"

namespace apikey {

std::string_view environment_name(Environment env) noexcept {
    switch (env) {
    case Environment::live: return "live";
    case Environment::test: return "test";
    case Environment::none: break;
    }
    return {};
}

bool KeyTable::valid() const noexcept {
    return base_ != nullptr && header().magic == kTableMagic &&
           header().layout_version == kTableLayoutVersion;
}

const KeyRecord *KeyTable::find(const Digest &digest) const noexcept {
    const TableHeader &h = header();
    const auto *starts = at<std::uint32_t>(h.buckets_off);
    const auto *records = at<KeyRecord>(h.records_off);
    const std::uint32_t b = bucket_of(digest, h.bucket_count);
    std::uint64_t first;
    std::memcpy(&first, digest.data(), sizeof first);
    for (std::uint32_t i = starts[b], end = starts[b + 1]; i < end; i++) {
        // The first 8 bytes tell the bucket's other keys apart; the rest is
        // compared on a match. A plain memcmp is fine here: both sides are
        // digests, and timing only tells an attacker about a hash they
        // cannot invert.
        std::uint64_t other;
        std::memcpy(&other, records[i].hash.data(), sizeof other);
        if (other == first &&
            std::memcmp(records[i].hash.data() + sizeof first, digest.data() + sizeof first,
                        digest.size() - sizeof first) == 0) {
            return &records[i];
        }
    }
    return nullptr;
}

int KeyTable::find_scope(std::string_view name) const noexcept {
    for (std::uint32_t i = 0; i < scope_count(); i++) {
        if (scope_name(i) == name) return static_cast<int>(i);
    }
    return -1;
}

int KeyTable::find_plan(std::string_view name) const noexcept {
    for (std::uint32_t i = 0; i < plan_count(); i++) {
        if (plan_name(static_cast<std::uint8_t>(i)) == name) return static_cast<int>(i);
    }
    return -1;
}

bool KeyTable::environment_of(std::string_view key, Environment &env) const noexcept {
    const std::uint32_t n = prefix_count();
    if (n == 0) {
        env = Environment::none;
        return true;
    }
    std::size_t best = 0;
    bool found = false;
    for (std::uint32_t i = 0; i < n; i++) {
        std::string_view p = text(prefix(i).text);
        if (p.size() > best && key.substr(0, p.size()) == p) {
            best = p.size();
            env = prefix(i).environment;
            found = true;
        }
    }
    return found;
}

}  // namespace apikey
