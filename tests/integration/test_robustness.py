"""Robustness of the daemon under hostile, slow, numerous and half-closed clients.

Every test runs the real daemon against real clients and plaintext backends from harness.py.
Each class starts its own daemon because the limits under test differ. The relay cases use
the harness defaults and the deadline cases a 1 s handshake timeout. The concurrency cases
set max-connections above and below the number of clients, and the descriptor case limits
the supervisor to 64 descriptors (RLIMIT_NOFILE).
"""

import concurrent.futures
import contextlib
import hashlib
import os
import re
import select
import signal
import socket
import ssl
import threading
import time
import unittest

import harness

HTTP_BODY = b"cloister robustness backend\n"
EOF_REPLY = b"got-eof\n"
# A live connection process is titled "cloister: connection ID PEER".
CONNECTION_TITLE = re.compile(r"^cloister: connection (\d+) (\S+)$")
SPARE_TITLE = "cloister: connection (spare)"
KEY_TITLE = "cloister: key"


# ------------------------------------------------------------------------------------------
# Clients


class MemoryClient:
    """A TLS 1.2/1.3 client driven through memory BIOs over a blocking socket.

    The caller decides when each byte goes out, so a test can send the ClientHello in
    pieces, stop in the middle of the handshake, or half-close in either layer.
    """

    def __init__(self, server_hostname="www.example.test", version=None):
        context = harness.tls_context(version=version)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing,
                                    server_hostname=server_hostname)
        self.close_notify_sent = False

    def client_hello(self):
        """Return the TLS records of the ClientHello (the first flight)."""
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.do_handshake()
        return self.outgoing.read()

    def finish_handshake(self, sock):
        """Complete the handshake over sock after the ClientHello was sent."""
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(self.outgoing.read())
                self._receive(sock)
        sock.sendall(self.outgoing.read())

    def write(self, sock, data):
        self.tls.write(data)
        sock.sendall(self.outgoing.read())

    def send_close_notify(self, sock):
        """Send close_notify; reading stays possible (RFC 8446 section 6.1)."""
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.unwrap()
        sock.sendall(self.outgoing.read())
        self.close_notify_sent = True

    def read_until_close(self, sock, answer=True):
        """Read application data until the server closes; return (data, close_notify seen).

        With ``answer``, the client sends its own close_notify in reply to the server's,
        unless it sent one already. A client that shut down its TCP write side passes False.
        """
        data = bytearray()
        while True:
            try:
                piece = self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._receive(sock)
                continue
            except ssl.SSLZeroReturnError:
                piece = b""
            except ssl.SSLEOFError:
                return bytes(data), False
            if not piece:
                if answer and not self.close_notify_sent:
                    self.send_close_notify(sock)
                return bytes(data), True
            data += piece

    def _receive(self, sock):
        chunk = sock.recv(65536)
        if chunk:
            self.incoming.write(chunk)
        else:
            self.incoming.write_eof()


def send_pipelined_records(test, port, server_hostname, version, count=20):
    """Send count small records in one write after the handshake, then read the echo.

    The server reads all of them at once (OpenSSL with read-ahead, Botan with one large
    recv), so the proxy loop must pass on records that wait inside the TLS stack while the
    socket has nothing more to read. The client sends nothing else until the whole echo has
    arrived, so a record left inside the stack shows as a timeout.
    """
    client = MemoryClient(server_hostname, version=version)
    pieces = [f"request {index:03d}\n".encode() for index in range(count)]
    with connect(port, timeout=10) as sock:
        sock.sendall(client.client_hello())
        client.finish_handshake(sock)
        for piece in pieces:
            client.tls.write(piece)
        flight = client.outgoing.read()
        sock.sendall(flight)
        expected = b"".join(pieces)
        received = bytearray()
        while len(received) < len(expected):
            try:
                received += client.tls.read(65536)
            except ssl.SSLWantReadError:
                client._receive(sock)  # pylint: disable=protected-access
        client.send_close_notify(sock)
        data, _ = client.read_until_close(sock)
    test.assertGreater(len(flight), len(expected) + count * 16)  # one record per piece
    test.assertEqual(bytes(received) + data, expected)


def connect(port, timeout=harness.DEFAULT_TIMEOUT):
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def wait_until_closed(sock, timeout):
    """Read from sock until the peer closes it; return the seconds that took.

    Raises TimeoutError when the peer keeps it open for ``timeout`` seconds.
    """
    start = time.monotonic()
    while True:
        remaining = start + timeout - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"the server kept the connection open for {timeout} s")
        readable, _, _ = select.select([sock], [], [], remaining)
        if readable:
            try:
                if not sock.recv(65536):
                    return time.monotonic() - start
            except ConnectionResetError:
                return time.monotonic() - start


def trickle_until_closed(port, hello, interval, timeout):
    """Send a record header's first 3 bytes, then one byte per ``interval`` seconds.

    Returns (seconds until the server closed, bytes sent). Raises TimeoutError when the
    server keeps the connection open for ``timeout`` seconds.
    """
    with connect(port) as sock:
        start = time.monotonic()
        sock.sendall(hello[:3])
        sent = 3
        while time.monotonic() - start < timeout:
            readable, _, _ = select.select([sock], [], [], interval)
            try:
                if readable and not sock.recv(65536):
                    return time.monotonic() - start, sent
                if not readable:
                    sock.sendall(hello[sent:sent + 1])
                    sent += 1
            except (ConnectionResetError, BrokenPipeError):
                return time.monotonic() - start, sent
        raise TimeoutError(f"the server kept a trickling client for {timeout} s")


def live_connection(daemon, local_port):
    """Return the connection process serving the client at 127.0.0.1:local_port."""
    peer = f"127.0.0.1:{local_port}"
    children = daemon.wait_for_children(
        lambda found: any(CONNECTION_TITLE.match(p.title) and p.title.endswith(" " + peer)
                          for p in found))
    return next(p for p in children if p.title.endswith(" " + peer))


def wait_for_spares_only(test, daemon, spares):
    """Wait until the supervisor's children are the key process and ``spares`` spares."""
    def baseline(children):
        titles = sorted(p.title for p in children)
        return titles == sorted([KEY_TITLE] + [SPARE_TITLE] * spares)

    children = daemon.wait_for_children(baseline)
    test.assertEqual(len(children), spares + 1, children)
    daemon.assert_no_zombies()


def http_exchange(port, server_hostname="www.example.test"):
    """Send one HTTP request over TLS; return the bytes received (ssl.SSLError on failure)."""
    request = harness.http_request(server_hostname)
    return harness.tls_request(port, request, server_hostname=server_hostname).data


def wait_for_results(test, daemon, mark, count, timeout=30):
    """Wait for ``count`` connection records after ``mark``; return their results in order.

    A connection process logs its record after the client saw the end of the stream, so a
    record can lag behind the client by a moment.
    """
    deadline = time.monotonic() + timeout
    while True:
        results = [record.get("result") for record in daemon.connection_records(mark)]
        if len(results) >= count or time.monotonic() > deadline:
            test.assertEqual(len(results), count, daemon.log_since(mark))
            return results
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------
# Relay: large transfers, half-close, malformed and odd ClientHellos, unreachable backends


EARLY_REPLY = bytes(range(256)) * 120  # 30720 bytes


class EarlyReplyBackend(harness.Backend):
    """A backend that reads the first bytes of a request, sends EARLY_REPLY and closes with
    the rest unread, as a server that refuses an oversized upload does. The unread bytes make
    its kernel reset the connection."""

    def serve(self, connection: socket.socket) -> None:
        self.record(connection.recv(1024))
        connection.sendall(EARLY_REPLY)


class RelayTest(unittest.TestCase):
    """One daemon with five vhosts: echo (the default), read-until-EOF, HTTP, one that replies
    before it has read the request, and one whose backend port is closed."""

    @classmethod
    def setUpClass(cls):
        pki = harness.pki()
        cls.echo = harness.EchoBackend().start()
        cls.addClassCleanup(cls.echo.stop)
        cls.eof = harness.EofBackend(reply=lambda data: EOF_REPLY).start()
        cls.addClassCleanup(cls.eof.stop)
        cls.http = harness.HttpBackend(HTTP_BODY).start()
        cls.addClassCleanup(cls.http.stop)
        cls.early = EarlyReplyBackend().start()
        cls.addClassCleanup(cls.early.stop)
        # Nothing listens on this port once the probe socket is closed.
        cls.closed_port = harness.free_port()
        vhosts = [
            harness.vhost(["echo.example.test"], cls.echo, pki.p256, default=True),
            harness.vhost(["eof.example.test"], cls.eof, pki.rsa),
            harness.vhost(["www.example.test"], cls.http, pki.p256),
            harness.vhost(["early.example.test"], cls.early, pki.p256),
            harness.vhost(["down.example.test"], f"127.0.0.1:{cls.closed_port}", pki.p256),
        ]
        cls.daemon = harness.Daemon(harness.config(vhosts, [pki.p256, pki.rsa]))
        cls.addClassCleanup(cls.daemon.close)
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def tearDown(self):
        self.daemon.assert_no_zombies()

    def test_echo_four_mebibytes_each_way(self):
        mark = self.daemon.log_mark()
        payload = os.urandom(4 << 20)
        result = harness.tls_request(self.daemon.port, payload, half_close=True,
                                     server_hostname="echo.example.test", timeout=60)
        details = self.daemon.log_since(mark)
        self.assertEqual(len(result.data), len(payload), details)
        self.assertEqual(hashlib.sha256(result.data).hexdigest(),
                         hashlib.sha256(payload).hexdigest(), details)
        self.assertEqual(hashlib.sha256(self.echo.requests[-1]).hexdigest(),
                         hashlib.sha256(payload).hexdigest())
        self.assertTrue(result.close_notify)
        record = self.daemon.wait_for_record(mark, sni="echo.example.test")
        self.assertEqual(record.get("bytes_in"), str(4 << 20), record)
        self.assertEqual(record.get("bytes_out"), str(4 << 20), record)
        self.assertEqual(record.get("result"), "ok", record)

    def test_pipelined_records_tls13(self):
        send_pipelined_records(self, self.daemon.port, "echo.example.test", "1.3")

    def test_pipelined_records_tls12(self):
        send_pipelined_records(self, self.daemon.port, "echo.example.test", "1.2")

    def test_half_close_socat(self):
        mark = self.daemon.log_mark()
        # socat sends close_notify and then shuts down its write side at the end of stdin,
        # and -t5 keeps it reading for up to 5 s afterwards.
        target = f"OPENSSL:127.0.0.1:{self.daemon.port},verify=0,snihost=eof.example.test"
        result = harness.run_client(["socat", "-t5", "-", target], input=b"hello",
                                    timeout=15)
        details = result.stderr.decode(errors="replace") + self.daemon.log_since(mark)
        self.assertEqual(result.returncode, 0, details)
        self.assertEqual(result.stdout, EOF_REPLY, details)
        record = self.daemon.wait_for_record(mark, sni="eof.example.test")
        self.assertEqual(record.get("bytes_in"), "5", record)
        self.assertEqual(record.get("bytes_out"), str(len(EOF_REPLY)), record)
        self.assertEqual(record.get("result"), "ok", record)

    def test_half_close_close_notify_and_fin(self):
        mark = self.daemon.log_mark()
        request = b"request body, then close_notify and FIN\n"
        client = MemoryClient("eof.example.test", version="1.3")
        with connect(self.daemon.port) as sock:
            sock.sendall(client.client_hello())
            client.finish_handshake(sock)
            client.write(sock, request)
            client.send_close_notify(sock)
            sock.shutdown(socket.SHUT_WR)
            data, close_notify = client.read_until_close(sock)
        details = self.daemon.log_since(mark)
        self.assertEqual(client.tls.version(), "TLSv1.3")
        self.assertEqual(data, EOF_REPLY, details)
        self.assertTrue(close_notify, details)
        record = self.daemon.wait_for_record(mark, sni="eof.example.test")
        self.assertEqual(self.eof.requests[-1], request)
        self.assertEqual(record.get("bytes_in"), str(len(request)), record)
        self.assertEqual(record.get("result"), "ok", record)

    def test_fin_without_close_notify_is_truncation(self):
        mark = self.daemon.log_mark()
        request = b"request body, then FIN without close_notify\n"
        client = MemoryClient("eof.example.test", version="1.3")
        with connect(self.daemon.port) as sock:
            sock.sendall(client.client_hello())
            client.finish_handshake(sock)
            client.write(sock, request)
            sock.shutdown(socket.SHUT_WR)
            data, close_notify = client.read_until_close(sock, answer=False)
        details = self.daemon.log_since(mark)
        # The backend saw the truncation as EOF and still replied.
        self.assertEqual(data, EOF_REPLY, details)
        self.assertTrue(close_notify, details)
        record = self.daemon.wait_for_record(mark, sni="eof.example.test")
        self.assertEqual(self.eof.requests[-1], request)
        self.assertEqual(record.get("bytes_in"), str(len(request)), record)
        self.assertEqual(record.get("bytes_out"), str(len(EOF_REPLY)), record)
        self.assertEqual(record.get("result"), "truncated", record)
        self.assertIn("client closed without close_notify", self.daemon.log[mark:])

    def check_garbage(self, garbage):
        """Send ``garbage`` as the first bytes while another connection is open."""
        supervisor, key_pid = self.daemon.pid, self.daemon.key_pid
        with harness.tls_connect(self.daemon.port,
                                 server_hostname="echo.example.test") as held:
            held.sendall(b"before")
            self.assertEqual(held.recv(16), b"before")
            mark = self.daemon.log_mark()
            with connect(self.daemon.port) as sock:
                sock.sendall(garbage)
                # A rejection is immediate; only the 5 s handshake timeout would take longer.
                elapsed = wait_until_closed(sock, timeout=10)
            record = self.daemon.wait_for_record(mark, result="handshake_failed")
            held.sendall(b"after")
            self.assertEqual(held.recv(16), b"after")
            held.unwrap()
        self.assertLess(elapsed, 4.0, self.daemon.log_since(mark))
        self.assertEqual(record.get("bytes_in"), "0", record)
        self.assertEqual(http_exchange(self.daemon.port), self.http.response)
        self.assertTrue(self.daemon.running)
        self.assertEqual(self.daemon.pid, supervisor)
        self.assertEqual(self.daemon.key_pid, key_pid)
        log = self.daemon.log[mark:]
        self.assertNotIn("connection process failed", log)
        self.assertNotRegex(log, r"connection process \d+ \(connection \d+\) exited")

    def test_garbage_plain_http(self):
        self.check_garbage(b"GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n")

    def test_garbage_random_bytes(self):
        # Starts with 0xff, which is no TLS content type.
        self.check_garbage(b"\xff" + os.urandom(1023))

    def test_garbage_oversized_record(self):
        # A handshake record header announcing 65535 bytes, more than TLS allows.
        self.check_garbage(b"\x16\x03\x01\xff\xff" + os.urandom(512))

    def test_garbage_inside_handshake_record(self):
        # A well-formed record header whose body is no ClientHello.
        body = os.urandom(200)
        self.check_garbage(b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body)

    def test_client_hello_in_one_byte_segments(self):
        mark = self.daemon.log_mark()
        client = MemoryClient("www.example.test")
        hello = client.client_hello()
        with connect(self.daemon.port) as sock:
            for index in range(len(hello)):
                sock.sendall(hello[index:index + 1])
                time.sleep(0.001)
            client.finish_handshake(sock)
            client.write(sock, harness.http_request("www.example.test"))
            data, close_notify = client.read_until_close(sock)
        details = self.daemon.log_since(mark)
        self.assertGreater(len(hello), 200)
        self.assertEqual(data, self.http.response, details)
        self.assertTrue(close_notify, details)
        record = self.daemon.wait_for_record(mark, sni="www.example.test")
        self.assertEqual(record.get("protocol"), "TLSv1.3", record)
        self.assertEqual(record.get("result"), "ok", record)

    def test_client_hello_of_four_kilobytes(self):
        mark = self.daemon.log_mark()
        protocols = ",".join(f"protocol-{index:03d}" for index in range(400))
        result = harness.s_client(self.daemon.port, servername="www.example.test",
                                  request=harness.http_request("www.example.test"),
                                  extra=["-alpn", protocols, "-msg"])
        details = result.describe() + self.daemon.log_since(mark)
        match = re.search(r">>> TLS 1\.3, Handshake \[length ([0-9a-f]+)\], ClientHello",
                          result.text)
        self.assertIsNotNone(match, details)
        self.assertGreater(int(match.group(1), 16), 4096, details)
        self.assertEqual(result.returncode, 0, details)
        self.assertEqual(result.protocol, "TLSv1.3", details)
        self.assertEqual(result.stdout.count(self.http.response), 1, details)
        record = self.daemon.wait_for_record(mark, sni="www.example.test")
        self.assertEqual(record.get("result"), "ok", record)

    def test_early_backend_reply_reaches_client(self):
        # The client sends its whole upload before it reads anything. The backend replies
        # after 1 KiB and resets. The connection process passes the reply on, then reads and
        # drops the rest of the upload. Closing with the upload unread would reset the
        # client's connection, and its sendall would fail or the reply would be lost.
        mark = self.daemon.log_mark()
        upload = os.urandom(8 << 20)
        with harness.tls_connect(self.daemon.port, server_hostname="early.example.test",
                                 timeout=30) as client:
            received = bytearray()
            try:
                client.sendall(upload)
                while chunk := client.recv(65536):
                    received += chunk
            except OSError as error:
                self.fail(f"{error!r} after {len(received)} bytes\n{self.daemon.log_since(mark)}")
        details = self.daemon.log_since(mark)
        self.assertEqual(bytes(received), EARLY_REPLY, details)
        record = self.daemon.wait_for_record(mark, sni="early.example.test")
        self.assertEqual(record.get("result"), "error", record)
        # The backend's reset fails a send to it or a receive from it, whichever comes first.
        self.assertRegex(details, r"(send to|receive from) backend failed: .*; passing on what "
                                  r"the backend sent before")
        self.assertEqual(record.get("bytes_out"), str(len(EARLY_REPLY)), record)

    def test_unreachable_backend(self):
        mark = self.daemon.log_mark()
        connections = self.http.connections
        result = harness.tls_request(self.daemon.port, b"", server_hostname="down.example.test")
        details = self.daemon.log_since(mark)
        self.assertEqual(result.data, b"", details)
        self.assertTrue(result.close_notify, details)
        backend = f"127.0.0.1:{self.closed_port}"
        self.daemon.wait_for_log(
            re.compile(rf"backend {re.escape(backend)} unreachable: Connection refused"),
            since=mark)
        record = self.daemon.wait_for_record(mark, sni="down.example.test")
        self.assertEqual(record.get("result"), "backend_unreachable", record)
        self.assertEqual(self.http.connections, connections)


# ------------------------------------------------------------------------------------------
# Handshake deadline


class HandshakeDeadlineTest(unittest.TestCase):
    """A 1 s handshake deadline against silent and trickling clients."""

    TIMEOUT = 1.0  # seconds, the daemon's handshake-timeout
    SPARES = 2

    @classmethod
    def setUpClass(cls):
        pki = harness.pki()
        cls.http = harness.HttpBackend(HTTP_BODY).start()
        cls.addClassCleanup(cls.http.stop)
        cls.early = EarlyReplyBackend().start()
        cls.addClassCleanup(cls.early.stop)
        document = harness.config(
            [harness.vhost(["www.example.test"], cls.http, pki.p256, default=True)],
            [pki.p256],
            limits={"handshake-timeout": "1s", "max-connections": 256,
                    "spare-children": cls.SPARES})
        cls.daemon = harness.Daemon(document)
        cls.addClassCleanup(cls.daemon.close)
        cls.daemon.start()
        cls.hello = MemoryClient().client_hello()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def tearDown(self):
        self.daemon.assert_no_zombies()

    def test_silent_client_closed_at_deadline(self):
        mark = self.daemon.log_mark()
        with connect(self.daemon.port) as sock:
            elapsed = wait_until_closed(sock, timeout=10)
        details = f"closed after {elapsed:.2f} s" + self.daemon.log_since(mark)
        self.assertGreaterEqual(elapsed, self.TIMEOUT - 0.05, details)
        self.assertLess(elapsed, self.TIMEOUT + 0.8, details)
        record = self.daemon.wait_for_record(mark, result="handshake_timeout")
        self.assertEqual(record.get("bytes_in"), "0", record)

    def test_trickling_client_closed_at_deadline(self):
        mark = self.daemon.log_mark()
        elapsed, sent = trickle_until_closed(self.daemon.port, self.hello, interval=0.3,
                                             timeout=10)
        details = f"closed after {elapsed:.2f} s, {sent} bytes" + self.daemon.log_since(mark)
        self.assertGreaterEqual(elapsed, self.TIMEOUT - 0.05, details)
        self.assertLess(elapsed, self.TIMEOUT + 0.8, details)
        # Bytes kept arriving until the deadline: the header, then one per 0.3 s.
        self.assertGreaterEqual(sent, 6, details)
        self.daemon.wait_for_record(mark, result="handshake_timeout")
        self.assertIn('result=handshake_timeout reason="no complete handshake within 1000 ms"',
                      self.daemon.log[mark:])

    def test_slow_clients_do_not_delay_others(self):
        silent_count, trickle_count, normal_count = 50, 20, 6
        before = self.daemon.key_stats()
        mark = self.daemon.log_mark()
        slow_started = threading.Barrier(silent_count + trickle_count + 1, timeout=30)

        # Each slow client returns (connected, closed by the server), in monotonic seconds.
        def silent():
            with connect(self.daemon.port) as sock:
                connected = time.monotonic()
                slow_started.wait()
                wait_until_closed(sock, timeout=10)
                return connected, time.monotonic()

        def trickling():
            slow_started.wait()
            connected = time.monotonic()
            elapsed, _ = trickle_until_closed(self.daemon.port, self.hello, 0.3, timeout=10)
            return connected, connected + elapsed

        with concurrent.futures.ThreadPoolExecutor(silent_count + trickle_count) as pool:
            slow = [pool.submit(silent) for _ in range(silent_count)]
            slow += [pool.submit(trickling) for _ in range(trickle_count)]
            slow_started.wait()
            normal = [http_exchange(self.daemon.port) for _ in range(normal_count)]
            normal_done = time.monotonic()
            slow_times = [future.result() for future in slow]
        durations = [closed - connected for connected, closed in slow_times]
        first_closed = min(closed for _, closed in slow_times)
        details = (f"normal clients done {first_closed - normal_done:.3f} s before the first "
                   f"slow client was closed; slow clients closed after "
                   f"{[round(d, 2) for d in sorted(durations)]} s")
        self.assertEqual(normal, [self.http.response] * normal_count)
        # Served while all 70 slow clients still held their connection processes.
        self.assertLess(normal_done, first_closed, details)
        self.assertGreaterEqual(min(durations), self.TIMEOUT - 0.05, details)
        self.assertLess(max(durations), self.TIMEOUT + 1.5, details)
        results = wait_for_results(self, self.daemon, mark,
                                   silent_count + trickle_count + normal_count)
        self.assertEqual(results.count("handshake_timeout"), silent_count + trickle_count)
        self.assertEqual(results.count("ok"), normal_count)
        wait_for_spares_only(self, self.daemon, self.SPARES)
        after = self.daemon.key_stats()
        # Only the normal clients cost a signature; the slow ones never reached the key.
        self.assertEqual(after["signatures"] - before["signatures"], normal_count,
                         (before, after))


# ------------------------------------------------------------------------------------------
# Concurrency and max-connections


class BarrierBackend(harness.Backend):
    """An HTTP backend that replies only once ``parties`` requests are open at the same time.

    ``on_full`` runs once when they are, in the last request's thread.
    """

    def __init__(self, parties, on_full=None, **kwargs):
        super().__init__(**kwargs)
        self.response = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nall"
        self.barrier = threading.Barrier(parties, action=on_full, timeout=60)

    def serve(self, connection):
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = connection.recv(65536)
            if not chunk:
                return
            request += chunk
        self.record(request)
        self.barrier.wait()
        connection.sendall(self.response)
        connection.shutdown(socket.SHUT_WR)
        # Reading to EOF before closing avoids a reset that could discard the response.
        while connection.recv(65536):
            pass


class CountingBackend(harness.HttpBackend):
    """An HTTP backend that waits ``delay`` seconds before serving each connection and
    records the highest number of connections open at once in ``max_active``."""

    def __init__(self, delay, **kwargs):
        super().__init__(HTTP_BODY, **kwargs)
        self.delay = delay
        self.active = 0
        self.max_active = 0

    def serve(self, connection):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay)
        finally:
            # The count drops before the reply goes out: the proxy cannot end this connection,
            # and so cannot accept the next one, until the reply has been sent.
            with self._lock:
                self.active -= 1
        super().serve(connection)


class ConcurrencyTest(unittest.TestCase):
    """Many clients at once, with max-connections above and below their number."""

    def run_clients(self, port, count, timeout):
        def exchange(_):
            request = harness.http_request("www.example.test")
            return harness.tls_request(port, request, timeout=timeout).data

        with concurrent.futures.ThreadPoolExecutor(count) as pool:
            return list(pool.map(exchange, range(count)))

    def test_two_hundred_concurrent_connections(self):
        count = 200
        pki = harness.pki()
        live_counts = []
        daemon = None

        def count_live_connections():
            live_counts.append(sum(1 for p in daemon.children()
                                   if CONNECTION_TITLE.match(p.title)))

        with BarrierBackend(count, on_full=count_live_connections) as backend:
            document = harness.config(
                [harness.vhost(["www.example.test"], backend, pki.p256, default=True)],
                [pki.p256], limits={"max-connections": 256})
            with harness.Daemon(document) as daemon:
                mark = daemon.log_mark()
                replies = self.run_clients(daemon.port, count, timeout=90)
                results = wait_for_results(self, daemon, mark, count)
                daemon.assert_no_zombies()
        self.assertEqual(replies, [backend.response] * count)
        self.assertFalse(backend.barrier.broken)
        self.assertEqual(backend.connections, count)
        # All 200 connection processes were alive when the last request arrived.
        self.assertEqual(live_counts, [count])
        self.assertEqual(results, ["ok"] * count)

    def test_max_connections_queues_in_backlog(self):
        count, delay = 6, 0.4
        pki = harness.pki()
        with CountingBackend(delay) as backend:
            document = harness.config(
                [harness.vhost(["www.example.test"], backend, pki.p256, default=True)],
                [pki.p256], limits={"max-connections": 2, "spare-children": 2})
            with harness.Daemon(document) as daemon:
                mark = daemon.log_mark()
                start = time.monotonic()
                replies = self.run_clients(daemon.port, count, timeout=30)
                elapsed = time.monotonic() - start
                results = wait_for_results(self, daemon, mark, count)
                daemon.assert_no_zombies()
        self.assertEqual(replies, [backend.response] * count)
        self.assertEqual(backend.max_active, 2)
        # Three rounds of two, each held by the backend for ``delay`` seconds.
        self.assertGreaterEqual(elapsed, 3 * delay)
        self.assertEqual(results, ["ok"] * count)


# ------------------------------------------------------------------------------------------
# Descriptor exhaustion


def descriptor_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def socket_inodes(pid):
    """Return {fd: inode} for the sockets among pid's descriptors, and the other fds."""
    sockets, others = {}, []
    for name in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{name}")
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match:
            sockets[int(name)] = int(match.group(1))
        else:
            others.append(int(name))
    return sockets, sorted(others)


def table_lines(pid, table):
    """Return the rows of /proc/PID/net/TABLE without the header."""
    with open(f"/proc/{pid}/net/{table}") as rows:
        return rows.read().splitlines()[1:]


def tcp_sockets(pid):
    """Return {inode: (local port, remote port)} from /proc/PID/net/tcp and tcp6."""
    found = {}
    for table in ("tcp", "tcp6"):
        for line in table_lines(pid, table):
            fields = line.split()
            local, remote, inode = fields[1], fields[2], int(fields[9])
            found[inode] = (int(local.split(":")[1], 16), int(remote.split(":")[1], 16))
    return found


def unix_socket_inodes(pid):
    return {int(line.split()[6]) for line in table_lines(pid, "unix")}


class DescriptorLimitTest(unittest.TestCase):
    """A supervisor limited to 64 descriptors under 500 connections with mixed outcomes,
    while silent clients hold more connection processes than 64 descriptors allow."""

    SPARES = 2
    CLIENTS = 500
    PARALLEL = 32  # mixed clients at a time
    # Each silent client keeps a connection process busy, and so a status socket open in
    # the supervisor, until its 2 s handshake deadline. 64 of them exhaust the supervisor's
    # descriptors, so it must retry starting spares instead of failing.
    SILENT = 64
    # The outcomes of the mixed clients, taken in turn; run_client implements each.
    KINDS = ["good", "unknown_sni", "abort", "backend_closed"]

    def test_mixed_outcomes_with_64_descriptors(self):
        pki = harness.pki()
        closed_port = harness.free_port()
        with harness.HttpBackend(HTTP_BODY) as backend:
            vhosts = [
                harness.vhost(["www.example.test"], backend, pki.p256, default=True),
                harness.vhost(["down.example.test"], f"127.0.0.1:{closed_port}", pki.p256),
            ]
            document = harness.config(
                vhosts, [pki.p256], tls={"unknown-sni": "reject"},
                limits={"spare-children": self.SPARES, "handshake-timeout": "2s"})
            with harness.Daemon(document) as daemon:
                self.daemon, self.backend = daemon, backend
                self.check_mixed_outcomes()

    def check_mixed_outcomes(self):
        daemon = self.daemon
        wait_for_spares_only(self, daemon, self.SPARES)
        key_pid = daemon.key_pid
        baseline = (descriptor_count(daemon.pid), descriptor_count(key_pid))
        limit = harness.run(["prlimit", "--pid", str(daemon.pid), "--nofile=64:64"])
        self.assertEqual(limit.returncode, 0, limit.stderr)
        with open(f"/proc/{daemon.pid}/limits") as limits:
            self.assertRegex(limits.read(), r"Max open files\s+64\s+64\s+files")

        mark = daemon.log_mark()
        silent = [connect(daemon.port) for _ in range(self.SILENT)]
        try:
            daemon.wait_for_log(
                r"starting a spare connection process failed: .*Too many open files",
                since=mark)
            outcomes = self.run_mixed_clients()
            silent_elapsed = [wait_until_closed(sock, timeout=30) for sock in silent]
        finally:
            for sock in silent:
                sock.close()

        details = self.describe_failures(outcomes) + daemon.log_since(mark)
        self.assertEqual([ok for _, ok, _ in outcomes], [True] * self.CLIENTS, details)
        self.assertEqual(len(silent_elapsed), self.SILENT)
        results = wait_for_results(self, daemon, mark, self.CLIENTS + self.SILENT)
        per_kind = self.CLIENTS // len(self.KINDS)
        self.assertEqual(results.count("ok"), per_kind)
        self.assertEqual(results.count("handshake_failed"), 2 * per_kind)
        self.assertEqual(results.count("backend_unreachable"), per_kind)
        self.assertEqual(results.count("handshake_timeout"), self.SILENT)

        # Still serving, and every descriptor of the storm released.
        self.assertEqual(http_exchange(daemon.port), self.backend.response)
        wait_for_spares_only(self, daemon, self.SPARES)
        self.assertEqual(daemon.key_pid, key_pid)
        self.wait_for_descriptors(baseline, key_pid)
        self.check_live_connection_descriptors()

    def run_mixed_clients(self):
        kinds = [self.KINDS[i % len(self.KINDS)] for i in range(self.CLIENTS)]
        with concurrent.futures.ThreadPoolExecutor(self.PARALLEL) as pool:
            return list(pool.map(self.run_client, kinds))

    def run_client(self, kind):
        """Run one client of ``kind``; return (kind, as expected, what happened)."""
        port = self.daemon.port
        try:
            if kind == "good":
                data = http_exchange(port)
                return kind, data == self.backend.response, data[:60]
            if kind == "backend_closed":
                result = harness.tls_request(port, b"", server_hostname="down.example.test")
                return kind, result.data == b"" and result.close_notify, result.data[:60]
            if kind == "abort":
                with connect(port) as sock:
                    sock.sendall(MemoryClient().client_hello()[:40])
                return kind, True, "aborted"
            http_exchange(port, server_hostname="unknown.example.invalid")
            return kind, False, "handshake succeeded"
        except ssl.SSLError as error:
            return kind, kind == "unknown_sni" and error.reason == "TLSV1_UNRECOGNIZED_NAME", \
                repr(error)
        except (OSError, TimeoutError) as error:
            return kind, False, repr(error)

    def describe_failures(self, outcomes):
        failures = [outcome for outcome in outcomes if not outcome[1]]
        return f"{len(failures)} unexpected outcomes, first ones: {failures[:5]}"

    def wait_for_descriptors(self, baseline, key_pid):
        deadline = time.monotonic() + 20
        while True:
            counts = (descriptor_count(self.daemon.pid), descriptor_count(key_pid))
            if counts == baseline or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(counts[0], baseline[0], "supervisor descriptors")
        self.assertEqual(counts[1], baseline[1], "key process descriptors")

    def check_live_connection_descriptors(self):
        """Check the descriptors of a live connection process: /dev/null on 0 and 1, the log
        on 2, and four sockets (client, backend, key channel and status socket)."""
        sock = connect(self.daemon.port)
        with harness.tls_context().wrap_socket(sock, server_hostname="www.example.test") as tls:
            # The backend waits for the blank line that ends the headers.
            tls.sendall(b"GET / HTTP/1.1\r\n")
            process = live_connection(self.daemon, tls.getsockname()[1])
            deadline = time.monotonic() + 10
            while len(tcp_connections := self.process_tcp(process.pid)) < 2:
                self.assertLess(time.monotonic(), deadline, "no backend connection")
                time.sleep(0.05)
            sockets, others = socket_inodes(process.pid)
            unix = unix_socket_inodes(process.pid)
            listing = harness.run(["ls", "-l", f"/proc/{process.pid}/fd"]).stdout.decode()
            # Standard input and output are /dev/null, so that a stray write reaches no
            # socket; standard error is the daemon's log.
            self.assertEqual(others, [0, 1, 2], listing)
            self.assertEqual(os.readlink(f"/proc/{process.pid}/fd/0"), "/dev/null", listing)
            self.assertEqual(os.readlink(f"/proc/{process.pid}/fd/1"), "/dev/null", listing)
            self.assertEqual(os.readlink(f"/proc/{process.pid}/fd/2"),
                             str(self.daemon.log_path), listing)
            self.assertEqual(len(sockets), 4, listing)
            client_port = tls.getsockname()[1]
            local_by_remote = {remote: local for local, remote in tcp_connections.values()}
            self.assertEqual(sorted(local_by_remote), sorted([client_port, self.backend.port]),
                             listing)
            self.assertEqual(local_by_remote[client_port], self.daemon.port, listing)
            unix_fds = [fd for fd, inode in sockets.items() if inode in unix]
            self.assertEqual(len(unix_fds), 2, listing)
            tls.sendall(b"\r\n")
            response = b""
            while chunk := tls.recv(65536):
                response += chunk
            self.assertEqual(response, self.backend.response)
            tls.unwrap()

    def process_tcp(self, pid):
        sockets, _ = socket_inodes(pid)
        table = tcp_sockets(pid)
        return {inode: table[inode] for inode in sockets.values() if inode in table}


# ------------------------------------------------------------------------------------------
# Drain on SIGTERM


class DrainTest(unittest.TestCase):
    """After SIGTERM a live connection finishes, new connections are refused, and the
    daemon exits 0."""

    DRAIN = 10.0  # seconds, the daemon's drain-timeout

    def test_sigterm_drains_live_connection(self):
        pki = harness.pki()
        with harness.EchoBackend() as backend:
            document = harness.config(
                [harness.vhost(["www.example.test"], backend, pki.p256, default=True)],
                [pki.p256], limits={"drain-timeout": "10s"})
            with harness.Daemon(document) as daemon:
                self.check_drain(daemon)

    def check_drain(self, daemon):
        port = daemon.port
        with harness.tls_connect(port) as held:
            held.sendall(b"before")
            self.assertEqual(held.recv(16), b"before")
            process = live_connection(daemon, held.getsockname()[1])
            tree = {p.pid: p.title for p in daemon.processes()}
            mark = daemon.log_mark()
            signalled = time.monotonic()
            os.kill(daemon.pid, signal.SIGTERM)
            daemon.wait_for_log(r"stopping: draining 1 connections", since=mark)
            # The spares exit and take their copies of the listener with them.
            daemon.wait_for_children(
                lambda found: {p.pid for p in found if p.title != KEY_TITLE} == {process.pid})
            with self.assertRaises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            held.sendall(b"after")
            self.assertEqual(held.recv(16), b"after")
            held.unwrap()
        status = daemon.process.wait(timeout=self.DRAIN + 5)
        elapsed = time.monotonic() - signalled
        log = daemon.log[mark:]
        self.assertEqual(status, 0, log)
        self.assertLess(elapsed, self.DRAIN, log)
        self.assertNotIn("drain timeout", log)
        self.assertIn("stopped", log)
        record = daemon.wait_for_record(mark, result="ok")
        self.assertEqual(record.get("bytes_in"), str(len(b"beforeafter")), record)
        survivors = [pid for pid, title in tree.items() if process_title(pid) == title]
        self.assertEqual(survivors, [], log)


def process_title(pid):
    """Return the command line of pid as ps shows it, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


if __name__ == "__main__":
    unittest.main()
