#include "grant_script.h"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <iterator>

namespace apikey {

// The script. KEYS[1] = PREFIX epoch, KEYS[2] = PREFIX s:<node hex>, KEYS[3]
// = PREFIX n:<zone name>, KEYS[3 + i] = budget i's hash. ARGV: seq,
// epoch_seen, epoch_candidate, quarantine_ms, budget count, then per budget:
// limit, period_ms, want, lease_ms, give_back, give_back_bucket, history
// count, history pairs (age_ms, count). Reply: status, epoch, now_ms,
// quarantine left, last seq, nodes seen, then per budget (when "ok"): grant,
// lease_ms, lease_bucket, total, room_ms, reset_ms.
//
// Nodes seen: every batch, whatever its reply (epoch, stale or ok), marks its
// node (the last 16 characters of KEYS[2]: its hex id) in the zone's sorted
// set at now, drops the members last seen kNodeSeenMs or more ago, and
// reports how many are left (itself included).
//
// Every number is an integer below 2^53, so Lua's doubles are exact and the
// C++ model below computes the very same values.
#define APIKEY_NODE_SEEN_MS 10000
static_assert(kNodeSeenMs == APIKEY_NODE_SEEN_MS, "the script's text has the same number");
#define APIKEY_STRINGIFY2(x) #x
#define APIKEY_STRINGIFY(x) APIKEY_STRINGIFY2(x)

const std::string_view kGrantScript = R"lua(
local seen_ms = )lua" APIKEY_STRINGIFY(APIKEY_NODE_SEEN_MS) R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[3] .. ':' .. string.format('%d', now)
  redis.call('SET', KEYS[1], epoch, 'NX')
end
local created = tonumber(string.match(epoch, ':(%d+)$') or '')
local qleft = 0
if created then
  qleft = created + tonumber(ARGV[4]) - now
  if qleft < 0 then qleft = 0 end
end
-- nodes seen: this node now, none last seen seen_ms or more ago
local node = string.sub(KEYS[2], -16)
redis.call('ZADD', KEYS[3], string.format('%d', now), node)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', string.format('%d', now - seen_ms))
local nodes = redis.call('ZCARD', KEYS[3])
redis.call('PEXPIRE', KEYS[3], seen_ms)
if ARGV[2] ~= '' and ARGV[2] ~= epoch then
  return {'epoch', epoch, now, qleft, 0, nodes}
end
local seq = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if seq <= last then
  return {'stale', epoch, now, qleft, last, nodes}
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', 86400000)
local n = tonumber(ARGV[5])
local out = {'ok', epoch, now, qleft, seq, nodes}
local a = 6
for i = 1, n do
  local key = KEYS[3 + i]
  local limit = tonumber(ARGV[a])
  local period = tonumber(ARGV[a + 1])
  local want = tonumber(ARGV[a + 2])
  local lease = tonumber(ARGV[a + 3])
  local gb = tonumber(ARGV[a + 4])
  local gbb = tonumber(ARGV[a + 5])
  local k = tonumber(ARGV[a + 6])
  a = a + 7
  local w = math.floor((period + 49) / 50)
  if w < 1 then w = 1 end
  -- bucket b counts while (b + 1) * w - 1 + period > now
  local h = redis.call('HGETALL', key)
  local cnt = {}
  local dead = {}
  local total = 0
  for j = 1, #h, 2 do
    local b = tonumber(h[j])
    local c = tonumber(h[j + 1])
    if b and c and c > 0 and (b + 1) * w - 1 + period > now then
      cnt[b] = c
      total = total + c
    else
      dead[#dead + 1] = h[j]
    end
  end
  if #dead > 0 then redis.call('HDEL', key, unpack(dead)) end
  local add = {}
  local function bump(b, d)
    add[b] = (add[b] or 0) + d
    cnt[b] = (cnt[b] or 0) + d
    total = total + d
  end
  -- reported requests (overdraft, re-seeded history) at now - age: no
  -- earlier than they happened; those that left the window are not kept
  for r = 1, k do
    local b = math.floor((now - tonumber(ARGV[a])) / w)
    local c = tonumber(ARGV[a + 1])
    a = a + 2
    if c > 0 and (b + 1) * w - 1 + period > now then bump(b, c) end
  end
  -- unused units go back to the bucket they were recorded in, if it counts
  if gb > 0 and cnt[gbb] and cnt[gbb] > 0 then bump(gbb, -math.min(gb, cnt[gbb])) end
  local grant, lease_ms, e = 0, 0, 0
  if qleft == 0 and want > 0 and total < limit then
    -- at most half the room: other nodes may want some too
    grant = math.min(want, math.max(1, math.floor((limit - total) / 2)))
    e = math.floor((now + lease) / w)
    lease_ms = (e + 1) * w - 1 - now
    bump(e, grant)
  end
  for b, d in pairs(add) do
    if d ~= 0 then redis.call('HINCRBY', key, string.format('%d', b), d) end
  end
  local room, reset = 0, 0
  local bs = {}
  for b, c in pairs(cnt) do
    if c > 0 then bs[#bs + 1] = b end
  end
  if #bs > 0 then
    table.sort(bs)
    reset = (bs[#bs] + 1) * w - 1 + period - now
    if total >= limit then
      local left = total
      for j = 1, #bs do
        left = left - cnt[bs[j]]
        if left < limit then
          room = (bs[j] + 1) * w - 1 + period - now
          break
        end
      end
    end
    redis.call('PEXPIRE', key, reset + 1)
  end
  out[#out + 1] = grant
  out[#out + 1] = lease_ms
  out[#out + 1] = e
  out[#out + 1] = total
  out[#out + 1] = room
  out[#out + 1] = reset
end
return out
)lua";

#undef APIKEY_STRINGIFY
#undef APIKEY_STRINGIFY2
#undef APIKEY_NODE_SEEN_MS

std::int64_t redis_bucket_ms(std::uint32_t period_ms) noexcept {
    const std::int64_t w = (static_cast<std::int64_t>(period_ms) + kRedisBucketsPerPeriod - 1) /
                           kRedisBucketsPerPeriod;
    return w > 0 ? w : 1;
}

std::int64_t floor_div64(std::int64_t a, std::int64_t b) noexcept {
    const std::int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

namespace {

std::string hex16(std::uint64_t v) {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
    return buf;
}

bool to_int(const std::string &s, std::int64_t &v) {
    if (s.empty()) return false;
    const char *b = s.data();
    const char *e = b + s.size();
    auto [p, ec] = std::from_chars(b, e, v);
    return ec == std::errc() && p == e;
}

}  // namespace

void grant_script_call(std::string_view prefix, const GrantBatchHeader &header,
                       const std::vector<GrantRequest> &budgets, std::vector<std::string> &keys,
                       std::vector<std::string> &args) {
    const std::string p(prefix);
    keys.clear();
    args.clear();
    keys.reserve(3 + budgets.size());
    keys.push_back(p + "epoch");
    keys.push_back(p + "s:" + hex16(header.node));  // the script takes the node from its end
    keys.push_back(p + "n:" + header.zone);
    args.push_back(std::to_string(header.seq));
    args.push_back(header.epoch_seen);
    args.push_back(hex16(header.epoch_candidate));
    args.push_back(std::to_string(header.quarantine_ms));
    args.push_back(std::to_string(budgets.size()));
    for (const GrantRequest &g : budgets) {
        // The hash tag keeps a budget in one Redis Cluster slot later.
        keys.push_back(p + "l:{" + hex16(g.budget) + "}");
        args.push_back(std::to_string(g.limit));
        args.push_back(std::to_string(g.period_ms));
        args.push_back(std::to_string(g.want));
        args.push_back(std::to_string(g.lease_ms));
        args.push_back(std::to_string(g.give_back));
        args.push_back(std::to_string(g.give_back_bucket));
        args.push_back(std::to_string(g.history.size()));
        for (const ReseedEntry &h : g.history) {
            args.push_back(std::to_string(h.age_ms));
            args.push_back(std::to_string(h.count));
        }
    }
}

bool parse_grant_reply(const RedisReply &reply, std::size_t budgets, GrantReply &out,
                       std::string &error) {
    out = GrantReply{};
    if (reply.type == RedisReply::Type::error) {
        error = "grant script: " + reply.str;
        return false;
    }
    const auto &e = reply.elements;
    if (reply.type != RedisReply::Type::array || e.size() < 6 ||
        e[0].type != RedisReply::Type::string || e[1].type != RedisReply::Type::string ||
        e[2].type != RedisReply::Type::integer || e[3].type != RedisReply::Type::integer ||
        e[4].type != RedisReply::Type::integer || e[5].type != RedisReply::Type::integer) {
        error = "grant script: unexpected reply";
        return false;
    }
    if (e[0].str == "ok") {
        out.status = GrantStatus::applied;
    } else if (e[0].str == "epoch") {
        out.status = GrantStatus::epoch_changed;
    } else if (e[0].str == "stale") {
        out.status = GrantStatus::stale;
    } else {
        error = "grant script: unknown status";
        return false;
    }
    out.epoch = e[1].str;
    out.now_ms = e[2].integer;
    out.quarantine_ms = static_cast<std::uint32_t>(
        std::clamp<std::int64_t>(e[3].integer, 0, 0x7fffffff));
    out.last_seq = static_cast<std::uint64_t>(std::max<std::int64_t>(e[4].integer, 0));
    out.nodes = static_cast<std::uint32_t>(std::clamp<std::int64_t>(e[5].integer, 0, 0xffffffffll));
    if (out.status != GrantStatus::applied) return true;
    if (e.size() != 6 + 6 * budgets) {
        error = "grant script: reply for another batch size";
        return false;
    }
    auto u32 = [](const RedisReply &r) {
        return static_cast<std::uint32_t>(std::clamp<std::int64_t>(r.integer, 0, 0xffffffffll));
    };
    out.results.resize(budgets);
    for (std::size_t i = 0; i < budgets; i++) {
        const RedisReply *f = &e[6 + 6 * i];
        for (int j = 0; j < 6; j++) {
            if (f[j].type != RedisReply::Type::integer) {
                error = "grant script: unexpected reply";
                return false;
            }
        }
        GrantResult &r = out.results[i];
        r.grant = u32(f[0]);
        r.lease_ms = u32(f[1]);
        r.lease_bucket = f[2].integer;
        r.total = u32(f[3]);
        r.room_ms = u32(f[4]);
        r.reset_ms = u32(f[5]);
    }
    return true;
}

// ---- the model: the script above, line for line ----------------------------

namespace {

bool expired(std::int64_t expire_at, std::int64_t now) { return expire_at != 0 && now > expire_at; }

const std::string *get_text(GrantStore &s, const std::string &key, std::int64_t now) {
    auto it = s.strings.find(key);
    if (it == s.strings.end()) return nullptr;
    if (expired(it->second.expire_at, now)) {
        s.strings.erase(it);
        return nullptr;
    }
    return &it->second.value;
}

GrantStore::Hash *get_hash(GrantStore &s, const std::string &key, std::int64_t now) {
    auto it = s.hashes.find(key);
    if (it == s.hashes.end()) return nullptr;
    if (expired(it->second.expire_at, now)) {
        s.hashes.erase(it);
        return nullptr;
    }
    return &it->second;
}

GrantStore::SortedSet *get_zset(GrantStore &s, const std::string &key, std::int64_t now) {
    auto it = s.zsets.find(key);
    if (it == s.zsets.end()) return nullptr;
    if (expired(it->second.expire_at, now)) {
        s.zsets.erase(it);
        return nullptr;
    }
    return &it->second;
}

RedisReply array_of(std::initializer_list<RedisReply> items) {
    RedisReply r;
    r.type = RedisReply::Type::array;
    r.elements = items;
    return r;
}

}  // namespace

RedisReply grant_model_eval(GrantStore &store, std::int64_t now,
                            const std::vector<std::string> &keys,
                            const std::vector<std::string> &args) {
    const RedisReply bad = RedisReply::of_error("ERR malformed grant batch");
    if (keys.size() < 3 || args.size() < 5) return bad;
    std::int64_t seq = 0;
    std::int64_t quarantine = 0;
    std::int64_t n = 0;
    if (!to_int(args[0], seq) || !to_int(args[3], quarantine) || !to_int(args[4], n) || n < 0 ||
        keys.size() != 3 + static_cast<std::size_t>(n)) {
        return bad;
    }

    std::string epoch;
    if (const std::string *e = get_text(store, keys[0], now)) {
        epoch = *e;
    } else {
        epoch = args[2] + ":" + std::to_string(now);
        store.strings[keys[0]] = {epoch, 0};
    }
    // Lua: tonumber(string.match(epoch, ':(%d+)$'))
    std::int64_t qleft = 0;
    {
        std::size_t i = epoch.size();
        while (i > 0 && epoch[i - 1] >= '0' && epoch[i - 1] <= '9') i--;
        std::int64_t created = 0;
        if (i > 0 && i < epoch.size() && epoch[i - 1] == ':' && to_int(epoch.substr(i), created)) {
            qleft = std::max<std::int64_t>(0, created + quarantine - now);
        }
    }
    // Lua: string.sub(KEYS[2], -16), then ZADD, ZREMRANGEBYSCORE -inf
    // (now - seen), ZCARD, PEXPIRE.
    std::int64_t nodes = 0;
    {
        const std::string &s = keys[1];
        const std::string node = s.size() > 16 ? s.substr(s.size() - 16) : s;
        get_zset(store, keys[2], now);  // an expired set is gone before ZADD
        GrantStore::SortedSet &z = store.zsets[keys[2]];
        z.members[node] = now;
        for (auto it = z.members.begin(); it != z.members.end();) {
            it = it->second <= now - kNodeSeenMs ? z.members.erase(it) : std::next(it);
        }
        nodes = static_cast<std::int64_t>(z.members.size());
        z.expire_at = now + kNodeSeenMs;
    }
    if (!args[1].empty() && args[1] != epoch) {
        return array_of({RedisReply::of_string("epoch"), RedisReply::of_string(epoch),
                         RedisReply::of_integer(now), RedisReply::of_integer(qleft),
                         RedisReply::of_integer(0), RedisReply::of_integer(nodes)});
    }
    std::int64_t last = 0;
    if (const std::string *l = get_text(store, keys[1], now)) {
        if (!to_int(*l, last)) last = 0;
    }
    if (seq <= last) {
        return array_of({RedisReply::of_string("stale"), RedisReply::of_string(epoch),
                         RedisReply::of_integer(now), RedisReply::of_integer(qleft),
                         RedisReply::of_integer(last), RedisReply::of_integer(nodes)});
    }
    store.strings[keys[1]] = {args[0], now + 86'400'000};

    RedisReply out = array_of({RedisReply::of_string("ok"), RedisReply::of_string(epoch),
                               RedisReply::of_integer(now), RedisReply::of_integer(qleft),
                               RedisReply::of_integer(seq), RedisReply::of_integer(nodes)});
    std::size_t a = 5;
    for (std::int64_t i = 0; i < n; i++) {
        std::int64_t v[7];
        if (a + 7 > args.size()) return bad;
        for (int j = 0; j < 7; j++) {
            if (!to_int(args[a + j], v[j])) return bad;
        }
        a += 7;
        const std::int64_t limit = v[0], period = v[1], want = v[2], lease = v[3], gb = v[4],
                           gbb = v[5], k = v[6];
        if (k < 0 || a + 2 * static_cast<std::size_t>(k) > args.size()) return bad;
        const std::int64_t w = std::max<std::int64_t>(1, floor_div64(period + 49, 50));
        auto counts_at_now = [&](std::int64_t b) { return (b + 1) * w - 1 + period > now; };

        const std::string &key = keys[3 + static_cast<std::size_t>(i)];
        std::map<std::int64_t, std::int64_t> cnt;
        std::int64_t total = 0;
        if (GrantStore::Hash *h = get_hash(store, key, now)) {
            for (auto it = h->fields.begin(); it != h->fields.end();) {
                if (it->second > 0 && counts_at_now(it->first)) {
                    cnt[it->first] = it->second;
                    total += it->second;
                    ++it;
                } else {
                    it = h->fields.erase(it);  // HDEL
                }
            }
            if (h->fields.empty()) store.hashes.erase(key);  // Redis drops empty hashes
        }
        std::map<std::int64_t, std::int64_t> add;
        auto bump = [&](std::int64_t b, std::int64_t d) {
            add[b] += d;
            cnt[b] += d;
            total += d;
        };
        for (std::int64_t r = 0; r < k; r++) {
            std::int64_t age = 0;
            std::int64_t c = 0;
            if (!to_int(args[a], age) || !to_int(args[a + 1], c)) return bad;
            a += 2;
            const std::int64_t b = floor_div64(now - age, w);
            if (c > 0 && counts_at_now(b)) bump(b, c);
        }
        if (gb > 0) {
            auto it = cnt.find(gbb);
            if (it != cnt.end() && it->second > 0) bump(gbb, -std::min(gb, it->second));
        }
        std::int64_t grant = 0, lease_ms = 0, e = 0;
        if (qleft == 0 && want > 0 && total < limit) {
            grant = std::min(want, std::max<std::int64_t>(1, floor_div64(limit - total, 2)));
            e = floor_div64(now + lease, w);
            lease_ms = (e + 1) * w - 1 - now;
            bump(e, grant);
        }
        for (const auto &[b, d] : add) {
            if (d == 0) continue;
            GrantStore::Hash &h = store.hashes[key];  // HINCRBY creates the hash
            h.fields[b] += d;
        }
        std::int64_t room = 0, reset = 0;
        std::int64_t newest = 0;
        bool any = false;
        for (const auto &[b, c] : cnt) {
            if (c > 0) {
                newest = b;  // ascending: the last one is the newest
                any = true;
            }
        }
        if (any) {
            reset = (newest + 1) * w - 1 + period - now;
            if (total >= limit) {
                std::int64_t left = total;
                for (const auto &[b, c] : cnt) {
                    if (c <= 0) continue;
                    left -= c;
                    if (left < limit) {
                        room = (b + 1) * w - 1 + period - now;
                        break;
                    }
                }
            }
            store.hashes[key].expire_at = now + reset + 1;  // PEXPIRE
        }
        for (std::int64_t x : {grant, lease_ms, e, total, room, reset}) {
            out.elements.push_back(RedisReply::of_integer(x));
        }
    }
    return out;
}

}  // namespace apikey
