#include "grant_ledger.h"

#include <algorithm>
#include <new>

namespace apikey {

namespace {

std::uint32_t add_sat(std::uint32_t a, std::uint32_t b) noexcept {
    const std::uint64_t s = std::uint64_t{a} + b;
    return s > 0xffffffffu ? 0xffffffffu : static_cast<std::uint32_t>(s);
}

bool lease_valid(const SyncLedger &l, std::int64_t now) noexcept {
    return l.lease_left > 0 && now < l.lease_until_ms;
}

}  // namespace

void ledger_init(SyncLedger &l, std::uint32_t epoch_gen) noexcept {
    l = SyncLedger{};
    l.seeded_gen = epoch_gen;
}

void ledger_give_back(SyncLedger &l, std::uint32_t units, std::int64_t bucket) noexcept {
    if (units == 0) return;
    if (l.give_back == 0) {
        l.give_back = units;
        l.give_back_bucket = bucket;
    } else if (l.give_back_bucket == bucket) {
        l.give_back = add_sat(l.give_back, units);
    }
}

void ledger_refresh(SyncLedger &l, std::uint32_t epoch_gen, std::int64_t now) noexcept {
    if (l.seeded_gen != epoch_gen) {
        // Redis lost the records of this lease and of the give-back: using
        // the lease would be unrecorded, returning units would take away
        // someone else's. The re-seed reports what was used.
        l.lease_left = 0;
        l.give_back = 0;
        return;
    }
    if (l.lease_left > 0 && now >= l.lease_until_ms) {
        ledger_give_back(l, l.lease_left, l.lease_bucket);
        l.lease_left = 0;
    }
}

namespace {

// ledger_admit on the ledger itself, or on a dry run's copy.
[[gnu::always_inline]] inline LedgerDecision admit(SyncLedger &l, const SyncConfig &config,
                                                   LedgerContext ctx,
                                                   const WindowDecision &local) noexcept {
    const std::int64_t now = ctx.now_ms;
    if (l.limit != local.limit) {
        // A new rate (reload, key override): room_at was for the old one.
        l.limit = local.limit;
        l.view_room_at_ms = 0;
    }
    ledger_refresh(l, ctx.epoch_gen, now);

    LedgerDecision d{};
    d.lease_until_ms = l.lease_until_ms;
    d.lease_bucket = l.lease_bucket;
    l.demand = add_sat(l.demand, 1);
    if (l.demand_at_ms != 0 && now >= l.demand_at_ms) {
        // An average of the last few gaps (weight 1/4): sparse clients get
        // leases that last until their next request.
        const std::int64_t gap = std::min<std::int64_t>(now - l.demand_at_ms, 0x7fffffff);
        const std::int64_t avg = l.demand_gap_ms;
        l.demand_gap_ms = static_cast<std::uint32_t>(avg == 0 ? gap : avg + (gap - avg) / 4);
    }
    l.demand_at_ms = now;
    if (lease_valid(l, now)) {
        l.lease_left--;
        d.allowed = true;
        d.via = LedgerVia::lease;
    } else if (ctx.mode == LedgerMode::local_fallback) {
        // fail=local: the local window is the limit; remember to report it.
        l.unacked = add_sat(l.unacked, 1);
        l.unacked_at_ms = now;
        d.allowed = true;
        d.via = LedgerVia::local;
    } else if (l.unacked < config.overdraft && ledger_view_total(l, now) + l.unacked < l.limit) {
        l.unacked++;
        l.unacked_at_ms = now;
        d.allowed = true;
        d.via = LedgerVia::overdraft;
    } else {
        d.allowed = false;
        d.via = LedgerVia::refused;
    }

    const std::int64_t reset_ms = l.view_reset_at_ms - now;
    if (d.allowed) {
        d.remaining = local.remaining;
        if (d.via != LedgerVia::local) {
            const std::uint32_t est = ledger_cluster_remaining(l, now);
            if (est < d.remaining) d.remaining = est;
        }
        d.reset_s = local.reset_s;
        if (d.via != LedgerVia::local && ledger_ceil_seconds(reset_ms) > d.reset_s) {
            d.reset_s = ledger_ceil_seconds(reset_ms);
        }
        d.next_free_s = local.next_free_s;
        return d;
    }
    // Refused. Room comes when the view's records leave (if the view was
    // full), and a grant needs a batch: a tick and a round trip at least.
    std::int64_t wait = config.renew_ms();
    const bool full = ledger_view_total(l, now) + l.unacked >= l.limit;
    if (full && l.view_room_at_ms - now > wait) wait = l.view_room_at_ms - now;
    d.retry_after_s = ledger_ceil_seconds(wait);
    if (d.retry_after_s == 0) d.retry_after_s = 1;
    d.next_free_s = d.retry_after_s;
    d.reset_s = ledger_ceil_seconds(reset_ms);
    if (local.reset_s > d.reset_s) d.reset_s = local.reset_s;
    return d;
}

}  // namespace

LedgerDecision ledger_admit(SyncLedger &ledger, const SyncConfig &config, LedgerContext ctx,
                            const WindowDecision &local, bool commit) noexcept {
    if (commit) return admit(ledger, config, ctx, local);
    // A dry run decides on a copy.
    SyncLedger scratch = ledger;
    return admit(scratch, config, ctx, local);
}

bool ledger_decide(SyncLedger &ledger, const SyncConfig &config, LedgerContext ctx,
                   WindowDecision &decision, LedgerDecision &out, bool commit) noexcept {
    if (commit && ledger_take_lease(ledger, ctx.now_ms, ctx.epoch_gen, decision, out)) return true;
    // (Built in place, the ledger's own or a dry run's copy decided inline.)
    if (commit) {
        ::new (static_cast<void *>(&out)) LedgerDecision(admit(ledger, config, ctx, decision));
    } else {
        SyncLedger scratch = ledger;
        ::new (static_cast<void *>(&out)) LedgerDecision(admit(scratch, config, ctx, decision));
    }
    if (out.allowed) {
        decision.remaining = out.remaining;
        decision.retry_after_s = 0;
    } else {
        decision.allowed = false;
        decision.remaining = 0;
        decision.retry_after_s = out.retry_after_s;
    }
    decision.reset_s = out.reset_s;
    decision.next_free_s = out.next_free_s;
    return out.allowed;
}

void ledger_refund(SyncLedger &l, const LedgerDecision &d) noexcept {
    if (!d.allowed) return;
    if (d.via == LedgerVia::lease) {
        // Only into the lease it came from; if that lease was replaced or has
        // expired, the unit stays spent (recorded: the safe side).
        if (l.lease_bucket == d.lease_bucket && l.lease_until_ms == d.lease_until_ms) {
            l.lease_left = add_sat(l.lease_left, 1);
        }
        return;
    }
    // The newest unacked units are the ones no batch carries yet.
    if (l.unacked > l.inflight) l.unacked--;
}

}  // namespace apikey
