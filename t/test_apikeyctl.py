"""SPEC "Key management CLI": apikeyctl, end to end. The real binary edits
the key file and the real nginx with the real module loads it: a created key
is accepted, a revoked one gets revoked_api_key after a reload, a rotation
leaves both keys valid, and `check` says what nginx -t says. `publish` and
`revoke --publish` write the key channel's entries (core/key_channel.h) to a
private redis-server, read back here over RESP and checked field by field,
signatures with the openssl command.

APIKEYCTL: the binary (default <repo>/build/cmake/apikeyctl).
"""

import base64
import calendar
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
import unittest

from harness import FUTURE, MESSAGES, PAST, REPO, KeyFile, Nginx, bearer, free_port, key_hash
from test_cluster import Redis

APIKEYCTL = os.path.abspath(os.environ.get(
    "APIKEYCTL", os.path.join(REPO, "build", "cmake", "apikeyctl")))

KEY_RE = re.compile(r"^jfi_sk_live_[A-Za-z0-9]{40}\n$")

HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        api_key keys;
        location / {
            proxy_set_header X-Key-Id $api_key_id;
            proxy_set_header X-Key-Owner $api_key_owner;
            proxy_set_header X-Key-Org $api_key_organization_id;
            proxy_set_header X-Key-Plan $api_key_plan;
            proxy_set_header X-Key-Scopes $api_key_scopes;
            proxy_set_header X-Key-Env $api_key_environment;
            proxy_pass http://127.0.0.1:{upstream};
        }
    }
"""


def epoch(text):
    """Seconds since the epoch of a "YYYY-MM-DDTHH:MM:SSZ" time."""
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def ctl(*args, stdin=None, env=None):
    """Runs apikeyctl; returns the CompletedProcess (text stdout/stderr)."""
    if not os.path.exists(APIKEYCTL):
        raise unittest.SkipTest("apikeyctl not built: %s (cmake --build build/cmake)" % APIKEYCTL)
    full_env = dict(os.environ)
    full_env.pop("APIKEYCTL_FILE", None)
    full_env.update(env or {})
    return subprocess.run([APIKEYCTL] + [str(a) for a in args], input=stdin,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=60, env=full_env)


class CtlMixin:
    """Helpers shared by the test classes below; self.keyfile is the file."""

    def run_ok(self, *args, stdin=None):
        r = ctl("-f", self.keyfile, *args, stdin=stdin)
        self.assertEqual(r.returncode, 0, "apikeyctl %s failed:\n%s" % (" ".join(args), r.stderr))
        return r

    def create(self, *args):
        """Creates a key; returns (key, id). Checks the stdout contract."""
        r = self.run_ok("create", *args)
        self.assertRegex(r.stdout, r"^\S+\n$", "stdout holds exactly the key and a newline")
        m = re.search(r"added key (key_[0-9a-z]{12})", r.stderr)
        self.assertIsNotNone(m, "stderr names the new key's id: %r" % r.stderr)
        return r.stdout[:-1], m.group(1)

    def read(self):
        with open(self.keyfile) as f:
            return f.read()

    def records(self):
        r = self.run_ok("list", "--json")
        return {rec["id"]: rec for rec in json.loads(r.stdout)}


class ApikeyctlNginxTest(CtlMixin, unittest.TestCase):
    """A fresh nginx per test, serving the key file apikeyctl writes."""

    def setUp(self):
        self.nginx = Nginx(HTTP, name="apikeyctl")
        self.keyfile = self.nginx.path("keys.yaml")
        self.key, self.key_id = self.create(
            "--owner", "user_42", "--organization", "org_7", "--plan", "pro",
            "--scopes", "diagrams:read,folders:read", "--limit", "write=500r/m",
            "--prefix", "jfi_sk_live_", "--environment", "live")
        self.nginx.start()

    def tearDown(self):
        self.nginx.cleanup()

    def code(self, key):
        r = self.nginx.get("/", bearer(key))
        if r.status == 200:
            return 200, None
        return r.status, r.json()["error"]["code"]

    def identity(self, key):
        """What the module tells the upstream about an accepted key."""
        r = self.nginx.get("/", bearer(key))
        self.assertEqual(r.status, 200, "key accepted; got %r" % r)
        h = r.echoed_headers()
        return {name: h.get("X-Key-" + name) for name in
                ("Id", "Owner", "Org", "Plan", "Scopes", "Env")}

    def test_created_key_is_accepted(self):
        self.assertRegex(self.key + "\n", KEY_RE, "prefix + 40 base62 characters")
        self.assertEqual(self.identity(self.key), {
            "Id": self.key_id, "Owner": "user_42", "Org": "org_7", "Plan": "pro",
            "Scopes": "diagrams:read folders:read", "Env": "live"})
        text = self.read()
        self.assertIn(key_hash(self.key), text, "the file holds the key's sha256 hash")
        self.assertNotIn(self.key, text, "the file never holds the key")
        self.assertNotIn(self.key[len("jfi_sk_live_"):], text, "not even its random part")

    def test_create_while_running_then_reload(self):
        key, _ = self.create("--owner", "user_7", "--prefix", "jfi_sk_live_")
        self.assertEqual(self.code(key), (401, "invalid_api_key"), "unknown before the reload")
        self.nginx.reload()
        self.assertEqual(self.code(key), (200, None), "accepted after the reload")
        self.assertEqual(self.code(self.key), (200, None), "the first key still accepted")

    def test_revoke_then_reload(self):
        other, _ = self.create("--owner", "user_8", "--prefix", "jfi_sk_live_")
        self.nginx.reload()
        before = self.read()
        r = self.run_ok("revoke", self.key_id)
        self.assertEqual(r.stdout, "", "revoke prints nothing on stdout")
        after = self.read()
        # exactly one line added, inside the revoked record; every other byte kept
        added = [l for l in after.splitlines() if l not in before.splitlines()]
        self.assertEqual(len(added), 1, "one line added: %r" % added)
        self.assertRegex(added[0], r"^    revoked_at: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertEqual(after.replace(added[0] + "\n", "", 1), before)

        self.assertEqual(self.code(self.key), (200, None), "no effect before the reload")
        self.nginx.reload()
        r = self.nginx.get("/", bearer(self.key))
        self.assertEqual(r.status, 401)
        self.assertEqual(r.json()["error"]["code"], "revoked_api_key",
                         "a revoked key is revoked_api_key, not invalid_api_key")
        self.assertEqual(r.json()["error"]["message"], MESSAGES["revoked_api_key"])
        self.assertEqual(self.code(other), (200, None), "other keys unaffected")
        self.assertEqual(self.records()[self.key_id]["status"], "revoked")

    def test_a_scheduled_revocation_revoked_now_takes_effect_at_the_reload(self):
        text = self.read()
        hash_line = "    hash: %s\n" % key_hash(self.key)
        self.assertIn(hash_line, text)
        with open(self.keyfile, "w") as f:
            f.write(text.replace(hash_line, hash_line + "    revoked_at: %s\n" % FUTURE))
        self.nginx.reload()
        self.assertEqual(self.code(self.key), (200, None), "a revocation scheduled for later")

        r = self.run_ok("revoke", self.key_id)
        self.assertIn("instead of the scheduled %s" % FUTURE, r.stderr)
        self.nginx.reload()
        self.assertEqual(self.code(self.key), (401, "revoked_api_key"))
        self.assertEqual(self.records()[self.key_id]["status"], "revoked")

    def test_rotate_keeps_both_valid(self):
        r = self.run_ok("rotate", self.key_id)
        self.assertRegex(r.stdout, KEY_RE, "rotate prints the new key, and only it")
        new_key = r.stdout[:-1]
        new_id = re.search(r"added key (key_[0-9a-z]{12})", r.stderr).group(1)
        self.assertNotEqual(new_key, self.key)
        self.assertNotIn(new_key, self.read())

        self.nginx.reload()
        old_identity = self.identity(self.key)
        new_identity = self.identity(new_key)
        self.assertEqual(new_identity["Id"], new_id)
        for field in ("Owner", "Org", "Plan", "Scopes", "Env"):
            self.assertEqual(new_identity[field], old_identity[field],
                             "rotation keeps %s" % field.lower())
        recs = self.records()
        self.assertEqual(recs[new_id]["limits"], {"write": "500r/m"}, "rotation keeps the limits")

        self.run_ok("revoke", self.key_id)
        self.nginx.reload()
        self.assertEqual(self.code(self.key), (401, "revoked_api_key"))
        self.assertEqual(self.code(new_key), (200, None), "the new key survives the old one's revocation")

    def test_allow_ip_then_reload(self):
        here, here_id = self.create("--owner", "user_3", "--prefix", "jfi_sk_live_",
                                    "--allow-ip", "127.0.0.0/8", "--allow-ip", "2001:db8::/32")
        there, there_id = self.create("--owner", "user_4", "--prefix", "jfi_sk_live_",
                                      "--allow-ip", "203.0.113.0/24", "--allow-ip", "::1")
        text = self.read()
        self.assertIn('    allowed_ips: [127.0.0.0/8, "2001:db8::/32"]\n', text,
                      "the field is written, IPv6 quoted")
        self.assertIn('    allowed_ips: [203.0.113.0/24, "::1"]\n', text)
        r = ctl("check", self.keyfile)
        self.assertEqual(r.returncode, 0, r.stderr)

        self.assertEqual(self.code(here), (401, "invalid_api_key"), "unknown before the reload")
        self.nginx.reload()
        self.assertEqual(self.code(here), (200, None), "127.0.0.1 is in 127.0.0.0/8")
        self.assertEqual(self.code(there), (403, "ip_not_allowed"), "127.0.0.1 is not listed")
        r = self.nginx.get("/", bearer(there))
        self.assertEqual(r.json()["error"]["message"], MESSAGES["ip_not_allowed"])
        self.assertEqual(self.code(self.key), (200, None), "a key without allowed_ips")

        recs = self.records()
        self.assertEqual(recs[here_id]["allowed_ips"], ["127.0.0.0/8", "2001:db8::/32"])
        self.assertEqual(recs[there_id]["allowed_ips"], ["203.0.113.0/24", "::1"])
        self.assertIsNone(recs[self.key_id]["allowed_ips"], "null: any address")
        rows = {line.split()[0]: line.split() for line in self.run_ok("list").stdout.splitlines()}
        self.assertEqual(rows[here_id][-1], "127.0.0.0/8,2001:db8::/32")
        self.assertEqual(rows[self.key_id][-1], "-")

        # A rotation keeps the restriction: the new key is refused here too.
        r = self.run_ok("rotate", there_id)
        rotated = r.stdout[:-1]
        rotated_id = re.search(r"added key (key_[0-9a-z]{12})", r.stderr).group(1)
        self.assertEqual(self.records()[rotated_id]["allowed_ips"], ["203.0.113.0/24", "::1"])
        self.nginx.reload()
        self.assertEqual(self.code(rotated), (403, "ip_not_allowed"),
                         "rotation keeps allowed_ips")

    def test_test_environment_key(self):
        key, _ = self.create("--owner", "user_9", "--prefix", "jfi_sk_test_",
                             "--environment", "test")
        self.assertIn("jfi_sk_test_: test", self.read(), "the prefix was declared")
        self.nginx.reload()
        self.assertEqual(self.identity(key)["Env"], "test")
        self.assertEqual(self.identity(self.key)["Env"], "live")

    def test_expired_key(self):
        # an expiry in the past is refused up front...
        r = ctl("-f", self.keyfile, "create", "--owner", "u", "--expires", "2020-01-01")
        self.assertEqual(r.returncode, 2, r.stderr)
        # ...and a near one takes effect in nginx
        key, kid = self.create("--owner", "user_5", "--prefix", "jfi_sk_live_", "--expires", "2s")
        self.nginx.reload()
        self.assertEqual(self.code(key), (200, None))
        time.sleep(3.1)
        self.assertEqual(self.code(key), (401, "expired_api_key"))
        self.assertEqual(self.records()[kid]["status"], "expired")


class ApikeyctlCheckTest(CtlMixin, unittest.TestCase):
    """check says what nginx -t says, for the same file; nginx is never started."""

    CHECK_HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;
    server {
        listen 127.0.0.1:{port};
        api_key keys;
        location / { proxy_pass http://127.0.0.1:{upstream}; }
    }
"""

    def setUp(self):
        self.nginx = Nginx(self.CHECK_HTTP, name="apikeyctl-check")
        self.nginx.allow_emerg = True  # a failed nginx -t logs [emerg]
        self.keyfile = self.nginx.path("keys.yaml")
        self.create("--owner", "user_1", "--prefix", "jfi_sk_live_", "--environment", "live",
                    "--scope", "a:read")
        self.create("--owner", "user_2", "--plan", "pro")
        self.good = self.read()

    def tearDown(self):
        self.nginx.cleanup()

    def test_valid_file(self):
        r = ctl("check", self.keyfile)
        self.assertEqual(r.returncode, 0, r.stderr)
        rc, out = self.nginx.test_config()
        self.assertEqual(rc, 0, out)
        r = ctl("check", env={"APIKEYCTL_FILE": self.keyfile})
        self.assertEqual(r.returncode, 0, "check takes $APIKEYCTL_FILE too: %s" % r.stderr)

    def test_broken_files_same_message_as_nginx(self):
        lines = self.good.splitlines(keepends=True)
        first_id = next(i for i, l in enumerate(lines) if "- id:" in l)
        second_id = next(i for i, l in enumerate(lines) if "- id:" in l and i > first_id)
        hash_line = next(i for i, l in enumerate(lines) if "hash:" in l)
        breakages = {
            "duplicate id": lines[:second_id] + [lines[first_id]] + lines[second_id + 1:],
            "bad hash": lines[:hash_line] + ["    hash: sha256:XYZ\n"] + lines[hash_line + 1:],
            "unknown field": lines + ["    colour: red\n"],
            "yaml syntax": lines + ["    scopes: [a:read]]\n"],
            "bad version": [l.replace("version: 1", "version: 3") for l in lines],
        }
        for what, broken in breakages.items():
            with self.subTest(what):
                with open(self.keyfile, "w") as f:
                    f.write("".join(broken))
                r = ctl("check", self.keyfile)
                self.assertEqual(r.returncode, 1, "%s: check fails with status 1" % what)
                self.assertEqual(r.stdout, "")
                m = re.match(r"^apikeyctl: (%s:\d+: .+)$" % re.escape(self.keyfile),
                             r.stderr.strip())
                self.assertIsNotNone(m, "%s: 'path:line: reason' on stderr: %r" % (what, r.stderr))
                rc, out = self.nginx.test_config()
                self.assertNotEqual(rc, 0, "%s: nginx -t fails too" % what)
                self.assertIn(m.group(1), out, "%s: nginx -t prints the same text" % what)

    def test_missing_file(self):
        missing = self.nginx.path("nope.yaml")
        r = ctl("check", missing)
        self.assertEqual(r.returncode, 1)
        self.assertIn(missing, r.stderr)

    def test_edits_refuse_a_broken_file(self):
        broken = self.good + "    colour: red\n"
        with open(self.keyfile, "w") as f:
            f.write(broken)
        for args in (["create", "--owner", "u", "--prefix", "jfi_sk_live_"], ["revoke", "key_x"]):
            r = ctl("-f", self.keyfile, *args)
            self.assertEqual(r.returncode, 1, args)
            self.assertRegex(r.stderr, r"^apikeyctl: %s:\d+: unknown field" % re.escape(self.keyfile))
            self.assertEqual(r.stdout, "", "no key printed when nothing was written")
        self.assertEqual(self.read(), broken, "the broken file is left as it was")


class ApikeyctlFileTest(CtlMixin, unittest.TestCase):
    """The CLI alone, on a key file in a temporary directory."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="apikeyctl-", dir="/tmp")
        self.keyfile = os.path.join(self.dir, "keys.yaml")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def leftovers(self):
        return sorted(set(os.listdir(self.dir)) - {"keys.yaml", ".keys.yaml.lock"})

    def test_create_new_file(self):
        key, kid = self.create("--owner", "user_1", "--prefix", "wfk_", "--environment", "live")
        self.assertRegex(key, r"^wfk_[A-Za-z0-9]{40}$")
        text = self.read()
        self.assertTrue(text.startswith("version: 1\nprefixes:\n  wfk_: live\nkeys:\n"), text)
        self.assertIn("  - id: %s\n    hash: %s\n" % (kid, key_hash(key)), text)
        self.assertEqual(ctl("check", self.keyfile).returncode, 0)
        self.assertEqual(self.leftovers(), [], "no temporary file left behind")

    def test_key_shape_and_uniqueness(self):
        keys = set()
        for _ in range(5):
            key, kid = self.create("--owner", "u", "--length", "32")
            self.assertRegex(key, r"^[A-Za-z0-9]{32}$", "no prefixes declared: no prefix")
            self.assertRegex(kid, r"^key_[0-9a-z]{12}$")
            keys.add(key)
        self.assertEqual(len(keys), 5)
        self.assertEqual(ctl("-f", self.keyfile, "create", "--owner", "u", "--length", "31").returncode, 2,
                         "fewer than 32 random characters is refused")

    def test_list_never_shows_secrets(self):
        k1, id1 = self.create("--owner", "user_1", "--prefix", "jfi_sk_live_", "--environment", "live",
                              "--plan", "pro", "--scope", "a:read", "--scope", "b:write",
                              "--expires", "2099-01-01T00:00:00Z")
        k2, id2 = self.create("--owner", "user_2", "--prefix", "jfi_sk_test_", "--environment", "test",
                              "--organization", "org_7")
        self.run_ok("revoke", id2)
        table = self.run_ok("list").stdout
        doc = self.run_ok("list", "--json").stdout
        for out in (table, doc):
            for k in (k1, k2):
                self.assertNotIn(k, out, "no key in list output")
                self.assertNotIn(k[12:], out)
                self.assertNotIn(key_hash(k)[7:], out, "no hash either")
            self.assertNotIn("sha256", out)
        header = table.splitlines()[0].split()
        self.assertEqual(header, ["ID", "OWNER", "ORGANIZATION", "PLAN", "SCOPES", "ENV", "STATUS",
                                  "CREATED", "EXPIRES", "REVOKED", "ALLOWED_IPS"])
        recs = {r["id"]: r for r in json.loads(doc)}
        self.assertEqual(set(recs), {id1, id2})
        r1, r2 = recs[id1], recs[id2]
        self.assertEqual((r1["owner"], r1["plan"], r1["scopes"], r1["environment"], r1["status"]),
                         ("user_1", "pro", ["a:read", "b:write"], "live", "active"))
        self.assertEqual(r1["expires_at"], "2099-01-01T00:00:00Z")
        self.assertIsNone(r1["organization_id"])
        self.assertIsNone(r1["revoked_at"])
        self.assertEqual((r2["organization_id"], r2["environment"], r2["status"]),
                         ("org_7", "test", "revoked"))
        self.assertRegex(r2["revoked_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

    def test_hash_from_stdin(self):
        key = "wfk_" + "Ab9" * 12
        want = "sha256:" + hashlib.sha256(key.encode()).hexdigest() + "\n"
        for given in (key, key + "\n", key + "\r\n", "  " + key + " \n"):
            r = ctl("hash", stdin=given)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout, want, "hash of %r" % given)
        for bad in ("", "short\n", "has space inside the key 1234\n", key + "\n" + key + "\n"):
            r = ctl("hash", stdin=bad)
            self.assertEqual(r.returncode, 1, "refused: %r" % bad)
            self.assertEqual(r.stdout, "")
        r = ctl("hash", key)
        self.assertEqual(r.returncode, 2, "a key on the command line is a usage error")

    def test_usage_errors_exit_2(self):
        cases = [
            [],
            ["frobnicate"],
            ["-f", self.keyfile, "create"],                           # no --owner
            ["-f", self.keyfile, "create", "--owner", "u", "--bogus"],
            ["-f", self.keyfile, "create", "--owner", "u", "--expires", "soon"],
            ["-f", self.keyfile, "create", "--owner", "u", "--limit", "write"],
            ["-f", self.keyfile, "create", "--owner", "u", "--environment", "staging"],
            ["-f", self.keyfile, "create", "--owner", "has space"],
            ["-f", self.keyfile, "create", "--owner", "u", "--allow-ip", "203.0.113.5/24"],
            ["-f", self.keyfile, "create", "--owner", "u", "--allow-ip", "10.0.0.0/33"],
            ["-f", self.keyfile, "create", "--owner", "u", "--allow-ip", "example.com"],
            ["-f", self.keyfile, "create", "--owner", "u", "--allow-ip", "10.0.0.1",
             "--allow-ip", "10.0.0.1/32"],
            ["-f", self.keyfile, "create", "--owner", "u", "--allow-ip"],
            ["-f", self.keyfile, "create", "--owner"],
            ["create", "--owner", "u"],                               # no file at all
            ["-f", self.keyfile, "revoke"],
            ["-f", self.keyfile, "rotate", "a", "b"],
            ["-f", self.keyfile, "list", "extra"],
        ]
        for args in cases:
            with self.subTest(args=args):
                r = ctl(*args)
                self.assertEqual(r.returncode, 2, "%r: %s" % (args, r.stderr))
                self.assertTrue(r.stderr.startswith("apikeyctl: "), r.stderr)
                self.assertIn("--help", r.stderr, "points at the help")
                self.assertEqual(r.stdout, "")
        self.assertFalse(os.path.exists(self.keyfile), "usage errors write nothing")

    def test_help(self):
        top = ctl("--help")
        self.assertEqual(top.returncode, 0)
        self.assertTrue(top.stdout.startswith("Usage: apikeyctl"))
        for cmd in ("create", "revoke", "rotate", "list", "check", "hash", "publish"):
            self.assertIn("  " + cmd + " ", top.stdout, "the tool's help lists " + cmd)
            for args in ([cmd, "--help"], ["help", cmd], [cmd, "-h"]):
                r = ctl(*args)
                self.assertEqual(r.returncode, 0, args)
                self.assertTrue(r.stdout.startswith("Usage: apikeyctl " + cmd), args)

    def test_errors_name_the_file(self):
        self.create("--owner", "u")
        before = self.read()
        for args, words in ((["revoke", "key_nope"], 'no key with id "key_nope"'),
                            (["rotate", "key_nope"], 'no key with id "key_nope"'),
                            (["create", "--owner", "u", "--environment", "live", "--prefix", "x_"],
                             "declares no prefixes")):
            r = ctl("-f", self.keyfile, *args)
            self.assertEqual(r.returncode, 1, args)
            self.assertTrue(r.stderr.startswith("apikeyctl: %s: " % self.keyfile), r.stderr)
            self.assertIn(words, r.stderr)
            self.assertEqual(r.stdout, "")
        self.assertEqual(self.read(), before, "failed commands change nothing")
        r = ctl("-f", os.path.join(self.dir, "missing.yaml"), "revoke", "key_x")
        self.assertEqual(r.returncode, 1)
        self.assertIn("missing.yaml", r.stderr)

    def test_revoke_twice(self):
        _, kid = self.create("--owner", "u")
        self.run_ok("revoke", kid)
        once = self.read()
        r = ctl("-f", self.keyfile, "revoke", kid)
        self.assertEqual(r.returncode, 1)
        self.assertIn("already revoked", r.stderr)
        self.assertEqual(self.read(), once)

    def test_a_scheduled_revocation_is_revoked_now(self):
        kf = KeyFile()
        kf.add("key_later", revoked_at=FUTURE)
        kf.add("key_past", revoked_at=PAST)
        kf.write(self.keyfile)
        before = self.read()
        self.assertEqual(self.records()["key_later"]["status"], "active", "scheduled, not in force yet")

        t0 = int(time.time())
        r = ctl("-f", self.keyfile, "revoke", "key_later")
        t1 = int(time.time())
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "")
        self.assertNotIn("already revoked", r.stderr)
        self.assertIn("revoked key_later", r.stderr)
        self.assertIn("instead of the scheduled %s" % FUTURE, r.stderr)
        rec = self.records()["key_later"]
        self.assertEqual(rec["status"], "revoked")
        self.assertTrue(t0 <= epoch(rec["revoked_at"]) <= t1, "revoked now: %s" % rec["revoked_at"])
        self.assertEqual(self.read(), before.replace(FUTURE, rec["revoked_at"], 1),
                         "only the scheduled time changed")

        # one already in force keeps its time; so does the one just revoked
        for kid, since in (("key_past", PAST), ("key_later", rec["revoked_at"])):
            revoked = self.read()
            r = ctl("-f", self.keyfile, "revoke", kid)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn('apikeyctl: %s: key "%s" is already revoked since %s\n'
                          % (self.keyfile, kid, since), r.stderr)
            self.assertEqual(self.read(), revoked)
        self.assertEqual(self.records()["key_past"]["revoked_at"], PAST)

    def test_revoking_several_ids_revokes_what_it_can_and_names_the_rest(self):
        kf = KeyFile()
        kf.add("key_a")
        kf.add("key_b", revoked_at=PAST)
        kf.add("key_c")
        kf.add("key_d", revoked_at=FUTURE)
        kf.write(self.keyfile)
        before = self.read()

        t0 = int(time.time())
        r = ctl("-f", self.keyfile, "revoke", "key_a", "key_b", "key_nope", "key_c", "key_d", "key_a")
        t1 = int(time.time())
        self.assertEqual(r.returncode, 1, "an id not revoked makes the exit status 1: %s" % r.stderr)
        self.assertEqual(r.stdout, "")
        prefix = "apikeyctl: %s: " % self.keyfile
        self.assertIn(prefix + 'key "key_b" is already revoked since %s\n' % PAST, r.stderr)
        self.assertIn(prefix + 'no key with id "key_nope"\n', r.stderr)
        for kid in ("key_a", "key_c", "key_d"):
            self.assertIn(prefix + "revoked %s (revoked_at " % kid, r.stderr)
        self.assertIn(prefix + "2 of 5 key(s) not revoked; the others were\n", r.stderr)

        recs = self.records()
        self.assertEqual({k: v["status"] for k, v in recs.items()},
                         {"key_a": "revoked", "key_b": "revoked", "key_c": "revoked", "key_d": "revoked"})
        self.assertEqual(recs["key_b"]["revoked_at"], PAST, "an earlier revocation is kept")
        now = recs["key_a"]["revoked_at"]
        self.assertTrue(t0 <= epoch(now) <= t1, now)
        self.assertEqual(recs["key_c"]["revoked_at"], now, "one time for the whole write")
        self.assertEqual(recs["key_d"]["revoked_at"], now, "the scheduled time brought forward")

        # byte for byte: a line added to key_a and key_c, key_d's value replaced
        after = self.read()
        expected = before.replace(FUTURE, now)
        for kid in ("key_a", "key_c"):
            start = expected.index("  - id: %s\n" % kid)
            end = expected.index("  - id: ", start + 1)
            expected = expected[:end] + "    revoked_at: %s\n" % now + expected[end:]
        self.assertEqual(after, expected)
        self.assertEqual(self.leftovers(), [])

        # nothing revocable: nothing written, still status 1
        r = ctl("-f", self.keyfile, "revoke", "key_nope", "key_a")
        self.assertEqual(r.returncode, 1)
        self.assertIn("2 of 2 key(s) not revoked; nothing was written", r.stderr)
        self.assertEqual(self.read(), after)

        # every id revoked: status 0
        _, id1 = self.create("--owner", "u1", "--prefix", "wfk_")
        _, id2 = self.create("--owner", "u2", "--prefix", "wfk_")
        r = self.run_ok("revoke", id1, id2)
        self.assertNotIn("not revoked", r.stderr)
        recs = self.records()
        self.assertEqual((recs[id1]["status"], recs[id2]["status"]), ("revoked", "revoked"))

    def test_prefix_rules(self):
        self.create("--owner", "u", "--prefix", "jfi_sk_live_", "--environment", "live")
        self.create("--owner", "u", "--prefix", "jfi_sk_test_", "--environment", "test")
        r = ctl("-f", self.keyfile, "create", "--owner", "u", "--prefix", "other_")
        self.assertEqual(r.returncode, 1, "an undeclared prefix is refused")
        self.assertIn("not declared", r.stderr)
        r = ctl("-f", self.keyfile, "create", "--owner", "u")
        self.assertEqual(r.returncode, 1, "two prefixes: the user must choose")
        key, _ = self.create("--owner", "u", "--environment", "test")
        self.assertTrue(key.startswith("jfi_sk_test_"), "--environment picks the declared prefix")
        r = ctl("-f", self.keyfile, "create", "--owner", "u", "--prefix", "jfi_sk_live_",
                "--environment", "test")
        self.assertEqual(r.returncode, 1, "declared for the other environment")

    def test_keeps_mode_and_other_bytes(self):
        kf = KeyFile()
        kf.add("key_hand", plan="pro", scopes=["a:read"], limits={"read": "10r/s"})
        kf.add("key_other", owner="user_2", organization_id="org_1")
        kf.write(self.keyfile)
        os.chmod(self.keyfile, 0o600)
        original = self.read()

        key, kid = self.create("--owner", "u", "--prefix", "wfk_")
        text = self.read()
        self.assertTrue(text.startswith(original), "create appends; every old byte is kept")
        self.assertEqual(stat.S_IMODE(os.stat(self.keyfile).st_mode), 0o600, "mode kept")

        self.run_ok("revoke", "key_hand")
        revoked = self.read()
        self.assertEqual(len(revoked.splitlines()), len(text.splitlines()) + 1)
        self.assertEqual(stat.S_IMODE(os.stat(self.keyfile).st_mode), 0o600, "mode kept")
        self.assertEqual(self.leftovers(), [])

        r = self.run_ok("rotate", "key_hand", "--prefix", "jfi_sk_live_")
        self.assertTrue(r.stdout.startswith("jfi_sk_live_"))
        r = ctl("-f", self.keyfile, "rotate", "key_other")
        self.assertEqual(r.returncode, 1, "a hand-written key's prefix is unknown")
        self.assertIn("--prefix", r.stderr)

    def test_concurrent_creates_all_land(self):
        self.create("--owner", "u0")
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: ctl("-f", self.keyfile, "create", "--owner", "u%d" % i),
                                    range(1, 17)))
        for r in results:
            self.assertEqual(r.returncode, 0, r.stderr)
        text = self.read()
        for r in results:
            self.assertIn(key_hash(r.stdout.strip()), text, "no create lost to a race")
        self.assertEqual(len(self.records()), 17)
        self.assertEqual(ctl("check", self.keyfile).returncode, 0)
        self.assertEqual(self.leftovers(), [])

    def test_symlinked_file(self):
        real = os.path.join(self.dir, "real.yaml")
        self.keyfile = real
        self.create("--owner", "u")
        link = os.path.join(self.dir, "keys.yaml")
        os.symlink("real.yaml", link)
        r = ctl("-f", link, "create", "--owner", "v")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(os.path.islink(link), "the symlink survives the rename")
        self.assertIn(key_hash(r.stdout.strip()), self.read())


OPENSSL = shutil.which("openssl")
PUBLISHED_RE = re.compile(
    r"^apikeyctl: published version (\d+) of (.+) \((\d+) keys, sha256 ([0-9a-f]{12})\u2026\) "
    r"to channel (\S+)\n$")


class ApikeyctlPublishTest(CtlMixin, unittest.TestCase):
    """publish and revoke --publish against a private redis-server; no nginx.

    The entries are read back with XRANGE and checked against the format of
    core/key_channel.h; signatures are verified with `openssl pkeyutl` over
    the canonical message, so the CLI is held to the protocol by a second
    implementation rather than by its own reader."""

    CHANNEL = "prod"

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="apikeyctl-publish-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.keyfile = os.path.join(self.dir, "keys.yaml")
        self.redis = Redis()
        self.addCleanup(self.redis.cleanup)
        self.redis.start()  # SkipTest without redis-server
        self.key1, self.id1 = self.create("--owner", "user_1", "--prefix", "jfi_sk_live_",
                                          "--environment", "live")
        self.key2, self.id2 = self.create("--owner", "user_2")
        self.private = self.public = None

    def make_keys(self):
        if not OPENSSL:
            self.skipTest("the openssl command is not installed")
        self.private = os.path.join(self.dir, "channel.pem")
        self.public = os.path.join(self.dir, "channel.pub")
        subprocess.run([OPENSSL, "genpkey", "-algorithm", "ed25519", "-out", self.private],
                       check=True, capture_output=True)
        subprocess.run([OPENSSL, "pkey", "-in", self.private, "-pubout", "-out", self.public],
                       check=True, capture_output=True)

    def channel_args(self, port=None, channel=None):
        return ["--redis", "127.0.0.1:%d" % (port or self.redis.port),
                "--channel", channel or self.CHANNEL]

    def publish(self, *extra, port=None):
        return ctl("-f", self.keyfile, "publish", *self.channel_args(port), *extra)

    def entries(self, channel=None):
        """[(id, {field: value})] of the channel's stream, oldest first."""
        raw = self.redis.command("XRANGE", "akm:k:{%s}:log" % (channel or self.CHANNEL), "-", "+")
        out = []
        for entry_id, fields in raw or []:
            names = fields[0::2]
            self.assertEqual(len(names), len(set(names)), "no field twice: %r" % fields)
            out.append((entry_id, dict(zip(names, fields[1::2]))))
        return out

    def verify(self, fields, channel=None):
        """openssl's verdict on the entry's signature over the canonical message."""
        if fields["type"] == "version":
            values = [fields[n] for n in ("v", "sha256", "size", "chunks")]
        else:
            values = [fields[n] for n in ("id", "at")]
        message = "apikey-channel-v1\n%s\n%s\n" % (channel or self.CHANNEL, fields["type"])
        message += "".join(v + "\n" for v in values)
        msg_path = os.path.join(self.dir, "message")
        sig_path = os.path.join(self.dir, "signature")
        with open(msg_path, "wb") as f:
            f.write(message.encode())
        with open(sig_path, "wb") as f:
            f.write(base64.b64decode(fields["sig"], validate=True))
        r = subprocess.run([OPENSSL, "pkeyutl", "-verify", "-pubin", "-inkey", self.public,
                            "-rawin", "-in", msg_path, "-sigfile", sig_path],
                           capture_output=True, text=True)
        return r.returncode == 0

    def assertNoSecrets(self, r):
        for text in (r.stdout, r.stderr):
            for key in (self.key1, self.key2):
                self.assertNotIn(key, text, "no key printed")
                self.assertNotIn(key_hash(key), text, "no key hash printed")

    def assertPublished(self, r, keys=2):
        """The stderr line of a successful publish; returns the version."""
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "", "publish prints nothing on stdout")
        m = PUBLISHED_RE.match(r.stderr)
        self.assertIsNotNone(m, "the documented line on stderr: %r" % r.stderr)
        with open(self.keyfile, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        self.assertEqual(m.group(2), self.keyfile)
        self.assertEqual(int(m.group(3)), keys)
        self.assertEqual(m.group(4), sha[:12])
        self.assertEqual(m.group(5), self.CHANNEL)
        self.assertNoSecrets(r)
        return int(m.group(1))

    def test_publish_unsigned(self):
        before = time.time()
        r = self.publish()
        version = self.assertPublished(r)
        self.assertGreaterEqual(version, int(before * 1000), "unix milliseconds")
        with open(self.keyfile, "rb") as f:
            content = f.read()
        sha = hashlib.sha256(content).hexdigest()
        entries = self.entries()
        self.assertEqual(len(entries), 1)
        _, fields = entries[0]
        self.assertEqual(fields, {"type": "version", "v": str(version), "sha256": sha,
                                  "size": str(len(content)), "chunks": "1"})
        self.assertEqual(self.redis.command("GET", "akm:k:{prod}:blob:%s:0" % sha),
                         content.decode(), "the content is in its blob")
        self.assertEqual(self.redis.command("TTL", "akm:k:{prod}:blob:%s:0" % sha), -1,
                         "blobs do not expire")
        self.assertEqual(self.redis.command("GET", "akm:k:{prod}:version"), str(version))

    def test_publish_signed(self):
        self.make_keys()
        version = self.assertPublished(self.publish("--sign", self.private))
        (_, fields), = self.entries()
        self.assertEqual(fields["v"], str(version))
        self.assertRegex(fields["sig"], r"^[A-Za-z0-9+/]{86}==$")
        self.assertTrue(self.verify(fields), "openssl verifies the signature")
        self.assertFalse(self.verify(dict(fields, v=str(version + 1))), "the version is signed")
        self.assertFalse(self.verify(fields, channel="staging"), "the channel is signed")

    def test_versions_increase_and_the_same_content_is_stored_once(self):
        v1 = self.assertPublished(self.publish())
        v2 = self.assertPublished(self.publish())
        self.create("--owner", "user_3")
        v3 = self.assertPublished(self.publish(), keys=3)
        self.assertLess(v1, v2)
        self.assertLess(v2, v3)
        self.assertEqual([f["v"] for _, f in self.entries()], [str(v1), str(v2), str(v3)])
        blobs = self.redis.command("KEYS", "akm:k:{prod}:blob:*")
        self.assertEqual(len(blobs), 2, "two contents, one chunk each: %r" % blobs)

    def test_redis_options(self):
        r = self.publish("--redis-prefix", "other:", "--redis-db", "2")
        self.assertPublished(r)
        self.assertEqual(self.entries(), [], "nothing under the default prefix in db 0")
        # One command per connection here: the script selects db 2 for itself.
        self.assertEqual(self.redis.command(
            "EVAL", "redis.call('SELECT', 2) return redis.call('XLEN', KEYS[1])", 1,
            "other:k:{prod}:log"), 1, "the entry is in db 2 under other:")
        # A password file is read, and its content never printed, even when refused.
        pw = os.path.join(self.dir, "redis.pw")
        with open(pw, "w") as f:
            f.write("pa55-never-shown\n")
        r = self.publish("--redis-password-file", pw)
        self.assertEqual(r.returncode, 1, "AUTH to a Redis without a password fails")
        self.assertIn("AUTH refused", r.stderr)
        self.assertNotIn("pa55-never-shown", r.stderr + r.stdout)

    def test_an_invalid_file_is_never_published(self):
        with open(self.keyfile, "a") as f:
            f.write("    colour: red\n")
        r = self.publish()
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr, r"^apikeyctl: %s:\d+: unknown field" % re.escape(self.keyfile),
                         "the module reader's file:line: reason")
        self.assertEqual(self.redis.command("KEYS", "*"), [], "nothing written to Redis")

    def test_publish_errors(self):
        self.make_keys()
        for args, what in (([], "--redis and --channel are required"),
                           (["--redis", "127.0.0.1:%d" % self.redis.port], "--channel is required"),
                           (["--channel", "prod"], "--redis is required"),
                           (["--redis", "localhost:6379", "--channel", "prod"], "numeric address"),
                           (self.channel_args(channel="a b"), "channel name"),
                           (self.channel_args() + ["--redis-user", "u"], "user needs a password")):
            r = ctl("-f", self.keyfile, "publish", *args)
            self.assertEqual(r.returncode, 2, "%s: usage error: %s" % (what, r.stderr))
            self.assertIn("Try 'apikeyctl publish --help'.", r.stderr, what)
        r = self.publish("--sign", self.public)
        self.assertEqual(r.returncode, 1)
        self.assertIn("a public key; signing needs the private key", r.stderr)
        port = free_port()
        r = self.publish(port=port)
        self.assertEqual(r.returncode, 1, "Redis down")
        self.assertEqual(r.stderr, "apikeyctl: %s: not published to channel prod: Redis "
                         "127.0.0.1:%d: connect: Connection refused\n" % (self.keyfile, port))
        self.assertEqual(self.redis.command("KEYS", "*"), [])

    def test_revoke_publish(self):
        self.make_keys()
        r = ctl("-f", self.keyfile, "revoke", self.id1, self.id2, "--publish",
                *self.channel_args(), "--sign", self.private)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("published 2 revocation(s) to channel prod", r.stderr)
        self.assertNoSecrets(r)
        records = self.records()
        entries = self.entries()
        self.assertEqual([f["id"] for _, f in entries], [self.id1, self.id2])
        for _, f in entries:
            self.assertEqual(set(f), {"type", "id", "at", "sig"})
            self.assertEqual(f["type"], "revoke")
            self.assertEqual(int(f["at"]), epoch(records[f["id"]]["revoked_at"]),
                             "the revoked_at written to the file")
            self.assertTrue(self.verify(f), "openssl verifies the signature")

    def test_revoke_publish_sends_only_what_was_revoked_now(self):
        self.assertEqual(ctl("-f", self.keyfile, "revoke", self.id2).returncode, 0)
        r = ctl("-f", self.keyfile, "revoke", self.id1, self.id2, "key_unknown", "--publish",
                *self.channel_args())
        self.assertEqual(r.returncode, 1, "some ids were not revoked")
        self.assertIn("published 1 revocation(s)", r.stderr)
        self.assertEqual([f["id"] for _, f in self.entries()], [self.id1])
        self.assertNotIn("sig", self.entries()[0][1], "unsigned without --sign")

    def test_revoke_publish_with_redis_down(self):
        self.make_keys()
        port = free_port()
        r = ctl("-f", self.keyfile, "revoke", self.id1, "--publish", *self.channel_args(port),
                "--sign", self.private)
        self.assertEqual(r.returncode, 1, "the revocation was not published")
        self.assertEqual(self.records()[self.id1]["status"], "revoked", "the file was edited")
        self.assertIn("the file was edited, but the revocation was NOT published to channel prod",
                      r.stderr)
        m = re.search(r"publish it \(it holds the revocations\) with: (apikeyctl .*)$", r.stderr,
                      re.M)
        self.assertIsNotNone(m, "says how to retry: %r" % r.stderr)
        self.assertNoSecrets(r)
        # The retry it suggests works once Redis is there.
        later = Redis(port=port)
        self.addCleanup(later.cleanup)
        later.start()
        argv = m.group(1).split()
        self.assertEqual(argv[:4], ["apikeyctl", "-f", self.keyfile, "publish"])
        r = ctl(*argv[1:])
        self.assertPublished(r)
        raw = later.command("XRANGE", "akm:k:{prod}:log", "-", "+")
        self.assertEqual(len(raw), 1)
        fields = dict(zip(raw[0][1][0::2], raw[0][1][1::2]))
        self.assertEqual(fields["type"], "version")
        self.assertTrue(self.verify(fields), "signed as the revoke would have been")
        self.assertIn("revoked_at", later.command(
            "GET", "akm:k:{prod}:blob:%s:0" % fields["sha256"]))

    def test_revoke_options_need_publish(self):
        r = ctl("-f", self.keyfile, "revoke", self.id1, *self.channel_args())
        self.assertEqual(r.returncode, 2)
        self.assertIn("revoke: --redis needs --publish", r.stderr)
        r = ctl("-f", self.keyfile, "revoke", self.id1, "--publish")
        self.assertEqual(r.returncode, 2)
        self.assertIn("revoke: --redis ADDRESS is required", r.stderr)
        # A bad signing key is found before the file is touched.
        bad = os.path.join(self.dir, "bad.pem")
        with open(bad, "w") as f:
            f.write("not a key\n")
        r = ctl("-f", self.keyfile, "revoke", self.id1, "--publish", *self.channel_args(),
                "--sign", bad)
        self.assertEqual(r.returncode, 1)
        self.assertEqual(self.records()[self.id1]["status"], "active", "nothing was revoked")
        self.assertEqual(self.entries(), [])


if __name__ == "__main__":
    unittest.main()
