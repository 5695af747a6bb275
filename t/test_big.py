"""A 1,000,000-key file: nginx -t and start succeed, known keys are accepted.
Prints the load time (timed nginx -t) and the zone size used."""

import os
import sys
import time
import unittest

from harness import Nginx, bearer, key_hash, needed_bytes, new_key

N = int(os.environ.get("BIG_KEYS", "1000000"))

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
    }
"""


def estimate_zone(n, file_bytes):
    """A generous guess at the zone a table of n keys needs: room for two
    tables (the one in use and the next, for reloads and check=) of 104-byte
    records, a power-of-two bucket array of uint32 at load <= 1/2 and the
    strings, plus a quarter and 16 MiB of slack for allocator overhead."""
    buckets = 2
    while buckets < 2 * n:
        buckets <<= 1
    strings = n * 12
    raw = 2 * (104 * n + 4 * buckets + strings) + (1 << 16)
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
        path = n.write_file("big.yaml", text)
        zone = estimate_zone(N, len(text))
        say("generated %d keys, %.0f MB of YAML in %.1fs"
            % (N, len(text) / 1e6, time.monotonic() - t0))
        del text

        n.write_config(HTTP.replace("ZONE", zone))
        t1 = time.monotonic()
        rc, out = n.test_config(timeout=300)
        took = time.monotonic() - t1
        if rc != 0 and needed_bytes(out):
            # our estimate was low; the module said what it needs
            zone = "%dm" % ((needed_bytes(out) + (1 << 20) - 1) // (1 << 20))
            say("zone estimate too small, module asked for %s: %s" % (zone, out.strip()))
            n.write_config(HTTP.replace("ZONE", zone))
            t1 = time.monotonic()
            rc, out = n.test_config(timeout=300)
            took = time.monotonic() - t1
        self.assertEqual(rc, 0, "nginx -t accepts a 1M-key file in a %s zone:\n%s" % (zone, out))
        say("nginx -t (one full load of the key file): %.1fs, zone %s" % (took, zone))

        t2 = time.monotonic()
        n.start(timeout=300)
        say("nginx start: %.1fs" % (time.monotonic() - t2))

        for i, key in known.items():
            r = n.get("/", bearer(key))
            self.assertEqual(r.status, 200, "known key #%d of %d accepted; got %r" % (i, N, r))
        r = n.get("/", bearer(new_key()))
        self.assertEqual(r.status, 401, "an unknown key is refused with 1M keys loaded")
        self.assertEqual(r.json()["error"]["code"], "invalid_api_key",
                         "unknown key: invalid_api_key")
        say("total %.1fs" % (time.monotonic() - t0))
