"""SPEC "Rate-limit headers" and the precision promises of README "Rate limits":

* precision against a sliding log the test keeps itself (client-side send and
  receive times of every accepted request): 10r/s answers `Retry-After: 1`
  and lets the retry in; 5r/m answers the exact remaining time of the oldest
  request (never just "the period"); 20r/s (over 16, the bucketed window)
  accepts 20, then `Retry-After: 1`;
* per-day rates (`Nr/d`) in `api_key_limit` and in a key's `limits:`, the
  429 message "per day", `Retry-After` close to a day, counters that survive
  `nginx -s reload`;
* `api_key_limit_headers x | ietf | both | off`: the IETF `RateLimit-Policy`
  and `RateLimit` fields checked with a strict RFC 9651 list parser (below),
  one item per category and period in configuration order, r/t values, a
  429's items and `Retry-After`, no partition key, inheritance from server{}.

Real nginx, 2 workers, `listen ... reuseport` and one connection per request,
so requests are spread over both workers. Every test spends the budgets of
its own key(s). Waits use r/s limits; the whole file takes about 10 s."""

import math
import re
import string
import time
import unittest

from harness import (REQUEST_ID_RE, ConfigCheckCase, KeyFile, NginxCase, bearer, wait_until)

UP = "proxy_pass http://127.0.0.1:{upstream};"


# --------------------------------------------------------------------------
# RFC 9651 structured fields: a strict parser for the one shape used here

class SFError(ValueError):
    pass


_LCALPHA = string.ascii_lowercase
_KEY_FIRST = set(_LCALPHA + "*")
_KEY_REST = set(_LCALPHA + string.digits + "_-.*")
_OWS = " \t"


def _sf_string(s, pos):
    """RFC 9651 §4.2.5: an sf-string at s[pos]; returns (value, new pos)."""
    if pos >= len(s) or s[pos] != '"':
        raise SFError("expected an sf-string at %d in %r" % (pos, s))
    pos += 1
    out = []
    while pos < len(s):
        c = s[pos]
        pos += 1
        if c == "\\":
            if pos >= len(s):
                raise SFError("a backslash ends the input in %r" % s)
            nxt = s[pos]
            pos += 1
            if nxt not in ('"', "\\"):
                raise SFError("bad escape \\%s in %r" % (nxt, s))
            out.append(nxt)
        elif c == '"':
            return "".join(out), pos
        elif ord(c) < 0x20 or ord(c) > 0x7e:
            raise SFError("byte %r is not allowed in an sf-string: %r" % (c, s))
        else:
            out.append(c)
    raise SFError("unterminated sf-string in %r" % s)


def _sf_key(s, pos):
    """RFC 9651 §4.2.3.3: key = ( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )."""
    if pos >= len(s) or s[pos] not in _KEY_FIRST:
        raise SFError("expected a parameter key at %d in %r" % (pos, s))
    start = pos
    pos += 1
    while pos < len(s) and s[pos] in _KEY_REST:
        pos += 1
    return s[start:pos], pos


def _sf_integer(s, pos):
    """RFC 9651 §4.2.4, integers only: ["-"] 1*15DIGIT, not followed by "."."""
    start = pos
    if pos < len(s) and s[pos] == "-":
        pos += 1
    digits = pos
    while pos < len(s) and s[pos] in string.digits:
        pos += 1
    if pos == digits:
        raise SFError("expected an sf-integer at %d in %r" % (start, s))
    if pos - digits > 15:
        raise SFError("an sf-integer has at most 15 digits: %r" % s[start:pos])
    if pos < len(s) and s[pos] == ".":
        raise SFError("a decimal where an sf-integer belongs: %r" % s)
    return int(s[start:pos]), pos


def parse_sf_list(text):
    """RFC 9651 §4.2.1 (List) restricted to what RateLimit-Policy and RateLimit
    may hold: members are Items (no Inner Lists) whose bare item is an
    sf-string and whose parameters all have sf-integer values. Returns
    [(name, [(key, int), ...]), ...], parameters in order as sent (a repeated
    key is kept twice, so comparisons catch it). Raises SFError on anything
    else: tokens, booleans, decimals, trailing or doubled commas, junk."""
    s = text.strip(" ")  # §4.2 step 2: leading and trailing SP are discarded
    if s == "":
        raise SFError("an empty field value")
    items, pos = [], 0
    while True:
        name, pos = _sf_string(s, pos)
        params = []
        while pos < len(s) and s[pos] == ";":  # §4.2.3.2
            pos += 1
            while pos < len(s) and s[pos] == " ":  # SP only, no HTAB
                pos += 1
            key, pos = _sf_key(s, pos)
            if pos >= len(s) or s[pos] != "=":
                raise SFError("parameter %r has no value (a boolean) in %r" % (key, s))
            value, pos = _sf_integer(s, pos + 1)
            params.append((key, value))
        items.append((name, params))
        while pos < len(s) and s[pos] in _OWS:
            pos += 1
        if pos == len(s):
            return items
        if s[pos] != ",":
            raise SFError("expected ',' or the end at %d in %r" % (pos, s))
        pos += 1
        while pos < len(s) and s[pos] in _OWS:
            pos += 1
        if pos == len(s):
            raise SFError("a trailing comma in %r" % s)


def sf_field(resp, name, test):
    """The parsed list of the one `name` field of resp (fails the test if the
    field is missing, repeated or not strictly valid)."""
    values = resp.header_all(name)
    test.assertEqual(len(values), 1, "exactly one %s field; got %r in %r" % (name, values, resp))
    try:
        return parse_sf_list(values[0])
    except SFError as e:
        test.fail("%s is a valid RFC 9651 list of string items with integer parameters: "
                  "%r: %s" % (name, values[0], e))


def item_params(test, item, keys, what):
    """The parameters of one item as a dict, asserting they are exactly `keys`
    (in that order, once each)."""
    name, params = item
    test.assertEqual([k for k, _ in params], list(keys),
                     "%s: item %r has exactly the parameters %s; got %r"
                     % (what, name, ";".join(keys), params))
    return dict(params)


# --------------------------------------------------------------------------

HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;
    api_key_limit_zone lz:1m;
    api_key_limit_zone lz2:1m;

    log_format rlh 'pid=$pid rid=$api_key_request_id status=$status';

    server {
        listen 127.0.0.1:{port} reuseport;
        server_name localhost;
        api_key keys;
        access_log {prefix}/rlh.log rlh;

        location /s10/ {
            api_key_limit lz read 10r/s;
            UP
        }
        location /m5/ {
            api_key_limit lz read 5r/m;
            UP
        }
        location /s20/ {
            api_key_limit lz read 20r/s;
            UP
        }
        location /default/ {
            api_key_limit lz read 100r/m;
            api_key_limit lz2 read 1000r/h;
            UP
        }
        location /ietf/ {
            api_key_limit_headers ietf;
            api_key_limit lz read 100r/m;
            api_key_limit lz2 read 1000r/h;
            UP
        }
        location /both/ {
            api_key_limit_headers both;
            api_key_limit lz read 100r/m;
            api_key_limit lz2 read 1000r/h;
            UP
        }
        location /off/ {
            api_key_limit_headers off;
            api_key_limit lz read 2r/m;
            UP
        }
        location /refuse/ {
            api_key_limit_headers ietf;
            api_key_limit lz read 100r/h;
            api_key_limit lz2 read 2r/m;
            UP
        }
        location /refuse-first/ {
            api_key_limit_headers ietf;
            api_key_limit lz read 2r/m;
            api_key_limit lz2 read 100r/h;
            UP
        }
        location /merged/ {
            api_key_limit_headers ietf;
            api_key_limit lz read 100r/m;
            api_key_limit lz2 read 50r/m;
            UP
        }
        location /day/ {
            api_key_limit_headers both;
            api_key_limit lz read 3r/d;
            UP
        }
    }

    server {
        listen 127.0.0.1:{port2} reuseport;
        server_name localhost;
        api_key keys;
        access_log {prefix}/rlh.log rlh;
        api_key_limit_headers ietf;
        api_key_limit lz read 10r/m;

        location / {
            UP
        }
        location /x/ {
            api_key_limit_headers x;
            UP
        }
        location /both/ {
            api_key_limit_headers both;
            UP
        }
        location /off/ {
            api_key_limit_headers off;
            UP
        }
    }
""".replace("UP", UP)

X_FIELDS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
IETF_FIELDS = ("RateLimit-Policy", "RateLimit")
UNITS = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}
LOG_RE = re.compile(r"pid=(\d+) rid=(\S+) status=(\d+)")


def limit_message(count, period, category="read"):
    return "Rate limit exceeded: %d requests per %s for '%s' requests." % (
        count, UNITS[period], category)


def max_t(q, w):
    """The most seconds a request can count in a q per w s window: exactly w
    up to 16; over 16 until the end of its bucket (w / 50, rounded up in ms)
    plus w, rounded up to whole seconds."""
    return w if q <= 16 else math.ceil(w + math.ceil(w * 1000 / 50) / 1000)


def int_header(resp, name):
    v = resp.header(name)
    if v is None or not re.fullmatch(r"[0-9]+", v):
        return None
    return int(v)


class HeadersCase(NginxCase):
    """Key helpers and assertions shared by the classes below."""

    HTTP = HTTP
    PORTS = ("port", "port2")
    WORKERS = 2
    NAMES = ()
    OVERRIDES = {}

    @classmethod
    def prepare(cls, nginx):
        kf = KeyFile()
        cls.K, cls.ids = {}, {}
        for name in cls.NAMES:
            # distinctive id, owner and organization: none may leak into a header
            ident = ("key_%s_Zq9" % name, "own_%s_Wx4" % name, "org_%s_Pv7" % name)
            fields = {"organization_id": ident[2], "plan": "pro"}
            if name in cls.OVERRIDES:
                fields["limits"] = cls.OVERRIDES[name]
            cls.K[name] = kf.add(ident[0], owner=ident[1], **fields)
            cls.ids[name] = ident
        kf.write(nginx.path("keys.yaml"))

    def k(self, name):
        return bearer(self.K[name])

    def on2(self, path, name):
        return self.nginx.get(path, self.k(name), port=self.nginx.vars["port2"])

    def timed(self, path, name):
        """(sent, response, received) with the client's monotonic clock."""
        sent = time.monotonic()
        r = self.get(path, self.k(name))
        return sent, r, time.monotonic()

    def assertNoPartitionKey(self, resp, name, what):
        for value in [v for _, v in resp.headers]:
            for secret in self.ids[name] + (self.K[name],):
                self.assertNotIn(secret, value, "%s: no header value carries the key's id, "
                                 "owner, organization or key (no partition key); got %r"
                                 % (what, resp.headers))

    def assertFields(self, resp, x, ietf, what):
        """Which of the two kinds of rate-limit fields resp carries."""
        for name in X_FIELDS:
            if x:
                self.assertEqual(len(resp.header_all(name)), 1,
                                 "%s: exactly one %s; got %r" % (what, name, resp))
            else:
                self.assertNotIn(name, resp.headers, "%s: no %s; got %r" % (what, name, resp))
        for name in IETF_FIELDS:
            if ietf:
                self.assertEqual(len(resp.header_all(name)), 1,
                                 "%s: exactly one %s; got %r" % (what, name, resp))
            else:
                self.assertNotIn(name, resp.headers, "%s: no %s; got %r" % (what, name, resp))

    def assertPolicy(self, resp, want, what):
        """RateLimit-Policy is exactly `want`: [(name, q, w), ...] in order."""
        items = sf_field(resp, "RateLimit-Policy", self)
        got = []
        for item in items:
            p = item_params(self, item, ("q", "w"), what + ", RateLimit-Policy")
            got.append((item[0], p["q"], p["w"]))
        self.assertEqual(got, list(want), "%s: RateLimit-Policy items (name, q, w) in "
                         "configuration order; raw %r" % (what, resp.header("RateLimit-Policy")))

    def ratelimit(self, resp, what):
        """RateLimit as [(name, r, t), ...]."""
        out = []
        for item in sf_field(resp, "RateLimit", self):
            p = item_params(self, item, ("r", "t"), what + ", RateLimit")
            out.append((item[0], p["r"], p["t"]))
        return out

    def assert429(self, resp, count, period, what):
        """A 429 with the limit's message and a Retry-After; returns Retry-After."""
        doc = self.assertError(resp, 429, "rate_limit_exceeded", limit_message(count, period),
                               what)
        self.assertEqual(doc["error"].get("type"), "rate_limit_error",
                         "%s: error.type is rate_limit_error" % what)
        self.assertRegex(resp.header("X-Request-Id") or "", REQUEST_ID_RE,
                         "%s: a 429 carries X-Request-Id" % what)
        self.assertEqual(len(resp.header_all("Retry-After")), 1,
                         "%s: exactly one Retry-After; got %r" % (what, resp))
        retry = int_header(resp, "Retry-After")
        self.assertIsNotNone(retry, "%s: Retry-After is a whole number of seconds; got %r"
                             % (what, resp.header("Retry-After")))
        self.assertGreaterEqual(retry, 1, "%s: Retry-After is at least 1" % what)
        return retry

    def log_pids(self, rids, timeout=5.0):
        want = set(rids)

        def find():
            found = {}
            for m in LOG_RE.finditer(self.nginx.access_log("rlh.log")):
                if m.group(2) in want:
                    found[m.group(2)] = m.group(1)
            return found if len(found) == len(want) else None
        return wait_until(find, timeout, what="access log lines of %d requests" % len(want))


# --------------------------------------------------------------------------

class PrecisionTest(HeadersCase):
    """Retry-After against an exact sliding log kept by the test. A request
    the server decided at some moment was decided between the client's send
    and receive times, so the log's answer lies in a range computed from
    them; the module may be off by the clocks' granularity (1 s)."""

    NAMES = ("s10", "m5", "s20")

    def spend(self, path, name, n, what, pace=0.0):
        """n accepted requests; returns [(sent, received)] of each."""
        times = []
        for i in range(n):
            if pace and i:
                time.sleep(pace)
            sent, r, got = self.timed(path, name)
            self.assertEqual(r.status, 200, "%s: request #%d of %d accepted; got %r"
                             % (what, i + 1, n, r))
            times.append((sent, got))
        return times

    def test_10_per_second(self):
        log = self.spend("/s10/", "s10", 10, "10r/s")
        sent, r, got = self.timed("/s10/", "s10")
        self.assertLess(got - log[0][0], 1.0,
                        "precondition: 11 requests within one second (the machine is too "
                        "slow otherwise); took %.3f s" % (got - log[0][0]))
        retry = self.assert429(r, 10, 1, "11th request within the second of 10r/s")
        self.assertEqual(retry, 1, "10r/s: the exact log answers Retry-After: 1; got %r" % r)

        # never earlier than Retry-After: the oldest accepted request still
        # counts for a request answered before its send time + 1 s
        sent2, r2, got2 = self.timed("/s10/", "s10")
        if got2 < log[0][0] + 1.0:
            self.assertEqual(r2.status, 429, "a retry %.3f s after the first accepted request "
                             "(before it left the 1 s window) is still refused; got %r"
                             % (got2 - log[0][0], r2))
            got = got2

        time.sleep(max(0.0, got + retry + 0.02 - time.monotonic()))
        r3 = self.get("/s10/", self.k("s10"))
        self.assertEqual(r3.status, 200, "a request once Retry-After (%d s) has passed is "
                         "accepted; got %r" % (retry, r3))

    def test_5_per_minute_exact_remaining_time(self):
        # the first request, then 3 s later four more: the oldest leaves the
        # window 57 s after the 6th, which the log knows and "the period" does not
        log = self.spend("/m5/", "m5", 1, "5r/m")
        time.sleep(3.0)
        log += self.spend("/m5/", "m5", 4, "5r/m")
        sent, r, got = self.timed("/m5/", "m5")
        retry = self.assert429(r, 5, 60, "6th request of 5r/m")
        first_sent, first_got = log[0]
        # the log: the oldest was counted in [first_sent, first_got] and the
        # 6th decided in [sent, got]; the retry moment is 60 s after the oldest
        low = max(1, math.ceil(60 - (got - first_sent)))
        high = max(1, math.ceil(60 - (sent - first_got)))
        self.assertLessEqual(retry, 60, "5r/m: Retry-After is at most 60; got %d" % retry)
        self.assertTrue(low - 1 <= retry <= high + 1,
                        "5r/m: Retry-After is the exact log's remaining time of the oldest "
                        "request, %d..%d s (+-1 s for the clocks); got %d"
                        % (low, high, retry))
        self.assertLess(retry, 60, "5r/m: 3 s after the first request Retry-After is not the "
                        "whole period; got %d" % retry)
        self.assertEqual(r.header("X-RateLimit-Remaining"), "0",
                         "the 429 has X-RateLimit-Remaining: 0")
        self.assertEqual(int_header(r, "X-RateLimit-Limit"), 5, "the 429 has X-RateLimit-Limit 5")
        reset = int_header(r, "X-RateLimit-Reset")
        newest_sent = log[-1][0]
        self.assertTrue(reset is not None and
                        math.ceil(60 - (got - newest_sent)) - 1 <= reset <= 60,
                        "5r/m: X-RateLimit-Reset is the time until the newest accepted request "
                        "(just now) leaves, about 60; got %r" % r.header("X-RateLimit-Reset"))

    def test_20_per_second_buckets(self):
        # over 16: the bucketed window (20 ms buckets for r/s). Paced 10 ms
        # apart, so the first request is more than a bucket old when the 21st
        # comes: the log and the buckets both answer Retry-After: 1.
        log = self.spend("/s20/", "s20", 20, "20r/s", pace=0.01)
        sent, r, got = self.timed("/s20/", "s20")
        self.assertLess(got - log[0][0], 0.95,
                        "precondition: 21 requests within 0.95 s; took %.3f s"
                        % (got - log[0][0]))
        self.assertGreater(sent - log[0][1], 0.02,
                           "precondition: the 21st came more than a bucket (20 ms) after "
                           "the first")
        retry = self.assert429(r, 20, 1, "21st request within the second of 20r/s")
        self.assertEqual(retry, 1, "20r/s: Retry-After: 1; got %r" % r)
        self.assertEqual(r.header("X-RateLimit-Remaining"), "0", "the 429 has Remaining 0")
        self.assertEqual(int_header(r, "X-RateLimit-Limit"), 20, "the 429 has Limit 20")

        time.sleep(max(0.0, got + retry + 0.02 - time.monotonic()))
        r2 = self.get("/s20/", self.k("s20"))
        self.assertEqual(r2.status, 200, "a request once Retry-After (%d s) has passed is "
                         "accepted; got %r" % (retry, r2))

        rids = [r.header("X-Request-Id"), r2.header("X-Request-Id")]
        pids = set(self.log_pids(rids).values())
        # the 20 accepted ones were logged too; read them all
        all_pids = {m.group(1) for m in LOG_RE.finditer(self.nginx.access_log("rlh.log"))}
        self.assertGreaterEqual(len(all_pids | pids), 2,
                                "requests were spread over both workers (reuseport, one "
                                "connection each); pids %r" % sorted(all_pids | pids))


# --------------------------------------------------------------------------

class DayLimitTest(HeadersCase):
    """`3r/d` in api_key_limit, `2r/d` in a key's limits:, and a reload."""

    NAMES = ("d3", "d2", "reload3", "reload2")
    OVERRIDES = {"d2": {"read": "2r/d"}, "reload2": {"read": "2r/d"}}

    def exhaust(self, name, count, what):
        for i in range(count):
            r = self.get("/day/", self.k(name))
            self.assertEqual(r.status, 200, "%s: request #%d of %d per day accepted; got %r"
                             % (what, i + 1, count, r))
            self.assertEqual(int_header(r, "X-RateLimit-Limit"), count,
                             "%s: X-RateLimit-Limit %d" % (what, count))
            self.assertEqual(int_header(r, "X-RateLimit-Remaining"), count - 1 - i,
                             "%s: X-RateLimit-Remaining after request #%d" % (what, i + 1))
            self.assertPolicy(r, [("read-1d", count, 86400)], what)
            (item,) = self.ratelimit(r, what)
            self.assertEqual(item[:2], ("read-1d", count - 1 - i),
                             "%s: RateLimit r after request #%d" % (what, i + 1))
            self.assertTrue(86000 <= item[2] <= 86400,
                            "%s: t is until the oldest leaves, almost a day; got %d"
                            % (what, item[2]))
            self.assertNoPartitionKey(r, name, what)
        return self.refused(name, count, what + ", request #%d" % (count + 1))

    def refused(self, name, count, what):
        r = self.get("/day/", self.k(name))
        retry = self.assert429(r, count, 86400, what)
        self.assertIn("per day", r.json()["error"]["message"],
                      "%s: the message says 'per day'" % what)
        self.assertTrue(86000 <= retry <= 86400,
                        "%s: Retry-After is close to a day (86000..86400); got %d" % (what, retry))
        self.assertEqual(r.header("X-RateLimit-Remaining"), "0", "%s: Remaining 0" % what)
        self.assertPolicy(r, [("read-1d", count, 86400)], what)
        (item,) = self.ratelimit(r, what)
        self.assertEqual(item[:2], ("read-1d", 0), "%s: the refusing item has r=0" % what)
        self.assertGreaterEqual(retry, item[2], "%s: Retry-After >= t of the r=0 item" % what)
        self.assertNoPartitionKey(r, name, what)
        return retry

    def test_day_limit(self):
        self.exhaust("d3", 3, "api_key_limit lz read 3r/d")

    def test_day_override_in_key_file(self):
        self.exhaust("d2", 2, "key file limits: {read: 2r/d}")

    def test_day_counters_survive_reload(self):
        before3 = self.exhaust("reload3", 3, "3r/d before the reload")
        before2 = self.exhaust("reload2", 2, "2r/d override before the reload")
        t0 = time.monotonic()
        self.nginx.reload()
        for i in range(4):  # new workers, whichever answers
            after3 = self.refused("reload3", 3, "3r/d, request #%d after the reload" % (i + 4))
            after2 = self.refused("reload2", 2, "2r/d, request #%d after the reload" % (i + 3))
            elapsed = math.ceil(time.monotonic() - t0) + 2
            for before, after, what in ((before3, after3, "3r/d"), (before2, after2, "2r/d")):
                self.assertTrue(before - elapsed <= after <= before,
                                "%s: the day's window carries on across the reload "
                                "(Retry-After %d before, %d after)" % (what, before, after))


# --------------------------------------------------------------------------

class IetfFieldsTest(HeadersCase):
    """api_key_limit_headers ietf | both | off | default, and inheritance."""

    NAMES = ("ietf", "both", "off", "default", "refuse", "refuse_first", "merged",
             "srv", "srv_x", "srv_both", "srv_off")

    def test_ietf(self):
        for i in range(2):
            r = self.get("/ietf/", self.k("ietf"))
            what = "ietf, request #%d" % (i + 1)
            self.assertEqual(r.status, 200, "%s accepted; got %r" % (what, r))
            self.assertFields(r, x=False, ietf=True, what=what)
            self.assertPolicy(r, [("read-1m", 100, 60), ("read-1h", 1000, 3600)], what)
            items = self.ratelimit(r, what)
            self.assertEqual([(n, rem) for n, rem, _ in items],
                             [("read-1m", 99 - i), ("read-1h", 999 - i)],
                             "%s: RateLimit has both items with r = q - %d" % (what, i + 1))
            (_, _, t_m), (_, _, t_h) = items
            # both are over 16 (bucketed): a request counts until the end of
            # its bucket (period / 50) plus the period
            self.assertTrue(1 <= t_m <= max_t(100, 60),
                            "%s: read-1m t is 1..%d (the period plus a bucket); got %d"
                            % (what, max_t(100, 60), t_m))
            self.assertTrue(1 <= t_h <= max_t(1000, 3600),
                            "%s: read-1h t is 1..%d (the period plus a bucket); got %d"
                            % (what, max_t(1000, 3600), t_h))
            self.assertNoPartitionKey(r, "ietf", what)

    def test_both(self):
        r = self.get("/both/", self.k("both"))
        self.assertEqual(r.status, 200, "both: accepted; got %r" % r)
        self.assertFields(r, x=True, ietf=True, what="both")
        self.assertPolicy(r, [("read-1m", 100, 60), ("read-1h", 1000, 3600)], "both")
        items = self.ratelimit(r, "both")
        self.assertEqual([(n, rem) for n, rem, _ in items], [("read-1m", 99), ("read-1h", 999)],
                         "both: RateLimit after the first request")
        self.assertEqual(int_header(r, "X-RateLimit-Limit"), 100,
                         "both: X-RateLimit-* report the limit closest to refusing (100r/m)")
        self.assertEqual(int_header(r, "X-RateLimit-Remaining"), 99,
                         "both: X-RateLimit-Remaining equals read-1m's r")
        self.assertNoPartitionKey(r, "both", "both")

    def test_off(self):
        for i in range(2):
            r = self.get("/off/", self.k("off"))
            self.assertEqual(r.status, 200, "off: request #%d accepted; got %r" % (i + 1, r))
            self.assertFields(r, x=False, ietf=False, what="off, request #%d" % (i + 1))
        r = self.get("/off/", self.k("off"))
        retry = self.assert429(r, 2, 60, "off: 3rd request of 2r/m")
        self.assertTrue(1 <= retry <= 60, "off: the 429 still has Retry-After 1..60; got %d"
                        % retry)
        self.assertFields(r, x=False, ietf=False, what="off, the 429")
        self.assertNoPartitionKey(r, "off", "off")

    def test_default_is_x(self):
        r = self.get("/default/", self.k("default"))
        self.assertEqual(r.status, 200, "default: accepted; got %r" % r)
        self.assertFields(r, x=True, ietf=False, what="no api_key_limit_headers (default x)")
        self.assertEqual(int_header(r, "X-RateLimit-Limit"), 100, "default: X-RateLimit-Limit")
        self.assertEqual(int_header(r, "X-RateLimit-Remaining"), 99,
                         "default: X-RateLimit-Remaining")

    def test_429_items(self):
        # 100r/h (counted, then given back) and 2r/m, which refuses the 3rd
        for i in range(2):
            r = self.get("/refuse/", self.k("refuse"))
            self.assertEqual(r.status, 200, "refuse: request #%d accepted; got %r" % (i + 1, r))
            self.assertEqual([x[:2] for x in self.ratelimit(r, "refuse")],
                             [("read-1h", 99 - i), ("read-1m", 1 - i)],
                             "refuse: RateLimit after request #%d (configuration order)"
                             % (i + 1))
        r = self.get("/refuse/", self.k("refuse"))
        retry = self.assert429(r, 2, 60, "refuse: 3rd request (2r/m)")
        self.assertTrue(1 <= retry <= 60, "refuse: Retry-After 1..60; got %d" % retry)
        self.assertFields(r, x=False, ietf=True, what="refuse, the 429")
        self.assertPolicy(r, [("read-1h", 100, 3600), ("read-1m", 2, 60)], "refuse, the 429")
        items = self.ratelimit(r, "refuse, the 429")
        self.assertEqual([x[:2] for x in items], [("read-1h", 98), ("read-1m", 0)],
                         "refuse: the 429's RateLimit has both decided items: read-1h with "
                         "the refused request given back (r=98), the refusing read-1m r=0; "
                         "raw %r" % r.header("RateLimit"))
        for name, rem, t in items:
            self.assertGreaterEqual(t, 1, "refuse: t of %s is at least 1" % name)
            if rem == 0:
                self.assertGreaterEqual(retry, t, "refuse: Retry-After (%d) >= t (%d) of the "
                                        "r=0 item %s" % (retry, t, name))
        self.assertNoPartitionKey(r, "refuse", "refuse, the 429")

    def test_429_undecided_items_left_out(self):
        # 2r/m refuses first: 100r/h is not decided, so not in RateLimit
        for i in range(2):
            r = self.get("/refuse-first/", self.k("refuse_first"))
            self.assertEqual(r.status, 200, "refuse-first: request #%d accepted; got %r"
                             % (i + 1, r))
        r = self.get("/refuse-first/", self.k("refuse_first"))
        retry = self.assert429(r, 2, 60, "refuse-first: 3rd request (2r/m)")
        self.assertPolicy(r, [("read-1m", 2, 60), ("read-1h", 100, 3600)],
                          "refuse-first, the 429: the policy lists every limit")
        items = self.ratelimit(r, "refuse-first, the 429")
        self.assertEqual([x[:2] for x in items], [("read-1m", 0)],
                         "refuse-first: RateLimit has only the refusing item (the limit after "
                         "it was not decided); raw %r" % r.header("RateLimit"))
        self.assertGreaterEqual(retry, items[0][2], "refuse-first: Retry-After >= t")

    def test_same_category_and_period_merged(self):
        r = self.get("/merged/", self.k("merged"))
        self.assertEqual(r.status, 200, "merged: accepted; got %r" % r)
        self.assertPolicy(r, [("read-1m", 50, 60)],
                          "100r/m and 50r/m in two zones: one item with the smaller q")
        self.assertEqual([x[:2] for x in self.ratelimit(r, "merged")], [("read-1m", 49)],
                         "merged: r of the one closest to refusing")

    # -- inheritance: server{} sets ietf

    def test_inherited_from_server(self):
        r = self.on2("/", "srv")
        self.assertEqual(r.status, 200, "server-level ietf: accepted; got %r" % r)
        self.assertFields(r, x=False, ietf=True, what="a location inheriting server's ietf")
        self.assertPolicy(r, [("read-1m", 10, 60)], "inherited ietf")
        self.assertEqual([x[:2] for x in self.ratelimit(r, "inherited ietf")], [("read-1m", 9)],
                         "inherited ietf: RateLimit")

    def test_location_overrides_server(self):
        r = self.on2("/x/", "srv_x")
        self.assertEqual(r.status, 200, "location x: accepted; got %r" % r)
        self.assertFields(r, x=True, ietf=False, what="location x under server ietf")
        self.assertEqual(int_header(r, "X-RateLimit-Remaining"), 9, "location x: Remaining 9")
        r = self.on2("/both/", "srv_both")
        self.assertEqual(r.status, 200, "location both: accepted; got %r" % r)
        self.assertFields(r, x=True, ietf=True, what="location both under server ietf")
        r = self.on2("/off/", "srv_off")
        self.assertEqual(r.status, 200, "location off: accepted; got %r" % r)
        self.assertFields(r, x=False, ietf=False, what="location off under server ietf")


# --------------------------------------------------------------------------

class StructuredFieldParserTest(unittest.TestCase):
    """The parser above is strict: what it accepts and refuses."""

    GOOD = {
        '"read-1m";q=100;w=60, "read-1h";q=1000;w=3600':
            [("read-1m", [("q", 100), ("w", 60)]), ("read-1h", [("q", 1000), ("w", 3600)])],
        '"a";r=0;t=1,"b";r=2;t=3': [("a", [("r", 0), ("t", 1)]), ("b", [("r", 2), ("t", 3)])],
        '"a";q=1 ,\t "b";q=2': [("a", [("q", 1)]), ("b", [("q", 2)])],
        '"a"; q=1': [("a", [("q", 1)])],
        '  "a";q=-5  ': [("a", [("q", -5)])],
        '"x\\"y\\\\z";q=1': [('x"y\\z', [("q", 1)])],
        '"a"': [("a", [])],
        '"a";q=123456789012345': [("a", [("q", 123456789012345)])],
    }
    BAD = [
        "", "read-1m;q=1", '"a";q=1,', '"a";q=1,,"b";q=2', ',"a"', '"a";q', '"a";q=1.5',
        '"a";Q=1', '"a";q="1"', '("a");q=1', '"a\\n";q=1', '"a', '"a";q=1234567890123456',
        '"a" "b"', '"a";q=1;;w=2', '"a";q=-', '"a";q=1 ;w=2', '"a";\tq=1', '"a";q=?1',
        '"a\x01"', '"\xe9"', '"a";1q=2', '"a";q=1 x', 'a', '"a";q=+1',
    ]

    def test_accepts(self):
        for text, want in self.GOOD.items():
            with self.subTest(text=text):
                self.assertEqual(parse_sf_list(text), want)

    def test_refuses(self):
        for text in self.BAD:
            with self.subTest(text=text):
                with self.assertRaises(SFError, msg="refused: %r" % text):
                    parse_sf_list(text)


class LimitHeadersConfigTest(ConfigCheckCase):
    NAME = "rlhconfig"

    CONF = """
        api_key_zone keys:1m file={prefix}/keys.yaml;
        api_key_limit_zone lz:1m;
        HTTPLEVEL
        server {
            listen 127.0.0.1:{port};
            api_key keys;
            SERVERLEVEL
            location / {
                api_key_limit lz read 5r/d;
                LOCLEVEL
                proxy_pass http://127.0.0.1:{upstream};
            }
        }
    """

    def conf(self, http="", server="", loc=""):
        return (self.CONF.replace("HTTPLEVEL", http).replace("SERVERLEVEL", server)
                .replace("LOCLEVEL", loc))

    def test_every_level_and_value(self):
        rc, out = self.nginx_t(self.conf("api_key_limit_headers both;",
                                         "api_key_limit_headers off;",
                                         "api_key_limit_headers ietf;"))
        self.assertEqual(rc, 0, "api_key_limit_headers in http, server and location, and a "
                         "5r/d limit, pass nginx -t:\n" + out)
        rc, out = self.nginx_t(self.conf(loc="api_key_limit_headers x;"))
        self.assertEqual(rc, 0, "api_key_limit_headers x passes nginx -t:\n" + out)

    def test_bad_value(self):
        self.refused(self.conf(loc="api_key_limit_headers rfc;"),
                     "api_key_limit_headers rfc", "rfc")


if __name__ == "__main__":
    unittest.main()
