"""SPEC "Enforcement promises": after an internal redirect (index,
try_files, error_page, rewrite ... last, named locations) the target
location's rules apply: its scopes, its limits (each budget spent at most
once per request) and its credential hiding."""

from harness import (MESSAGES, KeyFile, RecordingCase, bearer, scope_message, xkey)

TARGET = "proxy_pass http://127.0.0.1:{target};"
ECHO = "proxy_pass http://127.0.0.1:{upstream};"

HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;
    api_key_limit_zone lz:1m;
    api_key_limit_zone lz2:1m;
    api_key_source bearer header=x-api-key;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        root {prefix}/html;

        # -- scopes: the first location needs data:read, the target admin
        location /idx/ {
            api_key keys; api_key_scope data:read;
            index index.html;
        }
        location = /idx/index.html {
            api_key keys; api_key_scope admin;
        }
        location /tf/ {
            api_key keys; api_key_scope data:read;
            try_files $uri @admin;
        }
        location /tfuri/ {
            api_key keys; api_key_scope data:read;
            try_files $uri /admin/x;
        }
        location /ep/ {
            api_key keys; api_key_scope data:read;
            error_page 404 = /admin/x;
        }
        location /ep-plain/ {
            api_key keys; api_key_scope data:read;
            error_page 404 /admin/x;
        }
        location /ep-named/ {
            api_key keys; api_key_scope data:read;
            error_page 404 = @admin;
        }
        location /rw/ {
            api_key keys; api_key_scope data:read;
            rewrite ^ /admin/x last;
        }
        location /admin/ {
            api_key keys; api_key_scope admin;
            TARGET
        }
        location @admin {
            api_key keys; api_key_scope admin;
            TARGET
        }

        # -- from an unprotected location into a protected one
        location /free-idx/ {
            index index.html;
        }
        location = /free-idx/index.html {
            api_key keys;
        }
        location /free-tf/ {
            try_files $uri @guarded;
        }
        location /free-ep/ {
            error_page 404 = /guarded/x;
        }
        location /free-rw/ {
            rewrite ^ /guarded/x last;
        }
        location /guarded/ {
            api_key keys;
            TARGET
        }
        location @guarded {
            api_key keys;
            TARGET
        }

        # -- limits: the target has its own, stricter limit in another zone
        location /la-tf/ {
            api_key keys; api_key_limit lz read 100r/m;
            try_files $uri @lb;
        }
        location /la-idx/ {
            api_key keys; api_key_limit lz read 100r/m;
            index index.html;
        }
        location = /la-idx/index.html {
            api_key keys; api_key_limit lz2 read 2r/m;
        }
        location /la-ep/ {
            api_key keys; api_key_limit lz read 100r/m;
            error_page 404 = /lb/x;
        }
        location /la-rw/ {
            api_key keys; api_key_limit lz read 100r/m;
            rewrite ^ /lb/x last;
        }
        location /lb/ {
            api_key keys; api_key_limit lz2 read 2r/m;
            TARGET
        }
        location @lb {
            api_key keys; api_key_limit lz2 read 2r/m;
            TARGET
        }

        # -- limits: the target has the same limit (same zone, category, rate)
        location /sa-tf/ {
            api_key keys; api_key_limit lz read 3r/m;
            try_files $uri @sb;
        }
        location /sa-idx/ {
            api_key keys; api_key_limit lz read 3r/m;
            index index.html;
        }
        location = /sa-idx/index.html {
            api_key keys; api_key_limit lz read 3r/m;
        }
        location /sa-ep/ {
            api_key keys; api_key_limit lz read 3r/m;
            error_page 404 = /sb/x;
        }
        location /sa-rw/ {
            api_key keys; api_key_limit lz read 3r/m;
            rewrite ^ /sb/x last;
        }
        location /sb/ {
            api_key keys; api_key_limit lz read 3r/m;
            TARGET
        }
        location @sb {
            api_key keys; api_key_limit lz read 3r/m;
            TARGET
        }

        # -- hiding: the first location reads x-api-key only, the target
        #    x-api-key and bearer (upstream: the echo server)
        location /hx-rw/ {
            api_key keys; api_key_source header=x-api-key;
            rewrite ^ /hy/x last;
        }
        location /hx-tf/ {
            api_key keys; api_key_source header=x-api-key;
            try_files $uri @hy;
        }
        location /hx-ep/ {
            api_key keys; api_key_source header=x-api-key;
            error_page 404 = /hy/x;
        }
        location /hx-idx/ {
            api_key keys; api_key_source header=x-api-key;
            index index.html;
        }
        location = /hx-idx/index.html {
            api_key keys; api_key_source header=x-api-key bearer;
            ECHO
        }
        location /hx-off/ {
            api_key keys; api_key_source header=x-api-key bearer;
            api_key_hide_credentials off;
            try_files $uri @hy;
        }
        location /hy/ {
            api_key keys; api_key_source header=x-api-key bearer;
            ECHO
        }
        location @hy {
            api_key keys; api_key_source header=x-api-key bearer;
            ECHO
        }
    }

    # index from location /, as most sites have it
    server {
        listen 127.0.0.1:{port2};
        server_name localhost;
        root {prefix}/html2;

        location / {
            api_key keys; api_key_scope data:read;
            index index.html;
        }
        location = /index.html {
            api_key keys; api_key_scope admin;
        }
    }
""".replace("TARGET", TARGET).replace("ECHO", ECHO)


class RedirectTest(RecordingCase):
    HTTP = HTTP
    PORTS = ("port", "port2")
    RECORDERS = {"target": "TARGET-CONTENT\n"}

    @classmethod
    def prepare(cls, nginx):
        kf = KeyFile()
        cls.read = kf.add("key_read", owner="u_read", scopes=["data:read"])
        cls.admin = kf.add("key_admin", owner="u_admin", scopes=["data:read", "admin"])
        cls.lim = {}
        for name in ("la_tf", "la_idx", "la_ep", "la_rw", "sa_tf", "sa_idx", "sa_ep", "sa_rw"):
            cls.lim[name] = kf.add("key_" + name, owner="u_" + name)
        cls.hide = kf.add("key_hide", owner="u_hide")
        kf.write(nginx.path("keys.yaml"))
        for d in ("idx", "free-idx", "la-idx", "sa-idx", "hx-idx"):
            nginx.write_file("html/%s/index.html" % d, "INDEX-CONTENT\n")
        nginx.write_file("html2/index.html", "INDEX-CONTENT\n")

    def scope_configs(self):
        p2 = self.nginx.vars["port2"]
        return [
            ("index from location / into = /index.html", p2, "/"),
            ("index into = /idx/index.html", self.nginx.port, "/idx/"),
            ("try_files $uri @admin", self.nginx.port, "/tf/missing"),
            ("try_files $uri /admin/x", self.nginx.port, "/tfuri/missing"),
            ("error_page 404 = /admin/x", self.nginx.port, "/ep/missing"),
            ("error_page 404 /admin/x", self.nginx.port, "/ep-plain/missing"),
            ("error_page 404 = @admin", self.nginx.port, "/ep-named/missing"),
            ("rewrite ^ /admin/x last", self.nginx.port, "/rw/x"),
        ]

    # -- scopes

    def test_target_scope_refuses(self):
        for how, port, path in self.scope_configs():
            with self.subTest(config=how):
                self.rec["target"].clear()
                r = self.nginx.request("GET", path, bearer(self.read), port=port)
                self.assertRefused(r, 403, "insufficient_scope", scope_message("admin"),
                                   "a key with data:read but not admin, %s into a location "
                                   "requiring admin" % how, untouched=("target",))

    def test_target_scope_accepts(self):
        for how, port, path in self.scope_configs():
            with self.subTest(config=how):
                r = self.nginx.request("GET", path, xkey(self.admin), port=port)
                # error_page without "=" keeps the original status (nginx's rule)
                want = 404 if how == "error_page 404 /admin/x" else 200
                self.assertEqual(r.status, want, "a key with data:read and admin follows %s "
                                 "to the target (status %d); got %r" % (how, want, r))
                self.assertIn(r.body, (b"TARGET-CONTENT\n", b"INDEX-CONTENT\n"),
                              "the target's content is served (%s)" % how)

    def test_from_unprotected_location(self):
        configs = [
            ("index into a protected = /free-idx/index.html", "/free-idx/"),
            ("try_files $uri @guarded", "/free-tf/missing"),
            ("error_page 404 = /guarded/x", "/free-ep/missing"),
            ("rewrite ^ /guarded/x last", "/free-rw/x"),
        ]
        for how, path in configs:
            with self.subTest(config=how):
                self.rec["target"].clear()
                r = self.get(path)
                self.assertRefused(r, 401, "missing_api_key", MESSAGES["missing_api_key"],
                                   "no key, %s from an unprotected location" % how,
                                   untouched=("target",))

    # -- limits

    def test_target_limit_applies(self):
        configs = [
            ("la_tf", "try_files $uri @lb", "/la-tf/missing"),
            ("la_idx", "index into = /la-idx/index.html", "/la-idx/"),
            ("la_ep", "error_page 404 = /lb/x", "/la-ep/missing"),
            ("la_rw", "rewrite ^ /lb/x last", "/la-rw/x"),
        ]
        msg = "Rate limit exceeded: 2 requests per minute for 'read' requests."
        for name, how, path in configs:
            with self.subTest(config=how):
                key = bearer(self.lim[name])
                for i in (1, 2):
                    r = self.get(path, key)
                    self.assertEqual(r.status, 200, "request %d of 2 allowed by the target's "
                                     "2r/m (%s); got %r" % (i, how, r))
                r = self.get(path, key)
                self.assertError(r, 429, "rate_limit_exceeded", msg,
                                 "3rd request in the minute, 100r/m location then %s into a "
                                 "location with 2r/m in another limit zone" % how)

    def test_same_limit_spent_once(self):
        configs = [
            ("sa_tf", "try_files $uri @sb", "/sa-tf/missing"),
            ("sa_idx", "index into = /sa-idx/index.html", "/sa-idx/"),
            ("sa_ep", "error_page 404 = /sb/x", "/sa-ep/missing"),
            ("sa_rw", "rewrite ^ /sb/x last", "/sa-rw/x"),
        ]
        for name, how, path in configs:
            with self.subTest(config=how):
                key = xkey(self.lim[name])
                got = []
                for _ in range(4):
                    r = self.get(path, key)
                    got.append((r.status, r.header("X-RateLimit-Remaining")))
                self.assertEqual(got, [(200, "2"), (200, "1"), (200, "0"), (429, "0")],
                                 "3r/m in both locations (%s): each request spends 1, so "
                                 "exactly 3 are accepted with Remaining 2, 1, 0" % how)

    # -- hiding

    def test_target_hides_its_sources(self):
        configs = [
            ("rewrite ^ /hy/x last", "/hx-rw/x"),
            ("try_files $uri @hy", "/hx-tf/missing"),
            ("error_page 404 = /hy/x", "/hx-ep/missing"),
            ("index into = /hx-idx/index.html", "/hx-idx/"),
            ("api_key_hide_credentials off, then try_files $uri @hy", "/hx-off/missing"),
        ]
        key = self.hide
        for how, path in configs:
            with self.subTest(config=how):
                r = self.get(path, xkey(key) + bearer(key))
                self.assertEqual(r.status, 200, "the key (sent as x-api-key and Bearer) is "
                                 "accepted (%s); got %r" % (how, r))
                h = r.echoed_headers()
                self.assertEqual(
                    [n for n, v in h if n.lower() in ("x-api-key", "authorization") or key in v],
                    [], "after %s, the target (sources x-api-key and bearer, hiding on) sends "
                    "neither x-api-key nor Authorization upstream" % how)
