"""Configuration reload on SIGHUP.

Each daemon's config names certificate and key files in the daemon's own folder, so a test
replaces what the files hold, or the config itself, and sends SIGHUP. The cases:

- a certificate and key replaced with new ones: new handshakes show the new certificate, a
  connection opened before the reload keeps working on the old one, and the old key process
  stops once that connection ends (both TLS stacks);
- a truncated certificate, a truncated key, a key that does not match its certificate and
  invalid TOML: the daemon keeps serving the old certificate, the log names the file, and
  --check-config on the same file exits non-zero;
- a listener added and one removed, while a kept listener serves clients all along, and a
  port moved from 127.0.0.1 to the wildcard address, which a reload cannot bind;
- a SoftHSM key: handshakes before and after the reload, one key process left, and no
  connection process with the module mapped;
- ten reloads in a row under light load, switching tls-backend: no process or descriptor
  leaks in the supervisor;
- a restart-only key changed, and SIGHUP during the drain;
- eight older generations each holding a connection, so nine key processes run as the key
  user under its RLIMIT_NPROC.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import ssl
import threading
import time
import unittest
from typing import Any, Mapping

import harness
import test_pkcs11

RELOADED_RE = r"reloaded: (\d+) listeners, (\d+) vhosts, key process pid (\d+) \(generation (\d+)\)"
RELOAD_END_RE = r"(reloaded: |reload failed: )"
KEY_TITLE = "cloister: key"


def certificate_fingerprint(port: int, servername: str = "www.example.test") -> str:
    """Return the SHA-256 fingerprint of the certificate a new handshake on port gets."""
    context = harness.tls_context()
    with socket.create_connection(("127.0.0.1", port), timeout=harness.DEFAULT_TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname=servername) as tls:
            return fingerprint_of(tls)


def fingerprint_of(tls: ssl.SSLSocket) -> str:
    return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


def pem_fingerprint(cert: harness.Cert) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.cert.read_text())).hexdigest()


def key_processes(daemon: harness.Daemon) -> list[harness.Process]:
    return [child for child in daemon.children() if child.title == KEY_TITLE]


def wait_for_key_processes(daemon: harness.Daemon, count: int) -> list[harness.Process]:
    children = daemon.wait_for_children(
        lambda found: sum(1 for child in found if child.title == KEY_TITLE) == count)
    return [child for child in children if child.title == KEY_TITLE]


def descriptor_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Site:
    """A daemon whose only vhost serves the certificate and key files site.pem and site.key
    in the daemon's folder, with listeners on ports the test chooses."""

    def __init__(self, cert: harness.Cert, backend: harness.Backend, tls_backend: str = "openssl",
                 ports: tuple[int, ...] = ()):
        self.backend = backend
        self.tls_backend = tls_backend
        self.ports = ports or (harness.free_port(),)
        self.extra: dict[str, Any] = {}
        self.daemon = harness.Daemon({})  # start() writes the document
        self.chain = self.daemon.folder / "site.pem"
        self.key = self.daemon.folder / "site.key"
        self.install(cert)

    @property
    def port(self) -> int:
        return self.ports[0]

    def install(self, cert: harness.Cert) -> None:
        """Copy cert's chain and key over site.pem and site.key."""
        shutil.copyfile(cert.chain, self.chain)
        shutil.copyfile(cert.key, self.key)
        self.chain.chmod(0o644)
        self.key.chmod(0o644)

    def document(self) -> dict[str, Any]:
        folder = self.daemon.folder
        vhosts = [{"server-names": ["www.example.test"], "default": True,
                   "backend": self.backend.address,
                   "certificate": [{"chain": str(folder / "site.pem"), "key": "site"}]}]
        document = harness.config([], [], tls_backend=self.tls_backend, **self.extra)
        document["key"] = [{"name": "site", "file": str(folder / "site.key")}]
        document["vhost"] = vhosts
        document["listener"] = [{"address": harness.format_address("127.0.0.1", port)}
                                for port in self.ports]
        return document

    def start(self) -> harness.Daemon:
        self.daemon.document = self.document()
        return self.daemon.start()

    def write(self, document: Mapping[str, Any] | str | None = None) -> None:
        """Write the config file again, from the current settings or as given."""
        harness.write_config(self.daemon.folder,
                             harness.with_sandbox(document or self.document(),
                                                  self.daemon.sandbox_users))

    def reload(self) -> str:
        """Send SIGHUP and return the log from the signal to the reload's result line."""
        mark = self.daemon.log_mark()
        os.kill(self.daemon.pid, signal.SIGHUP)
        match = self.daemon.wait_for_log(RELOAD_END_RE, since=mark, timeout=30)
        # The result line ends where the next line starts.
        end = self.daemon.log.find("\n", match.end())
        return self.daemon.log[mark:end if end >= 0 else None]

    def check_config(self) -> int:
        return harness.run_cloister("--config", self.daemon.config_path,
                                    "--check-config").returncode


class SiteTest(unittest.TestCase):
    """Starts a Site with an echo backend for each test; stop() checks a clean exit."""

    tls_backend = "openssl"

    def setUp(self):
        self.pki = harness.pki()
        self.backend = harness.EchoBackend().start()
        self.addCleanup(self.backend.stop)

    def start_site(self, cert: harness.Cert, **kwargs: Any) -> Site:
        site = Site(cert, self.backend, self.tls_backend, **kwargs)
        self.addCleanup(site.daemon.close)
        site.start()
        return site


class CertificateReplacedTest(SiteTest):
    def test_new_handshakes_get_the_new_certificate(self):
        old, new = self.pki.p256, self.pki.make_leaf(f"reload-new-{self.tls_backend}", "p256")
        site = self.start_site(old)
        daemon = site.daemon
        old_key_pid = wait_for_key_processes(daemon, 1)[0].pid
        self.assertEqual(certificate_fingerprint(site.port), pem_fingerprint(old))
        with harness.tls_connect(site.port) as held:
            held.sendall(b"before")
            self.assertEqual(held.recv(16), b"before")
            site.install(new)
            log = site.reload()
            self.assertRegex(log, "reload requested")
            self.assertRegex(log, RELOADED_RE.replace(r"(\d+) listeners", "1 listeners")
                             .replace(r"\(generation (\d+)\)", r"\(generation 2\)"))
            self.assertEqual(certificate_fingerprint(site.port), pem_fingerprint(new))
            # Two key processes while the held connection of generation 1 lives.
            pids = {child.pid for child in wait_for_key_processes(daemon, 2)}
            self.assertIn(old_key_pid, pids)
            held.sendall(b"after")
            self.assertEqual(held.recv(16), b"after")
            self.assertEqual(fingerprint_of(held), pem_fingerprint(old))
            mark = daemon.log_mark()
            held.unwrap()
        daemon.wait_for_log(rf"stopping key process {old_key_pid} of generation 1: its last "
                            rf"connection has ended", since=mark)
        daemon.wait_for_log(rf"key process {old_key_pid} of generation 1 stopped", since=mark)
        remaining = wait_for_key_processes(daemon, 1)
        self.assertNotEqual(remaining[0].pid, old_key_pid)
        self.assertEqual(certificate_fingerprint(site.port), pem_fingerprint(new))
        daemon.stop()


class OldKeyProcessTest(SiteTest):
    def test_old_key_process_death_restarts_nothing(self):
        site = self.start_site(self.pki.p256)
        daemon = site.daemon
        old_key_pid = wait_for_key_processes(daemon, 1)[0].pid
        with harness.tls_connect(site.port) as held:
            held.sendall(b"one")
            self.assertEqual(held.recv(16), b"one")
            reloaded = re.search(RELOADED_RE, site.reload())
            self.assertIsNotNone(reloaded)
            new_key_pid = int(reloaded.group(3))
            mark = daemon.log_mark()
            os.kill(old_key_pid, signal.SIGKILL)
            daemon.wait_for_log(rf"key process {old_key_pid} of generation 1 exited \(signal 9 "
                                rf"\(SIGKILL\)\) with 1 connection processes of its generation "
                                rf"left", since=mark)
            # The established connection needs no key operation.
            held.sendall(b"two")
            self.assertEqual(held.recv(16), b"two")
            held.unwrap()
        self.assertEqual(certificate_fingerprint(site.port), pem_fingerprint(self.pki.p256))
        self.assertEqual([p.pid for p in wait_for_key_processes(daemon, 1)], [new_key_pid])
        self.assertNotIn("restarting", daemon.log[mark:])
        daemon.stop()


class BotanCertificateReplacedTest(CertificateReplacedTest):
    tls_backend = "botan"


class BadReloadTest(SiteTest):
    """Each broken file fails the reload; the old certificate keeps serving, and the same
    file fixed again reloads."""

    def setUp(self):
        super().setUp()
        self.site = self.start_site(self.pki.p256)
        self.old = pem_fingerprint(self.pki.p256)

    def assert_reload_fails(self, names: str) -> str:
        site = self.site
        log = site.reload()
        self.assertRegex(log, r"reload failed: .*; keeping the configuration loaded at "
                              r"\S+ \(generation 1\)")
        self.assertIn(names, log)
        self.assertTrue(site.daemon.running)
        self.assertEqual(certificate_fingerprint(site.port), self.old)
        # The temporary key process of the failed check is gone.
        wait_for_key_processes(site.daemon, 1)
        self.assertNotEqual(site.check_config(), 0)
        return log

    def restore_and_reload(self) -> None:
        self.site.install(self.pki.p256)
        self.site.write()
        self.assertRegex(self.site.reload(), RELOADED_RE)
        self.assertEqual(certificate_fingerprint(self.site.port), self.old)
        self.site.daemon.stop()

    def test_truncated_certificate(self):
        text = self.site.chain.read_bytes()
        self.site.chain.write_bytes(text[:100])
        self.assert_reload_fails(str(self.site.chain))
        self.restore_and_reload()

    def test_truncated_key(self):
        text = self.site.key.read_bytes()
        self.site.key.write_bytes(text[:100])
        log = self.assert_reload_fails(str(self.site.key))
        self.assertIn("a key could not be loaded", log)
        self.restore_and_reload()

    def test_key_that_does_not_match(self):
        shutil.copyfile(self.pki.make_leaf("reload-other", "p256").key, self.site.key)
        log = self.assert_reload_fails(str(self.site.chain))
        self.assertIn("does not match", log)
        self.restore_and_reload()

    def test_invalid_toml(self):
        self.site.write("[[listener]\naddress = \n")
        self.assert_reload_fails(str(self.site.daemon.config_path))
        self.restore_and_reload()

    def test_restart_only_key(self):
        self.site.extra = {"sandbox": {"seccomp": "log"}}
        self.site.write()
        log = self.site.reload()
        self.assertRegex(log, r'reload failed: \[sandbox\] seccomp changed from "enforce" to '
                              r'"log" \(.*\); a restart applies it')
        self.assertTrue(self.site.daemon.running)
        self.assertEqual(certificate_fingerprint(self.site.port), self.old)
        self.site.extra = {}
        self.restore_and_reload()


class LoadThread(threading.Thread):
    """Makes TLS requests through an echo backend until stopped; counts the failures."""

    def __init__(self, port: int, pause: float = 0.05):
        super().__init__(daemon=True)
        self.port = port
        self.pause = pause
        self.done = threading.Event()
        self.requests = 0
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.done.is_set():
            try:
                with harness.tls_connect(self.port) as tls:
                    tls.sendall(b"ping")
                    if tls.recv(16) != b"ping":
                        self.failures.append("wrong echo")
                    tls.unwrap()
                self.requests += 1
            except (OSError, ssl.SSLError) as error:
                self.failures.append(repr(error))
            time.sleep(self.pause)

    def finish(self) -> None:
        self.done.set()
        self.join(timeout=30)


class ListenersTest(SiteTest):
    def test_added_and_removed_listeners(self):
        kept, removed, added = (harness.free_port() for _ in range(3))
        site = self.start_site(self.pki.p256, ports=(kept, removed))
        load = LoadThread(kept)
        load.start()
        self.addCleanup(load.finish)
        with harness.tls_connect(kept) as held:
            held.sendall(b"one")
            self.assertEqual(held.recv(16), b"one")
            site.ports = (kept, added)
            site.write()
            log = site.reload()
            self.assertRegex(log, r"reloaded: 2 listeners, 1 vhosts")
            self.assertIn(f"listening on 127.0.0.1:{added}", log)
            self.assertIn(f"closed listener 127.0.0.1:{removed}", log)
            held.sendall(b"two")
            self.assertEqual(held.recv(16), b"two")
            held.unwrap()
        self.assertEqual(certificate_fingerprint(added), pem_fingerprint(self.pki.p256))
        # Spares of generation 1 hold the removed socket until they retire.
        deadline = time.monotonic() + harness.DEFAULT_TIMEOUT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", removed), timeout=5):
                    pass
            except ConnectionRefusedError:
                break
            self.assertLess(time.monotonic(), deadline, f"port {removed} still accepts")
            time.sleep(0.1)
        time.sleep(0.5)
        load.finish()
        self.assertEqual(load.failures, [])
        self.assertGreater(load.requests, 5)
        site.daemon.stop()

    def test_bind_failure_keeps_the_old_listeners(self):
        site = self.start_site(self.pki.p256)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = taken.getsockname()[1]
            site.ports = (site.port, busy)
            site.write()
            log = site.reload()
        self.assertRegex(log, rf"reload failed: .*listener\[1\]\.address: .*127\.0\.0\.1:{busy}")
        self.assertEqual(certificate_fingerprint(site.port), pem_fingerprint(self.pki.p256))
        wait_for_key_processes(site.daemon, 1)
        site.daemon.stop()


    def test_wildcard_on_a_listening_port_names_the_listener(self):
        site = self.start_site(self.pki.p256)
        port = site.port
        document = site.document()
        # The bind fails while 127.0.0.1 listens on the port, so no socket opens on 0.0.0.0.
        document["listener"] = [{"address": f"0.0.0.0:{port}"}]
        site.write(document)
        log = site.reload()
        self.assertIn(f"listener[0].address: 0.0.0.0:{port} overlaps 127.0.0.1:{port}, where "
                      f"cloister listens", log)
        self.assertIn("restart cloister to apply this change", log)
        self.assertNotIn("stop the program that uses this address", log)
        self.assertEqual(certificate_fingerprint(port), pem_fingerprint(self.pki.p256))
        wait_for_key_processes(site.daemon, 1)
        site.daemon.stop()


class RepeatedReloadTest(SiteTest):
    def test_ten_reloads_under_load_leak_nothing(self):
        site = self.start_site(self.pki.p256)
        daemon = site.daemon
        wait_for_key_processes(daemon, 1)
        daemon.wait_for_children(lambda found: len(found) == 3)  # the key process, 2 spares
        descriptors = descriptor_count(daemon.pid)
        load = LoadThread(site.port)
        load.start()
        self.addCleanup(load.finish)
        for generation in range(2, 12):
            # Alternates the TLS stack: Botan serves TLS 1.2 only.
            site.tls_backend = "botan" if generation % 2 == 0 else "openssl"
            site.write()
            self.assertRegex(site.reload(), rf"\(generation {generation}\)")
            with harness.tls_connect(site.port) as tls:
                expected = "TLSv1.2" if site.tls_backend == "botan" else "TLSv1.3"
                self.assertEqual(tls.version(), expected)
            time.sleep(0.2)
        load.finish()
        self.assertEqual(load.failures, [])
        wait_for_key_processes(daemon, 1)
        daemon.wait_for_children(lambda found: len(found) == 3)
        self.assertEqual(descriptor_count(daemon.pid), descriptors,
                         os.listdir(f"/proc/{daemon.pid}/fd"))
        daemon.assert_no_zombies()
        daemon.stop()


class DrainingGenerationsTest(SiteTest):
    def test_eight_generations_keep_a_connection_each(self):
        """Nine key processes run as the key user at once: the current one and those of eight
        older generations, each serving one held connection."""
        site = self.start_site(self.pki.p256)
        daemon = site.daemon
        held: list[ssl.SSLSocket] = []
        try:
            for generation in range(2, 10):
                connection = harness.tls_connect(site.port)
                held.append(connection)
                connection.sendall(b"hold")
                self.assertEqual(connection.recv(16), b"hold")
                self.assertRegex(site.reload(), rf"\(generation {generation}\)")
                self.assertEqual(certificate_fingerprint(site.port),
                                 pem_fingerprint(self.pki.p256))
            wait_for_key_processes(daemon, 9)
            for number, connection in enumerate(held):
                connection.sendall(b"still")
                self.assertEqual(connection.recv(16), b"still", f"connection {number}")
            self.assertIn("8 older generations still serve connections, the maximum",
                          site.reload())
        finally:
            for connection in held:
                connection.close()
        self.assertNotIn("starting key process worker threads failed", daemon.log)
        self.assertNotRegex(daemon.log, r"key process \d+ exited \(status \d+\); restarting")
        daemon.stop()


class DrainTest(SiteTest):
    def test_sighup_during_the_drain_is_ignored(self):
        site = self.start_site(self.pki.p256)
        daemon = site.daemon
        with harness.tls_connect(site.port) as held:
            held.sendall(b"x")
            self.assertEqual(held.recv(16), b"x")
            mark = daemon.log_mark()
            os.kill(daemon.pid, signal.SIGTERM)
            daemon.wait_for_log("draining 1 connections", since=mark)
            os.kill(daemon.pid, signal.SIGHUP)
            daemon.wait_for_log("SIGHUP received during the drain; ignoring the reload request",
                                since=mark)
            held.sendall(b"y")
            self.assertEqual(held.recv(16), b"y")
            held.unwrap()
        self.assertEqual(daemon.process.wait(timeout=harness.STOP_TIMEOUT), 0)
        self.assertNotIn("reload requested", daemon.log[mark:])


class TokenReloadTest(unittest.TestCase):
    """A key in SoftHSM: each generation's key process loads the module after its own fork."""

    tls_backend = "openssl"

    def test_handshakes_across_a_reload(self):
        reason = test_pkcs11.missing_tools()
        self.assertIsNone(reason, reason)
        pki = harness.pki()
        token = test_pkcs11.Token(f"reload-{self.tls_backend}")
        self.addCleanup(shutil.rmtree, token.folder, True)
        backend = harness.HttpBackend(test_pkcs11.HTTP_BODY).start()
        self.addCleanup(backend.stop)
        document = test_pkcs11.token_config(
            [harness.vhost(["www.example.test"], backend, pki.p256, default=True)],
            [token.key_for(pki.p256)], server={"tls-backend": self.tls_backend})
        with test_pkcs11.environment(token.environment), harness.Daemon(document) as daemon:
            old_key_pid = wait_for_key_processes(daemon, 1)[0].pid
            version = "1.2" if self.tls_backend == "botan" else "1.3"
            for _ in range(20):
                result = test_pkcs11.handshake(daemon, version=version)
                self.assertEqual(result.returncode, 0, result.describe())
            mark = daemon.log_mark()
            os.kill(daemon.pid, signal.SIGHUP)
            daemon.wait_for_log(RELOADED_RE, since=mark, timeout=30)
            for _ in range(20):
                result = test_pkcs11.handshake(daemon, version=version)
                self.assertEqual(result.returncode, 0, result.describe())
            daemon.wait_for_log(rf"key process {old_key_pid} of generation 1 stopped",
                                since=mark)
            new_key_pid = wait_for_key_processes(daemon, 1)[0].pid
            self.assertNotEqual(new_key_pid, old_key_pid)
            module = test_pkcs11.SOFTHSM_MODULE.name
            self.assertIn(module, test_pkcs11.mapped_files(new_key_pid))
            others = [daemon.pid] + [p.pid for p in daemon.processes() if p.pid != new_key_pid]
            self.assertGreaterEqual(len(others), 3, "expected the supervisor and two spares")
            for pid in others:
                self.assertNotIn(module, test_pkcs11.mapped_files(pid), f"process {pid}")


class BotanTokenReloadTest(TokenReloadTest):
    tls_backend = "botan"


if __name__ == "__main__":
    unittest.main()
