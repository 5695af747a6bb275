"""SPEC api_key_source: bearer (scheme case-insensitive), header=NAME, several
sources, and "Multiple API keys were provided."."""

from harness import MESSAGES, NginxCase, KeyFile, bearer, new_key, xkey

HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;

        api_key keys;

        location / {
            # default source: bearer
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /header/ {
            api_key_source header=x-api-key;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /both/ {
            api_key_source bearer header=x-api-key;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /reversed/ {
            api_key_source header=x-api-key bearer;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /custom/ {
            api_key_source header=X-Custom-Token;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /two-headers/ {
            api_key_source header=x-api-key header=x-other-key;
            proxy_pass http://127.0.0.1:{upstream};
        }
    }
"""

MULTI = MESSAGES["multiple"]


class SourcesTest(NginxCase):
    HTTP = HTTP

    @classmethod
    def prepare(cls, nginx):
        kf = KeyFile()
        cls.k1 = kf.add("key_one", scopes=["a:read"])
        cls.k2 = kf.add("key_two", key=new_key("wfk_"), scopes=["a:read"])
        # every character of the key alphabet [A-Za-z0-9._~+/-], "=" as trailing padding
        cls.kpunct = kf.add("key_punct", key="jfi_sk_live_Az09._~+/-" + new_key("", 20) + "==")
        cls.k16 = kf.add("key_16", key=new_key("wfk_", 12))
        cls.k256 = kf.add("key_256", key=new_key("wfk_", 252))
        kf.write(nginx.path("keys.yaml"))
        cls.unknown = new_key()

    def assertMultiple(self, r, what):
        self.assertError(r, 401, "invalid_api_key", MULTI, what)
        self.assertEqual(r.header("WWW-Authenticate"), 'Bearer realm="api", error="invalid_token"',
                         "%s: keys were sent, so error=invalid_token" % what)

    # -- bearer

    def test_bearer_scheme_case_insensitive(self):
        for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
            with self.subTest(scheme=scheme):
                r = self.get("/", [("Authorization", "%s %s" % (scheme, self.k1))])
                self.assertEqual(r.status, 200, "scheme %r accepted" % scheme)

    def test_key_alphabet(self):
        r = self.get("/", bearer(self.kpunct))
        self.assertEqual(r.status, 200, "a key using . _ ~ + / - and trailing = is well-formed and accepted")
        r = self.get("/header/", xkey(self.kpunct))
        self.assertEqual(r.status, 200, "the same key through x-api-key")

    def test_key_length_bounds(self):
        self.assertEqual(len(self.k16), 16, "fixture")
        self.assertEqual(len(self.k256), 256, "fixture")
        r = self.get("/", bearer(self.k16))
        self.assertEqual(r.status, 200, "a 16-character key is accepted")
        r = self.get("/", bearer(self.k256))
        self.assertEqual(r.status, 200, "a 256-character key is accepted")

    def test_bearer_header_name_case_insensitive(self):
        r = self.get("/", [("authorization", "Bearer " + self.k1)])
        self.assertEqual(r.status, 200, "lower-case Authorization header name works")

    def test_other_schemes_are_not_keys(self):
        for value in ("Basic dXNlcjpwYXNzd29yZA==", "Token " + self.k1, "Bearer" + self.k1,
                      "Digest username=\"x\""):
            with self.subTest(value=value[:20]):
                r = self.get("/", [("Authorization", value)])
                self.assertError(r, 401, "missing_api_key", MESSAGES["missing_api_key"],
                                 "Authorization: %s... is not a bearer key" % value[:12])
                self.assertEqual(r.header("WWW-Authenticate"), 'Bearer realm="api"',
                                 "no key sent, so no error= in WWW-Authenticate")

    def test_empty_bearer_is_malformed(self):
        r = self.get("/", [("Authorization", "Bearer")])
        self.assertError(r, 401, "invalid_api_key", MESSAGES["invalid_api_key"],
                         "Authorization: Bearer without token")

    def test_second_authorization_header_rejected_by_nginx(self):
        r = self.get("/", bearer(self.k1) + bearer(self.k1))
        self.assertEqual(r.status, 400, "nginx answers 400 to a second Authorization header")

    def test_bearer_ignored_in_header_location(self):
        r = self.get("/header/", bearer(self.k1))
        self.assertError(r, 401, "missing_api_key", MESSAGES["missing_api_key"],
                         "only x-api-key is read under api_key_source header=x-api-key")

    # -- header=NAME

    def test_x_api_key(self):
        r = self.get("/header/", xkey(self.k2))
        self.assertEqual(r.status, 200, "x-api-key carries the key")
        r = self.get("/header/", [("X-API-KEY", self.k2)])
        self.assertEqual(r.status, 200, "header name matched case-insensitively")

    def test_x_api_key_value_is_the_whole_key(self):
        r = self.get("/header/", xkey("Bearer " + self.k2))
        self.assertError(r, 401, "invalid_api_key", MESSAGES["invalid_api_key"],
                         "a plain header is not parsed as a Bearer credential")

    def test_x_api_key_unknown(self):
        r = self.get("/header/", xkey(self.unknown))
        self.assertError(r, 401, "invalid_api_key", MESSAGES["invalid_api_key"],
                         "unknown key in x-api-key")

    def test_x_api_key_malformed(self):
        r = self.get("/header/", xkey("short"))
        self.assertError(r, 401, "invalid_api_key", MESSAGES["invalid_api_key"],
                         "too short a key in x-api-key")

    def test_empty_x_api_key_is_no_key(self):
        r = self.get("/header/", [("x-api-key", "")])
        self.assertError(r, 401, "missing_api_key", MESSAGES["missing_api_key"],
                         "an empty x-api-key counts as no key")
        self.assertEqual(r.header("WWW-Authenticate"), 'Bearer realm="api"',
                         "empty x-api-key: no error= in WWW-Authenticate")

    def test_empty_and_valid_x_api_key(self):
        r = self.get("/header/", [("x-api-key", "")] + xkey(self.k2))
        self.assertEqual(r.status, 200, "an empty x-api-key next to a valid one is no key")

    def test_bearer_token_with_blank_inside(self):
        r = self.get("/", [("Authorization", "Bearer %s extra" % self.k1)])
        self.assertError(r, 401, "invalid_api_key", MESSAGES["invalid_api_key"],
                         "a Bearer token with a blank inside is malformed")

    def test_custom_header_name(self):
        r = self.get("/custom/", [("x-custom-token", self.k1)])
        self.assertEqual(r.status, 200, "header=X-Custom-Token reads that header")
        r = self.get("/custom/", xkey(self.k1))
        self.assertEqual(r.status, 401, "header=X-Custom-Token does not read x-api-key")

    def test_same_x_api_key_twice(self):
        r = self.get("/header/", xkey(self.k2) + xkey(self.k2))
        self.assertEqual(r.status, 200, "the same key in two x-api-key headers is fine")

    def test_two_different_x_api_keys(self):
        r = self.get("/header/", xkey(self.k1) + xkey(self.k2))
        self.assertMultiple(r, "two x-api-key headers with different valid keys")
        r = self.get("/header/", xkey(self.k1) + xkey(self.unknown))
        self.assertMultiple(r, "two x-api-key headers, valid then unknown")
        r = self.get("/header/", xkey(self.unknown) + xkey(self.k1))
        self.assertMultiple(r, "two x-api-key headers, unknown then valid")

    # -- several sources

    def test_each_source_alone(self):
        for loc in ("/both/", "/reversed/"):
            with self.subTest(loc=loc):
                r = self.get(loc, bearer(self.k1))
                self.assertEqual(r.status, 200, "%s: bearer alone works" % loc)
                r = self.get(loc, xkey(self.k2))
                self.assertEqual(r.status, 200, "%s: x-api-key alone works" % loc)
                r = self.get(loc)
                self.assertError(r, 401, "missing_api_key", MESSAGES["missing_api_key"],
                                 "%s: neither source" % loc)

    def test_same_key_in_both_sources(self):
        for loc in ("/both/", "/reversed/"):
            r = self.get(loc, bearer(self.k1) + xkey(self.k1))
            self.assertEqual(r.status, 200, "%s: the same key in Bearer and x-api-key" % loc)

    def test_different_keys_in_two_sources(self):
        for loc in ("/both/", "/reversed/"):
            with self.subTest(loc=loc):
                r = self.get(loc, bearer(self.k1) + xkey(self.k2))
                self.assertMultiple(r, "%s: Bearer and x-api-key disagree" % loc)
                r = self.get(loc, bearer(self.unknown) + xkey(self.k2))
                self.assertMultiple(r, "%s: unknown Bearer, valid x-api-key" % loc)
                r = self.get(loc, bearer(self.k1) + xkey(self.unknown))
                self.assertMultiple(r, "%s: valid Bearer, unknown x-api-key" % loc)

    def test_empty_sources_do_not_conflict(self):
        r = self.get("/both/", bearer(self.k1) + [("x-api-key", "")])
        self.assertEqual(r.status, 200, "an empty x-api-key next to a Bearer key is no key")
        r = self.get("/both/", [("Authorization", "Basic dXNlcjpwYXNz")] + xkey(self.k2))
        self.assertEqual(r.status, 200, "Basic credentials next to x-api-key are no key")

    def test_empty_bearer_with_other_source(self):
        r = self.get("/both/", [("Authorization", "Bearer")] + xkey(self.k2))
        self.assertEqual(r.status, 401,
                         "an empty Bearer token is a (malformed) key, not absent: refused")
        self.assertEqual((r.json().get("error") or {}).get("code"), "invalid_api_key",
                         "empty Bearer + x-api-key is invalid_api_key")

    def test_two_header_sources(self):
        r = self.get("/two-headers/", [("x-other-key", self.k1)])
        self.assertEqual(r.status, 200, "the second header source is read")
        r = self.get("/two-headers/", xkey(self.k1) + [("x-other-key", self.k1)])
        self.assertEqual(r.status, 200, "same key in both header sources")
        r = self.get("/two-headers/", xkey(self.k1) + [("x-other-key", self.k2)])
        self.assertMultiple(r, "different keys in two header sources")
