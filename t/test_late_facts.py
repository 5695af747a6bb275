"""A key's facts read by name at run time (README "Variables").

When no log format, `set`, map or other directive refers to $api_key_id,
$api_key_owner, $api_key_organization_id, $api_key_plan or $api_key_scopes,
a decision does not copy them; a variable looked up by name while the
request runs (SSI `echo`, njs) still reads them:

* FactsByNameTest: SSI `echo` of every fact in a protected page: the
  accepted key's values, and empty ones for a page that needs no key.
* FactsAfterSwapTest: the key file changes (check=) while the page waits
  on an include; the facts echoed after it are the key's facts in the file
  now in force (a changed owner), or none once the key left the file. The
  request was decided before the change: it is served either way.
"""

import threading
import time
import unittest

from harness import bearer, new_key
from test_live_reload import HTTP as LIVE_HTTP, HeldRequestCase, zone_status

ECHO = ("[<!--# echo var=\"api_key_id\" default=\"\" -->|"
        "<!--# echo var=\"api_key_owner\" default=\"\" -->|"
        "<!--# echo var=\"api_key_organization_id\" default=\"\" -->|"
        "<!--# echo var=\"api_key_plan\" default=\"\" -->|"
        "<!--# echo var=\"api_key_scopes\" default=\"\" -->]")

HTTP = LIVE_HTTP.replace("        location = /status {", """        location /page/ {
            ssi on;
            root {prefix}/html;
        }
        location /open/ {
            api_key off;
            ssi on;
            root {prefix}/html;
        }
        location = /slow {
            api_key off;
            proxy_pass http://127.0.0.1:{slow};
        }
        location = /status {""")


def facts(body):
    """The five echoed facts of a page."""
    text = body.decode()
    inner = text[text.index("[") + 1:text.index("]")]
    return inner.split("|")


class FactsCase(HeldRequestCase):
    """check=100ms and a slow upstream at {slow} (HeldRequestCase), the pages."""

    HTTP = HTTP

    def setUp(self):
        super().setUp()
        self.nginx.write_file("html/page/facts.html", ECHO + "\n")
        self.nginx.write_file("html/open/facts.html", ECHO + "\n")
        self.nginx.write_file("html/page/slow.html",
                              "<!--# include virtual=\"/slow\" wait=\"yes\" -->" + ECHO + "\n")

    def prepare(self):
        self.key = self.kf.add("key_facts", owner="user_7", plan="pro",
                               organization_id="org_3", scopes=["docs:read", "docs:write"])


class FactsByNameTest(FactsCase):
    def test_echo_every_fact(self):
        r = self.nginx.get("/page/facts.html", bearer(self.key))
        self.assertEqual(r.status, 200, r.body[:200])
        self.assertEqual(facts(r.body),
                         ["key_facts", "user_7", "org_3", "pro", "docs:read docs:write"])
        # A page of no key: no facts, and no key was decided.
        r = self.nginx.get("/open/facts.html")
        self.assertEqual(r.status, 200)
        self.assertEqual(facts(r.body), ["", "", "", "", ""])

    def test_refused_key_has_no_page(self):
        r = self.nginx.get("/page/facts.html", bearer(new_key()))
        self.assertEqual(r.status, 401)
        self.assertNotIn(b"key_facts", r.body)


class FactsAfterSwapTest(FactsCase):
    def fetch_during_change(self, change):
        """GET the slow page; while its include waits, apply `change` to the
        key file and wait for the new table; returns the response."""
        result = {}

        def get():
            result["r"] = self.nginx.get("/page/slow.html", bearer(self.key), timeout=20)

        gen = zone_status(self.nginx)["generation"]
        t = threading.Thread(target=get)
        t.start()
        self.assertTrue(self.slow.arrived.wait(10), "the include reached the slow upstream")
        change()
        self.write()
        st = self.wait_generation(gen + 1, timeout=3.0)
        self.assertEqual(st["generation"], gen + 1, "the changed file is in force")
        self.slow.released.set()
        t.join(20)
        self.assertIn("r", result, "the page was answered")
        return result["r"]

    def test_changed_owner(self):
        r = self.fetch_during_change(
            lambda: self.kf.record("key_facts").__setitem__("owner", "user_8"))
        self.assertEqual(r.status, 200, r.body[:200])
        self.assertEqual(facts(r.body.replace(b"slow", b"", 1)),
                         ["key_facts", "user_8", "org_3", "pro", "docs:read docs:write"])

    def test_key_left_the_file(self):
        def remove():
            self.kf.records = [rec for rec in self.kf.records if rec["id"] != "key_facts"]
        r = self.fetch_during_change(remove)
        self.assertEqual(r.status, 200, "decided before the change: served")
        self.assertEqual(facts(r.body.replace(b"slow", b"", 1)), ["", "", "", "", ""])
        self.assertEqual(self.nginx.get("/page/facts.html", bearer(self.key)).status, 401)


if __name__ == "__main__":
    unittest.main()
