"""The Debian packages of scripts/package, installed for real.

Runs only when asked: API_KEY_TEST_PACKAGE=1 (``scripts/package --test``
builds the packages and then runs this file). Otherwise every test is
skipped, because the test changes the machine: it installs
libnginx-mod-http-api-key and apikeyctl from build/deb/ (or
$API_KEY_DEB_DIR) into this system's dpkg with ``dpkg -i``, and removes and
purges them again at the end, whatever happened. That is meant for a
throw-away machine such as CI's, where nginx is already installed by the
project's setup; it needs root, and refuses to run if either package was
installed before (it would remove it). A scratch ``dpkg --root`` would
leave the system alone, but it needs a whole Debian system in that root to
run the maintainer scripts (debootstrap, which needs the network), and the
maintainer scripts (dh_nginx's modules-enabled link) are what is tested.

The system nginx service is never touched: every nginx here runs from a
private prefix and configuration (``nginx -p P -c P/nginx.conf``) that
includes /etc/nginx/modules-enabled/*.conf, so the module is loaded the way
the package enables it, never by a load_module of the test's own. (The
packages' postinst raises dpkg's nginx-reload trigger, as every Debian nginx
module does; nginx's own postinst reloads the service only if it runs.)

What it proves:
  * control data: the module package Depends on the exact nginx-abi-* that
    the installed nginx Provides, and on libyaml-cpp0.7 (dh_shlibdeps);
  * files: the .so in /usr/lib/nginx/modules, the modules-available snippet,
    the modules-enabled link made by postinst, apikeyctl and its man page;
  * nginx -t passes with the module enabled by the package (private config,
    and the system's own /etc/nginx/nginx.conf if it passed before);
  * a server using the module (api_key_zone, api_key; key file made by the
    packaged apikeyctl) answers 401 without a key and 200 with it;
  * dpkg -r removes the module and its link, nginx -t still passes, and a
    configuration using the module's directives now fails (so it was the
    package that loaded it); dpkg -P leaves nothing in modules-enabled.
"""

import glob
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

T_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(T_DIR)
DEB_DIR = os.path.abspath(os.environ.get("API_KEY_DEB_DIR", os.path.join(REPO, "build", "deb")))
ASKED = os.environ.get("API_KEY_TEST_PACKAGE") == "1"
NGINX = "/usr/sbin/nginx"
MODULE_PKG = "libnginx-mod-http-api-key"
CLI_PKG = "apikeyctl"
MODULE_SO = "/usr/lib/nginx/modules/ngx_http_api_key_module.so"
SNIPPET = "/usr/share/nginx/modules-available/mod-http-api-key.conf"
ENABLED = "/etc/nginx/modules-enabled/50-mod-http-api-key.conf"
# nginx reads $NGINX as inherited sockets: never pass it on.
ENV = {k: v for k, v in os.environ.items() if k != "NGINX"}


def run(*cmd, check=False, input=None, timeout=120):
    p = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       input=input, timeout=timeout, env=ENV, text=True)
    if check and p.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s%s" % (" ".join(cmd), p.returncode,
                                                       p.stdout, p.stderr))
    return p


def installed(pkg):
    p = run("dpkg-query", "-W", "-f=${db:Status-Status}", pkg)
    return p.returncode == 0 and p.stdout.strip() not in ("", "not-installed")


def deb(pkg):
    found = sorted(glob.glob(os.path.join(DEB_DIR, "%s_*.deb" % pkg)))
    if len(found) != 1:
        raise AssertionError("expected one %s_*.deb in %s, found %s (run scripts/package)"
                             % (pkg, DEB_DIR, found or "none"))
    return found[0]


def field(debfile, name):
    return run("dpkg-deb", "-f", debfile, name, check=True).stdout.strip()


def depends_names(value):
    """Package names of a Depends value: 'a (>= 1), b | c' -> {'a', 'b', 'c'}."""
    names = set()
    for clause in value.split(","):
        for alt in clause.split("|"):
            alt = alt.strip()
            if alt:
                names.add(alt.split()[0].split(":")[0])
    return names


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0fs waiting for %s" % (timeout, what))
        time.sleep(0.05)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purpose
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class PrivateNginx:
    """nginx in its own prefix; the main context includes the system's
    modules-enabled and never loads a module itself."""

    def __init__(self):
        self.prefix = tempfile.mkdtemp(prefix="apikey-package-", dir="/tmp")
        os.chmod(self.prefix, 0o755)
        self.port = free_port()
        self.conf = os.path.join(self.prefix, "nginx.conf")
        self.error_log = os.path.join(self.prefix, "error.log")
        self.pid_file = os.path.join(self.prefix, "nginx.pid")
        self.keys = os.path.join(self.prefix, "keys.yaml")
        self.pid = None
        os.makedirs(os.path.join(self.prefix, "html"))
        # Debian's snippets say "load_module modules/X.so": relative to the
        # prefix, which is /usr/share/nginx, whose modules/ is this link.
        os.symlink("/usr/lib/nginx/modules", os.path.join(self.prefix, "modules"))
        with open(os.path.join(self.prefix, "html", "index.html"), "w") as f:
            f.write("behind the key\n")

    def write(self, http_body=""):
        p = self.prefix
        with open(self.conf, "w") as f:
            f.write(
                "include /etc/nginx/modules-enabled/*.conf;\n"
                "%s"
                "worker_processes 1;\n"
                "pid %s/nginx.pid;\n"
                "error_log %s info;\n"
                "events { worker_connections 64; }\n"
                "http {\n"
                "    access_log %s/access.log;\n"
                "    client_body_temp_path %s/client_body_temp;\n"
                "    proxy_temp_path %s/proxy_temp;\n"
                "    fastcgi_temp_path %s/fastcgi_temp;\n"
                "    uwsgi_temp_path %s/uwsgi_temp;\n"
                "    scgi_temp_path %s/scgi_temp;\n"
                "%s"
                "}\n" % ("user root;\n" if os.geteuid() == 0 else "", p, self.error_log,
                         p, p, p, p, p, p, http_body))

    def write_protected(self):
        self.write(
            "    api_key_zone pkgkeys:1m file=%s;\n"
            "    server {\n"
            "        listen 127.0.0.1:%d;\n"
            "        root %s/html;\n"
            "        location / {\n"
            "            api_key pkgkeys;\n"
            "        }\n"
            "    }\n" % (self.keys, self.port, self.prefix))

    def nginx(self, *args):
        return run(NGINX, "-p", self.prefix + "/", "-c", self.conf, "-e", self.error_log,
                   *args)

    def test_config(self):
        return self.nginx("-t")

    def start(self):
        p = self.nginx()
        if p.returncode != 0:
            raise AssertionError("nginx did not start:\n%s%s" % (p.stdout, p.stderr))
        wait_until(lambda: os.path.exists(self.pid_file), 15, "the nginx pid file")
        with open(self.pid_file) as f:
            self.pid = int(f.read().strip())

        def listening():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_until(listening, 15, "nginx on 127.0.0.1:%d" % self.port)

    def get(self, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            c.request("GET", "/", headers=headers or {})
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def stop(self):
        if self.pid and pid_alive(self.pid):
            os.kill(self.pid, signal.SIGQUIT)
            try:
                wait_until(lambda: not pid_alive(self.pid), 15, "nginx to exit")
            except AssertionError:
                os.kill(self.pid, signal.SIGKILL)
        self.pid = None

    def log_problems(self):
        try:
            with open(self.error_log, errors="replace") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        return [l for l in lines
                if "[emerg]" in l or "[crit]" in l or "exited on signal" in l
                or ("[alert]" in l and "api_key" in l)]

    def cleanup(self):
        self.stop()
        if os.environ.get("KEEP") == "1":
            print("KEEP=1: prefix kept at %s" % self.prefix)
        else:
            shutil.rmtree(self.prefix, ignore_errors=True)


@unittest.skipUnless(ASKED, "installs packages into this system's dpkg: set "
                     "API_KEY_TEST_PACKAGE=1 (scripts/package --test)")
class PackageTest(unittest.TestCase):
    """One install for the class; the numbered tests run in order, the last
    one removes and purges. tearDownClass purges whatever is left."""

    @classmethod
    def setUpClass(cls):
        cls.nginx = None
        if os.geteuid() != 0:
            raise unittest.SkipTest("installing packages needs root")
        cls.module_deb, cls.cli_deb = deb(MODULE_PKG), deb(CLI_PKG)
        for pkg in (MODULE_PKG, CLI_PKG):
            if installed(pkg):
                raise AssertionError("%s is already installed on this system; this test "
                                     "would remove it: dpkg -P it first" % pkg)
        # The system configuration's nginx -t before the install, to compare.
        cls.system_t_before = run(NGINX, "-t", "-q").returncode == 0
        cls.install = run("dpkg", "-i", cls.module_deb, cls.cli_deb)
        if cls.install.returncode != 0:
            cls._purge()
            raise AssertionError("dpkg -i failed:\n%s%s" % (cls.install.stdout,
                                                           cls.install.stderr))
        cls.nginx = PrivateNginx()

    @classmethod
    def tearDownClass(cls):
        if cls.nginx is not None:
            cls.nginx.cleanup()
        cls._purge()

    @staticmethod
    def _purge():
        for pkg in (MODULE_PKG, CLI_PKG):
            if installed(pkg):
                run("dpkg", "-P", pkg)

    def test_1_control(self):
        depends = field(self.module_deb, "Depends")
        abi = [d for d in depends_names(depends) if d.startswith("nginx-abi-")]
        provides = run("dpkg-query", "-W", "-f=${Provides}", "nginx", check=True).stdout
        self.assertEqual(len(abi), 1, "the module Depends on exactly one nginx ABI: %s"
                         % depends)
        self.assertIn(abi[0], depends_names(provides),
                      "the ABI the module was built for is the installed nginx's (%s)"
                      % provides)
        self.assertIn("libyaml-cpp0.7", depends_names(depends),
                      "dh_shlibdeps found the yaml-cpp runtime the module links")
        self.assertIn("libssl3", depends_names(depends), "and libcrypto's package")
        cli_depends = depends_names(field(self.cli_deb, "Depends"))
        self.assertIn("libyaml-cpp0.7", cli_depends, "apikeyctl Depends on yaml-cpp too")
        self.assertIn("libhiredis0.14", cli_depends,
                      "and on hiredis (publish and revoke --publish talk to Redis)")
        self.assertEqual(field(self.module_deb, "Version"), field(self.cli_deb, "Version"),
                         "both packages carry the one version of debian/changelog")

    def test_2_files(self):
        self.assertTrue(os.path.isfile(MODULE_SO), "the .so is in nginx's module directory")
        with open(SNIPPET) as f:
            self.assertEqual(f.read().strip(),
                             "load_module modules/ngx_http_api_key_module.so;",
                             "dh_nginx wrote the modules-available snippet")
        self.assertTrue(os.path.islink(ENABLED), "postinst enabled the module")
        self.assertEqual(os.readlink(ENABLED), SNIPPET, "the link points at the snippet")
        self.assertTrue(os.access("/usr/bin/apikeyctl", os.X_OK), "apikeyctl is installed")
        self.assertTrue(os.path.isfile("/usr/share/man/man1/apikeyctl.1.gz"),
                        "with its man page")
        p = run("/usr/bin/apikeyctl", "--help")
        self.assertEqual(p.returncode, 0, "apikeyctl runs: " + p.stderr)
        self.assertIn("Usage: apikeyctl", p.stdout)

    def test_3_nginx_t(self):
        self.nginx.write()
        p = self.nginx.test_config()
        self.assertEqual(p.returncode, 0, "nginx -t with the package's modules-enabled:\n"
                         + p.stderr)
        if self.system_t_before:
            p = run(NGINX, "-t", "-q")
            self.assertEqual(p.returncode, 0, "the system's nginx.conf still passes "
                             "nginx -t with the module enabled:\n" + p.stderr)

    def test_4_serves(self):
        n = self.nginx
        p = run("/usr/bin/apikeyctl", "-f", n.keys, "create", "--owner", "package_test",
                "--scope", "any:read", check=True)
        key = p.stdout.strip()
        self.assertTrue(key, "the packaged apikeyctl printed a key")
        run("/usr/bin/apikeyctl", "-f", n.keys, "check", check=True)
        n.write_protected()
        p = n.test_config()
        self.assertEqual(p.returncode, 0, "nginx -t of a config that uses the module:\n"
                         + p.stderr)
        n.start()
        try:
            status, headers, body = n.get()
            self.assertEqual(status, 401, "no key: 401")
            self.assertEqual(json.loads(body)["error"]["code"], "missing_api_key",
                             "the module's JSON envelope: %r" % body)
            status, _, _ = n.get({"Authorization": "Bearer " + key[:-1] + "x"})
            self.assertEqual(status, 401, "a wrong key: 401")
            status, _, body = n.get({"Authorization": "Bearer " + key})
            self.assertEqual((status, body), (200, b"behind the key\n"),
                             "the key from apikeyctl: 200 and the file")
        finally:
            n.stop()
        self.assertEqual(n.log_problems(), [], "no [emerg], [crit] or crash in error.log")

    def test_5_remove(self):
        n = self.nginx
        p = run("dpkg", "-r", MODULE_PKG, CLI_PKG)
        self.assertEqual(p.returncode, 0, "dpkg -r:\n" + p.stdout + p.stderr)
        self.assertFalse(os.path.exists(MODULE_SO), "the .so is gone")
        self.assertFalse(os.path.lexists(ENABLED), "the modules-enabled link is gone")
        self.assertFalse(os.path.exists("/usr/bin/apikeyctl"), "apikeyctl is gone")
        n.write()
        p = n.test_config()
        self.assertEqual(p.returncode, 0, "nginx -t passes without the module:\n" + p.stderr)
        if self.system_t_before:
            p = run(NGINX, "-t", "-q")
            self.assertEqual(p.returncode, 0, "and so does the system's nginx.conf:\n"
                             + p.stderr)
        n.write_protected()
        p = n.test_config()
        self.assertNotEqual(p.returncode, 0, "the module's directives are unknown now")
        self.assertIn('unknown directive "api_key_zone"', p.stderr)

        p = run("dpkg", "-P", MODULE_PKG, CLI_PKG)
        self.assertEqual(p.returncode, 0, "dpkg -P:\n" + p.stdout + p.stderr)
        leftovers = [f for f in os.listdir("/etc/nginx/modules-enabled")
                     if "api-key" in f]
        self.assertEqual(leftovers, [], "purge leaves nothing in modules-enabled")
        self.assertFalse(installed(MODULE_PKG) or installed(CLI_PKG), "both are purged")


if __name__ == "__main__":
    unittest.main()
