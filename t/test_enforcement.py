"""SPEC "Enforcement promises": a refusal never becomes something else
(error_page into a fallback, a broken request body), cached $http_
variables never carry a hidden key, `satisfy any` does not weaken the key
check, and the same over HTTP/2 (h2c through curl; more in test_http2.py).

Subrequests are in test_subrequests.py, internal redirects in
test_redirects.py."""

import json
import os
import re
import shutil
import subprocess
import tempfile

from harness import (MESSAGES, PAST, Headers, KeyFile, RecordingCase, bearer, h2c_listen,
                     new_key, require_http2, scope_message, send_raw, wait_until, xkey)

# Every status a refusal (or a failure while refusing) could become, sent to
# places that are not protected.
ALL_ERRORS = "401 403 429 500 502 400 413"

PROTECTED = """
            api_key keys;
            api_key_scope data:read;
            api_key_limit lim read 1000r/m;
            api_key_limit lim write 1000r/m;
            proxy_pass http://127.0.0.1:{closed};"""

HTTP_FALLBACK = """
    api_key_zone keys:1m file={prefix}/keys.yaml;
    api_key_limit_zone lim:1m;
    api_key_source bearer header=x-api-key;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        error_page ALL = @fallback;

        # unprotected fallbacks, all answered by the recording upstream
        location @fallback { proxy_pass http://127.0.0.1:{fallback}; }
        location /login    { proxy_pass http://127.0.0.1:{fallback}; }
        location /open     { proxy_pass http://127.0.0.1:{fallback}; }

        # Protected locations whose backend is down: an accepted request gets
        # 502, which error_page sends to the fallback (proving the error_page
        # is live in exactly that location).
        location /srv/ {PROTECTED
        }
        location /loc/ {PROTECTED
            error_page ALL = @fallback;
        }
        location /uri/ {PROTECTED
            error_page ALL /login;
        }
        location /equri/ {PROTECTED
            error_page ALL = /login;
        }
        location /ok200/ {PROTECTED
            error_page ALL =200 /open;
        }

        # an accepted request whose upstream fails, sent by error_page into
        # another protected location that needs a scope the key may lack
        location /up-uri/ {PROTECTED
            error_page 502 /admin/x;
        }
        location /up-equri/ {PROTECTED
            error_page 502 = /admin/x;
        }
        location /up-named/ {PROTECTED
            error_page 502 = @admin;
        }
        location /admin/ {
            api_key keys;
            api_key_scope admin;
            proxy_pass http://127.0.0.1:{fallback};
        }
        location @admin {
            api_key keys;
            api_key_scope admin;
            proxy_pass http://127.0.0.1:{fallback};
        }
    }
""".replace("PROTECTED", PROTECTED).replace("ALL", ALL_ERRORS)

# (location, how its error_page is set)
FALLBACK_CONFIGS = [
    ("/srv/", "server-level error_page %s = @fallback" % ALL_ERRORS),
    ("/loc/", "location-level error_page %s = @fallback" % ALL_ERRORS),
    ("/uri/", "error_page %s /login" % ALL_ERRORS),
    ("/equri/", "error_page %s = /login" % ALL_ERRORS),
    ("/ok200/", "error_page %s =200 /open" % ALL_ERRORS),
]

UP_CONFIGS = [
    ("/up-uri/", "error_page 502 /admin/x"),
    ("/up-equri/", "error_page 502 = /admin/x"),
    ("/up-named/", "error_page 502 = @admin"),
]


class RefusalIsNotFallbackTest(RecordingCase):
    """A: refusals keep their envelope and status; error_page never serves a
    fallback for them."""

    HTTP = HTTP_FALLBACK
    PORTS = ("port", "closed")
    RECORDERS = {"fallback": "FALLBACK-CONTENT\n"}

    @classmethod
    def prepare(cls, nginx):
        kf = KeyFile()
        cls.good = kf.add("key_good", owner="u_good", scopes=["data:read"])
        cls.admin = kf.add("key_admin", owner="u_admin", scopes=["data:read", "admin"])
        cls.revoked = kf.add("key_revoked", owner="u_rev", scopes=["data:read"],
                             revoked_at=PAST)
        cls.noscope = kf.add("key_noscope", owner="u_nos", scopes=["other:thing"])
        cls.limited = kf.add("key_limited", owner="u_lim", scopes=["data:read"],
                             limits={"read": "1r/m"})
        kf.write(nginx.path("keys.yaml"))
        cls.unknown = new_key("jfi_sk_live_")

    def assertRefusedHere(self, resp, status, code, what, message=None):
        self.assertRefused(resp, status, code, message, what, untouched=("fallback",))

    def refuse_everywhere(self, headers, status, code, message=None, label=""):
        for path, how in FALLBACK_CONFIGS:
            with self.subTest(config=how):
                self.rec["fallback"].clear()
                r = self.get(path + "x", headers)
                self.assertRefusedHere(r, status, code, "%s under %s" % (label, how), message)

    # -- control: the error_page of each configuration is live

    def test_error_page_serves_accepted_upstream_failure(self):
        for path, how in FALLBACK_CONFIGS:
            with self.subTest(config=how):
                self.rec["fallback"].clear()
                r = self.get(path + "ctl", bearer(self.good))
                self.assertTrue(self.rec["fallback"].paths(),
                                "an accepted request whose upstream fails (502) follows %s "
                                "(the error_page is live here); got %r" % (how, r))
                self.assertIn(b"FALLBACK-CONTENT", r.body,
                              "the fallback's content is what %s serves after a 502" % how)

    # -- refusals

    def test_no_key(self):
        self.refuse_everywhere([], 401, "missing_api_key", MESSAGES["missing_api_key"],
                               "no key")

    def test_unknown_key(self):
        self.refuse_everywhere(bearer(self.unknown), 401, "invalid_api_key",
                               MESSAGES["invalid_api_key"], "unknown key (Bearer)")

    def test_malformed_key(self):
        self.refuse_everywhere(xkey("jfi_sk_live_short!"), 401, "invalid_api_key",
                               MESSAGES["invalid_api_key"], "malformed key (x-api-key)")

    def test_revoked_key(self):
        self.refuse_everywhere(bearer(self.revoked), 401, "revoked_api_key",
                               MESSAGES["revoked_api_key"], "revoked key")

    def test_key_without_scope(self):
        self.refuse_everywhere(xkey(self.noscope), 403, "insufficient_scope",
                               scope_message("data:read"), "key lacking data:read")

    def test_key_over_rate_limit(self):
        # 1r/m for this key, one budget for all the locations (same zone,
        # category and period): the first request spends it.
        self.get("/srv/spend", bearer(self.limited))
        self.refuse_everywhere(bearer(self.limited), 429, "rate_limit_exceeded",
                               None, "key over its 1r/m limit")

    # -- broken request bodies, no key

    def raw_post(self, path, head_extra, body, shutdown):
        data = ("POST %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                "Content-Type: text/plain\r\n%s\r\n" % (path, head_extra)).encode() + body
        return send_raw(self.nginx.port, data, shutdown_write=shutdown, timeout=10.0,
                        method="POST")

    def test_malformed_chunked_body_no_key(self):
        bodies = [
            ("chunk size 'ZZZ'", b"ZZZ\r\n"),
            ("a good chunk, then garbage", b"5\r\nhello\r\nXYZ\r\n"),
        ]
        for path, how in FALLBACK_CONFIGS:
            for label, body in bodies:
                with self.subTest(config=how, body=label):
                    self.rec["fallback"].clear()
                    r = self.raw_post(path + "x", "Transfer-Encoding: chunked\r\n", body,
                                      shutdown=False)
                    self.assertRefusedHere(r, 401, "missing_api_key",
                                           "no key, malformed chunked body (%s) under %s"
                                           % (label, how), MESSAGES["missing_api_key"])

    def test_truncated_body_no_key(self):
        bodies = [
            ("10 of 100 bytes, then the client closes its write side",
             "Content-Length: 100\r\n", b"x" * 10, True),
            ("10 of 100 bytes, the client waits",
             "Content-Length: 100\r\n", b"x" * 10, False),
            ("chunked, a chunk cut short, then the client closes its write side",
             "Transfer-Encoding: chunked\r\n", b"100\r\nabc", True),
        ]
        for path, how in FALLBACK_CONFIGS:
            for label, head, body, shutdown in bodies:
                with self.subTest(config=how, body=label):
                    self.rec["fallback"].clear()
                    r = self.raw_post(path + "x", head, body, shutdown=shutdown)
                    self.assertRefusedHere(r, 401, "missing_api_key",
                                           "no key, body cut short (%s) under %s"
                                           % (label, how), MESSAGES["missing_api_key"])

    # -- accepted, upstream fails, error_page into another protected location

    def test_error_page_into_protected_location_checks_its_scope(self):
        for path, how in UP_CONFIGS:
            with self.subTest(config=how):
                self.rec["fallback"].clear()
                r = self.get(path + "x", bearer(self.good))
                self.assertRefusedHere(r, 403, "insufficient_scope",
                                       "key without admin, 502 then %s into a location "
                                       "requiring admin" % how, scope_message("admin"))

    def test_error_page_into_protected_location_accepts_right_key(self):
        for path, how in UP_CONFIGS:
            with self.subTest(config=how):
                self.rec["fallback"].clear()
                r = self.get(path + "x", bearer(self.admin))
                self.assertIn(b"FALLBACK-CONTENT", r.body,
                              "a key with admin follows %s into the admin location's content; "
                              "got %r" % (how, r))


# --------------------------------------------------------------------------
# D. Variables evaluated before the access phase never keep the key

HTTP_VARS = """
    api_key_zone keys:1m file={prefix}/keys.yaml;
    api_key_source bearer header=x-api-key;

    map $http_x_api_key $client_key { default $http_x_api_key; }
    map $http_authorization $client_auth { default $http_authorization; }
    limit_req_zone $client_key zone=rl:1m rate=100r/s;
    limit_req_zone $client_auth zone=rl2:1m rate=100r/s;

    log_format keys 'rid=$api_key_request_id id=$api_key_id '
                    'k=[$http_x_api_key] a=[$http_authorization]';

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        access_log {prefix}/keys.log keys;
        api_key keys;

        # the key headers are read in the preaccess phase (limit_req -> map)
        location /pre/ {
            limit_req zone=rl burst=100 nodelay;
            limit_req zone=rl2 burst=100 nodelay;
            proxy_set_header X-Seen-Key $http_x_api_key;
            proxy_set_header X-Seen-Auth $http_authorization;
            proxy_pass http://127.0.0.1:{upstream};
        }
        # nothing reads them before the access phase
        location /late/ {
            proxy_set_header X-Seen-Key $http_x_api_key;
            proxy_set_header X-Seen-Auth $http_authorization;
            proxy_pass http://127.0.0.1:{upstream};
        }
    }

    server {
        listen 127.0.0.1:{port2};
        server_name localhost;
        access_log {prefix}/keys2.log keys;
        api_key keys;

        # read in the server's rewrite phase
        set $k $http_x_api_key;
        set $a $http_authorization;

        location / {
            proxy_set_header X-K $http_x_api_key;
            proxy_set_header X-A $http_authorization;
            proxy_pass http://127.0.0.1:{upstream};
        }
    }
"""


class CachedVariablesTest(RecordingCase):
    """D: with api_key_hide_credentials on, $http_x_api_key and
    $http_authorization are empty for everything after the access phase,
    even when something evaluated (and cached) them before it."""

    HTTP = HTTP_VARS
    PORTS = ("port", "port2")

    @classmethod
    def prepare(cls, nginx):
        cls.kf = KeyFile()
        cls.keys = {}
        for name in ("pre_x", "pre_b", "late_x", "late_b", "set_x", "set_b"):
            cls.keys[name] = cls.kf.add("key_" + name, owner="u_" + name)
        cls.kf.write(nginx.path("keys.yaml"))

    def log_line(self, log, rid, timeout=5.0):
        def find():
            for line in self.nginx.access_log(log).splitlines():
                if "rid=%s " % rid in line:
                    return line
            return None
        return wait_until(find, timeout, what="%s line of %s" % (log, rid))

    def check_no_leak(self, name, path, carrier, port=None, log="keys.log"):
        key = self.keys[name]
        headers = xkey(key) if carrier == "x-api-key" else bearer(key)
        r = self.nginx.request("GET", path, headers, port=port)
        self.assertEqual(r.status, 200, "%s via %s accepted; got %r" % (path, carrier, r))
        seen = [(n, v) for n, v in r.echoed_headers() if key in v]
        self.assertEqual(seen, [], "the upstream of %s got the key (sent as %s) in no header"
                         % (path, carrier))
        line = self.log_line(log, r.header("X-Request-Id"))
        self.assertFalse(key in line, "the access log line of %s (key sent as %s) does not hold "
                         "the key: %r" % (path, carrier, line))

    def test_preaccess_map_limit_req_x_api_key(self):
        self.check_no_leak("pre_x", "/pre/a", "x-api-key")

    def test_preaccess_map_limit_req_bearer(self):
        self.check_no_leak("pre_b", "/pre/b", "bearer")

    def test_not_read_before_access_x_api_key(self):
        self.check_no_leak("late_x", "/late/a", "x-api-key")

    def test_not_read_before_access_bearer(self):
        self.check_no_leak("late_b", "/late/b", "bearer")

    def test_server_rewrite_set_x_api_key(self):
        self.check_no_leak("set_x", "/s/a", "x-api-key", port=self.nginx.vars["port2"],
                           log="keys2.log")

    def test_server_rewrite_set_bearer(self):
        self.check_no_leak("set_b", "/s/b", "bearer", port=self.nginx.vars["port2"],
                           log="keys2.log")


# --------------------------------------------------------------------------
# E. satisfy any does not make the key optional

HTTP_SATISFY = """
    api_key_zone keys:1m file={prefix}/keys.yaml;
    api_key_source bearer header=x-api-key;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;

        location /allow-deny/ {
            satisfy any;
            allow 127.0.0.1;
            deny all;
            api_key keys;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /allow-all/ {
            satisfy any;
            allow all;
            api_key keys;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /basic/ {
            satisfy any;
            auth_basic "basic";
            auth_basic_user_file {prefix}/htpasswd;
            deny all;
            api_key keys;
            proxy_pass http://127.0.0.1:{upstream};
        }
    }

    server {
        listen 127.0.0.1:{port2};
        server_name localhost;
        satisfy any;
        allow 127.0.0.1;
        deny all;
        api_key keys;

        location / {
            proxy_pass http://127.0.0.1:{upstream};
        }
    }
"""

BASIC_OK = [("Authorization", "Basic dXNlcjpzZWNyZXQ=")]  # user:secret


class SatisfyAnyTest(RecordingCase):
    """E: with `satisfy any` and an allow rule (or auth_basic) that would let
    the client in, a key is still required."""

    HTTP = HTTP_SATISFY
    PORTS = ("port", "port2")

    @classmethod
    def prepare(cls, nginx):
        kf = KeyFile()
        cls.good = kf.add("key_good")
        kf.write(nginx.path("keys.yaml"))
        nginx.write_file("htpasswd", "user:{PLAIN}secret\n")

    def configs(self):
        p2 = self.nginx.vars["port2"]
        return [
            ("satisfy any; allow 127.0.0.1; deny all", self.nginx.port, "/allow-deny/x", []),
            ("satisfy any; allow all", self.nginx.port, "/allow-all/x", []),
            ("satisfy any; auth_basic (good credentials sent); deny all", self.nginx.port,
             "/basic/x", BASIC_OK),
            ("server-level satisfy any; allow 127.0.0.1; deny all", p2, "/x", []),
        ]

    def test_no_key_refused(self):
        for how, port, path, extra in self.configs():
            with self.subTest(config=how):
                r = self.nginx.request("GET", path, extra, port=port)
                self.assertError(r, 401, "missing_api_key", MESSAGES["missing_api_key"],
                                 "no key under %s" % how)

    def test_invalid_key_refused(self):
        for how, port, path, extra in self.configs():
            with self.subTest(config=how):
                r = self.nginx.request("GET", path, extra + xkey(new_key()), port=port)
                self.assertError(r, 401, "invalid_api_key", MESSAGES["invalid_api_key"],
                                 "unknown key under %s" % how)

    def test_valid_key_accepted(self):
        for how, port, path, extra in self.configs():
            with self.subTest(config=how):
                r = self.nginx.request("GET", path, extra + xkey(self.good), port=port)
                self.assertEqual(r.status, 200, "a valid key is accepted under %s; got %r"
                                 % (how, r))


# --------------------------------------------------------------------------
# F. HTTP/2 (h2c with prior knowledge, through curl)

def curl_h2(port, path, headers=()):
    """(HTTP version, status, Headers, body) of one GET over h2c."""
    tmp = tempfile.mkdtemp(prefix="apikey-h2-")
    try:
        hfile, bfile = os.path.join(tmp, "h"), os.path.join(tmp, "b")
        cmd = ["curl", "-sS", "--http2-prior-knowledge", "--max-time", "10",
               "-D", hfile, "-o", bfile]
        for name, value in headers:
            cmd += ["-H", "%s: %s" % (name, value)]
        cmd.append("http://127.0.0.1:%d%s" % (port, path))
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=20)
        if proc.returncode != 0:
            raise AssertionError("curl failed (%d): %s" % (proc.returncode,
                                                           proc.stdout.decode()))
        with open(hfile, "rb") as f:
            head = f.read().decode("latin-1")
        with open(bfile, "rb") as f:
            body = f.read()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [l for l in head.split("\r\n") if l]
    m = re.match(r"HTTP/(\S+) (\d{3})", lines[0])
    version, status = m.group(1), int(m.group(2))
    pairs = [tuple(p.strip() for p in l.split(":", 1)) for l in lines[1:] if ":" in l]
    return version, status, Headers(pairs), body


HTTP_H2 = """
    api_key_zone keys:1m file={prefix}/keys.yaml;

    server {
        @LISTEN@
        server_name localhost;
        error_page 401 403 429 500 502 400 413 = @fallback;

        location @fallback { proxy_pass http://127.0.0.1:{fallback}; }

        location /p/ {
            api_key keys;
            api_key_scope data:read;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /tf/ {
            api_key keys;
            api_key_scope data:read;
            root {prefix}/html;
            try_files $uri @admin;
        }
        location @admin {
            api_key keys;
            api_key_scope admin;
            proxy_pass http://127.0.0.1:{fallback};
        }
    }
"""


class Http2Test(RecordingCase):
    """F: the fallback and redirect promises over HTTP/2."""

    HTTP = HTTP_H2
    RECORDERS = {"fallback": "FALLBACK-CONTENT\n"}

    @classmethod
    def setUpClass(cls):
        require_http2()  # skips, or fails under REQUIRE_HTTP2=1 (CI)
        cls.HTTP = HTTP_H2.replace("@LISTEN@", h2c_listen())
        super().setUpClass()

    @classmethod
    def prepare(cls, nginx):
        kf = KeyFile()
        cls.good = kf.add("key_good", scopes=["data:read"])
        kf.write(nginx.path("keys.yaml"))

    def envelope_code(self, body):
        try:
            return json.loads(body)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None

    def test_h2_no_key_not_fallback(self):
        version, status, h, body = curl_h2(self.nginx.port, "/p/x")
        self.assertEqual(version, "2", "the request went over HTTP/2")
        self.assertEqual((status, self.envelope_code(body)), (401, "missing_api_key"),
                         "over h2, no key gets the module's 401 envelope, not the "
                         "error_page fallback; got %d %r" % (status, body[:200]))
        self.assertEqual(self.rec["fallback"].paths(), [],
                         "over h2 the refusal never reached the error_page fallback")

    def test_h2_redirect_applies_target_scope(self):
        version, status, h, body = curl_h2(self.nginx.port, "/tf/missing",
                                           bearer(self.good))
        self.assertEqual(version, "2", "the request went over HTTP/2")
        self.assertEqual((status, self.envelope_code(body)), (403, "insufficient_scope"),
                         "over h2, try_files into @admin refuses a key without admin; "
                         "got %d %r" % (status, body[:200]))
        self.assertEqual(self.rec["fallback"].paths(), [],
                         "over h2 neither @admin's upstream nor the fallback was reached")

    def test_h2_accepted(self):
        version, status, h, body = curl_h2(self.nginx.port, "/p/x", bearer(self.good))
        self.assertEqual(status, 200, "over h2 a good key is accepted; got %d %r"
                         % (status, body[:200]))
