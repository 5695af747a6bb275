#!/usr/bin/env python3
"""memcheck of nginx with the module across key-file reloads (the valgrind
step of scripts/sanitize, which runs it as
`python3 scripts/sanitize_valgrind.py --out build/sanitize --module SO`).

Two runs under memcheck, each with the key file changed before every reload:

  single  master_process off, as nginx -s reload would in development. nginx
          1.22 cannot serve after a reload in this mode (the new cycle gets
          no connections) and its cleaner event crashes 30 s after a second
          reload (it walks the NULL connections of a replaced cycle), with or
          without this module: so requests come first, the reloads follow
          quickly and nginx is stopped before that timer. Replaced cycles are
          not freed in this mode, so only leaks that lose their pointer at
          once show up here.
  master  master_process on, one worker: the master frees each replaced
          cycle at the reload (so a module allocation its pool cleanups miss
          becomes "definitely lost" in the master), and every worker serves
          requests and exits gracefully with its own leak report.

Fails (exit status 1) on a definitely-lost block or a memcheck error whose
stack passes through the module, a crash, or an [alert]/[emerg]/[crit].
Writes valgrind-<mode>.<pid>.log and valgrind-<mode>-error.log into --out.
"""
import argparse
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "t"))
# The integration-test harness: $NGINX and the helpers.
from harness import (NGINX, NGINX_ENV, PAST, KeyFile, children_of, free_port,  # noqa: E402
                     listening, request, wait_until)


def key(i):
    return "jfi_sk_live_%040d" % i


def wait_for(pred, what, proc, timeout=300):
    """wait_until(pred) that gives up as soon as nginx (proc) has exited."""
    def check():
        value = pred()
        if not value and proc.poll() is not None:
            raise SystemExit("nginx exited while waiting for " + what)
        return value
    try:
        return wait_until(check, timeout, interval=0.2, what=what)
    except TimeoutError as e:
        raise SystemExit(str(e))


def run(mode, module, reloads, out):
    prefix = tempfile.mkdtemp(prefix="apikey-valgrind-%s-" % mode, dir="/tmp")
    os.makedirs(os.path.join(prefix, "html"))
    with open(os.path.join(prefix, "html", "index.html"), "w") as f:
        f.write("ok\n")
    for d in ("client_body_temp", "proxy_temp", "fastcgi_temp", "uwsgi_temp", "scgi_temp"):
        os.makedirs(os.path.join(prefix, d))
    errlog = os.path.join(prefix, "error.log")

    def write_keys(generation):
        kf = KeyFile(prefixes={"jfi_sk_live_": "live", "jfi_sk_test_": "test"})
        for i in range(generation + 3):
            kf.add("key_%d" % i, key=key(i), owner="user_%d" % (i % 3), plan="pro",
                   scopes=["diagrams:read", "folders:read"], limits={"read": "100r/m"},
                   **({"revoked_at": PAST} if i == 1 else {}))
        kf.write(os.path.join(prefix, "keys.yaml"))

    port = free_port()
    conf = os.path.join(prefix, "nginx.conf")
    user = "user root;\n" if os.geteuid() == 0 else ""
    with open(conf, "w") as f:
        f.write(f"""load_module {module};
{user}master_process {"off" if mode == "single" else "on"};
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {errlog} notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    api_key_zone keys:1m file={prefix}/keys.yaml check=1s;
    api_key_limit_zone limits:1m;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            api_key keys;
            api_key_source bearer header=x-api-key;
            api_key_scope GET HEAD diagrams:read;
            api_key_scope POST write:all;
            api_key_limit limits read 1000r/m;
            root {prefix}/html;
        }}
        location = /status {{ api_key_status; }}
        location = /metrics {{ api_key_status prometheus; }}
    }}
}}
""")
    write_keys(0)

    def status(path, headers=(), method="GET"):
        return request(port, method, path, headers, timeout=60).status

    def traffic(g):
        got = [
            status("/index.html", [("Authorization", "Bearer " + key(0))]),
            status("/index.html", [("x-api-key", key(g + 2))]),
            status("/index.html"),
            status("/index.html", [("Authorization", "Bearer " + key(1))]),
            status("/index.html", [("Authorization", "Bearer jfi_sk_live_unknown_unknown_unknown")]),
            status("/index.html", [("Authorization", "Bearer " + key(0)), ("x-api-key", key(2))]),
            status("/index.html", [("Authorization", "Bearer " + key(0))], method="POST"),
            status("/status"),
            status("/metrics"),
        ]
        want = [200, 200, 401, 401, 401, 401, 403, 200, 200]
        if got != want:
            raise SystemExit("%s: unexpected statuses %r, expected %r (generation %d)"
                             % (mode, got, want, g))

    def reconfigurings():
        with open(errlog, errors="replace") as f:
            return f.read().count("reconfiguring")

    vglog = os.path.join(out, "valgrind-%s.%%p.log" % mode)
    cmd = ["valgrind", "--tool=memcheck", "--leak-check=full", "--show-leak-kinds=definite",
           "--errors-for-leak-kinds=definite", "--num-callers=40", "--track-origins=yes",
           "--log-file=" + vglog, NGINX, "-p", prefix + "/", "-c", conf, "-e", errlog]
    # NGINX_ENV: $NGINX would be taken by nginx for inherited sockets
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=NGINX_ENV)
    clean = False
    served = 0
    try:
        def up():
            return listening(port)
        wait_for(up, "%s: nginx under valgrind to listen" % mode, proc)
        traffic(0)
        served += 1
        for g in range(1, reloads + 1):
            write_keys(g)
            before = reconfigurings()
            old = set(children_of(proc.pid))
            os.kill(proc.pid, signal.SIGHUP)
            wait_for(lambda: reconfigurings() > before, "%s: reload %d" % (mode, g), proc)
            if mode == "single":
                def idle():  # single-threaded: back in epoll_wait, the reload is over
                    try:
                        with open("/proc/%d/wchan" % proc.pid) as f:
                            return "epoll" in f.read()
                    except OSError:
                        return False
                wait_for(idle, "single: reload %d to finish" % g, proc)
            else:
                def swapped():
                    cur = set(children_of(proc.pid))
                    return cur and not (cur & old)
                wait_for(swapped, "master: new worker after reload %d" % g, proc)
                wait_for(up, "master: listening after reload %d" % g, proc)
                traffic(g)
                served += 1
        if mode == "master":
            write_keys(reloads + 1)  # and one check= swap in the worker, without a reload
            time.sleep(3)
            traffic(reloads + 1)
            served += 1
        clean = True
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGQUIT)
            try:
                proc.wait(300)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    with open(errlog, errors="replace") as f:
        elog = f.read()
    shutil.copy(errlog, os.path.join(out, "valgrind-%s-error.log" % mode))
    logs = sorted(glob.glob(os.path.join(out, "valgrind-%s.*.log" % mode)))

    definite, errors, bad, signals, summaries = [], [], [], [], []
    for path in logs:
        with open(path, errors="replace") as f:
            text = f.read()
        blocks, cur = [], []
        for line in text.splitlines():
            body = re.sub(r"^==\d+== ?", "", line)
            if body.strip() == "":
                if cur:
                    blocks.append(cur)
                cur = []
            else:
                cur.append(body)
        if cur:
            blocks.append(cur)
        for b in blocks:
            if "definitely lost in loss record" in b[0]:
                definite.append(b)
            elif re.match(r"(Invalid (read|write|free)|Conditional jump|Use of uninitialised|"
                          r"Syscall param|Mismatched free|Source and destination overlap|"
                          r"Argument .* fishy)", b[0]):
                errors.append(b)
            elif b[0].startswith("Process terminating"):
                signals.append("%s: %s" % (os.path.basename(path), b[0]))
        m = re.findall(r"definitely lost: ([\d,]+) bytes in ([\d,]+) blocks", text)
        if m:
            summaries.append(m[-1])

    def through_module(block):
        return any("ngx_http_api_key_module" in l or "apikey::" in l or "/src/core/" in l
                   for l in block)
    bad = [b for b in definite + errors if through_module(b)]
    crit = [l for l in elog.splitlines() if re.search(r"\[(alert|emerg|crit)\]|exited on signal", l)]
    lost = sum(int(b.replace(",", "")) for b, _ in summaries)
    print("%s: %d processes, %d reloads, %d rounds of requests; definitely lost %d bytes "
          "(records: %d, through the module: %d); memcheck errors: %d (through the module: %d)"
          % (mode, len(logs), reloads, served, lost, len(definite),
             len([b for b in definite if through_module(b)]), len(errors),
             len([b for b in errors if through_module(b)])))
    for b in bad[:5]:
        print("\n".join("    " + l for l in b[:30]))
        print("    --")
    others = [b for b in definite + errors if not through_module(b)]
    if others:  # nginx's own (e.g. 8 bytes from ngx_set_environment in every worker)
        print("    %d record(s) not through the module, the first:" % len(others))
        print("\n".join("      " + l for l in others[0][:6]))
    for s in signals:
        print("    " + s)
    for l in crit[:10]:
        print("    error.log: " + l)
    ok = clean and not bad and not signals and not crit
    if ok:
        shutil.rmtree(prefix, ignore_errors=True)
    else:
        print("    prefix kept: " + prefix)
    return ok



def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="directory for the memcheck logs")
    ap.add_argument("--module", required=True, help="the module .so to load")
    ap.add_argument("--reloads", type=int, default=20, help="reloads per run (20)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for f in glob.glob(os.path.join(args.out, "valgrind-*.log")):
        os.unlink(f)
    results = [run(m, args.module, args.reloads, args.out) for m in ("single", "master")]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
