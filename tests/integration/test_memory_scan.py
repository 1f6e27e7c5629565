"""Private-key bytes in process memory: absent from every network-facing process.

The test reads the whole readable memory of live processes through /proc/PID/maps and
/proc/PID/mem, which needs root, while two TLS connections are held open in the middle of
their streams. It looks for the RSA prime p, the RSA private exponent d and the EC private
scalar. Each is searched for in big-endian byte order, as in DER and PEM, and in
little-endian order, as OpenSSL's BIGNUM limbs store it on little-endian machines such as
x86-64. None may appear in a connection process or in the supervisor. Each must appear in
the key process, which proves that the scan can find them.
"""

import os
import re
import unittest

import harness

CHUNK = 16 << 20  # bytes read from /proc/PID/mem at a time
CONNECTION_TITLE = re.compile(r"^cloister: connection (\d+) (\S+)$")


def key_secrets(key_path):
    """Return {name: big-endian bytes} of the private values in a PEM key.

    Parses ``openssl pkey -text -noout``: an RSA key gives "privateExponent" (d) and
    "prime1" (p), an EC key gives "priv" (the scalar). Leading zero bytes are removed, so
    the values have the length of the numbers themselves.
    """
    text = harness.run(["openssl", "pkey", "-in", str(key_path), "-text", "-noout"],
                       timeout=30).stdout.decode()
    secrets = {}
    for label in ("privateExponent", "prime1", "priv"):
        match = re.search(rf"(?m)^{label}:\n((?:\s+[0-9a-f:]+\n)+)", text)
        if match:
            digits = re.sub(r"[\s:]", "", match.group(1))
            secrets[label] = bytes.fromhex(digits).lstrip(b"\0")
    return secrets


def readable_regions(pid):
    """Yield (start, end, name) of each readable mapping of pid."""
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, end = (int(value, 16) for value in fields[0].split("-"))
            name = fields[5].strip() if len(fields) == 6 else ""
            if "r" in fields[1] and name not in ("[vvar]", "[vsyscall]"):
                yield start, end, name


def scan_memory(pid, patterns):
    """Return the set of names whose pattern occurs anywhere in pid's readable memory.

    ``patterns`` maps a name to bytes. A region that cannot be read, such as one unmapped
    during the scan, is skipped. Raises AssertionError when no byte could be read at all.
    """
    found = set()
    overlap = max(len(pattern) for pattern in patterns.values()) - 1
    scanned = 0
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as memory:
        for start, end, _ in readable_regions(pid):
            tail = b""
            for offset in range(start, end, CHUNK):
                try:
                    memory.seek(offset)
                    block = tail + memory.read(min(CHUNK, end - offset))
                except OSError:
                    break
                scanned += len(block) - len(tail)
                found.update(name for name, pattern in patterns.items() if pattern in block)
                tail = block[-overlap:]
    if scanned == 0:
        raise AssertionError(f"no memory of process {pid} could be read")
    return found


def byte_orders(secrets):
    """Return {"NAME big-endian": bytes, "NAME little-endian": bytes} for each secret."""
    patterns = {}
    for name, value in secrets.items():
        patterns[f"{name} big-endian"] = value
        patterns[f"{name} little-endian"] = value[::-1]
    return patterns


@unittest.skipUnless(os.geteuid() == 0, "reading the daemon's /proc/PID/mem needs root")
class MemoryScanTest(unittest.TestCase):
    """An RSA vhost and an EC vhost, each with a connection held open mid-stream."""

    @classmethod
    def setUpClass(cls):
        pki = harness.pki()
        cls.rsa, cls.ec = pki.rsa, pki.p256
        cls.backend = harness.EchoBackend().start()
        cls.addClassCleanup(cls.backend.stop)
        vhosts = [
            harness.vhost(["rsa.example.test"], cls.backend, cls.rsa, default=True),
            harness.vhost(["ec.example.test"], cls.backend, cls.ec),
        ]
        cls.daemon = harness.Daemon(harness.config(vhosts, [cls.rsa, cls.ec]))
        cls.addClassCleanup(cls.daemon.close)
        cls.daemon.start()
        rsa_secrets = {f"RSA {name}": value for name, value in key_secrets(cls.rsa.key).items()}
        ec_secrets = {f"EC {name}": value for name, value in key_secrets(cls.ec.key).items()}
        cls.secrets = {**rsa_secrets, **ec_secrets}
        cls.patterns = byte_orders(cls.secrets)

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def setUp(self):
        self.open_connections = []
        for servername in ("rsa.example.test", "ec.example.test"):
            connection = harness.tls_connect(self.daemon.port, server_hostname=servername)
            self.addCleanup(connection.close)
            # Mid-stream: the handshake is done, data flowed, and the stream stays open.
            connection.sendall(b"first half of the stream")
            self.assertEqual(connection.recv(64), b"first half of the stream")
            self.open_connections.append(connection)

    def tearDown(self):
        for connection in self.open_connections:
            connection.sendall(b"second half")
            self.assertEqual(connection.recv(64), b"second half")
        self.daemon.assert_no_zombies()

    def live_connection_pids(self):
        ports = {f"127.0.0.1:{c.getsockname()[1]}" for c in self.open_connections}
        children = self.daemon.wait_for_children(
            lambda found: len({p.title.split()[-1] for p in found
                               if CONNECTION_TITLE.match(p.title)} & ports) == len(ports))
        return [p.pid for p in children
                if CONNECTION_TITLE.match(p.title) and p.title.split()[-1] in ports]

    def test_secrets_parsed(self):
        self.assertEqual(sorted(self.secrets),
                         ["EC priv", "RSA prime1", "RSA privateExponent"])
        self.assertEqual(len(self.secrets["RSA prime1"]), 128)
        self.assertGreaterEqual(len(self.secrets["RSA privateExponent"]), 250)
        self.assertGreaterEqual(len(self.secrets["EC priv"]), 30)

    def test_key_process_holds_every_secret(self):
        found = scan_memory(self.daemon.key_pid, self.patterns)
        for name in self.secrets:
            with self.subTest(secret=name):
                self.assertTrue({f"{name} big-endian", f"{name} little-endian"} & found,
                                f"{name} not found in the key process: the scan is blind")

    def test_live_connection_processes_hold_no_secret(self):
        pids = self.live_connection_pids()
        self.assertEqual(len(pids), 2)
        for pid in pids:
            with self.subTest(pid=pid):
                self.assertEqual(scan_memory(pid, self.patterns), set())

    def test_spare_connection_processes_hold_no_secret(self):
        spares = [p.pid for p in self.daemon.children()
                  if p.title == "cloister: connection (spare)"]
        self.assertTrue(spares)
        for pid in spares:
            with self.subTest(pid=pid):
                self.assertEqual(scan_memory(pid, self.patterns), set())

    def test_supervisor_holds_no_secret(self):
        self.assertEqual(scan_memory(self.daemon.pid, self.patterns), set())


if __name__ == "__main__":
    unittest.main()
