"""SPEC "Key file": a file that fails to parse or validate is rejected by
nginx -t with `file:line: reason`; a zone too small for the file says how
much is needed; accepted syntax variants load."""

import re
import unittest

from harness import FUTURE, Nginx, key_hash, needed_bytes, new_key

HTTP = """
    api_key_zone keys:ZONE file=FILE;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        api_key keys;
        location / {
            proxy_pass http://127.0.0.1:{upstream};
        }
    }
"""

H1 = key_hash("jfi_sk_live_" + "a" * 40)
H2 = key_hash("jfi_sk_live_" + "b" * 40)

# line numbers matter: BASE[n - 1] is line n
BASE = [
    "version: 1",                      # 1
    "prefixes:",                       # 2
    "  jfi_sk_live_: live",            # 3
    "  jfi_sk_test_: test",            # 4
    "keys:",                           # 5
    "  - id: key_a",                   # 6
    "    hash: " + H1,                 # 7
    "    owner: user_1",               # 8
    "    plan: pro",                   # 9
    "    scopes: [a:read]",            # 10
    "    created_at: 2026-11-01T00:00:00Z",  # 11
    "  - id: key_b",                   # 12
    "    hash: " + H2,                 # 13
    "    owner: user_2",               # 14
    "    scopes: [a:read, b:read]",    # 15
]


def variant(**changes):
    """BASE with lines replaced: variant(l10='...') replaces line 10."""
    lines = list(BASE)
    for k, v in changes.items():
        lines[int(k[1:]) - 1] = v
    return "\n".join(lines) + "\n"


class KeyFileTest(unittest.TestCase):
    """nginx -t on one key file per test; nothing is started."""

    def setUp(self):
        self.nginx = None

    def tearDown(self):
        if self.nginx is not None:
            self.nginx.allow_emerg = True  # a failed nginx -t logs [emerg]
            self.nginx.cleanup()

    def configure(self, text, zone="1m", file_name="keys.yaml"):
        self.nginx = n = Nginx(name="keyfile")
        path = n.path(file_name)
        if text is not None:
            n.write_file(file_name, text)
        n.write_config(HTTP.replace("ZONE", zone).replace("FILE", path))
        return n, path

    def check_ok(self, text, what):
        n, _ = self.configure(text)
        rc, out = n.test_config()
        self.assertEqual(rc, 0, "%s: nginx -t accepts the file; output:\n%s" % (what, out))

    def check_rejected(self, text, line, words, what):
        n, path = self.configure(text)
        rc, out = n.test_config()
        self.assertNotEqual(rc, 0, "%s: nginx -t fails; output:\n%s" % (what, out))
        lines = line if isinstance(line, tuple) else (line,)
        wheres = ["%s:%d:" % (path, l) for l in lines]
        where = next((w for w in wheres if w in out), None)
        self.assertIsNotNone(where, "%s: the message names %s; output:\n%s"
                             % (what, " or ".join(wheres), out))
        msg = next((l for l in out.splitlines() if where in l), "")
        reason = msg.split(where, 1)[1]
        if words:
            self.assertTrue(any(re.search(w, reason, re.I) for w in words),
                            "%s: the reason mentions one of %s; got: %s" % (what, words, msg))
        return reason

    # -- sanity: the base file is fine

    def test_base_file_ok(self):
        self.check_ok(variant(), "the base file")

    # -- rejections

    def test_bad_yaml_flow(self):
        self.check_rejected(variant(l10="    scopes: [a:read]]"), 10, None,
                            "YAML syntax error (stray ']')")

    def test_bad_yaml_structure(self):
        self.check_rejected(variant(l10="    - scopes"), 10, None,
                            "YAML structure error (list item inside a map)")

    def test_duplicate_id(self):
        self.check_rejected(variant(l12="  - id: key_a"), 12, ["duplicate"], "duplicate id")

    def test_duplicate_hash(self):
        # reported at the record (line 12) or at its hash (line 13)
        reason = self.check_rejected(variant(l13="    hash: " + H1), (12, 13), ["duplicate"],
                                     "duplicate hash")
        self.assertRegex(reason, r"(?i)hash", "duplicate hash: the reason says hash")

    def test_hash_uppercase(self):
        self.check_rejected(variant(l13="    hash: sha256:" + H2[7:].upper()), 13, ["hash"],
                            "hash in uppercase hex")

    def test_hash_too_short(self):
        self.check_rejected(variant(l13="    hash: " + H2[:-1]), 13, ["hash"],
                            "hash of 63 hex digits")

    def test_hash_too_long(self):
        self.check_rejected(variant(l13="    hash: " + H2 + "0"), 13, ["hash"],
                            "hash of 65 hex digits")

    def test_hash_not_hex(self):
        self.check_rejected(variant(l13="    hash: sha256:" + "g" * 64), 13, ["hash"],
                            "hash with non-hex digits")

    def test_hash_without_algorithm(self):
        self.check_rejected(variant(l13="    hash: " + H2[7:]), 13, ["hash"],
                            "hash without the sha256: prefix")

    def test_scopes_scalar(self):
        self.check_rejected(variant(l15="    scopes: a:read"), 15, ["scope"],
                            "scopes given as a single string")

    def test_scopes_map(self):
        self.check_rejected(variant(l15="    scopes: {a: read}"), 15, ["scope"],
                            "scopes given as a map")

    def test_scopes_nested_list(self):
        self.check_rejected(variant(l15="    scopes: [[a:read]]"), 15, ["scope"],
                            "scopes holding a list")

    def test_bad_timestamp_text(self):
        self.check_rejected(variant(l11="    created_at: yesterday"), 11, ["time"],
                            "created_at that is not a timestamp")

    def test_bad_timestamp_date(self):
        self.check_rejected(variant(l11="    expires_at: 2027-02-30T00:00:00Z"), 11, ["time"],
                            "expires_at on February 30th")

    def test_bad_timestamp_revoked(self):
        self.check_rejected(variant(l11="    revoked_at: 2026-13-01T00:00:00Z"), 11, ["time"],
                            "revoked_at in month 13")

    def test_unknown_field(self):
        self.check_rejected(variant(l9="    colour: red"), 9, [r"unknown field"],
                            "unknown field in a key record")

    def test_unknown_top_level_field(self):
        text = variant() + "extra: 1\n"
        self.check_rejected(text, 16, [r"unknown field"], "unknown top-level field")

    def test_bad_environment(self):
        self.check_rejected(variant(l4="  jfi_sk_test_: staging"), 4, ["live|test|environment"],
                            "prefix mapped to an unknown environment")

    def test_missing_required_field(self):
        # key_b without hash: reported at the record
        lines = variant().splitlines()
        del lines[12]
        self.check_rejected("\n".join(lines) + "\n", 12, ["hash"], "record without hash")

    def test_missing_file(self):
        n, path = self.configure(None, file_name="does-not-exist.yaml")
        rc, out = n.test_config()
        self.assertNotEqual(rc, 0, "nginx -t fails for a missing key file")
        self.assertIn(path, out, "the message names the missing file; output:\n%s" % out)

    # -- accepted variants

    def test_block_style_and_comments(self):
        text = "\n".join([
            "# keys for tests",
            "version: 1",
            "prefixes: {jfi_sk_live_: live}",
            "keys:",
            "  - id: \"key_a\"   # quoted",
            "    hash: '%s'" % H1,
            "    owner: user_1",
            "    organization_id: null",
            "    scopes:",
            "      - a:read",
            "      - b:read",
            "    created_at: 2026-11-01T00:00:00Z",
            "    expires_at: 2099-01-01T02:00:00+02:00",
            "    limits: {write: 500r/m}",
            "",
        ])
        self.check_ok(text, "block lists, quotes, comments, null org, offsets, limits")

    def test_empty_key_list(self):
        self.check_ok("version: 1\nkeys: []\n", "a file with no keys")

    def test_no_prefixes_section(self):
        self.check_ok("version: 1\nkeys:\n  - id: k\n    hash: %s\n    owner: u\n" % H1,
                      "no prefixes: section")

    # -- zone size

    def test_zone_too_small(self):
        lines = ["version: 1", "prefixes:", "  jfi_sk_live_: live", "keys:"]
        for i in range(3000):
            lines.append("  - {id: key_%05d, hash: %s, owner: user_%d, plan: pro, "
                         "scopes: [a:read], expires_at: %s}"
                         % (i, key_hash(new_key()), i % 50, FUTURE))
        text = "\n".join(lines) + "\n"
        n, path = self.configure(text, zone="64k")
        rc, out = n.test_config()
        self.assertNotEqual(rc, 0, "nginx -t fails when the zone cannot hold the table")
        self.assertRegex(out, r"(?i)small|enough|need|requir",
                         "the message says the zone is too small; output:\n%s" % out)
        need = needed_bytes(out)
        self.assertIsNotNone(need, "the message says how much is needed; output:\n%s" % out)
        self.assertGreater(need, 64 * 1024, "the stated need exceeds the 64k given")
        # the stated size must be enough
        size = "%dk" % ((need + 1023) // 1024)
        n.write_config(HTTP.replace("ZONE", size).replace("FILE", path))
        rc, out2 = n.test_config()
        self.assertEqual(rc, 0, "a zone of the stated size (%s) is enough; output:\n%s"
                         % (size, out2))
