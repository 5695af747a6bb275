"""SPEC api_key_hide_credentials, the $api_key_* variables (proxy_set_header
and log_format) and api_key_dry_run."""

import re
import time

from harness import (PAST, REQUEST_ID_RE, NginxCase, KeyFile, bearer, new_key, wait_until,
                     xkey)

VARS = ("id=[$api_key_id] owner=[$api_key_owner] org=[$api_key_organization_id] "
        "plan=[$api_key_plan] env=[$api_key_environment] scopes=[$api_key_scopes] "
        "err=[$api_key_error] rid=[$api_key_request_id]")

HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;

    log_format keys 'status=$status VARS uri=$request_uri';

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        api_key keys;
        access_log {prefix}/keys.log keys;

        location / {
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
        location /keep/ {
            api_key_hide_credentials off;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /keep-header/ {
            api_key_source header=x-api-key;
            api_key_hide_credentials off;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /vars/ {
            proxy_set_header X-Key-Vars "VARS";
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /scoped/ {
            api_key_scope x:none;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /dry/ {
            api_key_dry_run on;
            api_key_plans pro;
            api_key_scope d:write;
            api_key_environment live;
            proxy_set_header X-Key-Vars "VARS";
            proxy_pass http://127.0.0.1:{upstream};
        }
    }
""".replace("VARS", VARS)

VARS_RE = re.compile(r"(\w+)=\[([^\]]*)\]")


def parse_vars(text):
    """{'id': ..., 'owner': ..., ...} from the bracketed VARS text; a logged
    '-' (nginx's mark for a variable that is not found) counts as empty."""
    out = {}
    for k, v in VARS_RE.findall(text):
        out[k] = "" if v == "-" else v
    return out


class UpstreamTest(NginxCase):
    HTTP = HTTP

    @classmethod
    def prepare(cls, nginx):
        kf = KeyFile()
        cls.korg = kf.add("key_org", owner="user_42", organization_id="org_7", plan="pro",
                          scopes=["diagrams:read", "folders:read", "d:write"])
        cls.kpersonal = kf.add("key_personal", owner="user_43", plan="team",
                               scopes=["diagrams:read"])
        cls.ktest = kf.add("key_test", prefix="jfi_sk_test_", owner="user_44", plan="pro",
                           scopes=["d:write"])
        cls.knothing = kf.add("key_nothing", owner="user_45")
        cls.kfree = kf.add("key_free", owner="user_46", plan="free", scopes=["d:write"])
        cls.kpro = kf.add("key_pro", owner="user_47", plan="pro", scopes=["diagrams:read"])
        cls.krevoked = kf.add("key_revoked", owner="user_48", plan="pro", scopes=["d:write"],
                              revoked_at=PAST)
        cls.kwfk = kf.add("key_wfk", key=new_key("wfk_"), owner="user_49", plan="pro")
        cls.knullorg = kf.add("key_nullorg", owner="user_50", organization_id=None, plan="pro")
        kf.write(nginx.path("keys.yaml"))

    def upstream_headers(self, path, headers):
        r = self.get(path, headers)
        self.assertEqual(r.status, 200, "request to %s accepted; got %r" % (path, r))
        return r, r.echoed_headers()

    def upstream_vars(self, path, headers):
        r, h = self.upstream_headers(path, headers)
        self.assertIn("X-Key-Vars", h, "proxy_set_header with $api_key_* reached upstream")
        return r, parse_vars(h["X-Key-Vars"])

    def log_line(self, rid, timeout=5.0):
        """The keys.log line of the request with this request id."""
        def find():
            for line in self.nginx.access_log("keys.log").splitlines():
                if "rid=[%s]" % rid in line:
                    return line
            return None
        return wait_until(find, timeout, what="access log line for %s" % rid)

    # -- api_key_hide_credentials

    def test_hide_bearer_by_default(self):
        _, h = self.upstream_headers("/", bearer(self.korg) + [("X-Other", "kept")])
        self.assertNotIn("Authorization", h, "Authorization: Bearer is removed before upstream")
        self.assertEqual(h.get("X-Other"), "kept", "other headers still reach upstream")

    def test_hide_x_api_key_only(self):
        _, h = self.upstream_headers(
            "/header/", xkey(self.kwfk) + [("Authorization", "Basic dXNlcjpwYXNz")])
        self.assertNotIn("x-api-key", h, "x-api-key is removed before upstream")
        self.assertEqual(h.get("Authorization"), "Basic dXNlcjpwYXNz",
                         "a header that did not carry the key is left alone")

    def test_hide_x_api_key_repeated(self):
        _, h = self.upstream_headers("/header/", xkey(self.kwfk) + xkey(self.kwfk))
        self.assertEqual(h.get_all("x-api-key"), [],
                         "both copies of a repeated x-api-key are removed")

    def test_hide_key_sent_in_two_sources(self):
        key = self.korg
        _, h = self.upstream_headers("/both/", bearer(key) + xkey(key))
        leaked = [(n, v) for n, v in h if key in v]
        self.assertEqual(leaked, [], "the key reaches upstream in no header")

    def test_hide_keeps_every_other_header_in_order(self):
        # Hiding takes the carriers out of nginx's header list without moving
        # the other headers: wherever the carriers are (first, last, at the
        # list's 20-element part boundaries, several at once, every header),
        # upstream gets every other header, in the client's order.
        key = self.korg
        for total, carriers in ((3, [0]), (3, [2]), (3, [1]), (8, [0, 3, 7]), (25, [19]),
                                (25, [20]), (25, [18, 19, 20, 21]), (45, [0, 19, 20, 39, 44]),
                                (45, list(range(0, 45, 2))), (4, [0, 1, 2, 3])):
            headers, want = [], []
            for i in range(total):
                if i in carriers:
                    # Authorization at most once (nginx refuses a second one).
                    headers += bearer(key) if i == carriers[-1] else xkey(key)
                else:
                    headers.append(("X-F-%d" % i, "v%d" % i))
                    want.append(("x-f-%d" % i, "v%d" % i))
            _, h = self.upstream_headers("/both/", headers)
            got = [(n.lower(), v) for n, v in h.pairs if n.lower().startswith("x-f-")]
            layout = "%d headers, carriers at %s" % (total, carriers)
            self.assertEqual(got, want, "every other header, in order (%s)" % layout)
            leaked = [(n, v) for n, v in h.pairs if key in v]
            self.assertEqual(leaked, [], "the key reaches upstream in no header (%s)" % layout)

    def test_hide_off_keeps_authorization(self):
        _, h = self.upstream_headers("/keep/", bearer(self.korg))
        self.assertEqual(h.get("Authorization"), "Bearer " + self.korg,
                         "api_key_hide_credentials off forwards Authorization unchanged")

    def test_hide_off_keeps_x_api_key(self):
        _, h = self.upstream_headers("/keep-header/", xkey(self.kwfk))
        self.assertEqual(h.get("x-api-key"), self.kwfk,
                         "api_key_hide_credentials off forwards x-api-key unchanged")

    # -- variables through proxy_set_header

    def test_variables_org_key(self):
        r, v = self.upstream_vars("/vars/", bearer(self.korg))
        self.assertEqual(v["id"], "key_org", "$api_key_id")
        self.assertEqual(v["owner"], "user_42", "$api_key_owner")
        self.assertEqual(v["org"], "org_7", "$api_key_organization_id")
        self.assertEqual(v["plan"], "pro", "$api_key_plan")
        self.assertEqual(v["env"], "live", "$api_key_environment of a jfi_sk_live_ key")
        self.assertEqual(v["err"], "", "$api_key_error empty when accepted")
        self.assertEqual(v["rid"], r.header("X-Request-Id"),
                         "$api_key_request_id equals the response's X-Request-Id")
        self.assertRegex(v["rid"], REQUEST_ID_RE, "$api_key_request_id format")

    def test_variable_scopes(self):
        _, v = self.upstream_vars("/vars/", bearer(self.korg))
        parts = v["scopes"].split(" ")
        self.assertEqual(sorted(parts), ["d:write", "diagrams:read", "folders:read"],
                         "$api_key_scopes: the key's scopes, separated by single spaces")
        _, v = self.upstream_vars("/vars/", bearer(self.knothing))
        self.assertEqual(v["scopes"], "", "$api_key_scopes empty for a key without scopes")

    def test_variables_personal_key(self):
        _, v = self.upstream_vars("/vars/", bearer(self.kpersonal))
        self.assertEqual(v["id"], "key_personal", "$api_key_id")
        self.assertEqual(v["owner"], "user_43", "$api_key_owner")
        self.assertEqual(v["org"], "", "$api_key_organization_id empty for a personal key")
        self.assertEqual(v["plan"], "team", "$api_key_plan")
        self.assertEqual(v["scopes"], "diagrams:read", "$api_key_scopes, one scope")

    def test_variables_null_organization(self):
        _, v = self.upstream_vars("/vars/", bearer(self.knullorg))
        self.assertEqual(v["org"], "", "organization_id: null is a personal key: empty")
        self.assertEqual(v["owner"], "user_50", "$api_key_owner of that key")

    def test_variable_environment_test(self):
        _, v = self.upstream_vars("/vars/", bearer(self.ktest))
        self.assertEqual(v["env"], "test", "$api_key_environment of a jfi_sk_test_ key")

    def test_variable_plan_absent(self):
        _, v = self.upstream_vars("/vars/", bearer(self.knothing))
        self.assertEqual(v["plan"], "", "$api_key_plan empty for a key without a plan")

    def test_request_ids_differ_per_request(self):
        _, a = self.upstream_vars("/vars/", bearer(self.korg))
        _, b = self.upstream_vars("/vars/", bearer(self.korg))
        self.assertNotEqual(a["rid"], b["rid"], "$api_key_request_id is per request")

    # -- variables in log_format

    def test_log_accepted(self):
        r = self.get("/", bearer(self.korg))
        self.assertEqual(r.status, 200, "accepted")
        line = self.log_line(r.header("X-Request-Id"))
        v = parse_vars(line)
        self.assertIn("status=200", line, "logged status")
        self.assertEqual(v["id"], "key_org", "$api_key_id in the access log")
        self.assertEqual(v["owner"], "user_42", "$api_key_owner in the access log")
        self.assertEqual(v["org"], "org_7", "$api_key_organization_id in the access log")
        self.assertEqual(v["plan"], "pro", "$api_key_plan in the access log")
        self.assertEqual(v["env"], "live", "$api_key_environment in the access log")
        self.assertEqual(sorted(v["scopes"].split(" ")),
                         ["d:write", "diagrams:read", "folders:read"],
                         "$api_key_scopes in the access log")
        self.assertEqual(v["err"], "", "$api_key_error empty in the log when accepted")

    def test_log_personal_key(self):
        r = self.get("/", bearer(self.kpersonal))
        v = parse_vars(self.log_line(r.header("X-Request-Id")))
        self.assertEqual(v["org"], "", "personal key: empty organization in the log")

    def test_log_refusals(self):
        cases = [
            ("/", [], 401, "missing_api_key"),
            ("/", bearer(new_key()), 401, "invalid_api_key"),
            ("/", bearer(self.krevoked), 401, "revoked_api_key"),
            ("/scoped/", bearer(self.korg), 403, "insufficient_scope"),
            ("/both/", bearer(self.korg) + xkey(self.kwfk), 401, "invalid_api_key"),
        ]
        for path, headers, status, code in cases:
            with self.subTest(code, path=path):
                r = self.get(path, headers)
                self.assertEqual(r.status, status, "%s refused" % code)
                rid = r.header("X-Request-Id")
                line = self.log_line(rid)
                self.assertIn("status=%d" % status, line, "logged status for %s" % code)
                self.assertEqual(parse_vars(line)["err"], code,
                                 "$api_key_error is %s in the log" % code)

    # -- api_key_dry_run

    def dry(self, headers, code, what):
        offset = self.nginx.error_log_size()
        r, v = self.upstream_vars("/dry/", headers)
        self.assertRegex(r.header("X-Request-Id") or "", REQUEST_ID_RE,
                         "dry run response still carries X-Request-Id (%s)" % what)
        self.assertEqual(v["err"], code, "dry run: $api_key_error says %s (%s)" % (code, what))
        line = self.log_line(r.header("X-Request-Id"))
        self.assertIn("status=200", line, "dry run: logged as served (%s)" % what)
        self.assertEqual(parse_vars(line)["err"], code,
                         "dry run: $api_key_error in the access log (%s)" % what)
        if code:
            try:
                wait_until(lambda: code in self.nginx.error_log(offset), 5.0,
                           what="error log line naming " + code)
            except TimeoutError:
                self.fail("dry run: the error log says %s would have been refused (%s)"
                          % (code, what))
        return v

    def test_dry_run_missing(self):
        self.dry([], "missing_api_key", "no key")

    def test_dry_run_invalid(self):
        self.dry(bearer(new_key()), "invalid_api_key", "unknown key")

    def test_dry_run_revoked(self):
        self.dry(bearer(self.krevoked), "revoked_api_key", "revoked key")

    def test_dry_run_environment(self):
        self.dry(bearer(self.ktest), "invalid_api_key", "test key at a live location")

    def test_dry_run_plan(self):
        self.dry(bearer(self.kfree), "plan_required", "free plan")

    def test_dry_run_scope(self):
        self.dry(bearer(self.kpro), "insufficient_scope", "pro key lacking d:write")

    def test_dry_run_accepted(self):
        v = self.dry(bearer(self.korg), "", "a key that passes every check")
        self.assertEqual(v["id"], "key_org", "dry run: $api_key_id of an accepted key")

    def test_dry_run_no_error_log_for_accepted(self):
        offset = self.nginx.error_log_size()
        self.upstream_vars("/dry/", bearer(self.korg))
        time.sleep(0.1)
        text = self.nginx.error_log(offset)
        for code in ("missing_api_key", "invalid_api_key", "revoked_api_key",
                     "expired_api_key", "plan_required", "insufficient_scope"):
            self.assertNotIn(code, text, "dry run logs nothing for an accepted key")

    def test_secrets_never_logged(self):
        offset = self.nginx.error_log_size()
        unknown = new_key()
        sent = [self.korg, self.krevoked, unknown, self.kwfk]
        self.get("/", bearer(self.korg))
        self.get("/", bearer(self.krevoked))
        self.get("/", bearer(unknown))
        self.get("/dry/", bearer(unknown))
        self.get("/dry/", bearer(self.krevoked))
        self.get("/both/", bearer(self.korg) + xkey(self.kwfk))
        self.get("/header/", xkey(self.kwfk + "!"))
        time.sleep(0.1)
        logs = self.nginx.error_log(offset) + self.nginx.access_log("keys.log")
        for key in sent:
            self.assertNotIn(key, logs, "a presented key never appears in error or access log")
            self.assertNotIn(key[12:], logs, "not even the key's secret part")
