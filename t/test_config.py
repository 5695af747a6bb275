"""SPEC "Directives": nginx -t accepts every directive in its documented
contexts and refuses wrong arguments and contexts."""

from harness import ConfigCheckCase

GOOD = """
    api_key_zone keys:1m file={prefix}/keys.yaml;
    api_key keys;
    api_key_source bearer header=x-api-key;
    api_key_scope a:read;
    api_key_plans pro team;
    api_key_environment any;
    api_key_dry_run off;
    api_key_realm api;
    api_key_hide_credentials on;
    api_key_optional off;

    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        api_key keys;
        api_key_source header=x-api-key;
        api_key_scope GET HEAD a:read;
        api_key_scope POST PUT PATCH DELETE OPTIONS a:write;
        api_key_plans pro;
        api_key_environment live;
        api_key_dry_run on;
        api_key_realm "my api";
        api_key_hide_credentials off;
        api_key_optional on;

        location / {
            api_key off;
            api_key_source bearer;
            api_key_scope b:read;
            api_key_plans free;
            api_key_environment test;
            api_key_dry_run off;
            api_key_realm other;
            api_key_hide_credentials on;
            api_key_optional off;
            proxy_pass http://127.0.0.1:{upstream};
        }
    }
"""

SERVER = """
    server {
        listen 127.0.0.1:{port};
        server_name localhost;
        LOC
        location / {
            proxy_pass http://127.0.0.1:{upstream};
        }
    }
"""


class ConfigTest(ConfigCheckCase):
    """nginx_t() and refused() come from harness.ConfigCheckCase."""

    NAME = "config"

    def test_all_directives_in_all_contexts(self):
        rc, out = self.nginx_t(GOOD)
        self.assertEqual(rc, 0, "every directive accepted in http/server/location:\n" + out)

    def test_unknown_zone(self):
        http = "api_key_zone keys:1m file={prefix}/keys.yaml;\n" + SERVER.replace(
            "LOC", "api_key nosuchzone;")
        self.refused(http, "api_key naming an undeclared zone", "nosuchzone")

    def test_zone_without_file(self):
        http = "api_key_zone keys:1m;\n" + SERVER.replace("LOC", "api_key keys;")
        self.refused(http, "api_key_zone without file=", "api_key_zone")

    def test_zone_bad_size(self):
        http = "api_key_zone keys:lots file={prefix}/keys.yaml;\n" + SERVER.replace(
            "LOC", "api_key keys;")
        self.refused(http, "api_key_zone with a bad size", "lots")

    def test_zone_in_server(self):
        http = SERVER.replace("LOC", "api_key_zone keys:1m file={prefix}/keys.yaml;")
        self.refused(http, "api_key_zone inside server{}", "not allowed here")

    def test_duplicate_zone(self):
        http = ("api_key_zone keys:1m file={prefix}/keys.yaml;\n"
                "api_key_zone keys:1m file={prefix}/keys.yaml;\n"
                + SERVER.replace("LOC", "api_key keys;"))
        self.refused(http, "two api_key_zone with one name", "keys")

    def test_bad_source(self):
        http = "api_key_zone keys:1m file={prefix}/keys.yaml;\n" + SERVER.replace(
            "LOC", "api_key keys; api_key_source cookie;")
        self.refused(http, "api_key_source cookie", "cookie")

    def test_bad_environment(self):
        http = "api_key_zone keys:1m file={prefix}/keys.yaml;\n" + SERVER.replace(
            "LOC", "api_key keys; api_key_environment staging;")
        self.refused(http, "api_key_environment staging", "staging")

    def test_bad_flag(self):
        http = "api_key_zone keys:1m file={prefix}/keys.yaml;\n" + SERVER.replace(
            "LOC", "api_key keys; api_key_dry_run maybe;")
        self.refused(http, "api_key_dry_run maybe", "maybe")

    def test_scope_without_name(self):
        http = "api_key_zone keys:1m file={prefix}/keys.yaml;\n" + SERVER.replace(
            "LOC", "api_key keys; api_key_scope;")
        self.refused(http, "api_key_scope without arguments", "api_key_scope")
