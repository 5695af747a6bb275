"""SPEC api_key_zone: the key file is loaded at start and at every
`nginx -s reload`; a file that fails validation fails the reload and the
running table keeps serving."""

import os
import unittest

from harness import PAST, KeyFile, Nginx, bearer, new_key

HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        api_key keys;
        location / {
            proxy_pass http://127.0.0.1:{upstream};
        }
    }
"""


class ReloadTest(unittest.TestCase):
    """A fresh nginx per test."""

    def setUp(self):
        self.nginx = Nginx(HTTP, name="reload")
        self.addCleanup(self.nginx.cleanup)  # runs even if start() fails
        self.kf = KeyFile()
        self.k1 = self.kf.add("key_one", plan="pro", scopes=["a:read"])
        self.k2 = self.kf.add("key_two", plan="pro", scopes=["a:read"])
        self.keyfile = self.nginx.path("keys.yaml")
        self.kf.write(self.keyfile)
        self.nginx.start()

    def code(self, key):
        r = self.nginx.get("/", bearer(key))
        if r.status == 200:
            return 200, None
        return r.status, r.json()["error"]["code"]

    def test_reload_revokes(self):
        self.assertEqual(self.code(self.k1), (200, None), "key accepted before the reload")
        self.kf.record("key_one")["revoked_at"] = PAST
        self.kf.write(self.keyfile)
        self.assertEqual(self.code(self.k1), (200, None),
                         "a changed file has no effect before the reload (no check=)")
        self.nginx.reload()
        self.assertEqual(self.code(self.k1), (401, "revoked_api_key"),
                         "after the reload the revoked key is refused")
        self.assertEqual(self.code(self.k2), (200, None), "other keys still accepted")

    def test_reload_adds(self):
        k3 = new_key()
        self.assertEqual(self.code(k3), (401, "invalid_api_key"), "unknown before the reload")
        self.kf.add("key_three", key=k3, plan="pro")
        self.kf.write(self.keyfile)
        self.nginx.reload()
        self.assertEqual(self.code(k3), (200, None), "a key added by reload is accepted")
        self.assertEqual(self.code(self.k1), (200, None), "existing keys still accepted")

    def test_reload_removes(self):
        self.kf.records = [r for r in self.kf.records if r["id"] != "key_two"]
        self.kf.write(self.keyfile)
        self.nginx.reload()
        self.assertEqual(self.code(self.k2), (401, "invalid_api_key"),
                         "a key removed from the file is unknown after the reload")

    def test_reload_with_broken_file_keeps_old_table(self):
        k3 = new_key()
        self.kf.add("key_three", key=k3, plan="pro")
        self.kf.record("key_one")["revoked_at"] = PAST
        self.kf.add("key_one", plan="pro")  # duplicate id: the file is invalid
        self.kf.write(self.keyfile)
        log = self.nginx.reload(expect_failure=True)
        self.assertIn(self.keyfile + ":", log, "the failed reload names the file in error.log")
        self.assertRegex(log, r"(?i)duplicate", "the failed reload says why")
        for _ in range(4):  # both workers, whichever answers
            self.assertEqual(self.code(self.k1), (200, None),
                             "the old table keeps serving: key_one not revoked")
            self.assertEqual(self.code(k3), (401, "invalid_api_key"),
                             "the old table keeps serving: key_three not added")

        # fixing the file and reloading again applies it
        self.kf.records.pop()
        self.kf.write(self.keyfile)
        self.nginx.reload()
        self.assertEqual(self.code(self.k1), (401, "revoked_api_key"),
                         "after a good reload the revocation applies")
        self.assertEqual(self.code(k3), (200, None), "after a good reload the new key works")

    def test_reload_with_missing_file_keeps_old_table(self):
        os.rename(self.keyfile, self.keyfile + ".gone")
        self.nginx.reload(expect_failure=True)
        self.assertEqual(self.code(self.k1), (200, None),
                         "a missing file fails the reload; the old table serves")

    def test_many_reloads(self):
        for i in range(5):
            k = new_key()
            self.kf.add("key_r%d" % i, key=k)
            self.kf.write(self.keyfile)
            self.nginx.reload()
            self.assertEqual(self.code(k), (200, None), "key added by reload #%d" % (i + 1))
        self.assertEqual(self.code(self.k1), (200, None), "first key survives 5 reloads")
