"""Relay between client and backend: half-close, large transfers, unreachable backends."""

import os
import ssl
import unittest

import harness


class RelayTest(unittest.TestCase):
    """One daemon with an echo vhost, a read-until-EOF vhost and a vhost with no backend."""

    @classmethod
    def setUpClass(cls):
        pki = harness.pki()
        cls.echo = harness.EchoBackend().start()
        cls.addClassCleanup(cls.echo.stop)
        cls.eof = harness.EofBackend().start()
        cls.addClassCleanup(cls.eof.stop)
        # Nothing listens on this port once the probe socket is closed.
        closed_port = harness.free_port()
        vhosts = [
            harness.vhost(["echo.example.test"], cls.echo, pki.p256, default=True),
            harness.vhost(["eof.example.test"], cls.eof, pki.p256),
            harness.vhost(["down.example.test"], f"127.0.0.1:{closed_port}", pki.p256),
        ]
        cls.daemon = harness.Daemon(harness.config(vhosts, [pki.p256]))
        cls.addClassCleanup(cls.daemon.close)
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def check_half_close(self, version):
        mark = self.daemon.log_mark()
        request = b"client data, then close_notify\n"
        result = harness.tls_request(self.daemon.port, request, version=version,
                                     server_hostname="eof.example.test", half_close=True)
        reply = f"received {len(request)} bytes\n".encode()
        details = self.daemon.log_since(mark)
        self.assertEqual(result.version, f"TLSv{version}")
        self.assertEqual(result.data, reply, details)
        self.assertTrue(result.close_notify, details)
        self.assertEqual(self.eof.requests[-1], request)
        record = self.daemon.wait_for_record(mark, sni="eof.example.test")
        self.assertEqual(record.get("bytes_in"), str(len(request)), record)
        self.assertEqual(record.get("bytes_out"), str(len(reply)), record)
        self.assertEqual(record.get("result"), "ok", record)

    def test_half_close_tls13(self):
        self.check_half_close("1.3")

    def test_half_close_tls12(self):
        self.check_half_close("1.2")

    def test_echo_one_mebibyte(self):
        mark = self.daemon.log_mark()
        payload = os.urandom(1 << 20)
        result = harness.tls_request(self.daemon.port, payload,
                                     server_hostname="echo.example.test", half_close=True)
        self.assertEqual(len(result.data), len(payload), self.daemon.log_since(mark))
        self.assertEqual(result.data, payload)
        self.assertEqual(self.echo.requests[-1], payload)
        record = self.daemon.wait_for_record(mark, sni="echo.example.test")
        self.assertEqual(record.get("bytes_in"), str(len(payload)), record)
        self.assertEqual(record.get("bytes_out"), str(len(payload)), record)
        self.assertEqual(record.get("result"), "ok", record)

    def test_unreachable_backend(self):
        mark = self.daemon.log_mark()
        try:
            result = harness.tls_request(self.daemon.port, b"anyone there?\n",
                                         server_hostname="down.example.test")
            received = result.data
        except (ssl.SSLError, ConnectionError):
            received = b""  # closing before the handshake ends is also a valid refusal
        self.assertEqual(received, b"")
        record = self.daemon.wait_for_record(mark, sni="down.example.test")
        self.assertEqual(record.get("result"), "backend_unreachable", record)
        self.assertEqual(record.get("bytes_out"), "0", record)


if __name__ == "__main__":
    unittest.main()
