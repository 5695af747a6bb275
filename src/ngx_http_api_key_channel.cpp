// Key channels (api_key_zone ... sync=REDIS channel=NAME): the key file
// stays the source of truth, Redis is the bus. `apikeyctl publish` puts a
// version of the file on the channel's stream, `apikeyctl revoke --publish`
// a revocation; the sync process reads the stream every tick
// (core/key_channel.h), and this file applies what it read:
//   - revocations go into the zone's overlay (core/revocation_overlay.h),
//     which every worker's request path checks after the table lookup, and
//     into a file beside the key file, so a restart keeps them;
//   - a newer version is parsed by the module's own reader, written as the
//     node's copy (atomically, beside the key file) and installed the way
//     check= installs, from the sync process, never the event loop.
// At start the newer of the key file and the copy is loaded, so a node that
// comes back with Redis down serves the newest version it had applied.
// Worker 0's timer logs what the sync process did, once per change.

#include <sys/stat.h>

#include <cstring>
#include <ctime>
#include <exception>
#include <string>
#include <unordered_set>
#include <vector>

#include "core/channel_store.h"
#include "core/key_file.h"
#include "core/owner_lock.h"
#include "core/revocation_overlay.h"
#include "core/shm_atomic.h"
#include "ngx_http_api_key_module.h"

namespace ngx_api_key {

namespace {

bool valid_channel_name(std::string_view s) noexcept {
    if (s.empty() || s.size() > 64) return false;
    for (char c : s) {
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-')) {
            return false;
        }
    }
    return true;
}

// Keeps the message when it is the one already recorded, so that the
// worker's timer logs a failure once, not every tick.
void set_message(apikey::ChannelState *cs, const std::string &text) noexcept {
    char current[apikey::kChannelMessageBytes];
    if (apikey::channel_read_message(cs, current) != 0 &&
        text.compare(0, sizeof current - 1, current) == 0) {
        return;
    }
    apikey::channel_set_message(cs, text);
}

void save_revocations(KeyZone &zone, apikey::RevocationOverlay &overlay) noexcept {
    try {
        std::vector<apikey::StoredRevocation> entries;
        overlay.for_each([&](std::string_view id, std::int64_t at) {
            entries.push_back({std::string(id), at});
        });
        std::string error;
        if (!apikey::write_revocations(zone.revocations_path, entries, error)) {
            set_message(zone.channel_state, "cannot save the revocations: " + error);
        }
    } catch (const std::exception &e) {
        set_message(zone.channel_state, std::string("cannot save the revocations: ") + e.what());
    }
}

// After a published version is in force: an overlay entry stays while the
// new table would still accept its key (not revoked there, or later), so a
// version published from an older copy of the file cannot undo a revocation.
void retain_overlay(KeyZone &zone, const apikey::KeyTable &table,
                    apikey::RevocationOverlay &overlay) {
    if (overlay.empty()) return;
    std::unordered_set<std::string_view> accepted;
    std::vector<std::string> ids;
    overlay.for_each([&](std::string_view id, std::int64_t) { ids.emplace_back(id); });
    std::unordered_set<std::string_view> wanted(ids.begin(), ids.end());
    for (std::uint32_t i = 0; i < table.key_count(); i++) {
        const apikey::KeyRecord &record = table.record(i);
        const std::string_view id = table.text(record.id);
        if (wanted.count(id) != 0 && record.revoked_at() == apikey::kNever) accepted.insert(id);
    }
    overlay.retain([&](std::string_view id, std::int64_t) { return accepted.count(id) != 0; });
    save_revocations(zone, overlay);
}

// A version read from the stream: parsed, kept as the node's copy, and made
// current. The copy is renamed into place only once it parsed, so a restart
// never finds a copy the module refuses.
bool take_version(KeyZone &zone, const apikey::ChannelVersion &version) {
    apikey::ChannelState *cs = zone.channel_state;
    const std::string incoming = zone.copy_path + ".incoming";
    std::string error;
    if (!apikey::write_published_copy(incoming, version.version, version.sha256, version.content,
                                      error)) {
        set_message(cs, "cannot write \"" + incoming + "\": " + error);
        return false;
    }
    apikey::TableImage image;
    try {
        image = apikey::load_key_file(incoming);
    } catch (const std::exception &e) {
        unlink(incoming.c_str());
        apikey::store_relaxed(&cs->entries_refused, apikey::load_relaxed(&cs->entries_refused) + 1);
        // The version is refused for good: never retried, never kept.
        apikey::store_release(&cs->loaded_version, version.version);
        set_message(cs, "published version " + std::to_string(version.version) +
                            " refused: " + e.what());
        return false;
    }
    if (!apikey::replace_file(incoming, zone.copy_path, error)) {
        unlink(incoming.c_str());
        set_message(cs, error);
        return false;
    }
    zone.pending_image = std::move(image);
    zone.pending_version = version.version;
    return true;
}

// Installs the pending version when no check= load is under way (else the
// next tick tries again).
void install_pending(KeyZone &zone) noexcept {
    apikey::ChannelState *cs = zone.channel_state;
    if (zone.pending_version == 0) return;
    if (!zone.shared.try_claim_loading(self_identity)) return;
    std::string error;
    apikey::FileIdentity copy, local;
    const bool have_copy = apikey::identify_file(zone.copy_path, copy);
    const bool have_local = apikey::identify_file(zone.path, local);
    apikey::InstallResult result = apikey::InstallResult::no_room;
    if (have_copy) {
        result = zone.shared.install(zone.pending_image, copy, zone.copy_path, zone.config,
                                     std::time(nullptr), error);
    } else {
        error = zone.copy_path + ": stat() failed";
    }
    if (result == apikey::InstallResult::installed) {
        cs->local_file = have_local ? local : apikey::FileIdentity{};
        apikey::store_release(&cs->loaded_version, zone.pending_version);
        apikey::store_relaxed(&cs->versions_installed,
                              apikey::load_relaxed(&cs->versions_installed) + 1);
        try {
            apikey::RevocationOverlay overlay(apikey::channel_overlay_memory(cs));
            retain_overlay(zone, zone.pending_image.table(), overlay);
        } catch (const std::exception &) {
            // The overlay keeps every entry: it may only take access away.
        }
    }
    zone.shared.end_loading();
    if (result == apikey::InstallResult::no_room) {
        set_message(cs, "published version " + std::to_string(zone.pending_version) +
                            " not installed yet: " + error);
        return;  // retried next tick
    }
    // Installed, or superseded by a reload (whose configuration loads the copy).
    zone.pending_image = apikey::TableImage();
    zone.pending_version = 0;
}

// What one read of the stream brought: revocations into the overlay (and on
// disk), refusals counted and logged, the position advanced, a newer
// version taken.
void apply_read(KeyZone &zone, const apikey::ChannelFollowResult &got) {
    apikey::ChannelState *cs = zone.channel_state;
    apikey::RevocationOverlay overlay(apikey::channel_overlay_memory(cs));
    bool changed = false;
    for (const apikey::ChannelRevocation &r : got.revocations) {
        switch (overlay.add(r.id, r.at)) {
        case apikey::RevocationOverlay::Add::added:
        case apikey::RevocationOverlay::Add::earlier:
            changed = true;
            apikey::store_relaxed(&cs->revocations_applied,
                                  apikey::load_relaxed(&cs->revocations_applied) + 1);
            break;
        case apikey::RevocationOverlay::Add::already: break;
        case apikey::RevocationOverlay::Add::invalid:
            set_message(cs, "a revocation with an invalid key id was ignored");
            break;
        case apikey::RevocationOverlay::Add::full:
            set_message(cs, "the revocation overlay is full (" +
                                std::to_string(overlay.capacity()) +
                                " entries): publish the key file, or make the zone larger");
            break;
        }
    }
    if (changed) save_revocations(zone, overlay);
    for (const apikey::ChannelRefusal &refusal : got.refused) {
        if (refusal.ignored) {
            apikey::store_relaxed(&cs->versions_ignored,
                                  apikey::load_relaxed(&cs->versions_ignored) + 1);
            continue;
        }
        apikey::store_relaxed(&cs->entries_refused, apikey::load_relaxed(&cs->entries_refused) + 1);
        set_message(cs, "entry " + refusal.entry_id + " refused: " + refusal.reason);
    }
    if (got.last_id.size() < sizeof cs->last_id) {
        std::memcpy(cs->last_id, got.last_id.c_str(), got.last_id.size() + 1);
    }
    if (got.version && take_version(zone, *got.version)) install_pending(zone);
}

// "ms-seq" stream ids compared as the pairs of numbers they are.
bool parse_stream_id(std::string_view id, std::uint64_t &ms, std::uint64_t &seq) noexcept {
    const size_t dash = id.find('-');
    if (dash == std::string_view::npos) return false;
    auto number = [](std::string_view s, std::uint64_t &out) {
        if (s.empty() || s.size() > 20) return false;
        out = 0;
        for (char c : s) {
            if (c < '0' || c > '9') return false;
            out = out * 10 + static_cast<std::uint64_t>(c - '0');
        }
        return true;
    };
    return number(id.substr(0, dash), ms) && number(id.substr(dash + 1), seq);
}

bool stream_id_after(std::string_view a, std::string_view b) noexcept {
    std::uint64_t am, as, bm, bs;
    if (!parse_stream_id(a, am, as) || !parse_stream_id(b, bm, bs)) return false;
    return am > bm || (am == bm && as > bs);
}

// A node back after an outage may have been away for longer than the stream
// keeps (about 10,000 entries): entries after its position that were
// trimmed before it read them are lost to it. Redis trims the oldest first,
// so if the entry at the node's position is gone while newer ones were
// added, the ones right after it are (but at the very edge of a trim) gone
// too. Said once; Redis 7 does not count trimmed entries itself
// (max-deleted-entry-id follows XDEL only).
void check_gap(KeyZone &zone, apikey::RedisLink &link) {
    apikey::ChannelState *cs = zone.channel_state;
    const std::string position = cs->last_id;
    if (position == "0-0") return;  // a new start: what it applied before is on disk
    const std::string stream = apikey::channel_stream_key(zone.redis->prefix, zone.channel);
    const apikey::RedisResult at = link.command({"XRANGE", stream, position, position});
    if (!at.ok || at.reply.type != apikey::RedisReply::Type::array || !at.reply.elements.empty()) {
        return;  // still there (or no answer): nothing was lost
    }
    const apikey::RedisResult info = link.command({"XINFO", "STREAM", stream});
    // No stream at all (Redis lost its data, or it was deleted): gone too.
    bool newer = info.ok && info.reply.type == apikey::RedisReply::Type::error;
    if (info.ok && info.reply.type == apikey::RedisReply::Type::array) {
        const std::vector<apikey::RedisReply> &f = info.reply.elements;
        for (size_t i = 0; i + 1 < f.size(); i += 2) {
            if (f[i].str == "last-generated-id") {
                newer = stream_id_after(f[i + 1].str, position);
            }
        }
    }
    if (newer) {
        set_message(cs, "entries of channel \"" + zone.channel +
                            "\" were trimmed before this node read them: revocations in them "
                            "take effect with the next published version; publish the key file");
    }
}

}  // namespace

// sync=, channel=, verify=, stale= were parsed into the zone; checks them and
// chooses what this configuration loads: the key file, or the node's copy
// of a newer published version.
bool configure_channel(ngx_conf_t *cf, KeyZone &zone) noexcept {
    if (zone.redis_name.len == 0 && zone.channel.empty()) {
        if (zone.verify != nullptr) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"verify\" and \"stale\" need \"channel\"");
            return false;
        }
        zone.load_path = zone.path;
        return true;
    }
    if (zone.redis_name.len == 0 || zone.channel.empty()) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"sync\" and \"channel\" go together");
        return false;
    }
    if (!valid_channel_name(zone.channel)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid channel \"%s\"", zone.channel.c_str());
        return false;
    }
    try {
        zone.copy_path = zone.path + "." + zone.channel + ".published";
        zone.revocations_path = zone.path + "." + zone.channel + ".revoked";
        zone.load_path = zone.path;
        std::uint64_t version = 0;
        std::string sha, error;
        bool missing = false;
        if (apikey::read_published_version(zone.copy_path, version, sha, missing, error)) {
            zone.copy_version = version;
            struct stat copy_st, file_st;
            // The newer of the two: a published version, or a local edit made after it.
            if (stat(zone.copy_path.c_str(), &copy_st) == 0 &&
                stat(zone.path.c_str(), &file_st) == 0 &&
                (copy_st.st_mtim.tv_sec > file_st.st_mtim.tv_sec ||
                 (copy_st.st_mtim.tv_sec == file_st.st_mtim.tv_sec &&
                  copy_st.st_mtim.tv_nsec >= file_st.st_mtim.tv_nsec))) {
                zone.local_file = zone.file;
                if (!apikey::identify_file(zone.copy_path, zone.file)) return false;
                zone.load_path = zone.copy_path;
                zone.loaded_copy = true;
            }
        } else if (!missing) {
            ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                               "api_key_zone \"%V\": ignoring the published copy: %s", &zone.name,
                               error.c_str());
        }
    } catch (const std::exception &e) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "api_key_zone \"%V\": %s", &zone.name, e.what());
        return false;
    }
    return true;
}

// In init_zone (the master, configuration time): the channel's state is found
// again in a reused zone, or made, with the revocations saved on disk.
bool init_channel(KeyZone &zone, bool reused, ngx_log_t *log) noexcept {
    if (!zone.follows()) return true;
    apikey::SharedTablesState *state = zone.shared.state();
    const std::size_t zone_bytes = static_cast<std::size_t>(zone.memory.pool->end -
                                                            zone.memory.base());
    const std::uint32_t capacity = apikey::channel_overlay_capacity(zone_bytes);
    apikey::ChannelState *cs = nullptr;
    if (reused && state->channel != 0) {
        cs = reinterpret_cast<apikey::ChannelState *>(zone.memory.base() + state->channel);
        if (!apikey::channel_state_valid(cs, capacity)) cs = nullptr;
    }
    if (cs == nullptr) {
        void *memory = zone.memory.allocate(apikey::channel_state_bytes(capacity));
        if (memory == nullptr) {
            ngx_log_error(NGX_LOG_EMERG, log, 0,
                          "api_key_zone \"%V\" is too small for its channel's %uD revocations",
                          &zone.name, capacity);
            return false;
        }
        cs = apikey::channel_state_format(memory, capacity, monotonic_ms());
        try {
            std::vector<apikey::StoredRevocation> saved;
            std::string error;
            if (!apikey::read_revocations(zone.revocations_path, saved, error)) {
                ngx_log_error(NGX_LOG_ALERT, log, 0,
                              "api_key_zone \"%V\": cannot read the saved revocations: %s",
                              &zone.name, error.c_str());
            }
            apikey::RevocationOverlay overlay(apikey::channel_overlay_memory(cs));
            for (const apikey::StoredRevocation &r : saved) overlay.add(r.id, r.at);
        } catch (const std::exception &e) {
            ngx_log_error(NGX_LOG_ALERT, log, 0, "api_key_zone \"%V\": %s", &zone.name, e.what());
        }
        apikey::store_release(
            &state->channel,
            static_cast<std::uint64_t>(reinterpret_cast<u_char *>(cs) - zone.memory.base()));
    }
    if (zone.copy_version > apikey::load_relaxed(&cs->loaded_version)) {
        apikey::store_release(&cs->loaded_version, zone.copy_version);
    }
    cs->local_file = zone.loaded_copy ? zone.local_file : apikey::FileIdentity{};
    zone.channel_state = cs;
    return true;
}

bool channel_superseded(const KeyZone &zone, const apikey::FileIdentity &file) noexcept {
    const apikey::ChannelState *cs = zone.channel_state;
    return cs != nullptr && cs->local_file != apikey::FileIdentity{} && cs->local_file == file;
}

// The sync process, once per tick, for one key zone.

// The sync process, once per tick, for one key zone. A node catching up (a
// restart reads the stream from its start) reads on while there is more,
// up to a bound, so that it is current within a few ticks.
void follow_channel_tick(KeyZone &zone, apikey::RedisLink &link, bool connected) noexcept {
    constexpr int kMaxReadsPerTick = 20;
    apikey::ChannelState *cs = zone.channel_state;
    if (cs == nullptr || !apikey::owner_try_lock(&cs->owner, self_identity)) return;
    try {
        install_pending(zone);
        if (!connected) zone.check_gap = true;
        apikey::ChannelFollowConfig config;
        config.prefix = zone.redis->prefix;
        config.channel = zone.channel;
        config.verify = zone.verify.get();
        if (connected && zone.check_gap) {
            check_gap(zone, link);
            zone.check_gap = false;
        }
        for (int reads = 0; connected && zone.pending_version == 0 && reads < kMaxReadsPerTick;
             reads++) {
            const apikey::ChannelFollowResult got = apikey::follow_channel(
                link, config, cs->last_id, apikey::load_relaxed(&cs->loaded_version));
            if (!got.ok) {
                // Once per outage: the stale state says how long it lasts.
                if (!zone.read_failing) set_message(cs, "reading the channel failed: " + got.error);
                zone.read_failing = true;
                zone.check_gap = true;
                break;
            }
            zone.read_failing = false;
            apikey::store_release(&cs->last_read_ms, monotonic_ms());
            apply_read(zone, got);
            if (!got.more) break;
        }
    } catch (const std::exception &e) {
        set_message(cs, std::string("channel: ") + e.what());
    }
    apikey::owner_unlock(&cs->owner);
}

// Worker 0's timer: what the sync process did, logged once per change.
void log_channel(KeyZone &zone, ngx_log_t *log) noexcept {
    const apikey::ChannelState *cs = zone.channel_state;
    if (cs == nullptr) return;
    const bool stale = apikey::channel_stale(cs, monotonic_ms(), zone.stale_ms);
    if (stale != zone.logged.stale) {
        zone.logged.stale = stale;
        if (stale) {
            ngx_log_error(NGX_LOG_WARN, log, 0,
                          "api_key_zone \"%V\": nothing read from channel \"%s\" for %L ms: stale; "
                          "serving the last key table",
                          &zone.name, zone.channel.c_str(), static_cast<long long>(zone.stale_ms));
        } else {
            ngx_log_error(NGX_LOG_NOTICE, log, 0,
                          "api_key_zone \"%V\": reading channel \"%s\" again", &zone.name,
                          zone.channel.c_str());
        }
    }
    const std::uint64_t installed = apikey::load_relaxed(&cs->versions_installed);
    if (installed != zone.logged.installed) {
        zone.logged.installed = installed;
        const apikey::SharedTablesState *state = zone.shared.state();
        ngx_log_error(NGX_LOG_NOTICE, log, 0,
                      "api_key_zone \"%V\": installed published version %uL from channel \"%s\" "
                      "(%uL keys)",
                      &zone.name, static_cast<uint64_t>(apikey::load_relaxed(&cs->loaded_version)),
                      zone.channel.c_str(), static_cast<uint64_t>(state->keys));
    }
    const std::uint64_t revocations = apikey::load_relaxed(&cs->revocations_applied);
    if (revocations != zone.logged.revocations) {
        ngx_log_error(NGX_LOG_NOTICE, log, 0,
                      "api_key_zone \"%V\": applied %uL revocation(s) from channel \"%s\"",
                      &zone.name, static_cast<uint64_t>(revocations - zone.logged.revocations),
                      zone.channel.c_str());
        zone.logged.revocations = revocations;
    }
    char message[apikey::kChannelMessageBytes];
    const std::uint64_t seq = apikey::channel_read_message(cs, message);
    if (seq != 0 && seq != zone.logged.message_seq) {
        zone.logged.message_seq = seq;
        ngx_log_error(NGX_LOG_WARN, log, 0, "api_key_zone \"%V\": %s", &zone.name, message);
    }
}

}  // namespace ngx_api_key
