"""SPEC api_key_zone check=TIME: workers notice a changed key file within
TIME and swap in the new table without a reload; a version that fails keeps
the old table in force and is logged once; many swaps in a small zone leak
nothing; a long request in flight (holding the table it started with) does
not stop later versions from being loaded once it is over.

Files are always replaced atomically (temp file + rename, as apikeyctl
does), so nginx never sees a half-written file."""

import os
import re
import socket
import threading
import time
import unittest

from harness import (PAST, KeyFile, Nginx, bearer, key_file_text, key_hash, needed_bytes,
                     new_key, wait_until)

HTTP = """
    api_key_zone keys:ZONE file={prefix}/keys.yaml check=CHECK;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        api_key keys;
        location / {
            empty_gif;
        }
        location = /status {
            api_key off;
            api_key_status;
            allow 127.0.0.1;
            deny all;
        }
    }
"""

LOADED_RE = r'\[notice\] .*api_key_zone "keys": loaded (\d+) keys from "%s" \(generation (\d+)\)'
KEPT = "; the key table loaded before stays in force"


def outcome(nginx, key):
    """(status, error code or None) of GET / with this key, on a new connection."""
    r = nginx.get("/", bearer(key))
    if r.status == 200:
        return 200, None
    try:
        return r.status, r.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return r.status, "non-JSON body %r" % r.body[:80]


def zone_status(nginx, name="keys"):
    """This zone's object from the JSON status."""
    r = nginx.get("/status")
    if r.status != 200:
        raise AssertionError("GET /status answered %r" % r)
    for z in r.json()["zones"]:
        if z["zone"] == name:
            return z
    raise AssertionError("zone %r not in the status: %s" % (name, r.text[:500]))


def error_lines(nginx, offset, needle):
    """[error] lines of the error log (from offset) that contain needle."""
    return [line for line in nginx.error_log(offset).splitlines()
            if "[error]" in line and needle in line]


class LiveCase(unittest.TestCase):
    """A fresh nginx per test, key_one and key_two in the file."""

    ZONE = "1m"
    CHECK = "1s"
    CHECK_S = 1.0

    HTTP = HTTP
    VARS = None

    def setUp(self):
        self.nginx = Nginx(self.config(self.ZONE), vars=self.VARS, name="live")
        self.addCleanup(self.nginx.cleanup)  # fails the test on [alert] or a crash
        self.kf = KeyFile()
        self.k1 = self.kf.add("key_one", plan="pro")
        self.k2 = self.kf.add("key_two", plan="pro")
        self.keyfile = self.nginx.path("keys.yaml")
        self.prepare()
        self.kf.write(self.keyfile)
        self.size_zone()
        self.nginx.start()
        self.workers = set(self.nginx.workers())

    def config(self, zone):
        return self.HTTP.replace("ZONE", zone).replace("CHECK", self.CHECK)

    def prepare(self):
        """Adds records to self.kf before the file is first written."""

    def size_zone(self):
        """Called with the file written, before nginx starts."""

    def write(self, text=None):
        """Atomically replaces the key file (KeyFile's records by default);
        returns the monotonic time right after the rename."""
        tmp = self.keyfile + ".new"
        with open(tmp, "w") as f:
            f.write(self.kf.text() if text is None else text)
        os.rename(tmp, self.keyfile)
        return time.monotonic()

    def poll_outcome(self, key, want, since, timeout):
        """Seconds from `since` until key gets `want`, or None after timeout."""
        deadline = since + timeout
        while time.monotonic() < deadline:
            if outcome(self.nginx, key) == want:
                return time.monotonic() - since
            time.sleep(0.01)
        return None

    def wait_outcome(self, key, want, since, timeout=3.0, what=""):
        """Polls until key gets `want`; returns seconds since `since`, or
        fails the test after timeout."""
        deadline = since + timeout
        last = None
        while time.monotonic() < deadline:
            last = outcome(self.nginx, key)
            if last == want:
                return time.monotonic() - since
            time.sleep(0.01)
        self.fail("%s: %r within %.1fs of the rename (check=%s); still %r"
                  % (what, want, timeout, self.CHECK, last))

    def wait_log(self, offset, pattern, timeout=3.0, what=""):
        try:
            return wait_until(lambda: re.search(pattern, self.nginx.error_log(offset)),
                              timeout, what=what)
        except TimeoutError:
            self.fail("error.log shows %s within %.1fs; log since the change:\n%s"
                      % (what, timeout, self.nginx.error_log(offset)[-2000:]))

    def wait_generation(self, at_least, timeout=1.0):
        """The zone status once its generation is at least `at_least` (the
        number is published right after the table), or the last one read."""
        deadline = time.monotonic() + timeout
        while True:
            st = zone_status(self.nginx)
            if st["generation"] >= at_least or time.monotonic() >= deadline:
                return st
            time.sleep(0.02)

    def assertNoReload(self):
        self.assertEqual(set(self.nginx.workers()), self.workers,
                         "same worker processes: the change applied without a reload")


class LiveReloadTest(LiveCase):
    """check=1s: revoke and add by rename, timed."""

    def test_revoke_by_rename(self):
        self.assertEqual(outcome(self.nginx, self.k1), (200, None), "key_one accepted at first")
        before = zone_status(self.nginx)
        gen = before["generation"]
        offset = self.nginx.error_log_size()
        self.kf.record("key_one")["revoked_at"] = PAST
        t0 = self.write()
        delay = self.wait_outcome(self.k1, (401, "revoked_api_key"), t0,
                                  what="a revocation written by rename applies")
        print("\n    check=1s: revocation in force %.3fs after the rename" % delay)
        self.assertLessEqual(delay, 3.0, "revocation in force within 3 s with check=1s")
        for i in range(10):  # new connections: both workers, whichever answers
            self.assertEqual(outcome(self.nginx, self.k1), (401, "revoked_api_key"),
                             "once in force, every later request sees the revocation (#%d)" % i)
        self.assertEqual(outcome(self.nginx, self.k2), (200, None),
                         "the other key is still accepted by the new table")
        self.assertNoReload()
        m = self.wait_log(offset, LOADED_RE % re.escape(self.keyfile), 1.0,
                          what="the notice 'loaded N keys from ... (generation G)'")
        self.assertEqual(m.group(1), "2", "the notice counts the keys of the new file")
        self.assertEqual(int(m.group(2)), gen + 1, "the notice names the next generation")
        st = self.wait_generation(gen + 1)
        self.assertEqual(st["generation"], gen + 1, "status generation grew by one with the swap")
        self.assertIsNone(st["last_error"], "status last_error is null after the good load")
        self.assertIsNotNone(st["loaded_at"], "status loaded_at is set")
        self.assertGreaterEqual(st["loaded_at"], before["loaded_at"] or "",
                                "status loaded_at is the time of the new load (RFC 3339 "
                                "strings of one format compare in time order)")

    def test_add_by_rename(self):
        k3 = new_key()
        self.assertEqual(outcome(self.nginx, k3), (401, "invalid_api_key"),
                         "the new key is unknown before it is written")
        self.kf.add("key_three", key=k3, plan="pro")
        t0 = self.write()
        delay = self.wait_outcome(k3, (200, None), t0, what="a key added by rename is accepted")
        print("\n    check=1s: added key accepted %.3fs after the rename" % delay)
        self.assertLessEqual(delay, 3.0, "added key accepted within 3 s with check=1s")
        for i in range(6):
            self.assertEqual(outcome(self.nginx, k3), (200, None),
                             "every later request accepts the added key (#%d)" % i)
        self.assertEqual(outcome(self.nginx, self.k1), (200, None), "existing keys still accepted")
        self.assertNoReload()
        self.assertEqual(zone_status(self.nginx)["keys"], 3, "status counts the 3 keys now loaded")


class LiveEnvironmentTest(LiveCase):
    """check=1s at a location for live keys: a key's environment comes from
    the prefixes of the table in force, also for a key the worker has seen
    before (its digest, and the environment it had, are remembered)."""

    HTTP = HTTP.replace("location / {\n            empty_gif;",
                        "location / {\n            api_key_environment live;\n            empty_gif;")

    def test_prefix_to_test_by_rename(self):
        for i in range(6):  # both workers, whichever answers, see and remember the key
            self.assertEqual(outcome(self.nginx, self.k1), (200, None),
                             "key_one is live and accepted (#%d)" % i)
        self.kf.prefixes = {"jfi_sk_live_": "test"}
        t0 = self.write()
        self.wait_outcome(self.k1, (401, "invalid_api_key"), t0,
                          what="the prefix now names the test environment")
        for i in range(6):
            self.assertEqual(outcome(self.nginx, self.k1), (401, "invalid_api_key"),
                             "every later request reads the new prefix (#%d)" % i)
        self.kf.prefixes = {"jfi_sk_live_": "live"}
        t0 = self.write()
        self.wait_outcome(self.k1, (200, None), t0, what="the prefix is live again")
        self.assertNoReload()


class LiveReloadFailureTest(LiveCase):
    """check=250ms: broken and deleted files keep the old table; errors are
    logged once per change."""

    CHECK = "250ms"
    CHECK_S = 0.25

    def broken_with_duplicate(self, k3):
        """key_one revoked, key_three added, and a duplicate id: invalid.
        Returns (text, line of the duplicate record)."""
        self.kf.record("key_one")["revoked_at"] = PAST
        self.kf.add("key_three", key=k3, plan="pro")
        self.kf.add("key_two", plan="pro")  # duplicate id
        text, starts = key_file_text(self.kf.records, self.kf.prefixes)
        return text, starts[-1]

    def assertOldTable(self, k3, what):
        for i in range(4):  # new connections: both workers, whichever answers
            self.assertEqual(outcome(self.nginx, self.k1), (200, None),
                             "%s: the old table serves, key_one not revoked (#%d)" % (what, i))
            self.assertEqual(outcome(self.nginx, k3), (401, "invalid_api_key"),
                             "%s: the old table serves, key_three unknown (#%d)" % (what, i))

    def test_broken_file_keeps_old_table_logged_once(self):
        k3 = new_key()
        gen = zone_status(self.nginx)["generation"]
        offset = self.nginx.error_log_size()
        text, dup_line = self.broken_with_duplicate(k3)
        self.write(text)
        where = "%s:%d: " % (self.keyfile, dup_line)
        self.wait_log(offset, r'\[error\] .*api_key_zone "keys": ' + re.escape(where),
                      what="the [error] naming %s" % where)
        time.sleep(6 * self.CHECK_S)  # several check intervals of both workers
        lines = error_lines(self.nginx, offset, 'api_key_zone "keys": ')
        self.assertEqual(len(lines), 1,
                         "one broken version is logged exactly once after 6 check intervals; "
                         "got:\n" + "\n".join(lines))
        self.assertRegex(lines[0], "(?i)duplicate", "the error says why (duplicate id)")
        self.assertIn(KEPT, lines[0], "the error says the old table stays in force")
        self.assertOldTable(k3, "broken file")
        st = zone_status(self.nginx)
        self.assertIsInstance(st["last_error"], str, "status last_error is set after a failed load")
        self.assertIn(where, st["last_error"] or "", "status last_error names file:line")
        self.assertEqual(st["generation"], gen, "a failed load does not change the generation")
        self.assertEqual(st["keys"], 2, "status still counts the old table's 2 keys")
        self.assertNoReload()

        # a second, differently broken version is a new change: logged once more
        offset2 = self.nginx.error_log_size()
        self.kf.records.pop()  # drop the duplicate ...
        self.kf.record("key_two")["hash"] = "sha256:" + "zz" * 32  # ... and break a hash
        text, starts = key_file_text(self.kf.records, self.kf.prefixes)
        self.write(text)
        where2 = "%s:%d: " % (self.keyfile, starts[1] + 1)  # key_two's hash line
        self.wait_log(offset2, r'\[error\] .*api_key_zone "keys": ' + re.escape(where2),
                      what="the [error] naming %s" % where2)
        time.sleep(4 * self.CHECK_S)
        lines = error_lines(self.nginx, offset2, 'api_key_zone "keys": ')
        self.assertEqual(len(lines), 1, "a second broken version is logged once as well; got:\n"
                         + "\n".join(lines))
        self.assertOldTable(k3, "second broken file")

        # the fixed file is picked up
        offset3 = self.nginx.error_log_size()
        self.kf.record("key_two")["hash"] = key_hash(self.k2)
        t0 = self.write()
        self.wait_outcome(self.k1, (401, "revoked_api_key"), t0,
                          what="after the fix the revocation applies")
        self.assertEqual(outcome(self.nginx, k3), (200, None), "after the fix key_three works")
        self.assertEqual(outcome(self.nginx, self.k2), (200, None), "after the fix key_two works")
        m = self.wait_log(offset3, LOADED_RE % re.escape(self.keyfile), 1.0,
                          what="the notice for the fixed file")
        self.assertEqual(m.group(1), "3", "the fixed file's 3 keys are loaded")
        st = self.wait_generation(gen + 1)
        self.assertIsNone(st["last_error"], "status last_error is null after a good load")
        self.assertEqual(st["generation"], gen + 1,
                         "the fixed file is the next generation (failed loads used none)")
        self.assertEqual(st["keys"], 3, "status counts the fixed file's 3 keys")
        self.assertEqual(error_lines(self.nginx, offset3, 'api_key_zone "keys": '), [],
                         "no error logged for the good file")
        self.assertNoReload()

    def test_deleted_file_keeps_serving(self):
        gen = zone_status(self.nginx)["generation"]
        offset = self.nginx.error_log_size()
        os.rename(self.keyfile, self.keyfile + ".gone")
        self.wait_log(offset, r'\[error\] .*api_key_zone "keys": ' +
                      re.escape(self.keyfile + ": stat() failed"),
                      what="the [error] '%s: stat() failed: ...'" % self.keyfile)
        time.sleep(6 * self.CHECK_S)
        lines = error_lines(self.nginx, offset, 'api_key_zone "keys": ')
        self.assertEqual(len(lines), 1, "a missing file is logged exactly once after 6 check "
                         "intervals; got:\n" + "\n".join(lines))
        self.assertIn(KEPT, lines[0], "the error says the old table stays in force")
        for i in range(4):
            self.assertEqual(outcome(self.nginx, self.k1), (200, None),
                             "the table in force keeps serving without its file (#%d)" % i)
        st = zone_status(self.nginx)
        self.assertIn("stat() failed", st["last_error"] or "",
                      "status last_error says the file cannot be stat()ed")
        self.assertEqual(st["generation"], gen, "no load, same generation")
        self.assertEqual(st["keys"], 2, "still 2 keys in force")

        # a new file appears: loaded
        self.kf.record("key_one")["revoked_at"] = PAST
        t0 = self.write()
        self.wait_outcome(self.k1, (401, "revoked_api_key"), t0,
                          what="a file written after the deletion is loaded")
        self.assertEqual(outcome(self.nginx, self.k2), (200, None), "key_two still accepted")
        st = self.wait_generation(gen + 1)
        self.assertIsNone(st["last_error"], "last_error is null again after the load")
        self.assertEqual(st["generation"], gen + 1, "one more generation")
        self.assertNoReload()

    def test_file_moved_back_clears_error(self):
        """The file is moved away and back (an operator's slip): the file on
        disk is again the version in force, so no load error is reported
        any more. check= has nothing to load (the version is the one
        loaded), so the error must be cleared without a load."""
        offset = self.nginx.error_log_size()
        os.rename(self.keyfile, self.keyfile + ".gone")
        self.wait_log(offset, re.escape(self.keyfile + ": stat() failed"),
                      what="the missing file's error")
        os.rename(self.keyfile + ".gone", self.keyfile)
        time.sleep(4 * self.CHECK_S)
        self.assertEqual(outcome(self.nginx, self.k1), (200, None), "still serving")
        st = zone_status(self.nginx)
        self.assertIsNone(st["last_error"],
                          "once the very file in force is back (same inode, size, mtime), "
                          "status last_error is null again (api_key_zone_load_error 0): the "
                          "error describes a state that is over; got %r" % st["last_error"])


class LiveReloadAndReloadTest(LiveCase):
    """check= and nginx -s reload together load each version once."""

    CHECK = "250ms"
    CHECK_S = 0.25

    def test_reload_then_check_loads_once(self):
        gen = zone_status(self.nginx)["generation"]
        self.kf.record("key_one")["revoked_at"] = PAST
        self.write()
        self.nginx.reload()  # races check=: either may load the new version first
        self.assertEqual(outcome(self.nginx, self.k1), (401, "revoked_api_key"),
                         "after the reload the new version is in force")
        time.sleep(4 * self.CHECK_S)
        st = zone_status(self.nginx)
        self.assertIn(st["generation"], (gen + 1, gen + 2),
                      "the new version was loaded by the reload (and at most once by check=)")
        settled = st["generation"]
        time.sleep(4 * self.CHECK_S)
        self.assertEqual(zone_status(self.nginx)["generation"], settled,
                         "with the file unchanged, check= loads nothing more after a reload")
        self.kf.add("key_three", key=new_key(), plan="pro")
        k3 = self.kf.keys["key_three"]
        t0 = self.write()
        self.wait_outcome(k3, (200, None), t0, what="check= still works in the new workers")
        self.assertEqual(zone_status(self.nginx)["generation"], settled + 1,
                         "the next change is one more generation")


class LiveReloadSwapsTest(LiveCase):
    """300 swaps under check=100ms in a 256k zone: every swap applied once,
    no alert, no crash, no shrinking free space."""

    ZONE = "256k"
    CHECK = "100ms"
    CHECK_S = 0.1
    SWAPS = 300

    def test_many_swaps_small_zone(self):
        stable = self.k2
        marker = new_key()
        self.kf.add("marker", key=marker, plan="pro")
        t0 = self.write()
        self.wait_outcome(marker, (200, None), t0, what="the first marker version")
        # settle: the replaced start-up table is freed at the next check
        time.sleep(3 * self.CHECK_S)
        st0 = zone_status(self.nginx)
        gen0, free0 = st0["generation"], st0["bytes_free"]
        offset = self.nginx.error_log_size()

        samples = []
        started = time.monotonic()
        slowest = 0.0
        for i in range(1, self.SWAPS + 1):
            old = marker
            marker = new_key()
            self.kf.record("marker")["hash"] = key_hash(marker)
            t0 = self.write()
            took = self.wait_outcome(marker, (200, None), t0, timeout=3.0,
                                     what="swap #%d applied" % i)
            slowest = max(slowest, took)
            self.assertEqual(outcome(self.nginx, old), (401, "invalid_api_key"),
                             "swap #%d: the previous marker key is gone" % i)
            self.assertEqual(outcome(self.nginx, stable), (200, None),
                             "swap #%d: the unchanged key is accepted throughout" % i)
            if i % 25 == 0:
                samples.append(zone_status(self.nginx)["bytes_free"])
        took_all = time.monotonic() - started
        print("\n    %d swaps in %.1fs (slowest %.3fs); bytes_free start %d, samples %s"
              % (self.SWAPS, took_all, slowest, free0, samples))

        st = self.wait_generation(gen0 + self.SWAPS)
        self.assertEqual(st["generation"], gen0 + self.SWAPS,
                         "generation grew by exactly %d: every swap applied once" % self.SWAPS)
        # The loader thread's notice is logged by the event loop at its next poll.
        def loads_logged():
            found = re.findall(LOADED_RE % re.escape(self.keyfile), self.nginx.error_log(offset))
            return found if len(found) >= self.SWAPS else None
        try:
            loads = wait_until(loads_logged, 2.0, what="the last 'loaded' notice")
        except TimeoutError:
            loads = re.findall(LOADED_RE % re.escape(self.keyfile), self.nginx.error_log(offset))
        self.assertEqual(len(loads), self.SWAPS,
                         "one 'loaded' notice per version: one worker loads each")
        self.assertEqual(error_lines(self.nginx, offset, "api_key_zone"), [],
                         "no load failed (no 'no room', no 'too many replaced tables')")
        deadline = time.monotonic() + 2.0  # the last replaced table goes at the next check
        free_end = zone_status(self.nginx)["bytes_free"]
        while free_end < free0 and time.monotonic() < deadline:
            time.sleep(self.CHECK_S)
            free_end = zone_status(self.nginx)["bytes_free"]
        self.assertGreaterEqual(free_end, free0,
                                "after %d swaps bytes_free is not below the start: no leak"
                                % self.SWAPS)
        half = len(samples) // 2
        self.assertGreaterEqual(min(samples[half:]), min(samples[:half]),
                                "bytes_free does not trend down during the run: %s" % samples)
        usage = {u["key_id"]: u["accepted"] for u in st["usage"]}
        self.assertEqual(usage.get("key_two"), self.SWAPS,
                         "key_two's accepted count (one per swap) is kept across the swaps")
        self.assertEqual(usage.get("marker"), self.SWAPS + 1,
                         "marker's accepted count spans all its versions (one per version)")
        self.assertEqual(self.nginx.log_problems(), [], "no [alert], no crash in the whole run")
        self.assertNoReload()


class IdlePinTest(LiveCase):
    """A worker keeps the table it read last pinned after its requests (so
    that the next request costs no store to shared memory), but never for
    long: once check= replaces the table, the old one is freed within a
    few hundred ms although no keyed request comes to either worker again
    (README "Reloads and key rotation"). Without the workers' pin timer the
    idle workers would keep it until their next keyed request."""

    CHECK = "100ms"
    CHECK_S = 0.1
    ZONE = "4m"
    HTTP = HTTP.replace("            empty_gif;", "            add_header X-Worker $pid;\n"
                        "            empty_gif;")

    def prepare(self):
        # Tables of many pages: bytes_free counts whole free pages.
        for i in range(2000):
            self.kf.add("bulk_%d" % i, key="jfi_sk_live_%040d" % i)

    def test_replaced_table_freed_without_requests(self):
        marker = self.kf.add("marker", plan="pro")
        t0 = self.write()
        self.wait_outcome(marker, (200, None), t0, what="the marker key")
        # Every worker serves a keyed request, and so pins the table.
        seen = set()
        deadline = time.monotonic() + 5
        while seen != self.workers and time.monotonic() < deadline:
            r = self.nginx.get("/", bearer(self.k1))
            self.assertEqual(r.status, 200)
            seen.add(int(r.headers["X-Worker"]))
        self.assertEqual(seen, self.workers, "both workers served a keyed request")
        time.sleep(5 * self.CHECK_S)  # earlier tables are freed: one table in the zone
        st = zone_status(self.nginx)
        gen, free0 = st["generation"], st["bytes_free"]

        # The same size of file, another hash: the new table has the old one's size.
        self.kf.record("marker")["hash"] = key_hash(new_key())
        self.write()
        st = self.wait_generation(gen + 1, timeout=3.0)
        self.assertEqual(st["generation"], gen + 1, "the new version is loaded")
        started = time.monotonic()
        freed_after = None
        while time.monotonic() - started < 2.0:
            if zone_status(self.nginx)["bytes_free"] >= free0:
                freed_after = time.monotonic() - started
                break
            time.sleep(0.02)
        print("\n    replaced table freed %s after the new one was in force, "
              "no keyed request meanwhile" % ("%.0f ms" % (freed_after * 1000)
                                              if freed_after is not None else "never (2 s)"))
        self.assertIsNotNone(freed_after, "the replaced table is freed within 2 s with both "
                             "workers idle (pins are dropped within 100 ms; check= reclaims)")
        self.assertEqual(outcome(self.nginx, self.k1), (200, None))
        self.assertNoReload()


# --------------------------------------------------------------------------
# a request held in flight: it keeps the table it started with

SLOW_HTTP = HTTP.replace("        location = /status {", """        location /slow/ {
            proxy_pass http://127.0.0.1:{slow};
            proxy_read_timeout 30s;
        }
        location = /status {""")


class SlowUpstream:
    """A 127.0.0.1 server that answers its requests only once released."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.arrived = threading.Event()
        self.released = threading.Event()
        threading.Thread(target=self._serve, name="slow-upstream", daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        with conn:
            try:
                conn.settimeout(30)
                conn.recv(65536)
                self.arrived.set()
                self.released.wait(30)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n"
                             b"Connection: close\r\n\r\nslow")
            except OSError:
                pass

    def close(self):
        self.released.set()
        self.sock.close()


class HeldRequestCase(LiveCase):
    HTTP = SLOW_HTTP
    CHECK = "100ms"
    CHECK_S = 0.1

    def setUp(self):
        self.slow = SlowUpstream()
        self.addCleanup(self.slow.close)
        self.VARS = {"slow": self.slow.port}
        super().setUp()

    def hold_request(self, key):
        """Starts GET /slow/ with key; returns once it is at the upstream,
        i.e. past the access check and holding the table in force."""
        result = {}

        def run():
            try:
                result["response"] = self.nginx.get("/slow/", bearer(key), timeout=40)
            except Exception as e:  # reported by release()
                result["error"] = e
        thread = threading.Thread(target=run, name="held-request", daemon=True)
        thread.start()
        self.assertTrue(self.slow.arrived.wait(5), "the held request reached the upstream")
        self.addCleanup(self.slow.released.set)
        return thread, result

    def release(self, held):
        thread, result = held
        self.slow.released.set()
        thread.join(10)
        self.assertFalse(thread.is_alive(), "the held request finished once released")
        r = result.get("response")
        self.assertEqual(r.status if r else result.get("error"), 200,
                         "the held request was served with the table it started with")

    def rewrite_probe(self, key):
        """After a missed load: the same text renamed again (a new version
        to check=) -- is it loaded? Says whether room was there."""
        t0 = self.write()
        d = self.poll_outcome(key, (200, None), t0, 3.0)
        return ("the same text renamed once more was loaded %.2fs later: the zone could take it"
                % d) if d is not None else "the same text renamed again was not loaded either"

    def swap_marker(self):
        """Writes a new version whose "marker" key is a fresh one; returns
        (key, time of the rename)."""
        key = new_key()
        self.kf.record("marker")["hash"] = key_hash(key)
        return key, self.write()

    def prepare(self):
        self.kf.add("marker", plan="pro")


class HeldRequestRetiredTest(HeldRequestCase):
    """One long request in flight while the file changes 20 times (tiny
    file, plenty of room in the zone)."""

    def test_swaps_while_a_request_is_in_flight(self):
        held = self.hold_request(self.k2)
        offset = self.nginx.error_log_size()
        applied, first_missed, marker = 0, None, None
        for i in range(1, 21):
            marker, t0 = self.swap_marker()
            if self.poll_outcome(marker, (200, None), t0, 1.0) is None:
                first_missed = i
                break
            applied += 1
        print("\n    with one request in flight: %d of 20 swaps applied; first missed: %s"
              % (applied, first_missed))
        if first_missed is not None:
            print("    error.log: %s" % "\n    ".join(
                error_lines(self.nginx, offset, "api_key_zone")))
        self.release(held)
        # whatever happened while the request was held, the version on disk
        # must be in force within a few intervals once it is over
        t0 = time.monotonic()
        delay = self.poll_outcome(marker, (200, None), t0, 3.0)
        probe = self.rewrite_probe(marker) if delay is None else ""
        self.assertIsNotNone(delay, "after the long request ended, the key file on disk (swap "
                             "#%s) is loaded within 3 s (check=%s); it never was (%s)"
                             % (first_missed or 20, self.CHECK, probe))
        self.assertIsNone(first_missed, "all 20 swaps apply while one request is in flight "
                          "(README: a revocation applies to every request that starts TIME + "
                          "load time after the rename); swap #%s never did" % first_missed)


class HeldRequestZoneFullTest(HeldRequestCase):
    """A zone of the size nginx -t asks for, a 2000-key file, one long
    request in flight and two quick edits."""

    KEYS = 2000

    def prepare(self):
        super().prepare()
        for i in range(self.KEYS):
            self.kf.add("bulk_%d" % i, key="jfi_sk_live_%040d" % i)

    def size_zone(self):
        # nginx -t in a scratch prefix (its [emerg] is expected there)
        probe = Nginx(self.config("64k"), vars=self.VARS, name="live-size")
        try:
            probe.write_file("keys.yaml", self.kf.text())
            rc, out = probe.test_config()
        finally:
            probe.allow_emerg = True
            probe.cleanup()
        need = needed_bytes(out) if rc != 0 else None
        if need is None:
            self.fail("nginx -t states the size a 64k zone lacks; output:\n" + out)
        self.zone_k = (need + 1023) // 1024
        self.nginx.write_config(self.config("%dk" % self.zone_k))

    def test_second_edit_with_request_in_flight(self):
        held = self.hold_request(self.k2)
        offset = self.nginx.error_log_size()
        first, t0 = self.swap_marker()
        self.wait_outcome(first, (200, None), t0,
                          what="first edit: the zone holds the held table and the new one")
        second, t0 = self.swap_marker()
        applied_while_held = self.poll_outcome(second, (200, None), t0, 1.0)
        errors = error_lines(self.nginx, offset, "api_key_zone")
        print("\n    zone %dk, %d keys: second edit while held: %s; error.log: %s"
              % (self.zone_k, self.KEYS + 3,
                 "applied" if applied_while_held is not None else "not applied", errors))
        self.release(held)
        t0 = time.monotonic()
        delay = self.poll_outcome(second, (200, None), t0, 3.0)
        probe = self.rewrite_probe(second) if delay is None else ""
        self.assertIsNotNone(delay, "once the long request ended and its table could be freed, "
                             "the second edit is loaded within 3 s (check=%s); it never was (%s)"
                             % (self.CHECK, probe))


if __name__ == "__main__":
    unittest.main()
