"""SPEC "Enforcement promises", continued: loading and zone boundaries.

* LoadStallTest: a check= load of a 300,000-key file does not hold up
  requests: keep-alive clients on both workers never wait 300 ms or more
  while the new version is loaded (a coarse bound, not a benchmark).
* HostilePathTest: a FIFO or a directory at the key-file path is an error
  that names the file: `nginx -t` fails at once instead of hanging; under
  check= the workers keep serving, api_key_status reports the error, and a
  good file that returns is loaded.
* BudgetPerZoneServersTest / BudgetPerZoneLocationsTest: two key zones
  sharing one limit zone never share a budget, whether by key id, owner or
  organization, with the zones in two servers or in two locations.
"""

import os
import socket
import subprocess
import threading
import time
import unittest

from harness import (KeyFile, Nginx, NginxCase, NginxError, bearer, key_hash, needed_bytes,
                     new_key, request)
from test_table_lifecycle import STATUS_LOCATION, TableCase, code_of, zone_status


# --------------------------------------------------------------------------
# 5. loading never stalls request processing

LOAD_HTTP = """
    api_key_zone keys:ZONE file={prefix}/big.yaml check=500ms;

    server {
        # one socket per worker: the clients' connections land on both
        listen 127.0.0.1:{port} reuseport;
        server_name localhost;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
        add_header X-Worker $pid always;
        api_key keys;

        location / {
            empty_gif;
        }
STATUS
    }
""".replace("STATUS", STATUS_LOCATION)


class KeepAlive:
    """One persistent HTTP/1.1 connection (responses with Content-Length)."""

    def __init__(self, port, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def get(self, path, headers):
        """(status, {lowercase header: value}) of one GET."""
        lines = ["GET %s HTTP/1.1" % path, "Host: localhost"]
        lines += ["%s: %s" % h for h in headers]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside the response head")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        text = head.decode("latin-1").split("\r\n")
        hdrs = {}
        for line in text[1:]:
            name, _, value = line.partition(":")
            hdrs[name.strip().lower()] = value.strip()
        length = int(hdrs.get("content-length", "0"))
        while len(body) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside the response body")
            body += chunk
        return int(text[0].split(" ", 2)[1]), hdrs

    def close(self):
        self.sock.close()


def big_key_file(n, fixed):
    """YAML text of n keys in block style (as test_big writes it); fixed:
    {index: sha256 hex} for the records whose keys the test knows."""
    raw = os.urandom(32 * n).hex()
    parts = ["version: 1\nprefixes:\n  jfi_sk_live_: live\nkeys:\n"]
    append = parts.append
    for i in range(n):
        h = fixed.get(i) or raw[64 * i:64 * i + 64]
        append("  - id: key_%07d\n    hash: sha256:%s\n    owner: user_%d\n    plan: pro\n"
               % (i, h, i % 1000))
    return "".join(parts)


def zone_estimate(n):
    """A generous zone for two tables of n keys (as test_big estimates)."""
    buckets = 2
    while buckets < 2 * n:
        buckets <<= 1
    raw = 2 * (104 * n + 4 * buckets + 12 * n) + (1 << 16)
    return "%dm" % ((raw * 5 // 4 + (16 << 20)) // (1 << 20))


class LoadStallTest(TableCase):
    KEYS = 300000
    CONNECTIONS = 8
    BOUND = 0.300  # seconds

    def test_check_load_does_not_stall_requests(self):
        stable, old_marker, new_marker = new_key(), new_key(), new_key()
        hexof = lambda k: key_hash(k)[7:]
        t_gen = time.monotonic()
        v1 = big_key_file(self.KEYS, {0: hexof(stable), 1: hexof(old_marker)})
        v2 = big_key_file(self.KEYS, {0: hexof(stable), 1: hexof(new_marker)})
        self.assertEqual(len(v1), len(v2), "premise: both versions have the same size")
        print("\n    %d keys, %.0f MB per version, generated in %.1fs"
              % (self.KEYS, len(v1) / 1e6, time.monotonic() - t_gen))

        zone = zone_estimate(self.KEYS)
        http = LOAD_HTTP.replace("ZONE", zone)
        try:
            self.start_nginx(http, {"big.yaml": v1}, name="loadstall")
        except NginxError as e:
            need = needed_bytes(str(e))
            if not need:
                raise
            zone = "%dm" % ((need >> 20) + 2)
            self.nginx.allow_emerg = True  # the "too small" of the first try
            self.nginx.write_config(LOAD_HTTP.replace("ZONE", zone))
            self.nginx.start(timeout=60)
        del v1
        gen = self.status(timeout=10)["generation"]

        # connections on both workers, at least two each
        conns, per_worker = [], {}
        self.addCleanup(lambda: [c.close() for c, _ in conns])
        workers = set(self.nginx.workers())
        for _ in range(60):
            if len(conns) >= self.CONNECTIONS and all(per_worker.get(w, 0) >= 2 for w in workers):
                break
            c = KeepAlive(self.nginx.port)
            status, hdrs = c.get("/", bearer(stable))
            self.assertEqual(status, 200, "the stable key is accepted")
            w = int(hdrs.get("x-worker", 0))
            if per_worker.get(w, 0) >= self.CONNECTIONS // 2:
                c.close()
                continue
            per_worker[w] = per_worker.get(w, 0) + 1
            conns.append((c, w))
        self.assertTrue(all(per_worker.get(w, 0) >= 2 for w in workers),
                        "premise: keep-alive connections on every worker: %s" % per_worker)

        samples = []  # (start, latency, worker, status or error)
        lock = threading.Lock()
        stop = threading.Event()

        def client(c, w):
            while not stop.is_set():
                t = time.monotonic()
                try:
                    status, _ = c.get("/", bearer(stable))
                except Exception as e:
                    with lock:
                        samples.append((t, time.monotonic() - t, w, "%s: %s"
                                        % (type(e).__name__, e)))
                    return
                with lock:
                    samples.append((t, time.monotonic() - t, w, status))
        threads = [threading.Thread(target=client, args=cw, daemon=True, name="ka-client")
                   for cw in conns]
        for th in threads:
            th.start()
        self.addCleanup(lambda: (stop.set(), [th.join(15) for th in threads]))

        path = self.nginx.path("big.yaml")
        with open(path + ".next", "w") as f:
            f.write(v2)
        del v2
        time.sleep(0.5)  # baseline traffic
        t0 = time.monotonic()
        os.replace(path + ".next", path)
        deadline = t0 + 30
        while True:
            try:
                st = zone_status(self.nginx.port, timeout=10)
                if st["generation"] > gen:
                    break
            except (OSError, TimeoutError):
                pass
            self.assertLess(time.monotonic(), deadline,
                            "the new version is loaded within 30 s")
            time.sleep(0.02)
        t1 = time.monotonic()
        time.sleep(0.3)
        stop.set()
        for th in threads:
            th.join(15)

        window = [s for s in samples if t0 - 0.05 <= s[0] + s[1] and s[0] <= t1 + 0.3]
        errors = [s for s in samples if s[3] != 200]
        self.assertEqual(errors, [], "every request with the stable key was answered 200")
        by_worker = {}
        for s in window:
            by_worker.setdefault(s[2], []).append(s[1])
        self.assertEqual(set(by_worker), workers,
                         "premise: every worker answered requests while the new version "
                         "was loaded: %s" % {w: len(v) for w, v in by_worker.items()})
        worst = max(s[1] for s in window)
        print("    load seen %.2fs after the rename; %d requests in that time, slowest %.0f ms "
              "(per worker: %s)" % (t1 - t0, len(window), worst * 1000,
                                    {w: "%.0f ms" % (max(v) * 1000) for w, v in by_worker.items()}))
        self.assertLess(worst, self.BOUND,
                        "loading a %d-key version under check= holds up no request: the slowest "
                        "of %d requests during the %.2fs load took %.0f ms (bound %.0f ms)"
                        % (self.KEYS, len(window), t1 - t0, worst * 1000, self.BOUND * 1000))
        self.assertEqual(self.outcome(new_marker), (200, None), "the new version is in force")
        self.assertEqual(self.outcome(old_marker), (401, "invalid_api_key"),
                         "the old version's marker key is gone")


# --------------------------------------------------------------------------
# 6. hostile paths at file=

HOSTILE_HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml CHECK;

    server {
        listen 127.0.0.1:{port} reuseport;
        server_name localhost;
        api_key keys;

        location / {
            empty_gif;
        }
STATUS
    }
""".replace("STATUS", STATUS_LOCATION)


class HostilePathTest(TableCase):

    def setUp(self):
        self.kf = KeyFile()
        self.k = self.kf.add("key_k", plan="pro")
        self.kf.add("marker", plan="pro")

    def nginx_t_refuses(self, make_path, what, reason_re):
        """nginx -t with `make_path` at the key-file path: fails within 5 s,
        naming the file."""
        n = Nginx(HOSTILE_HTTP.replace("CHECK", ""), name="hostile-t")
        n.allow_emerg = True
        self.addCleanup(n.cleanup)
        path = n.path("keys.yaml")
        make_path(path)
        self.addCleanup(unblock_fifo, path)
        t0 = time.monotonic()
        try:
            rc, out = n.test_config(timeout=10)
        except subprocess.TimeoutExpired:
            self.fail("nginx -t with %s at the key-file path hangs (killed after 10 s) instead "
                      "of failing with an error naming the file" % what)
        took = time.monotonic() - t0
        self.assertNotEqual(rc, 0, "nginx -t fails with %s at the key-file path:\n%s" % (what, out))
        self.assertLess(took, 5.0, "nginx -t gives up on %s within 5 s (took %.1fs)" % (what, took))
        self.assertIn(path, out, "the error names the key file:\n%s" % out)
        self.assertRegex(out, reason_re, "the error says what is wrong with %s" % what)

    def test_fifo_nginx_t(self):
        self.nginx_t_refuses(os.mkfifo, "a FIFO", r"(?i)regular|fifo|pipe")

    def test_directory_nginx_t(self):
        self.nginx_t_refuses(os.mkdir, "a directory", r"(?i)regular|directory")

    def start_checking(self):
        self.start_nginx(HOSTILE_HTTP.replace("CHECK", "check=200ms"), {"keys.yaml": self.kf},
                         name="hostile")
        self.keyfile = self.nginx.path("keys.yaml")
        self.gen = self.status()["generation"]
        self.assertEqual(self.outcome(self.k), (200, None), "K accepted at start")

    def keep_serving(self, seconds, what):
        """Requests on new connections (both workers, reuseport) are
        answered within 1 s for `seconds`; returns the last status object
        that reported an error, if any."""
        end = time.monotonic() + seconds
        n = 0
        reported = None
        while time.monotonic() < end:
            try:
                got = code_of(request(self.nginx.port, "GET", "/", bearer(self.k), timeout=1.0))
            except (TimeoutError, OSError) as e:
                self.fail("%s: every request is answered within 1 s; request #%d was not (%s: %s)"
                          % (what, n, type(e).__name__, e))
            self.assertEqual(got, (200, None), "%s: the table in force keeps serving (#%d)"
                             % (what, n))
            if n % 5 == 0:
                try:
                    st = zone_status(self.nginx.port, timeout=1.0)
                except (TimeoutError, OSError) as e:
                    self.fail("%s: api_key_status answers within 1 s (%s)" % (what, e))
                if st["last_error"]:
                    reported = st
            n += 1
            time.sleep(0.05)
        return reported

    def back_to_good_file(self, what):
        new = self.kf.add("key_new", plan="pro")
        self.put("keys.yaml", self.kf)
        self.wait_outcome(new, (200, None), 2.2, "%s: a good file that returns is loaded" % what)
        st = self.wait_generation(self.gen + 1, 1.0, "%s: status shows the good file" % what)
        self.assertIsNone(st["last_error"], "%s: last_error is null after the good load" % what)

    def test_fifo_renamed_over_key_file(self):
        self.start_checking()
        fifo = self.nginx.path("keys.fifo")
        os.mkfifo(fifo)
        self.addCleanup(unblock_fifo, fifo)
        os.link(fifo, self.keyfile + ".new")
        os.rename(self.keyfile + ".new", self.keyfile)
        reported = self.keep_serving(3.0, "a FIFO renamed over the key file")
        self.assertIsNotNone(reported, "api_key_status reports an error for the FIFO within 3 s "
                             "(check=200ms)")
        self.assertIn(self.keyfile, reported["last_error"], "last_error names the key file")
        self.assertEqual(reported["generation"], self.gen, "no table was installed from a FIFO")
        self.back_to_good_file("after the FIFO")

    def test_directory_at_key_file_path(self):
        self.start_checking()
        os.unlink(self.keyfile)
        os.mkdir(self.keyfile)
        self.addCleanup(lambda: os.path.isdir(self.keyfile) and os.rmdir(self.keyfile))
        reported = self.keep_serving(2.0, "a directory at the key-file path")
        self.assertIsNotNone(reported, "api_key_status reports an error for the directory")
        self.assertIn(self.keyfile, reported["last_error"], "last_error names the key file")
        self.assertRegex(reported["last_error"], r"(?i)regular|directory",
                         "last_error says the path is not a regular file")
        os.rmdir(self.keyfile)
        self.back_to_good_file("after the directory")


def unblock_fifo(path):
    """Opens a FIFO for writing and closes it, so that a process blocked
    opening it for reading gets EOF and goes on (no-op if none is)."""
    for _ in range(20):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader; ENOENT, not a FIFO: nothing to do
            return
        os.close(fd)
        time.sleep(0.05)


# --------------------------------------------------------------------------
# 7. budgets are per key zone

LIMIT_LOCATIONS = """
        location /PFX/key/ {
            api_key ZONE;
            api_key_limit lz read 2r/m;
            empty_gif;
        }
        location /PFX/owner/ {
            api_key ZONE;
            api_key_limit lz read 2r/m;
            api_key_limit_by owner;
            empty_gif;
        }
        location /PFX/org/ {
            api_key ZONE;
            api_key_limit lz read 2r/m;
            api_key_limit_by organization;
            empty_gif;
        }
"""


def limit_locations(prefix, zone):
    return LIMIT_LOCATIONS.replace("PFX", prefix).replace("ZONE", zone)


BUDGET_ZONES = """
    api_key_zone keys_a:1m file={prefix}/a.yaml;
    api_key_zone keys_b:1m file={prefix}/b.yaml;
    api_key_limit_zone lz:1m;
"""

# zone A behind {port}, zone B behind {port2}; same paths
TWO_SERVERS_HTTP = BUDGET_ZONES + """
    server {
        listen 127.0.0.1:{port};
        server_name localhost;
%s
    }
    server {
        listen 127.0.0.1:{port2};
        server_name localhost;
%s
    }
""" % (limit_locations("z", "keys_a"), limit_locations("z", "keys_b"))

# one server: /a/... uses zone A, /b/... zone B
TWO_LOCATIONS_HTTP = BUDGET_ZONES + """
    server {
        listen 127.0.0.1:{port};
        server_name localhost;
%s%s
    }
""" % (limit_locations("a", "keys_a"), limit_locations("b", "keys_b"))


class BudgetPerZone:
    # a mixin: only its subclasses with a configuration are test cases
    """a.yaml and b.yaml have records with the same id, the same owner and
    the same organization (different keys); one limit zone, 2r/m."""

    @classmethod
    def prepare(cls, nginx):
        a, b = KeyFile(), KeyFile()
        cls.keys = {}
        for name, kf in (("a", a), ("b", b)):
            cls.keys[name] = {
                "key": kf.add("key_shared", owner="user_key_" + name, plan="pro"),
                "owner": kf.add("key_owner_" + name, owner="owner_shared", plan="pro"),
                "org": kf.add("key_org_" + name, owner="user_org_" + name,
                              organization_id="org_shared", plan="pro"),
            }
        a.write(nginx.path("a.yaml"))
        b.write(nginx.path("b.yaml"))

    def where(self, zone, by):
        """(port, path) of the location of zone 'a' or 'b' limited by `by`."""
        raise NotImplementedError

    def run_budget(self, by):
        key_a, key_b = self.keys["a"][by], self.keys["b"][by]
        port_a, path_a = self.where("a", by)
        port_b, path_b = self.where("b", by)
        for i in (1, 2):
            got = code_of(request(port_a, "GET", path_a, bearer(key_a)))
            self.assertEqual(got, (200, None), "zone A, limit_by %s: request %d of 2r/m accepted"
                             % (by, i))
        got = code_of(request(port_a, "GET", path_a, bearer(key_a)))
        self.assertEqual(got, (429, "rate_limit_exceeded"),
                         "zone A, limit_by %s: the 3rd request is refused (budget spent)" % by)
        for i in (1, 2):
            got = code_of(request(port_b, "GET", path_b, bearer(key_b)))
            self.assertEqual(got, (200, None),
                             "zone B's key with the same %s has its own full budget: request %d "
                             "of 2 accepted after zone A's budget was spent (budgets are per key "
                             "zone)" % ({"key": "id", "owner": "owner", "org": "organization"}[by],
                                         i))
        got = code_of(request(port_b, "GET", path_b, bearer(key_b)))
        self.assertEqual(got, (429, "rate_limit_exceeded"),
                         "zone B, limit_by %s: its own budget is spent after 2" % by)

    def test_same_key_id(self):
        self.run_budget("key")

    def test_same_owner(self):
        self.run_budget("owner")

    def test_same_organization(self):
        self.run_budget("org")


class BudgetPerZoneServersTest(BudgetPerZone, NginxCase):
    HTTP = TWO_SERVERS_HTTP
    PORTS = ("port", "port2")

    def where(self, zone, by):
        port = self.nginx.vars["port" if zone == "a" else "port2"]
        return port, "/z/%s/x" % by


class BudgetPerZoneLocationsTest(BudgetPerZone, NginxCase):
    HTTP = TWO_LOCATIONS_HTTP

    def where(self, zone, by):
        return self.nginx.port, "/%s/%s/x" % (zone, by)


if __name__ == "__main__":
    unittest.main()
