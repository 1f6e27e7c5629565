"""The key process: restarted after SIGKILL under load, counting one signature per full
handshake and none for a resumed session, and reporting the latency of each signature.

The counters come from SIGUSR1 ("key process stats: ..."), read through harness.key_stats,
and the latency lines ("key operation stats: ...") through harness.key_operation_stats.
"""

import os
import re
import signal
import ssl
import threading
import time
import unittest
from pathlib import Path

import harness

HTTP_BODY = b"cloister key process backend\n"
KEY_TITLE = "cloister: key"


def zombie_children(pid):
    """Return the pids of pid's children in state Z, read from /proc/*/stat."""
    zombies = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in brackets may contain spaces, so split after its ")".
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] == "Z" and int(fields[1]) == pid:
            zombies.append(int(entry.name))
    return zombies


class HandshakeLoop(threading.Thread):
    """Runs HTTP requests over TLS one after another until stopped, recording each outcome
    as (monotonic start time, succeeded)."""

    def __init__(self, port, response):
        super().__init__(daemon=True)
        self.port = port
        self.response = response
        self.outcomes = []
        self.stopping = threading.Event()

    def run(self):
        request = harness.http_request("www.example.test")
        while not self.stopping.is_set():
            start = time.monotonic()
            try:
                data = harness.tls_request(self.port, request, timeout=10).data
                succeeded = data == self.response
            except (ssl.SSLError, OSError, TimeoutError):
                succeeded = False
            self.outcomes.append((start, succeeded))

    def stop(self):
        self.stopping.set()
        self.join(timeout=30)


class KeyProcessRestartTest(unittest.TestCase):
    """SIGKILL to the key process while handshakes run in a loop."""

    SPARES = 2

    def test_restart_after_sigkill_under_load(self):
        pki = harness.pki()
        with harness.HttpBackend(HTTP_BODY) as backend:
            document = harness.config(
                [harness.vhost(["www.example.test"], backend, pki.rsa, default=True)],
                [pki.rsa], limits={"spare-children": self.SPARES})
            with harness.Daemon(document) as daemon:
                self.check_restart(daemon, backend)

    def check_restart(self, daemon, backend):
        old_key = daemon.key_pid
        loop = HandshakeLoop(daemon.port, backend.response)
        loop.start()
        try:
            self.wait_for_successes(loop, 10)

            old_connections = {p.pid for p in daemon.children() if p.pid != old_key}
            mark = daemon.log_mark()
            os.kill(old_key, signal.SIGKILL)
            daemon.wait_for_log(
                re.compile(rf"key process {old_key} exited \(.*SIGKILL.*\); restarting"),
                since=mark)
            new_key = self.wait_for_new_key_process(daemon, old_key)
            # Spares attached to the dead key process exit, and busy ones finish.
            daemon.wait_for_children(
                lambda found: not old_connections & {p.pid for p in found})
            settled = time.monotonic()
            self.wait_for_successes(loop, sum(ok for _, ok in loop.outcomes) + 10)
        finally:
            loop.stop()

        # Every handshake that started once only the new key process's spares remained
        # succeeded. The ones in between may fail, because their key channel led nowhere.
        after = [ok for start, ok in loop.outcomes if start > settled]
        self.assertGreaterEqual(len(after), 10)
        self.assertEqual(after, [True] * len(after), daemon.log_since(mark))

        results = [self.one_request(daemon) for _ in range(20)]
        self.assertEqual(results, [backend.response] * 20, daemon.log_since(mark))
        self.assertNotEqual(new_key, old_key)
        self.assertEqual(zombie_children(daemon.pid), [])
        self.assertFalse(Path(f"/proc/{old_key}").exists(),
                         "the killed key process was not reaped")
        stats = daemon.key_stats()
        self.assertEqual(daemon.key_pid, new_key)
        self.assertGreaterEqual(stats["signatures"], 20, stats)

    def one_request(self, daemon):
        request = harness.http_request("www.example.test")
        return harness.tls_request(daemon.port, request).data

    def wait_for_successes(self, loop, count, timeout=30):
        deadline = time.monotonic() + timeout
        while sum(ok for _, ok in loop.outcomes) < count:
            self.assertLess(time.monotonic(), deadline, f"outcomes: {loop.outcomes[-20:]}")
            time.sleep(0.05)

    def wait_for_new_key_process(self, daemon, old_key):
        children = daemon.wait_for_children(
            lambda found: any(p.title == KEY_TITLE and p.pid != old_key for p in found))
        keys = [p.pid for p in children if p.title == KEY_TITLE]
        self.assertEqual(len(keys), 1, children)
        return keys[0]


class SignatureCountTest(unittest.TestCase):
    """One signature per full handshake, none per resumed one."""

    @classmethod
    def setUpClass(cls):
        pki = harness.pki()
        cls.backend = harness.HttpBackend(HTTP_BODY).start()
        cls.addClassCleanup(cls.backend.stop)
        vhosts = [
            harness.vhost(["www.example.test"], cls.backend, pki.p256, default=True),
            harness.vhost(["rsa.example.test"], cls.backend, pki.rsa),
        ]
        cls.daemon = harness.Daemon(harness.config(vhosts, [pki.p256, pki.rsa]))
        cls.addClassCleanup(cls.daemon.close)
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def tearDown(self):
        self.assertEqual(zombie_children(self.daemon.pid), [])

    def s_client(self, servername, version, extra=()):
        result = harness.s_client(self.daemon.port, servername=servername, version=version,
                                  request=harness.http_request(servername), extra=extra)
        details = result.describe()
        self.assertEqual(result.returncode, 0, details)
        self.assertEqual(result.stdout.count(self.backend.response), 1, details)
        return result

    def test_one_signature_per_full_handshake(self):
        before = self.daemon.key_stats()
        handshakes = [("www.example.test", "1.3"), ("www.example.test", "1.2"),
                      ("rsa.example.test", "1.3"), ("rsa.example.test", "1.2"),
                      ("www.example.test", "1.3")]
        for servername, version in handshakes:
            self.s_client(servername, version)
        for _ in range(3):
            self.assertEqual(harness.tls_request(
                self.daemon.port, harness.http_request("www.example.test")).data,
                self.backend.response)
        after = self.daemon.key_stats()
        self.assertEqual(after["signatures"] - before["signatures"], len(handshakes) + 3,
                         (before, after))
        self.assertEqual(after["refused"], before["refused"], (before, after))
        self.assertEqual(after["malformed"], before["malformed"], (before, after))

    def test_latency_stats_count_full_handshakes(self):
        self.daemon.key_operation_stats()  # starts a new period
        handshakes = 12
        for index in range(handshakes):
            self.s_client("www.example.test", "1.3" if index % 2 else "1.2")
        stats = self.daemon.key_operation_stats()
        p256 = stats[("p256", "sign")]
        self.assertEqual(int(p256["count"]), handshakes, p256)
        self.assertEqual(int(p256["failed"]), 0, p256)
        self.assertEqual(int(p256["refused"]), 0, p256)
        self.assertGreaterEqual(int(p256["total_count"]), handshakes, p256)
        harness.check_latency_quantiles(self, p256)
        harness.check_latency_quantiles(self, p256, "total_")
        for name in harness.QUANTILE_FIELDS:
            self.assertEqual(p256["token_" + name], "-", p256)
        # The RSA key signed nothing in this period, and RSA key exchange is off.
        rsa = stats[("rsa", "sign")]
        self.assertEqual(int(rsa["count"]), 0, rsa)
        self.assertEqual(rsa["p50_us"], "-", rsa)
        self.assertNotIn(("rsa", "decrypt"), stats)

    def test_resumed_tls12_session_costs_nothing(self):
        session_file = harness.run_dir() / "key-process-tls12.session"
        before = self.daemon.key_stats()
        mark = self.daemon.log_mark()
        full = self.s_client("www.example.test", "1.2", ["-sess_out", str(session_file)])
        self.assertEqual(full.protocol, "TLSv1.2", full.describe())
        middle = self.daemon.key_stats()
        resumed = self.s_client("www.example.test", "1.2", ["-sess_in", str(session_file)])
        self.assertRegex(resumed.text, r"(?m)^Reused, TLSv1\.2, Cipher is ", resumed.describe())
        after = self.daemon.key_stats()
        self.assertEqual(middle["signatures"] - before["signatures"], 1, (before, middle))
        self.assertEqual(after["signatures"], middle["signatures"], (middle, after))
        self.daemon.wait_for_record(mark, scheme="-")
        records = [r for r in self.daemon.connection_records(mark) if r.get("result") == "ok"]
        self.assertEqual([r.get("scheme") for r in records], ["ecdsa_secp256r1_sha256", "-"],
                         records)


if __name__ == "__main__":
    unittest.main()
