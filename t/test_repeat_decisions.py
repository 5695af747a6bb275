"""A key sent again is decided again (README "Performance": the memo's
noted acceptance).

A worker notes, beside a key it has seen, that a location's policy accepted
it for the request's method in the table in force; the next such request
skips the policy's checks but the time's. These tests send each key many
times, over fresh connections, so that both workers have it noted, and
check that what the note skips can never carry a decision over:

* AlternatingLocationsTest: one key between a location whose scope it has
  and one whose scope it lacks, and between the methods of a location whose
  rules differ by method: each request gets its own location's answer.
* ExpiryInUseTest: a key that expires while it is in use is refused from
  its expires_at on, without a reload.
"""

import datetime
import time

from harness import MESSAGES, NginxCase, bearer, KeyFile, scope_message

HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;

        api_key keys;

        location /read/ {
            api_key_scope diagrams:read;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /write/ {
            api_key_scope diagrams:write;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /paid/ {
            api_key_plans team;
            proxy_pass http://127.0.0.1:{upstream};
        }
        location /methods/ {
            api_key_scope GET HEAD diagrams:read;
            api_key_scope POST PUT PATCH DELETE diagrams:write;
            proxy_pass http://127.0.0.1:{upstream};
        }
    }
"""

ROUNDS = 12


class AlternatingLocationsTest(NginxCase):
    HTTP = HTTP

    @classmethod
    def prepare(cls, nginx):
        kf = KeyFile()
        cls.reader = kf.add("key_reader", plan="pro", scopes=["diagrams:read"])
        kf.write(nginx.path("keys.yaml"))

    def test_each_location_answers_for_itself(self):
        # Runs of one location (each worker notes the acceptance), then
        # alternation (the note is another location's every time).
        for path, status in [("/read/", 200)] * ROUNDS + [("/write/", 403)] * ROUNDS + \
                [("/paid/", 403), ("/read/", 200), ("/write/", 403)] * ROUNDS:
            r = self.get(path + "x", bearer(self.reader))
            if status == 200:
                self.assertEqual(r.status, 200, "%s: %r" % (path, r))
            elif path == "/write/":
                self.assertError(r, 403, "insufficient_scope", scope_message("diagrams:write"),
                                 path)
            else:
                self.assertError(r, 403, "plan_required", MESSAGES["plan_required"], path)

    def test_each_method_answers_for_itself(self):
        for method, status in [("GET", 200)] * ROUNDS + \
                [("POST", 403), ("GET", 200), ("HEAD", 200), ("DELETE", 403)] * ROUNDS:
            r = self.req(method, "/methods/x", bearer(self.reader))
            if status == 200:
                self.assertEqual(r.status, 200, "%s: %r" % (method, r))
            else:
                self.assertError(r, 403, "insufficient_scope", scope_message("diagrams:write"),
                                 method)


def utc(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


class ExpiryInUseTest(NginxCase):
    HTTP = HTTP
    LEAD = 3  # seconds from nginx's start to the key's expiry

    @classmethod
    def prepare(cls, nginx):
        kf = KeyFile()
        cls.expires_at = int(time.time()) + cls.LEAD
        cls.key = kf.add("key_expiring", plan="pro", scopes=["diagrams:read"],
                         expires_at=utc(cls.expires_at))
        kf.write(nginx.path("keys.yaml"))

    def test_refused_from_expires_at_on(self):
        accepted = 0
        while time.time() < self.expires_at - 0.5:
            r = self.get("/read/x", bearer(self.key))
            self.assertEqual(r.status, 200, r)
            accepted += 1
        self.assertGreater(accepted, 2 * ROUNDS, "the key was noted by both workers")
        # nginx's clock is in whole seconds, updated once per event loop.
        while time.time() < self.expires_at + 1.2:
            time.sleep(0.05)
        for _ in range(2 * ROUNDS):
            r = self.get("/read/x", bearer(self.key))
            self.assertError(r, 401, "expired_api_key", MESSAGES["expired_api_key"],
                             "past expires_at, no reload")
