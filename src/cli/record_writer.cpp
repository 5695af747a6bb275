#include "cli/record_writer.h"

#include "core/digest.h"
#include "core/timestamp.h"

namespace apikey::cli {

std::string yaml_scalar(std::string_view s) {
    // The same test the fast reader applies (is_safe_plain in flow context),
    // plus the null words, which plain would turn into "absent".
    constexpr std::string_view first_indicators = "-?:,[]{}#&*!|>'\"%@`";
    bool plain = !s.empty() && first_indicators.find(s.front()) == std::string_view::npos &&
                 s.back() != ':' && s != "~" && s != "null" && s != "Null" && s != "NULL";
    for (char c : s) {
        if (c == ',' || c == '[' || c == ']' || c == '{' || c == '}' || c == '#' || c == ' ') {
            plain = false;
        }
    }
    if (plain) return std::string(s);
    return "\"" + std::string(s) + "\"";
}

std::string format_rate(const Rate &rate) {
    const char *unit = rate.period_seconds == 1      ? "s"
                       : rate.period_seconds == 60   ? "m"
                       : rate.period_seconds == 3600 ? "h"
                                                     : "d";
    return std::to_string(rate.count) + "r/" + unit;
}

std::string format_time(std::int64_t seconds) {
    char out[20];
    format_timestamp(seconds, out);
    return std::string(out, sizeof out);
}

std::string format_networks(const std::vector<IpNetwork> &networks) {
    std::string list = "[";
    for (std::size_t i = 0; i < networks.size(); i++) {
        if (i) list += ", ";
        const std::string text = format_network(networks[i]);
        list += text.find(':') == std::string::npos ? text : "\"" + text + "\"";
    }
    return list + "]";
}

std::string render_record(const KeySpec &spec, const std::optional<std::string> &prefix_note,
                          const RecordLayout &layout, std::string_view eol) {
    const std::string indent(layout.field_indent, ' ');
    std::string dash(layout.dash_indent, ' ');
    dash += '-';
    dash.append(layout.field_indent - layout.dash_indent - 1, ' ');

    std::string out;
    auto field = [&](bool first, const char *name, const std::string &value) {
        out += first ? dash : indent;
        out += name;
        out += ": ";
        out += value;
        out += eol;
    };

    char hash[71];
    format_digest(spec.hash, hash);
    field(true, "id", yaml_scalar(spec.id));
    field(false, "hash", std::string(hash, sizeof hash));
    field(false, "owner", yaml_scalar(spec.owner));
    if (!spec.organization.empty()) field(false, "organization_id", yaml_scalar(spec.organization));
    if (!spec.plan.empty()) field(false, "plan", yaml_scalar(spec.plan));
    if (!spec.scopes.empty()) {
        std::string list = "[";
        for (std::size_t i = 0; i < spec.scopes.size(); i++) {
            if (i) list += ", ";
            list += yaml_scalar(spec.scopes[i]);
        }
        field(false, "scopes", list + "]");
    }
    if (spec.created_at != kUnknownTime) field(false, "created_at", format_time(spec.created_at));
    if (spec.expires_at != kNever) field(false, "expires_at", format_time(spec.expires_at));
    if (spec.revoked_at != kNever) field(false, "revoked_at", format_time(spec.revoked_at));
    if (!spec.limits.empty()) {
        std::string map = "{";
        for (std::size_t i = 0; i < spec.limits.size(); i++) {
            if (i) map += ", ";
            map += yaml_scalar(spec.limits[i].first) + ": " + format_rate(spec.limits[i].second);
        }
        field(false, "limits", map + "}");
    }
    if (!spec.allowed_ips.empty()) field(false, "allowed_ips", format_networks(spec.allowed_ips));
    if (prefix_note) {
        out += indent;
        out += kPrefixNote;
        out += prefix_note->empty() ? std::string(kNoPrefix) : *prefix_note;
        out += eol;
    }
    return out;
}

}  // namespace apikey::cli
