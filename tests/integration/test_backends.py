"""Both TLS stacks: the handshake matrix on Botan and the cases where the stacks must agree.

The shared cases are signature schemes, TLS 1.3 clients, vhost selection, SNI rejection and
ALPN, with Botan's own CLI as a fourth client. The Botan stack also gets its config checks,
bulk relay and a key-memory scan of a live connection process.

Each class that runs on both stacks starts one daemon per stack from the same config
dict, which differs only in [server] tls-backend.
"""

import re
import socket
import unittest
from pathlib import Path

import harness
import test_handshakes
import test_robustness

HTTP_BODY = b"cloister backends test backend\n"

# openssl s_client prints this for an alert it received.
ALERT_RE = re.compile(r"alert number (\d+)")


def alert_number(result):
    """Return the number of the alert that s_client received, or None."""
    match = ALERT_RE.search(result.text)
    return int(match.group(1)) if match else None


def alpn_of(result):
    """Return the protocol that s_client reports as agreed, or None."""
    match = re.search(r"^ALPN protocol: (\S+)$", result.text, re.MULTILINE)
    return match.group(1) if match else None


class BotanHandshakeMatrixTest(test_handshakes.HandshakeMatrixTest):
    """The handshake matrix of test_handshakes.py against the Botan stack.

    Cases that need TLS 1.3 or Ed25519 check what Botan 2.19 does instead.
    """

    tls_backend = "botan"
    serves_ed25519 = False

    def check_tls13_only_rejected(self, servername):
        """A client that offers TLS 1.3 only gets alert protocol_version (70)."""
        mark = self.daemon.log_mark()
        connections_before = self.backend.connections
        result = harness.s_client(self.daemon.port, servername=servername, version="1.3",
                                  request=harness.http_request(servername))
        details = result.describe() + self.daemon.log_since(mark)
        self.assertNotEqual(result.returncode, 0, details)
        self.assertIsNone(result.protocol, details)
        self.assertEqual(alert_number(result), 70, details)
        self.assertEqual(self.backend.connections, connections_before)
        self.daemon.wait_for_record(mark, result="handshake_failed")
        self.assertRegex(self.daemon.log[mark:],
                         r'reason="[^"]*\(sent alert protocol_version\); Botan 2\.19 speaks '
                         r'TLS 1\.2 only"')

    def test_rsa_tls13_pss(self):
        self.check_tls13_only_rejected("rsa.example.test")

    def test_p256_tls13(self):
        self.check_tls13_only_rejected("p256.example.test")

    def test_p384_tls13(self):
        self.check_tls13_only_rejected("p384.example.test")

    def test_ed25519_tls13(self):
        # The Botan stack rejects an Ed25519 certificate when the config is checked.
        pki = harness.pki()
        document = harness.config(
            [harness.vhost(["ed25519.example.test"], "127.0.0.1:9", pki.ed25519, default=True)],
            [pki.ed25519], tls_backend="botan")
        document["listener"] = [{"address": f"127.0.0.1:{harness.free_port()}"}]
        path = harness.write_config(Path(self.daemon.folder), document, "ed25519.toml")
        result = harness.run_cloister("--config", path, "--check-config")
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 2, output)
        self.assertIn("the key is Ed25519, and tls-backend \"botan\" (Botan 2.19) signs TLS "
                      "handshakes with RSA and ECDSA keys only", output)

    def test_ipv6_listener(self):
        if "::1" not in self.daemon.ports:
            self.skipTest("no IPv6 loopback address on this machine")
        mark = self.daemon.log_mark()
        result = harness.s_client(self.daemon.ports["::1"], host="::1",
                                  servername="p256.example.test",
                                  verify_hostname="p256.example.test",
                                  request=harness.http_request("p256.example.test"))
        details = result.describe() + self.daemon.log_since(mark)
        self.assertEqual(result.returncode, 0, details)
        self.assertEqual(result.protocol, "TLSv1.2", details)
        self.assertEqual(result.peer_signature_type, "ECDSA", details)
        self.assertEqual(result.stdout.count(self.backend.response), 1, details)


class StackTest(unittest.TestCase):
    """Base of the tests that run once per stack: one daemon for the class.

    A subclass names its stack in ``tls_backend`` and its config in ``document``. Each case
    is written once, in a mixin, and runs in one subclass per stack, so that only one daemon
    runs at a time.
    """

    tls_backend = "openssl"
    # [sandbox] settings added to the document; test_netless.py runs cases with other modes.
    sandbox_settings: dict = {}

    @classmethod
    def document(cls, pki, backend):
        raise NotImplementedError

    @classmethod
    def setUpClass(cls):
        pki = harness.pki()
        cls.backend = harness.HttpBackend(HTTP_BODY).start()
        cls.addClassCleanup(cls.backend.stop)
        document = cls.document(pki, cls.backend)
        document["sandbox"] = {**document.get("sandbox", {}), **cls.sandbox_settings}
        cls.daemon = harness.Daemon(document)
        cls.addClassCleanup(cls.daemon.close)
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()


class SignatureSchemeCases:
    """A TLS 1.2 client that offers one RSA signature scheme gets exactly that scheme."""

    @classmethod
    def document(cls, pki, backend):
        return harness.config([harness.vhost(["rsa.example.test"], backend, pki.rsa,
                                             default=True)],
                              [pki.rsa], tls_backend=cls.tls_backend)

    def check_scheme(self, sigalgs, signature_type, digest, scheme):
        mark = self.daemon.log_mark()
        result = harness.s_client(self.daemon.port, servername="rsa.example.test",
                                  version="1.2", sigalgs=sigalgs,
                                  request=harness.http_request("rsa.example.test"))
        details = result.describe() + self.daemon.log_since(mark)
        self.assertEqual(result.returncode, 0, details)
        self.assertEqual(result.peer_signature_type, signature_type, details)
        self.assertEqual(result.peer_signing_digest, digest, details)
        self.assertIn(HTTP_BODY, result.stdout, details)
        record = self.daemon.wait_for_record(mark, sni="rsa.example.test")
        self.assertEqual(record.get("scheme"), scheme, record)
        self.assertEqual(record.get("result"), "ok", record)

    def test_only_pss_sha256(self):
        self.check_scheme("rsa_pss_rsae_sha256", "RSA-PSS", "SHA256", "rsa_pss_rsae_sha256")

    def test_only_pkcs1_sha256(self):
        self.check_scheme("RSA+SHA256", "RSA", "SHA256", "rsa_pkcs1_sha256")

    def test_only_pss_sha512(self):
        self.check_scheme("rsa_pss_rsae_sha512", "RSA-PSS", "SHA512", "rsa_pss_rsae_sha512")

    def test_only_pkcs1_sha384(self):
        self.check_scheme("RSA+SHA384", "RSA", "SHA384", "rsa_pkcs1_sha384")


class OpensslSignatureSchemeTest(SignatureSchemeCases, StackTest):
    tls_backend = "openssl"


class BotanSignatureSchemeTest(SignatureSchemeCases, StackTest):
    tls_backend = "botan"


class Tls13ClientCases:
    """TLS 1.3 clients and SNI: the same vhosts on each stack."""

    # SNI as sent (None: no SNI) and the vhost that serves it, the same on both stacks.
    VHOST_CASES = [
        ("rsa.example.test", "rsa.example.test"),
        ("RSA.Example.TEST", "rsa.example.test"),
        ("p256.example.test", "p256.example.test"),
        ("p256.example.test.", "p256.example.test"),
        ("a.wild.example.test", "rsa.example.test"),
        ("a.b.wild.example.test", "rsa.example.test"),
        ("unknown.example.test", "rsa.example.test"),
        (None, "rsa.example.test"),
    ]

    @classmethod
    def document(cls, pki, backend):
        vhosts = [
            harness.vhost(["rsa.example.test", "*.wild.example.test"], backend, pki.rsa,
                          default=True, alpn=["http/1.1"]),
            harness.vhost(["p256.example.test"], backend, pki.p256, alpn=["h2", "http/1.1"]),
        ]
        return harness.config(vhosts, [pki.rsa, pki.p256], tls_backend=cls.tls_backend)

    def check_mixed_client(self, protocol):
        """A client offering TLS 1.3 and 1.2 gets protocol, with SNI, ALPN and its one
        signature scheme honoured."""
        mark = self.daemon.log_mark()
        result = harness.s_client(self.daemon.port, servername="rsa.example.test",
                                  verify_hostname="rsa.example.test",
                                  sigalgs="rsa_pss_rsae_sha384", extra=["-alpn", "h2,http/1.1"],
                                  request=harness.http_request("rsa.example.test"))
        details = result.describe() + self.daemon.log_since(mark)
        self.assertEqual(result.returncode, 0, details)
        self.assertEqual(result.protocol, protocol, details)
        self.assertEqual(alpn_of(result), "http/1.1", details)
        self.assertEqual(result.peer_signature_type, "RSA-PSS", details)
        self.assertEqual(result.peer_signing_digest, "SHA384", details)
        self.assertIn(HTTP_BODY, result.stdout, details)
        record = self.daemon.wait_for_record(mark, sni="rsa.example.test")
        self.assertEqual(record.get("vhost"), "rsa.example.test", record)
        self.assertEqual(record.get("protocol"), protocol, record)
        self.assertEqual(record.get("scheme"), "rsa_pss_rsae_sha384", record)
        self.assertEqual(record.get("alpn"), "http/1.1", record)

    def test_vhost_selection(self):
        for servername, vhost in self.VHOST_CASES:
            with self.subTest(servername=servername):
                mark = self.daemon.log_mark()
                result = harness.s_client(self.daemon.port, servername=servername,
                                          version="1.2", request=harness.http_request("x"))
                details = result.describe() + self.daemon.log_since(mark)
                self.assertEqual(result.returncode, 0, details)
                record = self.daemon.wait_for_record(mark, result="ok")
                self.assertEqual(record.get("vhost"), vhost, record)
                self.assertEqual(record.get("sni"), servername or "-", record)


class OpensslTls13ClientTest(Tls13ClientCases, StackTest):
    tls_backend = "openssl"

    def test_mixed_client_gets_tls13(self):
        self.check_mixed_client("TLSv1.3")

    def test_tls13_only_client_served(self):
        result = harness.s_client(self.daemon.port, servername="rsa.example.test",
                                  version="1.3", request=harness.http_request("x"))
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertEqual(result.protocol, "TLSv1.3", result.describe())


class BotanTls13ClientTest(Tls13ClientCases, StackTest):
    tls_backend = "botan"

    def test_mixed_client_gets_tls12(self):
        self.check_mixed_client("TLSv1.2")

    def test_tls13_only_client_gets_alert_70(self):
        mark = self.daemon.log_mark()
        result = harness.s_client(self.daemon.port, servername="rsa.example.test",
                                  version="1.3", request=harness.http_request("x"))
        details = result.describe() + self.daemon.log_since(mark)
        self.assertNotEqual(result.returncode, 0, details)
        self.assertEqual(alert_number(result), 70, details)
        self.daemon.wait_for_record(mark, result="handshake_failed")
        self.assertRegex(self.daemon.log[mark:],
                         r"warning .*handshake failed: No shared TLS version \(sent alert "
                         r"protocol_version\); Botan 2\.19 speaks TLS 1\.2 only")

    def test_python_client_gets_tls12(self):
        result = harness.tls_request(self.daemon.port, harness.http_request("p256.example.test"),
                                     server_hostname="p256.example.test")
        self.assertEqual(result.version, "TLSv1.2")
        self.assertIn(HTTP_BODY, result.data)


class SniRejectCases:
    """With unknown-sni and missing-sni = "reject", the handshake ends with alert 112."""

    @classmethod
    def document(cls, pki, backend):
        return harness.config(
            [harness.vhost(["www.example.test"], backend, pki.p256, default=True)], [pki.p256],
            tls_backend=cls.tls_backend, tls={"unknown-sni": "reject", "missing-sni": "reject"})

    def test_unknown_and_missing_name_rejected(self):
        for servername in ["other.example.test", "127.0.0.1", None]:
            with self.subTest(servername=servername):
                mark = self.daemon.log_mark()
                result = harness.s_client(self.daemon.port, servername=servername, version="1.2")
                details = result.describe() + self.daemon.log_since(mark)
                self.assertNotEqual(result.returncode, 0, details)
                self.assertEqual(alert_number(result), 112, details)
                self.daemon.wait_for_record(mark, result="handshake_failed")


class OpensslSniRejectTest(SniRejectCases, StackTest):
    tls_backend = "openssl"


class BotanSniRejectTest(SniRejectCases, StackTest):
    tls_backend = "botan"


class AlpnCases:
    """A vhost with alpn = ["http/1.1"] and each kind of ALPN offer.

    ``mismatch`` is the [tls] alpn-mismatch policy of the class's daemon.
    """

    JUNK = "x" * 255  # a protocol name of the maximum length RFC 7301 allows
    mismatch = "continue"

    @classmethod
    def document(cls, pki, backend):
        vhosts = [harness.vhost(["www.example.test"], backend, pki.rsa, default=True,
                                alpn=["http/1.1"]),
                  harness.vhost(["plain.example.test"], backend, pki.rsa)]
        return harness.config(vhosts, [pki.rsa], tls_backend=cls.tls_backend,
                              tls={"alpn-mismatch": cls.mismatch})

    def connect(self, offer, servername="www.example.test"):
        extra = ["-alpn", offer] if offer is not None else []
        return harness.s_client(self.daemon.port, servername=servername, extra=extra,
                                request=harness.http_request(servername))

    def check_served(self, offer, expected, servername="www.example.test"):
        mark = self.daemon.log_mark()
        result = self.connect(offer, servername)
        details = result.describe() + self.daemon.log_since(mark)
        self.assertEqual(result.returncode, 0, details)
        self.assertEqual(alpn_of(result), expected, details)
        self.assertIn(HTTP_BODY, result.stdout, details)
        record = self.daemon.wait_for_record(mark, sni=servername)
        self.assertEqual(record.get("result"), "ok", record)
        self.assertEqual(record.get("alpn"), expected or "-", record)

    def check_rejected(self, offer):
        mark = self.daemon.log_mark()
        result = self.connect(offer)
        details = result.describe() + self.daemon.log_since(mark)
        self.assertNotEqual(result.returncode, 0, details)
        self.assertEqual(alert_number(result), 120, details)
        record = self.daemon.wait_for_record(mark, result="handshake_failed")
        self.assertEqual(record.get("bytes_in"), "0", record)

    def test_h2_and_http11_agree_on_http11(self):
        self.check_served("h2,http/1.1", "http/1.1")

    def test_no_alpn_agrees_on_none(self):
        self.check_served(None, None)

    def test_vhost_without_alpn_ignores_offer(self):
        self.check_served("h2", None, servername="plain.example.test")


class AlpnContinueCases(AlpnCases):
    def test_h2_only_continues_without_alpn(self):
        mark = self.daemon.log_mark()
        self.check_served("h2", None)
        self.assertRegex(self.daemon.log[mark:],
                         r'no ALPN protocol agreed: the client offered \["h2"\]')

    def test_longest_junk_name_continues(self):
        self.check_served(self.JUNK, None)
        self.check_served("http/1.1", "http/1.1")


class AlpnRejectCases(AlpnCases):
    mismatch = "reject"

    def test_h2_only_rejected(self):
        self.check_rejected("h2")

    def test_longest_junk_name_rejected(self):
        self.check_rejected(self.JUNK)
        self.check_served("http/1.1", "http/1.1")


class OpensslAlpnTest(AlpnContinueCases, StackTest):
    tls_backend = "openssl"


class BotanAlpnTest(AlpnContinueCases, StackTest):
    tls_backend = "botan"


class OpensslAlpnRejectTest(AlpnRejectCases, StackTest):
    tls_backend = "openssl"


class BotanAlpnRejectTest(AlpnRejectCases, StackTest):
    tls_backend = "botan"


class BotanCliClientCases:
    """Botan's own CLI (botan tls_client, Botan 2.19) as a fourth real client."""

    @classmethod
    def document(cls, pki, backend):
        return harness.config([harness.vhost(["localhost"], backend, pki.rsa, pki.p256,
                                             default=True, alpn=["http/1.1"])],
                              [pki.rsa, pki.p256], tls_backend=cls.tls_backend)

    def check_client(self, policy, cipher_pattern):
        mark = self.daemon.log_mark()
        result = harness.botan_tls_client(
            self.daemon.port, request=harness.http_request("localhost"), expect=HTTP_BODY,
            next_protocols=["http/1.1"], policy=policy)
        details = result.describe() + self.daemon.log_since(mark)
        self.assertIn(b"Certificate validation status: Verified", result.stdout, details)
        self.assertEqual(result.protocol, "TLS v1.2", details)
        self.assertRegex(result.cipher or "", cipher_pattern, details)
        self.assertEqual(result.alpn, "http/1.1", details)
        self.assertIn(HTTP_BODY, result.stdout, details)
        record = self.daemon.wait_for_record(mark, sni="localhost")
        self.assertEqual(record.get("vhost"), "localhost", record)

    def test_rsa_certificate(self):
        self.check_client("signature_methods = RSA\n", r"^ECDHE_RSA_WITH_")

    def test_ecdsa_certificate(self):
        self.check_client("signature_methods = ECDSA\n", r"^ECDHE_ECDSA_WITH_")


class OpensslBotanCliClientTest(BotanCliClientCases, StackTest):
    tls_backend = "openssl"


class BotanBotanCliClientTest(BotanCliClientCases, StackTest):
    tls_backend = "botan"


class BotanConfigTest(unittest.TestCase):
    """--check-config with tls-backend = "botan"."""

    def check(self, tls=None, cert=None):
        pki = harness.pki()
        cert = cert or pki.rsa
        document = harness.config(
            [harness.vhost(["www.example.test"], "127.0.0.1:9", cert, default=True)], [cert],
            tls_backend="botan", tls=tls or {})
        document["listener"] = [{"address": f"127.0.0.1:{harness.free_port()}"}]
        folder = harness.run_dir() / f"botan-config-{harness.free_port()}"
        folder.mkdir()
        result = harness.run_cloister("--config", harness.write_config(folder, document),
                                      "--check-config")
        return result.returncode, result.stdout + result.stderr

    def test_tls12_range_valid(self):
        status, output = self.check()
        self.assertEqual(status, 0, output)
        self.assertIn("TLS 1.2 only", output)

    def test_max_version_13_rejected(self):
        status, output = self.check(tls={"max-version": "1.3"})
        self.assertEqual(status, 2, output)
        self.assertRegex(output, r'tls\.max-version: "1\.3" needs TLS 1\.3, and tls-backend '
                                 r'"botan" \(Botan 2\.19\) speaks TLS 1\.2 only; expected '
                                 r'"1\.2", or tls-backend = "openssl" for TLS 1\.3')

    def test_min_version_13_rejected(self):
        status, output = self.check(tls={"min-version": "1.3", "max-version": "1.3"})
        self.assertEqual(status, 2, output)
        self.assertIn("tls.min-version: \"1.3\" needs TLS 1.3", output)

    def test_cipher_list_without_usable_suite_rejected(self):
        status, output = self.check(tls={"ciphers": "DHE-DSS-AES128-GCM-SHA256"})
        self.assertEqual(status, 2, output)
        self.assertIn('[tls] ciphers = "DHE-DSS-AES128-GCM-SHA256": no listed TLS 1.2 cipher '
                      "suite is one that Botan 2.19 implements with ECDHE or DHE key exchange "
                      "and RSA or ECDSA signatures", output)

    def test_unusable_suites_left_out(self):
        status, output = self.check(tls={"ciphers": "ECDHE+AESGCM:DHE-DSS-AES128-GCM-SHA256",
                                         "groups": "X448:X25519"})
        self.assertEqual(status, 0, output)
        self.assertIn("botan: [tls] lists TLS_DHE_DSS_WITH_AES_128_GCM_SHA256, group X448", output)

    def test_rsa_key_exchange_rejected(self):
        status, output = self.check(tls={"rsa-key-exchange": True})
        self.assertEqual(status, 2, output)
        self.assertIn('[tls] rsa-key-exchange = true: tls-backend "botan" has no RSA key '
                      "exchange", output)


class BotanRelayTest(unittest.TestCase):
    """Bulk data and close_notify through the Botan stack."""

    @classmethod
    def setUpClass(cls):
        pki = harness.pki()
        cls.echo = harness.EchoBackend().start()
        cls.addClassCleanup(cls.echo.stop)
        cls.eof = harness.EofBackend().start()
        cls.addClassCleanup(cls.eof.stop)
        vhosts = [harness.vhost(["echo.example.test"], cls.echo, pki.p256, default=True),
                  harness.vhost(["eof.example.test"], cls.eof, pki.p256)]
        cls.daemon = harness.Daemon(harness.config(vhosts, [pki.p256], tls_backend="botan"))
        cls.addClassCleanup(cls.daemon.close)
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def test_pipelined_records(self):
        test_robustness.send_pipelined_records(self, self.daemon.port, "echo.example.test",
                                               "1.2")

    def test_echo_one_mebibyte(self):
        mark = self.daemon.log_mark()
        payload = bytes(range(256)) * 4096
        client = harness.tls_connect(self.daemon.port, server_hostname="echo.example.test")
        with client:
            client.sendall(payload)
            received = bytearray()
            while len(received) < len(payload):
                chunk = client.recv(65536)
                if not chunk:
                    break
                received += chunk
        self.assertEqual(bytes(received), payload, self.daemon.log_since(mark))
        record = self.daemon.wait_for_record(mark, sni="echo.example.test")
        self.assertEqual(record.get("bytes_in"), str(len(payload)), record)

    def test_half_close_ends_both_directions(self):
        # Botan 2 replies to a close_notify with its own and closes at once, so a client that
        # half-closes gets no reply. The OpenSSL stack relays it (test_robustness.py).
        mark = self.daemon.log_mark()
        request = b"client data, then close_notify\n"
        result = harness.tls_request(self.daemon.port, request,
                                     server_hostname="eof.example.test", half_close=True)
        self.assertEqual(result.version, "TLSv1.2")
        self.assertEqual(result.data, b"", self.daemon.log_since(mark))
        self.assertTrue(result.close_notify)
        record = self.daemon.wait_for_record(mark, sni="eof.example.test")
        self.assertEqual(record.get("bytes_in"), str(len(request)), record)

    def test_truncated_client_recorded(self):
        mark = self.daemon.log_mark()
        client = harness.tls_connect(self.daemon.port, server_hostname="echo.example.test")
        client.sendall(b"ping\n")
        self.assertEqual(client.recv(100), b"ping\n")
        client.close()  # Python's ssl module closes without close_notify
        record = self.daemon.wait_for_record(mark, sni="echo.example.test")
        self.assertEqual(record.get("result"), "truncated", record)


    def check_first_message_rejected(self, header, alert):
        """Send a record header and handshake header only; the alert must come at once."""
        mark = self.daemon.log_mark()
        with socket.create_connection(("127.0.0.1", self.daemon.port), timeout=3) as sock:
            sock.sendall(header)
            response = sock.recv(64)  # raises socket.timeout after 3 s, long before 5 s
        self.assertEqual(response[:1], b"\x15", response)  # an alert record
        self.assertEqual(response[-2:], bytes([2, alert]), response)  # fatal, description
        self.daemon.wait_for_record(mark, result="handshake_failed")
        self.assertIn("the first handshake message is not a ClientHello", self.daemon.log[mark:])

    def test_server_hello_from_client_rejected(self):
        # A ServerHello (type 2) where the ClientHello belongs: unexpected_message (10).
        self.check_first_message_rejected(b"\x16\x03\x01\x00\x04\x02\x00\x00\x26", 10)

    def test_huge_client_hello_length_rejected(self):
        # A ClientHello that declares 16 MiB: illegal_parameter (47), without waiting for it.
        self.check_first_message_rejected(b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", 47)


class KeyMemoryScanTest(unittest.TestCase):
    """No byte string of the private key is in a live Botan connection process's memory."""

    WINDOW = 24  # bytes of each secret searched for; 192 bits cannot match by chance

    @staticmethod
    def secrets(key_file):
        """Return the private numbers of key_file (RSA d, p, q or the EC scalar), big-endian."""
        text = harness.run(["openssl", "pkey", "-in", str(key_file), "-text", "-noout"]).stdout
        numbers = []
        for label in ("privateExponent", "prime1", "prime2", "priv"):
            match = re.search(label + r":\s*\n((?:\s+[0-9a-f:]+\n)+)", text.decode())
            if match:
                hex_digits = re.sub(r"[^0-9a-f]", "", match.group(1))
                numbers.append(bytes.fromhex(hex_digits).lstrip(b"\0"))
        return numbers

    def needles(self, key_file):
        """Both byte orders of each secret: OpenSSL and Botan keep numbers in little-endian
        words, so the little-endian form is what a process holding the key contains."""
        found = []
        for number in self.secrets(key_file):
            found.append(number[:self.WINDOW])
            found.append(number[::-1][:self.WINDOW])
        return found

    @staticmethod
    def scan(pid, needles):
        """Return how many of needles occur in the readable memory of pid."""
        hits = set()
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as memory:
            for line in maps:
                fields = line.split()
                if "r" not in fields[1] or (len(fields) > 5 and fields[5] == "[vvar]"):
                    continue
                start, end = (int(part, 16) for part in fields[0].split("-"))
                try:
                    memory.seek(start)
                    region = memory.read(end - start)
                except (OSError, OverflowError):
                    continue
                hits.update(i for i, needle in enumerate(needles) if needle in region)
        return len(hits)

    def test_live_botan_connection_holds_no_key_bytes(self):
        pki = harness.pki()
        with harness.HttpBackend(HTTP_BODY) as backend:
            vhosts = [harness.vhost(["www.example.test"], backend, pki.rsa, pki.p256,
                                    default=True)]
            document = harness.config(vhosts, [pki.rsa, pki.p256], tls_backend="botan")
            with harness.Daemon(document) as daemon:
                needles = self.needles(pki.rsa.key) + self.needles(pki.p256.key)
                self.assertGreaterEqual(len(needles), 8)
                try:
                    in_key_process = self.scan(daemon.key_pid, needles)
                except PermissionError:
                    self.skipTest("reading another process's memory needs CAP_SYS_PTRACE")
                # The scan finds the key where it is, so a miss below is a real absence.
                self.assertGreater(in_key_process, 0)
                for cipher in ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"):
                    with self.subTest(cipher=cipher):
                        self.check_live_connection(daemon, cipher, needles)

    def check_live_connection(self, daemon, cipher, needles):
        context = harness.tls_context(version="1.2")
        context.set_ciphers(cipher)
        raw = socket.create_connection(("127.0.0.1", daemon.port), timeout=20)
        client = context.wrap_socket(raw, server_hostname="www.example.test")
        with client:
            local_port = client.getsockname()[1]
            title = f"127.0.0.1:{local_port}"
            children = daemon.wait_for_children(
                lambda found: any(title in p.title for p in found))
            pid = next(p.pid for p in children if title in p.title)
            self.assertEqual(self.scan(pid, needles), 0)


if __name__ == "__main__":
    unittest.main()
