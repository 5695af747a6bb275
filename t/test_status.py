"""SPEC api_key_status [json | prometheus]: per-key usage (accepted, denied
by code, rate-limited, last used) across all workers, per-zone totals
including requests without a known key, Prometheus exposition format,
access control with allow/deny, and counters that survive a reload."""

import calendar
import re
import time
import unittest

from harness import PAST, KeyFile, NginxCase, bearer, new_key, xkey

# The second zone's name holds a quote and a backslash: nginx unescapes
# "q\"z\\x" to q"z\x, which the status must escape in JSON and Prometheus.
OTHER = 'q"z\\x'

HTTP = r"""
    api_key_zone keys:1m file={prefix}/keys.yaml;
    api_key_zone "q\"z\\x:256k" file={prefix}/other.yaml;
    api_key_limit_zone limits:1m;

    log_format workers '$pid $status $api_key_id';

    server {
        # one listening socket per worker: the kernel spreads the test's
        # connections over both workers
        listen 127.0.0.1:{port} reuseport;
        server_name localhost;
        api_key keys;
        access_log {prefix}/workers.log workers;

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
        location /both/ {
            api_key_source bearer header=x-api-key;
            empty_gif;
        }
        location /live/ {
            api_key_environment live;
            empty_gif;
        }
        location /other/ {
            api_key "q\"z\\x";
            empty_gif;
        }

        location = /status {
            api_key off;
            api_key_status;
            allow 127.0.0.1;
            deny all;
            access_log off;
        }
        location = /metrics {
            api_key off;
            api_key_status prometheus;
            allow 127.0.0.1;
            deny all;
            access_log off;
        }
        location = /status-denied {
            api_key off;
            api_key_status;
            allow 192.0.2.1;
            deny all;
            access_log off;
        }
        location = /metrics-denied {
            api_key off;
            api_key_status prometheus;
            deny all;
            access_log off;
        }
    }
"""

RFC3339_RE = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)$")

SPEC_DENIAL_CODES = {"missing_api_key", "invalid_api_key", "revoked_api_key", "expired_api_key",
                     "plan_required", "ip_not_allowed", "insufficient_scope"}


def parse_rfc3339(text):
    """Unix seconds of an RFC 3339 timestamp, or None if it is not one."""
    m = RFC3339_RE.match(text or "")
    if not m:
        return None
    y, mo, d, h, mi, s, tz = m.groups()
    t = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s)))
    if tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        t -= sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    return t


def nonzero(denied):
    """A denied map without zero entries (a zero may be listed or left out)."""
    return {k: v for k, v in (denied or {}).items() if v}


# --------------------------------------------------------------------------
# Prometheus text exposition format 0.0.4

METRIC = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
LABEL_VALUE = r'(?:[^"\\\n]|\\[\\"n])*'
HELP_RE = re.compile(r"^# HELP (%s) ((?:[^\\\n]|\\[\\n])*)$" % METRIC)
TYPE_RE = re.compile(r"^# TYPE (%s) (counter|gauge)$" % METRIC)
SAMPLE_RE = re.compile(r"^(%s)(?:\{(.*)\})? ([^ ]+)(?: (-?\d+))?$" % METRIC)
PAIR_RE = re.compile(r'(%s)="(%s)"' % (LABEL, LABEL_VALUE))


def unescape_label(v):
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), v)


def parse_labels(text):
    """Labels of a sample as a dict, or raises ValueError."""
    labels = {}
    pos = 0
    while pos < len(text):
        m = PAIR_RE.match(text, pos)
        if not m:
            raise ValueError("bad label at %r" % text[pos:])
        if m.group(1) in labels:
            raise ValueError("label %s repeated" % m.group(1))
        labels[m.group(1)] = unescape_label(m.group(2))
        pos = m.end()
        if pos < len(text):
            if text[pos] != ",":
                raise ValueError("expected ',' at %r" % text[pos:])
            pos += 1
    return labels


def parse_number(text):
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text.replace("Inf", "inf").replace("NaN", "nan"))
    if not re.match(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$", text):
        raise ValueError("not a number: %r" % text)
    return float(text)


def parse_prometheus(text):
    """Strict parse: returns ({(name, frozenset(labels)): value}, {name: type},
    [problems])."""
    problems = []
    samples, types, helps = {}, {}, set()
    finished = set()  # metrics whose group of lines has ended
    current = None
    if not text.endswith("\n"):
        problems.append("the text does not end with a newline")
    for n, line in enumerate(text.split("\n")[:-1], 1):
        m_help, m_type, m_sample = HELP_RE.match(line), TYPE_RE.match(line), SAMPLE_RE.match(line)
        name = (m_help or m_type or m_sample).group(1) if (m_help or m_type or m_sample) else None
        if name is None:
            problems.append("line %d is neither HELP, TYPE nor a sample: %r" % (n, line))
            continue
        if name != current:
            if current is not None:
                finished.add(current)
            if name in finished:
                problems.append("line %d: lines of %s are not grouped together" % (n, name))
            current = name
        if m_help:
            if name in helps:
                problems.append("line %d: second HELP for %s" % (n, name))
            helps.add(name)
        elif m_type:
            if name in types:
                problems.append("line %d: second TYPE for %s" % (n, name))
            if name in samples_names(samples):
                problems.append("line %d: TYPE of %s after its samples" % (n, name))
            types[name] = m_type.group(2)
        else:
            if name not in helps or name not in types:
                problems.append("line %d: sample of %s without HELP and TYPE before it"
                                % (n, name))
            try:
                labels = parse_labels(m_sample.group(2) or "")
                value = parse_number(m_sample.group(3))
            except ValueError as e:
                problems.append("line %d: %s: %r" % (n, e, line))
                continue
            series = (name, frozenset(labels.items()))
            if series in samples:
                problems.append("line %d: duplicate series %r" % (n, line))
            samples[series] = value
    return samples, types, problems


def samples_names(samples):
    return {name for name, _ in samples}


def series(samples, name, **labels):
    """Value of one series, or None."""
    return samples.get((name, frozenset(labels.items())))


# --------------------------------------------------------------------------

class StatusTest(NginxCase):
    """One nginx; a fixed mix of requests is sent once, then each test reads
    the status in one of its forms."""

    HTTP = HTTP

    @classmethod
    def prepare(cls, nginx):
        kf = KeyFile()
        cls.ka = kf.add("key_a", plan="pro", scopes=["x:read"])
        cls.kb = kf.add("key_b", plan="pro", scopes=["x:read"])
        cls.kc = kf.add("key_c", plan="pro")
        cls.kr = kf.add("key_revoked", plan="pro", revoked_at=PAST)
        cls.kt = kf.add("key_test_env", prefix="jfi_sk_test_", plan="pro")
        cls.ku = kf.add("key_unused", plan="pro")
        kf.write(nginx.path("keys.yaml"))
        other = KeyFile()
        cls.kd = other.add("key_d", plan="pro")
        other.write(nginx.path("other.yaml"))

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.mismatches = []
        if cls._setup_error:
            return
        cls.t_start = time.time()
        try:
            cls.send_traffic()
        except Exception as e:
            cls._setup_error = "sending the requests: %s: %s" % (type(e).__name__, e)
        cls.t_end = time.time()

    @classmethod
    def send(cls, path, headers, status, code=None):
        r = cls.nginx.get(path, headers)
        got = (r.status, None if r.status == 200 else r.json().get("error", {}).get("code"))
        if got != (status, code):
            cls.mismatches.append("%s %r: expected %r, got %r" % (path, headers, (status, code),
                                                                 got))

    @classmethod
    def send_traffic(cls):
        """Every request on its own connection (Connection: close)."""
        for _ in range(7):
            cls.send("/", bearer(cls.ka), 200)
        for _ in range(3):
            cls.send("/scoped/", bearer(cls.kb), 403, "insufficient_scope")
        for i in range(6):  # 2r/m: 2 accepted, then 4 refused
            cls.send("/limited/", bearer(cls.kc), 200 if i < 2 else 429,
                     None if i < 2 else "rate_limit_exceeded")
        for _ in range(2):
            cls.send("/", [], 401, "missing_api_key")
        cls.send("/", bearer(cls.kr), 401, "revoked_api_key")
        # invalid_api_key, four causes; only the last has a key record
        cls.send("/", bearer(new_key()), 401, "invalid_api_key")             # unknown
        cls.send("/", bearer("not-a-key!"), 401, "invalid_api_key")          # malformed
        cls.send("/both/", bearer(new_key()) + xkey(new_key()), 401, "invalid_api_key")  # two
        cls.send("/live/", bearer(cls.kt), 401, "invalid_api_key")           # environment
        cls.send("/other/", bearer(cls.kd), 200)

    def status(self):
        r = self.get("/status")
        self.assertEqual(r.status, 200, "GET /status from 127.0.0.1 is allowed; got %r" % r)
        return r

    def zones(self):
        return {z["zone"]: z for z in self.status().json()["zones"]}

    def metrics(self):
        r = self.get("/metrics")
        self.assertEqual(r.status, 200, "GET /metrics from 127.0.0.1 is allowed; got %r" % r)
        samples, types, problems = parse_prometheus(r.text)
        self.assertEqual(problems, [], "the Prometheus text parses strictly:\n" + r.text)
        return r, samples, types

    # -- the requests themselves

    def test_requests_answered_as_expected(self):
        self.assertEqual(self.mismatches, [], "every request of the mix got the expected answer "
                         "(the counts below depend on it)")

    def test_both_workers_served(self):
        pids = {}
        for line in self.nginx.access_log("workers.log").splitlines():
            pid = line.split(" ")[0]
            pids[pid] = pids.get(pid, 0) + 1
        print("\n    requests per worker pid: %s" % pids)
        self.assertEqual(sum(pids.values()), 24, "all 24 requests of the mix are logged")
        self.assertGreaterEqual(len(pids), 2,
                                "both workers served part of the mix: the counts are summed "
                                "across workers")

    # -- JSON

    def test_json_headers(self):
        r = self.status()
        self.assertEqual((r.header("Content-Type") or "").split(";")[0].strip(),
                         "application/json", "api_key_status (default) is application/json")

    def test_json_zone_fields(self):
        z = self.zones()["keys"]
        fields = {"zone", "file", "keys", "generation", "loaded_at", "last_error", "bytes_total",
                  "bytes_free", "requests", "usage"}
        self.assertEqual(set(z), fields, "a zone object has exactly the documented fields")
        self.assertEqual(z["file"], self.nginx.path("keys.yaml"), "file is the key file's path")
        self.assertEqual(z["keys"], 6, "keys: the 6 records of the file")
        self.assertEqual(z["generation"], 1, "generation 1: loaded once at start")
        self.assertIsNone(z["last_error"], "last_error is null after a good load")
        loaded = parse_rfc3339(z["loaded_at"])
        self.assertIsNotNone(loaded, "loaded_at is RFC 3339: %r" % z["loaded_at"])
        self.assertLessEqual(abs(loaded - self.t_start), 30, "loaded_at is about the start time")
        self.assertGreater(z["bytes_total"], 0, "bytes_total is positive")
        self.assertLessEqual(z["bytes_total"], 1 << 20, "bytes_total within the 1m zone")
        self.assertLess(z["bytes_free"], z["bytes_total"], "bytes_free below bytes_total")
        self.assertGreater(z["bytes_free"], 0, "a 1m zone with 6 keys has free bytes")
        self.assertEqual(set(z["requests"]), {"accepted", "rate_limited", "denied", "untracked"},
                         "requests has the documented fields")

    def test_json_zone_totals(self):
        req = self.zones()["keys"]["requests"]
        self.assertEqual(req["accepted"], 9, "accepted: 7 (key_a) + 2 (key_c)")
        self.assertEqual(req["rate_limited"], 4, "rate_limited: key_c's 4 refusals")
        self.assertEqual(nonzero(req["denied"]),
                         {"insufficient_scope": 3, "missing_api_key": 2, "revoked_api_key": 1,
                          "invalid_api_key": 4},
                         "denied by code, invalid_api_key summing its four causes, requests "
                         "without a key record included")
        self.assertEqual(req["untracked"], 0, "untracked: none, the zone tracks 256 keys")

    def test_json_denied_codes_are_spec_codes(self):
        z = self.zones()["keys"]
        codes = set(z["requests"]["denied"])
        for u in z["usage"]:
            codes |= set(u["denied"])
        self.assertLessEqual(codes, SPEC_DENIAL_CODES,
                             "denied maps use the SPEC's error codes only")

    def test_json_usage_per_key(self):
        usage = {u["key_id"]: u for u in self.zones()["keys"]["usage"]}
        got = {k: (u["accepted"], u["rate_limited"], nonzero(u["denied"]))
               for k, u in usage.items()}
        self.assertEqual(got.get("key_a"), (7, 0, {}), "key_a: 7 accepted")
        self.assertEqual(got.get("key_b"), (0, 0, {"insufficient_scope": 3}),
                         "key_b: 3 insufficient_scope")
        self.assertEqual(got.get("key_c"), (2, 4, {}), "key_c: 2 accepted, 4 rate-limited")
        self.assertEqual(got.get("key_revoked"), (0, 0, {"revoked_api_key": 1}),
                         "key_revoked: 1 revoked_api_key")
        self.assertEqual(got.get("key_test_env"), (0, 0, {"invalid_api_key": 1}),
                         "a known key of the wrong environment counts against its record")
        self.assertNotIn("key_unused", usage, "a key never used is not listed")
        self.assertEqual(set(usage), {"key_a", "key_b", "key_c", "key_revoked", "key_test_env"},
                         "usage lists exactly the keys used, and no key of another zone")
        for k, u in usage.items():
            self.assertEqual(set(u), {"key_id", "accepted", "rate_limited", "denied", "last_used"},
                             "usage entry of %s has the documented fields" % k)
            t = parse_rfc3339(u["last_used"])
            self.assertIsNotNone(t, "last_used of %s is RFC 3339: %r" % (k, u["last_used"]))
            self.assertTrue(self.t_start - 2 <= t <= self.t_end + 2,
                            "last_used of %s is when the test sent it" % k)

    def test_json_second_zone_escaped(self):
        r = self.status()
        self.assertIn('"zone":"q\\"z\\\\x"', r.text.replace(" ", ""),
                      "the zone name's quote and backslash are escaped in JSON")
        zones = {z["zone"]: z for z in r.json()["zones"]}
        self.assertEqual(set(zones), {"keys", OTHER}, "both key zones are listed")
        z = zones[OTHER]
        self.assertEqual(z["requests"]["accepted"], 1, "the other zone counts its own request")
        self.assertEqual([(u["key_id"], u["accepted"]) for u in z["usage"]], [("key_d", 1)],
                         "the other zone lists its own key only")

    def test_head_and_post(self):
        r = self.req("HEAD", "/status")
        self.assertEqual(r.status, 200, "HEAD /status is answered")
        self.assertEqual(r.body, b"", "HEAD /status has no body")
        r = self.req("POST", "/status", body="x")
        self.assertEqual(r.status, 405, "POST /status is 405 Not Allowed")

    # -- access control

    def test_deny_json(self):
        r = self.get("/status-denied")
        self.assertEqual(r.status, 403, "allow 192.0.2.1; deny all; refuses 127.0.0.1 with 403")
        self.assertNotIn(b"key_a", r.body, "the denied response does not carry the usage")
        self.assertNotIn(b"zones", r.body, "the denied response is nginx's, not the status")

    def test_deny_prometheus(self):
        r = self.get("/metrics-denied")
        self.assertEqual(r.status, 403, "deny all; refuses the Prometheus status with 403")
        self.assertNotIn(b"api_key_", r.body, "the denied response carries no metrics")

    # -- Prometheus

    def test_prometheus_content_type(self):
        r = self.get("/metrics")
        ctype = (r.header("Content-Type") or "").replace(" ", "").lower()
        self.assertTrue(ctype.startswith("text/plain;"), "Prometheus output is text/plain")
        self.assertIn("version=0.0.4", ctype, "Content-Type names version=0.0.4")

    def test_prometheus_parses(self):
        r, samples, types = self.metrics()
        want = {"api_key_zone_keys": "gauge", "api_key_zone_generation": "gauge",
                "api_key_zone_loaded_timestamp_seconds": "gauge",
                "api_key_zone_load_error": "gauge", "api_key_zone_bytes": "gauge",
                "api_key_zone_requests_total": "counter", "api_key_requests_total": "counter",
                "api_key_last_used_timestamp_seconds": "gauge"}
        for name, kind in want.items():
            self.assertEqual(types.get(name), kind, "%s has TYPE %s" % (name, kind))
        for name, kind in types.items():
            if kind == "counter":
                self.assertTrue(name.endswith("_total"), "counter %s ends in _total" % name)

    def test_prometheus_zone_gauges(self):
        _, s, _ = self.metrics()
        z = self.zones()["keys"]
        self.assertEqual(series(s, "api_key_zone_keys", zone="keys"), 6, "api_key_zone_keys")
        self.assertEqual(series(s, "api_key_zone_generation", zone="keys"), 1,
                         "api_key_zone_generation")
        self.assertEqual(series(s, "api_key_zone_load_error", zone="keys"), 0,
                         "api_key_zone_load_error 0 after a good load")
        loaded = series(s, "api_key_zone_loaded_timestamp_seconds", zone="keys")
        self.assertEqual(loaded, parse_rfc3339(z["loaded_at"]),
                         "loaded timestamp equals the JSON loaded_at")
        used = series(s, "api_key_zone_bytes", zone="keys", state="used")
        free = series(s, "api_key_zone_bytes", zone="keys", state="free")
        self.assertEqual(free, z["bytes_free"], "state=free equals JSON bytes_free")
        self.assertEqual(used + free, z["bytes_total"], "used + free equals JSON bytes_total")

    def test_prometheus_request_counters(self):
        _, s, _ = self.metrics()
        zone_codes = {dict(l)["code"]: v for (n, l), v in s.items()
                      if n == "api_key_zone_requests_total" and dict(l)["zone"] == "keys" and v}
        self.assertEqual(zone_codes, {"accepted": 9, "rate_limit_exceeded": 4,
                                      "insufficient_scope": 3, "missing_api_key": 2,
                                      "revoked_api_key": 1, "invalid_api_key": 4},
                         "api_key_zone_requests_total by code (accepted, rate_limit_exceeded, "
                         "error codes)")
        per_key = {(dict(l)["key_id"], dict(l)["code"]): v for (n, l), v in s.items()
                   if n == "api_key_requests_total" and dict(l)["zone"] == "keys" and v}
        self.assertEqual(per_key, {("key_a", "accepted"): 7,
                                   ("key_b", "insufficient_scope"): 3,
                                   ("key_c", "accepted"): 2,
                                   ("key_c", "rate_limit_exceeded"): 4,
                                   ("key_revoked", "revoked_api_key"): 1,
                                   ("key_test_env", "invalid_api_key"): 1},
                         "api_key_requests_total per key and code")
        last = {dict(l)["key_id"]: v for (n, l), v in s.items()
                if n == "api_key_last_used_timestamp_seconds" and dict(l)["zone"] == "keys"}
        self.assertEqual(set(last), {"key_a", "key_b", "key_c", "key_revoked", "key_test_env"},
                         "api_key_last_used_timestamp_seconds for every used key, no other")
        for k, v in last.items():
            self.assertTrue(self.t_start - 2 <= v <= self.t_end + 2,
                            "last used timestamp of %s is when the test sent it" % k)

    def test_prometheus_label_escaping(self):
        r, s, _ = self.metrics()
        self.assertIn('zone="q\\"z\\\\x"', r.text,
                      "the zone label escapes the quote and backslash of its name")
        self.assertEqual(series(s, "api_key_requests_total", zone=OTHER, key_id="key_d",
                                code="accepted"), 1,
                         "the other zone's key counted under its own (escaped) zone label")


class StatusReloadTest(NginxCase):
    """Counters survive `nginx -s reload` when the zone's name and size stay."""

    HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;

    server {
        listen 127.0.0.1:{port} reuseport;
        server_name localhost;
        api_key keys;
        location / {
            empty_gif;
        }
        location /scoped/ {
            api_key_scope x:write;
            empty_gif;
        }
        location = /status {
            api_key off;
            api_key_status;
            allow 127.0.0.1;
            deny all;
        }
        location = /metrics {
            api_key off;
            api_key_status prometheus;
            allow 127.0.0.1;
            deny all;
        }
    }
    """

    @classmethod
    def prepare(cls, nginx):
        kf = KeyFile()
        cls.ka = kf.add("key_a", plan="pro")
        cls.kb = kf.add("key_b", plan="pro")
        kf.write(nginx.path("keys.yaml"))

    def snapshot(self):
        z = self.get("/status").json()["zones"][0]
        m = self.get("/metrics")
        samples, _, problems = parse_prometheus(m.text)
        self.assertEqual(problems, [], "the Prometheus text parses")
        counters = {k: v for k, v in samples.items() if k[0].endswith("_total")}
        return z, counters

    def test_counters_survive_reload(self):
        for _ in range(3):
            self.assertEqual(self.get("/", bearer(self.ka)).status, 200, "key_a accepted")
        for _ in range(2):
            self.assertEqual(self.get("/scoped/", bearer(self.kb)).status, 403,
                             "key_b lacks the scope")
        self.assertEqual(self.get("/").status, 401, "no key")
        before, prom_before = self.snapshot()
        workers = set(self.nginx.workers())

        self.nginx.reload()
        self.assertFalse(set(self.nginx.workers()) & workers, "the reload replaced the workers")
        after, prom_after = self.snapshot()
        self.assertEqual(after["requests"], before["requests"],
                         "zone request counters are the same after the reload")
        self.assertEqual(after["usage"], before["usage"],
                         "per-key usage is the same after the reload")
        self.assertEqual(prom_after, prom_before, "Prometheus counters are the same after the "
                         "reload (no reset)")
        self.assertEqual(after["generation"], before["generation"] + 1,
                         "the reload loaded the file once more into the same zone")

        self.assertEqual(self.get("/", bearer(self.ka)).status, 200, "key_a accepted again")
        _, prom = self.snapshot()
        self.assertEqual(series(prom, "api_key_requests_total", zone="keys", key_id="key_a",
                                code="accepted"), 4,
                         "counting goes on from the old value: 3 + 1 = 4")
        self.assertEqual(series(prom, "api_key_zone_requests_total", zone="keys",
                                code="missing_api_key"), 1, "zone counter kept its value")


if __name__ == "__main__":
    unittest.main()
