"""A 1,000,000-key file: nginx -t and start succeed, known keys are accepted.
Prints the load time (timed nginx -t), the smallest zone the module asks for
(two tables and the usage counters, in bytes per key) and what the table in
force takes; nginx starts in that smallest zone and reloads in it (the new
table beside the old one)."""

import math
import os
import sys
import time
import unittest

from harness import Nginx, bearer, key_hash, needed_bytes, new_key, request

N = int(os.environ.get("BIG_KEYS", "1000000"))

# SPEC/README "Sizing and performance": a million keys need at most this
# much zone per key (two tables + usage counters).
MAX_ZONE_BYTES_PER_KEY = 200

HTTP = """
    api_key_zone keys:ZONE file={prefix}/big.yaml;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        api_key keys;
        location / {
            api_key_scope a:read;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location = /status {
            api_key off;
            api_key_status;
        }
    }
"""


def estimate_zone(n):
    """A generous guess at the zone a table of n keys needs: room for two
    tables (the one in force and the next, for reloads and check=) of
    72-byte records, a uint32 bucket start per two keys and the strings
    (length byte and id, about 12 bytes), a sixteenth more for the usage
    counters, plus a quarter and 16 MiB of slack."""
    table = 72 * n + 4 * (n // 2 + 2) + 12 * n
    raw = 2 * table * 16 // 15 + (1 << 16)
    return "%dm" % ((raw * 5 // 4 + (16 << 20)) // (1 << 20))


def say(text):
    sys.stdout.write("      [big] %s\n" % text)
    sys.stdout.flush()


class BigTest(unittest.TestCase):

    def setUp(self):
        self.nginx = None

    def tearDown(self):
        if self.nginx is not None:
            self.nginx.cleanup()

    def timed_test_config(self, zone):
        self.nginx.write_config(HTTP.replace("ZONE", zone))
        t = time.monotonic()
        rc, out = self.nginx.test_config(timeout=300)
        return rc, out, time.monotonic() - t

    def test_million_keys(self):
        t0 = time.monotonic()
        known = {0: new_key(), N // 2: new_key(), N - 1: new_key()}
        known_hash = {i: key_hash(k)[7:] for i, k in known.items()}
        raw = os.urandom(32 * N).hex()
        lines = ["version: 1", "prefixes:", "  jfi_sk_live_: live", "keys:"]
        append = lines.append
        for i in range(N):
            h = known_hash.get(i) or raw[64 * i:64 * i + 64]
            # Block style, as apikeyctl writes it (the fast reader's subset).
            append("  - id: key_%07d\n    hash: sha256:%s\n    owner: user_%d\n"
                   "    plan: pro\n    scopes: [a:read]" % (i, h, i % 1000))
        text = "\n".join(lines) + "\n"
        del raw, lines

        self.nginx = n = Nginx(name="big")
        n.write_file("big.yaml", text)
        zone = estimate_zone(N)
        say("generated %d keys, %.0f MB of YAML in %.1fs"
            % (N, len(text) / 1e6, time.monotonic() - t0))
        del text

        rc, out, took = self.timed_test_config(zone)
        if rc != 0 and needed_bytes(out):
            # our estimate was low; the module said what it needs
            zone = "%dm" % ((needed_bytes(out) + (1 << 20) - 1) // (1 << 20))
            say("zone estimate too small, module asked for %s: %s" % (zone, out.strip()))
            rc, out, took = self.timed_test_config(zone)
        self.assertEqual(rc, 0, "nginx -t accepts a 1M-key file in a %s zone:\n%s" % (zone, out))
        say("nginx -t (one full load of the key file): %.2fs, zone %s" % (took, zone))

        # The smallest zone, as the module states it for a zone too small
        # (its [emerg] is expected; none may come after it).
        n.allow_emerg = True
        rc, out, _ = self.timed_test_config("1m")
        log_offset = n.error_log_size()
        self.assertNotEqual(rc, 0, "a 1m zone is too small for %d keys" % N)
        need = needed_bytes(out)
        self.assertIsNotNone(need, "the message says how much is needed:\n%s" % out)
        say("smallest zone %dk: %.1f bytes per key (two tables + usage counters)"
            % (need // 1024, need / N))
        if N >= 1000000:
            self.assertLessEqual(need / N, MAX_ZONE_BYTES_PER_KEY,
                                 "a million keys need at most %d bytes of zone each"
                                 % MAX_ZONE_BYTES_PER_KEY)

        # nginx starts in that zone, and reloads in it: the next table fits
        # beside the one in force.
        zone = "%dk" % math.ceil(need / 1024)
        rc, out, _ = self.timed_test_config(zone)
        self.assertEqual(rc, 0, "the stated smallest zone %s is enough:\n%s" % (zone, out))
        t2 = time.monotonic()
        n.start(timeout=300)
        say("nginx start: %.1fs, zone %s" % (time.monotonic() - t2, zone))
        z = request(n.port, "GET", "/status", timeout=30).json()["zones"][0]
        self.assertEqual(z["keys"], N)
        used = z["bytes_total"] - z["bytes_free"]
        say("in force: %.1f bytes per key used (one table, the usage counters and the "
            "zone's state), %.1f free (room for the next table)"
            % (used / N, z["bytes_free"] / N))

        for i, key in known.items():
            r = n.get("/", bearer(key))
            self.assertEqual(r.status, 200, "known key #%d of %d accepted; got %r" % (i, N, r))
        r = n.get("/", bearer(new_key()))
        self.assertEqual(r.status, 401, "an unknown key is refused with 1M keys loaded")
        self.assertEqual(r.json()["error"]["code"], "invalid_api_key",
                         "unknown key: invalid_api_key")

        t3 = time.monotonic()
        n.reload(timeout=300)
        say("reload in the smallest zone: %.1fs" % (time.monotonic() - t3))
        z = request(n.port, "GET", "/status", timeout=30).json()["zones"][0]
        self.assertEqual((z["keys"], z["last_error"]), (N, None),
                         "the reloaded table is in force")
        self.assertGreaterEqual(z["generation"], 2, "a new table was published")
        for i, key in known.items():
            r = n.get("/", bearer(key))
            self.assertEqual(r.status, 200, "after the reload, known key #%d accepted" % i)
        self.assertEqual(n.log_problems(log_offset, allow_emerg=False), [],
                         "no [emerg], [alert] or crash from the start on")
        say("total %.1fs" % (time.monotonic() - t0))
