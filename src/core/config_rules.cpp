#include "config_rules.h"

namespace apikey {

bool is_identifier(std::string_view s) noexcept {
    if (s.empty() || s.size() > 128) return false;
    for (char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (u <= 0x20 || u >= 0x7f || c == '"' || c == '\\') return false;
    }
    return true;
}

bool is_header_name(std::string_view s) noexcept {
    if (s.empty() || s.size() > 64) return false;
    for (char c : s) {
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_')) {
            return false;
        }
    }
    return true;
}

bool is_header_variable(std::string_view variable, std::string_view header) noexcept {
    constexpr std::string_view kPrefix = "http_";
    if (variable.substr(0, kPrefix.size()) != kPrefix) return false;
    variable.remove_prefix(kPrefix.size());
    if (variable.size() != header.size() || header.empty()) return false;
    for (std::size_t i = 0; i < header.size(); i++) {
        char h = header[i];
        if (h >= 'A' && h <= 'Z') h = static_cast<char>(h - 'A' + 'a');
        if (h == '-') h = '_';
        char v = variable[i];
        if (v >= 'A' && v <= 'Z') v = static_cast<char>(v - 'A' + 'a');
        if (h != v) return false;
    }
    return true;
}

bool is_realm(std::string_view s) noexcept {
    for (char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f || c == '"' || c == '\\') return false;
    }
    return true;
}

std::size_t usage_capacity_for(std::size_t zone_size) noexcept {
    const std::size_t capacity = zone_size / 16 / sizeof(UsageSlot);
    return capacity < 64 ? 64 : capacity;
}

std::size_t ZoneSizing::needed(std::size_t image_size, std::size_t usage_capacity,
                               unsigned tables) const noexcept {
    auto pages_of = [this](std::size_t bytes) { return (bytes + page - 1) / page; };
    const std::size_t pages = tables * pages_of(shared_tables_bytes(image_size, 1)) +
                              pages_of(UsageTable::bytes_for(usage_capacity)) + 6;
    return pages * (page + page_descriptor) + page;
}

std::size_t ZoneSizing::smallest_zone(std::size_t image_size) const noexcept {
    // A fixed point: going up until the need stops growing.
    std::size_t size = needed(image_size, 0);
    for (int i = 0; i < 16; i++) {
        const std::size_t more = needed(image_size, usage_capacity_for(size));
        if (more <= size) break;
        size = more;
    }
    return size + 2 * page;  // a stated size a little above needs one slot more
}

LoadDecision decide_load(bool exists, const FileIdentity &file, const FileIdentity &loaded,
                         bool failed_for_file, bool gave_up_on_file, std::int64_t failed_at,
                         std::int64_t now, std::int64_t retry_seconds) noexcept {
    if (exists && file == loaded)
        return failed_at != 0 ? LoadDecision::forget_failure : LoadDecision::up_to_date;
    if (gave_up_on_file) return LoadDecision::up_to_date;
    if (failed_for_file && now - failed_at < retry_seconds) return LoadDecision::up_to_date;
    return exists ? LoadDecision::load : LoadDecision::report_missing;
}

}  // namespace apikey
