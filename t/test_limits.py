"""SPEC "Rate limits": api_key_limit_zone, api_key_limit, api_key_limit_category,
api_key_limit_by, per-key `limits:` overrides, the 429 row, X-RateLimit-*,
Retry-After, $api_key_limit_remaining, dry run, exactness across workers, the
sliding window, counters across reloads, a full zone, and nginx -t errors.

Counting tests use per-minute (or per-hour) rates so they do not depend on
timing; only the Retry-After, twice-the-rate and burst tests use the clock.
Every test spends the budget of its own key(s), so tests do not interfere."""

import concurrent.futures
import re
import threading
import time
import unittest

from harness import (PAST, REQUEST_ID_RE, ConfigCheckCase, KeyFile, Nginx, NginxCase,
                     bearer, wait_until)

UP = "proxy_pass http://127.0.0.1:{upstream};"

HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;
    api_key_limit_zone limits:1m;

    log_format lim 'pid=$pid rid=$api_key_request_id rem=[$api_key_limit_remaining] '
                   'err=[$api_key_error] status=$status';

    server {
        listen 127.0.0.1:{port} reuseport;
        server_name localhost;
        api_key keys;
        access_log {prefix}/lim.log lim;

        location /auto/ {
            api_key_limit limits read 3r/m;
            api_key_limit limits write 2r/m;
            UP
        }
        location /exec/ {
            api_key_limit_category execute;
            api_key_limit limits execute 2r/m;
            api_key_limit limits read 100r/m;
            api_key_limit limits write 100r/m;
            UP
        }
        location /writeonly/ {
            api_key_limit limits write 2r/m;
            UP
        }
        location /nolimit/ {
            proxy_set_header X-Limit-Remaining $api_key_limit_remaining;
            UP
        }
        location /owner/ {
            api_key_limit_by owner;
            api_key_limit limits read 3r/m;
            UP
        }
        location /org/ {
            api_key_limit_by organization;
            api_key_limit limits read 3r/m;
            UP
        }
        location /scoped/ {
            api_key_scope POST s:write;
            api_key_limit_category shared;
            api_key_limit limits shared 2r/m;
            UP
        }
        location /paid/ {
            api_key_plans pro;
            api_key_limit_by owner;
            api_key_limit limits read 2r/m;
            UP
        }
        location /var/ {
            api_key_limit limits read 3r/m;
            proxy_set_header X-Limit-Remaining $api_key_limit_remaining;
            UP
        }
        location /dry/ {
            api_key_dry_run on;
            api_key_limit limits read 3r/m;
            proxy_set_header X-Key-Error "[$api_key_error]";
            UP
        }
        location /persec/ {
            api_key_limit limits read 3r/s;
            UP
        }
        location /rate/ {
            api_key_limit limits read 5r/s;
            UP
        }
        location /burst/ {
            api_key_limit limits read 20r/m;
            UP
        }
        location /two/ {
            api_key_limit limits read 50r/s;
            api_key_limit limits read 3r/m;
            UP
        }
        location /sameperiod/ {
            api_key_limit limits read 5r/m;
            api_key_limit limits read 3r/m;
            UP
        }
        location /refund/ {
            api_key_limit limits read 5r/h;
            api_key_limit limits read 2r/m;
            UP
        }
        location /hour/ {
            api_key_limit limits read 5r/h;
            UP
        }
        location /idx/ {
            root {prefix}/html;
            index index.html;
            api_key_limit limits read 3r/m;
        }
    }

    server {
        listen 127.0.0.1:{port2};
        server_name localhost;
        api_key keys;
        api_key_limit limits read 3r/m;
        api_key_limit limits bulk 2r/m;

        location / {
            UP
        }
        location /replace/ {
            api_key_limit limits write 1r/m;
            UP
        }
        location /bulk/ {
            api_key_limit_category bulk;
            UP
        }
    }
""".replace("UP", UP)

# The window is cut into 15 buckets and counted requests leave it one bucket
# late at most, so a counted request is gone within period * 16 / 15.
MAX_RESET = {"s": 2, "m": 64, "h": 3840}

LOG_RE = re.compile(r"pid=(\d+) rid=(\S+) rem=\[([^\]]*)\] err=\[([^\]]*)\] status=(\d+)")


def limit_message(count, unit, category):
    return "Rate limit exceeded: %d requests per %s for '%s' requests." % (
        count, {"s": "second", "m": "minute", "h": "hour"}[unit], category)


def int_header(resp, name):
    """The header's value as a non-negative int, or None when absent or not digits."""
    v = resp.header(name)
    if v is None or not re.fullmatch(r"[0-9]+", v):
        return None
    return int(v)


class LimitAsserts:
    """Assertions shared by the test classes (mixed into unittest.TestCase)."""

    def assertAccepted(self, resp, limit, remaining, what, unit="m"):
        self.assertEqual(resp.status, 200, "%s: accepted; got %r" % (what, resp))
        self.assertEqual(int_header(resp, "X-RateLimit-Limit"), limit,
                         "%s: X-RateLimit-Limit is %d" % (what, limit))
        self.assertEqual(int_header(resp, "X-RateLimit-Remaining"), remaining,
                         "%s: X-RateLimit-Remaining is %d after this request" % (what, remaining))
        reset = int_header(resp, "X-RateLimit-Reset")
        self.assertIsNotNone(reset, "%s: X-RateLimit-Reset is a whole number of seconds; got %r"
                             % (what, resp.header("X-RateLimit-Reset")))
        self.assertTrue(1 <= reset <= MAX_RESET[unit],
                        "%s: X-RateLimit-Reset is 1..%d s while something is counted; got %d"
                        % (what, MAX_RESET[unit], reset))

    def assertLimited(self, resp, limit, what, message=None, unit="m"):
        """A 429 of SPEC's table with every header it promises; returns Retry-After."""
        doc = self.assertError(resp, 429, "rate_limit_exceeded", message, what)
        self.assertEqual(doc["error"].get("type"), "rate_limit_error",
                         "%s: error.type is rate_limit_error" % what)
        self.assertEqual(resp.header("Cache-Control"), "no-store",
                         "%s: a 429 carries Cache-Control: no-store" % what)
        rid = resp.header("X-Request-Id") or ""
        self.assertRegex(rid, REQUEST_ID_RE, "%s: a 429 carries X-Request-Id" % what)
        self.assertEqual(doc.get("request_id"), rid,
                         "%s: the body's request_id is the X-Request-Id" % what)
        self.assertNotIn("WWW-Authenticate", resp.headers,
                         "%s: a 429 is not an authentication challenge" % what)
        retry = int_header(resp, "Retry-After")
        self.assertIsNotNone(retry, "%s: Retry-After is a whole number of seconds; got %r"
                             % (what, resp.header("Retry-After")))
        self.assertTrue(1 <= retry <= MAX_RESET[unit],
                        "%s: Retry-After is 1..%d s; got %d" % (what, MAX_RESET[unit], retry))
        self.assertEqual(int_header(resp, "X-RateLimit-Limit"), limit,
                         "%s: a 429 carries X-RateLimit-Limit %d" % (what, limit))
        self.assertEqual(resp.header("X-RateLimit-Remaining"), "0",
                         "%s: a 429 carries X-RateLimit-Remaining: 0" % what)
        reset = int_header(resp, "X-RateLimit-Reset")
        self.assertTrue(reset is not None and 1 <= reset <= MAX_RESET[unit],
                        "%s: a 429 carries X-RateLimit-Reset 1..%d; got %r"
                        % (what, MAX_RESET[unit], resp.header("X-RateLimit-Reset")))
        return retry

    def assertUnlimited(self, resp, what):
        self.assertEqual(resp.status, 200, "%s: accepted; got %r" % (what, resp))
        for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
            self.assertNotIn(name, resp.headers, "%s: no %s when no limit applies" % (what, name))


def run_concurrently(fn, n, timeout=20.0):
    """Runs fn(i) for i in range(n) on n threads released together by a
    barrier; returns the results in order (exceptions re-raised)."""
    barrier = threading.Barrier(n, timeout=timeout)

    def task(i):
        barrier.wait()
        return fn(i)

    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(task, i) for i in range(n)]
        return [f.result(timeout=timeout) for f in futures]


# --------------------------------------------------------------------------

class LimitsTest(LimitAsserts, NginxCase):
    HTTP = HTTP
    PORTS = ("port", "port2")
    WORKERS = 2

    K = {}

    @classmethod
    def prepare(cls, nginx):
        kf = KeyFile()
        K = cls.K = {}

        def add(name, owner=None, plan="pro", **fields):
            K[name] = kf.add("key_" + name, owner=owner or ("u_" + name), plan=plan, **fields)

        for name in ("get", "head", "write", "exec", "hdr", "var", "dry1", "dry2", "retry",
                     "rate", "burst", "two", "same", "refund", "idx", "inherit", "replace",
                     "bulk", "nolimit", "scoped"):
            add(name)
        add("over", limits={"write": "4r/m"})
        add("over_low", limits={"read": "1r/m"})
        add("over_none", limits={"read": "1r/m"})
        add("two_over", limits={"read": "4r/m"})
        # by key (default): two keys of one owner, separate budgets
        add("c1", owner="own_c")
        add("c2", owner="own_c")
        # by owner
        add("a1", owner="own_a")
        add("a2", owner="own_a")
        add("b", owner="own_b")
        # by organization
        add("o1", owner="u_o1", organization_id="org_x")
        add("o2", owner="u_o2", organization_id="org_x")
        add("o3", owner="u_o3", organization_id="org_y")
        add("o1_personal", owner="u_o1")
        add("p1", owner="own_p")
        add("p2", owner="own_p")
        add("q", owner="own_q")
        # refused before the limiter, same owner as a good key
        add("g_good", owner="own_g")
        add("g_revoked", owner="own_g", revoked_at=PAST)
        add("g_free", owner="own_g", plan="free")
        kf.write(nginx.path("keys.yaml"))
        nginx.write_file("html/idx/index.html", "index\n")

    def k(self, name):
        return bearer(self.K[name])

    def port2(self, method, path, key):
        return self.nginx.request(method, path, self.k(key), port=self.nginx.vars["port2"])

    def log_lines(self, rids, timeout=5.0):
        """{request id: (pid, rem, err, status)} from lim.log for every rid."""
        want = set(rids)

        def find():
            found = {}
            for m in LOG_RE.finditer(self.nginx.access_log("lim.log")):
                if m.group(2) in want:
                    found[m.group(2)] = (m.group(1), m.group(3), m.group(4), m.group(5))
            return found if len(found) == len(want) else None
        return wait_until(find, timeout, what="access log lines of %d requests" % len(want))

    # -- categories

    def test_read_category_get(self):
        for i in range(3):
            self.assertAccepted(self.get("/auto/", self.k("get")), 3, 2 - i,
                                "GET #%d of 3r/m read" % (i + 1))
        r = self.get("/auto/", self.k("get"))
        self.assertLimited(r, 3, "4th GET", limit_message(3, "m", "read"))

    def test_read_category_head_options(self):
        self.assertAccepted(self.req("HEAD", "/auto/", self.k("head")), 3, 2,
                            "HEAD counts as read")
        self.assertAccepted(self.req("OPTIONS", "/auto/", self.k("head")), 3, 1,
                            "OPTIONS counts as read")
        self.assertAccepted(self.get("/auto/", self.k("head")), 3, 0,
                            "GET after HEAD and OPTIONS spends the last read")
        r = self.req("HEAD", "/auto/", self.k("head"))
        self.assertEqual(r.status, 429, "HEAD over the read limit is 429; got %r" % r)
        self.assertEqual(r.body, b"", "a HEAD 429 has no body")
        self.assertEqual(r.header("X-RateLimit-Remaining"), "0", "a HEAD 429 has Remaining 0")
        self.assertIsNotNone(int_header(r, "Retry-After"), "a HEAD 429 has Retry-After")
        self.assertAccepted(self.req("POST", "/auto/", self.k("head"), body="{}"), 2, 1,
                            "POST spends write, untouched by the read requests")

    def test_write_category(self):
        self.assertAccepted(self.req("POST", "/auto/", self.k("write"), body="{}"), 2, 1,
                            "POST counts as write")
        self.assertAccepted(self.req("PUT", "/auto/", self.k("write"), body="{}"), 2, 0,
                            "PUT counts as write")
        r = self.req("DELETE", "/auto/", self.k("write"))
        self.assertLimited(r, 2, "DELETE over the write limit", limit_message(2, "m", "write"))
        r = self.req("PATCH", "/auto/", self.k("write"), body="{}")
        self.assertLimited(r, 2, "PATCH over the write limit", limit_message(2, "m", "write"))
        self.assertAccepted(self.get("/auto/", self.k("write")), 3, 2,
                            "GET spends read, untouched by the write requests")

    def test_named_category(self):
        self.assertAccepted(self.get("/exec/", self.k("exec")), 2, 1,
                            "GET under api_key_limit_category execute counts as execute")
        self.assertAccepted(self.req("POST", "/exec/", self.k("exec"), body="{}"), 2, 0,
                            "POST there counts as execute too")
        r = self.req("PUT", "/exec/", self.k("exec"), body="{}")
        self.assertLimited(r, 2, "PUT over the execute limit", limit_message(2, "m", "execute"))
        r = self.get("/exec/", self.k("exec"))
        self.assertLimited(r, 2, "GET over the execute limit (not the 100r/m read limit)",
                           limit_message(2, "m", "execute"))
        self.assertAccepted(self.get("/auto/", self.k("exec")), 3, 2,
                            "execute requests did not spend the key's read budget")

    def test_no_limit_no_headers(self):
        r = self.get("/nolimit/", self.k("nolimit"))
        self.assertUnlimited(r, "location without api_key_limit")
        self.assertNotIn("X-Limit-Remaining", r.echoed_headers(),
                         "$api_key_limit_remaining is empty when no limit applied")

    # -- per-key overrides

    def test_override_raises(self):
        for i in range(4):
            self.assertAccepted(self.req("POST", "/auto/", self.k("over"), body="{}"), 4, 3 - i,
                                "POST #%d: the key's write: 4r/m replaces 2r/m" % (i + 1))
        r = self.req("POST", "/auto/", self.k("over"), body="{}")
        self.assertLimited(r, 4, "5th POST", limit_message(4, "m", "write"))
        self.assertAccepted(self.get("/auto/", self.k("over")), 3, 2,
                            "the override of write leaves the read limit as configured")

    def test_override_lowers(self):
        self.assertAccepted(self.get("/auto/", self.k("over_low")), 1, 0,
                            "the key's read: 1r/m replaces 3r/m")
        r = self.get("/auto/", self.k("over_low"))
        self.assertLimited(r, 1, "2nd GET with read: 1r/m")
        self.assertTrue(r.json()["error"]["message"].startswith("Rate limit exceeded: 1 request"),
                        "the 429 message states the key's own rate; got %r" % r.text)

    def test_override_creates_no_limit(self):
        for i in range(3):
            self.assertUnlimited(self.get("/writeonly/", self.k("over_none")),
                                 "GET #%d: a key's read: 1r/m creates no read limit where none "
                                 "is configured" % (i + 1))
        self.assertAccepted(self.req("POST", "/writeonly/", self.k("over_none"), body="{}"), 2, 1,
                            "the configured write limit still applies")

    # -- whose budget

    def test_by_key_default(self):
        for i in range(3):
            self.get("/auto/", self.k("c1"))
        self.assertLimited(self.get("/auto/", self.k("c1")), 3, "c1 spent its budget")
        self.assertAccepted(self.get("/auto/", self.k("c2")), 3, 2,
                            "by key (default): another key of the same owner has its own budget")

    def test_by_owner(self):
        self.assertAccepted(self.get("/owner/", self.k("a1")), 3, 2, "a1 first")
        self.assertAccepted(self.get("/owner/", self.k("a2")), 3, 1,
                            "a2 (same owner) spends the same budget")
        self.assertAccepted(self.get("/owner/", self.k("a1")), 3, 0, "a1 spends the last")
        self.assertLimited(self.get("/owner/", self.k("a2")), 3,
                           "a2 refused: the owner's budget is spent")
        self.assertLimited(self.get("/owner/", self.k("a1")), 3, "a1 refused as well")
        self.assertAccepted(self.get("/owner/", self.k("b")), 3, 2,
                            "another owner's key is unaffected")

    def test_by_organization(self):
        self.assertAccepted(self.get("/org/", self.k("o1")), 3, 2, "o1 (org_x)")
        self.assertAccepted(self.get("/org/", self.k("o2")), 3, 1,
                            "o2, another owner of org_x, spends the same budget")
        self.assertAccepted(self.get("/org/", self.k("o1")), 3, 0, "o1 spends the last")
        self.assertLimited(self.get("/org/", self.k("o2")), 3, "org_x's budget is spent")
        self.assertAccepted(self.get("/org/", self.k("o3")), 3, 2,
                            "a key of another organization is unaffected")
        self.assertAccepted(self.get("/org/", self.k("o1_personal")), 3, 2,
                            "a personal key of org_x's member spends its owner's budget, "
                            "not org_x's")

    def test_by_organization_personal_falls_back_to_owner(self):
        self.assertAccepted(self.get("/org/", self.k("p1")), 3, 2, "personal key p1")
        self.assertAccepted(self.get("/org/", self.k("p2")), 3, 1,
                            "p2, personal key of the same owner, shares the owner's budget")
        self.assertAccepted(self.get("/org/", self.k("p2")), 3, 0, "p2 spends the last")
        self.assertLimited(self.get("/org/", self.k("p1")), 3, "the owner's budget is spent")
        self.assertAccepted(self.get("/org/", self.k("q")), 3, 2,
                            "a personal key of another owner is unaffected")

    # -- what is counted

    def test_scope_refusals_spend_nothing(self):
        for i in range(4):
            r = self.req("POST", "/scoped/", self.k("scoped"), body="{}")
            self.assertError(r, 403, "insufficient_scope",
                             what="POST #%d without s:write: the scope check comes first" % (i + 1))
        self.assertAccepted(self.get("/scoped/", self.k("scoped")), 2, 1,
                            "four 403s spent nothing of the 'shared' budget")
        self.assertAccepted(self.get("/scoped/", self.k("scoped")), 2, 0, "second GET")
        self.assertLimited(self.get("/scoped/", self.k("scoped")), 2, "third GET",
                           limit_message(2, "m", "shared"))

    def test_auth_refusals_spend_nothing(self):
        for i in range(3):
            self.assertError(self.get("/paid/", self.k("g_revoked")), 401, "revoked_api_key",
                             what="revoked key of own_g #%d" % (i + 1))
            self.assertError(self.get("/paid/", self.k("g_free")), 403, "plan_required",
                             what="free-plan key of own_g #%d" % (i + 1))
        self.assertAccepted(self.get("/paid/", self.k("g_good")), 2, 1,
                            "401s and 403s of own_g's other keys spent nothing of its budget")
        self.assertAccepted(self.get("/paid/", self.k("g_good")), 2, 0, "second GET")
        self.assertLimited(self.get("/paid/", self.k("g_good")), 2, "third GET")

    def test_refused_by_second_limit_not_counted_by_first(self):
        # /refund/: read 5r/h, then read 2r/m; /hour/ has the same 5r/h budget alone
        self.assertAccepted(self.get("/refund/", self.k("refund")), 2, 1,
                            "first GET (headers report the limit closest to refusing)")
        self.assertAccepted(self.get("/refund/", self.k("refund")), 2, 0, "second GET")
        for i in range(3):
            self.assertLimited(self.get("/refund/", self.k("refund")), 2,
                               "GET #%d refused by 2r/m" % (i + 3), limit_message(2, "m", "read"))
        self.assertAccepted(self.get("/hour/", self.k("refund")), 5, 2,
                            "the hourly budget counted only the 2 accepted requests, not the 3 "
                            "the per-minute limit refused", unit="h")

    def test_two_limits_one_category(self):
        self.assertAccepted(self.get("/two/", self.k("two")), 3, 2,
                            "50r/s and 3r/m: headers report 3r/m, the one closest to refusing")
        self.assertAccepted(self.get("/two/", self.k("two")), 3, 1, "second GET")
        self.assertAccepted(self.get("/two/", self.k("two")), 3, 0, "third GET")
        self.assertLimited(self.get("/two/", self.k("two")), 3, "fourth GET: 3r/m applies",
                           limit_message(3, "m", "read"))

    def test_two_limits_same_period(self):
        statuses = [self.get("/sameperiod/", self.k("same")).status for _ in range(4)]
        self.assertEqual(statuses, [200, 200, 200, 429],
                         "read 5r/m and read 3r/m in one location: both apply, so 3 of 4 quick "
                         "GETs are accepted (each request counted once, not once per limit)")

    def test_override_with_two_limits(self):
        statuses = [self.get("/two/", self.k("two_over")).status for _ in range(5)]
        self.assertEqual(statuses, [200, 200, 200, 200, 429],
                         "a key with read: 4r/m where read has 50r/s and 3r/m gets 4 of 5 quick "
                         "GETs (each request counted once)")

    def test_internal_redirect_counts_once(self):
        # GET /idx/ is served by the index module through an internal redirect
        # to /idx/index.html: the access phase runs twice for one request.
        for i in range(3):
            self.assertAccepted(self.get("/idx/", self.k("idx")), 3, 2 - i,
                                "GET /idx/ #%d (index redirect) spends one request of 3r/m"
                                % (i + 1))

    # -- inheritance (second server: server-level limits)

    def test_inherited_from_server(self):
        self.assertAccepted(self.port2("GET", "/", "inherit"), 3, 2,
                            "a location without api_key_limit inherits the server's")

    def test_inner_level_replaces(self):
        for i in range(3):
            self.assertUnlimited(self.port2("GET", "/replace/", "replace"),
                                 "GET #%d: a location with its own api_key_limit (write only) "
                                 "replaces the server's read limit" % (i + 1))
        self.assertAccepted(self.port2("POST", "/replace/", "replace"), 1, 0,
                            "the location's write 1r/m applies")
        self.assertLimited(self.port2("POST", "/replace/", "replace"), 1, "second POST")

    def test_inherited_named_category(self):
        self.assertAccepted(self.port2("GET", "/bulk/", "bulk"), 2, 1,
                            "GET under category bulk spends the server's bulk 2r/m")
        self.assertAccepted(self.port2("POST", "/bulk/", "bulk"), 2, 0, "POST too")
        self.assertLimited(self.port2("GET", "/bulk/", "bulk"), 2, "third request",
                           limit_message(2, "m", "bulk"))
        self.assertAccepted(self.port2("GET", "/", "bulk"), 3, 2,
                            "the key's read budget is separate")

    # -- $api_key_limit_remaining

    def test_variable_remaining(self):
        for i in range(3):
            r = self.get("/var/", self.k("var"))
            self.assertEqual(r.status, 200, "GET #%d accepted" % (i + 1))
            self.assertEqual(r.echoed_headers().get("X-Limit-Remaining"), str(2 - i),
                             "$api_key_limit_remaining via proxy_set_header after GET #%d"
                             % (i + 1))
            self.assertEqual(r.header("X-RateLimit-Remaining"), str(2 - i),
                             "the variable equals X-RateLimit-Remaining")
        r = self.get("/var/", self.k("var"))
        self.assertEqual(r.status, 429, "4th GET refused")
        (pid, rem, err, status), = self.log_lines([r.header("X-Request-Id")]).values()
        self.assertEqual(rem, "0", "$api_key_limit_remaining is 0 in the log of a 429")
        self.assertEqual(err, "rate_limit_exceeded", "$api_key_error in the log of a 429")
        self.assertEqual(status, "429", "logged status")

    # -- dry run

    def test_dry_run_reports_without_refusing(self):
        for i in range(3):
            self.get("/auto/", self.k("dry1"))
        self.assertEqual(self.get("/auto/", self.k("dry1")).status, 429,
                         "dry1's read budget is spent where dry run is off")
        offset = self.nginx.error_log_size()
        r = self.get("/dry/", self.k("dry1"))
        self.assertEqual(r.status, 200, "dry run: a request over the limit is served")
        self.assertEqual(r.echoed_headers().get("X-Key-Error"), "[rate_limit_exceeded]",
                         "dry run: $api_key_error says rate_limit_exceeded")
        want = 'api key dry run: would refuse with "rate_limit_exceeded"'
        try:
            line = wait_until(lambda: next((l for l in self.nginx.error_log(offset).splitlines()
                                            if want in l), None), 5.0, what="dry run warn line")
        except TimeoutError:
            self.fail("dry run: error log says %r" % want)
        self.assertIn("[warn]", line, "the dry run line is logged at warn")
        self.assertIn('"key_dry1"', line, "the dry run line names the key id")

    def test_dry_run_spends_nothing(self):
        for i in range(5):
            r = self.get("/dry/", self.k("dry2"))
            self.assertEqual(r.status, 200, "dry run GET #%d served" % (i + 1))
            self.assertEqual(r.echoed_headers().get("X-Key-Error"), "[]",
                             "dry run GET #%d: nothing counted before, nothing to refuse"
                             % (i + 1))
        self.assertAccepted(self.get("/auto/", self.k("dry2")), 3, 2,
                            "five dry-run requests spent none of the key's read budget")

    # -- timing: Retry-After, twice the rate, concurrency

    def test_retry_after_is_enough(self):
        for i in range(3):
            r = self.get("/persec/", self.k("retry"))
            self.assertEqual(r.status, 200, "GET #%d of 3r/s accepted" % (i + 1))
        r = self.get("/persec/", self.k("retry"))
        retry = self.assertLimited(r, 3, "4th GET within the second",
                                   limit_message(3, "s", "read"), unit="s")
        time.sleep(retry)
        r = self.get("/persec/", self.k("retry"))
        self.assertEqual(r.status, 200, "a retry after Retry-After (%d s) is accepted; got %r"
                         % (retry, r))

    def test_twice_the_rate(self):
        # 5r/s, a request every 100 ms for 3 s (twice the rate), one per connection
        n, step, limit = 30, 0.1, 5
        sent, received, status = [], [], []
        t0 = time.monotonic() + 0.05
        for i in range(n):
            delay = t0 + i * step - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent.append(time.monotonic())
            status.append(self.get("/rate/", self.k("rate"), timeout=5.0).status)
            received.append(time.monotonic())
        self.assertEqual(set(status) - {200, 429}, set(), "only 200 and 429; got %r" % status)
        ok = [i for i in range(n) if status[i] == 200]
        for sec in range(3):
            got = sum(1 for i in ok if t0 + sec <= sent[i] < t0 + sec + 1)
            self.assertGreaterEqual(got, limit - 1,
                                    "second %d at twice the rate: close to the limit (>= %d of "
                                    "%d) accepted; got %d; statuses %r"
                                    % (sec + 1, limit - 1, limit, got, status))
        # The server decided each request between its send and receive time.
        # Six accepted requests i..i+5 fit in one second only if the 6th was
        # decided less than 1 s after the 1st: received[i+5] - sent[i] < 1 s
        # proves it (5 ms slack for nginx's millisecond clock).
        for a, b in zip(ok, ok[limit:]):
            span = received[b] - sent[a]
            self.assertGreaterEqual(span, 1.0 - 0.005,
                                    "no trailing 1 s window holds more than %d accepted "
                                    "requests: requests #%d..#%d were all accepted within "
                                    "%.3f s" % (limit, a + 1, b + 1, span))

    def test_exact_across_workers(self):
        n, limit = 60, 20
        results = run_concurrently(lambda i: self.get("/burst/", self.k("burst"), timeout=10.0), n)
        statuses = [r.status for r in results]
        self.assertEqual(statuses.count(200), limit,
                         "%d concurrent requests against 20r/m: exactly 20 accepted; got %r"
                         % (n, sorted(statuses)))
        self.assertEqual(statuses.count(429), n - limit, "the other %d are 429" % (n - limit))
        remaining = sorted(int_header(r, "X-RateLimit-Remaining") for r in results
                           if r.status == 200)
        self.assertEqual(remaining, list(range(limit)),
                         "each accepted request saw a distinct Remaining 19..0 (no lost or "
                         "double counts)")
        logged = self.log_lines([r.header("X-Request-Id") for r in results])
        pids = {v[0] for v in logged.values()}
        self.assertGreaterEqual(len(pids), 2,
                                "both workers served part of the burst (reuseport), so the "
                                "count is exact across workers; pids %r" % sorted(pids))


# --------------------------------------------------------------------------

RELOAD_HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;
    api_key_limit_zone limits:SIZE;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        api_key keys;
        location / {
            api_key_limit limits read RATE;
            proxy_pass http://127.0.0.1:{upstream};
        }
    }
"""


def reload_http(size="1m", rate="3r/m"):
    return RELOAD_HTTP.replace("SIZE", size).replace("RATE", rate)


class LimitReloadTest(LimitAsserts, unittest.TestCase):
    """A fresh nginx per test."""

    assertError = NginxCase.assertError

    def setUp(self):
        self.nginx = Nginx(reload_http(), name="limreload")
        self.addCleanup(self.nginx.cleanup)
        self.kf = KeyFile()
        self.key = self.kf.add("key_one", plan="pro")
        self.keyfile = self.nginx.path("keys.yaml")
        self.kf.write(self.keyfile)
        self.nginx.start()

    def spend(self, n):
        for i in range(n):
            r = self.nginx.get("/", bearer(self.key))
            self.assertEqual(r.status, 200, "GET #%d before the reload accepted" % (i + 1))

    def test_counters_survive_reload(self):
        self.spend(2)
        self.nginx.reload()
        self.assertAccepted(self.nginx.get("/", bearer(self.key)), 3, 0,
                            "after a reload with the same zone the 2 spent requests still count")
        for i in range(3):  # new workers, whichever answers
            self.assertLimited(self.nginx.get("/", bearer(self.key)), 3,
                               "GET #%d after the reload: budget spent" % (i + 2))

    def test_counters_survive_key_file_change(self):
        self.spend(2)
        other = self.kf.add("key_two", plan="pro")
        self.kf.write(self.keyfile)
        self.nginx.reload()
        self.assertAccepted(self.nginx.get("/", bearer(self.key)), 3, 0,
                            "a changed key file (unrelated key added) keeps key_one's spent "
                            "budget spent")
        self.assertLimited(self.nginx.get("/", bearer(self.key)), 3, "then key_one is refused")
        self.assertAccepted(self.nginx.get("/", bearer(other)), 3, 2,
                            "the added key has its own full budget")

    def test_rate_change_keeps_counts(self):
        self.spend(3)
        self.nginx.write_config(reload_http(rate="5r/m"))
        self.nginx.reload()
        self.assertAccepted(self.nginx.get("/", bearer(self.key)), 5, 1,
                            "raising 3r/m to 5r/m by reload keeps the 3 counted requests")

    def test_zone_size_change_starts_fresh(self):
        self.spend(3)
        self.assertEqual(self.nginx.get("/", bearer(self.key)).status, 429, "budget spent")
        self.nginx.write_config(reload_http(size="2m"))
        self.nginx.reload()
        self.assertAccepted(self.nginx.get("/", bearer(self.key)), 3, 2,
                            "a zone whose size changed starts with empty counters")


# --------------------------------------------------------------------------

FULL_HTTP = """
    api_key_zone keys:4m file={prefix}/keys.yaml;
    api_key_limit_zone tiny:32k;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        api_key keys;
        location / {
            root {prefix}/html;
            api_key_limit tiny read 10r/m;
        }
    }
"""


class LimitZoneFullTest(LimitAsserts, NginxCase):
    """api_key_limit_zone tiny:32k holds ~300 counters; 2,000 keys each send
    one request, so active counters must be evicted."""

    HTTP = FULL_HTTP
    WORKERS = 2
    KEYS = 2000

    @classmethod
    def prepare(cls, nginx):
        kf = KeyFile()
        cls.keys = [kf.add("key_%04d" % i, owner="u_%04d" % i) for i in range(cls.KEYS)]
        cls.last = kf.add("key_last", owner="u_last")
        kf.write(nginx.path("keys.yaml"))
        nginx.write_file("html/index.html", "ok\n")

    def test_full_zone(self):
        offset = self.nginx.error_log_size()
        workers = self.nginx.workers()

        def one(key):
            return self.nginx.get("/index.html", bearer(key), timeout=10.0)

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(one, self.keys, timeout=60.0))
        bad = [(i, r.status) for i, r in enumerate(results) if r.status != 200]
        self.assertEqual(bad, [], "every one of %d keys, each under its limit, is answered 200 "
                         "while the zone is full" % self.KEYS)
        self.assertTrue(all(int_header(r, "X-RateLimit-Limit") == 10 for r in results),
                        "every answer carries X-RateLimit-Limit 10")
        want = 'api_key_limit_zone "tiny" is full'
        try:
            line = wait_until(lambda: next((l for l in self.nginx.error_log(offset).splitlines()
                                            if want in l), None), 5.0, what="zone full line")
        except TimeoutError:
            self.fail("a full zone that evicts active counters logs %r" % want)
        self.assertIn("[warn]", line, "the full-zone line is a warn")
        self.assertEqual(self.nginx.workers(), workers, "no worker died or was replaced")

        # the zone still limits a key that keeps sending
        statuses = [self.nginx.get("/index.html", bearer(self.last)).status for _ in range(11)]
        self.assertEqual(statuses, [200] * 10 + [429],
                         "a full zone still enforces 10r/m on a busy key")


# --------------------------------------------------------------------------

CONF_SERVER = """
    api_key_zone keys:1m file={prefix}/keys.yaml;
    HTTPLEVEL
    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        api_key keys;
        location / {
            LOC
            proxy_pass http://127.0.0.1:{upstream};
        }
    }
"""


def conf(loc="", http="api_key_limit_zone limits:1m;"):
    return CONF_SERVER.replace("HTTPLEVEL", http).replace("LOC", loc)


class LimitConfigTest(ConfigCheckCase):
    """nginx_t() and refused() come from harness.ConfigCheckCase."""

    NAME = "limconfig"

    def test_good(self):
        http = ("api_key_limit_zone limits:1m;\n"
                "api_key_limit limits read 1000r/h;\n"
                "api_key_limit_category auto;\n"
                "api_key_limit_by organization;\n")
        loc = ("api_key_limit limits read 10r/s; api_key_limit limits write 200r/m; "
               "api_key_limit limits execute 5r/h; api_key_limit_category execute; "
               "api_key_limit_by owner;")
        rc, out = self.nginx_t(conf(loc, http).replace(
            "api_key keys;", "api_key keys; api_key_limit limits read 5r/s; "
                             "api_key_limit_category auto; api_key_limit_by key;"))
        self.assertEqual(rc, 0, "limit directives accepted in http, server and location:\n" + out)

    def test_bad_rates(self):
        for rate in ("10r/w", "0r/s", "abc"):
            with self.subTest(rate=rate):
                self.refused(conf("api_key_limit limits read %s;" % rate),
                             "api_key_limit rate %s" % rate, '"%s"' % rate)

    def test_unknown_limit_zone(self):
        out = self.refused(conf("api_key_limit nosuch read 1r/s;"),
                           "a limit naming an undeclared zone", "unknown api_key_limit_zone")
        self.assertIn('"nosuch"', out, "the message names the zone")

    def test_limit_zone_too_small(self):
        self.refused(conf("api_key_limit small read 1r/s;",
                          "api_key_limit_zone small:1k;"),
                     "api_key_limit_zone small:1k", "too small")

    def test_bad_limit_by(self):
        self.refused(conf("api_key_limit limits read 1r/s; api_key_limit_by team;"),
                     "api_key_limit_by team", "team")

    def test_limit_zone_in_server(self):
        self.refused(conf("", "").replace("api_key keys;",
                                          "api_key keys; api_key_limit_zone limits:1m;"),
                     "api_key_limit_zone inside server{}", "not allowed here")


if __name__ == "__main__":
    unittest.main()
