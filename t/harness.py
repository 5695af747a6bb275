"""Integration-test harness for ngx_http_api_key_module.

In the spirit of nginx-tests' Test::Nginx, with Python's standard library only:

* ``Nginx``: a throw-away prefix under /tmp with a complete nginx.conf built
  from an ``http {}`` body, free 127.0.0.1 ports, start/stop/reload/``nginx -t``
  and an error-log check at teardown (no ``[alert]``, no ``[emerg]`` unless a
  test expects one, never "exited on signal").
* ``request()``: HTTP/1.1 over a raw socket, so tests can send duplicate
  headers and odd values exactly as written.
* ``curl_h2()``: a request over HTTP/2 without TLS (h2c) through curl;
  ``h2c_listen()`` the listen lines for the nginx version under
  test; ``require_http2()`` skips (or with REQUIRE_HTTP2=1 fails) a class
  when curl or nginx cannot do HTTP/2.
* ``echo_upstream()``: a threaded HTTP server on 127.0.0.1 that answers 200
  with a JSON account of the request line and every header it received.
* Key helpers: ``new_key()``, ``key_hash()`` and ``KeyFile`` (writes the YAML
  key file from Python values).
* ``NginxCase``: a unittest base class with one nginx per test class;
  ``ConfigCheckCase``: one for ``nginx -t`` on a configuration per call.
* Small utilities also used by scripts/bench, scripts/request-cost and
  scripts/sanitize_valgrind.py: ``wait_until()``, ``free_port()``,
  ``listening()``, ``pid_alive()``, ``children_of()``.

Environment:
  NGINX            nginx binary (default /usr/sbin/nginx)
  API_KEY_MODULE   module .so (default <repo>/build/module/ngx_http_api_key_module.so)
  KEEP=1           keep the temporary prefixes (their paths are printed)
  REQUIRE_HTTP2=1  HTTP/2 tests fail instead of skipping when curl or nginx
                   cannot do HTTP/2 (.ci/run and scripts/test-matrix set it)
"""

import hashlib
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import threading
import time
import unittest

T_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(T_DIR)
NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")
MODULE = os.path.abspath(os.environ.get(
    "API_KEY_MODULE", os.path.join(REPO, "build", "module", "ngx_http_api_key_module.so")))
KEEP = os.environ.get("KEEP") == "1"
# nginx reads $NGINX as sockets inherited from a binary upgrade: the variable
# that names the binary here must not reach it.
NGINX_ENV = {k: v for k, v in os.environ.items() if k != "NGINX"}

REQUEST_ID_RE = re.compile(r"^req_[0-9a-z]{12,}$")
BASE62 = string.ascii_letters + string.digits

MESSAGES = {
    "missing_api_key": "No API key was provided.",
    "invalid_api_key": "The API key provided is invalid.",
    "multiple": "Multiple API keys were provided.",
    "revoked_api_key": "The API key provided has been revoked.",
    "expired_api_key": "The API key provided has expired.",
    "plan_required": "The API is available on paid plans only.",
    "ip_not_allowed": "The API key cannot be used from this IP address.",
}


def scope_message(scope):
    return "The API key does not have the required scope '%s'." % scope


# --------------------------------------------------------------------------
# small utilities

def wait_until(predicate, timeout=10.0, interval=0.02, what="condition"):
    """Polls predicate() until it returns a true value; raises after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def free_port():
    """A currently free TCP port on 127.0.0.1 (bind to port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _proc_stat(pid):
    """(state, ppid) of a process from /proc/<pid>/stat, or None if gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    # comm may contain blanks and parentheses: split after the last ')'
    rest = data[data.rfind(")") + 2:].split()
    return rest[0], int(rest[1])


def pid_alive(pid):
    st = _proc_stat(pid)
    return st is not None and st[0] != "Z"


def children_of(ppid):
    """Live child pids of ppid, read from /proc/*/stat."""
    kids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = _proc_stat(int(name))
        if st and st[1] == ppid and st[0] != "Z":
            kids.append(int(name))
    return sorted(kids)


class Headers:
    """Case-insensitive, multi-valued, order-preserving header list."""

    def __init__(self, pairs=()):
        self.pairs = [(str(k), str(v)) for k, v in pairs]

    def get(self, name, default=None):
        """First value of a header, or default."""
        for k, v in self.pairs:
            if k.lower() == name.lower():
                return v
        return default

    def get_all(self, name):
        return [v for k, v in self.pairs if k.lower() == name.lower()]

    def names(self):
        return [k.lower() for k, _ in self.pairs]

    def __contains__(self, name):
        return any(k.lower() == name.lower() for k, _ in self.pairs)

    def __getitem__(self, name):
        v = self.get(name)
        if v is None:
            raise KeyError(name)
        return v

    def __iter__(self):
        return iter(self.pairs)

    def __repr__(self):
        return "Headers(%r)" % (self.pairs,)


# --------------------------------------------------------------------------
# HTTP client over a raw socket

class Response:
    def __init__(self, status, reason, headers, body, raw):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.raw = raw

    def header(self, name, default=None):
        return self.headers.get(name, default)

    def header_all(self, name):
        return self.headers.get_all(name)

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def echoed_headers(self):
        """Headers the echo upstream received (only for proxied 200s)."""
        return Headers(self.json()["headers"])

    def __repr__(self):
        return "<Response %d %r headers=%r body=%r>" % (
            self.status, self.reason, self.headers.pairs, self.body[:300])


def _dechunk(data):
    out = bytearray()
    pos = 0
    while True:
        eol = data.index(b"\r\n", pos)
        size = int(data[pos:eol].split(b";")[0].strip(), 16)
        pos = eol + 2
        if size == 0:
            return bytes(out)
        out += data[pos:pos + size]
        pos += size + 2


def request(port, method="GET", path="/", headers=(), body=None, timeout=10.0,
            host="localhost", raw=None):
    """One HTTP/1.1 request with Connection: close, sent exactly as given.

    headers: list of (name, value) pairs, sent in order, duplicates allowed.
    raw: bytes to send instead of a built request.
    """
    if raw is None:
        lines = ["%s %s HTTP/1.1" % (method, path)]
        names = [n.lower() for n, _ in headers]
        if host is not None and "host" not in names:
            lines.append("Host: %s" % host)
        if "connection" not in names:
            lines.append("Connection: close")
        if body is not None:
            if isinstance(body, str):
                body = body.encode()
            if "content-length" not in names and "transfer-encoding" not in names:
                lines.append("Content-Length: %d" % len(body))
        for name, value in headers:
            lines.append("%s: %s" % (name, value))
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")

    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        chunks = []
        while True:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                raise TimeoutError("no complete response within %.1fs: %r"
                                   % (timeout, b"".join(chunks)[:500]))
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return parse_response(b"".join(chunks), method)


# --------------------------------------------------------------------------
# the nginx under test, and HTTP/2 through curl

_nginx_info = {}


def nginx_build_info():
    """(version tuple, configure arguments text) of the nginx under test, from
    `nginx -V` (cached); ((), "") when it cannot be run."""
    if NGINX not in _nginx_info:
        try:
            out = subprocess.run([NGINX, "-V"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 timeout=30, env=NGINX_ENV).stdout.decode("utf-8", "replace")
        except (OSError, subprocess.SubprocessError):
            out = ""
        m = re.search(r"^nginx version: [^/\s]+/(\d+(?:\.\d+)*)", out, re.M)
        version = tuple(int(x) for x in m.group(1).split(".")) if m else ()
        m = re.search(r"^configure arguments:(.*)$", out, re.M)
        _nginx_info[NGINX] = (version, m.group(1) if m else "")
    return _nginx_info[NGINX]


def nginx_version():
    """The version of the nginx under test as a tuple, e.g. (1, 22, 1)."""
    return nginx_build_info()[0]


def h2c_listen(port="{port}"):
    """The lines that make a server listen on 127.0.0.1:PORT with HTTP/2
    without TLS (h2c, prior knowledge): `http2 on;` from nginx 1.25.1 (which
    warns that `listen ... http2` is deprecated), the listen parameter before."""
    if nginx_version() >= (1, 25, 1):
        return "listen 127.0.0.1:%s;\n        http2 on;" % port
    return "listen 127.0.0.1:%s http2;" % port


def http2_unavailable():
    """None if the HTTP/2 tests can run (curl speaks h2c with prior knowledge,
    nginx has the HTTP/2 module), else why not."""
    curl = shutil.which("curl")
    if curl is None:
        return "curl is not installed"
    try:
        out = subprocess.run([curl, "--version"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=10).stdout.decode()
        helptext = subprocess.run([curl, "--help", "all"], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=10).stdout.decode()
    except (OSError, subprocess.SubprocessError) as e:
        return "curl does not run: %s" % e
    if "HTTP2" not in out.split():
        return "curl is built without HTTP/2 (curl --version lists no HTTP2 feature)"
    if "--http2-prior-knowledge" not in helptext:
        return "curl lacks --http2-prior-knowledge"
    if "--with-http_v2_module" not in nginx_build_info()[1]:
        return "%s is built without --with-http_v2_module" % NGINX
    return None


def require_http2():
    """Skips the calling test class when HTTP/2 cannot be tested, or fails it
    when REQUIRE_HTTP2=1 (set by .ci/run and scripts/test-matrix), so CI
    never passes without having sent HTTP/2."""
    why = http2_unavailable()
    if why is None:
        return
    if os.environ.get("REQUIRE_HTTP2") == "1":
        raise AssertionError("REQUIRE_HTTP2=1 but HTTP/2 cannot be tested: %s "
                             "(scripts/setup installs Debian's curl, which has HTTP/2)" % why)
    raise unittest.SkipTest("%s; set REQUIRE_HTTP2=1 to make this a failure" % why)


def curl_h2(port, method="GET", path="/", headers=(), body=None, timeout=10.0):
    """One request over h2c (prior knowledge) with curl, on a connection of
    its own. Returns a Response with .version ("2" for HTTP/2).

    One request per curl: Debian 12's curl 7.88.1 cannot reuse an h2c
    prior-knowledge connection (curl issue 10634, fixed in curl 8.0): every
    request after the first on a connection fails with "Error in the HTTP2
    framing layer". And a request whose body nginx refuses before reading it
    may end in RST_STREAM instead of the response, for nginx's own `deny`
    and `auth_basic` as well, so refusals are tested without a body."""
    tmp = tempfile.mkdtemp(prefix="apikey-h2-")
    try:
        hfile, bfile = os.path.join(tmp, "h"), os.path.join(tmp, "b")
        cmd = ["curl", "-sS", "--http2-prior-knowledge", "--max-time", str(timeout),
               "-D", hfile, "-o", bfile, "-w", "%{http_version}"]
        if method != "GET":
            cmd += ["-X", method]
        if body is not None:
            cmd += ["--data-binary", "@-"]
        for name, value in headers:
            cmd += ["-H", "%s: %s" % (name, value)]
        cmd.append("http://127.0.0.1:%d%s" % (port, path))
        if isinstance(body, str):
            body = body.encode()
        proc = subprocess.run(cmd, input=body, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout + 20)
        if proc.returncode != 0:
            raise AssertionError("curl --http2-prior-knowledge %s %s failed (%d): %s" % (
                method, path, proc.returncode, proc.stderr.decode("utf-8", "replace")))
        with open(hfile, "rb") as f:
            head = f.read().decode("latin-1")
        data = b""
        if os.path.exists(bfile):  # curl creates it only when there is a body
            with open(bfile, "rb") as f:
                data = f.read()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [l for l in head.split("\r\n") if l]
    m = re.match(r"HTTP/(\S+) (\d{3})", lines[0] if lines else "")
    if not m:
        raise AssertionError("curl wrote no status line: %r" % head)
    pairs = [tuple(p.strip() for p in l.split(":", 1)) for l in lines[1:] if ":" in l]
    resp = Response(int(m.group(2)), "", Headers(pairs), data, head.encode("latin-1") + data)
    resp.version = proc.stdout.decode().strip() or m.group(1)
    return resp


# --------------------------------------------------------------------------
# echo upstream

class _EchoHandler(http.server.BaseHTTPRequestHandler):
    server_version = "echo"
    sys_version = ""

    def log_message(self, *args):
        pass

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        req_body = self.rfile.read(length) if length else b""
        doc = {
            "method": self.command,
            "path": self.path,
            "version": self.request_version,
            "request_line": self.requestline,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": req_body.decode("utf-8", "replace"),
        }
        out = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _answer


class _EchoServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


_echo = None
_echo_lock = threading.Lock()


def echo_upstream():
    """Port of the process-wide echo upstream (started on first use)."""
    global _echo
    with _echo_lock:
        if _echo is None:
            srv = _EchoServer(("127.0.0.1", 0), _EchoHandler)
            threading.Thread(target=srv.serve_forever, name="echo-upstream",
                             daemon=True).start()
            _echo = srv
        return _echo.server_address[1]


# --------------------------------------------------------------------------
# keys and key files

def new_key(prefix="jfi_sk_live_", length=40):
    """A fresh random key: prefix + `length` base62 characters (CSPRNG)."""
    return prefix + "".join(secrets.choice(BASE62) for _ in range(length))


def key_hash(key):
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


DEFAULT_PREFIXES = {"jfi_sk_live_": "live", "jfi_sk_test_": "test", "wfk_": "live"}
PAST = "2020-01-01T00:00:00Z"
FUTURE = "2099-01-01T00:00:00Z"

_PLAIN_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_:./+=-]*$")
_YAML_SPECIAL = {"null", "Null", "NULL", "~", "true", "True", "TRUE", "false", "False",
                 "FALSE", "yes", "Yes", "YES", "no", "No", "NO", "on", "On", "ON",
                 "off", "Off", "OFF"}


def yaml_scalar(value):
    """A YAML scalar: plain when unambiguous, else double-quoted (JSON escaping
    is valid YAML double-quoted style)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    s = str(value)
    if _PLAIN_RE.match(s) and s not in _YAML_SPECIAL and not s.endswith(":"):
        return s
    return json.dumps(s)


def yaml_value(value):
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join("%s: %s" % (yaml_scalar(k), yaml_scalar(v))
                               for k, v in value.items()) + "}"
    return yaml_scalar(value)


def key_file_text(keys, prefixes=DEFAULT_PREFIXES, version=1):
    """YAML text of a key file, and the 1-based line where each record starts.

    keys: list of dicts (field -> value, in order); lists and dicts are written
    in flow style. prefixes: dict, or None for no "prefixes:" section.
    """
    lines = ["# written by t/harness.py", "version: %s" % yaml_scalar(version)]
    if prefixes is not None:
        lines.append("prefixes:")
        for p, env in prefixes.items():
            lines.append("  %s: %s" % (yaml_scalar(p), yaml_scalar(env)))
    lines.append("keys:")
    starts = []
    for rec in keys:
        first = True
        for field, value in rec.items():
            if first:
                starts.append(len(lines) + 1)
            lines.append("%s%s: %s" % ("  - " if first else "    ", field, yaml_value(value)))
            first = False
        if first:
            raise ValueError("empty key record")
    return "\n".join(lines) + "\n", starts


class KeyFile:
    """Builds a key file: add() records, get back plaintext keys, write()."""

    def __init__(self, prefixes=DEFAULT_PREFIXES):
        self.prefixes = dict(prefixes) if prefixes is not None else None
        self.records = []
        self.keys = {}  # id -> plaintext

    def add(self, id, key=None, prefix="jfi_sk_live_", owner="user_1", **fields):
        """Adds a record; fields: organization_id, plan, scopes, created_at,
        expires_at, revoked_at, limits, hash (overrides). Returns the key."""
        if key is None:
            key = new_key(prefix)
        rec = {"id": id, "hash": fields.pop("hash", key_hash(key)), "owner": owner}
        rec.update(fields)
        rec.setdefault("created_at", "2026-01-01T00:00:00Z")
        self.records.append(rec)
        self.keys[id] = key
        return key

    def record(self, id):
        for r in self.records:
            if r["id"] == id:
                return r
        raise KeyError(id)

    def text(self):
        return key_file_text(self.records, self.prefixes)[0]

    def write(self, path):
        write_atomic(path, self.text())
        return path


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


_UNITS = {"": 1, "b": 1, "byte": 1, "bytes": 1, "k": 1024, "kb": 1024, "kib": 1024,
          "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30,
          "gib": 1 << 30}


def needed_bytes(text):
    """The largest size mentioned in the zone error, in bytes (e.g. '312k',
    '319488 bytes', '1.2 MiB'), or None."""
    best = None
    for line in text.splitlines():
        if not re.search(r"(?i)small|enough|need|requir", line):
            continue
        line = re.sub(r"\S*/\S*", "", line)  # no paths, no file:line numbers
        for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([KMG]i?B|[kmgKMG]b?|bytes?)?\b", line):
            factor = _UNITS.get((unit or "").lower())
            if factor is None:
                continue
            value = int(float(num) * factor)
            if best is None or value > best:
                best = value
    return best


# --------------------------------------------------------------------------
# nginx

_VAR_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class NginxError(Exception):
    pass


class Nginx:
    """One nginx instance in its own temporary prefix.

    http: body of the http {} block; main: extra main-level text. Both may use
    {port} (and {port2}, ... as listed in ports), {upstream} (the echo
    server), {prefix} and any name given in vars. Other braces are left alone.
    """

    START_TIMEOUT = 15.0
    STOP_TIMEOUT = 15.0
    RELOAD_TIMEOUT = 10.0

    def __init__(self, http="", main="", ports=("port",), vars=None, worker_processes=2,
                 name="t"):
        if not os.path.exists(MODULE):
            raise NginxError("module not built: %s (set API_KEY_MODULE or run "
                             "scripts/build-module)" % MODULE)
        self.prefix = tempfile.mkdtemp(prefix="apikey-%s-" % name, dir="/tmp")
        os.chmod(self.prefix, 0o755)
        self.vars = {"prefix": self.prefix}
        for p in ports:
            self.vars[p] = free_port()
        self.vars.setdefault("upstream", echo_upstream())
        self.vars.update(vars or {})
        self.port = self.vars.get("port")
        self.worker_processes = worker_processes
        self.conf = os.path.join(self.prefix, "nginx.conf")
        self.pid_file = os.path.join(self.prefix, "nginx.pid")
        self.error_log_path = os.path.join(self.prefix, "error.log")
        self.access_log_path = os.path.join(self.prefix, "access.log")
        self.allow_emerg = False
        self.master = None
        self.write_config(http, main)
        for d in ("client_body_temp", "proxy_temp", "fastcgi_temp", "uwsgi_temp",
                  "scgi_temp", "html"):
            os.makedirs(os.path.join(self.prefix, d), exist_ok=True)

    # -- files

    def path(self, name):
        return os.path.join(self.prefix, name)

    def subst(self, text):
        return _VAR_RE.sub(lambda m: str(self.vars[m.group(1)]) if m.group(1) in self.vars
                           else m.group(0), text)

    def write_file(self, name, text):
        p = self.path(name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        write_atomic(p, text)
        return p

    def write_config(self, http, main=""):
        p = self.prefix
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = (
            "load_module %s;\n%s"
            "worker_processes %d;\n"
            "daemon on;\nmaster_process on;\n"
            "pid %s;\n"
            "error_log %s info;\n"
            "%s\n"
            "events {\n    worker_connections 256;\n}\n\n"
            "http {\n"
            "    access_log %s;\n"
            "    client_body_temp_path %s/client_body_temp;\n"
            "    proxy_temp_path %s/proxy_temp;\n"
            "    fastcgi_temp_path %s/fastcgi_temp;\n"
            "    uwsgi_temp_path %s/uwsgi_temp;\n"
            "    scgi_temp_path %s/scgi_temp;\n"
            "%s\n"
            "}\n"
        ) % (MODULE, user, self.worker_processes, self.pid_file, self.error_log_path,
             self.subst(main), self.access_log_path, p, p, p, p, p, self.subst(http))
        with open(self.conf, "w") as f:
            f.write(conf)

    # -- processes

    def _run(self, *args, timeout=120.0):
        cmd = [NGINX, "-p", self.prefix + "/", "-c", self.conf, "-e", self.error_log_path]
        cmd += list(args)
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=timeout, env=NGINX_ENV)
        return proc.returncode, proc.stdout.decode("utf-8", "replace")

    def test_config(self, timeout=120.0):
        """(returncode, combined output) of nginx -t."""
        return self._run("-t", timeout=timeout)

    def read_pid(self):
        try:
            with open(self.pid_file) as f:
                return int(f.read().strip())
        except (FileNotFoundError, ValueError):
            return None

    def workers(self):
        return children_of(self.master) if self.master else []

    def start(self, timeout=None):
        timeout = timeout or self.START_TIMEOUT
        rc, out = self._run(timeout=timeout + 60)
        if rc != 0:
            raise NginxError("nginx failed to start (rc=%d):\n%s\n--- error.log:\n%s"
                             % (rc, out, self.error_log()[-4000:]))
        self.master = wait_until(self.read_pid, timeout, what="nginx pid file")
        wait_until(lambda: len(self.workers()) >= self.worker_processes, timeout,
                   what="%d worker processes" % self.worker_processes)
        for key, value in self.vars.items():
            if key.startswith("port") and isinstance(value, int):
                wait_until(lambda: listening(value), timeout,
                           what="nginx listening on 127.0.0.1:%d" % value)
        return self

    def stop(self):
        pid = self.master or self.read_pid()
        if not pid or not pid_alive(pid):
            self.master = None
            return
        for sig, wait in ((signal.SIGQUIT, self.STOP_TIMEOUT), (signal.SIGTERM, 5.0),
                          (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            try:
                wait_until(lambda: not pid_alive(pid), wait, what="nginx master exit")
                break
            except TimeoutError:
                continue
        self.master = None

    def reload(self, expect_failure=False, timeout=None):
        """HUP the master and wait until the old workers are gone and new ones
        are up; with expect_failure, wait for the [emerg] the failed reload
        logs and check the old workers are still serving."""
        timeout = timeout or self.RELOAD_TIMEOUT
        old = set(self.workers())
        offset = self.error_log_size()
        os.kill(self.master, signal.SIGHUP)
        if expect_failure:
            self.allow_emerg = True
            wait_until(lambda: "[emerg]" in self.error_log(offset), timeout,
                       what="[emerg] from the failed reload")
            time.sleep(0.2)
            now = set(self.workers())
            if now != old:
                raise NginxError("workers changed after a failed reload: %s -> %s"
                                 % (sorted(old), sorted(now)))
            return self.error_log(offset)

        def swapped():
            cur = set(self.workers())
            return not (cur & old) and len(cur) >= self.worker_processes

        try:
            wait_until(swapped, timeout, what="new workers after reload")
        except TimeoutError:
            raise NginxError("reload did not complete; error.log since HUP:\n%s"
                             % self.error_log(offset)[-4000:])
        return self.error_log(offset)

    # -- logs

    def error_log_size(self):
        try:
            return os.path.getsize(self.error_log_path)
        except FileNotFoundError:
            return 0

    def error_log(self, offset=0):
        try:
            with open(self.error_log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def access_log(self, name="access.log"):
        try:
            with open(self.path(name), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_problems(self, offset=0, allow_emerg=None):
        """Lines of the error log (from offset) that must never appear."""
        allow_emerg = self.allow_emerg if allow_emerg is None else allow_emerg
        bad = []
        for line in self.error_log(offset).splitlines():
            if "[alert]" in line or "[crit]" in line or "exited on signal" in line:
                bad.append(line)
            elif "[emerg]" in line and not allow_emerg:
                bad.append(line)
        return bad

    # -- requests

    def request(self, method="GET", path="/", headers=(), body=None, port=None, **kw):
        return request(port or self.port, method, path, headers, body, **kw)

    def get(self, path="/", headers=(), **kw):
        return self.request("GET", path, headers, **kw)

    # -- teardown

    def cleanup(self, offset=0):
        """Stop, check the error log (from offset), remove the prefix. Raises
        AssertionError listing forbidden error-log lines."""
        try:
            self.stop()
        finally:
            problems = self.log_problems(offset)
            if KEEP:
                print("KEEP=1: nginx prefix kept at %s" % self.prefix)
            elif not problems:
                shutil.rmtree(self.prefix, ignore_errors=True)
            else:
                print("error log problems, prefix kept at %s" % self.prefix)
        if problems:
            raise AssertionError("error.log has forbidden lines:\n" + "\n".join(problems))


# --------------------------------------------------------------------------
# unittest base class

class NginxCase(unittest.TestCase):
    """One nginx per test class.

    Subclasses set HTTP (and optionally MAIN, PORTS, WORKERS) and may override
    prepare(cls, nginx) to write key files before nginx starts. If the setup
    fails, every test of the class fails with that reason. Each test also fails
    if it made nginx log an [alert], an [emerg] or a crash.
    """

    HTTP = ""
    MAIN = ""
    PORTS = ("port",)
    WORKERS = 2
    nginx = None
    _setup_error = None

    @classmethod
    def prepare(cls, nginx):
        pass

    @classmethod
    def setUpClass(cls):
        cls.nginx = None
        cls._setup_error = None
        cls._checked_offset = 0
        try:
            cls.nginx = Nginx(cls.HTTP, cls.MAIN, ports=cls.PORTS,
                              worker_processes=cls.WORKERS, name=cls.__name__)
            cls.prepare(cls.nginx)
            cls.nginx.start()
        except Exception as e:  # reported by every test, see setUp
            cls._setup_error = "%s: %s" % (type(e).__name__, e)

    @classmethod
    def tearDownClass(cls):
        if cls.nginx is not None:
            n, cls.nginx = cls.nginx, None
            # lines up to here were already blamed on the test that caused them
            n.cleanup(getattr(cls, "_checked_offset", 0))

    def setUp(self):
        if self._setup_error:
            self.fail("nginx setup failed: " + self._setup_error)
        self._log_offset = self.nginx.error_log_size()

    def tearDown(self):
        if self.nginx is not None and not self._setup_error:
            # the master logs a crashed worker on SIGCHLD: give it a moment
            time.sleep(0.01)
            bad = self.nginx.log_problems(self._log_offset)
            type(self)._checked_offset = self.nginx.error_log_size()
            if bad:
                self.fail("this test made nginx log forbidden lines:\n" + "\n".join(bad))

    # -- helpers

    def get(self, path="/", headers=(), **kw):
        return self.nginx.request("GET", path, headers, **kw)

    def req(self, method, path="/", headers=(), **kw):
        return self.nginx.request(method, path, headers, **kw)

    def assertError(self, resp, status, code, message=None, what=""):
        """Asserts the error envelope of SPEC "Responses" for one refusal."""
        ctx = (" (%s)" % what) if what else ""
        self.assertEqual(resp.status, status,
                         "status %d for %s%s; got %r" % (status, code, ctx, resp))
        ctype = (resp.header("Content-Type") or "").split(";")[0].strip().lower()
        self.assertEqual(ctype, "application/json",
                         "an error response is application/json%s" % ctx)
        try:
            doc = resp.json()
        except ValueError:
            self.fail("an error body is valid JSON%s: %r" % (ctx, resp.body))
        self.assertEqual(doc.get("error", {}).get("code"), code,
                         "error.code is %s%s; body %s" % (code, ctx, resp.text))
        if message is not None:
            self.assertEqual(doc["error"].get("message"), message,
                             "error.message for %s%s" % (code, ctx))
        return doc


class ConfigCheckCase(unittest.TestCase):
    """`nginx -t` on one configuration at a time; nothing is started.

    nginx_t(http) writes a key file (keys.yaml in the prefix, one key "key_a"
    with scope a:read) and an nginx.conf around the http {} body, runs
    nginx -t and returns (returncode, output); refused() asserts that nginx -t
    refuses it with an [emerg] that names `mention`. Each nginx_t() gets a
    fresh prefix; the previous one is cleaned up (its [emerg] was expected).
    """

    NAME = "config"

    def setUp(self):
        self.nginx = None

    def tearDown(self):
        self._discard()

    def _discard(self):
        if self.nginx is not None:
            n, self.nginx = self.nginx, None
            n.allow_emerg = True  # a failed nginx -t logs [emerg]
            n.cleanup()

    def nginx_t(self, http):
        self._discard()
        self.nginx = n = Nginx(name=self.NAME)
        kf = KeyFile()
        kf.add("key_a", scopes=["a:read"])
        kf.write(n.path("keys.yaml"))
        n.write_config(http)
        return n.test_config()

    def refused(self, http, what, mention=None):
        """nginx -t fails with an [emerg] about an argument (not "unknown
        directive") that names `mention`; returns the output."""
        rc, out = self.nginx_t(http)
        self.assertNotEqual(rc, 0, "nginx -t refuses %s; output:\n%s" % (what, out))
        self.assertIn("[emerg]", out, "%s: reported as [emerg]" % what)
        self.assertNotIn("unknown directive", out,
                         "%s: refused for the argument, not because the directive is unknown"
                         % what)
        if mention:
            self.assertIn(mention, out, "%s: the message names %r; output:\n%s"
                          % (what, mention, out))
        return out


def bearer(key):
    return [("Authorization", "Bearer " + key)]


def xkey(key):
    return [("x-api-key", key)]


# --------------------------------------------------------------------------
# recording upstream and raw-socket sender (for the enforcement tests)

class RecordingUpstream:
    """A threaded HTTP server on 127.0.0.1 that answers every request with a
    fixed body and remembers what it got, so a test can assert that a backend
    was (or was never) reached.

    Each recorded request is a dict: method, path, headers (a Headers),
    body (bytes). A request is recorded before it is answered, so once the
    client has nginx's response, a request that went upstream is recorded.
    """

    def __init__(self, body=b"recorded\n", status=200, content_type="text/plain"):
        self.body = body if isinstance(body, bytes) else body.encode()
        self.status = status
        self.content_type = content_type
        self._lock = threading.Lock()
        self._requests = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            server_version = "recorder"
            sys_version = ""

            def log_message(self, *args):
                pass

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                req_body = self.rfile.read(length) if length else b""
                with recorder._lock:
                    recorder._requests.append({
                        "method": self.command,
                        "path": self.path,
                        "headers": Headers(self.headers.items()),
                        "body": req_body,
                    })
                self.send_response(recorder.status)
                self.send_header("Content-Type", recorder.content_type)
                self.send_header("Content-Length", str(len(recorder.body)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(recorder.body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _answer

        self._server = _EchoServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="recording-upstream",
                         daemon=True).start()

    def requests(self, contains=None):
        """The requests received so far (those whose path contains `contains`)."""
        with self._lock:
            reqs = list(self._requests)
        if contains is not None:
            reqs = [r for r in reqs if contains in r["path"]]
        return reqs

    def paths(self, contains=None):
        return [r["path"] for r in self.requests(contains)]

    def clear(self):
        with self._lock:
            self._requests = []

    def wait_for(self, count=1, contains=None, timeout=5.0):
        """Waits until at least `count` (matching) requests arrived; returns them."""
        return wait_until(lambda: len(self.requests(contains)) >= count and
                          self.requests(contains), timeout,
                          what="%d request(s) at the recording upstream" % count)

    def close(self):
        self._server.shutdown()
        self._server.server_close()


def parse_response(data, method="GET"):
    """A Response from the raw bytes of one HTTP/1.x response (as request()
    parses them); raises ValueError when the head is incomplete."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("incomplete response: %r" % data[:500])
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1])
    reason = parts[2] if len(parts) > 2 else ""
    pairs = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        pairs.append((name.strip(), value.strip()))
    hdrs = Headers(pairs)
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        body = rest  # must be empty: whatever nginx sent after the headers
    elif "chunked" in (hdrs.get("Transfer-Encoding") or "").lower():
        body = _dechunk(rest)
    elif hdrs.get("Content-Length") is not None:
        body = rest[:int(hdrs.get("Content-Length"))]
    else:
        body = rest
    return Response(status, reason, hdrs, body, data)


def send_raw(port, data, shutdown_write=False, timeout=10.0, method="GET"):
    """Sends `data` exactly as given on a new connection, optionally closes
    the client's write side (shutdown(SHUT_WR)) right after, and reads until
    nginx closes the connection, resets it, or a complete response (by
    Content-Length) is in. Returns the parsed Response of the first response;
    raises ValueError if no complete response head came back, TimeoutError
    if nothing complete came back in time."""
    deadline = time.monotonic() + timeout
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            if shutdown_write:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        while True:
            buf = b"".join(chunks)
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                m = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
                if m and len(rest) >= int(m.group(1)):
                    break
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                if sep:
                    break
                raise TimeoutError("no complete response within %.1fs: %r"
                                   % (timeout, buf[:500]))
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return parse_response(b"".join(chunks), method)


class RecordingCase(NginxCase):
    """NginxCase with recording upstreams: RECORDERS maps a name to the body
    that upstream answers with; {name} in HTTP is its port and cls.rec[name]
    the RecordingUpstream. They are started before nginx and closed after."""

    RECORDERS = {}
    rec = {}

    @classmethod
    def setUpClass(cls):
        cls.nginx = None
        cls._setup_error = None
        cls._checked_offset = 0
        cls.rec = {}
        try:
            for name, body in cls.RECORDERS.items():
                cls.rec[name] = RecordingUpstream(body)
            cls.nginx = Nginx(cls.HTTP, cls.MAIN, ports=cls.PORTS,
                              vars={name: r.port for name, r in cls.rec.items()},
                              worker_processes=cls.WORKERS, name=cls.__name__)
            cls.prepare(cls.nginx)
            cls.nginx.start()
        except Exception as e:  # reported by every test, see NginxCase.setUp
            cls._setup_error = "%s: %s" % (type(e).__name__, e)

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            for r in cls.rec.values():
                r.close()

    def setUp(self):
        super().setUp()
        for r in self.rec.values():
            r.clear()

    def assertRefused(self, resp, status, code, message=None, what="", untouched=()):
        """A refusal from the module itself: its JSON envelope with `code`
        (and `message`), none of the recorders named in `untouched` reached,
        and then the status (checked last, so a refusal whose body is right
        but whose status was changed on the way out fails on the status)."""
        ctx = " (%s)" % what if what else ""
        try:
            doc = resp.json()
        except ValueError:
            doc = None
        code_got = doc.get("error", {}).get("code") if isinstance(doc, dict) else None
        self.assertEqual(code_got, code, "the module's own %s envelope answers%s; got %r"
                         % (code, ctx, resp))
        if message is not None:
            self.assertEqual(doc["error"].get("message"), message,
                             "error.message for %s%s" % (code, ctx))
        for name in untouched:
            self.assertEqual(self.rec[name].paths(), [],
                             "the upstream %r was never reached%s" % (name, ctx))
        self.assertEqual(resp.status, status, "the refusal keeps its status %d%s; got %r"
                         % (status, ctx, resp))
