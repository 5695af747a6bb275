"""Hardening: README "Security and threat model" and "Reload and revocation"
under hostile or careless input.

* ReloadUnderLoadTest: 50 reloads, each adding a key, while keep-alive
  clients send requests with keys that stay valid: none of them is ever
  refused, every added key works after its reload, no worker crashes.
* BadInputTest: empty, huge, binary and repeated credentials get SPEC's
  answer (or nginx's own 400) and nginx keeps serving.
* BadKeyFileTest: missing, empty, non-regular, over-1-GiB, deeply nested,
  random and non-UTF-8 key files fail `nginx -t` with a message naming the
  file, never a crash; a running nginx refuses them on reload.
* NoLeakTest: no presented key in the module's error-log lines, the access
  log, what the upstream receives, the status output or the shared memory
  of the zones.
"""

import os
import random
import re
import socket
import subprocess
import threading
import time
import unittest

from harness import (MESSAGES, NGINX, PAST, KeyFile, Nginx, NginxCase, bearer, key_hash,
                     new_key, request, wait_until, xkey)


def code_of(resp):
    """error.code of a JSON refusal, or None."""
    try:
        return resp.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def raw_request(path, header_lines, host="localhost"):
    """Bytes of a GET with Connection: close; header_lines are bytes, sent as is."""
    head = [b"GET " + path.encode() + b" HTTP/1.1", b"Host: " + host.encode(),
            b"Connection: close"] + list(header_lines)
    return b"\r\n".join(head) + b"\r\n\r\n"


# bytes allowed in a header value other than NUL, CR and LF
GARBAGE_BYTES = bytes(b for b in range(1, 256) if b not in (0x0a, 0x0d))


# --------------------------------------------------------------------------
# a minimal keep-alive HTTP/1.1 client

class ConnectionClosed(Exception):
    """The server closed the connection before sending any byte of a response."""

    def __init__(self, fresh):
        super().__init__("closed before any response byte (%s connection)"
                         % ("fresh" if fresh else "reused"))
        self.fresh = fresh


class KeepAliveClient:
    """One persistent connection; get() reconnects when it has none."""

    def __init__(self, port, timeout=5.0):
        self.port = port
        self.timeout = timeout
        self.sock = None

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def _recv(self):
        try:
            return self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return b""

    def get(self, path, headers):
        """(status, headers text, body) of one GET; raises ConnectionClosed if
        the connection ended before any byte of the response arrived."""
        fresh = self.sock is None
        if fresh:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        lines = ["GET %s HTTP/1.1" % path, "Host: localhost"]
        lines += ["%s: %s" % (n, v) for n, v in headers]
        try:
            self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        except (ConnectionResetError, BrokenPipeError):
            self.close()
            raise ConnectionClosed(fresh)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self._recv()
            if not chunk:
                self.close()
                if data:
                    raise ValueError("connection closed inside the response head: %r" % data[:300])
                raise ConnectionClosed(fresh)
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        text = head.decode("latin-1")
        status = int(text.split(" ", 2)[1])
        m = re.search(r"(?im)^content-length:\s*(\d+)\s*$", text)
        if m is None:
            self.close()
            raise ValueError("response without Content-Length: %r" % text[:300])
        length = int(m.group(1))
        while len(body) < length:
            chunk = self._recv()
            if not chunk:
                self.close()
                raise ValueError("connection closed inside the response body (%d of %d bytes)"
                                 % (len(body), length))
            body += chunk
        if len(body) > length:
            self.close()
            raise ValueError("%d bytes after the response" % (len(body) - length))
        if re.search(r"(?im)^connection:\s*close\s*$", text):
            self.close()
        return status, text, body


# --------------------------------------------------------------------------
# 1. reload under load

LOAD_HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
        api_key keys;
        location / {
            empty_gif;
        }
    }
"""


class ReloadUnderLoadTest(unittest.TestCase):
    RELOADS = 50
    THREADS = 4
    BUDGET = 40.0      # seconds for the whole reload loop; it takes ~10 s
    ATTEMPTS = 5       # tries of one request over connections the server closed

    def setUp(self):
        self.nginx = Nginx(LOAD_HTTP, name="hardening-load")
        self.addCleanup(self.nginx.cleanup)  # fails on [alert] or a crashed worker
        self.kf = KeyFile()
        self.stable = [self.kf.add("key_stable_%d" % i, plan="pro") for i in range(4)]
        self.keyfile = self.nginx.path("keys.yaml")
        self.kf.write(self.keyfile)
        self.nginx.start()

    def test_reloads_under_load(self):
        valid = list(self.stable)          # keys the clients pick from; only ever grows
        stop = threading.Event()
        lock = threading.Lock()
        failures = []
        stats = {"requests": 0, "reused_closed": 0, "fresh_closed": 0}
        hard_stop = time.monotonic() + self.BUDGET + 10

        def client(seed):
            rnd = random.Random(seed)
            c = KeepAliveClient(self.nginx.port)
            n = reused = fresh = 0
            try:
                while not stop.is_set() and time.monotonic() < hard_stop:
                    key = rnd.choice(valid)
                    for _ in range(self.ATTEMPTS):
                        try:
                            status, head, body = c.get("/", bearer(key))
                        except ConnectionClosed as e:
                            # nginx closes idle keep-alive connections of
                            # exiting workers; the request was not served
                            if e.fresh:
                                fresh += 1
                            else:
                                reused += 1
                            continue
                        except Exception as e:  # timeout, malformed response
                            c.close()
                            with lock:
                                failures.append("request failed: %s: %s" % (type(e).__name__, e))
                            break
                        n += 1
                        if status != 200:
                            with lock:
                                failures.append("%d for a valid key: %s %r"
                                                % (status, head.splitlines()[0], body[:200]))
                        break
                    else:
                        with lock:
                            failures.append("no response in %d attempts" % self.ATTEMPTS)
            finally:
                c.close()
                with lock:
                    stats["requests"] += n
                    stats["reused_closed"] += reused
                    stats["fresh_closed"] += fresh

        threads = [threading.Thread(target=client, args=(i,), name="load-%d" % i, daemon=True)
                   for i in range(self.THREADS)]
        for t in threads:
            t.start()
        added = []
        late = []
        t0 = time.monotonic()
        try:
            time.sleep(0.3)  # load is flowing before the first reload
            for i in range(self.RELOADS):
                if time.monotonic() - t0 > self.BUDGET:
                    self.fail("%d reloads did not fit in %.0f s (%d done)"
                              % (self.RELOADS, self.BUDGET, i))
                key = self.kf.add("key_added_%d" % i, plan="pro")
                self.kf.write(self.keyfile)  # temp file + rename
                self.nginx.reload()          # returns once the old workers have exited
                r = self.nginx.get("/", bearer(key))
                if r.status != 200:
                    late.append("key_added_%d: %d %s after its reload" % (i, r.status, code_of(r)))
                added.append(key)
                valid.append(key)            # from now on the clients use it too
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        took = time.monotonic() - t0

        print("\n    reload under load: %d reloads in %.1fs, %d requests by %d keep-alive "
              "clients, %d retried after a reused connection was closed, %d after a fresh one"
              % (len(added), took, stats["requests"], self.THREADS, stats["reused_closed"],
                 stats["fresh_closed"]))
        self.assertFalse(any(t.is_alive() for t in threads), "the load threads stopped")
        self.assertEqual(failures[:10], [],
                         "every request with a key that stayed valid got 200 (%d failures)"
                         % len(failures))
        self.assertGreater(stats["requests"], 1000, "the load loop really sent requests")
        self.assertEqual(stats["fresh_closed"], 0,
                         "only idle keep-alive connections of exiting workers are closed "
                         "unanswered: a new connection always gets its response")
        self.assertEqual(late, [], "every added key is accepted right after its reload")
        for i, key in enumerate(self.stable + added):
            r = self.nginx.get("/", bearer(key))
            self.assertEqual(r.status, 200, "key %d of %d still accepted after all reloads"
                             % (i + 1, len(self.stable) + len(added)))
        log = self.nginx.error_log()
        self.assertNotIn("exited on signal", log, "no worker crashed during the reloads")
        self.assertNotIn("[alert]", log, "no [alert] during the reloads")
        self.assertNotIn("[emerg]", log, "no reload failed")
        self.assertEqual(len(self.nginx.workers()), 2, "two workers serve after the reloads")


# --------------------------------------------------------------------------
# 2. bad input

BAD_INPUT_HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        # room for an 8 KB key in one header line; 64 KB still exceeds it
        large_client_header_buffers 4 16k;
        api_key keys;

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
    }
"""

INVALID = MESSAGES["invalid_api_key"]


class BadInputTest(NginxCase):
    HTTP = BAD_INPUT_HTTP

    @classmethod
    def prepare(cls, nginx):
        kf = KeyFile()
        cls.k1 = kf.add("key_one")
        cls.k2 = kf.add("key_two", key=new_key("wfk_"))
        kf.write(nginx.path("keys.yaml"))

    def setUp(self):
        super().setUp()
        self.workers_before = set(self.nginx.workers())

    def assertServing(self, what):
        """A valid key still gets 200 (twice: whichever worker answers) and no
        worker was replaced (a crashed worker is respawned with a new pid)."""
        for i in range(2):
            r = self.get("/", bearer(self.k1))
            self.assertEqual(r.status, 200, "after %s nginx still serves a valid key (#%d); got %r"
                             % (what, i + 1, r))
        self.assertEqual(set(self.nginx.workers()), self.workers_before,
                         "after %s the same workers run: none crashed" % what)

    def assertFromNginx(self, r, what):
        """nginx's own 4xx from reading the request: not the module's JSON."""
        self.assertIn(r.status, (400, 494), "%s: nginx answers 400 (494); got %r" % (what, r))
        self.assertIsNone(r.header("X-Request-Id"),
                          "%s: the answer is nginx's, before the module runs" % what)
        self.assertIn(b"nginx", r.body, "%s: nginx's own error page" % what)

    # -- 0-byte values

    def test_empty_x_api_key(self):
        r = self.get("/header/", [("x-api-key", "")])
        self.assertError(r, 401, "missing_api_key", MESSAGES["missing_api_key"],
                         "x-api-key with a 0-byte value, the only source")
        self.assertServing("an empty x-api-key")

    def test_empty_bearer(self):
        r = self.get("/", [("Authorization", "Bearer")])
        self.assertError(r, 401, "invalid_api_key", INVALID, "Authorization: Bearer, no token")
        r = self.get("/", [("Authorization", "Bearer \t ")])
        self.assertError(r, 401, "invalid_api_key", INVALID, "Authorization: Bearer and blanks")
        self.assertServing("an empty Bearer token")

    def test_empty_authorization(self):
        r = self.get("/", [("Authorization", "")])
        self.assertError(r, 401, "missing_api_key", MESSAGES["missing_api_key"],
                         "an empty Authorization header is no Bearer credential")
        self.assertServing("an empty Authorization header")

    # -- huge values

    def test_8k_key(self):
        big = "jfi_sk_live_" + "a" * 8192
        r = self.get("/", bearer(big))
        self.assertError(r, 401, "invalid_api_key", INVALID, "an 8 KB Bearer key (over 256)")
        r = self.get("/header/", xkey(big))
        self.assertError(r, 401, "invalid_api_key", INVALID, "an 8 KB x-api-key (over 256)")
        r = self.get("/both/", bearer(big) + xkey(big))
        self.assertError(r, 401, "invalid_api_key", None, "the same 8 KB key in both sources")
        self.assertServing("8 KB keys")

    def test_64k_header(self):
        r = self.get("/", [("X-Big", "a" * 65536)])
        self.assertFromNginx(r, "a 64 KB header")
        r = self.get("/", bearer("jfi_sk_live_" + "a" * 65536))
        self.assertFromNginx(r, "a 64 KB Bearer key")
        r = self.get("/header/", xkey("a" * 65536))
        self.assertFromNginx(r, "a 64 KB x-api-key")
        self.assertServing("64 KB headers")

    # -- binary garbage (no NUL, CR, LF)

    def raw(self, path, *lines):
        return request(self.nginx.port, raw=raw_request(path, lines))

    def test_garbage_all_bytes(self):
        r = self.raw("/", b"Authorization: Bearer " + GARBAGE_BYTES)
        self.assertError(r, 401, "invalid_api_key", INVALID,
                         "Bearer followed by bytes 0x01-0xff without CR/LF")
        r = self.raw("/", b"Authorization: " + GARBAGE_BYTES)
        self.assertError(r, 401, "missing_api_key", MESSAGES["missing_api_key"],
                         "Authorization of bytes 0x01-0xff is no Bearer credential")
        r = self.raw("/header/", b"x-api-key: " + GARBAGE_BYTES)
        self.assertError(r, 401, "invalid_api_key", INVALID, "x-api-key of bytes 0x01-0xff")
        self.assertServing("binary header values")

    def test_garbage_random(self):
        rnd = random.Random(20261124)
        seen = set()
        for i in range(60):
            n = rnd.choice((1, 15, 16, 40, 255, 256, 257, 1000, 4000))
            junk = bytes(rnd.choice(GARBAGE_BYTES) for _ in range(n))
            where = i % 3
            if where == 0:
                raw = raw_request("/", [b"Authorization: Bearer " + junk])
            elif where == 1:
                raw = raw_request("/header/", [b"x-api-key: " + junk])
            else:
                raw = raw_request("/both/", [b"Authorization: Bearer " + junk,
                                             b"x-api-key: " + junk[::-1]])
            r = request(self.nginx.port, raw=raw)
            seen.add(r.status)
            self.assertLess(r.status, 500, "random bytes (%d, source %d) never get a 5xx; got %r"
                            % (n, where, r))
            self.assertIn(r.status, (400, 401), "random bytes are refused; got %r" % r)
            if r.status == 401:
                self.assertIn(code_of(r), ("invalid_api_key", "missing_api_key"),
                              "random bytes: a 401 says invalid or missing; got %r" % r)
        self.assertServing("60 random binary keys")

    # -- many headers

    def test_many_authorization_headers(self):
        r = self.get("/", bearer(self.k1) * 100)
        self.assertFromNginx(r, "100 Authorization headers")
        r = self.get("/", bearer(self.k1) + bearer(new_key()))
        self.assertFromNginx(r, "two different Authorization headers")
        self.assertServing("repeated Authorization headers")

    def test_many_x_api_key_headers(self):
        r = self.get("/header/", xkey(self.k2) * 500)
        self.assertEqual(r.status, 200, "500 copies of one x-api-key are one key; got %r" % r)
        self.assertEqual(r.echoed_headers().get_all("x-api-key"), [],
                         "no copy of the 500 reaches the upstream")
        r = self.get("/header/", xkey(self.k2) * 250 + xkey(self.k1) + xkey(self.k2) * 249)
        self.assertError(r, 401, "invalid_api_key", MESSAGES["multiple"],
                         "one different key among 500 x-api-key headers")
        r = self.get("/header/", [("x-api-key", "")] * 500)
        self.assertError(r, 401, "missing_api_key", MESSAGES["missing_api_key"],
                         "500 empty x-api-key headers are no key")
        self.assertServing("500 x-api-key headers")

    # -- mixed sources

    def test_mixed_sources(self):
        r = self.get("/both/", bearer(self.k2) + xkey(self.k2))
        self.assertEqual(r.status, 200, "the same key as Bearer and x-api-key is accepted")
        r = self.get("/both/", bearer(self.k1) + xkey(self.k2))
        self.assertError(r, 401, "invalid_api_key", MESSAGES["multiple"],
                         "different keys as Bearer and x-api-key")
        r = self.get("/both/", [("Authorization", "Bearer")] + xkey(self.k2))
        self.assertError(r, 401, "invalid_api_key", None,
                         "an empty Bearer token next to a valid x-api-key")
        self.assertServing("mixed sources")

    # -- valid prefix, wrong length

    def test_prefix_wrong_length(self):
        for prefix in ("jfi_sk_live_", "wfk_"):
            for n in (3, 300):
                key = new_key(prefix, n)
                r = self.get("/", bearer(key))
                self.assertError(r, 401, "invalid_api_key", INVALID,
                                 "prefix %s + %d characters (Bearer)" % (prefix, n))
                r = self.get("/header/", xkey(key))
                self.assertError(r, 401, "invalid_api_key", INVALID,
                                 "prefix %s + %d characters (x-api-key)" % (prefix, n))
        self.assertServing("keys of the wrong length")


# --------------------------------------------------------------------------
# 3. bad key files

KEYFILE_HTTP = """
    api_key_zone keys:1m file=FILE;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        api_key keys;
        location / {
            empty_gif;
        }
    }
"""

DEPTH = 100000
RECORD = ("version: 1\nkeys:\n  - id: key_a\n    hash: %s\n    owner: user_1\n"
          % key_hash("jfi_sk_live_" + "a" * 40))


def nested_flow():
    return "version: 1\nkeys: " + "[" * DEPTH + "]" * DEPTH + "\n"


def nested_block_maps():
    lines = ["version: 1", "keys:"]
    lines += ["  " * (i + 1) + "k%d:" % i for i in range(2000)]
    return "\n".join(lines) + " x\n"


def nested_block_lists():
    return RECORD + "    scopes:\n" + "".join("  " * (i + 3) + "-\n" for i in range(2000))


class BadKeyFileTest(unittest.TestCase):
    """nginx -t on one bad key file per test; nothing is started."""

    def setUp(self):
        self.nginx = Nginx(name="hardening-keyfile")
        self.nginx.allow_emerg = True  # a failed nginx -t logs [emerg]
        self.addCleanup(self.nginx.cleanup)
        self.keyfile = self.nginx.path("keys.yaml")

    def check(self, what, words=(), path=None, timeout=60.0):
        """nginx -t fails cleanly: exit status 1, no crash, the file named."""
        path = path or self.keyfile
        self.nginx.write_config(KEYFILE_HTTP.replace("FILE", path))
        t0 = time.monotonic()
        rc, out = self.nginx.test_config(timeout=timeout)
        took = time.monotonic() - t0
        self.assertNotIn("Segmentation fault", out, "%s: nginx -t does not crash" % what)
        self.assertEqual(rc, 1, "%s: nginx -t exits with status 1 (a crash would be "
                         "negative or >128); output:\n%s" % (what, out[-2000:]))
        self.assertIn("[emerg]", out, "%s: the failure is an [emerg] message" % what)
        self.assertIn(path, out, "%s: the message names the file; output:\n%s"
                      % (what, out[-2000:]))
        self.assertLess(took, 20.0, "%s: nginx -t answers in bounded time (%.1fs)" % (what, took))
        line = next((l for l in out.splitlines() if path in l), "")
        for w in words:
            self.assertRegex(line, w, "%s: the message says %r" % (what, w))
        return line

    def write(self, data):
        with open(self.keyfile, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())

    def test_missing_file(self):
        self.check("a missing key file", [r"No such file"])

    def test_missing_directory_component(self):
        self.check("a key file in a missing directory", [r"No such file"],
                   path=self.nginx.path("no/such/dir/keys.yaml"))

    def test_file_as_directory_component(self):
        self.write(RECORD)
        self.check("a path through a regular file", [r"(?i)not a directory"],
                   path=self.keyfile + "/keys.yaml")

    if os.geteuid() != 0:
        # Defined only for non-root runs: root reads a mode-000 file anyway
        # (CAP_DAC_OVERRIDE). (t/run.py cannot report skipped tests, so the
        # test is left out rather than skipped.) The missing-directory and
        # file-as-directory tests above cover open() failures as root.
        def test_unreadable_file(self):
            self.write(RECORD)
            os.chmod(self.keyfile, 0)
            self.check("an unreadable key file", [r"(?i)permission denied"])

    def test_empty_file(self):
        self.write(b"")
        self.check("an empty key file", [re.escape(self.keyfile) + r":\d+:"])

    def test_directory(self):
        os.mkdir(self.keyfile)
        self.check("a directory as the key file", [r"(?i)not a regular file"])

    def test_sparse_over_1gib(self):
        with open(self.keyfile, "wb"):
            pass
        os.truncate(self.keyfile, (1 << 30) + 1)
        self.check("a sparse file of 1 GiB + 1 byte", [r"(?i)larger than 1 GiB"])

    def test_deep_flow_nesting(self):
        self.write(nested_flow())
        self.check("keys: with %d nested flow sequences" % DEPTH,
                   [re.escape(self.keyfile) + r":\d+:"])

    def test_deep_flow_nesting_top_level(self):
        self.write("[" * DEPTH + "]" * DEPTH + "\n")
        self.check("a document of %d nested flow sequences" % DEPTH,
                   [re.escape(self.keyfile) + r":\d+:"])
        self.write("{a: " * DEPTH + "}" * DEPTH + "\n")
        self.check("a document of %d nested flow maps" % DEPTH,
                   [re.escape(self.keyfile) + r":\d+:"])

    def test_deep_block_nesting(self):
        self.write(nested_block_maps())
        self.check("2,000 levels of block maps", [re.escape(self.keyfile) + r":\d+:"])
        self.write(nested_block_lists())
        self.check("2,000 levels of block lists under scopes",
                   [re.escape(self.keyfile) + r":\d+:"])

    def test_random_bytes(self):
        rnd = random.Random(1)
        self.write(bytes(rnd.getrandbits(8) for _ in range(1 << 20)) * 10)
        self.check("10 MB of random bytes", [re.escape(self.keyfile) + r":\d+:"])

    def test_invalid_utf8(self):
        self.write(RECORD.replace("owner: user_1", "owner: user_\xff").encode("latin-1"))
        self.check("invalid UTF-8 in a value", [re.escape(self.keyfile) + r":5:"])
        self.write(RECORD.encode() + b"    plan: \xc3\x28\xa0\xa1\n")
        self.check("a truncated UTF-8 sequence in a value", [re.escape(self.keyfile) + r":6:"])


BAD_RELOAD_HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        api_key keys;
        location / {
            empty_gif;
        }
    }
"""


class BadKeyFileReloadTest(unittest.TestCase):
    """The same files given to a running nginx: each reload fails, the old
    table keeps serving, nothing crashes."""

    def test_reload_refuses_bad_files(self):
        n = Nginx(BAD_RELOAD_HTTP, name="hardening-badreload")
        self.addCleanup(n.cleanup)
        kf = KeyFile()
        k1 = kf.add("key_one")
        path = n.path("keys.yaml")
        kf.write(path)
        n.start()
        workers = set(n.workers())
        rnd = random.Random(2)

        def writer(data):
            def make(p):
                with open(p, "wb") as f:
                    f.write(data)
            return make

        def sparse(p):
            with open(p, "wb"):
                pass
            os.truncate(p, (1 << 30) + 1)

        cases = [
            ("missing", lambda p: None),
            ("empty", writer(b"")),
            ("directory", os.mkdir),
            ("over 1 GiB", sparse),
            ("deep nesting", writer(nested_flow().encode())),
            ("random bytes", writer(bytes(rnd.getrandbits(8) for _ in range(1 << 20)))),
        ]
        for what, make in cases:
            os.remove(path)  # no check=: nginx reads the file only at the reload
            make(path)
            log = n.reload(expect_failure=True)
            self.assertIn(path, log, "reload with a %s key file: error.log names the file" % what)
            r = n.get("/", bearer(k1))
            self.assertEqual(r.status, 200, "after a reload with a %s file the old table serves"
                             % what)
            self.assertEqual(set(n.workers()), workers,
                             "the failed reload (%s) left the same workers" % what)
            if os.path.isdir(path):
                os.rmdir(path)
            elif os.path.exists(path):
                os.remove(path)
            kf.write(path)
        self.assertNotIn("exited on signal", n.error_log(), "no process crashed")


# --------------------------------------------------------------------------
# 4. no leaks of secrets

LEAK_VARS = ("id=$api_key_id owner=$api_key_owner org=$api_key_organization_id "
             "plan=$api_key_plan env=$api_key_environment scopes=[$api_key_scopes] "
             "err=$api_key_error rid=$api_key_request_id left=$api_key_limit_remaining")

LEAK_HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;
    api_key_limit_zone limits:1m;

    log_format leak '$remote_addr "$request" $status uri=$request_uri args=$args '
                    'xff=$http_x_forwarded_for pxff=$proxy_add_x_forwarded_for '
                    'ua="$http_user_agent" www="$sent_http_www_authenticate" '
                    'up=$upstream_status VARS';

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        access_log {prefix}/leak.log leak;
        api_key keys;
        api_key_hide_credentials on;
        api_key_source bearer header=x-api-key;
        api_key_limit limits read 1000r/m;
        api_key_limit limits write 1000r/m;

        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Api-Key-Vars "VARS";

        location / {
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /scoped/ {
            api_key_scope admin:write;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /dry/ {
            api_key_dry_run on;
            api_key_scope admin:write;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location = /status {
            api_key off;
            api_key_status;
        }
        location = /metrics {
            api_key off;
            api_key_status prometheus;
        }
    }
""".replace("VARS", LEAK_VARS)


def nginx_has_debug():
    try:
        out = subprocess.run([NGINX, "-V"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             timeout=10).stdout.decode("utf-8", "replace")
    except (OSError, subprocess.SubprocessError):
        return False
    return "--with-debug" in out


NGINX_DEBUG = nginx_has_debug()


def ptrace_scope():
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


CAN_READ_MEM = os.geteuid() == 0 or ptrace_scope() == 0


def shared_mappings(pid):
    """(start, end, name) of the shared read-write mappings of a process:
    nginx's shared memory zones (mmap'ed /dev/zero, or SysV)."""
    out = []
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) < 6 or not parts[1].startswith("rw") or parts[1][3] != "s":
                continue
            name = parts[5].strip()
            if "/dev/zero" in name or "SYSV" in name:
                start, end = (int(x, 16) for x in parts[0].split("-"))
                out.append((start, end, name))
    return out


def read_shared_memory(pid):
    """The bytes of every shared zone mapping of pid, concatenated (with a
    separator, so nothing matches across two zones)."""
    chunks = []
    with open("/proc/%d/mem" % pid, "rb", 0) as mem:
        for start, end, _ in shared_mappings(pid):
            mem.seek(start)
            chunks.append(mem.read(end - start))
    return b"\n--zone--\n".join(chunks)


def module_lines(text):
    """Error-log lines written by the module (they say "api key" or "api_key")."""
    return [l for l in text.splitlines() if "api key" in l or "api_key" in l]


class NoLeakTest(NginxCase):
    HTTP = LEAK_HTTP
    MAIN = "error_log {prefix}/debug.log debug;"

    @classmethod
    def prepare(cls, nginx):
        kf = KeyFile()
        cls.kvalid = kf.add("key_leak_valid", owner="user_1", organization_id="org_1",
                            plan="pro", scopes=["admin:write", "a:read"])
        cls.kother = kf.add("key_leak_other", key=new_key("wfk_"), owner="user_2", plan="pro",
                            scopes=["admin:write"])
        cls.kreadonly = kf.add("key_leak_readonly", owner="user_3", plan="pro",
                               scopes=["a:read"])
        cls.krevoked = kf.add("key_leak_revoked", owner="user_4", plan="pro",
                              scopes=["admin:write"], revoked_at=PAST)
        kf.write(nginx.path("keys.yaml"))
        cls.kunknown = new_key()
        cls.kunknown_wfk = new_key("wfk_")
        cls.all_keys = [cls.kvalid, cls.kother, cls.kreadonly, cls.krevoked, cls.kunknown,
                        cls.kunknown_wfk]

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.responses = []
        if cls._setup_error:
            return
        try:
            cls.send_all()
        except Exception as e:
            cls._setup_error = "sending the requests failed: %s: %s" % (type(e).__name__, e)

    @classmethod
    def send_all(cls):
        n = cls.nginx
        v, o, ro, rv, u, uw = (cls.kvalid, cls.kother, cls.kreadonly, cls.krevoked,
                               cls.kunknown, cls.kunknown_wfk)
        ua = [("User-Agent", "hardening-test"), ("X-Forwarded-For", "192.0.2.7")]
        plan = [
            ("/", bearer(v), 200),                       # accepted
            ("/", xkey(o), 200),                         # accepted through x-api-key
            ("/scoped/", bearer(v) + xkey(v), 200),      # the same key in both sources
            ("/", bearer(rv), 401),                      # revoked
            ("/scoped/", bearer(ro), 403),               # wrong scope
            ("/", bearer(u), 401),                       # unknown
            ("/", xkey(uw), 401),                        # unknown, x-api-key
            ("/", bearer(v) + xkey(o), 401),             # two keys
            ("/", bearer(u) + xkey(v), 401),             # two keys, one unknown
            ("/?q=1", bearer(v) + [("x-api-key", "")], 200),
            ("/dry/", bearer(rv), 200),                  # dry run: refused keys go upstream
            ("/dry/", bearer(ro) + xkey(ro), 200),
            ("/dry/", xkey(u), 200),
        ]
        for path, headers, want in plan:
            r = n.get(path, headers + ua)
            if r.status != want:
                raise AssertionError("%s %r: expected %d, got %r" % (path, headers, want, r))
            cls.responses.append((path, r))
        # nginx answers 400 to a second Authorization header, before the module
        r = n.get("/", bearer(v) + bearer(o))
        if r.status != 400:
            raise AssertionError("two Authorization headers: expected 400, got %r" % r)
        # the access log is written after the response: wait for every line
        wait_until(lambda: n.access_log("leak.log").count("\n") >= len(plan) + 1, 5.0,
                   what="access log lines")

    def secrets(self, key):
        """The whole key and its part after the prefix (the secret part)."""
        return [key, key.split("_")[-1]]

    def assertNoKey(self, text, what):
        for i, key in enumerate(self.all_keys):
            for s in self.secrets(key):
                self.assertNotIn(s, text, "%s holds no presented key (key #%d)" % (what, i + 1))

    # (a) error log, module lines

    def test_module_error_log_lines(self):
        lines = module_lines(self.nginx.error_log()) + module_lines(
            self.nginx.access_log("debug.log"))
        self.assertTrue(any("api key refused" in l for l in lines),
                        "sanity: the module's refusal lines are in the logs")
        self.assertTrue(any('key id "key_leak_revoked"' in l for l in lines),
                        "sanity: a refusal line names the public key id")
        self.assertTrue(any("api key dry run" in l for l in lines),
                        "sanity: the dry-run lines are in the logs")
        self.assertNoKey("\n".join(lines), "the module's error-log lines (info and debug)")

    def test_error_log_info(self):
        # error.log is at info: the module's lines and nginx's own; the only
        # line allowed to show a key is nginx core's "duplicate header line"
        bad = [l for l in self.nginx.error_log().splitlines()
               if any(s in l for k in self.all_keys for s in self.secrets(k))
               and "client sent duplicate header line" not in l]
        self.assertEqual(bad, [], "no error.log line at info holds a key, except nginx "
                         "core's duplicate-header line")

    def test_nginx_core_duplicate_header_line(self):
        # nginx core (ngx_http_process_unique_header_line), not the module,
        # logs both Authorization values at info level: the README should warn
        text = self.nginx.error_log()
        self.assertIn("client sent duplicate header line: \"Authorization: Bearer %s\""
                      % self.kother, text,
                      "documented: nginx core logs a repeated Authorization header, key "
                      "included, at info level")

    if NGINX_DEBUG:
        # only with an nginx built --with-debug (Debian's is); otherwise
        # there are no debug lines to document
        def test_nginx_core_debug_logs_headers(self):
            text = self.nginx.access_log("debug.log")
            self.assertIn('http header: "Authorization: Bearer %s"' % self.kvalid, text,
                          "documented: nginx core's debug log shows every request header, "
                          "Authorization included (the README should warn)")
            self.assertIn('http header: "x-api-key: %s"' % self.kother, text,
                          "documented: nginx core's debug log shows x-api-key too")
            core = [l for l in text.splitlines()
                    if any(s in l for k in self.all_keys for s in self.secrets(k))]
            others = [l for l in core if "http header:" not in l
                      and "client sent duplicate header line" not in l]
            self.assertEqual(others, [],
                             "in the debug log only nginx core's header lines show keys")

    # (b) access log

    def test_access_log(self):
        text = self.nginx.access_log("leak.log")
        self.assertIn("id=key_leak_valid", text, "sanity: $api_key_id is in the access log")
        self.assertIn("err=revoked_api_key", text, "sanity: refusals are in the access log")
        self.assertIn("xff=192.0.2.7", text, "sanity: $http_x_forwarded_for is logged")
        self.assertNoKey(text, "the access log with every $api_key_* variable")

    # (c) the upstream

    def test_upstream(self):
        proxied = [(p, r) for p, r in self.responses if r.status == 200]
        self.assertEqual(len(proxied), 7, "sanity: seven requests reached the upstream")
        for path, r in proxied:
            doc = r.json()
            self.assertIn("X-Api-Key-Vars", dict(doc["headers"]),
                          "sanity: the upstream got the $api_key_* variables (%s)" % path)
            self.assertNoKey(r.text, "what the upstream received for %s (headers, body, "
                             "request line)" % path)
        dry_ids = [dict(r.json()["headers"])["X-Api-Key-Vars"] for p, r in proxied
                   if p == "/dry/"]
        self.assertTrue(any("id=key_leak_revoked" in v for v in dry_ids),
                        "sanity: a refused key went upstream in dry run, by id")

    # (e) refusal bodies and the status output

    def test_responses_and_status(self):
        for path, r in self.responses:
            if r.status != 200:
                self.assertNoKey(r.raw.decode("latin-1"), "the %d answer to %s" % (r.status, path))
        for path in ("/status", "/metrics"):
            r = self.get(path)
            self.assertEqual(r.status, 200, "%s answers" % path)
            self.assertIn("key_leak_valid", r.text, "sanity: %s names key ids" % path)
            self.assertNoKey(r.text, "%s output" % path)

    # (d) shared memory
    if CAN_READ_MEM:
        # reading another process's /proc/<pid>/mem needs root, or the same
        # user with Yama's ptrace_scope 0 (nginx daemonizes: not our child)
        def test_shared_memory(self):
            pids = [self.nginx.master] + self.nginx.workers()
            dumps = {pid: read_shared_memory(pid) for pid in pids}
            for pid, data in dumps.items():
                self.assertGreater(len(data), 1 << 20, "sanity: process %d maps the zones "
                                   "(%d bytes)" % (pid, len(data)))
                self.assertIn(b"key_leak_valid", data,
                              "sanity: the scan sees a stored key id in process %d" % pid)
                digest = bytes.fromhex(key_hash(self.kvalid)[7:])
                self.assertTrue(digest in data or key_hash(self.kvalid)[7:].encode() in data,
                                "sanity: the scan sees a stored key digest in process %d" % pid)
                for i, key in enumerate(self.all_keys):
                    for s in self.secrets(key):
                        self.assertNotIn(s.encode(), data,
                                         "shared memory of process %d holds no presented key "
                                         "(key #%d)" % (pid, i + 1))


if __name__ == "__main__":
    unittest.main()
