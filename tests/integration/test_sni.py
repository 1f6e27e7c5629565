"""Choosing a vhost from the SNI: exact and wildcard names, case, and the fallback policies.

Each vhost has its own certificate and its own backend body, so a test identifies the
vhost that served it twice: by the SHA-256 fingerprint of the leaf certificate that the
client received, and by the body that came back. docs/configuration.md ("Choosing a vhost
from SNI") is the specification.
"""

import hashlib
import re
import shutil
import ssl
import tempfile
import unittest
from pathlib import Path

import harness

EXACT_BODY = b"served by the exact vhost a.example.test\n"
WILDCARD_BODY = b"served by the wildcard vhost *.example.test\n"
DEFAULT_BODY = b"served by the default vhost www.example.test\n"
OTHER_BODY = b"served by the vhost other.example.test\n"
UNRECOGNIZED_NAME_ALERT = "SSL alert number 112"
_PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----\n.*?-----END CERTIFICATE-----\n?", re.DOTALL)


def fingerprint(pem_text):
    """Return the SHA-256 fingerprint (hex) of the first PEM certificate in pem_text."""
    der = ssl.PEM_cert_to_DER_cert(_PEM_CERTIFICATE.search(pem_text).group(0))
    return hashlib.sha256(der).hexdigest()


def served_fingerprint(result):
    """Return the fingerprint of the leaf that s_client -showcerts printed, or None."""
    match = _PEM_CERTIFICATE.search(result.text)
    return fingerprint(match.group(0)) if match else None


def leaf_fingerprint(cert):
    return fingerprint(cert.cert.read_text())


class VhostProbe:
    """Runs s_client against one daemon and checks, with ``test``'s asserts, which vhost
    served it: by certificate fingerprint, certificate subject, backend body and log record."""

    def __init__(self, test, daemon):
        self.test = test
        self.daemon = daemon

    def fetch(self, servername):
        """Run s_client with SNI ``servername`` (None: no SNI) and an HTTP request."""
        return harness.s_client(self.daemon.port, servername=servername, showcerts=True,
                                verify_error=False,
                                request=harness.http_request(servername or "127.0.0.1"))

    def served(self, servername, cert, backend, vhost_name):
        """Check that the vhost ``vhost_name``, with ``cert`` and ``backend``, served it."""
        test = self.test
        mark = self.daemon.log_mark()
        result = self.fetch(servername)
        details = result.describe() + self.daemon.log_since(mark)
        test.assertEqual(result.returncode, 0, details)
        test.assertEqual(served_fingerprint(result), leaf_fingerprint(cert), details)
        test.assertEqual(result.chain_subjects()[0], f"CN = {cert.subject}", details)
        test.assertEqual(result.stdout.count(backend.response), 1, details)
        record = self.daemon.wait_for_record(mark, result="ok")
        test.assertEqual(record.get("vhost"), vhost_name, record)
        return record

    def rejected(self, servername):
        """Check that the handshake ended with alert unrecognized_name and no certificate."""
        test = self.test
        mark = self.daemon.log_mark()
        result = self.fetch(servername)
        details = result.describe() + self.daemon.log_since(mark)
        test.assertNotEqual(result.returncode, 0, details)
        test.assertIn(UNRECOGNIZED_NAME_ALERT, result.text, details)
        test.assertIsNone(served_fingerprint(result), details)
        test.assertIsNone(result.protocol, details)
        record = self.daemon.wait_for_record(mark, result="handshake_failed")
        test.assertEqual(record.get("bytes_in"), "0", record)
        if servername is not None and not servername[0].isdigit():
            # The ClientHello was read, so the failed handshake still names its SNI.
            test.assertEqual(record.get("sni"), servername, record)


class ExactBeforeWildcardTest(unittest.TestCase):
    """An exact vhost a.example.test and a wildcard vhost *.example.test, each with its own
    certificate and backend; the wildcard vhost is the default."""

    @classmethod
    def setUpClass(cls):
        pki = harness.pki()
        cls.exact_cert = pki.make_leaf("sni-exact", "p256", sans=["a.example.test"])
        cls.wildcard_cert = pki.make_leaf("sni-wildcard", "p256", sans=["*.example.test"])
        cls.exact = harness.HttpBackend(EXACT_BODY).start()
        cls.addClassCleanup(cls.exact.stop)
        cls.wildcard = harness.HttpBackend(WILDCARD_BODY).start()
        cls.addClassCleanup(cls.wildcard.stop)
        vhosts = [
            harness.vhost(["*.example.test"], cls.wildcard, cls.wildcard_cert, default=True),
            harness.vhost(["a.example.test"], cls.exact, cls.exact_cert),
        ]
        document = harness.config(vhosts, [cls.exact_cert, cls.wildcard_cert])
        cls.daemon = harness.Daemon(document)
        cls.addClassCleanup(cls.daemon.close)
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def setUp(self):
        self.probe = VhostProbe(self, self.daemon)

    def tearDown(self):
        self.daemon.assert_no_zombies()

    def test_certificates_differ(self):
        self.assertNotEqual(leaf_fingerprint(self.exact_cert),
                            leaf_fingerprint(self.wildcard_cert))

    def test_exact_name(self):
        record = self.probe.served("a.example.test", self.exact_cert, self.exact,
                                   "a.example.test")
        self.assertEqual(record.get("sni"), "a.example.test", record)

    def test_exact_name_mixed_case(self):
        record = self.probe.served("A.Example.TEST", self.exact_cert, self.exact,
                                   "a.example.test")
        self.assertEqual(record.get("sni"), "A.Example.TEST", record)

    def test_wildcard_name_mixed_case(self):
        record = self.probe.served("Foo.EXAMPLE.test", self.wildcard_cert, self.wildcard,
                                   "*.example.test")
        self.assertEqual(record.get("sni"), "Foo.EXAMPLE.test", record)

    def test_wildcard_covers_one_label_only(self):
        # b.a.example.test matches no server name, so the default vhost serves it.
        self.probe.served("b.a.example.test", self.wildcard_cert, self.wildcard,
                          "*.example.test")


class SessionVhostBindingTest(unittest.TestCase):
    """A session made on one vhost resumes on that vhost only. Offered to another vhost, whose
    certificate differs, it leads to a full handshake that presents that vhost's certificate."""

    @classmethod
    def setUpClass(cls):
        pki = harness.pki()
        cls.cert_a = pki.make_leaf("resume-a", "p256", sans=["a.example.test"])
        cls.cert_b = pki.make_leaf("resume-b", "p256", sans=["b.example.test"])
        cls.backend_a = harness.HttpBackend(EXACT_BODY).start()
        cls.addClassCleanup(cls.backend_a.stop)
        cls.backend_b = harness.HttpBackend(OTHER_BODY).start()
        cls.addClassCleanup(cls.backend_b.stop)
        vhosts = [
            harness.vhost(["a.example.test"], cls.backend_a, cls.cert_a, default=True),
            harness.vhost(["b.example.test"], cls.backend_b, cls.cert_b),
        ]
        document = harness.config(vhosts, [cls.cert_a, cls.cert_b])
        cls.daemon = harness.Daemon(document)
        cls.addClassCleanup(cls.daemon.close)
        cls.daemon.start()
        cls.folder = Path(tempfile.mkdtemp(prefix="sessions-", dir=harness.run_dir()))
        cls.addClassCleanup(shutil.rmtree, cls.folder, ignore_errors=True)

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def connect(self, servername, version, *options):
        """Run s_client with SNI ``servername`` and the extra ``options``; return the result,
        its details for messages and the connection record."""
        mark = self.daemon.log_mark()
        result = harness.s_client(self.daemon.port, servername=servername, version=version,
                                  showcerts=True, extra=list(options),
                                  request=harness.http_request(servername))
        details = result.describe() + self.daemon.log_since(mark)
        self.assertEqual(result.returncode, 0, details)
        return result, details, self.daemon.wait_for_record(mark, sni=servername)

    def check_session_stays_on_its_vhost(self, version):
        session = self.folder / f"session-{version}.pem"
        made, details, _ = self.connect("a.example.test", version, "-sess_out", str(session))
        self.assertIn("New,", made.text, details)
        self.assertTrue(session.exists(), details)
        # The same vhost resumes, so the session file is usable.
        resumed, details, record = self.connect("a.example.test", version, "-sess_in",
                                                str(session))
        self.assertIn("Reused,", resumed.text, details)
        self.assertEqual(record.get("scheme"), "-", record)
        other, details, record = self.connect("b.example.test", version, "-sess_in",
                                              str(session))
        self.assertIn("New,", other.text, details)
        self.assertNotIn("Reused,", other.text, details)
        self.assertEqual(served_fingerprint(other), leaf_fingerprint(self.cert_b), details)
        self.assertEqual(other.stdout.count(self.backend_b.response), 1, details)
        self.assertEqual(record.get("vhost"), "b.example.test", record)
        self.assertNotEqual(record.get("scheme"), "-", record)

    def test_tls12_session_id_ticket_stays_on_its_vhost(self):
        self.check_session_stays_on_its_vhost("1.2")

    def test_tls13_ticket_stays_on_its_vhost(self):
        self.check_session_stays_on_its_vhost("1.3")


# The clients of the policy matrix that the fallback policies decide: (description, SNI).
UNMATCHED_CLIENTS = [
    ("no SNI", None),
    ("IP literal", "127.0.0.1"),
    ("unknown name", "unknown.example.test"),
]


class SniPolicyMatrixTest(unittest.TestCase):
    """Two vhosts, www.example.test (default) and other.example.test, with unknown-sni and
    missing-sni both "default" or both "reject"."""

    @classmethod
    def setUpClass(cls):
        pki = harness.pki()
        cls.default_cert = pki.rsa  # its SANs include www.example.test and IP 127.0.0.1
        cls.other_cert = pki.make_leaf("sni-other", "p256", sans=["other.example.test"])

    def start_daemon(self, policy):
        self.default_backend = self.start_backend(DEFAULT_BODY)
        self.other_backend = self.start_backend(OTHER_BODY)
        vhosts = [
            harness.vhost(["www.example.test"], self.default_backend, self.default_cert,
                          default=True),
            harness.vhost(["other.example.test"], self.other_backend, self.other_cert),
        ]
        document = harness.config(vhosts, [self.default_cert, self.other_cert],
                                  tls={"unknown-sni": policy, "missing-sni": policy})
        daemon = harness.Daemon(document)
        self.addCleanup(daemon.close)
        daemon.start()
        return daemon

    def start_backend(self, body):
        backend = harness.HttpBackend(body).start()
        self.addCleanup(backend.stop)
        return backend

    def check_named_vhosts(self, probe):
        """Names that a vhost serves get that vhost under either policy."""
        for name, cert, backend in [
                ("other.example.test", self.other_cert, self.other_backend),
                ("www.example.test", self.default_cert, self.default_backend)]:
            with self.subTest(sni=name):
                probe.served(name, cert, backend, name)

    def curl_without_sni(self, daemon):
        """Fetch https://127.0.0.1:PORT/, for which curl sends no SNI."""
        mark = daemon.log_mark()
        result = harness.curl(f"https://127.0.0.1:{daemon.port}/")
        details = result.stderr.decode(errors="replace") + daemon.log_since(mark)
        return mark, result, details

    def test_default_policy(self):
        daemon = self.start_daemon("default")
        probe = VhostProbe(self, daemon)
        for description, sni in UNMATCHED_CLIENTS:
            with self.subTest(client=description):
                probe.served(sni, self.default_cert, self.default_backend, "www.example.test")
        self.check_named_vhosts(probe)
        mark, result, details = self.curl_without_sni(daemon)
        self.assertEqual(result.returncode, 0, details)
        self.assertEqual(result.stdout, DEFAULT_BODY, details)
        record = daemon.wait_for_record(mark, result="ok")
        self.assertEqual(record.get("sni"), "-", record)
        self.assertEqual(record.get("vhost"), "www.example.test", record)
        daemon.assert_no_zombies()
        daemon.stop()

    def test_reject_policy(self):
        daemon = self.start_daemon("reject")
        probe = VhostProbe(self, daemon)
        for description, sni in UNMATCHED_CLIENTS:
            with self.subTest(client=description):
                probe.rejected(sni)
        self.check_named_vhosts(probe)
        connections = self.default_backend.connections
        mark, result, details = self.curl_without_sni(daemon)
        # 35 is CURLE_SSL_CONNECT_ERROR.
        self.assertEqual(result.returncode, 35, details)
        self.assertIn("unrecognized name", result.stderr.decode(errors="replace"), details)
        self.assertEqual(result.stdout, b"", details)
        self.assertEqual(self.default_backend.connections, connections)
        daemon.wait_for_log(r"rejected the handshake: the client sent no server name",
                            since=mark)
        daemon.wait_for_record(mark, result="handshake_failed")
        daemon.assert_no_zombies()
        daemon.stop()


if __name__ == "__main__":
    unittest.main()
