"""SPEC "Optional keys": `api_key_optional on;` lets a request without a key
go on with empty $api_key_* variables and no budget spent, while a key that
is sent is checked as always (invalid, revoked, expired, missing scope are
refused). The anonymous request is the module's "no opinion": with
`satisfy any` another access method (here auth_request) must still allow
it; with `satisfy all` it must allow it too."""

from harness import PAST, KeyFile, RecordingCase, bearer, new_key, request

HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;
    api_key_limit_zone lim:1m;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        api_key keys;

        location /api/ {
            api_key_optional on;
            api_key_scope read;
            api_key_limit lim read 2r/m;
            proxy_set_header X-Key-Id $api_key_id;
            proxy_set_header X-Key-Error $api_key_error;
            proxy_set_header X-Key-Plan $api_key_plan;
            proxy_pass http://127.0.0.1:{app};
        }
        location /strict/ {
            proxy_pass http://127.0.0.1:{app};
        }
        location /any/ {
            api_key_optional on;
            satisfy any;
            auth_request /other-auth;
            proxy_pass http://127.0.0.1:{app};
        }
        location /all/ {
            api_key_optional on;
            satisfy all;
            auth_request /other-auth;
            proxy_pass http://127.0.0.1:{app};
        }
        location = /other-auth {
            internal;
            api_key off;
            proxy_pass http://127.0.0.1:{auth};
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }
        location = /status {
            api_key off;
            api_key_status;
        }
    }
"""


class OptionalKeyTest(RecordingCase):
    HTTP = HTTP
    PORTS = ("port",)
    RECORDERS = {"app": b"app\n"}

    KEY = new_key()
    NOSCOPE = new_key()
    REVOKED = new_key()
    EXPIRED = new_key()

    @classmethod
    def prepare(cls, nginx):
        kf = KeyFile()
        kf.add("key_ok", key=cls.KEY, scopes=["read"], plan="pro")
        kf.add("key_noscope", key=cls.NOSCOPE, scopes=["write"])
        kf.add("key_revoked", key=cls.REVOKED, scopes=["read"], revoked_at=PAST)
        kf.add("key_expired", key=cls.EXPIRED, scopes=["read"], expires_at=PAST)
        kf.write(nginx.path("keys.yaml"))

    @classmethod
    def setUpClass(cls):
        # The other method: allows requests that carry "X-Other: yes".
        cls.auth = _OtherAuth()
        cls.HTTP = HTTP.replace("{auth}", str(cls.auth.port))
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.auth.close()

    def get(self, path, headers=()):
        return request(self.nginx.port, "GET", path, headers=headers)

    def test_no_key_goes_on_with_empty_variables(self):
        resp = self.get("/api/a")
        self.assertEqual(resp.status, 200, resp)
        (seen,) = self.rec["app"].requests()
        self.assertEqual(seen["headers"].get("X-Key-Id"), None)
        self.assertEqual(seen["headers"].get("X-Key-Error"), None)
        self.assertEqual(seen["headers"].get("X-Key-Plan"), None)
        self.assertIsNone(resp.header("X-RateLimit-Limit"))
        self.assertIsNotNone(resp.header("X-Request-Id"))

    def test_no_key_spends_no_budget(self):
        for _ in range(5):
            self.assertEqual(self.get("/api/b").status, 200)
        # The key's own budget (2r/m) is untouched by the anonymous requests.
        for i in range(2):
            resp = self.get("/api/b", bearer(self.KEY))
            self.assertEqual(resp.status, 200, resp)
            self.assertEqual(resp.header("X-RateLimit-Remaining"), str(1 - i))

    def test_a_key_that_is_sent_is_still_checked(self):
        for key, status, code in ((new_key(), 401, "invalid_api_key"),
                                  (self.REVOKED, 401, "revoked_api_key"),
                                  (self.EXPIRED, 401, "expired_api_key"),
                                  (self.NOSCOPE, 403, "insufficient_scope")):
            self.rec["app"].clear()
            self.assertRefused(self.get("/api/c", bearer(key)), status, code, what=code,
                               untouched=("app",))
        # An empty bearer token is a key that was sent, and a malformed one.
        self.assertRefused(self.get("/api/c", [("Authorization", "Bearer ")]), 401,
                           "invalid_api_key", untouched=("app",))

    def test_another_scheme_is_not_a_key(self):
        resp = self.get("/api/d", [("Authorization", "Basic dXNlcjpwYXNz")])
        self.assertEqual(resp.status, 200, resp)

    def test_default_is_off(self):
        self.assertRefused(self.get("/strict/x"), 401, "missing_api_key", untouched=("app",))

    def test_satisfy_any_leaves_anonymous_requests_to_the_other_method(self):
        self.assertEqual(self.get("/any/x").status, 401)
        self.assertEqual(self.rec["app"].paths(), [])
        self.assertEqual(self.get("/any/x", [("X-Other", "yes")]).status, 200)
        # A valid key is enough under satisfy any ...
        self.assertEqual(self.get("/any/x", bearer(self.KEY)).status, 200)
        # ... and a bad one is refused even if the other method would allow.
        self.assertRefused(self.get("/any/x", bearer(new_key()) + [("X-Other", "yes")]),
                           401, "invalid_api_key")

    def test_satisfy_all_needs_the_other_method_too(self):
        self.assertEqual(self.get("/all/x").status, 401)
        self.assertEqual(self.get("/all/x", [("X-Other", "yes")]).status, 200)
        self.assertEqual(self.get("/all/x", bearer(self.KEY)).status, 401)
        self.assertEqual(self.get("/all/x", bearer(self.KEY) + [("X-Other", "yes")]).status,
                         200)

    def test_anonymous_requests_are_not_counted_as_key_use(self):
        before = self.get("/status").json()["zones"][0]["requests"]
        self.get("/api/e")
        after = self.get("/status").json()["zones"][0]["requests"]
        self.assertEqual(before, after)


class _OtherAuth:
    """An auth_request target: 204 with "X-Other: yes", else 401."""

    def __init__(self):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                ok = self.headers.get("X-Other") == "yes"
                self.send_response(204 if ok else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
