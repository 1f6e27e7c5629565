"""Connection processes without network (connection-network = "none") and the backend broker.

The handshake matrix and the TLS 1.3 client cases of test_handshakes.py and test_backends.py
run again on both stacks with connection processes in the shared empty network namespace.
The other classes read a live connection process's namespace and chroot from /proc, try a
TCP connect from inside its namespace, and send rogue broker requests on a connection
process's own status socket, taken with pidfd_getfd(2).
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import socket
import ssl
import struct
import subprocess
import sys
import unittest

import harness
import sandbox_users
import test_backends
import test_handshakes

ROOT_ONLY = unittest.skipUnless(sandbox_users.running_as_root(),
                                "network namespaces, chroot and pidfd_getfd need root")
NO_NETWORK = {"connection-network": "none"}
LIVE_TITLE = re.compile(r"^cloister: connection (\d+) \S+$")
SPARE_TITLE = "cloister: connection (spare)"
SYS_PIDFD_GETFD = 438  # the same number on x86-64 and on the generic table (arm64)


# ------------------------------------------------------------------------------------------
# The shared cases in the shared empty network namespace


@ROOT_ONLY
class NoNetworkHandshakeMatrixTest(test_handshakes.HandshakeMatrixTest):
    sandbox_settings = NO_NETWORK


@ROOT_ONLY
class NoNetworkBotanHandshakeMatrixTest(test_backends.BotanHandshakeMatrixTest):
    sandbox_settings = NO_NETWORK


@ROOT_ONLY
class NoNetworkOpensslTls13ClientTest(test_backends.OpensslTls13ClientTest):
    sandbox_settings = NO_NETWORK


@ROOT_ONLY
class NoNetworkBotanTls13ClientTest(test_backends.BotanTls13ClientTest):
    sandbox_settings = NO_NETWORK


# ------------------------------------------------------------------------------------------
# Helpers


def namespace_of(pid: int, kind: str = "net") -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def live_connections(daemon: harness.Daemon) -> dict[int, int]:
    """Return {pid: connection id} of the connection processes that serve a client."""
    found = {}
    for process in daemon.children():
        match = LIVE_TITLE.match(process.title or "")
        if match:
            found[process.pid] = int(match.group(1))
    return found


def wait_for_new_live(daemon: harness.Daemon, known: set[int]) -> tuple[int, int]:
    """Wait for a serving connection process not in ``known``; return (pid, connection id)."""
    children = daemon.wait_for_children(
        lambda _: any(pid not in known for pid in live_connections(daemon)))
    del children
    return next((pid, cid) for pid, cid in live_connections(daemon).items() if pid not in known)


def in_namespace(pid: int, *argv: str) -> subprocess.CompletedProcess:
    """Run argv in the network namespace of process pid."""
    return subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", *argv], capture_output=True,
                          text=True, timeout=30)


CONNECT_PROBE = """
import socket, sys
s = socket.socket()
s.settimeout(5)
s.connect(("127.0.0.1", int(sys.argv[1])))
print("connected")
"""


def status_socket_of(child: int, supervisor: int) -> int:
    """Return the descriptor number of child's status socket: the SOCK_SEQPACKET socket of
    child whose peer belongs to the supervisor (the key channel's peer is the key process)."""
    output = subprocess.run(["ss", "-x", "-p", "-n"], capture_output=True, text=True,
                            check=True).stdout
    entries = []
    for line in output.splitlines():
        fields = line.split()
        if len(fields) < 8 or fields[0] != "u_seq":
            continue
        owners = [(int(pid), int(fd)) for pid, fd in re.findall(r"pid=(\d+),fd=(\d+)", line)]
        entries.append((fields[5], fields[7], owners))
    supervisor_inodes = {local for local, _, owners in entries
                         if any(pid == supervisor for pid, _ in owners)}
    for _, peer, owners in entries:
        for pid, fd in owners:
            if pid == child and peer in supervisor_inodes:
                return fd
    raise AssertionError(f"no status socket of process {child} in ss output:\n{output}")


def take_descriptor(pid: int, fd: int) -> socket.socket:
    """Return a duplicate of descriptor fd of process pid (pidfd_getfd), as a socket."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        taken = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if taken < 0:
            raise OSError(ctypes.get_errno(), f"pidfd_getfd of fd {fd} of process {pid}")
    finally:
        os.close(pidfd)
    sock = socket.socket(fileno=taken)
    sock.settimeout(harness.DEFAULT_TIMEOUT)
    return sock


def request(index: int) -> bytes:
    return b"B" + struct.pack("<I", index)


def reply_error(sock: socket.socket) -> int:
    """Read one broker reply and return its errno value."""
    data = sock.recv(64)
    if len(data) != 5 or data[:1] != b"C":
        raise AssertionError(f"not a broker reply: {data!r}")
    return struct.unpack("<i", data[1:])[0]


def standard_vhosts(pki, tcp_backend, unix_backend) -> list[dict]:
    return [
        harness.vhost(["www.example.test"], tcp_backend, pki.p256, default=True),
        harness.vhost(["unix.example.test"], unix_backend, pki.p256),
        harness.vhost(["closed.example.test"], f"127.0.0.1:{harness.free_port()}", pki.p256),
    ]


class BrokerDaemonTest(unittest.TestCase):
    """One daemon with a TCP, a Unix socket and an unreachable backend."""

    sandbox_settings: dict = {}

    @classmethod
    def setUpClass(cls):
        pki = harness.pki()
        cls.backend = harness.EchoBackend().start()
        cls.addClassCleanup(cls.backend.stop)
        cls.unix_backend = harness.EchoBackend(
            unix_path=harness.run_dir() / f"{cls.__name__}.sock").start()
        cls.addClassCleanup(cls.unix_backend.stop)
        document = harness.config(standard_vhosts(pki, cls.backend, cls.unix_backend),
                                  [pki.p256], sandbox=cls.sandbox_settings)
        cls.daemon = harness.Daemon(document)
        cls.addClassCleanup(cls.daemon.close)
        cls.daemon.start()
        cls.root = str(harness.empty_root())

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def echo_connection(self, name: str):
        """Open a TLS connection to vhost name and check one echo through its backend."""
        connection = harness.tls_connect(self.daemon.port, server_hostname=name)
        connection.sendall(b"ping")
        self.assertEqual(connection.recv(16), b"ping")
        return connection

    def serving_pid(self) -> int:
        pids = list(live_connections(self.daemon))
        self.assertEqual(len(pids), 1, pids)
        return pids[0]


# ------------------------------------------------------------------------------------------
# connection-network = "none"


@ROOT_ONLY
class NoNetworkProcessTest(BrokerDaemonTest):
    """The namespace, chroot and filter of connection processes without network."""

    sandbox_settings = NO_NETWORK

    def test_start_line_names_the_layer(self):
        self.assertRegex(self.daemon.log, r"sandbox: connection processes: shared empty network "
                                          r"namespace \(backends connected by the supervisor\)")
        self.assertIn("seccomp connection-no-network filter", self.daemon.log)

    def test_namespace_differs_and_is_shared(self):
        with self.echo_connection("www.example.test"):
            pid = self.serving_pid()
            own = namespace_of(pid)
            self.assertNotEqual(own, namespace_of(self.daemon.pid))
            self.assertNotEqual(own, namespace_of(self.daemon.key_pid))
            spares = [p.pid for p in self.daemon.children() if p.title == SPARE_TITLE]
            self.assertTrue(spares)
            for spare in spares:
                self.assertEqual(namespace_of(spare), own)

    def test_namespace_has_only_loopback_down(self):
        with self.echo_connection("www.example.test"):
            result = in_namespace(self.serving_pid(), "ip", "-o", "link", "show")
            self.assertEqual(result.returncode, 0, result.stderr)
            lines = result.stdout.strip().splitlines()
            self.assertEqual(len(lines), 1, result.stdout)
            self.assertRegex(lines[0], r"^1: lo: .*state DOWN")

    def test_tcp_connect_from_namespace_fails(self):
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = str(listener.getsockname()[1])
            # The probe connects from the host's namespace, so the listener is reachable.
            control = subprocess.run([sys.executable, "-c", CONNECT_PROBE, port],
                                     capture_output=True, text=True, timeout=30)
            self.assertEqual(control.stdout.strip(), "connected", control.stderr)
            with self.echo_connection("www.example.test"):
                result = in_namespace(self.serving_pid(), sys.executable, "-c", CONNECT_PROBE,
                                      port)
            self.assertNotEqual(result.returncode, 0, result.stdout)
            self.assertIn("Network is unreachable", result.stderr)

    def test_unix_backend_served_in_chroot(self):
        with self.echo_connection("unix.example.test"):
            pid = self.serving_pid()
            self.assertEqual(os.readlink(f"/proc/{pid}/root"), self.root)
            self.assertNotEqual(namespace_of(pid), namespace_of(self.daemon.pid))
        self.assertNotIn("layer off: chroot of connection processes", self.daemon.log)

    def test_refused_backend_reported_with_reason(self):
        mark = self.daemon.log_mark()
        with harness.tls_connect(self.daemon.port,
                                 server_hostname="closed.example.test") as connection:
            connection.sendall(b"ping")
            try:
                self.assertEqual(connection.recv(16), b"")
            except ssl.SSLError:
                pass
        record = self.daemon.wait_for_record(mark, sni="closed.example.test")
        self.assertEqual(record.get("result"), "backend_unreachable", record)
        self.assertIn("Connection refused (connected by the supervisor)", self.daemon.log[mark:])


# ------------------------------------------------------------------------------------------
# Rogue broker requests


@ROOT_ONLY
class RogueBrokerRequestTest(BrokerDaemonTest):
    """Requests sent on a connection process's status socket by someone who took it over."""

    sandbox_settings = NO_NETWORK

    def take_status_socket(self):
        """Open a TCP connection without a handshake, and take the status socket of the
        connection process that accepted it. Returns (client socket, status socket, id)."""
        known = set(live_connections(self.daemon))
        client = socket.create_connection(("127.0.0.1", self.daemon.port))
        self.addCleanup(client.close)
        pid, connection_id = wait_for_new_live(self.daemon, known)
        status = take_descriptor(pid, status_socket_of(pid, self.daemon.pid))
        self.addCleanup(status.close)
        return client, status, connection_id

    def test_bad_index_then_second_request(self):
        _, status, connection_id = self.take_status_socket()
        connections_before = self.backend.connections
        mark = self.daemon.log_mark()
        status.send(request(99))
        self.assertEqual(reply_error(status), errno.EINVAL)
        self.daemon.wait_for_log(rf"connection {connection_id}: rejected a backend request: "
                                 r"vhost index 99 is out of range \(3 vhosts\)", mark)
        status.send(request(0))
        self.assertEqual(reply_error(status), errno.EALREADY)
        self.daemon.wait_for_log(rf"connection {connection_id}: rejected a backend request: a "
                                 r"connection gets one backend request", mark)
        self.assertEqual(self.backend.connections, connections_before)
        self.assert_still_serving()

    def test_valid_request_then_second_request(self):
        _, status, connection_id = self.take_status_socket()
        mark = self.daemon.log_mark()
        status.send(request(0))
        self.assertEqual(reply_error(status), 0)
        status.send(request(0))
        self.assertEqual(reply_error(status), errno.EALREADY)
        self.daemon.wait_for_log(rf"connection {connection_id}: rejected a backend request: a "
                                 r"connection gets one backend request", mark)
        self.assert_still_serving()

    def test_garbage_bytes(self):
        _, status, connection_id = self.take_status_socket()
        mark = self.daemon.log_mark()
        status.send(b"\x00garbage\xff bytes " * 20)
        self.assertEqual(reply_error(status), errno.EBADMSG)
        self.daemon.wait_for_log(rf"connection {connection_id}: rejected a backend request: a "
                                 r"malformed message of 320 bytes", mark)
        self.assert_still_serving()

    def assert_still_serving(self):
        self.assertTrue(self.daemon.running)
        with self.echo_connection("www.example.test"):
            pass
        with self.echo_connection("unix.example.test"):
            pass


# ------------------------------------------------------------------------------------------
# connection-network = "host"


@ROOT_ONLY
class HostNetworkUnixBackendTest(BrokerDaemonTest):
    """With the host's network, Unix socket backends go through the broker, so the
    connection chroot stays on; TCP backends are connected by the process itself."""

    def test_unix_backend_served_in_chroot(self):
        mark = self.daemon.log_mark()
        with self.echo_connection("unix.example.test"):
            pid = self.serving_pid()
            self.assertEqual(os.readlink(f"/proc/{pid}/root"), self.root)
            self.assertEqual(namespace_of(pid), namespace_of(self.daemon.pid))
        self.assertNotIn("layer off: chroot of connection processes", self.daemon.log)
        self.daemon.wait_for_log(r"connection \d+: connecting the backend of vhost 1", mark)

    def test_tcp_backend_connected_by_connection_process(self):
        mark = self.daemon.log_mark()
        with self.echo_connection("www.example.test"):
            pass
        self.daemon.wait_for_record(mark, sni="www.example.test")
        self.assertNotRegex(self.daemon.log[mark:], r"connecting the backend of vhost")
        self.assertIn("seccomp connection filter", self.daemon.log)


if __name__ == "__main__":
    unittest.main()
