"""Hiding the credential rebuilds the request's header list; a module that
adds a request header afterwards must find a sound list. Lua's
ngx.req.set_header is such a module (Debian's libnginx-mod-http-lua); the
test runs where it is installed (scripts/bench installs it), against
Debian's nginx: those modules load only into the nginx version they were
built for, so the other versions of scripts/test-matrix skip it."""

import os
import re
import subprocess
import unittest

from harness import NGINX_ENV, KeyFile, NginxCase, nginx_version, request

LUA_MODULES = ("/usr/lib/nginx/modules/ndk_http_module.so",
               "/usr/lib/nginx/modules/ngx_http_lua_module.so")
HAVE_LUA = all(os.path.exists(m) for m in LUA_MODULES)
DEBIAN_NGINX = "/usr/sbin/nginx"


def lua_unusable():
    """None if Debian's Lua modules can load into the nginx under test."""
    if not HAVE_LUA:
        return "libnginx-mod-http-lua is not installed"
    try:
        out = subprocess.run([DEBIAN_NGINX, "-v"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             timeout=30, env=NGINX_ENV).stdout.decode()
    except (OSError, subprocess.SubprocessError) as e:
        return "cannot run %s: %s" % (DEBIAN_NGINX, e)
    m = re.search(r"nginx/(\d+(?:\.\d+)*)", out)
    debian = tuple(int(x) for x in m.group(1).split(".")) if m else ()
    if nginx_version() != debian:
        return ("Debian's libnginx-mod-http-lua is built for nginx %s, the nginx under test "
                "is %s" % (".".join(map(str, debian)), ".".join(map(str, nginx_version()))))
    return None


LUA_UNUSABLE = lua_unusable()

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
        location /count {
            api_key keys;
            api_key_source bearer header=x-api-key;
            content_by_lua_block {
                for i = 1, 40 do ngx.req.set_header("X-Added-" .. i, "v") end
                local h = ngx.req.get_headers(200)
                local filler, added = 0, 0
                for name, _ in pairs(h) do
                    if name:sub(1, 4) == "x-f-" then filler = filler + 1 end
                    if name:sub(1, 8) == "x-added-" then added = added + 1 end
                end
                ngx.say(filler, " ", added, " ",
                        (h["x-api-key"] or h["authorization"]) and "key" or "nokey")
            }
        }
    }
"""


@unittest.skipIf(LUA_UNUSABLE, LUA_UNUSABLE)
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

    def test_headers_added_after_hiding_in_a_long_list(self):
        # 30 headers (two parts of nginx's list) with keys in both parts,
        # then 40 more headers added by Lua.
        headers = [("X-F-%d" % i, "v") for i in range(30)]
        headers.insert(25, ("x-api-key", self.key))
        headers.insert(5, ("Authorization", "Bearer " + self.key))
        headers.insert(2, ("x-api-key", self.key))
        r = request(self.nginx.port, "GET", "/count", headers)
        self.assertEqual(r.status, 200, "a worker survives headers added after hiding")
        self.assertEqual(r.body.strip(), b"30 40 nokey",
                         "every other header and every added one, and no key, are in the list")


if __name__ == "__main__":
    unittest.main()
