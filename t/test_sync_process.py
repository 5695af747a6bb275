"""Cluster mode's sync process (src/ngx_http_api_key_sync.cpp): worker 0 of
a configuration with a synced limit zone or a key channel forks one process,
titled "nginx: api_key sync process", that talks to Redis; the workers keep
a single thread.

    api_key_redis r 127.0.0.1:PORT;
    api_key_limit_zone lz:1m sync=r interval=20ms;

What is checked, with a real nginx (2 workers), a real redis-server and
real HTTP, from /proc and the error log:

* one sync process, a child of worker 0 only (worker 0 is the first
  "start worker process" the master logged), with its title, holding
  neither the listening socket nor a client connection; every worker has
  one thread; none without a synced zone or a channel; one for a key
  channel alone;
* it syncs: api_key_status shows the zone "ok", grants from Redis, batches
  growing, the grant script's keys in Redis;
* SIGKILL of the sync process: worker 0 logs "the sync process ended
  unexpectedly" and starts another (same parent) that syncs;
* a keep-alive connection open while the new process was forked is really
  closed by nginx after "Connection: close" (the client reads EOF);
* reload: the old sync process ends with the old workers, the new worker 0
  has its own; quit: nothing is left; SIGKILL of worker 0: its sync process
  ends on its own and the respawned worker 0 starts a new one;
* Redis paused past fail_after: worker 0 logs the zone degraded once, and
  synced again once after it resumes.

Every test has its own nginx (and all share one redis-server per class);
each is stopped at cleanup even when the test fails, every sync process it
started must be gone by then (one left over is killed and reported), and the
error log may hold [alert], [crit], [emerg] or "exited on signal" lines only
where the test caused them (killing a process) and says so.
"""

import os
import re
import shutil
import signal
import socket
import time
import unittest

from harness import KEEP, KeyFile, Nginx, children_of, pid_alive, wait_until
from test_cluster import Redis

TITLE = "nginx: api_key sync process"
INTERVAL = "20ms"

SYNCED_HTTP = """
    api_key_redis r 127.0.0.1:{redis};
    api_key_zone keys:1m file={prefix}/keys.yaml;
    api_key_limit_zone lz:1m sync=r interval=%s;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        api_key keys;
        keepalive_timeout 60s;
        add_header X-Worker $pid always;

        location /limited/ {
            api_key_limit lz read 100r/s;
            empty_gif;
        }
        location = /ping {
            api_key off;
            empty_gif;
        }
        location = /status {
            api_key off;
            api_key_status;
            allow 127.0.0.1;
            deny all;
        }
    }
""" % INTERVAL

# A Redis is declared and a local limit zone is used, but nothing is synced.
LOCAL_HTTP = """
    api_key_redis r 127.0.0.1:{redis};
    api_key_zone keys:1m file={prefix}/keys.yaml;
    api_key_limit_zone lz:1m;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        api_key keys;
        add_header X-Worker $pid always;

        location /limited/ {
            api_key_limit lz read 100r/s;
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

CHANNEL_HTTP = """
    api_key_redis r 127.0.0.1:{redis};
    api_key_zone keys:1m file={prefix}/keys.yaml sync=r channel={channel};

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

START_RE = re.compile(r"\[notice\] (\d+)#\d+: api_key: sync process (\d+) started")
WORKER_RE = re.compile(r"\[notice\] (\d+)#\d+: start worker process (\d+)")
ENDED = "api_key: the sync process ended unexpectedly"


# --------------------------------------------------------------------------
# /proc

def cmdline(pid):
    """argv[0] as the process shows it (the title nginx set), or None."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data.split(b"\0")[0].decode("utf-8", "replace")


def is_sync_process(pid):
    return pid_alive(pid) and cmdline(pid) == TITLE


def threads(pid):
    return sorted(int(t) for t in os.listdir("/proc/%d/task" % pid))


def all_sync_processes():
    """Every live process on this machine titled like a sync process."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and is_sync_process(int(name)):
            out.append(int(name))
    return sorted(out)


def socket_inodes(pid):
    """Inodes of the sockets process pid has open."""
    out = set()
    try:
        names = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return out
    for fd in names:
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        m = re.match(r"socket:\[(\d+)\]$", link)
        if m:
            out.add(int(m.group(1)))
    return out


def tcp_inode(local_port, remote_port=None, state=None):
    """Inode of the IPv4 TCP socket on 127.0.0.1:local_port (to remote_port,
    in state: "0A" listening, "01" established), from /proc/net/tcp."""
    with open("/proc/net/tcp") as f:
        lines = f.read().splitlines()[1:]
    for line in lines:
        fields = line.split()
        local, remote, st = fields[1], fields[2], fields[3]
        if int(local.split(":")[1], 16) != local_port:
            continue
        if remote_port is not None and int(remote.split(":")[1], 16) != remote_port:
            continue
        if state is not None and st != state:
            continue
        return int(fields[9])
    return None


# --------------------------------------------------------------------------
# HTTP on one kept-alive connection

def read_response(sock, timeout=5.0):
    """(status, headers dict lower-cased) of one response with a
    Content-Length body, read from sock; nothing after it is consumed."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("connection closed before a response: %r" % buf)
        buf += chunk
    head = buf.decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = {}
    for line in head[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            raise ConnectionError("connection closed inside the body")
        body += chunk
    return status, headers


# --------------------------------------------------------------------------
# the test base

class SyncProcessCase(unittest.TestCase):
    """One redis-server for the class, one nginx per test (start_nginx())."""

    @classmethod
    def setUpClass(cls):
        cls.redis = Redis()
        try:
            cls.redis.start()
        except BaseException:
            cls.redis.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.redis.cleanup()

    def setUp(self):
        self.seen_sync = set()      # every sync pid this test saw
        self.allowed = []           # regexes of forbidden-class lines the test caused
        self.keys = []

    # -- nginx

    def start_nginx(self, http=SYNCED_HTTP, workers=2, **vars):
        v = {"redis": self.redis.port}
        v.update(vars)
        n = Nginx(http, worker_processes=workers, vars=v, name="syncproc")
        kf = KeyFile()
        self.keys = [kf.add("k%d" % i, owner="owner_%d" % i, plan="pro") for i in range(8)]
        kf.write(n.path("keys.yaml"))
        self.addCleanup(self.cleanup_nginx, n)
        n.start()
        return n

    def allow(self, pattern):
        """Lets the error log hold a line matching pattern (a regex) that the
        test itself caused, e.g. by killing a process."""
        self.allowed.append(re.compile(pattern))

    def cleanup_nginx(self, n):
        problems = []
        try:
            n.stop()
        except Exception as e:  # noqa: BLE001 - still check what is left
            problems.append("stopping nginx: %s: %s" % (type(e).__name__, e))
        log = n.error_log()
        started = {int(m.group(2)) for m in START_RE.finditer(log)}
        # Worker 0 waits for its sync process before it exits: give an
        # orphan a moment only, then kill it and report it.
        left = [p for p in sorted(started | self.seen_sync) if is_sync_process(p)]
        if left:
            try:
                wait_until(lambda: not any(is_sync_process(p) for p in left), 2.0)
            except TimeoutError:
                for p in left:
                    if is_sync_process(p):
                        problems.append("sync process %d still running after nginx stopped "
                                        "(ppid %s); killed" % (p, _ppid(p)))
                        try:
                            os.kill(p, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
        for line in log.splitlines():
            bad = ("[alert]" in line or "[crit]" in line or "[emerg]" in line
                   or "exited on signal" in line)
            if bad and not any(r.search(line) for r in self.allowed):
                problems.append("error.log: " + line)
        if KEEP or problems:
            print("\nnginx prefix kept at %s" % n.prefix)
        else:
            shutil.rmtree(n.prefix, ignore_errors=True)
        if problems:
            raise AssertionError("after the test:\n" + "\n".join(problems))

    # -- processes

    def worker0(self, n, offset=0):
        """Pid of worker 0: the first worker the master started after offset
        in the error log (it logs them in slot order)."""
        def first():
            for m in WORKER_RE.finditer(n.error_log(offset)):
                if int(m.group(1)) == n.master:
                    return int(m.group(2))
            return None
        w = wait_until(first, 5.0, what="the master logging \"start worker process\"")
        self.assertIn(w, n.workers(), "worker 0 (%d) is a live worker of the master %d"
                      % (w, n.master))
        return w

    def sync_children(self, n):
        """{worker pid: [its children]} for every worker of n."""
        return {w: children_of(w) for w in n.workers()}

    def wait_sync_process(self, n, w0, not_pid=None, timeout=2.5):
        """Waits until worker w0 has a child titled as the sync process
        (other than not_pid); returns its pid and the seconds it took."""
        t0 = time.monotonic()

        def found():
            for c in children_of(w0):
                if c != not_pid and is_sync_process(c):
                    return c
            return None
        try:
            pid = wait_until(found, timeout, interval=0.01,
                             what="a sync process child of worker 0 (%d)" % w0)
        except TimeoutError as e:
            self.fail("%s; children of the workers: %s; error.log:\n%s"
                      % (e, self.describe_children(n), n.error_log()[-3000:]))
        self.seen_sync.add(pid)
        return pid, time.monotonic() - t0

    def describe_children(self, n):
        return {w: [(c, cmdline(c)) for c in kids] for w, kids in self.sync_children(n).items()}

    def assert_only_sync_process(self, n, w0, pid, what):
        """pid is the only child of any worker; it is w0's and titled."""
        kids = self.sync_children(n)
        self.assertEqual(kids.get(w0), [pid], "%s: worker 0 (%d) has exactly one child, the "
                         "sync process %d; children: %s" % (what, w0, pid,
                                                            self.describe_children(n)))
        for w, c in kids.items():
            if w != w0:
                self.assertEqual(c, [], "%s: worker %d (not worker 0) has no child; children: "
                                 "%s" % (what, w, self.describe_children(n)))
        self.assertEqual(cmdline(pid), TITLE, "%s: the sync process' title" % what)
        self.assertEqual(_ppid(pid), w0, "%s: the sync process' parent is worker 0" % what)

    def assert_single_threaded(self, n, what):
        for w in n.workers():
            self.assertEqual(len(threads(w)), 1, "%s: worker %d has one thread; "
                             "/proc/%d/task: %s" % (what, w, w, threads(w)))

    def started_by(self, n, pid, offset=0):
        """The pid of the worker that logged "sync process <pid> started"."""
        def logged():
            for m in START_RE.finditer(n.error_log(offset)):
                if int(m.group(2)) == pid:
                    return int(m.group(1))
            return None
        return wait_until(logged, 2.0, what="\"api_key: sync process %d started\"" % pid)

    # -- status and traffic

    def status(self, n):
        return n.get("/status", timeout=2.0).json()

    def sync(self, n):
        for z in self.status(n).get("limit_zones") or []:
            if z.get("name") == "lz":
                return z
        raise AssertionError("no limit zone \"lz\" in api_key_status: %s" % self.status(n))

    def wait_ok(self, n, timeout=2.5, what=""):
        seen = []

        def ok():
            z = self.sync(n)
            s = z.get("sync") or {}
            if not seen or seen[-1] != s.get("state"):
                seen.append(s.get("state"))
            return z.get("synced") is True and s.get("state") == "ok" and s
        try:
            return wait_until(ok, timeout, interval=0.05)
        except TimeoutError:
            self.fail("%s: zone \"lz\" synced and \"ok\" within %.1fs; states seen %s; last %r"
                      % (what, timeout, seen, self.sync(n)))

    def assert_syncs(self, n, key, what):
        """The sync process exchanges with Redis: batches grow, a request on
        a fresh key makes Redis grant budget and the grant is reported."""
        s0 = self.wait_ok(n, what=what)
        r = n.get("/limited/x", [("Authorization", "Bearer " + key)])
        self.assertEqual(r.status, 200, "%s: the first request of a fresh key is served (the "
                         "overdraft); got %r" % (what, r))

        def granted():
            s = self.sync(n)["sync"]
            return (s["granted"] > s0["granted"] and s["reported"] > s0["reported"]
                    and s["batches"] > s0["batches"]) and s
        try:
            s1 = wait_until(granted, 2.0, interval=0.05)
        except TimeoutError:
            self.fail("%s: within 2 s of a request Redis grants budget to the zone and the "
                      "request is reported (granted, reported and batches grow); before %r, "
                      "now %r" % (what, s0, self.sync(n)["sync"]))
        self.assertEqual(s1["state"], "ok", "%s: state after the grant: %r" % (what, s1))
        r = n.get("/limited/x", [("Authorization", "Bearer " + key)])
        self.assertEqual(r.status, 200, "%s: a request within the granted budget is served; "
                         "got %r; sync %r" % (what, r, s1))
        return s1


def _ppid(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
        return int(data[data.rfind(")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------
# the tests

class SyncProcessTest(SyncProcessCase):

    def test_1_one_sync_process_child_of_worker_0(self):
        """One sync process, a child of worker 0 only, titled "nginx:
        api_key sync process", logged by worker 0; it holds neither the
        listening socket nor anything else of the workers'; every worker
        has exactly one thread; no second one appears over several ticks."""
        n = self.start_nginx()
        w0 = self.worker0(n)
        pid, _ = self.wait_sync_process(n, w0)
        self.assertEqual(self.started_by(n, pid), w0,
                         "worker 0 logged \"api_key: sync process %d started\"" % pid)
        self.assertEqual(len(n.workers()), 2, "two workers: %s" % n.workers())
        self.assert_only_sync_process(n, w0, pid, "at start")
        self.assert_single_threaded(n, "at start")
        self.assertEqual(len(threads(pid)), 1, "the sync process has one thread")
        listen = tcp_inode(n.port, state="0A")
        self.assertIsNotNone(listen, "the listening socket is in /proc/net/tcp")
        self.assertIn(listen, socket_inodes(w0), "worker 0 holds the listening socket "
                      "(the /proc check sees it)")
        self.assertNotIn(listen, socket_inodes(pid),
                         "the sync process closed its copy of the listening socket")
        # a few of worker 0's 100 ms ticks and some traffic later: still one
        for i in range(20):
            n.get("/limited/x", [("Authorization", "Bearer " + self.keys[0])])
        time.sleep(0.7)
        self.assert_only_sync_process(n, w0, pid, "after 0.7 s and 20 requests")
        self.assert_single_threaded(n, "after 0.7 s and 20 requests")
        ours = [p for p in all_sync_processes() if _ppid(p) in n.workers()]
        self.assertEqual(ours, [pid], "exactly one sync process under this nginx")
        self.assertEqual(len(START_RE.findall(n.error_log())), 1,
                         "one \"sync process started\" line: %s" % START_RE.findall(n.error_log()))

    def test_1b_no_sync_process_without_synced_zone_or_channel(self):
        """A configuration with api_key_redis but no synced limit zone and
        no key channel has no sync process, and single-threaded workers."""
        n = self.start_nginx(LOCAL_HTTP)
        r = n.get("/limited/x", [("Authorization", "Bearer " + self.keys[0])])
        self.assertEqual(r.status, 200, "the local limit zone serves: %r" % r)
        time.sleep(0.6)  # three of worker 0's ticks, were there a timer
        self.assertEqual(self.sync_children(n), {w: [] for w in n.workers()},
                         "no worker has a child: %s" % self.describe_children(n))
        ours = [p for p in all_sync_processes() if _ppid(p) in n.workers()]
        self.assertEqual(ours, [], "no sync process under this nginx")
        self.assertNotIn("sync process", n.error_log(), "nothing logged about a sync process")
        self.assert_single_threaded(n, "without sync")
        zones = self.status(n).get("limit_zones") or []
        self.assertEqual([z.get("synced") for z in zones], [False],
                         "api_key_status shows the one limit zone not synced: %s" % zones)

    def test_1c_a_key_channel_alone_has_a_sync_process(self):
        """A key channel without any synced limit zone: worker 0 has one
        sync process, and the channel is followed ("ok")."""
        n = self.start_nginx(CHANNEL_HTTP, channel="syncproc%d" % os.getpid())
        w0 = self.worker0(n)
        pid, _ = self.wait_sync_process(n, w0)
        self.assert_only_sync_process(n, w0, pid, "key channel only")
        self.assert_single_threaded(n, "key channel only")

        def channel_ok():
            for z in self.status(n)["zones"]:
                if z["zone"] == "keys":
                    s = z.get("sync") or {}
                    return s.get("state") == "ok" and s
            return None
        try:
            wait_until(channel_ok, 2.5, interval=0.05)
        except TimeoutError:
            self.fail("the key channel is followed (zone \"keys\" sync state \"ok\") within "
                      "2.5 s: %s" % self.status(n)["zones"])
        self.assertEqual(n.get("/", [("Authorization", "Bearer " + self.keys[0])]).status, 200)

    def test_2_it_syncs(self):
        """The sync process exchanges with Redis: the zone is synced and
        "ok", batches grow, Redis grants budget to a fresh key, the grant
        is used, the grant script's keys are in Redis, no failures."""
        n = self.start_nginx()
        w0 = self.worker0(n)
        self.wait_sync_process(n, w0)
        s = self.assert_syncs(n, self.keys[1], "it syncs")
        self.assertEqual(s["failures"], 0, "no failed exchange with a healthy Redis: %r" % s)
        keys = self.redis.command("KEYS", "akm:*")
        self.assertTrue(keys, "the sync process wrote to Redis (keys akm:*): %r" % keys)
        b0 = self.sync(n)["sync"]["batches"]
        time.sleep(0.3)
        b1 = self.sync(n)["sync"]["batches"]
        self.assertGreaterEqual(b1 - b0, 3, "a batch every 20 ms interval: %d in 0.3 s" % (b1 - b0))

    def test_3_killed_sync_process_is_replaced(self):
        """SIGKILL of the sync process: worker 0 logs "the sync process
        ended unexpectedly" and, within 2.5 s, has a new sync process (new
        pid, same parent, logged started) that syncs again."""
        n = self.start_nginx()
        w0 = self.worker0(n)
        old, _ = self.wait_sync_process(n, w0)
        self.assert_syncs(n, self.keys[2], "before the kill")
        offset = n.error_log_size()
        self.allow(r"unknown process %d exited on signal 9" % old)
        self.allow(re.escape(ENDED))
        t0 = time.monotonic()
        os.kill(old, signal.SIGKILL)
        new, _ = self.wait_sync_process(n, w0, not_pid=old, timeout=2.5)
        took = time.monotonic() - t0
        print("\n  sync process %d killed, %d started %.0f ms later" % (old, new, took * 1000))
        self.assertNotEqual(new, old)
        self.assertFalse(is_sync_process(old), "the killed sync process %d is gone" % old)
        self.assertEqual(self.started_by(n, new, offset), w0,
                         "worker 0 logged \"api_key: sync process %d started\"" % new)
        log = n.error_log(offset)
        ended = [l for l in log.splitlines() if ENDED in l]
        self.assertEqual(len(ended), 1, "worker 0 logged the end once: %s\n%s" % (ended, log))
        self.assertIn("[alert] %d#" % w0, ended[0], "at [alert], by worker 0: %s" % ended[0])
        self.assertLess(log.index(ENDED), log.index("sync process %d started" % new),
                        "the end is logged before the new start:\n%s" % log)
        self.assert_only_sync_process(n, w0, new, "after the respawn")
        self.assert_single_threaded(n, "after the respawn")
        self.assert_syncs(n, self.keys[3], "after the respawn")
        time.sleep(0.3)
        self.assertEqual(self.sync_children(n)[w0], [new], "no further respawn: the new one "
                         "stays (children %s)" % self.describe_children(n))
        self.assertEqual(n.error_log(offset).count(ENDED), 1, "no further unexpected end")

    def test_4_client_connection_not_held_by_a_respawned_sync_process(self):
        """A keep-alive connection served by worker 0 is open while a new
        sync process is forked (after a SIGKILL of the old one). The new one
        does not hold that socket (/proc), and after a request with
        "Connection: close" on it the client reads EOF within 2 s."""
        n = self.start_nginx()
        w0 = self.worker0(n)
        old, _ = self.wait_sync_process(n, w0)
        self.allow(r"unknown process %d exited on signal 9" % old)
        self.allow(re.escape(ENDED))
        conn, worker, tries = None, None, 0
        for tries in range(1, 65):
            s = socket.create_connection(("127.0.0.1", n.port), timeout=5)
            s.sendall(b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
            status, headers = read_response(s)
            self.assertEqual(status, 200, "GET /ping on a kept-alive connection")
            self.assertNotEqual(headers.get("connection", "").lower(), "close")
            worker = int(headers["x-worker"])
            if worker == w0:
                conn = s
                break
            s.close()
        self.assertIsNotNone(conn, "some connection of 64 is served by worker 0 (%d); the last "
                             "was served by %s" % (w0, worker))
        self.addCleanup(conn.close)
        client_port = conn.getsockname()[1]
        inode = tcp_inode(n.port, client_port, "01")
        self.assertIsNotNone(inode, "the server side of the connection is in /proc/net/tcp")
        self.assertIn(inode, socket_inodes(w0), "worker 0 holds the connection's socket "
                      "(the /proc check sees it)")

        os.kill(old, signal.SIGKILL)
        new, _ = self.wait_sync_process(n, w0, not_pid=old, timeout=2.5)
        self.assertIn(inode, socket_inodes(w0),
                      "the connection is still open in worker 0 when %d was forked" % new)
        self.assertNotIn(inode, socket_inodes(new),
                         "the new sync process %d closed its copy of the client connection" % new)
        listen = tcp_inode(n.port, state="0A")
        self.assertNotIn(listen, socket_inodes(new),
                         "the new sync process %d closed its copy of the listening socket" % new)

        conn.sendall(b"GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        status, headers = read_response(conn)
        self.assertEqual(status, 200, "the second request on the connection is served")
        self.assertEqual(int(headers["x-worker"]), w0, "by worker 0 again")
        self.assertEqual(headers.get("connection", "").lower(), "close")
        t0 = time.monotonic()
        conn.settimeout(2.0)
        try:
            rest = conn.recv(4096)
        except socket.timeout:
            self.fail("no EOF within 2 s after the \"Connection: close\" response: the socket "
                      "is held open elsewhere; holders: %s"
                      % {p: inode in socket_inodes(p) for p in [w0, new] + n.workers()})
        except ConnectionResetError:
            rest = b""
        self.assertEqual(rest, b"", "nothing after the response but EOF")
        print("\n  connection served by worker 0 (try %d), EOF %.1f ms after the response"
              % (tries, (time.monotonic() - t0) * 1000))

    def test_5_reload_replaces_the_sync_process(self):
        """Reload (SIGHUP): once the old workers have exited the old sync
        process is gone (at most 3 s later), the new worker 0 has a new one
        that syncs, and it is the only one."""
        n = self.start_nginx()
        w0 = self.worker0(n)
        old, _ = self.wait_sync_process(n, w0)
        self.wait_ok(n, what="before the reload")
        old_workers = n.workers()
        offset = n.error_log_size()
        t0 = time.monotonic()
        n.reload()
        t_swapped = time.monotonic()
        try:
            wait_until(lambda: not is_sync_process(old), 3.0, interval=0.01)
        except TimeoutError:
            self.fail("the old sync process %d is gone within 3 s of the old workers' exit "
                      "(ppid %s); error.log:\n%s" % (old, _ppid(old), n.error_log(offset)))
        gone = time.monotonic()
        for w in old_workers:
            self.assertFalse(pid_alive(w), "old worker %d exited" % w)
        new_w0 = self.worker0(n, offset)
        self.assertNotIn(new_w0, old_workers)
        new, _ = self.wait_sync_process(n, new_w0, timeout=2.5)
        self.assertNotEqual(new, old)
        self.assertEqual(self.started_by(n, new, offset), new_w0,
                         "the new worker 0 logged \"api_key: sync process %d started\"" % new)
        self.assert_only_sync_process(n, new_w0, new, "after the reload")
        self.assert_single_threaded(n, "after the reload")
        ours = [p for p in all_sync_processes() if p in self.seen_sync]
        self.assertEqual(ours, [new], "only the new sync process runs")
        self.assert_syncs(n, self.keys[4], "after the reload")
        print("\n  reload: old workers gone %.0f ms after HUP, old sync process %d gone %.0f ms "
              "after HUP" % ((t_swapped - t0) * 1000, old, (gone - t0) * 1000))

    def test_6_quit_leaves_no_process(self):
        """Quit (SIGQUIT to the master): master, workers and sync process
        are all gone within 5 s; no process titled as a sync process with
        a pid this nginx started is left."""
        n = self.start_nginx()
        w0 = self.worker0(n)
        pid, _ = self.wait_sync_process(n, w0)
        self.wait_ok(n, what="before the quit")
        master, workers = n.master, n.workers()
        everyone = [master] + workers + [pid]
        t0 = time.monotonic()
        os.kill(master, signal.SIGQUIT)
        try:
            wait_until(lambda: not any(pid_alive(p) for p in everyone), 5.0, interval=0.01)
        except TimeoutError:
            self.fail("after SIGQUIT still alive: %s" % [(p, cmdline(p), _ppid(p))
                                                          for p in everyone if pid_alive(p)])
        took = time.monotonic() - t0
        n.master = None
        started = {int(m.group(2)) for m in START_RE.finditer(n.error_log())}
        self.assertEqual(started, {pid}, "one sync process was ever started: %s" % started)
        left = [p for p in all_sync_processes() if p in started | self.seen_sync]
        self.assertEqual(left, [], "no orphan sync process")
        print("\n  quit: all %d processes gone %.0f ms after SIGQUIT" % (len(everyone), took * 1000))

    def test_7_killed_worker_0_takes_its_sync_process_with_it(self):
        """SIGKILL of worker 0: its sync process exits on its own within
        1 s; the master's new worker 0 starts a new sync process that
        syncs."""
        n = self.start_nginx()
        w0 = self.worker0(n)
        old, _ = self.wait_sync_process(n, w0)
        self.wait_ok(n, what="before the kill")
        offset = n.error_log_size()
        self.allow(r"worker process %d exited on signal 9" % w0)
        t0 = time.monotonic()
        os.kill(w0, signal.SIGKILL)
        try:
            wait_until(lambda: not is_sync_process(old), 1.0, interval=0.005)
        except TimeoutError:
            self.fail("the sync process %d of the killed worker 0 exits within 1 s (ppid now "
                      "%s)" % (old, _ppid(old)))
        took = time.monotonic() - t0
        new_w0 = self.worker0(n, offset)
        self.assertNotEqual(new_w0, w0)
        new, _ = self.wait_sync_process(n, new_w0, timeout=2.5)
        self.assertNotEqual(new, old)
        self.assertEqual(self.started_by(n, new, offset), new_w0,
                         "the new worker 0 logged \"api_key: sync process %d started\"" % new)
        self.assert_only_sync_process(n, new_w0, new, "after worker 0 was killed")
        self.assert_single_threaded(n, "after worker 0 was killed")
        self.assertNotIn(ENDED, n.error_log(offset),
                         "no \"ended unexpectedly\": the sync process ended with its worker")
        self.assert_syncs(n, self.keys[5], "after worker 0 was killed")
        print("\n  worker 0 %d killed: sync process %d gone %.0f ms later; new worker 0 %d, "
              "sync process %d" % (w0, old, took * 1000, new_w0, new))

    def test_8_degraded_and_recovered_are_logged_once(self):
        """Worker 0's tick logs a zone's state changes, once each: Redis
        paused (SIGSTOP) past fail_after (1 s) gives one [warn] "no exchange
        with api_key_redis "r" ... degraded (fail=local)" (the default) by worker 0; SIGCONT
        gives one [notice] "synced with api_key_redis "r" again"."""
        n = self.start_nginx()
        w0 = self.worker0(n)
        self.wait_sync_process(n, w0)
        self.wait_ok(n, what="before the pause")
        offset = n.error_log_size()
        degraded = ('api_key_limit_zone "lz": no exchange with api_key_redis "r" for 1000 ms: '
                    'degraded (fail=local)')
        again = 'api_key_limit_zone "lz": synced with api_key_redis "r" again'
        self.redis.pause()
        try:
            wait_until(lambda: degraded in n.error_log(offset), 3.0,
                       what="the degraded line within 3 s of the pause")
            time.sleep(0.5)  # more ticks: no second line
        finally:
            self.redis.resume()
        wait_until(lambda: again in n.error_log(offset), 3.0,
                   what="the recovered line within 3 s of SIGCONT")
        time.sleep(0.5)
        lines = n.error_log(offset).splitlines()
        said = [l for l in lines if degraded in l]
        self.assertEqual(len(said), 1, "degraded logged once: %s" % said)
        self.assertIn("[warn] %d#" % w0, said[0], "at [warn], by worker 0: %s" % said[0])
        said = [l for l in lines if again in l]
        self.assertEqual(len(said), 1, "recovery logged once: %s" % said)
        self.assertIn("[notice] %d#" % w0, said[0], "at [notice], by worker 0: %s" % said[0])
        self.wait_ok(n, what="after the pause")


if __name__ == "__main__":
    unittest.main()
