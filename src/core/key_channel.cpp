#include "key_channel.h"

#include <algorithm>
#include <chrono>
#include <iterator>
#include <new>
#include <stdexcept>

#include "config_rules.h"
#include "digest.h"

namespace apikey {

namespace {

constexpr std::string_view kMagic = "apikey-channel-v1\n";
constexpr std::size_t kSignatureBase64 = 88;  // 64 bytes
constexpr std::size_t kMaxFieldPairs = 8;     // the largest entry has 6
constexpr std::size_t kRevocationsPerTransaction = 500;
constexpr int kPublishAttempts = 5;
constexpr std::string_view kOlder = "replayed or older version";

// ---- numbers and encodings, strictly: one spelling per value ----------

bool parse_u64(std::string_view s, std::uint64_t &out) noexcept {
    if (s.empty() || s.size() > 20 || (s.size() > 1 && s[0] == '0')) return false;
    std::uint64_t v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return false;
        const auto d = static_cast<std::uint64_t>(c - '0');
        if (v > (UINT64_MAX - d) / 10) return false;
        v = v * 10 + d;
    }
    out = v;
    return true;
}

bool parse_time(std::string_view s, std::int64_t &out) noexcept {
    std::uint64_t v = 0;
    if (!parse_u64(s, v) || v > static_cast<std::uint64_t>(INT64_MAX)) return false;
    out = static_cast<std::int64_t>(v);
    return true;
}

bool is_sha256_hex(std::string_view s) noexcept {
    if (s.size() != 64) return false;
    for (char c : s) {
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    }
    return true;
}

// Stream ids as Redis writes them: MS-SEQ.
bool is_stream_id(std::string_view s) noexcept {
    const std::size_t dash = s.find('-');
    std::uint64_t v;
    return dash != std::string_view::npos && parse_u64(s.substr(0, dash), v) &&
           parse_u64(s.substr(dash + 1), v);
}

constexpr char kBase64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string base64_encode(std::string_view in) {
    std::string out;
    out.reserve((in.size() + 2) / 3 * 4);
    std::size_t i = 0;
    for (; i + 3 <= in.size(); i += 3) {
        const std::uint32_t v = static_cast<std::uint32_t>(static_cast<unsigned char>(in[i]))
                                    << 16 |
                                static_cast<std::uint32_t>(static_cast<unsigned char>(in[i + 1]))
                                    << 8 |
                                static_cast<unsigned char>(in[i + 2]);
        out += kBase64[v >> 18];
        out += kBase64[(v >> 12) & 63];
        out += kBase64[(v >> 6) & 63];
        out += kBase64[v & 63];
    }
    if (i < in.size()) {
        std::uint32_t v = static_cast<std::uint32_t>(static_cast<unsigned char>(in[i])) << 16;
        if (i + 1 < in.size())
            v |= static_cast<std::uint32_t>(static_cast<unsigned char>(in[i + 1])) << 8;
        out += kBase64[v >> 18];
        out += kBase64[(v >> 12) & 63];
        out += i + 1 < in.size() ? kBase64[(v >> 6) & 63] : '=';
        out += '=';
    }
    return out;
}

int base64_value(char c) noexcept {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

// Exactly the 88 characters base64_encode writes for 64 bytes: the padding,
// and zero bits under it, so a signature has one spelling.
bool decode_signature(std::string_view s, std::string &out) {
    if (s.size() != kSignatureBase64 || s[86] != '=' || s[87] != '=') return false;
    out.clear();
    out.reserve(kEd25519SignatureBytes);
    std::uint32_t acc = 0;
    int bits = 0;
    for (std::size_t i = 0; i < 86; i++) {
        const int v = base64_value(s[i]);
        if (v < 0) return false;
        acc = (acc << 6) | static_cast<std::uint32_t>(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out += static_cast<char>((acc >> bits) & 0xff);
        }
    }
    return out.size() == kEd25519SignatureBytes && (acc & ((1u << bits) - 1)) == 0;
}

// ---- entries --------------------------------------------------------------

struct Entry {
    enum class Type { version, revoke };
    Type type = Type::version;
    std::uint64_t version = 0;
    std::string sha256;
    std::uint64_t size = 0;
    std::uint64_t chunks = 0;
    std::string id;
    std::int64_t at = 0;
    bool has_sig = false;
    std::string sig;  // raw bytes
};

constexpr std::string_view kVersionFields[] = {"v", "sha256", "size", "chunks"};
constexpr std::string_view kRevokeFields[] = {"id", "at"};

// Parses an entry's field list; an empty string, or the reason it is refused.
std::string parse_entry(const RedisReply &fields, Entry &e) {
    if (fields.type != RedisReply::Type::array || fields.elements.size() % 2 != 0)
        return "not a field list";
    const std::vector<RedisReply> &f = fields.elements;
    if (f.size() / 2 > kMaxFieldPairs) return "too many fields";
    for (const RedisReply &r : f) {
        if (r.type != RedisReply::Type::string) return "not a field list";
    }
    const std::string *type = nullptr;
    for (std::size_t i = 0; i < f.size(); i += 2) {
        if (f[i].str != "type") continue;
        if (type != nullptr) return "duplicate field type";
        type = &f[i + 1].str;
    }
    if (type == nullptr) return "missing field type";
    const std::string_view *names;
    std::size_t count;
    if (*type == "version") {
        e.type = Entry::Type::version;
        names = kVersionFields;
        count = std::size(kVersionFields);
    } else if (*type == "revoke") {
        e.type = Entry::Type::revoke;
        names = kRevokeFields;
        count = std::size(kRevokeFields);
    } else {
        return "unknown type";
    }
    const std::string *values[4] = {};
    const std::string *sig = nullptr;
    for (std::size_t i = 0; i < f.size(); i += 2) {
        const std::string &name = f[i].str;
        if (name == "type") continue;
        if (name == "sig") {
            if (sig != nullptr) return "duplicate field sig";
            sig = &f[i + 1].str;
            continue;
        }
        std::size_t k = 0;
        while (k < count && names[k] != name) k++;
        if (k == count) return "unknown field";  // not echoed: it came from Redis
        if (values[k] != nullptr) return "duplicate field " + std::string(names[k]);
        values[k] = &f[i + 1].str;
    }
    for (std::size_t k = 0; k < count; k++) {
        if (values[k] == nullptr) return "missing field " + std::string(names[k]);
    }
    auto malformed = [&](std::size_t k) { return "malformed field " + std::string(names[k]); };
    if (e.type == Entry::Type::version) {
        if (!parse_u64(*values[0], e.version) || e.version == 0) return malformed(0);
        if (!is_sha256_hex(*values[1])) return malformed(1);
        e.sha256 = *values[1];
        if (!parse_u64(*values[2], e.size)) return malformed(2);
        if (!parse_u64(*values[3], e.chunks)) return malformed(3);
        if (e.chunks != channel_chunk_count(e.size)) return "chunks does not match size";
    } else {
        if (!is_identifier(*values[0])) return malformed(0);
        e.id = *values[0];
        if (!parse_time(*values[1], e.at)) return malformed(1);
    }
    e.has_sig = sig != nullptr;
    if (sig != nullptr && !decode_signature(*sig, e.sig)) return "malformed field sig";
    return {};
}

std::string signed_message(std::string_view channel, const Entry &e) {
    return e.type == Entry::Type::version
               ? version_signed_message(channel, e.version, e.sha256, e.size, e.chunks)
               : revoke_signed_message(channel, e.id, e.at);
}

// ---- fetching a version ---------------------------------------------------

enum class Fetch { ok, refused, link_failed };

Fetch fetch_content(RedisLink &link, const ChannelFollowConfig &cfg, const Entry &e,
                    std::string &content, std::string &why) {
    content.clear();
    for (std::uint64_t i = 0; i < e.chunks; i++) {
        const RedisResult r = link.command(
            {"GET", channel_blob_key(cfg.prefix, cfg.channel, e.sha256, i)});
        if (!r.ok) {
            why = r.error;
            return Fetch::link_failed;
        }
        const std::string n = std::to_string(i);
        if (r.reply.type == RedisReply::Type::nil) {
            why = "chunk " + n + " missing";
            return Fetch::refused;
        }
        if (r.reply.type != RedisReply::Type::string) {
            why = "chunk " + n + " is not a string";
            return Fetch::refused;
        }
        const std::uint64_t expected = std::min<std::uint64_t>(kChannelChunkBytes,
                                                               e.size - i * kChannelChunkBytes);
        if (r.reply.str.size() != expected) {
            why = "chunk " + n + " has the wrong size";
            return Fetch::refused;
        }
        // Reserved only once a real chunk is there: an entry alone cannot
        // make a node allocate its claimed size.
        if (i == 0) content.reserve(static_cast<std::size_t>(e.size));
        content += r.reply.str;
    }
    if (sha256_hex(content) != e.sha256) {
        why = "content does not match its sha256";
        return Fetch::refused;
    }
    return Fetch::ok;
}

struct Candidate {
    const std::string *entry_id;
    Entry entry;
};

// ---- publishing -----------------------------------------------------------

// KEYS[1] stream, KEYS[2] version counter, KEYS[3] kept contents,
// KEYS[4..] this version's chunks. ARGV[1] version, ARGV[2] "SHA256:CHUNKS",
// ARGV[3] blob key prefix, ARGV[4] contents kept, ARGV[5] MAXLEN,
// ARGV[6..] the entry's field/value pairs.
// {1, id}: appended. {0, newest}: the number is not above the newest.
// {2, i}: chunk i is gone (another publisher's trim): store it again.
// Versions are compared as decimal strings without leading zeros: Lua's
// numbers are doubles.
constexpr std::string_view kPublishScript = R"(
local function above(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
local cur = redis.call('GET', KEYS[2])
if cur and not above(ARGV[1], cur) then return {0, cur} end
for i = 4, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then return {2, i - 4} end
end
redis.call('SET', KEYS[2], ARGV[1])
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', unpack(ARGV, 6))
redis.call('LREM', KEYS[3], 0, ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[2])
local keep = tonumber(ARGV[4])
for _, e in ipairs(redis.call('LRANGE', KEYS[3], keep, -1)) do
  local sha, n = string.match(e, '^(%x+):(%d+)$')
  if sha then
    for i = 0, tonumber(n) - 1 do redis.call('DEL', ARGV[3] .. sha .. ':' .. i) end
  end
end
redis.call('LTRIM', KEYS[3], 0, keep - 1)
return {1, id}
)";

std::string reply_error(std::string_view what, const RedisResult &r) {
    if (!r.ok) return std::string(what) + ": " + r.error;
    if (r.reply.type == RedisReply::Type::error) return std::string(what) + ": " + r.reply.str;
    return std::string(what) + ": unexpected reply";
}

// Stores the chunks Redis does not already hold (or holds at another size).
bool store_chunks(RedisLink &link, std::string_view prefix, std::string_view channel,
                  std::string_view content, const std::string &sha, bool force,
                  std::string &error) {
    const std::uint64_t chunks = channel_chunk_count(content.size());
    for (std::uint64_t i = 0; i < chunks; i++) {
        const std::string key = channel_blob_key(prefix, channel, sha, i);
        const std::string_view chunk = content.substr(
            static_cast<std::size_t>(i) * kChannelChunkBytes, kChannelChunkBytes);
        if (!force) {
            const RedisResult have = link.command({"STRLEN", key});
            if (!have.ok) {
                error = reply_error("STRLEN", have);
                return false;
            }
            if (have.reply.type == RedisReply::Type::integer &&
                static_cast<std::uint64_t>(have.reply.integer) == chunk.size())
                continue;
        }
        const RedisResult set = link.command({"SET", key, std::string(chunk)});
        if (!set.ok || set.reply.type != RedisReply::Type::status) {
            error = reply_error("SET of a chunk", set);
            return false;
        }
    }
    return true;
}

std::uint64_t now_ms() {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                          std::chrono::system_clock::now().time_since_epoch())
                                          .count());
}

}  // namespace

bool is_channel_name(std::string_view name) noexcept {
    if (name.empty() || name.size() > 64) return false;
    for (char c : name) {
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                        (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
        if (!ok) return false;
    }
    return true;
}

std::string channel_stream_key(std::string_view prefix, std::string_view channel) {
    return std::string(prefix) + "k:{" + std::string(channel) + "}:log";
}

std::string channel_blob_key(std::string_view prefix, std::string_view channel,
                             std::string_view sha256_hex, std::uint64_t index) {
    return std::string(prefix) + "k:{" + std::string(channel) +
           "}:blob:" + std::string(sha256_hex) + ":" + std::to_string(index);
}

std::string channel_version_key(std::string_view prefix, std::string_view channel) {
    return std::string(prefix) + "k:{" + std::string(channel) + "}:version";
}

std::string channel_blobs_key(std::string_view prefix, std::string_view channel) {
    return std::string(prefix) + "k:{" + std::string(channel) + "}:blobs";
}

std::uint64_t channel_chunk_count(std::uint64_t size) noexcept {
    return size / kChannelChunkBytes + (size % kChannelChunkBytes != 0 ? 1 : 0);
}

std::string sha256_hex(std::string_view content) {
    char text[71];
    format_digest(sha256(content), text);
    return std::string(text + 7, 64);
}

std::string version_signed_message(std::string_view channel, std::uint64_t version,
                                   std::string_view sha256_hex, std::uint64_t size,
                                   std::uint64_t chunks) {
    std::string m(kMagic);
    m.append(channel).append("\nversion\n");
    m.append(std::to_string(version)).append("\n");
    m.append(sha256_hex).append("\n");
    m.append(std::to_string(size)).append("\n");
    m.append(std::to_string(chunks)).append("\n");
    return m;
}

std::string revoke_signed_message(std::string_view channel, std::string_view id, std::int64_t at) {
    std::string m(kMagic);
    m.append(channel).append("\nrevoke\n");
    m.append(id).append("\n");
    m.append(std::to_string(at)).append("\n");
    return m;
}

namespace {

void add_signature(std::vector<std::string> &fields, const Ed25519Signer *sign,
                   const std::string &message) {
    if (sign == nullptr) return;
    const std::string sig = sign->sign(message);
    if (sig.size() != kEd25519SignatureBytes) throw std::runtime_error("cannot sign the entry");
    fields.emplace_back("sig");
    fields.push_back(base64_encode(sig));
}

}  // namespace

std::vector<std::string> version_entry_fields(std::string_view channel, std::uint64_t version,
                                              std::string_view sha256_hex, std::uint64_t size,
                                              const Ed25519Signer *sign) {
    const std::uint64_t chunks = channel_chunk_count(size);
    std::vector<std::string> f = {"type",   "version",
                                  "v",      std::to_string(version),
                                  "sha256", std::string(sha256_hex),
                                  "size",   std::to_string(size),
                                  "chunks", std::to_string(chunks)};
    add_signature(f, sign, version_signed_message(channel, version, sha256_hex, size, chunks));
    return f;
}

std::vector<std::string> revoke_entry_fields(std::string_view channel, std::string_view id,
                                             std::int64_t at, const Ed25519Signer *sign) {
    std::vector<std::string> f = {"type",          "revoke", "id",
                                  std::string(id), "at",     std::to_string(at)};
    add_signature(f, sign, revoke_signed_message(channel, id, at));
    return f;
}

ChannelFollowResult follow_channel(RedisLink &link, const ChannelFollowConfig &cfg,
                                   std::string_view last_id,
                                   std::uint64_t loaded_version) noexcept {
    ChannelFollowResult res;
    try {
        res.last_id = std::string(last_id);
        if (!is_channel_name(cfg.channel)) {
            res.error = "invalid channel name";
            return res;
        }
        if (!is_stream_id(last_id)) {
            res.error = "invalid stream id to read from";
            return res;
        }
        const std::size_t count = std::clamp<std::size_t>(cfg.max_entries, 1,
                                                          kChannelMaxEntriesPerRead);
        const std::string stream = channel_stream_key(cfg.prefix, cfg.channel);
        const RedisResult r = link.command(
            {"XREAD", "COUNT", std::to_string(count), "STREAMS", stream, std::string(last_id)});
        if (!r.ok || r.reply.type == RedisReply::Type::error) {
            res.error = reply_error("XREAD", r);
            return res;
        }
        if (r.reply.type == RedisReply::Type::nil) {  // nothing new (or no stream yet)
            res.ok = true;
            return res;
        }
        // [[stream, [[id, [field, value, ...]], ...]]]: a reply of another
        // shape is not a stream we can step through, so nothing advances.
        const RedisReply &top = r.reply;
        if (top.type != RedisReply::Type::array || top.elements.size() != 1 ||
            top.elements[0].type != RedisReply::Type::array ||
            top.elements[0].elements.size() != 2 ||
            top.elements[0].elements[1].type != RedisReply::Type::array) {
            res.error = "XREAD: unexpected reply";
            return res;
        }
        const std::vector<RedisReply> &entries = top.elements[0].elements[1].elements;
        for (const RedisReply &e : entries) {
            if (e.type != RedisReply::Type::array || e.elements.size() != 2 ||
                e.elements[0].type != RedisReply::Type::string ||
                !is_stream_id(e.elements[0].str)) {
                res.error = "XREAD: unexpected reply";
                return res;
            }
        }

        std::vector<Candidate> candidates;
        for (const RedisReply &raw : entries) {
            const std::string &id = raw.elements[0].str;
            Entry e;
            std::string why = parse_entry(raw.elements[1], e);
            if (why.empty() && cfg.verify != nullptr) {
                if (!e.has_sig) {
                    why = "unsigned entry";
                } else if (!cfg.verify->verify(signed_message(cfg.channel, e), e.sig)) {
                    why = "bad signature";
                }
            }
            if (why.empty() && e.type == Entry::Type::version) {
                if (e.version <= loaded_version) {
                    why = kOlder;
                } else if (e.size > cfg.max_version_bytes) {
                    why = "version larger than the limit";
                }
            }
            if (!why.empty()) {
                const bool older = why == kOlder;
                res.refused.push_back({id, std::move(why), older});
                continue;
            }
            if (e.type == Entry::Type::revoke) {
                res.revocations.push_back({std::move(e.id), e.at});
            } else {
                candidates.push_back({&id, std::move(e)});
            }
        }

        // Newest first; the stable sort keeps the first of equal versions
        // (a later copy of a signed entry is a replay).
        std::stable_sort(candidates.begin(), candidates.end(),
                         [](const Candidate &a, const Candidate &b) {
                             return a.entry.version > b.entry.version;
                         });
        std::size_t attempts = 0;
        std::string content;
        for (std::size_t i = 0; i < candidates.size(); i++) {
            const Candidate &c = candidates[i];
            if (i > 0 && c.entry.version == candidates[i - 1].entry.version) {
                res.refused.push_back({*c.entry_id, std::string(kOlder), true});
                continue;
            }
            if (res.version) {
                res.refused.push_back({*c.entry_id, "superseded by a newer version", true});
                continue;
            }
            if (attempts == kChannelMaxFetchAttempts) {
                res.refused.push_back(
                    {*c.entry_id, "not fetched: too many failed versions", false});
                continue;
            }
            attempts++;
            std::string why;
            switch (fetch_content(link, cfg, c.entry, content, why)) {
            case Fetch::link_failed: {
                // Not the entry's fault: read it again next time.
                ChannelFollowResult failed;
                failed.last_id = std::string(last_id);
                failed.error = "GET of a chunk: " + why;
                return failed;
            }
            case Fetch::refused: res.refused.push_back({*c.entry_id, std::move(why), false}); break;
            case Fetch::ok:
                res.version = ChannelVersion{c.entry.version, c.entry.sha256, std::move(content)};
                break;
            }
        }
        // Refusals in stream order, whatever step refused them.
        std::stable_sort(res.refused.begin(), res.refused.end(),
                         [](const ChannelRefusal &a, const ChannelRefusal &b) {
                             auto key = [](const std::string &s) {
                                 const std::size_t dash = s.find('-');
                                 std::uint64_t ms = 0, seq = 0;
                                 parse_u64(std::string_view(s).substr(0, dash), ms);
                                 parse_u64(std::string_view(s).substr(dash + 1), seq);
                                 return std::make_pair(ms, seq);
                             };
                             return key(a.entry_id) < key(b.entry_id);
                         });
        if (!entries.empty()) res.last_id = entries.back().elements[0].str;
        res.more = entries.size() >= count;
        res.ok = true;
        return res;
    } catch (const std::exception &) {  // bad_alloc: strings and vectors are all we build
        ChannelFollowResult failed;
        failed.error = "out of memory";  // short enough to need no allocation
        try {
            failed.last_id = std::string(last_id);
        } catch (const std::bad_alloc &) {
        }
        return failed;
    }
}

bool newest_channel_version(RedisLink &link, std::string_view prefix, std::string_view channel,
                            std::uint64_t &version_out, std::string &error) {
    try {
        version_out = 0;
        const RedisResult counter = link.command({"GET", channel_version_key(prefix, channel)});
        if (!counter.ok || counter.reply.type == RedisReply::Type::error) {
            error = reply_error("GET of the version counter", counter);
            return false;
        }
        if (counter.reply.type == RedisReply::Type::string &&
            !parse_u64(counter.reply.str, version_out)) {
            error = channel_version_key(prefix, channel) + " holds no version number";
            return false;
        }
        // The stream too, in case the counter was lost (deleted, evicted).
        const RedisResult recent = link.command(
            {"XREVRANGE", channel_stream_key(prefix, channel), "+", "-", "COUNT", "100"});
        if (!recent.ok || recent.reply.type == RedisReply::Type::error) {
            error = reply_error("XREVRANGE", recent);
            return false;
        }
        for (const RedisReply &e : recent.reply.elements) {
            if (e.type != RedisReply::Type::array || e.elements.size() != 2) continue;
            Entry parsed;
            if (parse_entry(e.elements[1], parsed).empty() && parsed.type == Entry::Type::version)
                version_out = std::max(version_out, parsed.version);
        }
        return true;
    } catch (const std::exception &e) {
        error = e.what();
        return false;
    }
}

bool publish_version(RedisLink &link, std::string_view prefix, std::string_view channel,
                     std::string_view content, const Ed25519Signer *sign,
                     std::uint64_t &version_out, std::string &error) {
    try {
        if (!is_channel_name(channel)) {
            error = "invalid channel name (1 to 64 of A-Z a-z 0-9 _ . -)";
            return false;
        }
        if (content.size() > kChannelMaxVersionBytes) {
            error = "the content is larger than 1 GiB";
            return false;
        }
        const std::string sha = sha256_hex(content);
        const std::uint64_t chunks = channel_chunk_count(content.size());
        // Chunks first: an entry must never name content that is not there.
        if (!store_chunks(link, prefix, channel, content, sha, false, error)) return false;
        std::uint64_t newest = 0;
        if (!newest_channel_version(link, prefix, channel, newest, error)) return false;

        static const RedisScript script(kPublishScript);
        std::vector<std::string> keys = {channel_stream_key(prefix, channel),
                                         channel_version_key(prefix, channel),
                                         channel_blobs_key(prefix, channel)};
        for (std::uint64_t i = 0; i < chunks; i++)
            keys.push_back(channel_blob_key(prefix, channel, sha, i));
        for (int attempt = 0; attempt < kPublishAttempts; attempt++) {
            if (newest == UINT64_MAX) {
                error = "the channel's version number cannot grow any further";
                return false;
            }
            const std::uint64_t version = std::max(now_ms(), newest + 1);
            std::vector<std::string> args = {
                std::to_string(version), sha + ":" + std::to_string(chunks),
                std::string(prefix) + "k:{" + std::string(channel) + "}:blob:",
                std::to_string(kChannelKeptContents), std::to_string(kChannelStreamMaxLen)};
            for (std::string &f : version_entry_fields(channel, version, sha, content.size(), sign))
                args.push_back(std::move(f));
            const RedisResult r = link.run_script(script, keys, args);
            const RedisReply &rep = r.reply;
            if (!r.ok || rep.type != RedisReply::Type::array || rep.elements.size() != 2 ||
                rep.elements[0].type != RedisReply::Type::integer) {
                error = reply_error("the publish script", r);
                return false;
            }
            const RedisReply &value = rep.elements[1];
            switch (rep.elements[0].integer) {
            case 1: version_out = version; return true;
            case 0:  // another publisher got there first: number above it
                if (value.type != RedisReply::Type::string || !parse_u64(value.str, newest)) {
                    error = channel_version_key(prefix, channel) + " holds no version number";
                    return false;
                }
                break;
            case 2:  // trimmed away by another publisher meanwhile: store again
                if (!store_chunks(link, prefix, channel, content, sha, true, error)) return false;
                break;
            default: error = "the publish script: unexpected reply"; return false;
            }
        }
        error = "other publishers kept taking the version number; try again";
        return false;
    } catch (const std::exception &e) {
        error = e.what();
        return false;
    }
}

bool publish_revocations(RedisLink &link, std::string_view prefix, std::string_view channel,
                         const std::vector<ChannelRevocation> &revocations,
                         const Ed25519Signer *sign, std::string &error) {
    std::size_t published = 0;
    auto fail = [&](const std::string &why) {
        error = why + " (" + std::to_string(published) + " of " +
                std::to_string(revocations.size()) + " revocations published)";
        return false;
    };
    try {
        if (!is_channel_name(channel)) {
            error = "invalid channel name (1 to 64 of A-Z a-z 0-9 _ . -)";
            return false;
        }
        for (const ChannelRevocation &rv : revocations) {
            if (!is_identifier(rv.id) || rv.at < 0) {
                error = "invalid revocation (id or time)";
                return false;
            }
        }
        const std::string stream = channel_stream_key(prefix, channel);
        const std::string maxlen = std::to_string(kChannelStreamMaxLen);
        while (published < revocations.size()) {
            const std::size_t n = std::min(kRevocationsPerTransaction,
                                           revocations.size() - published);
            const RedisResult multi = link.command({"MULTI"});
            if (!multi.ok || multi.reply.type != RedisReply::Type::status)
                return fail(reply_error("MULTI", multi));
            for (std::size_t i = published; i < published + n; i++) {
                std::vector<std::string> argv = {"XADD", stream, "MAXLEN", "~", maxlen, "*"};
                for (std::string &f :
                     revoke_entry_fields(channel, revocations[i].id, revocations[i].at, sign))
                    argv.push_back(std::move(f));
                const RedisResult queued = link.command(argv);
                if (!queued.ok || queued.reply.type != RedisReply::Type::status) {
                    if (queued.ok) link.command({"DISCARD"});
                    return fail(reply_error("XADD", queued));
                }
            }
            const RedisResult exec = link.command({"EXEC"});
            if (!exec.ok || exec.reply.type != RedisReply::Type::array ||
                exec.reply.elements.size() != n)
                return fail(reply_error("EXEC", exec));
            for (const RedisReply &e : exec.reply.elements) {
                if (e.type == RedisReply::Type::error) return fail("XADD: " + e.str);
            }
            published += n;
        }
        return true;
    } catch (const std::exception &e) {
        return fail(e.what());
    }
}

}  // namespace apikey
