"""SPEC "Cluster mode", keys across nodes: three nginx nodes follow one
channel of one redis-server.

    api_key_redis r 127.0.0.1:PORT;
    api_key_zone keys:4m file=NODE/keys.yaml check=1s sync=r channel=prod
                 [verify=pub.pem] [stale=1s];

The key file on the "publisher" (a directory of the test) is the source of
truth: `apikeyctl publish` puts its version on the channel, `apikeyctl
revoke --publish` a revocation. Each node starts from its own copy of the
first version and must follow: a revocation is answered revoked_api_key by
every node within interval (100 ms) + 100 ms; a new key is accepted
everywhere after publish; a node cut off from Redis (a proxy the test
closes) catches up once it can read again and says it is stale meanwhile;
with verify=, forged, tampered, cross-channel and replayed entries change
nothing; a node restarted with Redis down serves the newest version it had
applied and keeps the revocations.
"""

import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import unittest

from harness import ConfigCheckCase, KeyFile, Nginx, request, wait_until
from test_apikeyctl import APIKEYCTL
from test_apikeyctl import ctl as run_ctl
from test_cluster import Redis

INTERVAL_S = 0.1        # the sync thread's tick with key channels only
LATENCY_BOUND = INTERVAL_S + 0.1
TRIALS = 8

NODE_HTTP = """
    api_key_redis r 127.0.0.1:{redis};
    api_key_zone keys:4m file={prefix}/keys.yaml check=1s sync=r channel={channel} {extra};

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        access_log off;
        location / {
            api_key keys;
            add_header X-Stale $api_key_sync_stale always;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location = /status {
            api_key_status;
            allow 127.0.0.1;
            deny all;
        }
    }
"""


class RedisProxy:
    """A TCP relay in front of Redis that the test can cut (close every
    connection and refuse new ones) and restore, to cut one node off."""

    def __init__(self, target_port):
        self.target = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.open = True
        self.conns = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        self.open = False
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
            self.conns = []

    def restore(self):
        self.open = True

    def close(self):
        self.cut()
        self.listener.close()


def ctl(*args):
    """(exit status, stdout, stderr) of apikeyctl."""
    p = run_ctl(*args)
    return p.returncode, p.stdout, p.stderr


def code_of(resp):
    if resp.status == 200:
        return "ok"
    try:
        return resp.json()["error"]["code"]
    except Exception:  # noqa: BLE001 - the status says enough
        return str(resp.status)


class ChannelCase(unittest.TestCase):
    """A publisher directory, a Redis and three nodes (1, 1 and 2 workers)."""

    WORKERS = (1, 1, 2)
    EXTRA = ""
    CHANNEL = "prod"
    KEYS = 12

    def setUp(self):
        if not os.path.exists(APIKEYCTL):
            self.skipTest("apikeyctl not built: %s" % APIKEYCTL)
        self.redis = Redis().start()
        self.addCleanup(self.redis.cleanup)
        self.dir = tempfile.mkdtemp(prefix="apikey-publisher-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.keyfile = os.path.join(self.dir, "keys.yaml")
        self.kf = KeyFile()
        self.keys = {}
        for i in range(self.KEYS):
            self.keys["k%d" % i] = self.kf.add("k%d" % i, owner="owner_%d" % i)
        self.kf.write(self.keyfile)
        self.redis_port = {}
        self.nodes = []
        for i, workers in enumerate(self.WORKERS):
            self.nodes.append(self.make_node(i, workers))
        for n in self.nodes:
            n.start()

    def make_node(self, i, workers, redis_port=None):
        node = Nginx(NODE_HTTP, worker_processes=workers, name="chan%d" % i,
                     vars={"redis": redis_port or self.redis.port, "channel": self.CHANNEL,
                           "extra": self.EXTRA})
        shutil.copy(self.keyfile, node.path("keys.yaml"))
        self.addCleanup(node.cleanup)
        return node

    # -- helpers

    def publish(self, *extra):
        return ctl("publish", "--file", self.keyfile, "--redis",
                   "127.0.0.1:%d" % self.redis.port, "--channel", self.CHANNEL, *extra)

    def revoke(self, key_id, *extra):
        return ctl("revoke", "--file", self.keyfile, "--publish", "--redis",
                   "127.0.0.1:%d" % self.redis.port, "--channel", self.CHANNEL, *extra, key_id)

    def code(self, node, key):
        return code_of(request(node.port, "GET", "/", headers=[("Authorization", "Bearer " + key)]))

    def wait_code(self, node, key, code, timeout=5.0):
        return wait_until(lambda: self.code(node, key) == code, timeout,
                          what="%s answering %s" % (node.prefix, code))

    def channel_status(self, node):
        doc = request(node.port, "GET", "/status").json()
        for z in doc["zones"]:
            if z["zone"] == "keys":
                return z.get("sync") or {}
        raise AssertionError("no zone \"keys\" in %s" % doc)

    def first_refusal(self, node, key, t0, deadline, out, i):
        """Polls one node until it refuses `key`; the seconds since t0."""
        while time.monotonic() < deadline:
            try:
                if self.code(node, key) == "revoked_api_key":
                    out[i] = time.monotonic() - t0
                    return
            except OSError:
                pass
        out[i] = None


class RevocationLatencyTest(ChannelCase):

    def test_a_published_revocation_reaches_every_node_within_interval_plus_100ms(self):
        latencies = []
        for trial in range(TRIALS):
            key_id = "k%d" % trial
            key = self.keys[key_id]
            for n in self.nodes:
                self.assertEqual(self.code(n, key), "ok")
            out = [None] * len(self.nodes)
            t0 = time.monotonic()
            threads = [threading.Thread(target=self.first_refusal,
                                        args=(n, key, t0, t0 + 5.0, out, i))
                       for i, n in enumerate(self.nodes)]
            for t in threads:
                t.start()
            # Timed from before the CLI starts: its own start-up counts against us.
            rc, _, err = self.revoke(key_id)
            for t in threads:
                t.join()
            self.assertEqual(rc, 0, err)
            self.assertNotIn(None, out, "some node never refused %s: %s" % (key_id, out))
            latencies.extend(out)
        latencies.sort()
        p50 = statistics.median(latencies)
        print("\nrevocation latency over %d trials x %d nodes: p50 %.0f ms, max %.0f ms"
              % (TRIALS, len(self.nodes), p50 * 1000, latencies[-1] * 1000))
        self.assertLessEqual(latencies[-1], LATENCY_BOUND + 0.05,
                             "max %.3f s over the bound (interval + 100 ms, plus the CLI's "
                             "start-up)" % latencies[-1])
        # Every worker of the 2-worker node refuses too (one shared overlay).
        for _ in range(8):
            self.assertEqual(self.code(self.nodes[2], self.keys["k0"]), "revoked_api_key")
        # The other keys were not touched.
        self.assertEqual(self.code(self.nodes[0], self.keys["k%d" % TRIALS]), "ok")
        st = self.channel_status(self.nodes[0])
        self.assertGreaterEqual(st["revoked"], TRIALS, st)
        self.assertEqual(st["state"], "ok", st)

    def test_a_reload_keeps_the_revocations(self):
        rc, _, err = self.revoke("k1")
        self.assertEqual(rc, 0, err)
        for n in self.nodes:
            self.wait_code(n, self.keys["k1"], "revoked_api_key")
        # The nodes' own key files still have k1 active: only the overlay refuses it.
        self.nodes[0].reload()
        for _ in range(4):
            self.assertEqual(self.code(self.nodes[0], self.keys["k1"]), "revoked_api_key")
        self.assertEqual(self.code(self.nodes[0], self.keys["k2"]), "ok")


class VersionTest(ChannelCase):

    def test_a_new_key_is_accepted_everywhere_after_publish(self):
        new = self.kf.add("fresh", owner="owner_fresh")
        self.kf.write(self.keyfile)
        for n in self.nodes:
            self.assertEqual(self.code(n, new), "invalid_api_key")
        t0 = time.monotonic()
        rc, _, err = self.publish()
        self.assertEqual(rc, 0, err)
        self.assertIn("published version", err)
        for n in self.nodes:
            self.wait_code(n, new, "ok", timeout=3.0)
        took = time.monotonic() - t0
        print("\nnew key accepted by every node %.0f ms after publish started" % (took * 1000))
        self.assertLess(took, 1.0)
        for n in self.nodes:
            st = self.channel_status(n)
            self.assertGreater(st["version"], 0, st)
            self.assertTrue(os.path.exists(n.path("keys.yaml.prod.published")))
        # The version stays in force: check= does not go back to the node's older file.
        time.sleep(1.5)
        for n in self.nodes:
            self.assertEqual(self.code(n, new), "ok")

    def test_a_local_edit_after_a_published_version_wins(self):
        new = self.kf.add("fresh", owner="owner_fresh")
        self.kf.write(self.keyfile)
        self.assertEqual(self.publish()[0], 0)
        node = self.nodes[0]
        self.wait_code(node, new, "ok")
        # An operator edits the node's own file afterwards (check=1s): it is the newest change.
        local = KeyFile()
        only = local.add("local_only", owner="o")
        local.write(node.path("keys.yaml"))
        self.wait_code(node, only, "ok", timeout=5.0)
        self.assertEqual(self.code(node, new), "invalid_api_key")

    def test_a_node_restarted_with_redis_down_serves_its_last_version(self):
        new = self.kf.add("fresh", owner="owner_fresh")
        self.kf.write(self.keyfile)
        self.assertEqual(self.publish()[0], 0)
        self.assertEqual(self.revoke("k3")[0], 0)
        node = self.nodes[1]
        self.wait_code(node, new, "ok")
        self.wait_code(node, self.keys["k3"], "revoked_api_key")
        # k5 revoked on the channel only after the version: the node must keep it.
        self.assertEqual(self.revoke("k5")[0], 0)
        self.wait_code(node, self.keys["k5"], "revoked_api_key")
        node.stop()
        self.redis.stop()
        node.start()
        self.assertEqual(self.code(node, new), "ok")
        self.assertEqual(self.code(node, self.keys["k3"]), "revoked_api_key")
        self.assertEqual(self.code(node, self.keys["k5"]), "revoked_api_key")
        self.assertEqual(self.code(node, self.keys["k4"]), "ok")


class CutOffTest(ChannelCase):
    """Node 0 reaches Redis through a proxy the test cuts."""

    EXTRA = "stale=1s"

    def make_node(self, i, workers, redis_port=None):
        if i == 0:
            self.proxy = RedisProxy(self.redis.port)
            self.addCleanup(self.proxy.close)
            redis_port = self.proxy.port
        return super().make_node(i, workers, redis_port)

    def test_a_node_cut_off_catches_up_and_says_it_was_stale(self):
        node = self.nodes[0]
        wait_until(lambda: self.channel_status(node).get("state") == "ok", 5)
        resp = request(node.port, "GET", "/", headers=[("Authorization", "Bearer " + self.keys["k2"])])
        self.assertEqual(resp.header("X-Stale"), "0")
        self.proxy.cut()
        self.assertEqual(self.revoke("k2")[0], 0)
        self.wait_code(self.nodes[1], self.keys["k2"], "revoked_api_key")
        # Cut off: it cannot know, keeps serving, and after stale= says so.
        self.assertEqual(self.code(node, self.keys["k2"]), "ok")
        wait_until(lambda: self.channel_status(node).get("state") == "stale", 5)
        resp = request(node.port, "GET", "/", headers=[("Authorization", "Bearer " + self.keys["k6"])])
        self.assertEqual(resp.header("X-Stale"), "1")
        wait_until(lambda: "stale; serving the last key table" in node.error_log(), 2,
                   what="the stale state logged")
        self.proxy.restore()
        self.wait_code(node, self.keys["k2"], "revoked_api_key", timeout=5.0)
        wait_until(lambda: self.channel_status(node).get("state") == "ok", 5)
        wait_until(lambda: "reading channel \"prod\" again" in node.error_log(), 2,
                   what="the way back logged")
        log = node.error_log()
        self.assertEqual(log.count("stale; serving the last key table"), 1, log[-2000:])
        self.assertEqual(log.count("reading the channel failed"), 1, log[-2000:])

    def test_entries_trimmed_while_cut_off_are_reported(self):
        node = self.nodes[0]
        wait_until(lambda: self.channel_status(node).get("state") == "ok", 5)
        self.assertEqual(self.revoke("k8")[0], 0)
        self.wait_code(node, self.keys["k8"], "revoked_api_key")
        self.proxy.cut()
        self.assertEqual(self.revoke("k9")[0], 0)
        self.redis.command("XTRIM", "akm:k:{prod}:log", "MAXLEN", "0")
        self.proxy.restore()
        wait_until(lambda: "were trimmed before this node read them" in node.error_log(), 5,
                   what="the gap reported")
        # A node that never lost its place reports nothing.
        self.assertNotIn("were trimmed", self.nodes[1].error_log())


class SignedChannelTest(ChannelCase):
    """verify=: only entries signed with the publisher's key change anything."""

    WORKERS = (1, 2)

    def setUp(self):
        self.keydir = tempfile.mkdtemp(prefix="apikey-sign-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.keydir, True)
        self.private = os.path.join(self.keydir, "sign.pem")
        self.public = os.path.join(self.keydir, "sign.pub")
        self.other = os.path.join(self.keydir, "other.pem")
        for path in (self.private, self.other):
            subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", path],
                           check=True, capture_output=True)
        subprocess.run(["openssl", "pkey", "-in", self.private, "-pubout", "-out", self.public],
                       check=True, capture_output=True)
        self.EXTRA = "verify=%s" % self.public
        super().setUp()

    def stream(self, channel=None):
        return "akm:k:{%s}:log" % (channel or self.CHANNEL)

    def entries(self, channel=None):
        """[(id, {field: value})] of the stream."""
        out = []
        for entry_id, flat in self.redis.command("XRANGE", self.stream(channel), "-", "+"):
            out.append((entry_id, dict(zip(flat[0::2], flat[1::2]))))
        return out

    def xadd(self, fields, channel=None):
        args = ["XADD", self.stream(channel), "*"]
        for k, v in fields.items():
            args += [k, v]
        return self.redis.command(*args)

    def settle(self):
        # Two ticks and a margin: whatever the nodes would apply, they have.
        time.sleep(4 * INTERVAL_S)

    def test_signed_entries_apply(self):
        rc, _, err = self.revoke("k0", "--sign", self.private)
        self.assertEqual(rc, 0, err)
        for n in self.nodes:
            self.wait_code(n, self.keys["k0"], "revoked_api_key")
        new = self.kf.add("fresh", owner="owner_fresh")
        self.kf.write(self.keyfile)
        self.assertEqual(self.publish("--sign", self.private)[0], 0)
        for n in self.nodes:
            self.wait_code(n, new, "ok")

    def test_unsigned_forged_tampered_and_cross_channel_entries_change_nothing(self):
        now = str(int(time.time()))
        # Unsigned.
        self.xadd({"type": "revoke", "id": "k1", "at": now})
        # apikeyctl without --sign: the file is edited, the entry is unsigned.
        rc, _, err = self.revoke("k1")
        self.assertEqual(rc, 0, err)
        # Signed with another key.
        rc, _, err = self.revoke("k2", "--sign", self.other)
        self.assertEqual(rc, 0, err)
        # Tampered: a valid signed entry for k3 with its id changed to k4.
        rc, _, err = self.revoke("k3", "--sign", self.private)
        self.assertEqual(rc, 0, err)
        signed = [f for _, f in self.entries() if f.get("id") == "k3"][-1]
        forged = dict(signed, id="k4")
        self.xadd(forged)
        # Cross-channel: a valid entry of channel "staging" replayed into "prod".
        self.CHANNEL = "staging"
        self.assertEqual(self.revoke("k6", "--sign", self.private)[0], 0)
        self.CHANNEL = "prod"
        staging = [f for _, f in self.entries("staging") if f.get("id") == "k6"][-1]
        self.xadd(staging)
        for n in self.nodes:
            self.wait_code(n, self.keys["k3"], "revoked_api_key")
        self.settle()
        for n in self.nodes:
            for key_id in ("k1", "k2", "k4", "k6"):
                self.assertEqual(self.code(n, self.keys[key_id]), "ok", key_id)
            st = self.channel_status(n)
            self.assertGreaterEqual(st["refused"], 5, st)
        # A forged version adding a key: never installed.
        log = self.nodes[0].error_log()
        self.assertIn("refused", log)
        self.assertNotIn(self.keys["k1"], log)

    def test_an_older_version_replayed_is_ignored(self):
        first = self.kf.add("first", owner="o1")
        self.kf.write(self.keyfile)
        self.assertEqual(self.publish("--sign", self.private)[0], 0)
        old_entry = [f for _, f in self.entries() if f.get("type") == "version"][-1]
        second = self.kf.add("second", owner="o2")
        self.kf.write(self.keyfile)
        self.assertEqual(self.publish("--sign", self.private)[0], 0)
        for n in self.nodes:
            self.wait_code(n, second, "ok")
        self.xadd(old_entry)
        self.settle()
        for n in self.nodes:
            self.assertEqual(self.code(n, second), "ok")
            self.assertEqual(self.code(n, first), "ok")


CONFIG = """
    api_key_redis r 127.0.0.1:6379;
    api_key_zone keys:1m file={prefix}/keys.yaml ZONE;
    server {
        listen 127.0.0.1:{port};
        location / { api_key keys; proxy_pass http://127.0.0.1:{upstream}; }
    }
"""


class ChannelConfigTest(ConfigCheckCase):
    """nginx -t on the channel parameters of api_key_zone."""

    NAME = "chanconf"

    def conf(self, params):
        return CONFIG.replace("ZONE", params)

    def test_accepted(self):
        rc, out = self.nginx_t(self.conf("check=1s sync=r channel=prod stale=30s"))
        self.assertEqual(rc, 0, out)

    def test_refused(self):
        pem = self.id().replace(".", "_")
        for params, mention in (
                ("sync=r", "\"sync\" and \"channel\" go together"),
                ("channel=prod", "\"sync\" and \"channel\" go together"),
                ("sync=nosuch channel=prod", "unknown api_key_redis \"nosuch\""),
                ("sync=r channel=pr/od", "invalid channel"),
                ("sync=r channel=prod stale=50ms", "invalid stale time"),
                ("stale=10s", "need \"channel\""),
                ("sync=r channel=prod verify=/nonexistent/%s.pem" % pem, "invalid verify key"),
                ("sync=r channel=prod verify={prefix}/keys.yaml", "invalid verify key")):
            with self.subTest(params=params):
                self.refused(self.conf(params), params, mention)


if __name__ == "__main__":
    unittest.main()
