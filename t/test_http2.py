"""HTTP/2 on every nginx version: h2c (prior knowledge) through curl, with
`http2 on;` from nginx 1.25.1 and `listen ... http2` before (harness.h2c_listen).

Over HTTP/2, as over HTTP/1.1: no key is a 401 envelope with WWW-Authenticate
and X-Request-Id; a valid key reaches the echo upstream, which sees neither
the Authorization nor the x-api-key header; a key over its limit gets 429
with Retry-After; an internal redirect (rewrite ... last, try_files) into a
location that needs another scope is refused 403; and all of these hold
for concurrent HTTP/2 connections.

One request per connection (see harness.curl_h2: Debian 12's curl cannot
reuse an h2c connection), and refusals are sent without a request body
(nginx may reset the stream of a body it refuses unread, with or without
this module).

Skipped when curl or nginx cannot do HTTP/2, unless REQUIRE_HTTP2=1 (CI and
scripts/test-matrix), which makes that a failure."""

import json
import threading

from harness import (MESSAGES, REQUEST_ID_RE, KeyFile, RecordingCase, bearer, curl_h2,
                     h2c_listen, new_key, require_http2, scope_message, xkey)

HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;
    api_key_limit_zone lim:1m;

    server {
        @LISTEN@
        server_name localhost;
        api_key_source bearer header=x-api-key;

        location /p/ {
            api_key keys;
            api_key_scope data:read;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /limited/ {
            api_key keys;
            api_key_limit lim read 3r/m;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /r/ {
            api_key keys;
            api_key_scope data:read;
            rewrite ^/r/(.*)$ /admin/$1 last;
        }
        location /tf/ {
            api_key keys;
            api_key_scope data:read;
            root {prefix}/html;
            try_files $uri @admin;
        }
        location /admin/ {
            api_key keys;
            api_key_scope admin;
            proxy_pass http://127.0.0.1:{admin};
        }
        location @admin {
            api_key keys;
            api_key_scope admin;
            proxy_pass http://127.0.0.1:{admin};
        }
    }
"""

KEY_HEADERS = ("authorization", "x-api-key")


class Http2Test(RecordingCase):
    RECORDERS = {"admin": "ADMIN\n"}

    @classmethod
    def setUpClass(cls):
        require_http2()
        cls.HTTP = HTTP.replace("@LISTEN@", h2c_listen())
        super().setUpClass()

    @classmethod
    def prepare(cls, nginx):
        kf = KeyFile()
        cls.reader = kf.add("key_reader", scopes=["data:read"])
        cls.admin = kf.add("key_admin", scopes=["data:read", "admin"])
        cls.limited = {n: kf.add("key_limited_%d" % n) for n in range(3)}
        kf.write(nginx.path("keys.yaml"))

    # -- helpers

    def h2(self, method, path, headers=(), body=None):
        """The response to one request over h2c; it must have come back over HTTP/2."""
        r = curl_h2(self.nginx.port, method, path, list(headers), body)
        self.assertEqual(r.version, "2", "%s %s went over HTTP/2; got HTTP/%s"
                         % (method, path, r.version))
        return r

    def get1(self, path, headers=()):
        return self.h2("GET", path, headers)

    def concurrently(self, requests):
        """Responses to (path, headers) requests sent at once, each over its
        own h2c connection, in order."""
        out = [None] * len(requests)

        def one(i, path, headers):
            try:
                out[i] = curl_h2(self.nginx.port, "GET", path, headers)
            except BaseException as e:  # reported below
                out[i] = e

        threads = [threading.Thread(target=one, args=(i, p, h))
                   for i, (p, h) in enumerate(requests)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for (path, _), r in zip(requests, out):
            if not hasattr(r, "status"):
                self.fail("concurrent h2 request %s failed: %r" % (path, r))
            self.assertEqual(r.version, "2", "%s went over HTTP/2" % path)
        return out

    def assertEnvelope(self, r, status, code, message, what):
        self.assertEqual(r.status, status, "%s: status %d over h2; got %r" % (what, status, r))
        ctype = (r.header("Content-Type") or "").split(";")[0].strip().lower()
        self.assertEqual(ctype, "application/json", "%s: the refusal is JSON over h2" % what)
        try:
            doc = json.loads(r.body)
        except ValueError:
            self.fail("%s: the body is the JSON envelope: %r" % (what, r.body))
        self.assertEqual(doc["error"]["code"], code, "%s: error.code over h2" % what)
        if message is not None:
            self.assertEqual(doc["error"]["message"], message, "%s: error.message" % what)
        rid = r.header("X-Request-Id") or ""
        self.assertRegex(rid, REQUEST_ID_RE, "%s: X-Request-Id over h2" % what)
        self.assertEqual(doc["request_id"], rid, "%s: request_id is the X-Request-Id" % what)
        cc = [d.strip().lower() for d in (r.header("Cache-Control") or "").split(",")]
        self.assertIn("no-store", cc, "%s: Cache-Control: no-store over h2" % what)
        return doc

    def assertEchoedWithoutKey(self, r, key, what):
        """A 200 from the echo upstream, which saw no key header and no key."""
        self.assertEqual(r.status, 200, "%s: accepted over h2; got %r" % (what, r))
        self.assertRegex(r.header("X-Request-Id") or "", REQUEST_ID_RE,
                         "%s: an accepted h2 response carries X-Request-Id" % what)
        seen = r.echoed_headers()
        for name in KEY_HEADERS:
            self.assertNotIn(name, seen.names(),
                             "%s: the upstream never sees %s; it got %r" % (what, name, seen))
        self.assertNotIn(key, r.text, "%s: the key appears nowhere upstream" % what)
        return seen

    # -- no key, bad key

    def test_no_key_401(self):
        r = self.get1("/p/x")
        self.assertEnvelope(r, 401, "missing_api_key", MESSAGES["missing_api_key"], "no key")
        self.assertEqual(r.header_all("WWW-Authenticate"), ['Bearer realm="api"'],
                         "a 401 over h2 carries one WWW-Authenticate")

    def test_unknown_key_401(self):
        r = self.get1("/p/x", bearer(new_key()))
        self.assertEnvelope(r, 401, "invalid_api_key", MESSAGES["invalid_api_key"],
                            "unknown key")
        self.assertEqual(r.header_all("WWW-Authenticate"),
                         ['Bearer realm="api", error="invalid_token"'],
                         "a 401 for a sent key says invalid_token over h2")

    # -- accepted, key hidden

    def test_valid_key_bearer_hidden(self):
        r = self.get1("/p/x", bearer(self.reader) + [("X-Trace", "t1")])
        seen = self.assertEchoedWithoutKey(r, self.reader, "Bearer key")
        self.assertEqual(seen.get("X-Trace"), "t1", "other headers still reach the upstream")
        self.assertEqual(r.json()["path"], "/p/x", "the upstream got the request's path")

    def test_valid_key_x_api_key_hidden(self):
        r = self.get1("/p/x", xkey(self.reader))
        self.assertEchoedWithoutKey(r, self.reader, "x-api-key")

    def test_valid_key_post_body_reaches_upstream(self):
        r = self.h2("POST", "/p/upload", xkey(self.reader), "payload-" * 100)
        self.assertEchoedWithoutKey(r, self.reader, "POST with x-api-key")
        self.assertEqual(r.json()["body"], "payload-" * 100, "the request body went upstream")

    # -- rate limit

    def test_over_limit_429_retry_after(self):
        key = self.limited[0]
        rs = [self.get1("/limited/%d" % i, xkey(key)) for i in range(4)]
        for i, r in enumerate(rs[:3]):
            self.assertEchoedWithoutKey(r, key, "request %d of a 3r/m budget" % (i + 1))
            self.assertEqual(r.header("X-RateLimit-Limit"), "3", "X-RateLimit-Limit over h2")
        r = rs[3]
        doc = self.assertEnvelope(r, 429, "rate_limit_exceeded", None, "4th request of 3r/m")
        self.assertEqual(doc["error"]["type"], "rate_limit_error", "429 is a rate_limit_error")
        retry = r.header("Retry-After") or ""
        self.assertRegex(retry, r"^[0-9]+$", "a 429 over h2 carries Retry-After in seconds")
        # a minute cut into 15 buckets, the current one counted whole: at most 64 s
        self.assertTrue(1 <= int(retry) <= 64, "Retry-After is 1..64 s for r/m: %s" % retry)
        self.assertEqual(r.header("X-RateLimit-Remaining"), "0", "nothing remains on a 429")
        self.assertRegex(r.header("X-Request-Id") or "", REQUEST_ID_RE, "a 429 has X-Request-Id")
        self.assertNotIn("WWW-Authenticate", r.headers, "a 429 is not an authentication error")

    def test_limit_exact_for_concurrent_connections(self):
        key = self.limited[1]
        rs = self.concurrently([("/limited/c%d" % i, xkey(key)) for i in range(8)])
        statuses = sorted(r.status for r in rs)
        self.assertEqual(statuses, [200] * 3 + [429] * 5,
                         "8 concurrent h2 connections on a 3r/m budget (2 workers): "
                         "exactly 3 accepted")

    # -- internal redirects into a location with another scope

    def test_rewrite_into_other_scope_403(self):
        r = self.get1("/r/x", bearer(self.reader))
        doc = self.assertEnvelope(r, 403, "insufficient_scope", scope_message("admin"),
                                  "rewrite ... last into /admin/")
        self.assertEqual(doc["error"]["type"], "permission_error", "403 is a permission_error")
        self.assertEqual(self.rec["admin"].paths(), [], "/admin/'s upstream was never reached")

    def test_try_files_into_other_scope_403(self):
        r = self.get1("/tf/missing", xkey(self.reader))
        self.assertEnvelope(r, 403, "insufficient_scope", scope_message("admin"),
                            "try_files into @admin")
        self.assertEqual(self.rec["admin"].paths(), [], "@admin's upstream was never reached")

    def test_redirect_with_right_scope_accepted_key_hidden(self):
        r = self.get1("/r/x", bearer(self.admin))
        self.assertEqual((r.status, r.body), (200, b"ADMIN\n"),
                         "a key with admin passes the redirect; got %r" % r)
        got = self.rec["admin"].requests()
        self.assertEqual([q["path"] for q in got], ["/admin/x"], "the redirect's target was served")
        for name in KEY_HEADERS:
            self.assertNotIn(name, got[0]["headers"].names(),
                             "the redirect's upstream never sees %s" % name)

    # -- all of it at once

    def test_concurrent_connections(self):
        unknown = new_key()
        cases = [
            ("no key", ("/p/a", []), 401, "missing_api_key"),
            ("bearer", ("/p/b", bearer(self.reader)), 200, None),
            ("unknown", ("/p/c", bearer(unknown)), 401, "invalid_api_key"),
            ("x-api-key", ("/p/d", xkey(self.admin)), 200, None),
            ("rewrite, reader", ("/r/e", xkey(self.reader)), 403, "insufficient_scope"),
            ("rewrite, admin", ("/r/f", bearer(self.admin)), 200, None),
        ] * 3
        rs = self.concurrently([c[1] for c in cases])
        ids = []
        for (what, req, status, code), r in zip(cases, rs):
            self.assertEqual(r.status, status, "%s, concurrent h2; got %r" % (what, r))
            if code:
                self.assertEqual(json.loads(r.body)["error"]["code"], code, what)
            elif req[0].startswith("/p/"):
                self.assertEchoedWithoutKey(r, req[1][0][1].split()[-1], what)
            ids.append(r.header("X-Request-Id"))
        self.assertEqual(len(set(ids)), len(ids), "every request has its own X-Request-Id")
        for q in self.rec["admin"].requests():
            for name in KEY_HEADERS:
                self.assertNotIn(name, q["headers"].names(), "admin upstream never sees %s" % name)
