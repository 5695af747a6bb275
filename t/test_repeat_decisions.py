"""A key sent again is decided again (README "Performance": the memo's
noted acceptance).

A worker notes, beside a key it has seen, that a location's policy accepted
it for the request's method in the table in force; the next such request
skips the policy's checks but the time's. These tests send each key many
times, over fresh connections, so that both workers have it noted, and
check that what the note skips can never carry a decision over. On
test_policy.py's locations:

* one key between locations whose scope and plan it has and ones whose
  scope or plan it lacks, and between the methods of a location whose rules
  differ by method: each request gets its own location's answer;
* a key that expires while it is in use is refused from its expires_at on,
  without a reload.
"""

import datetime
import time

from harness import MESSAGES, NginxCase, bearer, KeyFile, scope_message
from test_policy import POLICY_HTTP as HTTP

ROUNDS = 12


def utc(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


class RepeatDecisionsTest(NginxCase):
    HTTP = HTTP
    LEAD = 4  # seconds from nginx's start to the expiring key's expiry

    @classmethod
    def prepare(cls, nginx):
        cls.expires_at = int(time.time()) + cls.LEAD
        kf = KeyFile()
        cls.reader = kf.add("key_reader", plan="free", scopes=["a:read"])
        cls.expiring = kf.add("key_expiring", plan="pro", scopes=["a:read"],
                              expires_at=utc(cls.expires_at))
        kf.write(nginx.path("keys.yaml"))

    def test_each_location_answers_for_itself(self):
        # Runs of one location (each worker notes the acceptance), then
        # alternation (the note is another location's every time).
        for path in ["/one/"] * ROUNDS + ["/nobody/"] * ROUNDS + \
                ["/plans/", "/one/", "/nobody/", "/"] * ROUNDS:
            r = self.get(path + "x", bearer(self.reader))
            if path in ("/one/", "/"):
                self.assertEqual(r.status, 200, "%s: %r" % (path, r))
            elif path == "/nobody/":
                self.assertError(r, 403, "insufficient_scope", scope_message("nobody:has"), path)
            else:
                self.assertError(r, 403, "plan_required", MESSAGES["plan_required"], path)

    def test_each_method_answers_for_itself(self):
        # /methods/: GET and HEAD need a:read, POST a:write, DELETE nothing.
        for method in ["GET"] * ROUNDS + ["POST", "GET", "HEAD", "DELETE", "POST"] * ROUNDS:
            r = self.req(method, "/methods/x", bearer(self.reader))
            if method == "POST":
                self.assertError(r, 403, "insufficient_scope", scope_message("a:write"), method)
            else:
                self.assertEqual(r.status, 200, "%s: %r" % (method, r))


    def test_refused_from_expires_at_on(self):
        accepted = 0
        while time.time() < self.expires_at - 0.5:
            r = self.get("/one/x", bearer(self.expiring))
            self.assertEqual(r.status, 200, r)
            accepted += 1
        self.assertGreater(accepted, 2 * ROUNDS, "the key was noted by both workers")
        # nginx's clock is in whole seconds, updated once per event loop.
        while time.time() < self.expires_at + 1.2:
            time.sleep(0.05)
        for _ in range(2 * ROUNDS):
            r = self.get("/one/x", bearer(self.expiring))
            self.assertError(r, 401, "expired_api_key", MESSAGES["expired_api_key"],
                             "past expires_at, no reload")
