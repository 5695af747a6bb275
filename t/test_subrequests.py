"""SPEC "Enforcement promises": subrequests are checked. A location with
`api_key` on never serves a subrequest whose key it did not accept there:
`auth_request` (the refusal's status reaches the parent), SSI
`include virtual`, `mirror`. A protected parent that accepted (and hid)
the key can still make subrequests to locations of the same zone, and no
upstream sees the key."""

import secrets
import time

from harness import (PAST, KeyFile, RecordingCase, bearer, new_key, xkey)

HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;
    api_key_limit_zone lim:1m;
    api_key_limit_zone page_lim:1m;
    api_key_limit_zone part_lim:1m;
    api_key_source bearer header=x-api-key;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;

        # -- auth_request from unprotected parents
        location /ar-proxy/ {
            auth_request /check-proxy;
            proxy_pass http://127.0.0.1:{content};
        }
        location = /check-proxy {
            internal;
            api_key keys;
            api_key_scope admin;
            api_key_limit lim read 1000r/m;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /ar-gif/ {
            auth_request /check-gif;
            proxy_pass http://127.0.0.1:{content};
        }
        location = /check-gif {
            internal;
            api_key keys;
            api_key_scope admin;
            api_key_limit lim read 1000r/m;
            empty_gif;
        }

        # -- SSI from unprotected pages
        location /ssi/ {
            ssi on;
            root {prefix}/html;
        }
        location /protected/ {
            api_key keys;
            proxy_pass http://127.0.0.1:{secret};
        }
        location /pstatic/ {
            api_key keys;
            root {prefix}/html;
        }
        location /pscoped/ {
            api_key keys;
            api_key_scope admin;
            proxy_pass http://127.0.0.1:{secret};
        }

        # -- mirror from unprotected locations
        location /mirrored/ {
            mirror /m;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location = /m {
            internal;
            api_key keys;
            proxy_pass http://127.0.0.1:{mirror};
        }
        location /mirrored-scoped/ {
            mirror /m-admin;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location = /m-admin {
            internal;
            api_key keys;
            api_key_scope admin;
            proxy_pass http://127.0.0.1:{mirror};
        }

        # -- protected parents (hide_credentials on, the default)
        location /pssi/ {
            api_key keys;
            ssi on;
            root {prefix}/html;
        }
        location /pssi-admin/ {
            api_key keys;
            ssi on;
            root {prefix}/html;
        }
        location /par/ {
            api_key keys;
            auth_request /check-same;
            proxy_pass http://127.0.0.1:{content};
        }
        location = /check-same {
            internal;
            api_key keys;
            proxy_pass http://127.0.0.1:{check};
        }
        # -- a served page whose include is refused by its own limit
        location /pssi-lim/ {
            api_key keys;
            api_key_limit page_lim read 5r/m;
            ssi on;
            root {prefix}/html;
        }
        location /plim/ {
            api_key keys;
            api_key_limit part_lim read 1r/m;
            proxy_pass http://127.0.0.1:{secret};
        }
        location /par-admin/ {
            api_key keys;
            auth_request /check-proxy;
            proxy_pass http://127.0.0.1:{content};
        }
    }

    # api_key at server level: the subrequest targets inherit it, the
    # parents turn it off
    server {
        listen 127.0.0.1:{port2};
        server_name localhost;
        api_key keys;

        location /ar-inherit/ {
            api_key off;
            auth_request /check;
            proxy_pass http://127.0.0.1:{content};
        }
        location = /check {
            internal;
            api_key_scope admin;
            api_key_limit lim read 1000r/m;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /ssi/ {
            api_key off;
            ssi on;
            root {prefix}/html;
        }
        location /protected/ {
            proxy_pass http://127.0.0.1:{secret};
        }
        location /mirrored/ {
            api_key off;
            mirror /m;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location = /m {
            internal;
            proxy_pass http://127.0.0.1:{mirror};
        }
    }
"""

MIRROR_WAIT = 0.5  # a refused mirror must not show up within this


def has_key(req, key):
    """The (name, value) pairs of a recorded request that carry the key."""
    return [(n, v) for n, v in req["headers"] if key in v]


class SubrequestTest(RecordingCase):
    HTTP = HTTP
    PORTS = ("port", "port2")
    RECORDERS = {
        "content": "PARENT-CONTENT\n",   # what the auth_request parents serve
        "secret": "SECRET-CONTENT\n",    # behind /protected/ and /pscoped/
        "mirror": "MIRROR\n",            # behind the mirror targets
        "check": "CHECK\n",              # behind /check-same
    }

    @classmethod
    def prepare(cls, nginx):
        kf = KeyFile()
        cls.read = kf.add("key_read", owner="u_read", scopes=["data:read"])
        cls.admin = kf.add("key_admin", owner="u_admin", scopes=["data:read", "admin"])
        cls.revoked = kf.add("key_revoked", owner="u_rev", scopes=["admin"], revoked_at=PAST)
        cls.limited = {}
        for name in ("ar_proxy", "ar_gif", "ar_inherit"):
            cls.limited[name] = kf.add("key_lim_" + name, owner="u_" + name,
                                       scopes=["admin"], limits={"read": "1r/m"})
        kf.write(nginx.path("keys.yaml"))
        cls.unknown = new_key("jfi_sk_live_")
        inc = 'BEFORE[<!--# include virtual="%s" -->]AFTER\n'
        nginx.write_file("html/ssi/page.html", inc % "/protected/x")
        nginx.write_file("html/ssi/static.html", inc % "/pstatic/secret.txt")
        nginx.write_file("html/ssi/scoped.html", inc % "/pscoped/x")
        nginx.write_file("html/pstatic/secret.txt", "STATIC-SECRET\n")
        nginx.write_file("html/pssi/page.html", inc % "/protected/x")
        nginx.write_file("html/pssi-admin/page.html", inc % "/pscoped/x")
        nginx.write_file("html/pssi-lim/page.html", inc % "/plim/x")
        cls.page_key = kf.add("key_page", owner="u_page", scopes=["data:read"])
        kf.write(nginx.path("keys.yaml"))

    # ------------------------------------------------------------------
    # B1. auth_request /check where /check is protected

    def ar_configs(self):
        p2 = self.nginx.vars["port2"]
        return [
            ("ar_proxy", "auth_request to a protected location with proxy_pass",
             self.nginx.port, "/ar-proxy/x"),
            ("ar_gif", "auth_request to a protected location with empty_gif",
             self.nginx.port, "/ar-gif/x"),
            ("ar_inherit", "auth_request to a location inheriting server-level api_key",
             p2, "/ar-inherit/x"),
        ]

    def auth_request_refused(self, headers, status, challenge, label):
        for _, how, port, path in self.ar_configs():
            with self.subTest(config=how):
                self.rec["content"].clear()
                r = self.nginx.request("GET", path, headers, port=port)
                self.assertEqual(r.status, status,
                                 "%s: the refusal of the %s reaches the parent as %d; got %r"
                                 % (label, how, status, r))
                if challenge is not None:
                    self.assertEqual(r.header_all("WWW-Authenticate"), [challenge],
                                     "%s: the parent's 401 carries the check's challenge"
                                     % label)
                self.assertEqual(self.rec["content"].paths(), [],
                                 "%s: the parent's content was not served" % label)

    def test_auth_request_no_key(self):
        self.auth_request_refused([], 401, 'Bearer realm="api"', "no key")

    def test_auth_request_unknown_key(self):
        self.auth_request_refused(bearer(self.unknown), 401,
                                  'Bearer realm="api", error="invalid_token"', "unknown key")

    def test_auth_request_revoked_key(self):
        self.auth_request_refused(xkey(self.revoked), 401,
                                  'Bearer realm="api", error="invalid_token"', "revoked key")

    def test_auth_request_key_without_scope(self):
        self.auth_request_refused(bearer(self.read), 403, None, "key without admin")

    def test_auth_request_key_with_scope(self):
        for _, how, port, path in self.ar_configs():
            with self.subTest(config=how):
                self.rec["content"].clear()
                r = self.nginx.request("GET", path, bearer(self.admin), port=port)
                self.assertEqual((r.status, r.body), (200, b"PARENT-CONTENT\n"),
                                 "a key with admin passes the %s and gets the parent's "
                                 "content; got %r" % (how, r))

    def test_auth_request_over_rate_limit(self):
        # nginx's auth_request turns any status but 2xx/401/403 into 500
        for name, how, port, path in self.ar_configs():
            with self.subTest(config=how):
                key = self.limited[name]
                r = self.nginx.request("GET", path, bearer(key), port=port)
                self.assertEqual(r.status, 200, "the first request of a 1r/m key passes the "
                                 "%s; got %r" % (how, r))
                self.rec["content"].clear()
                r = self.nginx.request("GET", path, bearer(key), port=port)
                self.assertEqual(r.status, 500,
                                 "the second request of a 1r/m key is refused by the %s "
                                 "(429, which auth_request answers as 500); got %r" % (how, r))
                self.assertEqual(self.rec["content"].paths(), [],
                                 "over the limit, the parent's content was not served (%s)"
                                 % how)

    # ------------------------------------------------------------------
    # B2. SSI include virtual of a protected location

    def ssi_configs(self):
        p2 = self.nginx.vars["port2"]
        return [
            ("include of a protected proxy location", self.nginx.port, "/ssi/page.html",
             b"SECRET-CONTENT"),
            ("include of a protected static file", self.nginx.port, "/ssi/static.html",
             b"STATIC-SECRET"),
            ("include of a location inheriting server-level api_key", p2, "/ssi/page.html",
             b"SECRET-CONTENT"),
        ]

    def ssi_not_included(self, headers, label):
        for how, port, path, marker in self.ssi_configs():
            with self.subTest(config=how):
                self.rec["secret"].clear()
                r = self.nginx.request("GET", path, headers, port=port)
                self.assertEqual(r.status, 200, "%s: the unprotected page is served (%s); got %r"
                                 % (label, how, r))
                self.assertTrue(r.body.startswith(b"BEFORE[") and b"]AFTER" in r.body,
                                "%s: the page around the include is served (%s); got %r"
                                % (label, how, r.body))
                self.assertNotIn(marker, r.body,
                                 "%s: the %s is not in the page" % (label, how))
                self.assertEqual(self.rec["secret"].paths(), [],
                                 "%s: the protected upstream was never reached (%s)"
                                 % (label, how))

    def test_ssi_no_key(self):
        self.ssi_not_included([], "no key")

    def test_ssi_unknown_key(self):
        self.ssi_not_included(xkey(self.unknown), "unknown key")

    def test_ssi_revoked_key(self):
        self.ssi_not_included(bearer(self.revoked), "revoked key")

    def test_ssi_valid_key_included(self):
        for how, port, path, marker in self.ssi_configs():
            with self.subTest(config=how):
                r = self.nginx.request("GET", path, xkey(self.read), port=port)
                self.assertEqual(r.status, 200, "page with a valid key; got %r" % r)
                self.assertIn(b"BEFORE[" + marker, r.body,
                              "a key valid for the protected location gets the %s included"
                              % how)

    def test_ssi_scope_of_included_location(self):
        self.rec["secret"].clear()
        r = self.get("/ssi/scoped.html", bearer(self.read))
        self.assertEqual(r.status, 200, "the unprotected page is served; got %r" % r)
        self.assertNotIn(b"SECRET-CONTENT", r.body,
                         "a key without admin does not get /pscoped/ (api_key_scope admin) "
                         "included")
        self.assertEqual(self.rec["secret"].paths(), [],
                         "a key without admin never reaches /pscoped/'s upstream")
        r = self.get("/ssi/scoped.html", bearer(self.admin))
        self.assertIn(b"BEFORE[SECRET-CONTENT", r.body,
                      "a key with admin gets /pscoped/ included")

    def test_ssi_include_hides_key_from_upstream(self):
        for carrier, headers in (("x-api-key", xkey(self.read)), ("bearer", bearer(self.read))):
            with self.subTest(carrier=carrier):
                self.rec["secret"].clear()
                r = self.get("/ssi/page.html", headers)
                self.assertIn(b"SECRET-CONTENT", r.body, "the include was served; got %r" % r)
                reqs = self.rec["secret"].requests()
                self.assertEqual([has_key(q, self.read) for q in reqs], [[]],
                                 "the protected include's upstream got the request without "
                                 "the key (sent as %s)" % carrier)

    # ------------------------------------------------------------------
    # B3. mirror to a protected location

    def mirror_configs(self):
        p2 = self.nginx.vars["port2"]
        return [
            ("mirror /m (api_key keys)", self.nginx.port, "/mirrored/x"),
            ("mirror /m (inherits server-level api_key)", p2, "/mirrored/x"),
        ]

    def mirror_send(self, port, path, headers):
        """Sends one request carrying a fresh token; returns the token."""
        token = secrets.token_hex(8)
        r = self.nginx.request("GET", "%s?t=%s" % (path, token), headers, port=port)
        self.assertEqual(r.status, 200, "the mirroring location itself is unprotected; got %r"
                         % r)
        return token

    def mirror_not_received(self, headers, label):
        sent = [(how, self.mirror_send(port, path, headers))
                for how, port, path in self.mirror_configs()]
        time.sleep(MIRROR_WAIT)
        for how, token in sent:
            with self.subTest(config=how):
                self.assertEqual(self.rec["mirror"].paths(contains=token), [],
                                 "%s: the protected mirror target's upstream got nothing (%s)"
                                 % (label, how))

    def test_mirror_no_key(self):
        self.mirror_not_received([], "no key")

    def test_mirror_unknown_key(self):
        self.mirror_not_received(bearer(self.unknown), "unknown key")

    def test_mirror_revoked_key(self):
        self.mirror_not_received(xkey(self.revoked), "revoked key")

    def test_mirror_valid_key(self):
        for how, port, path in self.mirror_configs():
            with self.subTest(config=how):
                token = self.mirror_send(port, path, bearer(self.read))
                self.rec["mirror"].wait_for(1, contains=token, timeout=5.0)

    def test_mirror_hides_key_from_upstream(self):
        for how, port, path in self.mirror_configs():
            with self.subTest(config=how):
                token = self.mirror_send(port, path, xkey(self.read))
                reqs = self.rec["mirror"].wait_for(1, contains=token, timeout=5.0)
                self.assertEqual([has_key(q, self.read) for q in reqs], [[]],
                                 "the mirror target's upstream got the mirrored request "
                                 "without the key (%s)" % how)

    def test_mirror_scope_of_target(self):
        token = self.mirror_send(self.nginx.port, "/mirrored-scoped/x", bearer(self.read))
        time.sleep(MIRROR_WAIT)
        self.assertEqual(self.rec["mirror"].paths(contains=token), [],
                         "a key without admin is not mirrored to /m-admin (api_key_scope admin)")
        token = self.mirror_send(self.nginx.port, "/mirrored-scoped/x", bearer(self.admin))
        self.rec["mirror"].wait_for(1, contains=token, timeout=5.0)

    # ------------------------------------------------------------------
    # B4. protected parents that hid the key make subrequests

    def test_protected_parent_ssi_include(self):
        for carrier, headers in (("x-api-key", xkey(self.read)), ("bearer", bearer(self.read))):
            with self.subTest(carrier=carrier):
                self.rec["secret"].clear()
                r = self.get("/pssi/page.html", headers)
                self.assertEqual(r.status, 200, "the protected page accepts the key; got %r" % r)
                self.assertIn(b"BEFORE[SECRET-CONTENT", r.body,
                              "the include into a location of the same zone is accepted "
                              "although the parent hid the key (sent as %s)" % carrier)
                self.assertEqual([has_key(q, self.read) for q in self.rec["secret"].requests()],
                                 [[]], "the include's upstream never saw the key")

    def test_protected_parent_auth_request(self):
        for carrier, headers in (("x-api-key", xkey(self.read)), ("bearer", bearer(self.read))):
            with self.subTest(carrier=carrier):
                self.rec["check"].clear()
                self.rec["content"].clear()
                r = self.get("/par/x", headers)
                self.assertEqual((r.status, r.body), (200, b"PARENT-CONTENT\n"),
                                 "auth_request to a location of the same zone passes although "
                                 "the parent hid the key (sent as %s); got %r" % (carrier, r))
                seen = [has_key(q, self.read) for q in
                        self.rec["check"].requests() + self.rec["content"].requests()]
                self.assertEqual(seen, [[], []],
                                 "neither the check's nor the parent's upstream saw the key")

    def test_refused_include_takes_back_only_its_own_spend(self):
        remaining = []
        for i in range(3):
            r = self.get("/pssi-lim/page.html", bearer(self.page_key))
            self.assertEqual(r.status, 200, "page #%d is served; got %r" % (i + 1, r))
            included = b"SECRET-CONTENT" in r.body
            self.assertEqual(included, i == 0,
                             "the include is accepted once (1r/m), then refused (page #%d)"
                             % (i + 1))
            remaining.append(r.header("X-RateLimit-Remaining"))
        self.assertEqual(remaining, ["4", "3", "2"],
                         "every served page spends its own budget (5r/m), even when its "
                         "include was refused: a refused subrequest takes back only what it "
                         "spent itself")

    def test_protected_parent_subrequest_checks_scope(self):
        self.rec["secret"].clear()
        r = self.get("/pssi-admin/page.html", xkey(self.read))
        self.assertEqual(r.status, 200, "the protected page accepts the key; got %r" % r)
        self.assertNotIn(b"SECRET-CONTENT", r.body,
                         "an include into /pscoped/ (api_key_scope admin) is refused for a key "
                         "without admin, although the parent accepted the key")
        self.assertEqual(self.rec["secret"].paths(), [],
                         "/pscoped/'s upstream was never reached")
        self.rec["content"].clear()
        r = self.get("/par-admin/x", xkey(self.read))
        self.assertEqual(r.status, 403, "auth_request into /check-proxy (api_key_scope admin) "
                         "refuses a key without admin, although the parent accepted it; got %r"
                         % r)
        self.assertEqual(self.rec["content"].paths(), [],
                         "the parent's content was not served")
        r = self.get("/par-admin/x", xkey(self.admin))
        self.assertEqual((r.status, r.body), (200, b"PARENT-CONTENT\n"),
                         "a key with admin passes both; got %r" % r)
