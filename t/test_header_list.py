"""Hiding the credential rebuilds the request's header list; a module that
adds a request header afterwards must find a sound list. Lua's
ngx.req.set_header is such a module (Debian's libnginx-mod-http-lua); the
test runs where it is installed (scripts/bench installs it)."""

import os
import unittest

from harness import KeyFile, NginxCase, request

LUA_MODULES = ("/usr/lib/nginx/modules/ndk_http_module.so",
               "/usr/lib/nginx/modules/ngx_http_lua_module.so")
HAVE_LUA = all(os.path.exists(m) for m in LUA_MODULES)

HTTP = """
    api_key_zone keys:1m file={prefix}/keys.yaml;
    server {
        listen 127.0.0.1:{port};
        location / {
            api_key keys;
            api_key_source bearer header=x-api-key;
            content_by_lua_block {
                for i = 1, 40 do ngx.req.set_header("X-Added-" .. i, "v") end
                ngx.say(ngx.req.get_headers()["x-added-40"] or "missing")
            }
        }
    }
"""


@unittest.skipUnless(HAVE_LUA, "libnginx-mod-http-lua is not installed")
class HeaderListTest(NginxCase):
    HTTP = HTTP
    MAIN = "".join("load_module %s;\n" % m for m in LUA_MODULES)

    @classmethod
    def prepare(cls, nginx):
        kf = KeyFile()
        cls.key = kf.add("key_lua")
        kf.write(nginx.path("keys.yaml"))

    def test_headers_added_after_hiding(self):
        r = request(self.nginx.port, "GET", "/", [("Authorization", "Bearer " + self.key),
                                                  ("X-Other", "1")])
        self.assertEqual(r.status, 200, "a worker survives headers added after the key was hidden")
        self.assertEqual(r.body.strip(), b"v", "the added headers are in the request's list")
        r = request(self.nginx.port, "GET", "/", [("x-api-key", self.key)])
        self.assertEqual(r.status, 200, "the same through x-api-key")


if __name__ == "__main__":
    unittest.main()
