"""SPEC "Responses": the error table (all rows but 429), the envelope and its
headers, X-Request-Id, HEAD, and the absence of CORS."""

import json

from harness import (FUTURE, MESSAGES, PAST, REQUEST_ID_RE, NginxCase, bearer, new_key,
                     scope_message, KeyFile)

HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;

        api_key keys;

        location / {
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /paid/ {
            api_key_plans pro team;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /scoped/ {
            api_key_scope diagrams:write;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /realm/ {
            api_key_realm "example realm";
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /gif {
            empty_gif;
        }
        location /static/ {
            root {prefix}/html;
        }
        location /live/ {
            api_key_environment live;
            proxy_pass http://127.0.0.1:{upstream};
        }
    }
"""

ERROR_TYPES = {401: "authentication_error", 403: "permission_error"}


class ErrorsTest(NginxCase):
    HTTP = HTTP

    @classmethod
    def prepare(cls, nginx):
        kf = KeyFile()
        cls.good = kf.add("key_good", plan="pro", scopes=["diagrams:read"])
        cls.free = kf.add("key_free", plan="free", scopes=["diagrams:read", "diagrams:write"])
        cls.revoked = kf.add("key_revoked", plan="pro", revoked_at=PAST)
        cls.expired = kf.add("key_expired", plan="pro", expires_at=PAST)
        cls.later = kf.add("key_later", plan="pro", expires_at=FUTURE)
        cls.expired_offset = kf.add("key_expired_offset", plan="pro",
                                    expires_at="2020-01-01T00:00:00+02:00")
        cls.revoked_date = kf.add("key_revoked_date", plan="pro", revoked_at="2020-01-01")
        cls.later_offset = kf.add("key_later_offset", plan="pro",
                                  expires_at="2099-01-01T00:00:00-05:00")
        cls.testkey = kf.add("key_test", prefix="jfi_sk_test_", plan="pro")
        cls.elsewhere = kf.add("key_elsewhere", plan="pro", scopes=["diagrams:read"],
                               allowed_ips=["192.0.2.0/24", "2001:db8::/32"])
        # the hash is in the file, but the prefix is declared nowhere
        cls.noprefix = kf.add("key_noprefix", key=new_key("zzz_"), plan="pro")
        cls.bang = kf.add("key_bang", key="jfi_sk_live_" + "x" * 20 + "!" + "y" * 19, plan="pro")
        kf.write(nginx.path("keys.yaml"))
        nginx.write_file("html/static/index.html", "hello index\n")
        cls.unknown = new_key("jfi_sk_live_")

    # -- helpers

    def check_envelope(self, resp, status, code, message, key_sent, what, realm="api"):
        """Every promise of SPEC "Responses" about one refusal."""
        self.assertEqual(resp.status, status, "%s: status %d; got %r" % (what, status, resp))
        ctype = (resp.header("Content-Type") or "").split(";")[0].strip().lower()
        self.assertEqual(ctype, "application/json", "%s: error is application/json" % what)
        cc = [d.strip().lower() for d in (resp.header("Cache-Control") or "").split(",")]
        self.assertIn("no-store", cc, "%s: error carries Cache-Control: no-store" % what)
        try:
            doc = json.loads(resp.body)
        except ValueError:
            self.fail("%s: body is JSON: %r" % (what, resp.body))
        self.assertEqual(set(doc), {"error", "request_id"},
                         "%s: envelope has exactly error and request_id" % what)
        self.assertEqual(set(doc["error"]), {"type", "code", "message"},
                         "%s: error has exactly type, code, message" % what)
        self.assertEqual(doc["error"]["type"], ERROR_TYPES[status],
                         "%s: error.type for %d" % (what, status))
        self.assertEqual(doc["error"]["code"], code, "%s: error.code" % what)
        self.assertEqual(doc["error"]["message"], message, "%s: error.message" % what)
        rid = resp.header("X-Request-Id")
        self.assertIsNotNone(rid, "%s: error carries X-Request-Id" % what)
        self.assertRegex(rid, REQUEST_ID_RE, "%s: X-Request-Id format" % what)
        self.assertEqual(doc["request_id"], rid, "%s: request_id in body == X-Request-Id" % what)
        if status == 401:
            want = 'Bearer realm="%s"' % realm
            if key_sent:
                want += ', error="invalid_token"'
            self.assertEqual(resp.header_all("WWW-Authenticate"), [want],
                             "%s: one WWW-Authenticate: %s" % (what, want))
        cors = [n for n in resp.headers.names() if n.startswith("access-control-")]
        self.assertEqual(cors, [], "%s: no CORS headers on errors" % what)
        return doc

    # -- one row of the table each

    def test_missing_api_key(self):
        r = self.get("/")
        self.check_envelope(r, 401, "missing_api_key", MESSAGES["missing_api_key"],
                            False, "no key")

    def test_invalid_api_key_unknown(self):
        r = self.get("/", bearer(self.unknown))
        self.check_envelope(r, 401, "invalid_api_key", MESSAGES["invalid_api_key"],
                            True, "well-formed unknown key")

    def test_invalid_api_key_malformed(self):
        cases = [
            ("15 characters (too short)", "jfi_sk_live_abc"),
            ("257 characters (too long)", "jfi_sk_live_" + "a" * 245),
            ("character outside the key alphabet", "jfi_sk_live_" + "a" * 20 + "!" + "b" * 19),
            ("a comma inside", "jfi_sk_live_" + "a" * 20 + "," + "b" * 19),
            ("a quote inside", "jfi_sk_live_" + "a" * 20 + '"' + "b" * 19),
            ("non-ASCII bytes", "jfi_sk_live_" + "a" * 20 + "\xe9" + "b" * 19),
        ]
        for what, key in cases:
            with self.subTest(what):
                r = self.get("/", [("Authorization", "Bearer " + key)])
                self.check_envelope(r, 401, "invalid_api_key", MESSAGES["invalid_api_key"],
                                    True, "malformed key: " + what)

    def test_malformed_known_hash_still_invalid(self):
        # a key with a character outside the alphabet whose hash IS in the file
        r = self.get("/", bearer(self.bang))
        self.check_envelope(r, 401, "invalid_api_key", MESSAGES["invalid_api_key"],
                            True, "malformed key refused before lookup, though its hash is listed")

    def test_key_length_bounds_are_inclusive(self):
        # 16 and 256 characters are well-formed: refused only because unknown
        for n in (16, 256):
            with self.subTest(length=n):
                r = self.get("/", bearer("a" * n))
                self.check_envelope(r, 401, "invalid_api_key", MESSAGES["invalid_api_key"],
                                    True, "%d-character unknown key" % n)

    def test_empty_bearer_token_is_invalid(self):
        r = self.get("/", [("Authorization", "Bearer ")])
        self.check_envelope(r, 401, "invalid_api_key", MESSAGES["invalid_api_key"],
                            True, "'Authorization: Bearer' with an empty token")

    def test_invalid_api_key_undeclared_prefix(self):
        r = self.get("/", bearer(self.noprefix))
        self.check_envelope(r, 401, "invalid_api_key", MESSAGES["invalid_api_key"],
                            True, "key whose prefix is not in prefixes:, hash in the file")

    def test_invalid_api_key_wrong_environment(self):
        r = self.get("/live/", bearer(self.testkey))
        self.check_envelope(r, 401, "invalid_api_key", MESSAGES["invalid_api_key"],
                            True, "test key where api_key_environment live")

    def test_revoked_api_key(self):
        r = self.get("/", bearer(self.revoked))
        self.check_envelope(r, 401, "revoked_api_key", MESSAGES["revoked_api_key"],
                            True, "revoked_at in the past")

    def test_expired_api_key(self):
        r = self.get("/", bearer(self.expired))
        self.check_envelope(r, 401, "expired_api_key", MESSAGES["expired_api_key"],
                            True, "expires_at in the past")

    def test_timestamp_forms(self):
        r = self.get("/", bearer(self.expired_offset))
        self.check_envelope(r, 401, "expired_api_key", MESSAGES["expired_api_key"],
                            True, "expires_at with a +02:00 offset in the past")
        r = self.get("/", bearer(self.revoked_date))
        self.check_envelope(r, 401, "revoked_api_key", MESSAGES["revoked_api_key"],
                            True, "revoked_at as a plain past date")
        r = self.get("/", bearer(self.later_offset))
        self.assertEqual(r.status, 200, "expires_at with a -05:00 offset in the future")

    def test_expires_in_future_is_accepted(self):
        r = self.get("/", bearer(self.later))
        self.assertEqual(r.status, 200, "a key with expires_at in the future is accepted")

    def test_plan_required(self):
        r = self.get("/paid/", bearer(self.free))
        self.check_envelope(r, 403, "plan_required", MESSAGES["plan_required"],
                            True, "plan free where api_key_plans pro team")

    def test_ip_not_allowed(self):
        r = self.get("/", bearer(self.elsewhere))
        self.check_envelope(r, 403, "ip_not_allowed", MESSAGES["ip_not_allowed"],
                            True, "allowed_ips without 127.0.0.1")

    def test_insufficient_scope(self):
        r = self.get("/scoped/", bearer(self.good))
        self.check_envelope(r, 403, "insufficient_scope", scope_message("diagrams:write"),
                            True, "key without diagrams:write")

    def test_x_api_key_not_a_default_source(self):
        r = self.get("/", [("x-api-key", self.good)])
        self.check_envelope(r, 401, "missing_api_key", MESSAGES["missing_api_key"],
                            False, "x-api-key is not read unless api_key_source says so")

    def test_realm(self):
        r = self.get("/realm/")
        self.check_envelope(r, 401, "missing_api_key", MESSAGES["missing_api_key"],
                            False, "api_key_realm, no key", realm="example realm")
        r = self.get("/realm/", bearer(self.unknown))
        self.check_envelope(r, 401, "invalid_api_key", MESSAGES["invalid_api_key"],
                            True, "api_key_realm, bad key", realm="example realm")

    def test_other_scheme_is_not_a_key(self):
        r = self.get("/", [("Authorization", "Basic dXNlcjpwYXNzd29yZA==")])
        self.check_envelope(r, 401, "missing_api_key", MESSAGES["missing_api_key"],
                            False, "Authorization: Basic is not a key")

    # -- accepted requests, request ids

    def test_accepted(self):
        r = self.get("/", bearer(self.good))
        self.assertEqual(r.status, 200, "a valid key reaches the upstream")
        self.assertEqual(r.json()["path"], "/", "the upstream answered")
        self.assertRegex(r.header("X-Request-Id") or "", REQUEST_ID_RE,
                         "an accepted response carries X-Request-Id")
        cors = [n for n in r.headers.names() if n.startswith("access-control-")]
        self.assertEqual(cors, [], "no CORS headers added to accepted responses")

    def test_static_content_handler(self):
        r = self.get("/gif")
        self.assertEqual(r.status, 401, "empty_gif location is protected as well")
        r = self.get("/gif", bearer(self.good))
        self.assertEqual(r.status, 200, "empty_gif served with a valid key")
        self.assertEqual(r.header("Content-Type"), "image/gif", "the gif itself")
        self.assertRegex(r.header("X-Request-Id") or "", REQUEST_ID_RE,
                         "X-Request-Id on a static response")

    def test_internal_redirect(self):
        # /static/ -> index module -> internal redirect to /static/index.html:
        # the access phase runs again in the new location
        r = self.get("/static/")
        self.assertEqual(r.status, 401, "index redirect target is protected")
        r = self.get("/static/", bearer(self.good))
        self.assertEqual(r.status, 200,
                         "a valid key survives an internal redirect (hidden credentials "
                         "must not make the second pass see no key); got %r" % r)
        self.assertEqual(r.body, b"hello index\n", "the index file is served")
        self.assertEqual(len(r.header_all("X-Request-Id")), 1,
                         "one X-Request-Id after an internal redirect")

    def test_keepalive_requests_independent(self):
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", self.nginx.port, timeout=10)
        try:
            ids = []
            for headers, want in (({"Authorization": "Bearer " + self.good}, 200),
                                  ({}, 401),
                                  ({"Authorization": "Bearer " + self.revoked}, 401),
                                  ({"Authorization": "Bearer " + self.good}, 200)):
                c.request("GET", "/", headers=headers)
                resp = c.getresponse()
                resp.read()
                self.assertEqual(resp.status, want,
                                 "each request on a keep-alive connection is judged alone")
                ids.append(resp.getheader("X-Request-Id"))
            self.assertEqual(len(set(ids)), 4, "a new request id per keep-alive request")
        finally:
            c.close()

    def test_request_ids_unique(self):
        ids = []
        for i in range(30):
            headers = bearer(self.good) if i % 3 == 0 else (
                bearer(self.unknown) if i % 3 == 1 else [])
            r = self.get("/", headers)
            rid = r.header("X-Request-Id")
            self.assertRegex(rid or "", REQUEST_ID_RE, "X-Request-Id format")
            ids.append(rid)
        self.assertEqual(len(set(ids)), len(ids), "X-Request-Id unique across 30 requests")

    def test_single_request_id_header(self):
        r = self.get("/", bearer(self.good))
        self.assertEqual(len(r.header_all("X-Request-Id")), 1,
                         "exactly one X-Request-Id on an accepted response")
        r = self.get("/")
        self.assertEqual(len(r.header_all("X-Request-Id")), 1,
                         "exactly one X-Request-Id on an error")

    def test_client_request_id_not_echoed(self):
        r = self.get("/", [("X-Request-Id", "req_aaaaaaaaaaaaaaaa")])
        self.assertNotEqual(r.header("X-Request-Id"), "req_aaaaaaaaaaaaaaaa",
                            "the module makes its own request id")

    # -- HEAD, OPTIONS, CORS

    def test_head_same_as_get(self):
        cases = [
            ("/", [], 401, "missing"),
            ("/", bearer(self.unknown), 401, "invalid"),
            ("/", bearer(self.revoked), 401, "revoked"),
            ("/", bearer(self.expired), 401, "expired"),
            ("/paid/", bearer(self.free), 403, "plan"),
            ("/scoped/", bearer(self.good), 403, "scope"),
        ]
        for path, headers, status, what in cases:
            with self.subTest(what):
                g = self.get(path, headers)
                h = self.req("HEAD", path, headers)
                self.assertEqual(g.status, status, "GET %s status" % what)
                self.assertEqual(h.status, g.status, "HEAD %s: same status as GET" % what)
                for name in ("Content-Type", "Cache-Control", "WWW-Authenticate"):
                    self.assertEqual(h.header_all(name), g.header_all(name),
                                     "HEAD %s: same %s as GET" % (what, name))
                self.assertRegex(h.header("X-Request-Id") or "", REQUEST_ID_RE,
                                 "HEAD %s: X-Request-Id" % what)
                self.assertNotEqual(h.header("X-Request-Id"), g.header("X-Request-Id"),
                                    "HEAD %s: its own request id" % what)
                self.assertEqual(h.body, b"", "HEAD %s: no body" % what)

    def test_head_accepted(self):
        r = self.req("HEAD", "/", bearer(self.good))
        self.assertEqual(r.status, 200, "HEAD with a valid key is accepted")
        self.assertRegex(r.header("X-Request-Id") or "", REQUEST_ID_RE,
                         "accepted HEAD carries X-Request-Id")
        self.assertEqual(r.body, b"", "accepted HEAD has no body")

    def test_options_with_key_accepted(self):
        r = self.req("OPTIONS", "/", bearer(self.good) + [("Origin", "https://app.example.com")])
        self.assertEqual(r.status, 200, "OPTIONS is not special: a valid key is accepted")
        self.assertEqual(r.json()["method"], "OPTIONS", "OPTIONS reached the upstream")

    def test_options_preflight_gets_401(self):
        r = self.req("OPTIONS", "/", [
            ("Origin", "https://app.example.com"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "authorization, content-type"),
        ])
        self.check_envelope(r, 401, "missing_api_key", MESSAGES["missing_api_key"],
                            False, "CORS preflight without key")

    def test_no_cors_with_origin(self):
        for headers in ([], bearer(self.unknown), bearer(self.revoked)):
            r = self.get("/", headers + [("Origin", "https://app.example.com")])
            cors = [n for n in r.headers.names() if n.startswith("access-control-")]
            self.assertEqual(cors, [], "no Access-Control-* even with Origin (%d)" % r.status)

    def test_error_content_length_matches_body(self):
        r = self.get("/")
        self.assertEqual(int(r.header("Content-Length") or -1), len(r.body),
                         "Content-Length matches the envelope")

    def test_post_with_body_refused(self):
        r = self.req("POST", "/", [("Content-Type", "application/json")], body='{"a":1}')
        self.check_envelope(r, 401, "missing_api_key", MESSAGES["missing_api_key"],
                            False, "POST with a body and no key")
