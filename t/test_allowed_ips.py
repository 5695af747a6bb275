"""SPEC "Optional keys, per-key IP allow-lists": a key record's allowed_ips.
The key is accepted only from those networks, matched against the address
nginx reports as $remote_addr (so after the realip module rewrote it);
otherwise 403 permission_error / ip_not_allowed, checked after environment
and plan and before scopes. Over IPv4 (127.0.0.1), IPv6 ([::1], skipped
when the host has no IPv6 loopback), through realip (X-Forwarded-For from
127.0.0.1, including IPv4-mapped IPv6 addresses) and over a unix socket
(no address: a restricted key is refused unless realip gives one)."""

import os
import socket
import unittest

from harness import (MESSAGES, PAST, REQUEST_ID_RE, KeyFile, NginxCase, bearer, nginx_build_info,
                     parse_response, wait_until)

IP_MESSAGE = MESSAGES["ip_not_allowed"]


def ipv6_loopback():
    """Whether [::1] can be bound here (containers often have no IPv6)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_IPV6 = ipv6_loopback()
HAS_REALIP = "--with-http_realip_module" in nginx_build_info()[1]

PROXY = ("proxy_set_header X-Key-Id $api_key_id; "
         "proxy_set_header X-Key-Error $api_key_error; "
         "proxy_pass http://127.0.0.1:{upstream};")

LOCATIONS = """
        location / { P }
        location /scoped/ { api_key_scope diagrams:write; P }
        location /paid/ { api_key_plans pro; P }
        location /live/ { api_key_environment live; P }
        location /dry/ { api_key_dry_run on; P }
        location /gif { empty_gif; }
"""

REALIP = """
        set_real_ip_from 127.0.0.1;
        set_real_ip_from unix:;
        real_ip_header X-Forwarded-For;
""" if HAS_REALIP else ""

HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;
    log_format ips '$remote_addr $api_key_id "$api_key_error"';

    # 127.0.0.1 (and [::1]): the connection's own address counts.
    server {
        listen 127.0.0.1:{port};
        LISTEN6
        server_name localhost;
        access_log {prefix}/ips.log ips;
        api_key keys;
        LOCATIONS
    }

    # realip: X-Forwarded-For from 127.0.0.1 becomes $remote_addr.
    server {
        listen 127.0.0.1:{port2};
        server_name localhost;
        access_log {prefix}/ips.log ips;
        REALIP
        api_key keys;
        LOCATIONS
    }

    # A unix socket: no client address, unless realip sets one.
    server {
        listen unix:{prefix}/ips.sock;
        server_name localhost;
        access_log {prefix}/ips.log ips;
        REALIP
        api_key keys;
        LOCATIONS
    }
""".replace("LOCATIONS", LOCATIONS).replace("REALIP", REALIP).replace(
    "LISTEN6", "listen [::1]:{v6port};" if HAS_IPV6 else "").replace(
    " P }", " " + PROXY + " }")


def raw_request(family, address, path, headers, method="GET", timeout=10.0):
    """One request on a socket of `family` to `address` (Connection: close)."""
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: localhost", "Connection: close"]
    lines += ["%s: %s" % h for h in headers]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    chunks = []
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(address)
        s.sendall(data)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return parse_response(b"".join(chunks), method)


class AllowedIpsTest(NginxCase):
    HTTP = HTTP
    PORTS = ("port", "port2", "v6port")

    @classmethod
    def prepare(cls, nginx):
        kf = KeyFile()
        add = kf.add
        # From this host: 127.0.0.1 alone, or loopback networks of both families.
        cls.local = add("key_local", plan="pro", scopes=["diagrams:read"],
                        allowed_ips=["127.0.0.1"])
        cls.loopbacks = add("key_loopbacks", plan="pro", scopes=["diagrams:read"],
                            allowed_ips=["127.0.0.0/8", "::1"])
        # From elsewhere only (reachable here through realip).
        cls.remote = add("key_remote", plan="pro", scopes=["diagrams:read"],
                         allowed_ips=["203.0.113.0/24", "198.51.100.7"])
        cls.remote6 = add("key_remote6", plan="pro", scopes=["diagrams:read"],
                          allowed_ips=["2001:db8::/32"])
        cls.v6only = add("key_v6only", plan="pro", allowed_ips=["::1"])
        cls.open = add("key_open", plan="pro", scopes=["diagrams:read"])
        # The order of the checks, each from a wrong address.
        cls.remote_expired = add("key_remote_expired", plan="pro", expires_at=PAST,
                                 allowed_ips=["203.0.113.0/24"])
        cls.remote_revoked = add("key_remote_revoked", plan="pro", revoked_at=PAST,
                                 allowed_ips=["203.0.113.0/24"])
        cls.remote_free = add("key_remote_free", plan="free", allowed_ips=["203.0.113.0/24"])
        cls.remote_test = add("key_remote_test", prefix="jfi_sk_test_", plan="pro",
                              allowed_ips=["203.0.113.0/24"])
        kf.write(nginx.path("keys.yaml"))

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if cls.nginx is not None and not cls._setup_error:
            try:
                wait_until(lambda: os.path.exists(cls.nginx.path("ips.sock")), 10,
                           what="nginx listening on the unix socket")
            except TimeoutError as e:
                cls._setup_error = str(e)

    # -- helpers

    def via(self, key, forwarded=None, path="/", port=None, method="GET"):
        """A request with `key` on the realip server, as from `forwarded`."""
        headers = bearer(key)
        if forwarded is not None:
            headers = headers + [("X-Forwarded-For", forwarded)]
        return self.req(method, path, headers, port=port or self.nginx.vars["port2"])

    def over6(self, key, path="/"):
        return raw_request(socket.AF_INET6, ("::1", self.nginx.vars["v6port"]), path, bearer(key))

    def over_unix(self, key, forwarded=None, path="/"):
        headers = bearer(key)
        if forwarded is not None:
            headers = headers + [("X-Forwarded-For", forwarded)]
        return raw_request(socket.AF_UNIX, self.nginx.path("ips.sock"), path, headers)

    def outcome(self, r):
        if r.status == 200:
            return 200, None
        return r.status, r.json()["error"]["code"]

    def assertAccepted(self, r, what):
        self.assertEqual(r.status, 200, "%s: accepted; got %r" % (what, r))

    def assertIpRefusal(self, r, what, method="GET"):
        """The whole refusal, as for every other 403 (test_errors.py)."""
        self.assertEqual(r.status, 403, "%s: 403; got %r" % (what, r))
        ctype = (r.header("Content-Type") or "").split(";")[0].strip().lower()
        self.assertEqual(ctype, "application/json", "%s: application/json" % what)
        cc = [d.strip().lower() for d in (r.header("Cache-Control") or "").split(",")]
        self.assertIn("no-store", cc, "%s: Cache-Control: no-store" % what)
        rid = r.header("X-Request-Id")
        self.assertRegex(rid or "", REQUEST_ID_RE, "%s: X-Request-Id" % what)
        self.assertIsNone(r.header("WWW-Authenticate"), "%s: a 403 has no challenge" % what)
        cors = [n for n in r.headers.names() if n.startswith("access-control-")]
        self.assertEqual(cors, [], "%s: no CORS headers" % what)
        if method == "HEAD":
            self.assertEqual(r.body, b"", "%s: HEAD gets no body" % what)
            return
        doc = r.json()
        self.assertEqual(doc, {"error": {"type": "permission_error", "code": "ip_not_allowed",
                                         "message": IP_MESSAGE},
                               "request_id": rid}, "%s: the envelope" % what)

    def requireRealip(self):
        if not HAS_REALIP:
            self.skipTest("nginx is built without --with-http_realip_module")

    # -- the connection's own address

    def test_accepted_from_a_listed_address(self):
        self.assertAccepted(self.get("/", bearer(self.local)), "127.0.0.1 listed alone")
        self.assertAccepted(self.get("/", bearer(self.loopbacks)), "127.0.0.1 in 127.0.0.0/8")
        r = self.get("/gif", bearer(self.local))
        self.assertEqual((r.status, r.header("Content-Type")), (200, "image/gif"),
                         "a content handler of its own serves it too")

    def test_refused_from_elsewhere(self):
        for key, what in ((self.remote, "203.0.113.0/24 and 198.51.100.7 from 127.0.0.1"),
                          (self.remote6, "2001:db8::/32 from 127.0.0.1"),
                          (self.v6only, "::1 only, from 127.0.0.1")):
            self.assertIpRefusal(self.get("/", bearer(key)), what)
            self.assertIpRefusal(self.get("/gif", bearer(key)), what + ", empty_gif")
        self.assertIpRefusal(self.req("HEAD", "/", bearer(self.remote)), "HEAD", method="HEAD")

    def test_keys_without_the_field_work_from_anywhere(self):
        self.assertAccepted(self.get("/", bearer(self.open)), "no allowed_ips, 127.0.0.1")
        if HAS_REALIP:
            for addr in ("203.0.113.9", "2001:db8::1", "10.1.2.3"):
                self.assertAccepted(self.via(self.open, addr), "no allowed_ips, from " + addr)
        self.assertAccepted(self.over_unix(self.open), "no allowed_ips, over a unix socket")

    def test_the_refusal_names_the_key_in_variables_and_logs(self):
        offset = self.nginx.error_log_size()
        r = self.get("/dry/", bearer(self.remote))
        self.assertEqual(r.status, 200, "dry run: reported, not refused")
        h = r.echoed_headers()
        self.assertEqual((h.get("X-Key-Id"), h.get("X-Key-Error")), ("key_remote", "ip_not_allowed"),
                         "dry run: $api_key_id and $api_key_error of the refusal")
        self.assertIpRefusal(self.get("/", bearer(self.remote)), "logged refusal")
        wait_until(lambda: 'api key refused: "ip_not_allowed", key id "key_remote"'
                   in self.nginx.error_log(offset), 5, what="the refusal in the error log")
        wait_until(lambda: '127.0.0.1 key_remote "ip_not_allowed"'
                   in self.nginx.access_log("ips.log"), 5,
                   what="$remote_addr, $api_key_id and $api_key_error in the access log")

    # -- the order of the checks

    def test_revoked_expired_environment_and_plan_come_first(self):
        self.assertEqual(self.outcome(self.get("/", bearer(self.remote_expired))),
                         (401, "expired_api_key"), "an expired key from a wrong address")
        self.assertEqual(self.outcome(self.get("/", bearer(self.remote_revoked))),
                         (401, "revoked_api_key"), "a revoked key from a wrong address")
        self.assertEqual(self.outcome(self.get("/live/", bearer(self.remote_test))),
                         (401, "invalid_api_key"), "a test key where live is required")
        self.assertEqual(self.outcome(self.get("/paid/", bearer(self.remote_free))),
                         (403, "plan_required"), "a free key where pro is required")
        self.assertEqual(self.outcome(self.get("/paid/", bearer(self.remote))),
                         (403, "ip_not_allowed"), "a pro key from a wrong address")

    def test_before_scopes(self):
        self.assertIpRefusal(self.get("/scoped/", bearer(self.remote)),
                             "a key lacking the scope, from a wrong address")
        self.assertEqual(self.outcome(self.get("/scoped/", bearer(self.local))),
                         (403, "insufficient_scope"), "the same from a listed address")

    # -- IPv6

    def test_ipv6_listener(self):
        if not HAS_IPV6:
            self.skipTest("no IPv6 loopback ([::1] cannot be bound here)")
        wait_until(lambda: self.over6(self.open).status == 200, 10,
                   what="nginx answering on [::1]")
        self.assertAccepted(self.over6(self.v6only), "::1 listed, from ::1")
        self.assertAccepted(self.over6(self.loopbacks), "::1 in 127.0.0.0/8 + ::1, from ::1")
        self.assertIpRefusal(self.over6(self.local), "127.0.0.1 listed, from ::1")
        self.assertIpRefusal(self.over6(self.remote6), "2001:db8::/32, from ::1")
        self.assertIpRefusal(self.over6(self.remote), "IPv4 networks, from ::1")

    # -- realip: the address it sets is the one that counts

    def test_realip_address_counts(self):
        self.requireRealip()
        for addr in ("203.0.113.1", "203.0.113.254", "198.51.100.7"):
            self.assertAccepted(self.via(self.remote, addr), "key_remote from " + addr)
        for addr in ("203.0.114.1", "198.51.100.8", "127.0.0.1", "10.0.0.1"):
            self.assertIpRefusal(self.via(self.remote, addr), "key_remote from " + addr)
        # the last address of the header is the one realip takes
        self.assertAccepted(self.via(self.remote, "10.0.0.1, 203.0.113.5"), "a proxy chain")
        self.assertIpRefusal(self.via(self.local, "203.0.113.5"),
                             "127.0.0.1 listed, request forwarded for 203.0.113.5")
        self.assertAccepted(self.via(self.local), "127.0.0.1 listed, nothing forwarded")
        wait_until(lambda: '203.0.113.1 key_remote "-"' in self.nginx.access_log("ips.log"), 5,
                   what="$remote_addr as realip set it, in the access log")

    def test_realip_ipv6_and_mapped_addresses(self):
        self.requireRealip()
        self.assertAccepted(self.via(self.remote6, "2001:db8::1"), "2001:db8::/32 from 2001:db8::1")
        self.assertAccepted(self.via(self.remote6, "2001:db8:ffff::7"), "from 2001:db8:ffff::7")
        self.assertIpRefusal(self.via(self.remote6, "2001:db9::1"), "from 2001:db9::1")
        self.assertIpRefusal(self.via(self.remote6, "203.0.113.1"), "IPv6 network, IPv4 client")
        self.assertIpRefusal(self.via(self.remote, "2001:db8::1"), "IPv4 networks, IPv6 client")
        # An IPv4-mapped IPv6 client address is its IPv4 address.
        self.assertAccepted(self.via(self.remote, "::ffff:203.0.113.9"),
                            "203.0.113.0/24 from ::ffff:203.0.113.9")
        self.assertIpRefusal(self.via(self.remote, "::ffff:203.0.114.9"),
                             "203.0.113.0/24 from ::ffff:203.0.114.9")
        self.assertIpRefusal(self.via(self.remote6, "::ffff:203.0.113.9"),
                             "2001:db8::/32 from ::ffff:203.0.113.9")

    def test_untrusted_forwarded_header_is_ignored(self):
        # Only where set_real_ip_from trusts the peer does the header count.
        r = self.req("GET", "/", bearer(self.remote) + [("X-Forwarded-For", "203.0.113.9")])
        self.assertIpRefusal(r, "X-Forwarded-For on a server without realip")

    # -- unix socket

    def test_unix_socket(self):
        self.assertIpRefusal(self.over_unix(self.local),
                             "a restricted key over a unix socket, no address")
        if HAS_REALIP:
            self.assertAccepted(self.over_unix(self.remote, "203.0.113.9"),
                                "unix socket, realip from X-Forwarded-For")
            self.assertIpRefusal(self.over_unix(self.remote, "192.0.2.1"),
                                 "unix socket, realip, an address not listed")


class AllowedIpsReloadTest(NginxCase):
    """A reload that adds, changes or removes allowed_ips takes effect."""

    HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;
    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        api_key keys;
        location / { proxy_pass http://127.0.0.1:{upstream}; }
    }
"""

    @classmethod
    def prepare(cls, nginx):
        cls.kf = KeyFile()
        cls.key = cls.kf.add("key_moving", plan="pro")
        cls.kf.write(nginx.path("keys.yaml"))

    def code(self):
        r = self.get("/", bearer(self.key))
        return r.status if r.status == 200 else (r.status, r.json()["error"]["code"])

    def test_reload_changes_the_networks(self):
        rec = self.kf.record("key_moving")
        steps = ((["203.0.113.0/24"], (403, "ip_not_allowed")),
                 (["203.0.113.0/24", "127.0.0.0/8"], 200),
                 (["::1"], (403, "ip_not_allowed")),
                 (None, 200))
        for networks, want in steps:
            if networks is None:
                rec.pop("allowed_ips", None)
            else:
                rec["allowed_ips"] = networks
            self.kf.write(self.nginx.path("keys.yaml"))
            self.nginx.reload()
            self.assertEqual(self.code(), want, "after a reload with allowed_ips %r" % networks)

    def test_a_bad_network_fails_the_reload_and_keeps_the_table(self):
        before = self.code()
        rec = self.kf.record("key_moving")
        rec["allowed_ips"] = ["203.0.113.5/24"]
        self.kf.write(self.nginx.path("keys.yaml"))
        try:
            out = self.nginx.reload(expect_failure=True)
            self.assertRegex(out, r"keys\.yaml:\d+: invalid network \"203\.0\.113\.5/24\": "
                                  r"host bits are set \(the network is 203\.0\.113\.0/24\)",
                             "the reload names file:line and the reason")
            self.assertEqual(self.code(), before, "the old table still serves")
        finally:
            rec.pop("allowed_ips", None)
            self.kf.write(self.nginx.path("keys.yaml"))


if __name__ == "__main__":
    unittest.main()
