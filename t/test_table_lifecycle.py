"""SPEC "Enforcement promises": who installs key tables, and when.

* InFlightCheckTest / InFlightReloadTest: no client can delay a table
  change. 20 clients are held in flight, each on its own table generation
  (slow downloads with a valid key, keyless requests trickling a body,
  keyless refusals read slowly), and still every change of the key file
  applies, with check= (200ms) and with nginx -s reload: the 21st version
  revokes the key the downloads use and is in force within check + 2 s.
* FileChangeReloadTest: a reload that names another file= is never undone
  by the old workers still draining requests (with and without check= in
  the new configuration), not even when the old file changes.
* FailedReloadTest: a reload that fails after the key zones were set up (a
  listen that cannot bind, another zone's init) or before (the pid file)
  changes nothing: the old table stays in force and api_key_status still
  names the old file and generation. (nginx 1.22's ngx_init_cycle creates
  the pid file and opens error logs before the shared zones, and binds the
  listening sockets after them; tried: a pid or error_log path that cannot
  be opened fails before any zone is touched, bind() and a later zone's
  init fail after.)
* ConcurrentInstallsTest: 30 reloads in quick succession while check=100ms
  loads the same changes: no leak (bytes_free back within one table), no
  double free ([alert]), no crash, the last version in force.

Helpers used by test_table_lifecycle_zones.py live here too (plain
functions and classes; the only TestCase base, TableCase, has no tests).
"""

import os
import random
import re
import signal
import socket
import threading
import time
import unittest

from harness import (PAST, KeyFile, Nginx, bearer, key_hash, new_key, pid_alive,
                     request, wait_until, write_atomic)

STATUS_LOCATION = """
        location = /status {
            api_key off;
            api_key_status;
            allow 127.0.0.1;
            deny all;
            access_log off;
        }
"""

BIG_FILE_BYTES = 50 * 1024 * 1024


# --------------------------------------------------------------------------
# small helpers (shared with test_table_lifecycle_zones.py)

def code_of(resp):
    """(status, error code or None) of a response."""
    if resp.status == 200:
        return 200, None
    try:
        return resp.status, resp.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return resp.status, "non-JSON body %r" % resp.body[:80]


def zone_status(port, name="keys", timeout=3.0):
    """This zone's object from GET /status (JSON)."""
    r = request(port, "GET", "/status", timeout=timeout)
    if r.status != 200:
        raise AssertionError("GET /status answered %r" % r)
    for z in r.json()["zones"]:
        if z["zone"] == name:
            return z
    raise AssertionError("zone %r not in the status: %s" % (name, r.text[:500]))


def module_lines(nginx, offset=0):
    """Error-log lines (from offset) about key zones or the module."""
    return [line for line in nginx.error_log(offset).splitlines()
            if "api_key" in line or "[emerg]" in line or "[alert]" in line or "[crit]" in line]


def read_head(sock, deadline):
    """Reads one response head from sock; returns (status, {lowercase name:
    value}, bytes after the head)."""
    data = b""
    while b"\r\n\r\n" not in data:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            raise TimeoutError("no response head in time: %r" % data[:300])
        if not chunk:
            raise ConnectionError("connection closed before the response head: %r" % data[:300])
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ", 2)[1]), headers, rest


def still_connected(sock):
    """True while the server has not closed this connection (data waiting
    or nothing to read yet both count)."""
    timeout = sock.gettimeout()
    sock.setblocking(False)  # with a timeout set, Python would first wait for data
    try:
        data = sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(timeout)
    return data != b""


def tiny_rcvbuf_socket(port, rcvbuf=4096, timeout=5.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: small window
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


class SlowDownload:
    """GET of a big static file with a key; reads the response head and then
    nothing. With limit_rate and tiny buffers the request stays in flight
    (past the access phase, holding whatever the module holds) until the
    socket is closed."""

    def __init__(self, port, key, path="/big.bin"):
        self.sock = tiny_rcvbuf_socket(port)
        try:
            self.sock.sendall(("GET %s HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer %s"
                               "\r\n\r\n" % (path, key)).encode())
            self.status, self.headers, _ = read_head(self.sock, time.monotonic() + 5)
        except Exception:
            self.sock.close()
            raise
        self.worker = int(self.headers.get("x-worker") or 0)

    def alive(self):
        return still_connected(self.sock)

    def close(self):
        self.sock.close()


class TrickledBody:
    """A keyless POST announcing a 1,000,000-byte body that is sent a few
    bytes at a time (trickle()). The module refuses it at once; nginx then
    discards the body as it arrives, so the request lives on."""

    def __init__(self, port, path="/"):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            self.sock.sendall(("POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n"
                               "Content-Length: 1000000\r\n\r\nabc" % path).encode())
            self.status, self.headers, _ = read_head(self.sock, time.monotonic() + 5)
        except Exception:
            self.sock.close()
            raise
        self.worker = int(self.headers.get("x-worker") or 0)
        self.broken = False

    def trickle(self):
        if self.broken:
            return
        try:
            self.sock.send(b"xy")
        except OSError:
            self.broken = True

    def alive(self):
        return not self.broken and still_connected(self.sock)

    def close(self):
        self.sock.close()


class StuckRefusals:
    """Many keyless GETs pipelined on one connection whose client never
    reads: nginx answers them (401) until its send buffer and our tiny
    receive window are full, then one refusal waits to be written."""

    PIPELINED = 400

    def __init__(self, port, path="/"):
        self.sock = tiny_rcvbuf_socket(port, rcvbuf=2048)
        one = ("GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path).encode()
        try:
            self.sock.sendall(one * self.PIPELINED)
            deadline = time.monotonic() + 5
            first = b""
            while len(first) < 12 and time.monotonic() < deadline:
                first = self.sock.recv(64, socket.MSG_PEEK)
                if not first:
                    raise ConnectionError("closed before any response")
            self.status = int(first[9:12])
        except Exception:
            self.sock.close()
            raise
        self.worker = 0

    def alive(self):
        return still_connected(self.sock)

    def close(self):
        self.sock.close()


class Trickler:
    """One thread sending a few bytes per second to every TrickledBody."""

    def __init__(self, interval=0.4):
        self.clients = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.interval = interval
        self.thread = threading.Thread(target=self._run, name="trickler", daemon=True)
        self.thread.start()

    def add(self, client):
        with self.lock:
            self.clients.append(client)

    def _run(self):
        while not self.stop.wait(self.interval):
            with self.lock:
                clients = list(self.clients)
            for c in clients:
                c.trickle()

    def close(self):
        self.stop.set()
        self.thread.join(5)


class TableCase(unittest.TestCase):
    """A fresh nginx per test; helpers about the zone "keys"."""

    ZONE = "keys"

    def start_nginx(self, http, files=None, ports=("port",), vars=None, name="tables", main=""):
        """files: {name in the prefix: KeyFile or text}."""
        self.nginx = Nginx(http, main=main, ports=ports, vars=vars, name=name)
        self.addCleanup(self.nginx.cleanup)  # first registered, runs last: after sockets close
        for fname, content in (files or {}).items():
            self.put(fname, content)
        self.before_start()
        self.nginx.start()
        return self.nginx

    def before_start(self):
        pass

    def put(self, fname, content):
        """Atomically (rename) writes a file of the prefix; returns the time."""
        text = content.text() if isinstance(content, KeyFile) else content
        write_atomic(self.nginx.path(fname), text)
        return time.monotonic()

    def status(self, zone=None, timeout=3.0):
        return zone_status(self.nginx.port, zone or self.ZONE, timeout)

    def outcome(self, key, path="/", port=None, timeout=5.0):
        return code_of(request(port or self.nginx.port, "GET", path, bearer(key), timeout=timeout))

    def hup(self):
        os.kill(self.nginx.master, signal.SIGHUP)

    def diagnostics(self, offset=0):
        lines = module_lines(self.nginx, offset)
        try:
            st = self.status()
            st = {k: st.get(k) for k in ("file", "generation", "keys", "last_error", "bytes_free")}
        except Exception as e:
            st = "unavailable (%s)" % e
        return "status: %s\nerror.log (module, emerg, alert):\n  %s" % (
            st, "\n  ".join(lines[-15:]) or "(nothing)")

    def wait_generation(self, want, timeout, what, offset=0):
        """Polls api_key_status until the zone's generation is >= want;
        returns that status, or fails the test saying what did not happen."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                last = self.status(timeout=1.0)
                if last["generation"] >= want:
                    return last
            except (OSError, TimeoutError, ValueError):
                pass
            if time.monotonic() >= deadline:
                self.fail("%s: generation %d not reached within %.1fs (last status generation "
                          "%s)\n%s" % (what, want, timeout, last and last["generation"],
                                       self.diagnostics(offset)))
            time.sleep(0.02)

    def wait_outcome(self, key, want, timeout, what, path="/"):
        deadline = time.monotonic() + timeout
        last = None
        while True:
            last = self.outcome(key, path)
            if last == want:
                return
            if time.monotonic() >= deadline:
                self.fail("%s: %r within %.1fs; still %r\n%s"
                          % (what, want, timeout, last, self.diagnostics()))
            time.sleep(0.02)


def big_file(nginx):
    """A 50 MB sparse file served by location = /big.bin."""
    path = nginx.path("html/big.bin")
    with open(path, "wb") as f:
        f.truncate(BIG_FILE_BYTES)
    return path


# --------------------------------------------------------------------------
# 1. no client can delay a table change

INFLIGHT_HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml CHECK;

    server {
        # one socket per worker: the clients spread over both workers
        listen 127.0.0.1:{port} reuseport sndbuf=16k;
        server_name localhost;
        add_header X-Worker $pid always;
        api_key keys;

        location / {
            empty_gif;
        }
        location = /big.bin {
            root {prefix}/html;
            sendfile off;
            output_buffers 1 4k;
            limit_rate 50k;
        }
STATUS
    }
""".replace("STATUS", STATUS_LOCATION)


class InFlight:
    """20 clients held in flight, each started on its own generation, then
    a revocation. A mixin; the test cases: check= or reload."""

    CHECK = None      # "200ms" or None (nginx -s reload)
    CHECK_S = 0.0
    CLIENTS = 20

    def setUp(self):
        self.kf = KeyFile()
        self.held_key = self.kf.add("key_held", plan="pro")
        self.other = self.kf.add("key_other", plan="pro")
        self.kf.add("marker", plan="pro")
        http = INFLIGHT_HTTP.replace("CHECK", "check=%s" % self.CHECK if self.CHECK else "")
        self.start_nginx(http, {"keys.yaml": self.kf}, name="inflight")
        big_file(self.nginx)
        self.clients = []
        self.addCleanup(self.close_clients)

    def close_clients(self):
        for c in self.clients:
            c.close()

    def how(self):
        return "check=%s" % self.CHECK if self.CHECK else "nginx -s reload"

    def apply_change(self):
        """Writes self.kf (renamed over the key file) and, without check=,
        sends HUP; returns the time of the rename."""
        t0 = self.put("keys.yaml", self.kf)
        if not self.CHECK:
            self.hup()
        return t0

    def change_budget(self):
        return self.CHECK_S + 2.0

    def run_clients(self, start_client, kind, expect_status):
        offset = self.nginx.error_log_size()
        gen = self.status()["generation"]
        for i in range(1, self.CLIENTS + 1):
            try:
                c = start_client()
            except Exception as e:
                self.fail("%s #%d could not be started: %s: %s\n%s"
                          % (kind, i, type(e).__name__, e, self.diagnostics(offset)))
            self.clients.append(c)
            self.assertEqual(c.status, expect_status,
                             "%s #%d was answered %d (the access phase ran)"
                             % (kind, i, expect_status))
            # a new version of the file: the next client starts on a new generation
            self.kf.record("marker")["hash"] = key_hash(new_key())
            self.apply_change()
            gen += 1
            self.wait_generation(gen, self.change_budget(),
                                 "with %d %s in flight (each on its own table generation), change "
                                 "#%d of the key file applies within %.1fs (%s)"
                                 % (i, kind, i, self.change_budget(), self.how()), offset)

        in_flight = sum(1 for c in self.clients if c.alive())
        self.assertGreaterEqual(in_flight, self.CLIENTS - 2,
                                "premise: the %s are still in flight when the revocation is "
                                "written (%d of %d)" % (kind, in_flight, self.CLIENTS))
        workers = {c.worker for c in self.clients if c.worker}
        if workers:
            self.assertGreaterEqual(len(workers), 2 if self.CHECK else 3,
                                    "premise: the %s are spread over several workers: %s"
                                    % (kind, sorted(workers)))

        self.kf.record("key_held")["revoked_at"] = PAST
        t0 = self.apply_change()
        deadline = t0 + self.change_budget()
        got = None
        while time.monotonic() < deadline:
            got = self.outcome(self.held_key)
            if got == (401, "revoked_api_key"):
                break
            time.sleep(0.02)
        self.assertEqual(got, (401, "revoked_api_key"),
                         "with %d %s in flight, a revocation written to the file applies to new "
                         "requests within %.1fs (%s)\n%s"
                         % (len(self.clients), kind, self.change_budget(), self.how(),
                            self.diagnostics(offset)))
        for i in range(6):  # new connections: both workers
            self.assertEqual(self.outcome(self.held_key), (401, "revoked_api_key"),
                             "once in force, the revocation holds for every new request (#%d)" % i)
        self.assertEqual(self.outcome(self.other), (200, None),
                         "the other key is accepted by the new table")
        st = self.wait_generation(gen + 1, 1.0, "status shows the revocation's generation", offset)
        self.assertEqual(st["generation"], gen + 1,
                         "api_key_status: exactly one generation per change (%d changes)"
                         % (self.CLIENTS + 1))
        self.assertIsNone(st["last_error"], "api_key_status: no load error after the revocation")

    def test_slow_downloads_with_valid_key(self):
        port = self.nginx.port
        self.run_clients(lambda: SlowDownload(port, self.held_key), "slow downloads", 200)

    def test_keyless_trickled_bodies(self):
        trickler = Trickler()
        self.addCleanup(trickler.close)
        port = self.nginx.port

        def start():
            c = TrickledBody(port)
            trickler.add(c)
            return c
        self.run_clients(start, "keyless requests trickling a body", 401)

    def test_keyless_refusals_read_slowly(self):
        port = self.nginx.port
        self.run_clients(lambda: StuckRefusals(port), "keyless refusals read slowly", 401)


class InFlightCheckTest(InFlight, TableCase):
    CHECK = "200ms"
    CHECK_S = 0.2


class InFlightReloadTest(InFlight, TableCase):
    CHECK = None


# --------------------------------------------------------------------------
# 2. a reload that names another file= is never undone

FILE_HTTP = """
    api_key_zone keys:1m file={prefix}/FILE CHECK;

    server {
        listen 127.0.0.1:{port} reuseport;
        server_name localhost;
        add_header X-Worker $pid always;
        api_key keys;

        location / {
            empty_gif;
        }
        location = /big.bin {
            root {prefix}/html;
            sendfile off;
            output_buffers 1 4k;
            limit_rate 50k;
        }
STATUS
    }
""".replace("STATUS", STATUS_LOCATION)


def file_http(name, check):
    return FILE_HTTP.replace("FILE", name).replace("CHECK", "check=%s" % check if check else "")


class FileChangeReloadTest(TableCase):
    """a.yaml (K valid, check=300ms) -> reload with b.yaml (K revoked),
    while old workers drain slow downloads."""

    def setUp(self):
        self.a = KeyFile()
        self.k = self.a.add("key_k", plan="pro")
        self.stable = self.a.add("key_stable", plan="pro")
        self.b = KeyFile()
        self.b.add("key_k", key=self.k, plan="pro", revoked_at=PAST)
        self.b.add("key_stable", key=self.stable, plan="pro")
        self.start_nginx(file_http("a.yaml", "300ms"), {"a.yaml": self.a, "b.yaml": self.b},
                         name="filechange")
        big_file(self.nginx)
        self.downloads = []
        self.addCleanup(lambda: [d.close() for d in self.downloads])

    def hold_old_workers(self):
        """Slow downloads until both workers hold one; returns their pids."""
        workers = set(self.nginx.workers())
        held = set()
        for _ in range(30):
            d = SlowDownload(self.nginx.port, self.stable)
            self.assertEqual(d.status, 200, "a download with a valid key starts")
            self.downloads.append(d)
            held.add(d.worker)
            if held >= workers:
                break
        self.assertTrue(held & workers, "premise: a download is in flight on an old worker")
        return held & workers

    def reload_to_b(self, check):
        self.assertEqual(self.outcome(self.k), (200, None), "K is accepted with a.yaml")
        before = set(self.nginx.workers())
        held = self.hold_old_workers()
        offset = self.nginx.error_log_size()
        self.nginx.write_config(file_http("b.yaml", check))
        self.hup()
        # the old workers keep draining: wait for the new workers, for the
        # old ones to close their listening sockets, and for b.yaml
        wait_until(lambda: len(set(self.nginx.workers()) - before) >= 2, 10,
                   what="two new workers after the reload")
        wait_until(lambda: self.nginx.error_log(offset).count("gracefully shutting down")
                   >= len(before), 10, what="the old workers shutting down")
        st = self.wait_status_file("b.yaml", 5, offset)
        return held, offset, st["generation"]

    def wait_status_file(self, name, timeout, offset):
        """Waits until 5 status reads in a row name this file."""
        want = self.nginx.path(name)
        deadline = time.monotonic() + timeout
        st, row = None, 0
        while time.monotonic() < deadline:
            try:
                st = self.status(timeout=1.0)
                row = row + 1 if st["file"] == want else 0
                if row >= 5:
                    return st
            except (OSError, TimeoutError, ValueError):
                row = 0
            time.sleep(0.02)
        self.fail("after the reload api_key_status names %s; got %r\n%s"
                  % (want, st and st["file"], self.diagnostics(offset)))

    def watch(self, seconds, gen, old, what, offset):
        """For `seconds`: K refused on every new request, the status names
        b.yaml with generation `gen`, the old workers still there."""
        want_file = self.nginx.path("b.yaml")
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            got = self.outcome(self.k)
            self.assertEqual(got, (401, "revoked_api_key"),
                             "%s: K stays refused after the reload to b.yaml (request #%d, %.1fs "
                             "before the end of the watch)\n%s"
                             % (what, n, end - time.monotonic(), self.diagnostics(offset)))
            if n % 8 == 0:
                st = self.status()
                self.assertEqual(st["file"], want_file, "%s: api_key_status names b.yaml" % what)
                self.assertEqual(st["generation"], gen,
                                 "%s: no table is installed after the reload (generation stays "
                                 "%d)\n%s" % (what, gen, self.diagnostics(offset)))
            n += 1
            time.sleep(0.03)
        self.assertTrue(any(pid_alive(p) for p in old),
                        "premise: an old worker (%s) is still draining a download at the end "
                        "of the watch" % sorted(old))

    def run_variant(self, check):
        old, offset, gen = self.reload_to_b(check)
        self.watch(3.0, gen, old, "3 s after the reload", offset)
        # a.yaml changes: an old worker's check= would load it now
        self.a.add("key_late", plan="pro")
        self.put("a.yaml", self.a)
        self.watch(2.0, gen, old, "2 s after a.yaml changed", offset)
        self.assertEqual(self.outcome(self.stable), (200, None),
                         "the stable key is accepted by b.yaml's table")

    def test_reload_to_other_file_without_check(self):
        self.run_variant(None)

    def test_reload_to_other_file_with_check(self):
        self.run_variant("300ms")


# --------------------------------------------------------------------------
# 3. a failed reload changes nothing

FAIL_HTTP = """
    api_key_zone keys:1m file={prefix}/FILE;
    LIMITREQ

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        api_key keys;

        location / {
            empty_gif;
        }
STATUS
    }
    EXTRA
""".replace("STATUS", STATUS_LOCATION)

LIMIT_REQ = "limit_req_zone %s zone=lr:64k rate=100r/s;"


def fail_http(name, limit_req_key="$binary_remote_addr", extra=""):
    return (FAIL_HTTP.replace("FILE", name).replace("LIMITREQ", LIMIT_REQ % limit_req_key)
            .replace("EXTRA", extra))


class FailedReloadTest(TableCase):
    """Running with a.yaml (K valid); the new configuration names b.yaml (K
    revoked) and has one more thing that makes the reload fail."""

    def setUp(self):
        self.a = KeyFile()
        self.k = self.a.add("key_k", plan="pro")
        self.a.add("key_other", plan="pro")
        self.b = KeyFile()
        self.b.add("key_k", key=self.k, plan="pro", revoked_at=PAST)
        self.b.add("key_other", plan="pro")
        self.start_nginx(fail_http("a.yaml"), {"a.yaml": self.a, "b.yaml": self.b},
                         name="failreload")
        self.assertEqual(self.outcome(self.k), (200, None), "K is accepted with a.yaml")
        self.before = self.status()

    def fail_reload(self, wait_for):
        """HUP; waits for the [emerg] and then for `wait_for` (the line that
        says the reload is over)."""
        offset = self.nginx.error_log_size()
        self.nginx.reload(expect_failure=True)
        try:
            wait_until(lambda: re.search(wait_for, self.nginx.error_log(offset)), 10,
                       what="the failed reload's last line")
        except TimeoutError:
            self.fail("the reload fails with %r; error.log:\n%s"
                      % (wait_for, self.nginx.error_log(offset)[-2000:]))
        time.sleep(0.2)
        return offset

    def assertUnchanged(self, why, offset):
        for i in range(6):  # new connections: both workers
            self.assertEqual(self.outcome(self.k), (200, None),
                             "a reload that failed (%s) changes nothing: K, valid in a.yaml and "
                             "revoked in b.yaml, is still accepted (#%d)\n%s"
                             % (why, i, self.diagnostics(offset)))
        st = self.status()
        self.assertEqual(st["file"], self.nginx.path("a.yaml"),
                         "after the failed reload (%s) api_key_status still names a.yaml" % why)
        self.assertEqual(st["generation"], self.before["generation"],
                         "after the failed reload (%s) the generation is the old one" % why)
        self.assertEqual(st["keys"], self.before["keys"], "the old table's key count")

    def control_reload(self, offset):
        """The same b.yaml without the bad part reloads and revokes K: the
        failure above was the only thing keeping b.yaml out."""
        self.nginx.write_config(fail_http("b.yaml"))
        self.nginx.reload()
        self.assertEqual(self.outcome(self.k), (401, "revoked_api_key"),
                         "control: a good reload to b.yaml revokes K")

    def test_listen_that_cannot_bind(self):
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        self.nginx.vars["busy"] = holder.getsockname()[1]
        self.nginx.write_config(fail_http("b.yaml", extra="""
    server {
        listen 127.0.0.1:{busy};
        location / { empty_gif; }
    }"""))
        offset = self.fail_reload(r"\[emerg\] .*still could not bind\(\)")
        self.assertUnchanged("bind() failed, after the zones were set up", offset)
        holder.close()
        self.control_reload(offset)

    def test_later_zone_fails_its_init(self):
        # the limit_req zone comes after the key zone; its init refuses a new key
        self.nginx.write_config(fail_http("b.yaml", limit_req_key="$remote_addr"))
        offset = self.fail_reload(r'\[emerg\] .*limit_req "lr" uses the "\$remote_addr" key')
        self.assertUnchanged("a later shared zone failed its init", offset)
        self.control_reload(offset)

    def test_pid_file_cannot_be_created(self):
        self.nginx.write_config(fail_http("b.yaml"))
        with open(self.nginx.conf) as f:
            conf = f.read()
        bad = "/nonexistent-%d/nginx.pid" % os.getpid()
        conf, n = re.subn(r"(?m)^pid [^\n]*;$", "pid %s;" % bad, conf)
        self.assertEqual(n, 1, "premise: the pid line was replaced")
        with open(self.nginx.conf, "w") as f:
            f.write(conf)
        offset = self.fail_reload(r'\[emerg\] .*open\(\) "%s" failed' % re.escape(bad))
        self.assertUnchanged("the new pid file cannot be created", offset)
        self.control_reload(offset)


# --------------------------------------------------------------------------
# 4. concurrent installs: reloads while check= loads

CONCURRENT_HTTP = """
    api_key_zone keys:2m file={prefix}/keys.yaml check=100ms;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        api_key keys;

        location / {
            empty_gif;
        }
STATUS
    }
""".replace("STATUS", STATUS_LOCATION)


class ConcurrentInstallsTest(TableCase):
    RELOADS = 30
    BULK = 600

    def test_reloads_while_check_loads(self):
        small = KeyFile()
        stable = small.add("key_stable", plan="pro")
        small.add("marker", plan="pro")
        self.start_nginx(CONCURRENT_HTTP, {"keys.yaml": small}, name="concurrent")
        free_small = self.status()["bytes_free"]

        # the full-size file: stable, marker and BULK fixed records
        kf = KeyFile()
        kf.add("key_stable", key=stable, plan="pro")
        marker = kf.add("marker", plan="pro")
        for i in range(self.BULK):
            kf.add("bulk_%04d" % i, key="jfi_sk_live_%040d" % i, plan="pro")
        self.put("keys.yaml", kf)
        self.wait_outcome(marker, (200, None), 3.0, "the full-size file is loaded by check=")
        time.sleep(0.5)  # the small table is reclaimed at the next checks
        st0 = self.status()
        free0, gen0 = st0["bytes_free"], st0["generation"]
        table = free_small - free0  # what one full-size table takes beyond a tiny one
        self.assertGreater(table, 0, "premise: a %d-key table takes whole pages (bytes_free "
                           "%d with 2 keys, %d with %d)" % (self.BULK + 2, free_small, free0,
                                                           self.BULK + 2))
        offset = self.nginx.error_log_size()

        stop = threading.Event()
        bad = []
        served = [0]

        def client():
            while not stop.is_set():
                try:
                    got = self.outcome(stable, timeout=5)
                except Exception as e:
                    bad.append("%s: %s" % (type(e).__name__, e))
                    continue
                served[0] += 1
                if got != (200, None):
                    bad.append(repr(got))
        thread = threading.Thread(target=client, name="concurrent-client", daemon=True)
        thread.start()
        self.addCleanup(lambda: (stop.set(), thread.join(10)))

        rnd = random.Random(4)
        markers = []
        for i in range(self.RELOADS):
            marker = new_key()
            markers.append(marker)
            kf.record("marker")["hash"] = key_hash(marker)
            self.put("keys.yaml", kf)  # same size: only the marker's hash changes
            time.sleep(rnd.uniform(0, 0.12))  # sometimes check= wins, sometimes the reload
            self.hup()
            time.sleep(rnd.uniform(0.02, 0.15))
        stop.set()
        thread.join(10)

        # settle: only the current workers, then 2 s for replaced tables to go
        try:
            wait_until(lambda: len(self.nginx.workers()) == self.nginx.worker_processes, 15,
                       what="old workers gone")
        except TimeoutError:
            self.fail("after the reloads only %d workers remain; children: %s"
                      % (self.nginx.worker_processes, self.nginx.workers()))
        time.sleep(2.0)
        st = self.status()
        log = self.nginx.error_log(offset)
        worst = [line for line in log.splitlines()
                 if re.search(r"\[(alert|crit|emerg)\]|exited on signal", line)]
        self.assertEqual(worst, [], "no [alert], [crit], [emerg] or crashed worker while "
                         "reloads and check= loads ran together")
        self.assertEqual(bad, [], "every request with the stable key was answered 200 during "
                         "the %d reloads (%d served)" % (self.RELOADS, served[0]))
        self.assertGreater(served[0], 0, "premise: the client thread sent requests")
        print("\n    bytes_free: %d with 2 keys, %d after the first %d-key load (one table = %d), "
              "%d after %d reloads racing check= (generation %d -> %d, %d requests)"
              % (free_small, free0, self.BULK + 2, table, st["bytes_free"], self.RELOADS, gen0,
                 st["generation"], served[0]))
        self.assertGreaterEqual(st["bytes_free"], free0 - table,
                                "no leak: bytes_free %d after %d concurrent installs is within "
                                "one table (%d bytes) of %d after the first load"
                                % (st["bytes_free"], self.RELOADS, table, free0))
        self.assertLessEqual(st["bytes_free"], free0 + table,
                             "no double free: bytes_free %d is not above %d + one table (%d)"
                             % (st["bytes_free"], free0, table))
        self.assertGreater(st["generation"], gen0, "the versions were installed")
        self.assertIsNone(st["last_error"], "no load error")
        self.assertEqual(st["keys"], self.BULK + 2, "the final file's key count is in force")
        self.assertEqual(self.outcome(markers[-1]), (200, None),
                         "the final file's marker is accepted")
        for i in range(4):
            self.assertEqual(self.outcome(markers[-2]), (401, "invalid_api_key"),
                             "the previous file's marker is gone (#%d)" % i)
        self.assertEqual(self.outcome(stable), (200, None), "the stable key is accepted")


if __name__ == "__main__":
    unittest.main()
