// What one location requires of a key (scopes, plans, environment), and the
// check itself: the request path from a presented key to a verdict.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "key_digest_cache.h"
#include "key_table.h"
#include "outcome.h"

namespace apikey {

// HTTP methods a scope rule can name; the glue maps nginx's method to one bit.
enum MethodBit : unsigned {
    kGet = 1u << 0,
    kHead = 1u << 1,
    kPost = 1u << 2,
    kPut = 1u << 3,
    kPatch = 1u << 4,
    kDelete = 1u << 5,
    kOptions = 1u << 6,
    kOtherMethod = 1u << 7,
    kAnyMethod = 0xffu,
};

// 0 if name is not one of the methods api_key_scope accepts.
unsigned method_bit(std::string_view name) noexcept;

enum class RequiredEnvironment : std::uint8_t { any, live, test };

struct ScopeRule {
    unsigned methods = kAnyMethod;
    std::vector<std::string> scopes;  // all required, reported in this order
};

struct Verdict {
    Outcome outcome = Outcome::invalid_key;
    Environment environment = Environment::none;
    const KeyRecord *record = nullptr;  // set once the key was found
    std::string_view missing_scope;     // for insufficient_scope
};

// What a presented key is, before any table lookup.
struct Identity {
    Outcome outcome = Outcome::invalid_key;  // or accepted, meaning "identified"
    Environment environment = Environment::none;
    Digest digest{};         // set when identified
    bool from_memo = false;  // the digest came from the memo, not SHA-256
};

// Syntax -> prefix -> SHA-256. With a memo, a key remembered there skips
// the syntax check (it passed it when it was remembered) and SHA-256.
Identity identify_key(const KeyTable &table, std::string_view key,
                      const KeyDigestCache *memo = nullptr) noexcept;

class AccessPolicy {
public:
    // memo_id: unique among the policies a process uses (1 to 65535), for
    // note_acceptance; 0: this policy's acceptances are never noted.
    AccessPolicy(std::vector<ScopeRule> rules, std::vector<std::string> plans,
                 RequiredEnvironment environment, std::uint16_t memo_id = 0);

    // identify_key, then check_digest. No allocation and no exceptions: the
    // per-table view of the rules is rebuilt in place when the table changes.
    Verdict check(const KeyTable &table, std::string_view key, unsigned method, std::int64_t now,
                  ClientSource client = {}) noexcept;

    // Lookup -> revoked -> expired -> environment -> plan -> allowed_ips ->
    // scopes, for a key already identified (also after an internal
    // redirect, when the key itself may have been hidden from the request).
    // The client's address is read only for a key with allowed_ips; an
    // unknown one (no source, a unix socket) matches none of them.
    Verdict check_digest(const KeyTable &table, const Digest &digest, Environment environment,
                         unsigned method, std::int64_t now, ClientSource client = {}) noexcept;
    // The same after the lookup, for a record the caller found before by
    // this key's digest in this very table (tables never change).
    Verdict check_record(const KeyTable &table, const KeyRecord &record, Environment environment,
                         unsigned method, std::int64_t now, ClientSource client = {}) noexcept;

    // The caller keeps, beside a record that check_record (or check_digest)
    // accepted, that this policy accepted it for this method. Of what the
    // policy reads, only the time and the client's address can change
    // while the record's table is in force (tables never change, the
    // policy is fixed for the configuration's life), so the next request
    // of the key in that table, to a location of this policy with the same
    // method, needs only accepted_as_noted.
    void note_acceptance(MemoNote &note, unsigned method) const noexcept {
        if (memo_id_ == 0) return;
        note.accepted_by = memo_id_;
        note.accepted_method = static_cast<std::uint8_t>(method);
    }
    // True when `note` holds this policy's acceptance for `method` and the
    // record still passes what can change: it has no allowed_ips (the
    // address is not noted) and is neither revoked nor expired at `now`.
    // The caller has checked that the note is of the record's table. A
    // note without an acceptance never matches: its method 0 is no method.
    bool accepted_as_noted(const MemoNote &note, const KeyRecord &record, unsigned method,
                           std::int64_t now) const noexcept {
        return note.accepted_by == memo_id_ && note.accepted_method == method &&
               record.networks == 0 && now < record.revoked_at() && now < record.expires_at();
    }

    bool checks_plan() const noexcept { return !plans_.empty(); }

private:
    void compile(const KeyTable &table) noexcept;

    struct CompiledRule {
        ScopeSet need{};
        bool unknown = false;   // names a scope no key in the table has
        std::vector<int> bits;  // per scope of the rule, -1 when unknown
    };

    std::vector<ScopeRule> rules_;
    std::vector<std::string> plans_;
    RequiredEnvironment environment_;
    std::uint16_t memo_id_;

    std::uint64_t compiled_for_ = 0;  // build_id of the table below
    std::vector<CompiledRule> compiled_;
    std::uint64_t plan_mask_ = 0;
};

}  // namespace apikey
