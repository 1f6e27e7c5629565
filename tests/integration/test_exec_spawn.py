"""Connection processes started with fork and fexecve (spawn = "exec").

The handshake matrix and the TLS 1.3 client cases run on both stacks with exec'd connection
processes, one set also without network. The other classes read a spare's executable and
memory from /proc, compare a marker that only the supervisor's memory contains between a fork-mode
and an exec-mode spare, serve connections after the key files are gone, and change a
certificate file without a reload.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
import unittest
from pathlib import Path

import harness
import sandbox_users
import test_backends
import test_handshakes
import test_memory_scan

ROOT_ONLY = unittest.skipUnless(sandbox_users.running_as_root(),
                                "reading /proc/PID/mem of a sandboxed process needs root")
EXEC = {"spawn": "exec"}
EXEC_NO_NETWORK = {"spawn": "exec", "connection-network": "none"}
SPARE_TITLE = "cloister: connection (spare)"
CHANGED_RE = re.compile(r"or a certificate file it names changed since the supervisor loaded "
                        r"them .* reload the configuration \(SIGHUP\) or restart cloister")

# Set before any daemon starts, so that every supervisor has it in its environment. A forked
# spare inherits the supervisor's memory and so the marker; an exec'd one must not.
MARKER = f"CLOISTER_EXEC_MARKER_{secrets.token_hex(16)}"
os.environ["CLOISTER_TEST_MARKER"] = MARKER


# ------------------------------------------------------------------------------------------
# The shared cases with exec'd connection processes


class ExecHandshakeMatrixTest(test_handshakes.HandshakeMatrixTest):
    sandbox_settings = EXEC


class ExecBotanHandshakeMatrixTest(test_backends.BotanHandshakeMatrixTest):
    sandbox_settings = EXEC


class ExecOpensslTls13ClientTest(test_backends.OpensslTls13ClientTest):
    sandbox_settings = EXEC


class ExecBotanTls13ClientTest(test_backends.BotanTls13ClientTest):
    sandbox_settings = EXEC


@ROOT_ONLY
class ExecNoNetworkHandshakeMatrixTest(test_handshakes.HandshakeMatrixTest):
    sandbox_settings = EXEC_NO_NETWORK


# ------------------------------------------------------------------------------------------
# Helpers


def spares(daemon: harness.Daemon) -> list[int]:
    children = daemon.wait_for_children(
        lambda found: any(p.title == SPARE_TITLE for p in found))
    return [p.pid for p in children if p.title == SPARE_TITLE]


def exec_daemon(pki, backend, spawn: str) -> harness.Daemon:
    document = harness.config(
        [harness.vhost(["www.example.test"], backend, pki.p256, pki.rsa, default=True)],
        [pki.p256, pki.rsa], sandbox={"spawn": spawn})
    return harness.Daemon(document)


def echo(daemon: harness.Daemon) -> None:
    with harness.tls_connect(daemon.port) as connection:
        connection.sendall(b"ping")
        if connection.recv(16) != b"ping":
            raise AssertionError("no echo through the backend")


# ------------------------------------------------------------------------------------------
# A fresh image


@ROOT_ONLY
class FreshImageTest(unittest.TestCase):
    """An exec'd spare runs the cloister binary and contains none of the supervisor's memory."""

    @classmethod
    def setUpClass(cls):
        pki = harness.pki()
        cls.backend = harness.EchoBackend().start()
        cls.addClassCleanup(cls.backend.stop)
        cls.exec_daemon = exec_daemon(pki, cls.backend, "exec")
        cls.addClassCleanup(cls.exec_daemon.close)
        cls.exec_daemon.start()
        cls.fork_daemon = exec_daemon(pki, cls.backend, "fork")
        cls.addClassCleanup(cls.fork_daemon.close)
        cls.fork_daemon.start()

    @classmethod
    def tearDownClass(cls):
        cls.exec_daemon.stop()
        cls.fork_daemon.stop()

    def test_executable_is_cloister(self):
        binary = os.path.realpath(harness.binary("CLOISTER_BIN", "cloister"))
        for pid in spares(self.exec_daemon):
            self.assertEqual(os.readlink(f"/proc/{pid}/exe"), binary)

    def test_supervisor_marker_only_in_forked_spare(self):
        patterns = {"marker": MARKER.encode()}
        # The supervisors hold the marker, so the scan can find it.
        self.assertEqual(test_memory_scan.scan_memory(self.exec_daemon.pid, patterns), {"marker"})
        self.assertEqual(test_memory_scan.scan_memory(spares(self.fork_daemon)[0], patterns),
                         {"marker"})
        for pid in spares(self.exec_daemon):
            self.assertEqual(test_memory_scan.scan_memory(pid, patterns), set())

    def test_exec_spare_serves_and_is_confined(self):
        echo(self.exec_daemon)
        pid = spares(self.exec_daemon)[0]
        status = Path(f"/proc/{pid}/status").read_text()
        self.assertRegex(status, r"Seccomp:\s+2")
        self.assertRegex(status, r"NoNewPrivs:\s+1")
        self.assertEqual(os.readlink(f"/proc/{pid}/root"), str(harness.empty_root()))
        self.assertIn('spawn = "exec": connection processes start from', self.exec_daemon.log)


# ------------------------------------------------------------------------------------------
# Files on disk


class ExecFilesTest(unittest.TestCase):
    """Key files that disappear and certificate files that change after the start."""

    def setUp(self):
        # A leaf of its own, so that the test may delete its key and change its chain.
        self.cert = harness.pki().make_leaf(f"exec-{secrets.token_hex(4)}", "p256")
        self.backend = harness.EchoBackend().start()
        self.addCleanup(self.backend.stop)
        document = harness.config(
            [harness.vhost(["www.example.test"], self.backend, self.cert, default=True)],
            [self.cert], sandbox=EXEC)
        self.daemon = harness.Daemon(document)
        self.addCleanup(self.daemon.close)
        self.daemon.start()
        # Exec'd spares load the files after the start line; both must have done so.
        self.daemon.wait_for_children(
            lambda found: sum(p.title == SPARE_TITLE for p in found) >= 2)

    def test_spares_never_read_keys(self):
        patterns = test_memory_scan.byte_orders(test_memory_scan.key_secrets(self.cert.key))
        # The key process loaded the key at start. Exec'd spares started after the file is
        # gone still serve, because they never open a key file.
        self.cert.key.unlink()
        for _ in range(4):
            echo(self.daemon)
        for pid in spares(self.daemon):
            self.assertEqual(test_memory_scan.scan_memory(pid, patterns), set())
        self.assertTrue(test_memory_scan.scan_memory(self.daemon.key_pid, patterns))
        self.daemon.stop()

    def test_changed_certificate_stops_new_spares(self):
        chain = self.cert.chain
        original = chain.read_bytes()
        mark = self.daemon.log_mark()
        chain.write_bytes(original + b"\n")
        # Each connection uses up a spare that started before the change; its replacement
        # reads the changed file and exits.
        for _ in range(2):
            echo(self.daemon)
        self.daemon.wait_for_log(CHANGED_RE, mark)
        time.sleep(3)
        log = self.daemon.log[mark:]
        exits = len(CHANGED_RE.findall(log))
        # Backoff from 100 ms, doubling: about 5 starts in 3 s, never a tight loop.
        self.assertLessEqual(exits, 8, log)
        self.assertIn("before it accepted a client; starting the next spare in", log)
        self.assertTrue(self.daemon.running)
        # The original file back: the digest matches again and new spares serve.
        chain.write_bytes(original)
        spares(self.daemon)
        echo(self.daemon)
        self.daemon.stop()


if __name__ == "__main__":
    unittest.main()
