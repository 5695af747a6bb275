"""SPEC "Optional keys, per-key IP allow-lists, metrics": the Prometheus
side of api_key_status, checked by Prometheus' own tools.

    api_key_status [json | prometheus] [keys=off | all | top=N];
    GET /status?format=json | prometheus

* PromtoolTest: one nginx with two key zones (one follows a key channel),
  a local and a synced limit zone (a redis-server of the test's own), so
  that every metric family of the README appears; its real output passes
  `promtool check metrics` (the text format parser plus its lint: HELP,
  counters in _total, base units, ...) for keys=all, keys=top=N, keys=off
  and ?format=prometheus; build_info names the version of debian/changelog
  and the nginx under test; keys=top=N keeps the N busiest keys (ties to
  the smaller id); ?format= overrides the directive, anything else is 400.
* PrometheusServerTest: the real Prometheus server (Debian's `prometheus`)
  scrapes the status location every second; its query API returns exactly
  the accepted and refused requests the test sent, per key and code, and
  follows new ones.
* StatusConfigTest: nginx -t on the directive's arguments.

Without promtool or prometheus (scripts/setup installs the package) the
tests that need them are skipped, saying so.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import unittest
import urllib.parse
import urllib.request

from harness import (PAST, REPO, ConfigCheckCase, KeyFile, NginxCase, bearer, free_port,
                     nginx_version, wait_until)
from test_cluster import Redis
from test_status import parse_prometheus, series

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"

# Every family the module exports (README "Usage status"), with its type.
FAMILIES = {
    "api_key_build_info": "gauge",
    "api_key_zone_keys": "gauge",
    "api_key_zone_generation": "gauge",
    "api_key_zone_loaded_timestamp_seconds": "gauge",
    "api_key_zone_load_error": "gauge",
    "api_key_zone_bytes": "gauge",
    "api_key_zone_requests_total": "counter",
    "api_key_zone_untracked_requests_total": "counter",
    "api_key_requests_total": "counter",
    "api_key_last_used_timestamp_seconds": "gauge",
    "api_key_limit_zone_counters": "gauge",
    "api_key_sync_state": "gauge",
    "api_key_channel_version": "gauge",
    "api_key_channel_revoked_keys": "gauge",
    "api_key_channel_revocations_applied_total": "counter",
    "api_key_channel_versions_installed_total": "counter",
    "api_key_channel_entries_refused_total": "counter",
    "api_key_channel_versions_ignored_total": "counter",
    "api_key_channel_last_read_timestamp_seconds": "gauge",
    "api_key_sync_batches_total": "counter",
    "api_key_sync_failures_total": "counter",
    "api_key_sync_epoch_changes_total": "counter",
    "api_key_sync_granted_total": "counter",
    "api_key_sync_overdraft_reported_total": "counter",
    "api_key_sync_refused_no_grant_total": "counter",
    "api_key_sync_last_success_timestamp_seconds": "gauge",
    "api_key_sync_last_batch_duration_seconds": "gauge",
    "api_key_sync_last_batch_budgets": "gauge",
    "api_key_sync_nodes": "gauge",
}
PER_KEY = {"api_key_requests_total", "api_key_last_used_timestamp_seconds"}

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def changelog_version():
    """The upstream version of debian/changelog's newest entry ("0.3.0")."""
    with open(os.path.join(REPO, "debian", "changelog")) as f:
        m = re.match(r"^\S+ \(([^)]+)\)", f.readline())
    return m.group(1).rsplit("-", 1)[0] if m else None


def promtool_check(text):
    """(exit status, output) of `promtool check metrics` on text."""
    proc = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


def traffic(case, send):
    """The fixed mix both classes send to their key zone "keys":
    key_a 5 accepted; key_b 3 insufficient_scope; key_c 2 accepted and 3
    rate-limited (2r/m); key_revoked 1 revoked_api_key; 4 without a key."""
    for _ in range(5):
        send("/", bearer(case.ka), 200)
    for _ in range(3):
        send("/scoped/", bearer(case.kb), 403)
    for i in range(5):
        send("/limited/", bearer(case.kc), 200 if i < 2 else 429)
    send("/", bearer(case.kr), 401)
    for _ in range(4):
        send("/", [], 401)


PER_KEY_WANT = {("key_a", "accepted"): 5, ("key_b", "insufficient_scope"): 3,
                ("key_c", "accepted"): 2, ("key_c", "rate_limit_exceeded"): 3,
                ("key_revoked", "revoked_api_key"): 1}
ZONE_WANT = {"accepted": 7, "insufficient_scope": 3, "rate_limit_exceeded": 3,
             "revoked_api_key": 1, "missing_api_key": 4}


def write_keys(case, nginx):
    kf = KeyFile()
    case.ka = kf.add("key_a", scopes=["x:read"])
    case.kb = kf.add("key_b", scopes=["x:read"])
    case.kc = kf.add("key_c")
    case.kr = kf.add("key_revoked", revoked_at=PAST)
    kf.add("key_unused")
    kf.write(nginx.path("keys.yaml"))


LOCATIONS = """
        location / {
            empty_gif;
        }
        location /scoped/ {
            api_key_scope x:write;
            empty_gif;
        }
        location /limited/ {
            api_key_limit limits read 2r/m;
            empty_gif;
        }
"""

PROMTOOL_HTTP = """
    api_key_redis r 127.0.0.1:{redis};
    api_key_zone keys:1m file={prefix}/keys.yaml;
    api_key_zone chan:1m file={prefix}/chan.yaml check=1s sync=r channel=prom;
    api_key_limit_zone limits:1m;
    api_key_limit_zone shared:1m sync=r interval=100ms;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        api_key keys;
        access_log off;
""" + LOCATIONS + """
        location /synced/ {
            api_key_limit shared read 100r/m;
            empty_gif;
        }
        location /chan/ {
            api_key chan;
            empty_gif;
        }

        location = /metrics {
            api_key off;
            api_key_status prometheus keys=all;
            allow 127.0.0.1;
            deny all;
        }
        location = /metrics-default {
            api_key off;
            api_key_status prometheus;
        }
        location = /metrics-top {
            api_key off;
            api_key_status prometheus keys=top=2;
        }
        location = /metrics-off {
            api_key off;
            api_key_status prometheus keys=off;
        }
        location = /status {
            api_key off;
            api_key_status;
        }
    }
"""


class PromtoolTest(NginxCase):
    """The real output of every form of the status page through promtool."""

    @classmethod
    def setUpClass(cls):
        cls.redis = Redis()
        try:
            cls.redis.start()
        except unittest.SkipTest:
            raise unittest.SkipTest("redis-server is not installed: the synced families need it")
        cls.HTTP = PROMTOOL_HTTP.replace("{redis}", str(cls.redis.port))
        super().setUpClass()
        if cls._setup_error:
            return
        cls.mismatches = []

        def send(path, headers, status):
            r = cls.nginx.get(path, headers)
            if r.status != status:
                cls.mismatches.append("%s: expected %d, got %d" % (path, status, r.status))

        try:
            traffic(cls, send)
            send("/synced/", bearer(cls.ka), 200)
            send("/chan/", bearer(cls.kchan), 200)
            # the synced zone has exchanged a batch with Redis
            wait_until(lambda: series(cls.samples("/metrics"), "api_key_sync_batches_total",
                                      zone="shared"), 10, what="a sync batch")
        except Exception as e:
            cls._setup_error = "sending the requests: %s: %s" % (type(e).__name__, e)

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.redis.cleanup()

    @classmethod
    def prepare(cls, nginx):
        write_keys(cls, nginx)
        chan = KeyFile()
        cls.kchan = chan.add("key_chan")
        chan.write(nginx.path("chan.yaml"))

    @classmethod
    def samples(cls, path):
        return parse_prometheus(cls.nginx.get(path).text)[0]

    def fetch(self, path):
        r = self.get(path)
        self.assertEqual(r.status, 200, "GET %s: 200; got %r" % (path, r))
        return r

    def promtool(self, path):
        if not os.path.exists(PROMTOOL):
            self.skipTest("promtool is not installed (Debian package prometheus; scripts/setup "
                          "installs it)")
        text = self.fetch(path).text
        rc, out = promtool_check(text)
        self.assertEqual((rc, out.strip()), (0, ""),
                         "`promtool check metrics` finds nothing wrong with GET %s:\n%s\n"
                         "--- the text:\n%s" % (path, out, text))
        return text

    def test_requests_answered_as_expected(self):
        self.assertEqual(self.mismatches, [], "every request of the mix got the expected status")

    def test_promtool_keys_all(self):
        self.promtool("/metrics")

    def test_promtool_default_top_and_off(self):
        for path in ("/metrics-default", "/metrics-top", "/metrics-off"):
            self.promtool(path)

    def test_promtool_format_argument(self):
        self.promtool("/status?format=prometheus")

    def test_every_family_appears_with_its_type(self):
        _, types, problems = parse_prometheus(self.fetch("/metrics").text)
        self.assertEqual(problems, [], "the text parses strictly")
        self.assertEqual(types, FAMILIES, "every documented family, with its type, and no other")

    def test_build_info(self):
        s = self.samples("/metrics")
        info = {dict(labels)["version"]: (dict(labels), v) for (name, labels), v in s.items()
                if name == "api_key_build_info"}
        self.assertEqual(len(info), 1, "one api_key_build_info series")
        labels, value = next(iter(info.values()))
        self.assertEqual(value, 1, "api_key_build_info is 1")
        self.assertEqual(set(labels), {"version", "nginx"}, "labels version and nginx")
        self.assertEqual(labels["version"], changelog_version(),
                         "version is debian/changelog's upstream version (src/core/version.h)")
        self.assertEqual(labels["nginx"], ".".join(map(str, nginx_version())),
                         "nginx is the version of the nginx that runs the module")
        for path in ("/metrics-off", "/metrics-top", "/status?format=prometheus"):
            self.assertIn('api_key_build_info{version="%s",nginx="%s"} 1\n'
                          % (labels["version"], labels["nginx"]), self.fetch(path).text,
                          "build_info is in every form (%s)" % path)

    def test_counts(self):
        s = self.samples("/metrics")
        per_key = {(dict(l)["key_id"], dict(l)["code"]): v for (n, l), v in s.items()
                   if n == "api_key_requests_total" and dict(l)["zone"] == "keys"}
        self.assertEqual(per_key, {**PER_KEY_WANT, ("key_a", "accepted"): 6},
                         "keys=all: per key and code (key_a also went to /synced/)")
        zone = {dict(l)["code"]: v for (n, l), v in s.items()
                if n == "api_key_zone_requests_total" and dict(l)["zone"] == "keys"}
        self.assertEqual({c: v for c, v in zone.items() if v},
                         dict(ZONE_WANT, accepted=8), "zone totals by code")
        self.assertEqual(zone.get("expired_api_key"), 0,
                         "zone totals list the codes that never happened, at 0")

    def test_keys_top_n(self):
        s = self.samples("/metrics-top")
        keys = {(dict(l)["zone"], dict(l)["key_id"]) for (n, l), v in s.items()
                if n == "api_key_requests_total"}
        self.assertEqual(keys, {("keys", "key_a"), ("keys", "key_c"), ("chan", "key_chan")},
                         "keys=top=2: per key zone, the two keys with the most requests (key_a "
                         "6, key_c 5, key_b 3)")
        last = {dict(l)["key_id"] for (n, l), v in s.items()
                if n == "api_key_last_used_timestamp_seconds"}
        self.assertEqual(last, {"key_a", "key_c", "key_chan"},
                         "last used for the same keys only")
        self.assertEqual(series(s, "api_key_requests_total", zone="keys", key_id="key_c",
                                code="rate_limit_exceeded"), 3,
                         "a selected key has all its codes")

    def test_keys_off(self):
        _, types, problems = parse_prometheus(self.fetch("/metrics-off").text)
        self.assertEqual(problems, [])
        self.assertEqual(set(types), set(FAMILIES) - PER_KEY,
                         "keys=off: every family but the per-key ones")

    def test_default_is_bounded_top_100(self):
        default, top_all = self.samples("/metrics-default"), self.samples("/metrics")
        self.assertEqual(default.keys() - top_all.keys(), set(),
                         "the default (top=100) shows a subset of keys=all")
        self.assertTrue(any(n == "api_key_requests_total" for n, _ in default),
                        "with 5 keys used, the default shows them (top=100)")

    # -- ?format=

    def test_format_argument_overrides_the_directive(self):
        r = self.fetch("/status?format=prometheus")
        self.assertEqual(r.header("Content-Type"), PROMETHEUS_TYPE,
                         "?format=prometheus on a JSON status location: Prometheus text")
        self.assertTrue(r.text.startswith("# HELP api_key_build_info "), "the Prometheus text")
        r = self.fetch("/metrics?format=json")
        self.assertEqual(r.header("Content-Type"), "application/json",
                         "?format=json on a Prometheus location: JSON")
        self.assertIn("zones", r.json(), "the JSON status")
        r = self.fetch("/status?format=json&other=1")
        self.assertEqual(r.header("Content-Type"), "application/json", "format=json, explicitly")
        r = self.fetch("/status")
        self.assertEqual(r.header("Content-Type"), "application/json",
                         "without ?format= the directive's format")
        r = self.fetch("/metrics?other=prometheus")
        self.assertEqual(r.header("Content-Type"), PROMETHEUS_TYPE,
                         "other arguments change nothing")

    def test_bad_format_is_400(self):
        for path in ("/status?format=xml", "/status?format=", "/status?format=JSON",
                     "/status?format=json%20"):
            r = self.get(path)
            self.assertEqual(r.status, 400, "GET %s: 400" % path)
            self.assertEqual(r.header("Content-Type"), "application/json",
                             "%s: the error in the directive's format (json)" % path)
            self.assertEqual(r.json()["error"]["code"], "invalid_format", path)
            self.assertEqual(r.header("Cache-Control"), "no-store", path)
        r = self.get("/metrics?format=openmetrics")
        self.assertEqual(r.status, 400, "?format=openmetrics on a Prometheus location: 400")
        self.assertTrue(r.header("Content-Type").startswith("text/plain"),
                        "the error in the directive's format (plain text)")
        self.assertEqual(r.text, "format must be json or prometheus\n", "a short message")
        self.assertNotIn(b"api_key_", r.body, "no metrics in the error")


SERVER_HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;
    api_key_limit_zone limits:1m;

    server {
        listen 127.0.0.1:{port} reuseport;
        server_name localhost;
        api_key keys;
        access_log off;
""" + LOCATIONS + """
        location = /metrics {
            api_key off;
            api_key_status prometheus keys=all;
            allow 127.0.0.1;
            deny all;
        }
    }
"""

PROMETHEUS_YML = """
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: api_key
    metrics_path: /metrics
    static_configs:
      - targets: ["127.0.0.1:%d"]
"""


class PrometheusServer:
    """Debian's prometheus on 127.0.0.1:port with its own configuration and
    storage in a temporary directory."""

    def __init__(self, target_port):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="apikey-prometheus-", dir="/tmp")
        self.config = os.path.join(self.dir, "prometheus.yml")
        with open(self.config, "w") as f:
            f.write(PROMETHEUS_YML % target_port)
        self.proc = None

    def start(self, timeout=30.0):
        log = open(os.path.join(self.dir, "prometheus.log"), "wb")
        try:
            self.proc = subprocess.Popen(
                [PROMETHEUS, "--config.file=" + self.config,
                 "--storage.tsdb.path=" + os.path.join(self.dir, "data"),
                 "--web.listen-address=127.0.0.1:%d" % self.port,
                 "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir)
        finally:
            log.close()
        wait_until(self.ready, timeout, interval=0.1,
                   what="prometheus ready on 127.0.0.1:%d" % self.port)
        return self

    def ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError("prometheus exited with %s:\n%s" % (self.proc.returncode,
                                                                    self.log()[-3000:]))
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/-/ready" % self.port,
                                        timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def log(self):
        try:
            with open(os.path.join(self.dir, "prometheus.log"), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def api(self, path, **params):
        url = "http://127.0.0.1:%d/api/v1/%s" % (self.port, path)
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as r:
            doc = json.load(r)
        if doc.get("status") != "success":
            raise AssertionError("prometheus %s: %r" % (url, doc))
        return doc["data"]

    def query(self, expr):
        """An instant query: {frozenset(labels without __name__): value}."""
        data = self.api("query", query=expr)
        out = {}
        for item in data["result"]:
            labels = {k: v for k, v in item["metric"].items() if k != "__name__"}
            out[frozenset(labels.items())] = float(item["value"][1])
        return out

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def cleanup(self):
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class PrometheusServerTest(NginxCase):
    """Prometheus scrapes the status location and answers the counts."""

    HTTP = SERVER_HTTP

    @classmethod
    def prepare(cls, nginx):
        write_keys(cls, nginx)

    def setUp(self):
        super().setUp()
        if not os.path.exists(PROMETHEUS):
            self.skipTest("prometheus is not installed (Debian package prometheus; scripts/setup "
                          "installs it)")

    def send(self, path, headers, status):
        r = self.get(path, headers)
        self.assertEqual(r.status, status, "%s: %d; got %r" % (path, status, r))

    def per_key(self, prom):
        got = prom.query('api_key_requests_total{job="api_key",zone="keys"}')
        return {(dict(k)["key_id"], dict(k)["code"]): v for k, v in got.items()}

    def test_prometheus_scrapes_the_counts_the_test_sent(self):
        traffic(self, self.send)
        prom = PrometheusServer(self.nginx.port)
        self.addCleanup(prom.cleanup)
        prom.start()
        try:
            wait_until(lambda: self.per_key(prom), 20, interval=0.2,
                       what="prometheus to scrape api_key_requests_total")
        except TimeoutError:
            self.fail("no api_key_requests_total in prometheus after 20 s; targets: %r\nlog:\n%s"
                      % (prom.api("targets"), prom.log()[-3000:]))
        targets = prom.api("targets")["activeTargets"]
        self.assertEqual([(t["health"], t["lastError"]) for t in targets], [("up", "")],
                         "the one target is up and its last scrape had no error")

        self.assertEqual(self.per_key(prom), PER_KEY_WANT,
                         "prometheus has api_key_requests_total per key and code as sent")
        zone = prom.query('api_key_zone_requests_total{job="api_key",zone="keys"}')
        zone = {dict(k)["code"]: v for k, v in zone.items()}
        self.assertEqual({c: v for c, v in zone.items() if v}, ZONE_WANT,
                         "prometheus has api_key_zone_requests_total by code as sent")
        by_outcome = prom.query('sum by (code) (api_key_requests_total{job="api_key"})')
        self.assertEqual({dict(k)["code"]: v for k, v in by_outcome.items()},
                         {"accepted": 7, "insufficient_scope": 3, "rate_limit_exceeded": 3,
                          "revoked_api_key": 1},
                         "PromQL sums the per-key series by code")
        info = prom.query("api_key_build_info")
        self.assertEqual([dict(k).get("version") for k in info], [changelog_version()],
                         "api_key_build_info is stored with its version label")
        meta = prom.api("metadata", metric="api_key_requests_total")
        self.assertEqual([m["type"] for m in meta.get("api_key_requests_total", [])],
                         ["counter"], "prometheus read api_key_requests_total as a counter")

        # new requests show up at the next scrape
        for _ in range(2):
            self.send("/", bearer(self.ka), 200)
        self.send("/scoped/", bearer(self.ka), 403)
        want = {**PER_KEY_WANT, ("key_a", "accepted"): 7, ("key_a", "insufficient_scope"): 1}
        try:
            wait_until(lambda: self.per_key(prom) == want, 10, interval=0.2,
                       what="prometheus to see the new requests")
        except TimeoutError:
            self.assertEqual(self.per_key(prom), want, "prometheus follows new requests")
        self.assertEqual(prom.query('sum(api_key_zone_requests_total{job="api_key",'
                                    'code="accepted"})'), {frozenset(): 9.0},
                         "9 accepted in the zone")


class StatusConfigTest(ConfigCheckCase):
    """api_key_status [json | prometheus] [keys=off | all | top=N];"""

    NAME = "statusconf"

    def conf(self, args):
        return """
    api_key_zone keys:1m file={prefix}/keys.yaml;
    server {
        listen 127.0.0.1:%d;
        location = /metrics {
            api_key_status %s;
        }
    }
""" % (free_port(), args)

    def test_accepted(self):
        for args in ("", "json", "prometheus", "prometheus keys=off", "prometheus keys=all",
                     "prometheus keys=top=1", "prometheus keys=top=10000", "json keys=top=5",
                     "keys=all"):
            rc, out = self.nginx_t(self.conf(args))
            self.assertEqual(rc, 0, "api_key_status %s; is accepted:\n%s" % (args, out))

    def test_refused(self):
        cases = [("xml", '"xml"'), ("prometheus keys=top=0", '"keys=top=0"'),
                 ("prometheus keys=top=10001", '"keys=top=10001"'),
                 ("prometheus keys=some", '"keys=some"'), ("prometheus keys=", '"keys="'),
                 ("keys=all prometheus", '"prometheus"'), ("json prometheus", '"prometheus"'),
                 ("prometheus keys=all keys=off", None)]
        for args, mention in cases:
            self.refused(self.conf(args), "api_key_status %s;" % args, mention)

    def test_duplicate(self):
        self.refused(self.conf("prometheus;\n            api_key_status json"),
                     "api_key_status twice", "is duplicate")


if __name__ == "__main__":
    unittest.main()
