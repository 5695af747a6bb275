"""Every example in conf/ passes nginx -t with the real module, and the
example key file passes apikeyctl check: the examples users copy must work."""

import os
import re
import shutil
import subprocess
import tempfile
import unittest

from harness import MODULE, NGINX, NGINX_ENV, REPO, KeyFile, Nginx, free_port

CONF = os.path.join(REPO, "conf")
APIKEYCTL = os.environ.get("APIKEYCTL", os.path.join(REPO, "build", "cmake", "apikeyctl"))


def http_body(text):
    """The inside of the example's http { } block."""
    start = text.index("http {") + len("http {")
    return text[start:text.rindex("}")]


class ExamplesTest(unittest.TestCase):
    def test_example_key_file_is_valid(self):
        proc = subprocess.run([APIKEYCTL, "check", os.path.join(CONF, "keys.example.yaml")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        self.assertEqual(proc.returncode, 0,
                         "apikeyctl check accepts conf/keys.example.yaml:\n%s" % proc.stdout.decode())

    def test_api_example_passes_nginx_t(self):
        with open(os.path.join(CONF, "api.nginx.conf")) as f:
            body = http_body(f.read())
        n = Nginx(name="example")
        try:
            shutil.copy(os.path.join(CONF, "keys.example.yaml"), n.path("keys.yaml"))
            body = body.replace("/etc/nginx/keys.yaml", n.path("keys.yaml"))
            body = body.replace("/var/log/nginx/api.log", n.path("api.log"))
            body = re.sub(r"listen 127\.0\.0\.1:8080", "listen 127.0.0.1:%d" % n.port, body)
            n.write_config(body)
            rc, out = n.test_config()
            self.assertEqual(rc, 0, "conf/api.nginx.conf (with the example key file) passes "
                                    "nginx -t:\n%s" % out)
        finally:
            n.cleanup()

    def test_demo_config_passes_nginx_t(self):
        prefix = tempfile.mkdtemp(prefix="apikey-demo-conf-", dir="/tmp")
        try:
            os.makedirs(os.path.join(prefix, "tmp"))
            kf = KeyFile()
            kf.add("key_demo", scopes=["diagrams:read"])
            kf.write(os.path.join(prefix, "keys.yaml"))
            with open(os.path.join(CONF, "demo.nginx.conf")) as f:
                text = f.read()
            for name, value in (("@PREFIX@", prefix), ("@MODULE@", MODULE),
                                ("@PORT@", str(free_port())),
                                ("@UPSTREAM_PORT@", str(free_port()))):
                text = text.replace(name, value)
            self.assertNotIn("@", text, "every placeholder of the demo config is known")
            conf = os.path.join(prefix, "nginx.conf")
            with open(conf, "w") as f:
                f.write(text)
            proc = subprocess.run([NGINX, "-t", "-p", prefix + "/", "-c", conf,
                                   "-e", os.path.join(prefix, "error.log")],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60,
                                  env=NGINX_ENV)
            self.assertEqual(proc.returncode, 0,
                             "conf/demo.nginx.conf passes nginx -t:\n%s" % proc.stdout.decode())
        finally:
            shutil.rmtree(prefix, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
