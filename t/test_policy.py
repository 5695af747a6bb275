"""SPEC api_key_scope (incl. per-method), api_key_plans, api_key_environment,
the order of checks, and inheritance across http / server / location."""

from harness import MESSAGES, PAST, NginxCase, KeyFile, bearer, new_key, scope_message

PROXY = "proxy_pass http://127.0.0.1:{upstream};"

POLICY_HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        api_key keys;

        location / { P }
        location /one/ { api_key_scope a:read; P }
        location /all/ { api_key_scope a:read b:read; P }
        location /repeat/ { api_key_scope a:read; api_key_scope c:read; P }
        location /methods/ {
            api_key_scope GET HEAD a:read;
            api_key_scope POST a:write;
            P
        }
        location /mixed/ {
            api_key_scope a:read;
            api_key_scope DELETE a:delete;
            P
        }
        location /nobody/ { api_key_scope nobody:has; P }
        location /plans/ { api_key_plans pro team; P }
        location /live/ { api_key_environment live; P }
        location /test/ { api_key_environment test; P }
        location /any/ { api_key_environment any; P }
        location /combo/ {
            api_key_environment live;
            api_key_plans pro;
            api_key_scope z:write;
            P
        }
    }
""".replace("P\n", PROXY + "\n").replace(" P }", " " + PROXY + " }")


class PolicyTest(NginxCase):
    HTTP = POLICY_HTTP

    @classmethod
    def prepare(cls, nginx):
        kf = KeyFile()
        add = kf.add
        cls.ka = add("key_a", plan="pro", scopes=["a:read"])
        cls.kabc = add("key_abc", plan="team", scopes=["a:read", "b:read", "c:read"])
        cls.kb = add("key_b", plan="pro", scopes=["b:read"])
        cls.kw = add("key_w", plan="pro", scopes=["a:write"])
        cls.kad = add("key_ad", plan="pro", scopes=["a:read", "a:delete"])
        cls.knone = add("key_noscopes", plan="pro")
        cls.kempty = add("key_emptyscopes", plan="pro", scopes=[])
        cls.kfree = add("key_free", plan="free", scopes=["z:write"])
        cls.kfree_none = add("key_free_none", plan="free")
        cls.knoplan = add("key_noplan", scopes=["z:write"])
        cls.kpro_z = add("key_pro_z", plan="pro", scopes=["z:write"])
        cls.ktest = add("key_test", prefix="jfi_sk_test_", plan="pro", scopes=["a:read", "z:write"])
        cls.kwfk = add("key_wfk", key=new_key("wfk_"), plan="pro", scopes=["z:write"])
        # for the order of checks
        cls.krev_test_free = add("key_rev_test_free", prefix="jfi_sk_test_", plan="free",
                                 revoked_at=PAST)
        cls.kexp_test_free = add("key_exp_test_free", prefix="jfi_sk_test_", plan="free",
                                 expires_at=PAST)
        cls.krev_exp = add("key_rev_exp", plan="pro", revoked_at=PAST, expires_at=PAST)
        cls.ktest_free = add("key_test_free", prefix="jfi_sk_test_", plan="free")
        kf.write(nginx.path("keys.yaml"))

    def ok(self, path, key, what, method="GET"):
        r = self.req(method, path, bearer(key))
        self.assertEqual(r.status, 200, "%s: accepted; got %r" % (what, r))
        return r

    def scope_denied(self, path, key, scope, what, method="GET"):
        r = self.req(method, path, bearer(key))
        self.assertEqual(r.status, 403, "%s: 403; got %r" % (what, r))
        if method != "HEAD":
            self.assertError(r, 403, "insufficient_scope", scope_message(scope), what)

    # -- scopes

    def test_no_policy_accepts_any_valid_key(self):
        for key in (self.ka, self.knone, self.kfree, self.knoplan, self.ktest, self.kwfk):
            self.ok("/", key, "no scope/plan/environment directives")

    def test_single_scope(self):
        self.ok("/one/", self.ka, "key holds a:read")
        self.ok("/one/", self.kabc, "key holds a:read among others")
        self.scope_denied("/one/", self.kb, "a:read", "key holds only b:read")
        self.scope_denied("/one/", self.knone, "a:read", "key without scopes field")
        self.scope_denied("/one/", self.kempty, "a:read", "key with scopes: []")

    def test_all_listed_scopes_required(self):
        self.ok("/all/", self.kabc, "key holds a:read and b:read")
        self.scope_denied("/all/", self.ka, "b:read", "key lacks the second scope")
        self.scope_denied("/all/", self.kb, "a:read", "key lacks the first scope")
        self.scope_denied("/all/", self.kw, "a:read", "key lacks both: first is named")

    def test_repeated_directive_adds_scopes(self):
        self.ok("/repeat/", self.kabc, "key holds a:read and c:read")
        self.scope_denied("/repeat/", self.ka, "c:read",
                          "scope of the second api_key_scope line is required too")

    def test_scope_no_key_has(self):
        self.scope_denied("/nobody/", self.kabc, "nobody:has",
                          "a scope that no key in the file holds")

    def test_method_specific_scopes(self):
        self.ok("/methods/", self.ka, "GET needs a:read", "GET")
        self.ok("/methods/", self.ka, "HEAD needs a:read", "HEAD")
        self.scope_denied("/methods/", self.ka, "a:write", "POST needs a:write", "POST")
        self.ok("/methods/", self.kw, "POST with a:write", "POST")
        self.scope_denied("/methods/", self.kw, "a:read", "GET without a:read", "GET")
        self.scope_denied("/methods/", self.kw, "a:read", "HEAD without a:read", "HEAD")
        for m in ("PUT", "PATCH", "DELETE", "OPTIONS"):
            self.ok("/methods/", self.knone, "%s: no scope listed for it" % m, m)

    def test_method_specific_adds_to_unqualified(self):
        self.ok("/mixed/", self.ka, "GET needs only the unqualified a:read")
        self.scope_denied("/mixed/", self.ka, "a:delete", "DELETE needs a:delete too", "DELETE")
        self.ok("/mixed/", self.kad, "DELETE with a:read and a:delete", "DELETE")
        self.scope_denied("/mixed/", self.knone, "a:read", "unqualified scope applies to POST",
                          "POST")

    # -- plans

    def test_plans(self):
        self.ok("/plans/", self.ka, "plan pro is listed")
        self.ok("/plans/", self.kabc, "plan team is listed")
        r = self.get("/plans/", bearer(self.kfree))
        self.assertError(r, 403, "plan_required", MESSAGES["plan_required"],
                         "plan free is not listed")
        r = self.get("/plans/", bearer(self.knoplan))
        self.assertError(r, 403, "plan_required", MESSAGES["plan_required"],
                         "a key without a plan is on no listed plan")

    # -- environment

    def test_environment_live(self):
        self.ok("/live/", self.ka, "live key, environment live")
        self.ok("/live/", self.kwfk, "wfk_ key is live")
        r = self.get("/live/", bearer(self.ktest))
        self.assertError(r, 401, "invalid_api_key", MESSAGES["invalid_api_key"],
                         "test key where environment live")
        self.assertEqual(r.header("WWW-Authenticate"), 'Bearer realm="api", error="invalid_token"',
                         "wrong environment is a 401 with error=invalid_token")

    def test_environment_test(self):
        self.ok("/test/", self.ktest, "test key, environment test")
        r = self.get("/test/", bearer(self.ka))
        self.assertError(r, 401, "invalid_api_key", MESSAGES["invalid_api_key"],
                         "live key where environment test")

    def test_environment_any_and_default(self):
        for path in ("/any/", "/"):
            self.ok(path, self.ka, "%s: live key accepted" % path)
            self.ok(path, self.ktest, "%s: test key accepted" % path)

    # -- order: lookup, revoked, expired, environment, plan, scopes

    def test_order_revoked_before_environment_and_plan(self):
        r = self.get("/combo/", bearer(self.krev_test_free))
        self.assertError(r, 401, "revoked_api_key", MESSAGES["revoked_api_key"],
                         "revoked test key on the free plan: revoked comes first")

    def test_order_revoked_before_expired(self):
        r = self.get("/", bearer(self.krev_exp))
        self.assertError(r, 401, "revoked_api_key", MESSAGES["revoked_api_key"],
                         "revoked and expired: revoked comes first")

    def test_order_expired_before_environment(self):
        r = self.get("/combo/", bearer(self.kexp_test_free))
        self.assertError(r, 401, "expired_api_key", MESSAGES["expired_api_key"],
                         "expired test key on the free plan: expired before environment")

    def test_order_environment_before_plan(self):
        r = self.get("/combo/", bearer(self.ktest_free))
        self.assertError(r, 401, "invalid_api_key", MESSAGES["invalid_api_key"],
                         "test key on the free plan at a live location: environment first")

    def test_order_plan_before_scope(self):
        r = self.get("/combo/", bearer(self.kfree_none))
        self.assertError(r, 403, "plan_required", MESSAGES["plan_required"],
                         "free plan and no scope: plan comes first")

    def test_combo_scope_and_accept(self):
        self.scope_denied("/combo/", self.ka, "z:write", "pro live key lacking z:write")
        self.ok("/combo/", self.kpro_z, "pro live key holding z:write")


INHERIT_HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;

    api_key keys;
    api_key_scope h:read;
    api_key_environment live;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;

        location / { P }
        location /loc/ { api_key_scope l:read; P }
        location /post-only/ { api_key_scope POST w:write; P }
        location /open/ { api_key off; P }
        location /nested/ {
            P
            location /nested/open/ { api_key off; P }
            location /nested/deeper/ { P }
        }
        location /nested-scope/ {
            api_key_scope n:read;
            P
            location /nested-scope/inner/ { P }
            location /nested-scope/replaced/ { api_key_scope l:read; P }
        }
    }

    server {
        listen 127.0.0.1:{port2};
        server_name localhost;
        api_key_scope s:read;
        api_key_environment any;
        api_key_plans pro;

        location / { P }
        location /loc/ { api_key_scope l:read; P }
        location /free/ { api_key_plans free; P }
    }

    server {
        listen 127.0.0.1:{port3};
        server_name localhost;
        api_key off;

        location / { P }
        location /on/ { api_key keys; P }
    }
""".replace("P\n", PROXY + "\n").replace(" P }", " " + PROXY + " }")


class InheritanceTest(NginxCase):
    HTTP = INHERIT_HTTP
    PORTS = ("port", "port2", "port3")

    @classmethod
    def prepare(cls, nginx):
        kf = KeyFile()
        add = kf.add
        cls.kh = add("key_h", plan="pro", scopes=["h:read"])
        cls.kl = add("key_l", plan="pro", scopes=["l:read"])
        cls.ks = add("key_s", plan="pro", scopes=["s:read"])
        cls.ks_free = add("key_s_free", plan="free", scopes=["s:read"])
        cls.kn = add("key_n", plan="pro", scopes=["n:read"])
        cls.kall = add("key_all", plan="pro", scopes=["h:read", "l:read", "s:read", "n:read",
                                                      "w:write"])
        cls.ktest = add("key_test", prefix="jfi_sk_test_", plan="pro",
                        scopes=["h:read", "s:read"])
        kf.write(nginx.path("keys.yaml"))

    def status(self, path, key=None, port=None, method="GET"):
        headers = bearer(key) if key else []
        return self.nginx.request(method, path, headers, port=port).status

    def scope_named(self, path, key, scope, what, port=None, method="GET"):
        r = self.nginx.request(method, path, bearer(key), port=port)
        self.assertError(r, 403, "insufficient_scope", scope_message(scope), what)

    def test_http_level_scope_inherited(self):
        self.assertEqual(self.status("/", self.kh), 200, "http-level h:read satisfied")
        self.scope_named("/", self.kl, "h:read", "http-level api_key_scope reaches the location")
        self.assertEqual(self.status("/"), 401, "http-level api_key keys is inherited")

    def test_location_scope_replaces_http(self):
        self.assertEqual(self.status("/loc/", self.kl), 200,
                         "location api_key_scope l:read replaces http h:read")
        self.scope_named("/loc/", self.kh, "l:read", "location needs its own scope")

    def test_method_scope_replaces_all_outer(self):
        self.assertEqual(self.status("/post-only/", self.kl), 200,
                         "a location with only 'api_key_scope POST ...' drops the outer "
                         "h:read, so GET needs no scope")
        self.scope_named("/post-only/", self.kh, "w:write", "POST needs w:write", method="POST")
        self.assertEqual(self.status("/post-only/", self.kall, method="POST"), 200,
                         "POST with w:write accepted")

    def test_api_key_off(self):
        self.assertEqual(self.status("/open/"), 200, "api_key off in a location")
        self.assertEqual(self.status("/nested/"), 401, "outer nested location enforces")
        self.assertEqual(self.status("/nested/open/"), 200, "api_key off in a nested location")

    def test_nested_location_inherits(self):
        self.assertEqual(self.status("/nested/deeper/", self.kh), 200,
                         "nested location inherits api_key and h:read")
        self.scope_named("/nested/deeper/", self.kl, "h:read",
                         "nested location inherits the http-level scope")
        self.assertEqual(self.status("/nested-scope/inner/", self.kn), 200,
                         "nested location inherits its parent's n:read")
        self.scope_named("/nested-scope/inner/", self.kh, "n:read",
                         "parent's scope replaced http's for its nested location too")
        self.assertEqual(self.status("/nested-scope/replaced/", self.kl), 200,
                         "nested location's own scope replaces its parent's")
        self.scope_named("/nested-scope/replaced/", self.kn, "l:read",
                         "nested location's scope is required")

    def test_server_level_scope_replaces_http(self):
        p2 = self.nginx.vars["port2"]
        self.assertEqual(self.status("/", self.ks, port=p2), 200,
                         "server-level s:read replaces http-level h:read")
        self.scope_named("/", self.kh, "s:read", "server-level scope required", port=p2)
        self.assertEqual(self.status("/loc/", self.kl, port=p2), 200,
                         "location scope replaces the server-level one")
        self.scope_named("/loc/", self.ks, "l:read", "location scope required", port=p2)

    def test_environment_inheritance(self):
        p2 = self.nginx.vars["port2"]
        r = self.get("/", bearer(self.ktest))
        self.assertError(r, 401, "invalid_api_key", MESSAGES["invalid_api_key"],
                         "http-level api_key_environment live refuses a test key")
        self.assertEqual(self.status("/", self.ktest, port=p2), 200,
                         "server-level api_key_environment any overrides http live")

    def test_plans_inheritance(self):
        p2 = self.nginx.vars["port2"]
        r = self.nginx.request("GET", "/", bearer(self.ks_free), port=p2)
        self.assertError(r, 403, "plan_required", MESSAGES["plan_required"],
                         "server-level api_key_plans pro")
        self.assertEqual(self.status("/free/", self.ks_free, port=p2), 200,
                         "location api_key_plans free replaces the server's list")
        r = self.nginx.request("GET", "/free/", bearer(self.ks), port=p2)
        self.assertError(r, 403, "plan_required", MESSAGES["plan_required"],
                         "pro not in the location's list")

    def test_server_off_location_on(self):
        p3 = self.nginx.vars["port3"]
        self.assertEqual(self.status("/", port=p3), 200, "api_key off at server level")
        self.assertEqual(self.status("/on/", port=p3), 401, "api_key keys in a location")
        self.assertEqual(self.status("/on/", self.kh, port=p3), 200,
                         "location under an 'off' server still inherits http h:read")
        self.scope_named("/on/", self.kl, "h:read", "http-level scope applies", port=p3)
