"""The sandbox of the running daemon, checked from outside and from inside its processes.

Each test reads a real value from a real daemon. The values are /proc entries of its processes,
a ptrace and a /proc/PID/mem open by another process of the same user, the random values of
1,000 handshakes, and the fate of a system call injected into a child. test_memory_scan.py
scans the daemon's memory for the private keys. The classes that check users, chroot
and namespaces need root and are skipped otherwise. docs/threat-model.md maps each test to the
layer it proves.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

import harness
import sandbox_users

ROOT_ONLY = unittest.skipUnless(sandbox_users.running_as_root(),
                                "switching users, chroot and namespaces need root")
LIVE_TITLE = re.compile(r"^cloister: connection \d+ \S+$")
SPARE_TITLE = "cloister: connection (spare)"
KEY_TITLE = "cloister: key"


# ------------------------------------------------------------------------------------------
# /proc


def proc_status(pid: int) -> dict[str, str]:
    """Return /proc/PID/status as a dict of its fields, values stripped."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return fields


def proc_limits(pid: int) -> dict[str, tuple[str, str]]:
    """Return /proc/PID/limits as {"Max processes": (soft, hard), ...}."""
    limits = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        match = re.match(r"^(Max [a-z ]+?)\s{2,}(\S+)\s+(\S+)", line)
        if match:
            limits[match.group(1)] = (match.group(2), match.group(3))
    return limits


def namespace_of(pid: int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def children_titled(daemon: harness.Daemon, predicate) -> list[harness.Process]:
    return [p for p in daemon.children() if predicate(p.title)]


def live_connection_pid(daemon: harness.Daemon) -> int:
    """Return the pid of the one connection process that serves a client."""
    children = daemon.wait_for_children(
        lambda found: any(LIVE_TITLE.match(p.title) for p in found))
    return next(p.pid for p in children if LIVE_TITLE.match(p.title))


def spare_pid(daemon: harness.Daemon) -> int:
    children = daemon.wait_for_children(lambda found: any(p.title == SPARE_TITLE for p in found))
    return next(p.pid for p in children if p.title == SPARE_TITLE)


# ------------------------------------------------------------------------------------------
# Attacks from another process


PROBE = r"""
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
pid = int(sys.argv[1])
result = {}
if libc.ptrace(16, pid, None, None) == 0:  # PTRACE_ATTACH
    result["ptrace"] = 0
    libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
else:
    result["ptrace"] = ctypes.get_errno()
try:
    with open(f"/proc/{pid}/mem", "rb", buffering=0):
        result["mem"] = 0
except OSError as error:
    result["mem"] = error.errno
print(json.dumps(result))
"""


def probe_as(user: str, pid: int) -> dict[str, int]:
    """Run PROBE as ``user`` (its group, no supplementary groups) against pid.

    Returns {"ptrace": errno, "mem": errno}, with 0 for a call that succeeded.
    """
    result = subprocess.run([sys.executable, "-c", PROBE, str(pid)], capture_output=True,
                            text=True, timeout=30, check=False, user=user,
                            group=pwd.getpwnam(user).pw_gid, extra_groups=[], cwd="/")
    if result.returncode != 0:
        raise AssertionError(f"probe failed: {result.stderr}")
    return json.loads(result.stdout)


class _Registers(ctypes.Structure):
    """struct user_regs_struct of x86_64 (<sys/user.h>)."""

    _fields_ = [(name, ctypes.c_ulonglong) for name in (
        "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags "
        "rsp ss fs_base gs_base ds es fs gs").split()]


def inject_syscall(pid: int, number: int) -> None:
    """Make the thread pid run system call ``number`` (no arguments) as its next instruction.

    The thread must wait in a system call (poll, futex...). ptrace stops it there; the
    instruction pointer goes back over the 2-byte syscall instruction, orig_rax = -1 stops
    the kernel from restarting the interrupted call, and rax selects the new one. x86_64 only.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    ptrace_getregs, ptrace_setregs, ptrace_attach, ptrace_detach = 12, 13, 16, 17
    if libc.ptrace(ptrace_attach, pid, None, None) != 0:
        raise OSError(ctypes.get_errno(), f"PTRACE_ATTACH {pid}")
    try:
        os.waitpid(pid, 0x40000000)  # __WALL
        registers = _Registers()
        libc.ptrace(ptrace_getregs, pid, None, ctypes.byref(registers))
        registers.rax = number
        registers.orig_rax = 2**64 - 1
        registers.rip -= 2
        for name in ("rdi", "rsi", "rdx", "r10", "r8", "r9"):
            setattr(registers, name, 0)
        if libc.ptrace(ptrace_setregs, pid, None, ctypes.byref(registers)) != 0:
            raise OSError(ctypes.get_errno(), f"PTRACE_SETREGS {pid}")
    finally:
        libc.ptrace(ptrace_detach, pid, None, None)


SYS_GETUID = 102  # x86_64; in no allow-list of cloister


# ------------------------------------------------------------------------------------------
# Raw TLS hellos: the server's random values without finishing the handshake


def _extension(kind: int, body: bytes) -> bytes:
    return struct.pack("!HH", kind, len(body)) + body


def _vector(length_bytes: int, body: bytes) -> bytes:
    return len(body).to_bytes(length_bytes, "big") + body


def client_hello(version: str, server_name: str) -> bytes:
    """Return a ClientHello record for TLS 1.3 (X25519 share) or TLS 1.2 (ECDHE suites)."""
    name = server_name.encode()
    extensions = _extension(0x0000, _vector(2, b"\0" + _vector(2, name)))  # server_name
    extensions += _extension(0x000d, _vector(2, struct.pack("!5H", 0x0403, 0x0804, 0x0805,
                                                            0x0806, 0x0401)))
    if version == "1.3":
        suites = struct.pack("!3H", 0x1301, 0x1302, 0x1303)
        session_id = secrets.token_bytes(32)
        extensions += _extension(0x000a, _vector(2, struct.pack("!H", 0x001d)))
        extensions += _extension(0x002b, _vector(1, struct.pack("!H", 0x0304)))
        share = struct.pack("!H", 0x001d) + _vector(2, secrets.token_bytes(32))
        extensions += _extension(0x0033, _vector(2, share))
    else:
        suites = struct.pack("!4H", 0xc02b, 0xc02f, 0xc02c, 0xc030)
        session_id = b""
        extensions += _extension(0x000a, _vector(2, struct.pack("!2H", 0x001d, 0x0017)))
        extensions += _extension(0x000b, _vector(1, b"\0"))
        extensions += _extension(0xff01, b"\0")
    body = (b"\x03\x03" + secrets.token_bytes(32) + _vector(1, session_id)
            + _vector(2, suites) + b"\x01\x00" + _vector(2, extensions))
    handshake = b"\x01" + _vector(3, body)
    return b"\x16\x03\x01" + _vector(2, handshake)


def _read_exact(connection: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = connection.recv(count - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {count} bytes")
        data += chunk
    return data


def read_handshake(connection: socket.socket, wanted: set[int]) -> dict[int, bytes]:
    """Read plaintext handshake messages until every type in ``wanted`` arrived."""
    buffer = b""
    messages: dict[int, bytes] = {}
    while not wanted <= messages.keys():
        content_type, _, length = struct.unpack("!BHH", _read_exact(connection, 5))
        payload = _read_exact(connection, length)
        if content_type == 21:
            raise ConnectionError(f"alert {payload.hex()}")
        if content_type != 22:
            continue
        buffer += payload
        while len(buffer) >= 4 and len(buffer) >= 4 + int.from_bytes(buffer[1:4], "big"):
            length = int.from_bytes(buffer[1:4], "big")
            messages.setdefault(buffer[0], buffer[4:4 + length])
            buffer = buffer[4 + length:]
    return messages


def _extensions(data: bytes) -> dict[int, bytes]:
    found = {}
    while len(data) >= 4:
        kind, length = struct.unpack("!HH", data[:4])
        found[kind] = data[4:4 + length]
        data = data[4 + length:]
    return found


def server_values(port: int, version: str) -> dict[str, bytes]:
    """Send one ClientHello and return the server's random, ECDHE share and session id."""
    with socket.create_connection(("127.0.0.1", port), timeout=harness.DEFAULT_TIMEOUT) as raw:
        raw.sendall(client_hello(version, "www.example.test"))
        wanted = {2} if version == "1.3" else {2, 12}
        messages = read_handshake(raw, wanted)
    hello = messages[2]
    random = hello[2:34]
    session_id = hello[35:35 + hello[34]]
    rest = hello[35 + hello[34] + 3:]
    if version == "1.3":
        key_share = _extensions(rest[2:])[0x0033]
        share = key_share[4:]
    else:
        exchange = messages[12]
        share = exchange[4:4 + exchange[3]]
    return {"random": random, "share": share, "session_id": session_id}


def session_ticket(session_file: Path) -> bytes:
    """Return the ticket in a session that ``s_client -sess_out`` saved."""
    text = harness.run(["openssl", "sess_id", "-in", str(session_file), "-noout",
                        "-text"]).stdout.decode()
    match = re.search(r"TLS session ticket:\n((?:\s*[0-9a-f]{4} - .*\n)+)", text)
    if match is None:
        return b""
    hex_digits = "".join(re.findall(r"- ((?:[0-9a-f]{2}[ -]){1,16})",
                                    match.group(1))).replace("-", " ")
    return bytes.fromhex(hex_digits)


# ------------------------------------------------------------------------------------------
# Tests


def standard_daemon(backend: harness.Backend, **sections) -> harness.Daemon:
    pki = harness.pki()
    document = harness.config(
        [harness.vhost(["www.example.test"], backend, pki.p256, pki.rsa, default=True)],
        [pki.p256, pki.rsa], **sections)
    return harness.Daemon(document)


@ROOT_ONLY
class ConfinedProcessesTest(unittest.TestCase):
    """A live connection process, a spare and the key process, read from /proc."""

    @classmethod
    def setUpClass(cls):
        cls.backend = harness.EchoBackend().start()
        cls.addClassCleanup(cls.backend.stop)
        cls.daemon = standard_daemon(cls.backend)
        cls.addClassCleanup(cls.daemon.close)
        cls.daemon.start()
        cls.users = cls.daemon.sandbox_users
        cls.root = harness.empty_root()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def assert_confined(self, pid: int, user: str, chrooted: bool = True) -> None:
        status = proc_status(pid)
        entry = pwd.getpwnam(user)
        details = f"pid {pid}: {status}"
        self.assertEqual(status["Seccomp"], "2", details)
        self.assertEqual(status["NoNewPrivs"], "1", details)
        self.assertEqual(status["Uid"].split(), [str(entry.pw_uid)] * 4, details)
        self.assertEqual(status["Gid"].split(), [str(entry.pw_gid)] * 4, details)
        self.assertEqual(status["Groups"], "", details)
        self.assertEqual(int(status["CapEff"], 16), 0, details)
        self.assertEqual(int(status["CapPrm"], 16), 0, details)
        # PID 1 of a PID namespace of its own: NSpid lists the host pid, then 1.
        self.assertEqual(status["NSpid"].split(), [str(pid), "1"], details)
        # Not dumpable: the kernel gives the files under /proc/PID to root.
        self.assertEqual(os.stat(f"/proc/{pid}/environ").st_uid, 0, details)
        if chrooted:
            self.assertEqual(os.readlink(f"/proc/{pid}/root"), str(self.root), details)
        self.assertNotEqual(namespace_of(pid, "ipc"), namespace_of(self.daemon.pid, "ipc"))
        self.assertEqual(proc_limits(pid)["Max core file size"], ("0", "0"))

    def test_supervisor_unconfined(self):
        status = proc_status(self.daemon.pid)
        self.assertEqual(status["Seccomp"], "0")
        self.assertEqual(status["Uid"].split()[0], "0")
        self.assertEqual(os.readlink(f"/proc/{self.daemon.pid}/root"), "/")

    def test_live_connection_process(self):
        with harness.tls_connect(self.daemon.port) as connection:
            connection.sendall(b"ping")
            self.assertEqual(connection.recv(16), b"ping")
            pid = live_connection_pid(self.daemon)
            self.assert_confined(pid, self.users.network)
            limits = proc_limits(pid)
            self.assertEqual(limits["Max processes"], ("0", "0"))
            self.assertEqual(limits["Max open files"], ("64", "64"))
            self.assertEqual(namespace_of(pid, "net"), namespace_of(self.daemon.pid, "net"))

    def test_spare_connection_process(self):
        self.assert_confined(spare_pid(self.daemon), self.users.network)

    def test_key_process(self):
        pid = self.daemon.key_pid
        self.assert_confined(pid, self.users.key)
        self.assertNotEqual(namespace_of(pid, "net"), namespace_of(self.daemon.pid, "net"))
        limits = proc_limits(pid)
        self.assertEqual(limits["Max open files"], ("1024", "1024"))
        # The test config has 2 workers: the main thread, the workers and one spare, for each
        # of ten key processes (the current one, eight draining generations, --check-config).
        self.assertEqual(limits["Max processes"], ("40", "40"))

    def test_start_lines_name_every_layer(self):
        log = self.daemon.log
        connection = re.search(r"sandbox: connection processes: (.*)$", log, re.MULTILINE)
        key = re.search(r"sandbox: key process: (.*)$", log, re.MULTILINE)
        self.assertIsNotNone(connection, log)
        self.assertIsNotNone(key, log)
        for line, user, namespaces, seccomp in (
                (connection.group(1), self.users.network, "PID+IPC", "connection"),
                (key.group(1), self.users.key, "PID+IPC+network", "key-memory")):
            self.assertIn(f"user {user} (uid {pwd.getpwnam(user).pw_uid}", line)
            self.assertIn(f"chroot {self.root}", line)
            self.assertIn(f"new {namespaces} namespaces", line)
            self.assertIn("not dumpable, no new privileges", line)
            self.assertIn(f"seccomp {seccomp} filter (enforce)", line)
        self.assertNotIn("sandbox: layer off", log)

    def test_network_user_cannot_ptrace_or_read_memory(self):
        with harness.tls_connect(self.daemon.port) as connection:
            connection.sendall(b"ping")
            self.assertEqual(connection.recv(16), b"ping")
            pid = live_connection_pid(self.daemon)
            result = probe_as(self.users.network, pid)
            self.assertIn(result["ptrace"], (1, 13), result)  # EPERM or EACCES
            self.assertIn(result["mem"], (1, 13), result)
            # The probe left the process running.
            self.assertIn(proc_status(pid)["State"][0], "RS")

    def test_probe_succeeds_on_dumpable_process_of_same_user(self):
        # The same probe and user against an ordinary process of that user: the refusals
        # above come from the sandbox, not from the probe.
        target = subprocess.Popen(["sleep", "60"], user=self.users.network,
                                  group=pwd.getpwnam(self.users.network).pw_gid,
                                  extra_groups=[], cwd="/")
        try:
            result = probe_as(self.users.network, target.pid)
        finally:
            target.kill()
            target.wait(timeout=10)
        self.assertEqual(result, {"ptrace": 0, "mem": 0})


@ROOT_ONLY
class UnprivilegedDaemonTest(unittest.TestCase):
    """cloister started by an ordinary user: no user switch, so only PR_SET_DUMPABLE 0 keeps
    another process of that user from ptracing a connection process.

    As root the user switch alone already clears the dumpable flag (fs.suid_dumpable is 0 on
    Debian), so this is the test that fails without set_no_dump.
    """

    def setUp(self):
        self.users = sandbox_users.POOL.take()
        self.addCleanup(sandbox_users.POOL.give_back, self.users)
        self.user = pwd.getpwnam(self.users.network)
        self.folder = Path(tempfile.mkdtemp(prefix="unprivileged-", dir=harness.run_dir()))
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)
        pki = harness.pki()
        for source, name in ((pki.p256.key, "key.pem"), (pki.p256.chain, "chain.pem")):
            shutil.copy(source, self.folder / name)
        self.backend = harness.EchoBackend().start()
        self.addCleanup(self.backend.stop)
        self.port = harness.free_port()
        document = harness.config(
            [harness.vhost(["www.example.test"], self.backend, pki.p256, default=True)],
            [pki.p256])
        document["key"][0]["file"] = "key.pem"
        document["vhost"][0]["certificate"][0]["chain"] = "chain.pem"
        document["listener"] = [{"address": f"127.0.0.1:{self.port}"}]
        (self.folder / "cloister.toml").write_text(harness.to_toml(document))
        for path in (self.folder, *self.folder.iterdir()):
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def start(self) -> subprocess.Popen:
        log = open(self.folder / "cloister.log", "wb")
        self.addCleanup(log.close)
        process = subprocess.Popen(
            [harness.binary("CLOISTER_BIN", "cloister"), "--config", "cloister.toml"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder,
            start_new_session=True, user=self.user.pw_uid, group=self.user.pw_gid,
            extra_groups=[])
        self.addCleanup(process.wait, 10)
        self.addCleanup(harness._kill_process_group, process.pid)
        deadline = time.monotonic() + harness.START_TIMEOUT
        while not harness.STARTED_PATTERN.search(self.log()):
            self.assertIsNone(process.poll(), self.log())
            self.assertLess(time.monotonic(), deadline, self.log())
            time.sleep(0.05)
        return process

    def log(self) -> str:
        return (self.folder / "cloister.log").read_text(errors="replace")

    def test_connection_process_not_dumpable(self):
        supervisor = self.start()
        self.assertIn("layer off: user switch and chroot", self.log())
        with harness.tls_connect(self.port) as connection:
            connection.sendall(b"ping")
            self.assertEqual(connection.recv(16), b"ping")
            children = [p for p in harness.process_table() if p.ppid == supervisor.pid]
            live = [p.pid for p in children if LIVE_TITLE.match(p.title)]
            self.assertEqual(len(live), 1, children)
            status = proc_status(live[0])
            self.assertEqual(status["Uid"].split(), [str(self.user.pw_uid)] * 4)
            self.assertEqual(status["NoNewPrivs"], "1")
            self.assertEqual(status["Seccomp"], "2")
            self.assertEqual(os.stat(f"/proc/{live[0]}/environ").st_uid, 0)
            result = probe_as(self.users.network, live[0])
            self.assertIn(result["ptrace"], (1, 13), result)
            self.assertIn(result["mem"], (1, 13), result)


class RandomStateTest(unittest.TestCase):
    """Every connection process draws its own random values (random generator reseeded)."""

    HELLOS = {"1.3": 600, "1.2": 400}

    @classmethod
    def setUpClass(cls):
        cls.backend = harness.HttpBackend().start()
        cls.addClassCleanup(cls.backend.stop)
        cls.daemon = standard_daemon(cls.backend, limits={"spare-children": 4},
                                     server={"log-level": "info"})
        cls.addClassCleanup(cls.daemon.close)
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def collect(self, version: str, count: int) -> list[dict[str, bytes]]:
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(server_values, self.daemon.port, version)
                       for _ in range(count)]
            return [future.result() for future in futures]

    def assert_distinct(self, values: list[bytes], what: str) -> None:
        repeated = {value.hex() for value in values if values.count(value) > 1}
        self.assertEqual(repeated, set(), f"{what} repeated")

    def test_server_randoms_and_shares_distinct(self):
        randoms: list[bytes] = []
        for version, count in self.HELLOS.items():
            values = self.collect(version, count)
            self.assertEqual(len(values), count)
            shares = [value["share"] for value in values]
            self.assertTrue(all(len(share) >= 32 for share in shares))
            self.assert_distinct(shares, f"TLS {version} ECDHE shares")
            randoms += [value["random"] for value in values]
        self.assertEqual(len(randoms), 1000)
        self.assert_distinct(randoms, "ServerHello.random")

    def test_session_tickets_distinct(self):
        folder = Path(tempfile.mkdtemp(prefix="tickets-", dir=harness.run_dir()))
        self.addCleanup(shutil.rmtree, folder, ignore_errors=True)
        tickets = []
        for version in ("1.3", "1.2"):
            for index in range(10):
                session = folder / f"{version}-{index}.pem"
                # The backend closes after its response, so s_client reads until then and
                # receives the TLS 1.3 tickets that follow the handshake.
                result = harness.s_client(self.daemon.port, servername="www.example.test",
                                          version=version,
                                          request=harness.http_request("www.example.test"),
                                          extra=["-sess_out", str(session)])
                self.assertEqual(result.returncode, 0, result.describe())
                ticket = session_ticket(session)
                self.assertGreater(len(ticket), 32, result.describe())
                tickets.append(ticket)
        self.assert_distinct(tickets, "session tickets")


@ROOT_ONLY
class StartRejectedTest(unittest.TestCase):
    """Start-up stops with the reason when the users or the chroot directory are unsafe."""

    def setUp(self):
        self.folder = Path(tempfile.mkdtemp(prefix="sandbox-", dir=harness.run_dir()))
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)
        pki = harness.pki()
        self.document = harness.config(
            [harness.vhost(["www.example.test"], "127.0.0.1:9", pki.p256, default=True)],
            [pki.p256])
        self.document["listener"] = [{"address": f"127.0.0.1:{harness.free_port()}"}]

    def start(self, **sandbox) -> subprocess.CompletedProcess:
        return harness.run_until_exit(self.folder, {**self.document, "sandbox": sandbox})

    def assert_rejected(self, result, *texts: str) -> None:
        harness.assert_start_rejected(result, *texts)

    def test_same_user_for_both_roles(self):
        user = sandbox_users.POOL.default().network
        result = self.start(**{"network-user": user, "key-user": user})
        self.assert_rejected(result, "sandbox.key-user", "network-user and key-user are both")

    def test_root_as_key_user(self):
        result = self.start(**{"key-user": "root"})
        self.assert_rejected(result, "key user 'root' (uid 0, gid 0) is root")

    def test_missing_user(self):
        result = self.start(**{"network-user": "cloister-no-such-user"})
        self.assert_rejected(
            result, "sandbox.network-user", "user 'cloister-no-such-user' not found",
            "useradd --system --no-create-home --shell /usr/sbin/nologin cloister-no-such-user")

    def test_root_directory_writable_by_others(self):
        root = self.folder / "open"
        root.mkdir()
        root.chmod(0o777)
        result = self.start(**{"root-directory": str(root)})
        self.assert_rejected(result, "sandbox.root-directory", "is writable by others")

    def test_root_directory_not_empty(self):
        root = self.folder / "full"
        root.mkdir()
        root.chmod(0o755)
        (root / "file").write_text("x")
        result = self.start(**{"root-directory": str(root)})
        self.assert_rejected(result, "sandbox.root-directory", "is not empty (file)")

    def test_root_directory_owned_by_network_user(self):
        root = self.folder / "owned"
        root.mkdir()
        root.chmod(0o755)
        user = pwd.getpwnam(sandbox_users.POOL.default().network)
        os.chown(root, user.pw_uid, user.pw_gid)
        result = self.start(**{"root-directory": str(root)})
        self.assert_rejected(result, "sandbox.root-directory", "not root")

    def test_check_config_names_missing_user(self):
        document = {**self.document, "sandbox": {"key-user": "cloister-no-such-user"}}
        path = harness.write_config(self.folder, document)
        result = harness.run_cloister("--config", path, "--check-config", timeout=30)
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 2, output)
        self.assertIn("user 'cloister-no-such-user' not found", output)

    def test_missing_root_directory_created(self):
        root = self.folder / "new" / "empty"
        backend = harness.EchoBackend().start()
        self.addCleanup(backend.stop)
        document = harness.config(
            [harness.vhost(["www.example.test"], backend, harness.pki().p256, default=True)],
            [harness.pki().p256], sandbox={"root-directory": str(root)})
        with harness.Daemon(document) as daemon:
            status = root.stat()
            self.assertEqual(oct(status.st_mode & 0o777), "0o755")
            self.assertEqual((status.st_uid, status.st_gid), (0, 0))
            self.assertIn(f"created the empty chroot directory {root}", daemon.log)
            with harness.tls_connect(daemon.port) as connection:
                connection.sendall(b"ping")
                self.assertEqual(connection.recv(16), b"ping")


@ROOT_ONLY
@unittest.skipUnless(os.uname().machine == "x86_64", "the system call injection is x86_64 only")
class SeccompKillTest(unittest.TestCase):
    """A forbidden system call kills the process, names the call, and is not retried in a loop."""

    def setUp(self):
        self.backend = harness.EchoBackend().start()
        self.addCleanup(self.backend.stop)

    def test_connection_process_killed_and_named(self):
        with standard_daemon(self.backend) as daemon:
            pid = spare_pid(daemon)
            mark = daemon.log_mark()
            inject_syscall(pid, SYS_GETUID)
            line = daemon.wait_for_log(
                r"cloister: connection (\d+): killed by seccomp: system call 102 \(getuid\) is "
                r"not in the connection filter", since=mark)
            connection_id = line.group(1)
            daemon.wait_for_log(rf"connection {connection_id} killed by seccomp \(SIGSYS\): "
                                rf"connection process {pid} made a system call", since=mark)
            # A new spare replaces it, and the daemon still serves.
            with harness.tls_connect(daemon.port) as connection:
                connection.sendall(b"ping")
                self.assertEqual(connection.recv(16), b"ping")

    def test_key_process_killed_named_and_restarted(self):
        with standard_daemon(self.backend) as daemon:
            pid = daemon.key_pid
            mark = daemon.log_mark()
            inject_syscall(pid, SYS_GETUID)
            daemon.wait_for_log(r"cloister: key process: killed by seccomp: system call 102 "
                                r"\(getuid\) is not in the key-memory filter", since=mark)
            daemon.wait_for_log(rf"key process {pid} killed by seccomp \(SIGSYS\)", since=mark)
            daemon.wait_for_log(r"key process \d+ started", since=mark)
            result = harness.s_client(daemon.port, servername="www.example.test",
                                      wait_for_close=False, request=b"ping")
            self.assertEqual(result.returncode, 0, result.describe())

    def test_failing_spares_back_off(self):
        root = Path(tempfile.mkdtemp(prefix="root-", dir=harness.run_dir()))
        root.chmod(0o755)
        with standard_daemon(self.backend, sandbox={"root-directory": str(root)}) as daemon:
            daemon.wait_for_children(
                lambda found: len([p for p in found if p.title == SPARE_TITLE]) == 2)
            mark = daemon.log_mark()
            # Each new spare now fails to chroot right after its start.
            root.rmdir()
            for process in daemon.children():
                if process.title == SPARE_TITLE:
                    os.kill(process.pid, signal.SIGKILL)
            time.sleep(4)
            failures = re.findall(r"failed within 2000 ms of its start, before it accepted a "
                                  r"client; starting the next spare in (\d+) ms",
                                  daemon.log[mark:])
            delays = [int(delay) for delay in failures]
            # 4 s allow about 5 rounds of 2 spares at 100, 200, 400... ms; a loop without
            # back-off would fork hundreds.
            self.assertGreaterEqual(len(delays), 3, daemon.log_since(mark))
            self.assertLessEqual(len(delays), 14, daemon.log_since(mark))
            self.assertEqual(delays, sorted(delays), daemon.log_since(mark))
            self.assertGreaterEqual(delays[-1], 800, daemon.log_since(mark))
            self.assertIn("chdir to chroot directory", daemon.log[mark:])
            root.mkdir()
            root.chmod(0o755)
            daemon.wait_for_children(
                lambda found: len([p for p in found if p.title == SPARE_TITLE]) == 2,
                timeout=40)

    def test_drain_timeout_ends_connection_process(self):
        # PID 1 of a PID namespace ignores SIGTERM at its default action, so the connection
        # process installs a handler. The supervisor's SIGTERM must still end it.
        with standard_daemon(self.backend, limits={"drain-timeout": "1s"}) as daemon:
            with harness.tls_connect(daemon.port) as connection:
                connection.sendall(b"ping")
                self.assertEqual(connection.recv(16), b"ping")
                pid = live_connection_pid(daemon)
                mark = daemon.log_mark()
                started = time.monotonic()
                status = daemon.stop()
                self.assertEqual(status, 0)
                self.assertLess(time.monotonic() - started, 5, daemon.log_since(mark))
                self.assertIn("sending SIGTERM to 1 connection processes", daemon.log[mark:])
                self.assertIn(f"connection process {pid} (connection", daemon.log[mark:])
                self.assertIn("exited (status 143)", daemon.log[mark:])
                self.assertNotIn("SIGKILL", daemon.log[mark:])


class RarePathsTest(unittest.TestCase):
    """No path of a handshake or a connection kills a process with SIGSYS.

    Under the enforcing filters a call outside the allow-list ends the process, so each path
    runs for real and the log is then checked for every sign of such a death.
    """

    TLS_BACKEND = "openssl"
    VERSIONS = ("1.2", "1.3")
    RESUMES = True  # the stack resumes a session from a ticket

    @classmethod
    def setUpClass(cls):
        pki = harness.pki()
        cls.backend = harness.HttpBackend().start()
        cls.addClassCleanup(cls.backend.stop)
        down = f"127.0.0.1:{harness.free_port()}"
        vhosts = [
            harness.vhost(["www.example.test"], cls.backend, pki.p256, pki.rsa, default=True),
            harness.vhost(["down.example.test"], down, pki.p256),
        ]
        document = harness.config(vhosts, [pki.p256, pki.rsa], tls_backend=cls.TLS_BACKEND,
                                  tls={"unknown-sni": "reject"},
                                  limits={"idle-timeout": "2s", "handshake-timeout": "2s"})
        cls.daemon = harness.Daemon(document)
        cls.addClassCleanup(cls.daemon.close)
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()
        log = cls.daemon.log
        assert "killed by seccomp" not in log, log
        assert "SIGSYS" not in log, log

    def assert_no_seccomp_death(self, mark: int) -> None:
        # The record of the last connection comes after every line of the process.
        time.sleep(0.5)
        log = self.daemon.log[mark:]
        self.assertNotIn("killed by seccomp", log)
        self.assertNotIn("SIGSYS", log)
        self.assertNotIn("connection process failed", log)
        self.assertNotRegex(log, r"connection process \d+ \(connection \d+\) exited")

    def interactive(self, version: str, commands: list[bytes]) -> str:
        argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{self.daemon.port}",
                "-servername", "www.example.test", f"-tls{version.replace('.', '_')}",
                "-CAfile", str(harness.pki().ca_file)]
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
        try:
            time.sleep(0.5)
            for command in commands:
                process.stdin.write(command + b"\n")
                process.stdin.flush()
                time.sleep(0.5)
            output, _ = process.communicate(timeout=harness.DEFAULT_TIMEOUT)
        finally:
            process.kill()
            process.wait()
        return output.decode(errors="replace")

    def test_key_update_both_kinds(self):
        if "1.3" not in self.VERSIONS:
            self.skipTest("KeyUpdate is a TLS 1.3 message")
        mark = self.daemon.log_mark()
        output = self.interactive("1.3", [b"k", b"K", b"GET / HTTP/1.0\r\n"])
        self.assertIn("KEYUPDATE", output)
        self.assert_no_seccomp_death(mark)

    def test_renegotiation_refused(self):
        mark = self.daemon.log_mark()
        for version in self.VERSIONS:
            self.interactive(version, [b"R"])
        self.assert_no_seccomp_death(mark)

    def test_resumption_with_tickets(self):
        mark = self.daemon.log_mark()
        folder = Path(tempfile.mkdtemp(prefix="resume-", dir=harness.run_dir()))
        self.addCleanup(shutil.rmtree, folder, ignore_errors=True)
        for version in self.VERSIONS:
            session = folder / f"{version}.pem"
            first = harness.s_client(self.daemon.port, servername="www.example.test",
                                     version=version, request=harness.http_request("www"),
                                     extra=["-sess_out", str(session)])
            self.assertEqual(first.returncode, 0, first.describe())
            second = harness.s_client(self.daemon.port, servername="www.example.test",
                                      version=version, request=harness.http_request("www"),
                                      extra=["-sess_in", str(session)])
            self.assertEqual(second.returncode, 0, second.describe())
            if self.RESUMES:
                self.assertIn("Reused,", second.text, second.describe())
        self.assert_no_seccomp_death(mark)

    def test_fatal_alerts(self):
        mark = self.daemon.log_mark()
        unknown = harness.s_client(self.daemon.port, servername="nope.other.test",
                                   wait_for_close=False)
        self.assertNotEqual(unknown.returncode, 0, unknown.describe())
        no_cipher = harness.s_client(self.daemon.port, servername="www.example.test",
                                     version="1.2", cipher="AES128-SHA", wait_for_close=False)
        self.assertNotEqual(no_cipher.returncode, 0, no_cipher.describe())
        self.assert_no_seccomp_death(mark)

    def test_garbage_and_aborted_handshakes(self):
        mark = self.daemon.log_mark()
        with socket.create_connection(("127.0.0.1", self.daemon.port), timeout=10) as raw:
            raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
            with contextlib.suppress(ConnectionError):
                raw.recv(1024)
        with socket.create_connection(("127.0.0.1", self.daemon.port), timeout=10) as raw:
            raw.sendall(client_hello("1.3", "www.example.test")[:40])
        with socket.create_connection(("127.0.0.1", self.daemon.port), timeout=10) as raw:
            raw.sendall(client_hello("1.2", "www.example.test"))
            read_handshake(raw, {2})
        self.daemon.wait_for_record(mark, result="handshake_failed")
        self.assert_no_seccomp_death(mark)

    def test_timeouts_and_unreachable_backend(self):
        mark = self.daemon.log_mark()
        with socket.create_connection(("127.0.0.1", self.daemon.port), timeout=10):
            self.daemon.wait_for_record(mark, result="handshake_timeout", timeout=10)
        with harness.tls_connect(self.daemon.port, server_hostname="www.example.test") as tls:
            self.daemon.wait_for_record(mark, result="idle_timeout", timeout=10)
            tls.close()
        harness.s_client(self.daemon.port, servername="down.example.test", request=b"ping",
                         wait_for_close=False)
        self.daemon.wait_for_record(mark, result="backend_unreachable")
        self.assert_no_seccomp_death(mark)


class BotanRarePathsTest(RarePathsTest):
    """The same paths with the Botan 2.19 stack, which speaks TLS 1.2 only."""

    TLS_BACKEND = "botan"
    VERSIONS = ("1.2",)
    # NOTE: the Botan stack starts a full handshake for a client that offers a ticket.
    RESUMES = False


if __name__ == "__main__":
    unittest.main()
