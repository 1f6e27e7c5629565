"""Handshake matrix: each key type and protocol version against the daemon and a backend.

Every case checks what the client saw (protocol, server signature, certificate verification
against the test root, the backend's exact bytes) and what the daemon logged for the
connection.
"""

import unittest

import harness

HTTP_BODY = b"cloister handshake matrix: TCP backend\n"
UNIX_BODY = b"cloister handshake matrix: Unix socket backend\n"


class HandshakeMatrixTest(unittest.TestCase):
    """One daemon with a vhost per key type, all proxying to HTTP backends.

    test_backends.py runs the same cases against tls_backend "botan".
    """

    tls_backend = "openssl"
    # Botan 2.19 has no Ed25519 in TLS, so its subclass leaves that vhost out.
    serves_ed25519 = True
    # [sandbox] settings; test_netless.py runs the matrix with other connection-network and
    # spawn modes.
    sandbox_settings: dict = {}

    @classmethod
    def setUpClass(cls):
        pki = harness.pki()
        cls.backend = harness.HttpBackend(HTTP_BODY).start()
        cls.addClassCleanup(cls.backend.stop)
        unix_path = harness.run_dir() / "matrix-backend.sock"
        cls.unix_backend = harness.HttpBackend(UNIX_BODY, unix_path=unix_path).start()
        cls.addClassCleanup(cls.unix_backend.stop)
        vhosts = [
            harness.vhost(["rsa.example.test", "www.example.test"], cls.backend, pki.rsa,
                          default=True),
            harness.vhost(["p256.example.test"], cls.backend, pki.p256),
            harness.vhost(["p384.example.test"], cls.backend, pki.p384),
            harness.vhost(["unix.example.test"], cls.unix_backend, pki.p256),
        ]
        keys = [pki.rsa, pki.p256, pki.p384]
        if cls.serves_ed25519:
            vhosts.append(harness.vhost(["ed25519.example.test"], cls.backend, pki.ed25519))
            keys.append(pki.ed25519)
        listen = ["127.0.0.1"] + (["::1"] if harness.ipv6_loopback_available() else [])
        document = harness.config(vhosts, keys, tls_backend=cls.tls_backend,
                                  sandbox=cls.sandbox_settings)
        cls.daemon = harness.Daemon(document, listen=listen)
        cls.addClassCleanup(cls.daemon.close)
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def check_handshake(self, servername, version, sigalgs, protocol, signature_type,
                        digest, scheme):
        """Run one s_client exchange and check the client's view and the daemon's record."""
        mark = self.daemon.log_mark()
        served_before = len(self.backend.requests)
        request = harness.http_request(servername)
        result = harness.s_client(self.daemon.port, servername=servername,
                                  verify_hostname=servername, version=version,
                                  sigalgs=sigalgs, request=request)
        details = result.describe() + self.daemon.log_since(mark)
        self.assertEqual(result.returncode, 0, details)
        self.assertEqual(result.protocol, protocol, details)
        self.assertEqual(result.peer_signature_type, signature_type, details)
        self.assertEqual(result.peer_signing_digest, digest, details)
        self.assertEqual(result.verify_line, "Verify return code: 0 (ok)", details)
        self.assertEqual(result.stdout.count(self.backend.response), 1, details)
        self.assertEqual(self.backend.requests[served_before:], [request])

        record = self.daemon.wait_for_record(mark, sni=servername)
        self.assertEqual(record.get("vhost"), servername, record)
        self.assertEqual(record.get("protocol"), protocol, record)
        # The log names ciphers by their IANA names, s_client by OpenSSL's.
        self.assertEqual(record.get("cipher"), harness.standard_cipher_name(result.cipher),
                         record)
        self.assertEqual(record.get("scheme"), scheme, record)
        self.assertEqual(record.get("bytes_in"), str(len(request)), record)
        self.assertEqual(record.get("bytes_out"), str(len(self.backend.response)), record)
        self.assertEqual(record.get("result"), "ok", record)

    def test_rsa_tls13_pss(self):
        self.check_handshake("rsa.example.test", "1.3", None, "TLSv1.3", "RSA-PSS", "SHA256",
                             "rsa_pss_rsae_sha256")

    def test_rsa_tls12_pkcs1(self):
        self.check_handshake("rsa.example.test", "1.2", "RSA+SHA256", "TLSv1.2", "RSA",
                             "SHA256", "rsa_pkcs1_sha256")

    def test_rsa_tls12_pss(self):
        self.check_handshake("rsa.example.test", "1.2", "rsa_pss_rsae_sha256", "TLSv1.2",
                             "RSA-PSS", "SHA256", "rsa_pss_rsae_sha256")

    def test_p256_tls13(self):
        self.check_handshake("p256.example.test", "1.3", None, "TLSv1.3", "ECDSA", "SHA256",
                             "ecdsa_secp256r1_sha256")

    def test_p256_tls12(self):
        self.check_handshake("p256.example.test", "1.2", None, "TLSv1.2", "ECDSA", "SHA256",
                             "ecdsa_secp256r1_sha256")

    def test_p384_tls13(self):
        self.check_handshake("p384.example.test", "1.3", None, "TLSv1.3", "ECDSA", "SHA384",
                             "ecdsa_secp384r1_sha384")

    def test_p384_tls12(self):
        # TLS 1.2 does not bind the hash to the curve, so the client's list decides it.
        self.check_handshake("p384.example.test", "1.2", "ECDSA+SHA384", "TLSv1.2", "ECDSA",
                             "SHA384", "ecdsa_secp384r1_sha384")

    def test_ed25519_tls13(self):
        # s_client prints no "Peer signing digest" line for Ed25519, which hashes internally.
        self.check_handshake("ed25519.example.test", "1.3", None, "TLSv1.3", "ed25519", None,
                             "ed25519")

    def test_curl_body(self):
        mark = self.daemon.log_mark()
        port = self.daemon.port
        result = harness.curl(f"https://www.example.test:{port}/",
                              resolve=[f"www.example.test:{port}:127.0.0.1"])
        details = result.stderr.decode(errors="replace") + self.daemon.log_since(mark)
        self.assertEqual(result.returncode, 0, details)
        self.assertEqual(result.stdout, HTTP_BODY, details)
        record = self.daemon.wait_for_record(mark, sni="www.example.test")
        self.assertEqual(record.get("vhost"), "rsa.example.test", record)
        self.assertEqual(record.get("result"), "ok", record)

    def test_gnutls_cli_body(self):
        mark = self.daemon.log_mark()
        request = harness.http_request("www.example.test")
        result = harness.gnutls_cli(self.daemon.port, servername="www.example.test",
                                    request=request)
        details = result.describe() + self.daemon.log_since(mark)
        self.assertEqual(result.returncode, 0, details)
        self.assertIn("Handshake was completed", result.info, details)
        self.assertEqual(result.stdout, self.backend.response, details)

    def test_python_ssl_tls12(self):
        mark = self.daemon.log_mark()
        request = harness.http_request("p256.example.test")
        result = harness.tls_request(self.daemon.port, request,
                                     server_hostname="p256.example.test", version="1.2")
        self.assertEqual(result.version, "TLSv1.2")
        self.assertTrue(result.cipher.startswith("ECDHE-ECDSA-"), result.cipher)
        self.assertEqual(result.data, self.backend.response)
        self.assertTrue(result.close_notify)
        record = self.daemon.wait_for_record(mark, sni="p256.example.test")
        self.assertEqual(record.get("protocol"), "TLSv1.2", record)
        self.assertEqual(record.get("result"), "ok", record)

    def test_rsa_key_exchange_rejected(self):
        mark = self.daemon.log_mark()
        connections_before = self.backend.connections
        result = harness.s_client(self.daemon.port, servername="rsa.example.test",
                                  version="1.2", cipher="AES128-GCM-SHA256",
                                  request=harness.http_request("rsa.example.test"))
        details = result.describe() + self.daemon.log_since(mark)
        self.assertNotEqual(result.returncode, 0, details)
        self.assertIsNone(result.protocol, details)
        self.assertRegex(result.text, r"alert|no shared cipher|handshake failure", details)
        self.assertEqual(self.backend.connections, connections_before)
        record = self.daemon.wait_for_record(mark, result="handshake_failed")
        self.assertEqual(record.get("bytes_in"), "0", record)

    def test_ipv6_listener(self):
        if "::1" not in self.daemon.ports:
            self.skipTest("no IPv6 loopback address on this machine")
        mark = self.daemon.log_mark()
        port = self.daemon.ports["::1"]
        result = harness.s_client(port, host="::1", servername="p256.example.test",
                                  verify_hostname="p256.example.test", version="1.3",
                                  request=harness.http_request("p256.example.test"))
        details = result.describe() + self.daemon.log_since(mark)
        self.assertEqual(result.returncode, 0, details)
        self.assertEqual(result.protocol, "TLSv1.3", details)
        self.assertEqual(result.peer_signature_type, "ECDSA", details)
        self.assertEqual(result.verify_line, "Verify return code: 0 (ok)", details)
        self.assertEqual(result.stdout.count(self.backend.response), 1, details)

    def test_ipv6_without_sni_gets_default_vhost(self):
        if "::1" not in self.daemon.ports:
            self.skipTest("no IPv6 loopback address on this machine")
        mark = self.daemon.log_mark()
        # curl sends no SNI for an IP address; the certificate's SAN lists IP ::1.
        result = harness.curl(f"https://[::1]:{self.daemon.ports['::1']}/")
        details = result.stderr.decode(errors="replace") + self.daemon.log_since(mark)
        self.assertEqual(result.returncode, 0, details)
        self.assertEqual(result.stdout, HTTP_BODY, details)
        record = self.daemon.wait_for_record(mark, result="ok")
        self.assertEqual(record.get("vhost"), "rsa.example.test", record)

    def test_unix_socket_backend(self):
        mark = self.daemon.log_mark()
        request = harness.http_request("unix.example.test")
        result = harness.s_client(self.daemon.port, servername="unix.example.test",
                                  verify_hostname="unix.example.test", request=request)
        details = result.describe() + self.daemon.log_since(mark)
        self.assertEqual(result.returncode, 0, details)
        self.assertEqual(result.verify_line, "Verify return code: 0 (ok)", details)
        self.assertEqual(result.stdout.count(self.unix_backend.response), 1, details)
        self.assertNotIn(HTTP_BODY, result.stdout, details)
        self.assertEqual(self.unix_backend.requests[-1], request)
        record = self.daemon.wait_for_record(mark, sni="unix.example.test")
        self.assertEqual(record.get("vhost"), "unix.example.test", record)
        self.assertEqual(record.get("result"), "ok", record)

    def test_key_process_counts_one_signature(self):
        before = self.daemon.key_stats()
        result = harness.s_client(self.daemon.port, servername="p384.example.test",
                                  request=harness.http_request("p384.example.test"))
        self.assertEqual(result.returncode, 0, result.describe())
        after = self.daemon.key_stats()
        self.assertEqual(after["signatures"] - before["signatures"], 1, (before, after))
        self.assertEqual(after["refused"], before["refused"], (before, after))
        self.assertEqual(after["malformed"], before["malformed"], (before, after))


class RsaKeyExchangeConfigTest(unittest.TestCase):
    """A cipher list that names RSA key exchange still gets no RSA key exchange."""

    def test_listed_rsa_cipher_rejected(self):
        pki = harness.pki()
        with harness.HttpBackend(HTTP_BODY) as backend:
            document = harness.config(
                [harness.vhost(["www.example.test"], backend, pki.rsa, default=True)],
                [pki.rsa], tls={"ciphers": "ECDHE+AESGCM:AES128-GCM-SHA256"})
            with harness.Daemon(document) as daemon:
                rejected = harness.s_client(daemon.port, servername="www.example.test",
                                            version="1.2", cipher="AES128-GCM-SHA256")
                accepted = harness.s_client(daemon.port, servername="www.example.test",
                                            version="1.2",
                                            request=harness.http_request("www.example.test"))
            self.assertNotEqual(rejected.returncode, 0, rejected.describe())
            self.assertIsNone(rejected.protocol, rejected.describe())
            self.assertEqual(accepted.returncode, 0, accepted.describe())
            self.assertRegex(accepted.cipher or "", r"^ECDHE-RSA-", accepted.describe())
            self.assertEqual(backend.connections, 1)


if __name__ == "__main__":
    unittest.main()
