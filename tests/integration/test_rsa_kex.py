"""TLS 1.2 RSA key exchange: off by default, and implicit rejection when it is on.

With ``[tls] rsa-key-exchange = true`` the key process decrypts the ClientKeyExchange. Every
invalid ciphertext (bad padding, a premaster secret of the wrong length or version, a value
not below the modulus) must give the same result as a valid one whose Finished message is
wrong: no reaction to the ClientKeyExchange, then one bad_record_mac alert for the Finished
record. A raw TLS 1.2 client written here sends those ClientKeyExchange messages, because no
stock client sends an invalid one.
"""

import os
import re
import select
import socket
import struct
import unittest

import harness

HTTP_BODY = b"cloister RSA key exchange\n"
RSA_CIPHER = "AES128-GCM-SHA256"
RSA_CIPHER_CODE = 0x009C  # TLS_RSA_WITH_AES_128_GCM_SHA256, RFC 5288
TLS12 = 0x0303
SERVER_NAME = "www.example.test"

# TLS record content types and handshake message types (RFC 5246 sections 6.2.1 and 7.4).
CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
SERVER_HELLO = 2
SERVER_HELLO_DONE = 14
CLIENT_HELLO = 1
CLIENT_KEY_EXCHANGE = 16
BAD_RECORD_MAC_ALERT = bytes([ALERT, 0x03, 0x03, 0x00, 0x02, 2, 20])  # fatal, bad_record_mac

# A log line's variable parts: timestamps, connection ids, process ids, ports, durations.
_NUMBERS_RE = re.compile(r"\d+")


def rsa_public_key(cert: harness.Cert) -> tuple[int, int]:
    """Return the modulus and public exponent of ``cert``'s RSA key."""
    modulus = harness.run(["openssl", "x509", "-in", str(cert.cert), "-noout", "-modulus"])
    text = harness.run(["openssl", "x509", "-in", str(cert.cert), "-noout", "-text"])
    n = int(modulus.stdout.decode().strip().split("=", 1)[1], 16)
    e = int(re.search(r"Exponent: (\d+)", text.stdout.decode()).group(1))
    return n, e


def pkcs1_block(modulus_size: int, message: bytes, block_type: int = 2,
                separator: bool = True) -> bytes:
    """Return a PKCS#1 v1.5 encryption block 00 || type || nonzero padding || 00 || message.

    Without ``separator`` the padding runs to the end and the block contains no zero byte.
    """
    padding_size = modulus_size - 3 - len(message)
    padding = bytes(b % 255 + 1 for b in os.urandom(padding_size))
    if not separator:
        return bytes([0, block_type]) + padding + bytes(b % 255 + 1 for b in os.urandom(
            len(message) + 1))
    return bytes([0, block_type]) + padding + b"\x00" + message


def rsa_encrypt(block: bytes, n: int, e: int) -> bytes:
    """Return the raw RSA encryption of ``block`` (RSA with no padding)."""
    size = (n.bit_length() + 7) // 8
    return pow(int.from_bytes(block, "big"), e, n).to_bytes(size, "big")


def record(content_type: int, body: bytes, version: int = TLS12) -> bytes:
    return struct.pack("!BHH", content_type, version, len(body)) + body


def handshake_message(message_type: int, body: bytes) -> bytes:
    return bytes([message_type]) + len(body).to_bytes(3, "big") + body


def extension(code: int, body: bytes) -> bytes:
    return struct.pack("!HH", code, len(body)) + body


def client_hello() -> bytes:
    """Return a ClientHello record that offers only TLS_RSA_WITH_AES_128_GCM_SHA256."""
    name = SERVER_NAME.encode()
    server_name = struct.pack("!HBH", len(name) + 3, 0, len(name)) + name
    signature_algorithms = struct.pack("!HH", 2, 0x0401)  # rsa_pkcs1_sha256
    extensions = extension(0x0000, server_name) + extension(0x000D, signature_algorithms)
    body = (struct.pack("!H", TLS12) + os.urandom(32) + b"\x00"
            + struct.pack("!HH", 2, RSA_CIPHER_CODE) + b"\x01\x00"
            + struct.pack("!H", len(extensions)) + extensions)
    return record(HANDSHAKE, handshake_message(CLIENT_HELLO, body), version=0x0301)


class RecordReader:
    """Reads TLS records and the handshake messages inside them from a socket."""

    def __init__(self, connection: socket.socket):
        self.connection = connection
        self.buffer = b""
        self.handshake = b""

    def read_record(self) -> tuple[int, bytes] | None:
        """Return the next record's type and body, or None at end of stream."""
        while len(self.buffer) < 5 or len(self.buffer) < 5 + int.from_bytes(self.buffer[3:5],
                                                                             "big"):
            chunk = self.connection.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        length = int.from_bytes(self.buffer[3:5], "big")
        content_type, body = self.buffer[0], self.buffer[5:5 + length]
        self.buffer = self.buffer[5 + length:]
        return content_type, body

    def read_until_server_hello_done(self) -> list[tuple[int, bytes]]:
        """Return the server's handshake messages up to ServerHelloDone as (type, body)."""
        messages = []
        while not messages or messages[-1][0] != SERVER_HELLO_DONE:
            item = self.read_record()
            if item is None or item[0] != HANDSHAKE:
                raise AssertionError(f"expected a handshake record, got {item!r}")
            self.handshake += item[1]
            while len(self.handshake) >= 4:
                length = int.from_bytes(self.handshake[1:4], "big")
                if len(self.handshake) < 4 + length:
                    break
                messages.append((self.handshake[0], self.handshake[4:4 + length]))
                self.handshake = self.handshake[4 + length:]
        return messages


def rsa_exchange(port: int, ciphertext: bytes) -> tuple[bytes, bytes]:
    """Send ``ciphertext`` as the ClientKeyExchange, then ChangeCipherSpec and a bogus Finished.

    Returns what the server sent between the ClientKeyExchange and the Finished (expected:
    nothing within one second), and everything it sent after the Finished until it closed,
    followed by "(connection reset)" when it reset the connection.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=harness.DEFAULT_TIMEOUT) as raw:
        raw.sendall(client_hello())
        reader = RecordReader(raw)
        messages = reader.read_until_server_hello_done()
        server_hello = next(body for kind, body in messages if kind == SERVER_HELLO)
        session_id_size = server_hello[34]
        cipher = int.from_bytes(server_hello[35 + session_id_size:37 + session_id_size], "big")
        if cipher != RSA_CIPHER_CODE:
            raise AssertionError(f"the server chose cipher suite 0x{cipher:04x}")

        key_exchange = struct.pack("!H", len(ciphertext)) + ciphertext
        raw.sendall(record(HANDSHAKE, handshake_message(CLIENT_KEY_EXCHANGE, key_exchange)))
        early = b""
        if select.select([raw], [], [], 1.0)[0]:
            early = raw.recv(65536)
        # An AES-GCM Finished record: 8-byte explicit nonce, 16 bytes of message, 16-byte tag.
        finished = record(HANDSHAKE, bytes(40))
        raw.sendall(record(CHANGE_CIPHER_SPEC, b"\x01") + finished)
        reply = reader.buffer
        try:
            while chunk := raw.recv(65536):
                reply += chunk
        except ConnectionResetError:
            reply += b"(connection reset)"
        return early, reply


def normalized_lines(log: str) -> list[str]:
    """Return the log lines with every number replaced by N, sorted."""
    return sorted(_NUMBERS_RE.sub("N", line) for line in log.splitlines() if line)


class RsaKeyExchangeOffTest(unittest.TestCase):
    """Without the option, no RSA key exchange, whatever the cipher list contains."""

    def check_rejected(self, tls):
        pki = harness.pki()
        with harness.HttpBackend(HTTP_BODY) as backend:
            document = harness.config(
                [harness.vhost([SERVER_NAME], backend, pki.rsa, default=True)], [pki.rsa],
                tls=tls)
            with harness.Daemon(document) as daemon:
                mark = daemon.log_mark()
                result = harness.s_client(daemon.port, servername=SERVER_NAME, version="1.2",
                                          cipher=RSA_CIPHER,
                                          request=harness.http_request(SERVER_NAME))
                details = result.describe() + daemon.log_since(mark)
                self.assertNotEqual(result.returncode, 0, details)
                self.assertIsNone(result.protocol, details)
                self.assertRegex(result.text, r"alert handshake failure", details)
                record = daemon.wait_for_record(mark, result="handshake_failed")
                self.assertEqual(record.get("bytes_in"), "0", record)
                self.assertEqual(daemon.key_stats().get("decryptions"), 0)
            self.assertEqual(backend.connections, 0)

    def test_default_config_rejects_rsa_cipher(self):
        self.check_rejected({})

    def test_listed_rsa_cipher_rejected(self):
        self.check_rejected({"ciphers": f"ECDHE+AESGCM:{RSA_CIPHER}"})

    def test_explicit_false_rejects_rsa_cipher(self):
        self.check_rejected({"ciphers": f"ECDHE+AESGCM:{RSA_CIPHER}", "rsa-key-exchange": False})

    def test_option_without_rsa_suite_warns(self):
        # The default cipher list has no RSA key exchange suite, so the option alone adds none.
        pki = harness.pki()
        document = harness.config(
            [harness.vhost([SERVER_NAME], "127.0.0.1:9", pki.rsa, default=True)], [pki.rsa],
            tls={"rsa-key-exchange": True})
        with harness.Daemon(document) as daemon:
            self.assertRegex(daemon.log, r"warning .*\[tls\] rsa-key-exchange is true, but "
                                         r"ciphers = \"ECDHE\+AESGCM:ECDHE\+CHACHA20\" contains "
                                         r"no RSA key exchange suite")
            result = harness.s_client(daemon.port, servername=SERVER_NAME, version="1.2",
                                      cipher=RSA_CIPHER)
            self.assertIsNone(result.protocol, result.describe())


class RsaKeyExchangeOnTest(unittest.TestCase):
    """With the option on and an RSA suite listed, kRSA handshakes succeed."""

    @classmethod
    def setUpClass(cls):
        pki = harness.pki()
        cls.backend = harness.HttpBackend(HTTP_BODY).start()
        cls.addClassCleanup(cls.backend.stop)
        document = harness.config(
            [harness.vhost([SERVER_NAME], cls.backend, pki.rsa, default=True)], [pki.rsa],
            tls={"ciphers": f"ECDHE+AESGCM:{RSA_CIPHER}", "rsa-key-exchange": True})
        cls.daemon = harness.Daemon(document)
        cls.addClassCleanup(cls.daemon.close)
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def test_rsa_cipher_succeeds(self):
        before = self.daemon.key_stats()
        mark = self.daemon.log_mark()
        request = harness.http_request(SERVER_NAME)
        result = harness.s_client(self.daemon.port, servername=SERVER_NAME,
                                  verify_hostname=SERVER_NAME, version="1.2",
                                  cipher=RSA_CIPHER, request=request)
        details = result.describe() + self.daemon.log_since(mark)
        self.assertEqual(result.returncode, 0, details)
        self.assertEqual(result.protocol, "TLSv1.2", details)
        self.assertEqual(result.cipher, RSA_CIPHER, details)
        self.assertEqual(result.verify_line, "Verify return code: 0 (ok)", details)
        self.assertEqual(result.stdout.count(self.backend.response), 1, details)
        self.assertEqual(self.backend.requests[-1], request)
        record = self.daemon.wait_for_record(mark, sni=SERVER_NAME)
        self.assertEqual(record.get("cipher"), "TLS_RSA_WITH_AES_128_GCM_SHA256", record)
        self.assertEqual(record.get("result"), "ok", record)
        after = self.daemon.key_stats()
        self.assertEqual(after["decryptions"] - before["decryptions"], 1, (before, after))
        self.assertEqual(after["signatures"], before["signatures"], (before, after))
        self.assertEqual(after["refused"], before["refused"], (before, after))

    def test_ecdhe_still_preferred(self):
        result = harness.s_client(self.daemon.port, servername=SERVER_NAME, version="1.2",
                                  request=harness.http_request(SERVER_NAME))
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertRegex(result.cipher or "", r"^ECDHE-RSA-", result.describe())

    def test_python_client_rsa_cipher(self):
        request = harness.http_request(SERVER_NAME)
        context = harness.tls_context(version="1.2")
        context.set_ciphers(RSA_CIPHER)
        raw = socket.create_connection(("127.0.0.1", self.daemon.port),
                                       timeout=harness.DEFAULT_TIMEOUT)
        with context.wrap_socket(raw, server_hostname=SERVER_NAME) as connection:
            self.assertEqual(connection.cipher()[0], RSA_CIPHER)
            connection.sendall(request)
            data = b""
            while chunk := connection.recv(65536):
                data += chunk
        self.assertEqual(data, self.backend.response)


class ImplicitRejectionTest(unittest.TestCase):
    """Invalid ClientKeyExchange ciphertexts are indistinguishable from a valid one."""

    @classmethod
    def setUpClass(cls):
        pki = harness.pki()
        cls.n, cls.e = rsa_public_key(pki.rsa)
        cls.size = (cls.n.bit_length() + 7) // 8
        cls.backend = harness.HttpBackend(HTTP_BODY).start()
        cls.addClassCleanup(cls.backend.stop)
        document = harness.config(
            [harness.vhost([SERVER_NAME], cls.backend, pki.rsa, default=True)], [pki.rsa],
            log_level="info", tls={"ciphers": RSA_CIPHER, "rsa-key-exchange": True})
        cls.daemon = harness.Daemon(document)
        cls.addClassCleanup(cls.daemon.close)
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def encrypt(self, block: bytes) -> bytes:
        return rsa_encrypt(block, self.n, self.e)

    def cases(self) -> dict[str, bytes]:
        """Return each ClientKeyExchange ciphertext to try, by name."""
        version = struct.pack("!H", TLS12)
        premaster = version + os.urandom(46)
        garbage = b"\x00" + os.urandom(self.size - 1)
        return {
            "valid premaster, wrong Finished": self.encrypt(pkcs1_block(self.size, premaster)),
            "block type 1": self.encrypt(pkcs1_block(self.size, premaster, block_type=1)),
            "no zero separator": self.encrypt(pkcs1_block(self.size, premaster,
                                                          separator=False)),
            "47-byte premaster": self.encrypt(pkcs1_block(self.size, premaster[:47])),
            "49-byte premaster": self.encrypt(pkcs1_block(self.size, premaster + b"\x01")),
            "empty premaster": self.encrypt(pkcs1_block(self.size, b"")),
            "version 0x0301": self.encrypt(pkcs1_block(self.size, b"\x03\x01" + premaster[2:])),
            "random ciphertext": garbage,
            "ciphertext above the modulus": b"\xff" * self.size,
            "ciphertext one byte short": garbage[1:],
        }

    def test_every_case_fails_alike_at_finished(self):
        before = self.daemon.key_stats()
        outcomes = {}
        logs = {}
        for name, ciphertext in self.cases().items():
            mark = self.daemon.log_mark()
            outcomes[name] = rsa_exchange(self.daemon.port, ciphertext)
            self.daemon.wait_for_record(mark, result="handshake_failed")
            logs[name] = normalized_lines(self.daemon.log[mark:])

        for name, (early, reply) in outcomes.items():
            with self.subTest(case=name):
                self.assertEqual(early, b"", "the server reacted to the ClientKeyExchange")
                self.assertEqual(reply, BAD_RECORD_MAC_ALERT)
        reference = logs["valid premaster, wrong Finished"]
        self.assertTrue(reference, "no log line for the valid case")
        for name, lines in logs.items():
            with self.subTest(case=name):
                self.assertEqual(lines, reference)

        after = self.daemon.key_stats()
        self.assertEqual(after["decryptions"] - before["decryptions"], len(outcomes),
                         (before, after))
        self.assertEqual(after["refused"], before["refused"], (before, after))
        self.assertEqual(after["malformed"], before["malformed"], (before, after))
        self.assertEqual(self.backend.connections, 0)


if __name__ == "__main__":
    unittest.main()
