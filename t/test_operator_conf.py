"""Operator material in conf/ (issue #17): the Grafana dashboard, the
Prometheus alert rules and the JSON access log recipe work with the module
as it is.

* conf/prometheus-alerts.yml passes `promtool check rules`; every alert has
  `for:`, a severity label, a summary and a description; `promtool test
  rules` on synthetic series shows each alert fires when it should and
  stays quiet when it should (the rules' expressions with their `for:`).
* conf/grafana-dashboard.json parses, panel ids are unique, every panel has
  a datasource and a target, and its PromQL (variables substituted) passes
  promtool's parser.
* Against a real nginx (a key zone, a key zone following a channel, a local
  and a synced limit zone on a real redis-server, per-key series), after
  accepted, refused and rate-limited requests: every metric name in the
  dashboard's and the rules' expressions is a family the module exports;
  and, with a real Prometheus server scraping that nginx, every dashboard
  query returns data without error and every alert rule evaluates without
  error.
* conf/log-json.conf included as is: each access log line is JSON with the
  key id for accepted requests, the error code for refused ones, and never
  the key; README's copy of the log_format is the file's.

conf/otel.conf (ngx_otel_module) is not tested: that module is not packaged
for the nginx the suite runs (Debian 12's 1.22); it is a recipe to check
with `nginx -t` where the module is installed.

promtool and prometheus come from Debian's `prometheus` package; without
them those tests skip and say so. The cluster part needs redis-server.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest
import urllib.error
import urllib.parse
import urllib.request

from harness import PAST, REPO, KeyFile, Nginx, free_port, new_key, request, wait_until

CONF = os.path.join(REPO, "conf")
DASHBOARD = os.path.join(CONF, "grafana-dashboard.json")
ALERTS = os.path.join(CONF, "prometheus-alerts.yml")
LOG_JSON = os.path.join(CONF, "log-json.conf")
README = os.path.join(REPO, "README.md")

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
NO_PROMTOOL = ("promtool is not installed (Debian: apt-get install prometheus, which "
               "provides /usr/bin/promtool)")
NO_PROMETHEUS = ("the prometheus server is not installed (Debian: apt-get install "
                 "prometheus)")

# Grafana's variables, replaced for promtool and Prometheus by values a
# query could get: all nodes and zones, the busiest 10 keys, a 1m window.
GRAFANA_VARS = {
    "__rate_interval": "1m", "__interval": "15s", "__range": "1m",
    "instance": ".*", "zone": ".*", "sync_zone": ".*", "top": "10",
}


# --------------------------------------------------------------------------
# PromQL: the metric names an expression uses

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                   "and", "or", "unless", "offset", "atan2", "inf", "nan", "Inf", "NaN"}
_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VAR_RE = re.compile(r"\$\{[^}]*\}|\$\[\[[^\]]*\]\]|\$[A-Za-z_][A-Za-z0-9_]*")
_GROUPING_RE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_LABEL_VALUES_RE = re.compile(r"^\s*label_values\(\s*(.*?)\s*,\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$",
                              re.S)
_TOKEN_RE = re.compile(r"(?P<num>(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)[A-Za-z]*)"
                       r"|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)")


def metric_names(expr):
    """The metric names a PromQL expression (or Grafana's label_values(SELECTOR,
    LABEL) query) selects. Strings, Grafana variables, label matchers, ranges,
    grouping label lists, numbers with units, keywords and function or
    aggregation names (an identifier before "(") are not metric names."""
    m = _LABEL_VALUES_RE.match(expr)
    if m:
        expr = m.group(1)
    s = _STRING_RE.sub(" ", expr)
    s = re.sub(r"#[^\n]*", " ", s)
    s = _GRAFANA_VAR_RE.sub(" ", s)
    s = re.sub(r"\{[^{}]*\}", " ", s)
    s = re.sub(r"\[[^\[\]]*\]", " ", s)
    s = _GROUPING_RE.sub(" ", s)
    names = set()
    for t in _TOKEN_RE.finditer(s):
        word = t.group("ident")
        if word is None or word in PROMQL_KEYWORDS:
            continue
        if s[t.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        names.add(word)
    return names


def substitute_grafana_vars(expr):
    def value(m):
        name = m.group(0).strip("${}[]")
        if name not in GRAFANA_VARS:
            raise AssertionError("no test value for the Grafana variable %s in %r"
                                 % (m.group(0), expr))
        return GRAFANA_VARS[name]
    return _GRAFANA_VAR_RE.sub(value, expr)


def label_values_selector(query):
    """The selector of a label_values(SELECTOR, LABEL) variable query, or None."""
    m = _LABEL_VALUES_RE.match(query)
    return m.group(1) if m else None


# --------------------------------------------------------------------------
# the dashboard and the rules

def load_dashboard():
    with open(DASHBOARD) as f:
        return json.load(f)


def dashboard_panels(doc):
    """Every panel, those inside rows included."""
    out = []
    for p in doc.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_queries(doc):
    """[(where, PromQL)] of every panel target and every query variable
    (label_values selectors as they are)."""
    out = []
    for p in dashboard_panels(doc):
        for t in p.get("targets", []):
            if t.get("expr"):
                out.append(("panel %s %r target %s" % (p["id"], p.get("title"), t.get("refId")),
                            t["expr"]))
    for v in doc.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            if isinstance(q, dict):
                q = q.get("query")
            out.append(("variable $%s" % v["name"], q))
    return out


def read_rules(path=None):
    """The alerting rules of a rules file as [{alert, expr, for, labels,
    annotations}], read by indentation (the standard library has no YAML
    reader). Handles what conf/prometheus-alerts.yml uses: plain and quoted
    scalars, folded (>-, >) and literal (|) block scalars, one level of maps
    under labels: and annotations:. Cross-checked against promtool's count."""
    with open(path or ALERTS) as f:
        lines = f.read().split("\n")
    rules = []
    i = 0
    cur = None
    section = None

    def scalar(text, start, indent):
        """(value, next line) of the value written after a key on line start."""
        text = text.strip()
        if text in (">-", ">", "|", "|-"):
            block = []
            j = start + 1
            while j < len(lines) and (not lines[j].strip() or
                                      len(lines[j]) - len(lines[j].lstrip()) > indent):
                block.append(lines[j].strip())
                j += 1
            while block and not block[-1]:
                block.pop()
            joiner = "\n" if text.startswith("|") else " "
            return joiner.join(block), j
        if text[:1] == '"':
            return json.loads(text), start + 1
        if text[:1] == "'":
            return text[1:-1].replace("''", "'"), start + 1
        return text, start + 1

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        indent = len(line) - len(line.lstrip())
        m = re.match(r"^-\s+(alert|record):\s*(.*)$", stripped)
        if m:
            cur = {"kind": m.group(1), "alert": m.group(2).strip(), "labels": {},
                   "annotations": {}, "_indent": indent + 2}
            rules.append(cur)
            section = None
            i += 1
            continue
        m = re.match(r"^([A-Za-z_]+):\s*(.*)$", stripped)
        if cur is not None and m and indent >= cur["_indent"]:
            key, rest = m.group(1), m.group(2)
            if indent == cur["_indent"]:
                if key in ("labels", "annotations") and not rest:
                    section = key
                    i += 1
                    continue
                section = None
                cur[key], i = scalar(rest, i, indent)
                continue
            if section is not None:
                cur[section][key], i = scalar(rest, i, indent)
                continue
        if cur is not None and indent < cur["_indent"]:
            cur = None
        i += 1
    for r in rules:
        r.pop("_indent", None)
    return rules


def promtool(*args, timeout=60):
    proc = subprocess.run([PROMTOOL] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=timeout)
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


def write_json(path, doc):
    """YAML files for promtool and prometheus, written as JSON (JSON is YAML)."""
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    return path


# --------------------------------------------------------------------------
# Prometheus exposition text: the families it has

def exported_families(text):
    """{family name: type} of an exposition text: TYPE lines, and the names
    of samples (untyped when no TYPE line named them)."""
    families = {}
    for line in text.split("\n"):
        m = re.match(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)$", line)
        if m:
            families[m.group(1)] = m.group(2)
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{|\s)", line)
        if m and not line.startswith("#"):
            families.setdefault(m.group(1), "untyped")
    return families


def unknown_names(names, families):
    """The names that are no exported family (histogram and summary series
    name their family with _bucket, _sum or _count)."""
    unknown = set()
    for n in names:
        if n in families:
            continue
        base = re.sub(r"_(bucket|sum|count)$", "", n)
        if base != n and families.get(base) in ("histogram", "summary"):
            continue
        unknown.add(n)
    return unknown


# ==========================================================================
# static checks: tokenizer, files, promtool

class TokenizerTest(unittest.TestCase):
    """The metric-name extraction the other tests rely on."""

    CASES = [
        ('sum by (code) (rate(foo_total{zone=~"$zone", code!="accepted"}[$__rate_interval]))',
         {"foo_total"}),
        ('1 - sum without (state) (a_bytes{state="free"}) / sum without (state) (a_bytes)',
         {"a_bytes"}),
        ("x > bool 1 and on (zone) y offset 5m", {"x", "y"}),
        ('label_values(api_key_zone_keys{instance=~"$instance"}, zone)', {"api_key_zone_keys"}),
        ("label_values(m_total, zone)", {"m_total"}),
        ("topk($top, sum by (zone, key_id) (increase(m[$__range])))", {"m"}),
        ("time() - max by (instance, zone) (t_seconds)", {"t_seconds"}),
        ("sum(rate(h_bucket[5m])) by (le) > 1e3", {"h_bucket"}),
        ("foo unless ignoring(a) group_left(b) bar", {"foo", "bar"}),
        ('histogram_quantile(0.9, sum by (le) (rate(h_bucket{a="b(c)"}[5m:1m])))', {"h_bucket"}),
        ("vector(1) or absent(up_metric)", {"up_metric"}),
        ("rate(x[5m]) # comment naming not_a_metric", {"x"}),
    ]

    def test_metric_names(self):
        for expr, want in self.CASES:
            self.assertEqual(metric_names(expr), want, "metric names of %r" % expr)

    def test_unknown_names(self):
        fams = {"a_total": "counter", "h": "histogram", "g": "gauge"}
        self.assertEqual(unknown_names({"a_total", "h_bucket", "h_sum", "g_count", "zz"}, fams),
                         {"g_count", "zz"}, "_bucket/_sum/_count only for histograms")


class AlertRulesFileTest(unittest.TestCase):

    def setUp(self):
        self.rules = read_rules()

    def test_promtool_check_rules(self):
        if PROMTOOL is None:
            self.skipTest(NO_PROMTOOL)
        rc, out = promtool("check", "rules", ALERTS)
        self.assertEqual(rc, 0, "promtool check rules %s passes:\n%s" % (ALERTS, out))
        m = re.search(r"SUCCESS: (\d+) rules found", out)
        self.assertIsNotNone(m, "promtool reports the rules it found:\n%s" % out)
        self.assertEqual(int(m.group(1)), len(self.rules),
                         "this test's reader of the YAML finds every rule promtool finds")

    def test_every_alert_is_complete(self):
        self.assertGreaterEqual(len(self.rules), 6, "the rules file has its alerts")
        names = [r["alert"] for r in self.rules]
        self.assertEqual(len(names), len(set(names)), "alert names are unique: %s" % names)
        for r in self.rules:
            what = "alert %s" % r["alert"]
            self.assertEqual(r["kind"], "alert", "%s is an alerting rule" % what)
            self.assertTrue(r.get("expr"), "%s has an expression" % what)
            self.assertRegex(r.get("for", ""), r"^\d+[smhd]$", "%s has for:" % what)
            self.assertIn(r["labels"].get("severity"), ("critical", "warning", "info"),
                          "%s has a severity label" % what)
            for a in ("summary", "description"):
                self.assertGreater(len(r["annotations"].get(a, "")), 10,
                                   "%s has a %s annotation" % (what, a))

    def test_the_issue_alerts_are_there(self):
        exprs = " ".join(r["expr"] for r in self.rules)
        for needle, what in (("api_key_zone_load_error", "key file load errors"),
                             ("api_key_zone_bytes", "zone nearly full"),
                             ('code="invalid_api_key"', "invalid_api_key spike"),
                             ('state="degraded"', "limit sync degraded"),
                             ('state="stale"', "key channel stale"),
                             ("api_key_channel_entries_refused_total", "channel entries refused")):
            self.assertIn(needle, exprs, "an alert covers %s" % what)

    def test_alerts_fire_on_synthetic_series(self):
        """promtool test rules: each alert fires in its scenario (after its
        for:) and not in a near miss. The rules are the file's expressions
        and for: with the annotations left out (promtool compares them
        verbatim)."""
        if PROMTOOL is None:
            self.skipTest(NO_PROMTOOL)
        tmp = tempfile.mkdtemp(prefix="apikey-promtool-")
        self.addCleanup(shutil.rmtree, tmp, True)
        bare = {"groups": [{"name": "bare", "rules": [
            {"alert": r["alert"], "expr": r["expr"], "for": r["for"], "labels": r["labels"]}
            for r in self.rules]}]}
        write_json(os.path.join(tmp, "rules.yml"), bare)
        sev = {r["alert"]: r["labels"]["severity"] for r in self.rules}
        node = {"job": "nginx", "instance": "n1:80"}

        def series(name, values, **labels):
            lab = dict(node)
            lab.update(labels)
            text = ",".join('%s="%s"' % kv for kv in sorted(lab.items()))
            return {"series": "%s{%s}" % (name, text), "values": values}

        def alert(name, eval_time, *expected):
            return {"eval_time": eval_time, "alertname": name,
                    "exp_alerts": [{"exp_labels": dict(e, alertname=name, severity=sev[name])}
                                   for e in expected]}

        tests = [
            {   # a load error for 3 minutes: fires after for: 1m; the healthy zone never
                "interval": "1m",
                "input_series": [series("api_key_zone_load_error", "0 0 1 1 1 1", zone="keys"),
                                 series("api_key_zone_load_error", "0x5", zone="other")],
                "alert_rule_test": [
                    alert("ApiKeyFileLoadError", "2m"),
                    alert("ApiKeyFileLoadError", "4m", dict(node, zone="keys")),
                ]},
            {   # 95% used for 20 minutes fires (for: 15m); 85% never
                "interval": "1m",
                "input_series": [
                    series("api_key_zone_bytes", "950x20", zone="full", state="used"),
                    series("api_key_zone_bytes", "50x20", zone="full", state="free"),
                    series("api_key_zone_bytes", "850x20", zone="fine", state="used"),
                    series("api_key_zone_bytes", "150x20", zone="fine", state="free")],
                "alert_rule_test": [
                    alert("ApiKeyZoneNearlyFull", "10m"),
                    alert("ApiKeyZoneNearlyFull", "20m", dict(node, zone="full")),
                ]},
            {   # invalid keys: 0.2/s for 2h, then 6/s on each of two nodes (zone
                # "attacked"); zone "fresh" has no series before, then 3/s (a new
                # node or zone: no baseline); zone "quiet" goes from 0 to 0.5/s
                # (below the 1/s floor); zone "busy" has 5/s all along
                "interval": "1m",
                "input_series": [
                    series("api_key_zone_requests_total", "0+12x120 1452+360x60",
                           zone="attacked", code="invalid_api_key"),
                    series("api_key_zone_requests_total", "0+12x120 1452+360x60",
                           zone="attacked", code="invalid_api_key", instance="n2:80"),
                    series("api_key_zone_requests_total", "_x120 7+180x60",
                           zone="fresh", code="invalid_api_key"),
                    series("api_key_zone_requests_total", "0x120 0+30x60",
                           zone="quiet", code="invalid_api_key"),
                    series("api_key_zone_requests_total", "0+300x180",
                           zone="busy", code="invalid_api_key"),
                    series("api_key_zone_requests_total", "0+6000x180",
                           zone="attacked", code="accepted")],
                "alert_rule_test": [
                    alert("ApiKeyInvalidKeySpike", "119m"),
                    alert("ApiKeyInvalidKeySpike", "124m"),
                    alert("ApiKeyInvalidKeySpike", "130m",
                          {"job": "nginx", "zone": "attacked", "code": "invalid_api_key"},
                          {"job": "nginx", "zone": "fresh", "code": "invalid_api_key"}),
                    # a sustained attack keeps firing for the next hour
                    alert("ApiKeyInvalidKeySpike", "170m",
                          {"job": "nginx", "zone": "attacked", "code": "invalid_api_key"},
                          {"job": "nginx", "zone": "fresh", "code": "invalid_api_key"}),
                ]},
            {   # a limit zone degraded for 3 minutes, a key zone stale for 30 s
                "interval": "15s",
                "input_series": [
                    series("api_key_sync_state", "1x4 0x12", zone="lz", state="ok"),
                    series("api_key_sync_state", "0x4 1x12", zone="lz", state="degraded"),
                    series("api_key_sync_state", "1x4 0 0 1x10", zone="keys", state="ok"),
                    series("api_key_sync_state", "0x4 1 1 0x10", zone="keys", state="stale"),
                    series("api_key_sync_state", "1x8 0x8", zone="chan", state="ok"),
                    series("api_key_sync_state", "0x8 1x8", zone="chan", state="stale")],
                "alert_rule_test": [
                    alert("ApiKeyLimitSyncDegraded", "1m"),
                    alert("ApiKeyLimitSyncDegraded", "3m", dict(node, zone="lz", state="degraded")),
                    alert("ApiKeyChannelStale", "1m30s"),
                    alert("ApiKeyChannelStale", "3m45s", dict(node, zone="chan", state="stale")),
                ]},
            {   # two refused channel entries at minute 5; none before
                "interval": "1m",
                "input_series": [
                    series("api_key_channel_entries_refused_total", "0x5 2x10", zone="keys")],
                "alert_rule_test": [
                    alert("ApiKeyChannelEntriesRefused", "4m"),
                    alert("ApiKeyChannelEntriesRefused", "8m", dict(node, zone="keys")),
                ]},
            {   # zone "bad": 10 batches/s, 1 failure/s (9%); zone "good": 1 failure in 10 min
                "interval": "1m",
                "input_series": [
                    series("api_key_sync_batches_total", "0+600x20", zone="bad"),
                    series("api_key_sync_failures_total", "0+60x20", zone="bad"),
                    series("api_key_sync_batches_total", "0+600x20", zone="good"),
                    series("api_key_sync_failures_total", "0x10 1x10", zone="good")],
                "alert_rule_test": [
                    alert("ApiKeyRedisBatchFailures", "3m"),
                    alert("ApiKeyRedisBatchFailures", "15m", {"job": "nginx", "zone": "bad"}),
                ]},
        ]
        tested = {a["alertname"] for t in tests for a in t["alert_rule_test"]}
        self.assertEqual(tested, set(sev), "every alert of the file has a scenario")
        path = write_json(os.path.join(tmp, "tests.yml"),
                          {"rule_files": ["rules.yml"], "evaluation_interval": "15s",
                           "tests": tests})
        rc, out = promtool("test", "rules", path)
        self.assertEqual(rc, 0, "promtool test rules: every alert fires in its scenario "
                                "and only there:\n%s" % out)


class DashboardFileTest(unittest.TestCase):

    def setUp(self):
        self.doc = load_dashboard()

    def test_dashboard_shape(self):
        doc = self.doc
        self.assertTrue(doc.get("title"), "the dashboard has a title")
        self.assertTrue(doc.get("uid"), "a fixed uid: re-importing replaces the dashboard")
        self.assertIsNone(doc.get("id"), "no database id: importable anywhere")
        self.assertGreaterEqual(doc.get("schemaVersion", 0), 36, "a Grafana 9 schema")
        variables = {v["name"]: v for v in doc["templating"]["list"]}
        self.assertEqual(variables.get("datasource", {}).get("type"), "datasource",
                         "a datasource variable")
        self.assertEqual(variables["datasource"].get("query"), "prometheus",
                         "the datasource variable lists Prometheus datasources")
        self.assertIn("zone", variables, "a zone variable")
        ids = [p["id"] for p in dashboard_panels(doc)]
        self.assertEqual(len(ids), len(set(ids)), "panel ids are unique: %s" % ids)
        self.assertTrue(all(isinstance(i, int) for i in ids), "panel ids are numbers")

    def test_every_panel_has_a_datasource_and_a_target(self):
        panels = [p for p in dashboard_panels(self.doc) if p.get("type") != "row"]
        self.assertGreaterEqual(len(panels), 8)
        for p in panels:
            what = "panel %s %r" % (p["id"], p.get("title"))
            ds = p.get("datasource")
            self.assertIsInstance(ds, dict, "%s has a datasource" % what)
            self.assertEqual(ds.get("uid"), "${datasource}",
                             "%s uses the datasource variable" % what)
            self.assertTrue(p.get("targets"), "%s has targets" % what)
            for t in p["targets"]:
                self.assertTrue(t.get("expr"), "%s: target %s has an expression"
                                % (what, t.get("refId")))
                self.assertEqual((t.get("datasource") or ds).get("uid"), "${datasource}",
                                 "%s: target %s uses the datasource variable"
                                 % (what, t.get("refId")))
            refs = [t.get("refId") for t in p["targets"]]
            self.assertEqual(len(refs), len(set(refs)), "%s: refIds unique" % what)

    def test_issue_panels_are_there(self):
        exprs = " ".join(e for _, e in dashboard_queries(self.doc))
        for needle, what in (
                ("api_key_zone_requests_total", "requests by outcome"),
                ('code!="accepted"', "refusals by code"),
                ('code="rate_limit_exceeded"', "rate-limited keys"),
                ("topk(", "top keys"),
                ("api_key_zone_bytes", "zone fill"),
                ("api_key_zone_load_error", "key file load errors"),
                ("api_key_sync_state", "cluster sync state"),
                ("api_key_channel_version", "channel staleness"),
                ("api_key_sync_failures_total", "Redis batch failures")):
            self.assertIn(needle, exprs, "a panel shows %s" % what)

    def test_promql_parses(self):
        """Every query (Grafana variables replaced) as a recording rule
        through promtool's PromQL parser."""
        if PROMTOOL is None:
            self.skipTest(NO_PROMTOOL)
        rules = []
        for n, (where, expr) in enumerate(dashboard_queries(self.doc)):
            sel = label_values_selector(expr)
            rules.append({"record": "dashboard:query_%d" % n,
                          "expr": substitute_grafana_vars(sel if sel is not None else expr),
                          "labels": {"where": where}})
        tmp = tempfile.mkdtemp(prefix="apikey-promtool-")
        self.addCleanup(shutil.rmtree, tmp, True)
        path = write_json(os.path.join(tmp, "dashboard.yml"),
                          {"groups": [{"name": "dashboard", "rules": rules}]})
        rc, out = promtool("check", "rules", path)
        self.assertEqual(rc, 0, "the dashboard's PromQL parses:\n%s" % out)


# ==========================================================================
# against a real nginx: the names exist, the queries return data

METRICS_HTTP = """
    api_key_redis r 127.0.0.1:{redis};
    api_key_zone keys:1m file={prefix}/keys.yaml;
    api_key_zone chan:1m file={prefix}/chan.yaml check=1s sync=r channel=ops;
    api_key_limit_zone local:1m;
    api_key_limit_zone synced:1m sync=r interval=100ms;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        access_log off;
        api_key keys;

        location / {
            empty_gif;
        }
        location /scoped/ {
            api_key_scope x:write;
            empty_gif;
        }
        location /local/ {
            api_key_limit local read 2r/m;
            empty_gif;
        }
        location /synced/ {
            api_key_limit synced read 2r/m;
            empty_gif;
        }
        location /chan/ {
            api_key chan;
            empty_gif;
        }
        location = /metrics {
            api_key off;
            # per-key series (api_key_requests_total) for the busiest 100 keys
            # by default: every key of this test
            api_key_status prometheus;
            allow 127.0.0.1;
            deny all;
        }
    }
"""


class ExportedMetricsTest(unittest.TestCase):
    """One nginx with every kind of zone, traffic of every outcome; the
    names in conf/ are checked against its /metrics, and a Prometheus
    server scraping it runs the dashboard's queries and the alert rules."""

    redis = None
    nginx = None
    metrics = ""
    families = {}
    codes = {}
    setup_error = None

    @classmethod
    def setUpClass(cls):
        try:
            from test_cluster import Redis
            cls.redis = Redis()
            try:
                cls.redis.start()
            except unittest.SkipTest as e:
                cls.redis = None
                cls.setup_error = ("skip", "the exported names of cluster mode need a real "
                                   "redis-server: %s" % e)
                return
            n = cls.nginx = Nginx(METRICS_HTTP, worker_processes=2, name="opsconf",
                                  vars={"redis": cls.redis.port})
            kf = KeyFile()
            cls.k1 = kf.add("key_busy", scopes=["x:read"])
            cls.k2 = kf.add("key_second", owner="user_2")
            cls.revoked = kf.add("key_revoked", revoked_at=PAST)
            kf.write(n.path("keys.yaml"))
            ck = KeyFile()
            cls.kc = ck.add("key_chan")
            ck.write(n.path("chan.yaml"))
            n.start()
            cls.codes = cls.traffic()
            cls.metrics = wait_until(cls.scrape_with_sync, 10.0,
                                     what="a /metrics with a synced batch")
            cls.families = exported_families(cls.metrics)
        except Exception as e:  # reported by every test
            cls.setup_error = ("fail", "%s: %s" % (type(e).__name__, e))

    @classmethod
    def tearDownClass(cls):
        try:
            cls.stop_prometheus()
            if cls.nginx is not None:
                cls.nginx.cleanup()
        finally:
            if cls.redis is not None:
                cls.redis.cleanup()

    @classmethod
    def traffic(cls):
        port = cls.nginx.port
        seen = {}

        def send(path, key=None, header="Authorization"):
            hdrs = [] if key is None else [(header, ("Bearer " + key)
                                            if header == "Authorization" else key)]
            r = request(port, "GET", path, headers=hdrs)
            code = "accepted" if r.status == 200 else r.json()["error"]["code"]
            seen[code] = seen.get(code, 0) + 1
            return code

        for _ in range(3):
            send("/", cls.k1)
        send("/", cls.k2)
        send("/chan/", cls.kc)
        send("/")                                   # missing_api_key
        send("/", new_key())                        # invalid_api_key
        send("/", cls.revoked)                      # revoked_api_key
        send("/scoped/", cls.k1)                    # insufficient_scope
        for _ in range(3):
            send("/local/", cls.k1)                 # the third: rate_limit_exceeded
        for _ in range(6):
            send("/synced/", cls.k2)
        return seen

    @classmethod
    def scrape(cls):
        r = request(cls.nginx.port, "GET", "/metrics")
        if r.status != 200:
            raise AssertionError("GET /metrics: %r" % r)
        return r.text

    @classmethod
    def scrape_with_sync(cls):
        text = cls.scrape()
        m = re.search(r'^api_key_sync_batches_total\{zone="synced"\} (\d+)', text, re.M)
        return text if m and int(m.group(1)) > 0 else None

    def setUp(self):
        if self.setup_error:
            kind, why = self.setup_error
            if kind == "skip":
                self.skipTest(why)
            self.fail("setup failed: " + why)

    # -- the nginx itself

    def test_setup_exported_every_kind_of_series(self):
        for code in ("accepted", "missing_api_key", "invalid_api_key", "revoked_api_key",
                     "insufficient_scope", "rate_limit_exceeded"):
            self.assertIn(code, self.codes, "the traffic had a %s (got %s)" % (code, self.codes))
        for fam in ("api_key_zone_requests_total", "api_key_requests_total",
                    "api_key_zone_bytes", "api_key_sync_state", "api_key_sync_batches_total",
                    "api_key_channel_version"):
            self.assertIn(fam, self.families,
                          "the test nginx exports %s (zone totals, per-key series, limit "
                          "zone sync, key channel)" % fam)
        self.assertRegex(self.metrics, r'api_key_requests_total\{zone="keys",key_id="key_busy",'
                                       r'code="rate_limit_exceeded"\} 1',
                         "a per-key rate_limit_exceeded series")
        self.assertRegex(self.metrics, r'api_key_sync_state\{zone="chan",state="stale"\} 0',
                         "the key zone following a channel has its sync state")

    def assert_names_exported(self, queries, what):
        unknown = {}
        for where, expr in queries:
            names = metric_names(expr)
            self.assertTrue(names, "%s: %s uses at least one metric: %r" % (what, where, expr))
            for n in unknown_names(names, self.families):
                unknown.setdefault(n, []).append(where)
        if unknown:
            self.fail("%s uses metric names the module does not export:\n%s\n"
                      "exported families:\n  %s" % (
                          what, "\n".join("  %s (in %s)" % (n, "; ".join(w))
                                          for n, w in sorted(unknown.items())),
                          "\n  ".join(sorted(self.families))))

    def test_dashboard_names_are_exported(self):
        self.assert_names_exported(dashboard_queries(load_dashboard()),
                                   "conf/grafana-dashboard.json")

    def test_alert_rule_names_are_exported(self):
        self.assert_names_exported([("alert " + r["alert"], r["expr"]) for r in read_rules()],
                                   "conf/prometheus-alerts.yml")

    # -- a Prometheus server scraping it

    prom = None  # (process, port, directory) of the Prometheus server, started once

    def start_prometheus(self):
        """A Prometheus server scraping the test nginx every second with the
        alert rules loaded (shared by the tests of the class), once it has
        4 scrapes."""
        if PROMETHEUS is None:
            self.skipTest(NO_PROMETHEUS)
        cls = type(self)
        if cls.prom is None:
            tmp = tempfile.mkdtemp(prefix="apikey-prometheus-", dir="/tmp")
            shutil.copy(ALERTS, os.path.join(tmp, "alerts.yml"))
            config = write_json(os.path.join(tmp, "prometheus.yml"), {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": ["alerts.yml"],
                "scrape_configs": [{"job_name": "nginx", "metrics_path": "/metrics",
                                    "static_configs": [
                                        {"targets": ["127.0.0.1:%d" % self.nginx.port]}]}]})
            port = free_port()
            with open(os.path.join(tmp, "prometheus.log"), "wb") as log:
                proc = subprocess.Popen(
                    [PROMETHEUS, "--config.file=" + config,
                     "--storage.tsdb.path=" + os.path.join(tmp, "data"),
                     "--web.listen-address=127.0.0.1:%d" % port, "--log.level=warn"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            cls.prom = (proc, port, tmp)
        proc = cls.prom[0]

        def enough_samples():
            if proc.poll() is not None:
                raise AssertionError("prometheus exited (%s):\n%s" % (proc.returncode,
                                                                      self.prom_output()))
            try:
                res = self.query("count_over_time(api_key_zone_keys[1m])")
            except (OSError, AssertionError):
                return False
            return res and min(float(s["value"][1]) for s in res) >= 4
        wait_until(enough_samples, 30.0, interval=0.25,
                   what="prometheus with 4 scrapes of the test nginx")

    @classmethod
    def stop_prometheus(cls):
        if cls.prom is None:
            return
        proc, _, tmp = cls.prom
        cls.prom = None
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)

    def prom_output(self):
        with open(os.path.join(self.prom[2], "prometheus.log"), errors="replace") as f:
            return f.read()[-3000:]

    def api(self, path, **params):
        url = "http://127.0.0.1:%d%s" % (self.prom[1], path)
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                doc = json.loads(resp.read().decode())
        except urllib.error.HTTPError as e:
            doc = json.loads(e.read().decode() or "{}")
        return doc

    def query(self, expr):
        doc = self.api("/api/v1/query", query=expr)
        if doc.get("status") != "success":
            raise AssertionError("%s: %s" % (doc.get("errorType"), doc.get("error")))
        return doc["data"]["result"]

    def test_prometheus_runs_every_dashboard_query_with_data(self):
        self.start_prometheus()
        problems = []
        for where, expr in dashboard_queries(load_dashboard()):
            sel = label_values_selector(expr)
            q = substitute_grafana_vars(sel if sel is not None else expr)
            try:
                result = self.query(q)
            except AssertionError as e:
                problems.append("%s: error %s\n    %s" % (where, e, q))
                continue
            if not result:
                problems.append("%s: no data\n    %s" % (where, q))
        if problems:
            self.fail("dashboard queries against a Prometheus scraping the module:\n%s\n"
                      "--- /metrics:\n%s" % ("\n".join(problems), self.metrics))

    def test_prometheus_evaluates_every_alert_rule(self):
        self.start_prometheus()

        def evaluated():
            groups = self.api("/api/v1/rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            if rules and all(r.get("health") != "unknown" and
                             not r.get("lastEvaluation", "").startswith("0001") for r in rules):
                return rules
            return None
        rules = wait_until(evaluated, 15.0, interval=0.25, what="every rule evaluated once")
        self.assertEqual({r["name"] for r in rules}, {r["alert"] for r in read_rules()},
                         "prometheus loaded every alert of the file")
        bad = ["%s: %s %s" % (r["name"], r.get("health"), r.get("lastError"))
               for r in rules if r.get("health") != "ok"]
        self.assertEqual(bad, [], "every alert rule evaluates without error against the "
                                  "module's series")
        firing = [r["name"] for r in rules if r.get("state") == "firing"]
        self.assertEqual(firing, [], "nothing fires on a healthy node")


# ==========================================================================
# the JSON access log recipe

LOG_HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;
    api_key_limit_zone limits:1m;
    include {prefix}/log-json.conf;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        api_key keys;
        api_key_source bearer header=x-api-key;

        location / {
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /scoped/ {
            api_key_scope admin:write;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /limited/ {
            api_key_limit limits read 1r/m;
            proxy_pass http://127.0.0.1:{upstream};
        }
    }
"""

LOG_FIELDS = {"time", "remote_addr", "method", "uri", "status", "request_time",
              "upstream_response_time", "request_id", "key_id", "owner", "organization_id",
              "plan", "environment", "scopes", "error", "limit_remaining", "sync_stale"}


def log_format_text(text):
    """The `log_format api_key_json ...;` statement of a text, blanks folded."""
    m = re.search(r"log_format\s+api_key_json\b.*?'\s*;", text, re.S)
    if not m:
        return None
    return re.sub(r"\s+", " ", m.group(0))


class JsonLogTest(unittest.TestCase):

    def setUp(self):
        with open(LOG_JSON) as f:
            text = f.read()
        m = re.search(r"^access_log\s+(\S+)\s+api_key_json;$", text, re.M)
        self.assertIsNotNone(m, "conf/log-json.conf has an access_log line with api_key_json")
        self.nginx = n = Nginx(LOG_HTTP, worker_processes=2, name="jsonlog")
        self.addCleanup(n.cleanup)
        self.log_path = n.path("api-key.json.log")
        n.write_file("log-json.conf", text.replace(m.group(1), self.log_path))
        kf = KeyFile()
        self.keys = {
            "ok": kf.add("key_ok", owner="user_7", organization_id="org_3", plan="pro",
                         scopes=["a:read", "b:write"]),
            "revoked": kf.add("key_gone", revoked_at=PAST),
            "limited": kf.add("key_limited", owner="user_9"),
        }
        kf.write(n.path("keys.yaml"))
        n.start()

    def lines(self):
        try:
            with open(self.log_path, encoding="utf-8") as f:
                return [l for l in f.read().split("\n") if l]
        except FileNotFoundError:
            return []

    def entry(self, resp):
        rid = resp.header("X-Request-Id")
        self.assertTrue(rid, "the response has an X-Request-Id: %r" % resp)

        def find():
            for line in self.lines():
                try:
                    doc = json.loads(line)
                except ValueError:
                    self.fail("an access log line is not JSON: %r" % line)
                if doc.get("request_id") == rid:
                    return doc
            return None
        return wait_until(find, 5.0, what="the JSON log line of %s" % rid)

    def test_each_line_is_json_with_the_key_fields_and_never_the_key(self):
        port = self.nginx.port
        invalid = new_key()
        sent = []

        def get(path, key=None, header="Authorization"):
            hdrs = []
            if key is not None:
                sent.append(key)
                hdrs = [(header, "Bearer " + key if header == "Authorization" else key)]
            return request(port, "GET", path, headers=hdrs)

        ok = get("/v1/items?page=2", self.keys["ok"])
        self.assertEqual(ok.status, 200)
        e = self.entry(ok)
        self.assertEqual(set(e), LOG_FIELDS, "the fields of a log line")
        self.assertEqual(e["key_id"], "key_ok", "accepted: the key id")
        self.assertEqual(e["owner"], "user_7")
        self.assertEqual(e["organization_id"], "org_3")
        self.assertEqual(e["plan"], "pro")
        self.assertEqual(e["environment"], "live")
        self.assertEqual(e["scopes"], "a:read b:write")
        self.assertEqual(e["error"], "", "accepted: no error code")
        self.assertEqual(e["status"], 200, "status is a JSON number")
        self.assertIsInstance(e["request_time"], (int, float), "request_time is a JSON number")
        self.assertEqual(e["method"], "GET")
        self.assertEqual(e["uri"], "/v1/items", "$uri: the path without the query string")
        self.assertEqual(e["remote_addr"], "127.0.0.1")
        self.assertRegex(e["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$",
                         "$time_iso8601")
        self.assertRegex(e["upstream_response_time"], r"^\d+\.\d{3}$",
                         "proxied: the upstream's response time")
        self.assertEqual(e["limit_remaining"], "", "no limit applied: empty")
        self.assertEqual(e["sync_stale"], "", "no channel: empty")

        # escape=json: a quote and a backslash in the (decoded) path
        odd = get("/v1/%22q%5Cx", self.keys["ok"])
        self.assertEqual(odd.status, 200)
        self.assertEqual(self.entry(odd)["uri"], '/v1/"q\\x', "escape=json keeps the line JSON")

        refusals = [
            (get("/v1/items"), 401, "missing_api_key", ""),
            (get("/v1/items", invalid, "x-api-key"), 401, "invalid_api_key", ""),
            (get("/v1/items", self.keys["revoked"]), 401, "revoked_api_key", "key_gone"),
            (get("/scoped/x", self.keys["ok"]), 403, "insufficient_scope", "key_ok"),
        ]
        first = get("/limited/x", self.keys["limited"])
        self.assertEqual(first.status, 200)
        e = self.entry(first)
        self.assertEqual((e["key_id"], e["error"], e["limit_remaining"]), ("key_limited", "", "0"),
                         "the last request of a 1r/m budget: remaining 0")
        refusals.append((get("/limited/x", self.keys["limited"]), 429, "rate_limit_exceeded",
                         "key_limited"))
        for resp, status, code, key_id in refusals:
            self.assertEqual(resp.status, status, "%s: %r" % (code, resp))
            e = self.entry(resp)
            self.assertEqual(set(e), LOG_FIELDS, "the fields of a %s line" % code)
            self.assertEqual(e["error"], code, "refused: the error code")
            self.assertEqual(e["status"], status, "refused: the status")
            self.assertEqual(e["key_id"], key_id, "%s: the key id when the key was found" % code)
            self.assertEqual(e["request_id"], resp.header("X-Request-Id"))
            self.assertEqual(e["upstream_response_time"], "",
                             "%s: no upstream was reached (escape=json logs \"\")" % code)

        lines = self.lines()
        self.assertEqual(len(lines), 8, "one line per request:\n%s" % "\n".join(lines))
        for line in lines:
            json.loads(line)  # every line is JSON
        text = "\n".join(lines)
        for key in sent + [invalid]:
            self.assertNotIn(key, text, "a key never appears in the JSON log")
            self.assertNotIn(key[len("jfi_sk_live_"):], text, "nor its secret part")


class ReadmeRecipeTest(unittest.TestCase):

    def test_readme_log_format_is_the_file(self):
        with open(LOG_JSON) as f:
            conf = log_format_text(f.read())
        with open(README) as f:
            readme = log_format_text(f.read())
        self.assertIsNotNone(conf, "conf/log-json.conf has log_format api_key_json")
        self.assertIsNotNone(readme, "README shows the log_format api_key_json")
        self.assertEqual(readme, conf, "README's log_format is conf/log-json.conf's")


if __name__ == "__main__":
    unittest.main()
