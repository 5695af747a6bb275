#!/usr/bin/env python3
"""nginx with an ASan + UBSan build of the module, a synced limit zone and a
real redis-server, through reloads under load (the `synced` step of
scripts/sanitize, which runs it as
`python3 scripts/sanitize_synced.py --nginx WRAPPER --signal-nginx WRAPPER2
--module SO --reports DIR --out DIR`).

WRAPPER starts /usr/sbin/nginx with the ASan runtime preloaded and
LeakSanitizer on (detect_leaks=1), its reports written to DIR/synced-*: the
master and every worker check for leaks when they exit (both free their
configuration cycle first). WRAPPER2 is the same with detect_leaks=0, for
`nginx -s reload|quit`: that process returns from main() without freeing
the configuration it parsed (nginx's design), so LeakSanitizer would
report all of it; its ASan and UBSan reports still count.

  * a redis-server of its own: `redis-server --port FREE --bind 127.0.0.1
    --save "" --appendonly no`, in the nginx prefix;
  * nginx, master + 2 workers: `api_key_redis r 127.0.0.1:PORT;`, a limit
    zone `sync=r interval=100ms` (worker 0 runs the sync thread), a key
    zone with check=1s, a generous limit on / and a tight one on /tight
    (so grants, overdraft and 429s all happen), api_key_status in JSON and
    Prometheus;
  * traffic from 3 client threads for the whole run (new connection per
    request: the known keys, an unknown key, no key, the status pages);
  * --reloads times (5): the key file is changed, `nginx -s reload`, wait
    for a new set of workers, at least one batch to Redis after it;
  * `nginx -s quit`, the master must exit within 60 s (the old and new
    workers' sync threads are joined on the way).

Fails (exit status 1) on any sanitizer report (a file in DIR, or a report
in the error log): a leak at any nginx process's exit, an ASan error, UB;
on an [alert]/[crit]/[emerg] or "exited on signal" in the error log; on a
response other than 200/401/429 (and 200 from the status pages); when no
batch reached Redis, or the zone is not synced at the end; when nginx does
not stop.

--inject leak|error checks the check: the same run with a small library
preloaded into nginx that leaks 64 bytes at start-up (leak) or frees a
block twice when a process exits (error). Then the exit status is 0 only
if the sanitizer reported it (a LeakSanitizer or a double-free report
naming the library), and the run's reports and prefix are removed. The
synced step of scripts/sanitize runs `--inject leak --reloads 1` first:
a clean result means nothing where leak checks do not work.
"""
import argparse
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "t"))
# The integration-test harness: helpers only.
from harness import (KeyFile, children_of, free_port, listening, request,  # noqa: E402
                     wait_until)

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
WARM_QUIET = 0.5
SAN_PATTERN = re.compile(r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|"
                         r"SUMMARY: (Address|Undefined|Leak)Sanitizer|UndefinedBehaviorSanitizer")

INJECT = {
    # Built without -fsanitize: in nginx, ASan's malloc and free (preloaded
    # first) serve it anyway, and the wrapper's own shell, which gets the
    # same LD_PRELOAD, is left alone. A leak: unreachable when any nginx
    # process exits.
    "leak": r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
void *volatile injected_leak;
__attribute__((constructor)) static void leak(void) {
    if (strcmp(program_invocation_short_name, "nginx") != 0) return;
    injected_leak = malloc(64);
    injected_leak = 0;
}
""",
    # An error: a double free when an nginx process exits.
    "error": r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
static void *volatile block;
static void twice(void) { free(block); free(block); }
__attribute__((constructor)) static void arm(void) {
    if (strcmp(program_invocation_short_name, "nginx") != 0) return;
    block = malloc(16);
    atexit(twice);
}
""",
}


class Redis:
    """A throw-away redis-server on a free 127.0.0.1 port, no persistence."""

    def __init__(self, workdir):
        self.port = free_port()
        self.dir = os.path.join(workdir, "redis")
        os.makedirs(self.dir, exist_ok=True)
        self.log = os.path.join(self.dir, "redis.log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", self.dir],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_until(self.ping, 20, interval=0.1,
                       what="redis-server on 127.0.0.1:%d" % self.port)
        except TimeoutError as e:
            self.stop()
            raise SystemExit(str(e))

    def ping(self):
        if self.proc.poll() is not None:
            raise SystemExit("redis-server exited at start (see %s)" % self.log)
        try:
            return self.command("PING") == "PONG"
        except OSError:
            return False

    def command(self, *words):
        """One inline command on a new connection: a status, integer or bulk
        reply as text."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall((" ".join(words) + "\r\n").encode())
            f = s.makefile("rb")
            line = f.readline()
            if line[:1] == b"$":
                n = int(line[1:])
                return f.read(n + 2)[:n].decode() if n >= 0 else None
            if line[:1] in (b"+", b":"):
                return line[1:].strip().decode()
            raise OSError("redis: %r" % line)

    def script_calls(self):
        """EVALSHA + EVAL calls so far (the sync threads' batches)."""
        text = self.command("INFO", "commandstats") or ""
        return sum(int(m) for m in re.findall(r"^cmdstat_(?:evalsha|eval):calls=(\d+)", text,
                                              re.M))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def build_inject(kind, workdir):
    src = os.path.join(workdir, "inject-%s.c" % kind)
    so = os.path.join(workdir, "inject-%s.so" % kind)
    with open(src, "w") as f:
        f.write(INJECT[kind])
    subprocess.run(["gcc", "-shared", "-fPIC", "-O0", "-o", so, src],
                   check=True, timeout=120)
    return so


def run(args):
    prefix = tempfile.mkdtemp(prefix="apikey-sanitize-synced-", dir="/tmp")
    os.chmod(prefix, 0o755)  # workers run as nobody unless root
    os.makedirs(os.path.join(prefix, "html"))
    with open(os.path.join(prefix, "html", "index.html"), "w") as f:
        f.write("ok\n")
    for d in ("client_body_temp", "proxy_temp", "fastcgi_temp", "uwsgi_temp", "scgi_temp"):
        os.makedirs(os.path.join(prefix, d))
    errlog = os.path.join(prefix, "error.log")
    conf = os.path.join(prefix, "nginx.conf")
    keyfile = os.path.join(prefix, "keys.yaml")
    env = {k: v for k, v in os.environ.items() if k != "NGINX"}
    if args.inject:
        env["LD_PRELOAD"] = build_inject(args.inject, prefix)

    keys = {}

    def write_keys(generation):
        kf = KeyFile()
        for i in range(8 + generation):
            keys[i] = kf.add("key_%d" % i, key=keys.get(i), owner="user_%d" % (i % 3),
                             plan="pro", scopes=["diagrams:read"])
        kf.write(keyfile)

    write_keys(0)
    redis = Redis(prefix)
    port = free_port()
    user = "user root;\n" if os.geteuid() == 0 else ""
    with open(conf, "w") as f:
        f.write(f"""load_module {args.module};
{user}worker_processes 2;
daemon off;
pid {prefix}/nginx.pid;
error_log {errlog} notice;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    api_key_redis r 127.0.0.1:{redis.port} timeout=200ms;
    api_key_zone keys:1m file={keyfile} check=1s;
    api_key_limit_zone limits:1m sync=r interval=100ms;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            api_key keys;
            api_key_source header=x-api-key;
            api_key_scope diagrams:read;
            api_key_limit limits read 100000r/m;
            root {prefix}/html;
        }}
        location /tight {{
            api_key keys;
            api_key_source header=x-api-key;
            api_key_limit_category tight;
            api_key_limit limits tight 30r/m;
            alias {prefix}/html;
        }}
        location = /status {{ api_key_status; }}
        location = /metrics {{ api_key_status prometheus; }}
    }}
}}
""")

    def nginx(*more, binary=args.nginx):
        return [binary, "-p", prefix + "/", "-c", conf, "-e", errlog] + list(more)

    def sync_state():
        r = request(port, "GET", "/status", timeout=30)
        if r.status != 200:
            raise SystemExit("api_key_status answered %d" % r.status)
        return json.loads(r.body)["limit_zones"][0]["sync"]

    counts, problems, stop = {}, [], threading.Event()
    lock = threading.Lock()
    # Warm-up: a fresh Redis grants nothing for two intervals and the first
    # grants are sized from a few requests, so / answers 429 at first (as in
    # scripts/request-cost). Until 429s on / have stopped for WARM_QUIET s
    # they are counted, not failures; after that (reloads included) / must
    # answer 200.
    warm = {"on": True, "429": 0, "last": time.monotonic()}

    unknown = "jfi_sk_live_" + "x" * 40

    def client(n):
        i = 0
        while not stop.is_set():
            i += 1
            k = keys[(n * 7 + i) % 8]
            kind = i % 10
            if kind < 6:
                path, headers, want = "/index.html", [("x-api-key", k)], (200,)
            elif kind < 8:
                path, headers, want = "/tight/index.html", [("x-api-key", k)], (200, 429)
            elif kind == 8:
                path, headers, want = "/index.html", [("x-api-key", unknown)], (401,)
            else:
                path, headers, want = ("/status", "/metrics")[i % 20 // 10], [], (200,)
            try:
                status = request(port, "GET", path, headers, timeout=30).status
            except Exception as e:  # a refused or cut connection, a bad response
                status = "error: %s" % type(e).__name__
            with lock:
                counts[status] = counts.get(status, 0) + 1
                if status == 429 and path == "/index.html" and warm["on"]:
                    warm["429"] += 1
                    warm["last"] = time.monotonic()
                elif status not in want:
                    problems.append("%s -> %s" % (path, status))

    proc = subprocess.Popen(nginx(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    threads = []
    stopped = False
    batches = []
    final = {}
    try:
        def up():
            if proc.poll() is not None:
                raise SystemExit("nginx exited at start (see %s)" % errlog)
            return listening(port)
        wait_until(up, 120, interval=0.2, what="nginx listening")
        wait_until(lambda: sync_state()["batches"] > 0, 30, interval=0.1,
                   what="a first batch to Redis")
        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(3)]
        for t in threads:
            t.start()

        def warmed():
            with lock:
                if time.monotonic() - warm["last"] >= WARM_QUIET:
                    warm["on"] = False
                return not warm["on"]
        wait_until(warmed, 30, interval=0.05, what="grants for / (no 429 for %.1f s)" % WARM_QUIET)
        time.sleep(0.5)
        for g in range(1, args.reloads + 1):
            write_keys(g)
            old = set(children_of(proc.pid))
            calls = redis.script_calls()
            rc = subprocess.run(nginx("-s", "reload", binary=args.signal_nginx), env=env,
                                timeout=60,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if rc.returncode != 0:
                raise SystemExit("nginx -s reload %d failed: %s" % (g, rc.stdout.decode()))

            def swapped():
                if proc.poll() is not None:
                    raise SystemExit("nginx exited during reload %d" % g)
                cur = set(children_of(proc.pid))
                return len(cur - old) >= 2
            wait_until(swapped, 120, interval=0.1, what="new workers after reload %d" % g)
            wait_until(lambda: redis.script_calls() > calls + 2, 30, interval=0.1,
                       what="batches to Redis after reload %d" % g)
            batches.append(redis.script_calls() - calls)
            time.sleep(1.0)
        time.sleep(1.0)
        final = sync_state()
        stop.set()
        for t in threads:
            t.join(60)
        rc = subprocess.run(nginx("-s", "quit", binary=args.signal_nginx), env=env, timeout=60,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if rc.returncode != 0:
            raise SystemExit("nginx -s quit failed: %s" % rc.stdout.decode())
        try:
            proc.wait(60)
            stopped = True
        except subprocess.TimeoutExpired:
            problems.append("nginx did not stop within 60 s of `nginx -s quit`")
    except (SystemExit, TimeoutError, OSError, subprocess.SubprocessError) as e:
        problems.append("run: %s" % e)  # the logs and reports are still checked
    finally:
        stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        script_calls = redis.script_calls() if redis.proc.poll() is None else 0
        redis.stop()

    # Let processes that were still exiting finish writing their reports.
    time.sleep(1)
    try:
        with open(errlog, errors="replace") as f:
            elog = f.read()
        shutil.copy(errlog, os.path.join(args.out, "synced-error.log"))
    except OSError as e:
        elog = ""
        problems.append("no error log: %s" % e)
    reports = sorted(glob.glob(os.path.join(args.reports, "synced-*")))
    found = []
    for path in reports:
        with open(path, errors="replace") as f:
            text = f.read()
        if SAN_PATTERN.search(text):
            found.append((path, text))
    crit = [l for l in elog.splitlines()
            if re.search(r"\[(alert|emerg|crit)\]|exited on signal", l) or SAN_PATTERN.search(l)]
    if not final or final.get("state") != "ok":
        problems.append("sync state at the end: %r" % final)
    if not script_calls:
        problems.append("no batch reached Redis")

    workers = len(re.findall(r"start worker process \d+", elog))
    print("synced: %d reloads, %d workers started, %d batches to Redis (after each reload: %s), "
          "responses %s (429s on / during the warm-up: %d); sync at the end: state %s, "
          "%d batches, %d failures, %d granted, %d overdraft reported; nginx %s; sanitizer "
          "reports: %d"
          % (args.reloads, workers, script_calls, ", ".join(str(b) for b in batches),
             ", ".join("%s x %d" % (k, v) for k, v in sorted(counts.items(), key=str)),
             warm["429"],
             final.get("state"), final.get("batches", 0), final.get("failures", 0),
             final.get("granted", 0), final.get("reported", 0),
             "stopped" if stopped else "DID NOT STOP", len(found)))
    for path, text in ([] if args.inject else found[:5]):
        print("    sanitizer report %s:" % path)
        print("\n".join("      " + l for l in text.splitlines()[:30]))
    for l in problems[:10]:
        print("    " + l)
    for l in crit[:10]:
        print("    error.log: " + l)
    if args.inject:
        want = {"leak": "ERROR: LeakSanitizer", "error": "attempting double-free"}[args.inject]
        caught = [p for p, text in found if want in text and "inject-" in text]
        print("inject %s: %s (%d of %d sanitizer reports)"
              % (args.inject, "reported, as it must be" if caught else "NOT REPORTED",
                 len(caught), len(found)))
        for path in reports:
            os.unlink(path)
        shutil.rmtree(prefix, ignore_errors=True)
        return bool(caught)
    ok = stopped and not found and not crit and not problems
    if ok:
        shutil.rmtree(prefix, ignore_errors=True)
    else:
        print("    prefix kept: " + prefix)
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nginx", required=True, help="the ASan nginx wrapper (leak checks on)")
    ap.add_argument("--signal-nginx", required=True,
                    help="the ASan nginx wrapper for nginx -s (leak checks off)")
    ap.add_argument("--module", required=True, help="the module .so built with ASan + UBSan")
    ap.add_argument("--reports", required=True,
                    help="where the wrapper writes sanitizer reports (synced-* files)")
    ap.add_argument("--out", required=True, help="where the error log is copied")
    ap.add_argument("--reloads", type=int, default=5, help="reloads under load (5)")
    ap.add_argument("--inject", choices=sorted(INJECT),
                    help="check the check: preload a leak or a double free; exit status 0 "
                         "when the sanitizer reported it")
    args = ap.parse_args()
    if not os.path.exists(REDIS_SERVER):
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    os.makedirs(args.out, exist_ok=True)
    for f in glob.glob(os.path.join(args.reports, "synced-*")):
        os.unlink(f)
    return 0 if run(args) else 1


if __name__ == "__main__":
    sys.exit(main())
