"""Per-connection uids ([sandbox] connection-uids), checked on a real daemon as root.

Each test picks a random range between 3,000,000 and 4,000,000,000, so test processes that
run at the same time never share uids. The ids of live processes come from /proc/PID/status.
The exhaustion test holds a range uid with a process outside the connection's PID namespace,
which only the /proc check of builds without NDEBUG notices; CLOISTER_LEFTOVER_CHECK (set by
tests/integration/CMakeLists.txt) says whether the daemon under test has that check.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import grp
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

import harness
import sandbox_users

ROOT_ONLY = unittest.skipUnless(sandbox_users.running_as_root(),
                                "switching to connection uids needs root")
LIVE_TITLE = re.compile(r"^cloister: connection \d+ \S+$")
SPARE_TITLE = "cloister: connection (spare)"
LEFTOVER_CHECK = os.environ.get("CLOISTER_LEFTOVER_CHECK", "1") == "1"
FIRST_ID = 3_000_000
LAST_ID = 4_000_000_000
WAIT_LINE = "no free uid in sandbox.connection-uids"
PYTHON = "/usr/bin/python3"  # the system Python, which every uid may run


def random_range(size: int) -> tuple[int, int]:
    """Return (first, last) of a range of size ids that no other test process picks."""
    first = FIRST_ID + secrets.randbelow(LAST_ID - FIRST_ID - size)
    return first, first + size - 1


def ids_of(pid: int) -> tuple[list[int], list[int], str]:
    """Return the four uids, the four gids and the supplementary groups of a process."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return ([int(v) for v in fields["Uid"].split()], [int(v) for v in fields["Gid"].split()],
            fields["Groups"])


def processes_with_uid(uid: int) -> list[int]:
    """Return the pids in /proc whose real, effective, saved or file-system uid is uid."""
    return sandbox_users.processes_of(uid, any_uid=True)


def live_pids(daemon: harness.Daemon, count: int) -> list[int]:
    """Wait for count connection processes that serve a client and return their pids."""
    children = daemon.wait_for_children(
        lambda found: sum(1 for p in found if LIVE_TITLE.match(p.title)) >= count)
    return sorted(p.pid for p in children if LIVE_TITLE.match(p.title))


def open_echo(port: int):
    """Open a TLS connection through the daemon to an echo backend and check one round trip."""
    connection = harness.tls_connect(port)
    connection.sendall(b"ping\n")
    received = b""
    while len(received) < 5:
        chunk = connection.recv(64)
        if not chunk:
            break
        received += chunk
    if received != b"ping\n":
        connection.close()
        raise AssertionError(f"echo through the daemon returned {received!r}")
    return connection


PROBE = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
result = {}
for name in ("own", "other"):
    pid = int(sys.argv[1 if name == "own" else 2])
    try:
        os.kill(pid, 0)
        result[name + "_kill"] = 0
    except OSError as error:
        result[name + "_kill"] = error.errno
    if libc.ptrace(16, pid, None, None) == 0:  # PTRACE_ATTACH
        result[name + "_ptrace"] = 0
        libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
    else:
        result[name + "_ptrace"] = ctypes.get_errno()
print(json.dumps(result))
"""


def as_uid(uid: int, argv: list[str]) -> list[str]:
    """Return argv run by setpriv as uid and gid uid with no supplementary groups."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv]


def start_group(argv: list[str]) -> subprocess.Popen:
    """Start argv in a process group of its own, which kill_group ends."""
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)


def kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@ROOT_ONLY
class ConnectionUidTest(unittest.TestCase):
    """Live connection processes under uids of their own."""

    def setUp(self):
        self.backend = harness.EchoBackend().start()
        self.addCleanup(self.backend.stop)
        self.pki = harness.pki()

    def start_daemon(self, first: int, last: int, max_connections: int,
                     spare_children: int, spawn: str = "fork") -> harness.Daemon:
        document = harness.config(
            [harness.vhost(["www.example.test"], self.backend, self.pki.rsa, default=True)],
            [self.pki.rsa],
            limits={"max-connections": max_connections, "spare-children": spare_children},
            sandbox={"connection-uids": f"{first}-{last}", "spawn": spawn})
        daemon = harness.Daemon(document)
        self.addCleanup(daemon.close)
        return daemon.start()

    def hold(self, port: int):
        connection = open_echo(port)
        self.addCleanup(connection.close)
        return connection

    def test_live_processes_get_distinct_range_ids(self):
        for spawn in ("fork", "exec"):
            with self.subTest(spawn=spawn):
                self.check_distinct_range_ids(spawn)

    def check_distinct_range_ids(self, spawn: str):
        first, last = random_range(16)
        daemon = self.start_daemon(first, last, 8, 2, spawn)
        self.hold(daemon.port)
        self.hold(daemon.port)
        pids = live_pids(daemon, 2)
        self.assertEqual(len(pids), 2)
        seen = []
        for pid in pids:
            uids, gids, groups = ids_of(pid)
            self.assertEqual(len(set(uids)), 1, f"uids of {pid}: {uids}")
            self.assertEqual(gids, uids, f"gids of {pid}: {gids}")
            self.assertTrue(first <= uids[0] <= last, f"uid {uids[0]} of {pid}")
            self.assertEqual(groups, "", f"supplementary groups of {pid}")
            seen.append(uids[0])
        self.assertNotEqual(seen[0], seen[1])
        for pid in (daemon.pid, daemon.key_pid):
            uids, gids, _ = ids_of(pid)
            for value in uids + gids:
                self.assertFalse(first <= value <= last, f"id {value} of process {pid}")
        network_uid = pwd.getpwnam(daemon.sandbox_users.network).pw_uid
        self.assertNotIn(network_uid, seen)

    def test_other_connection_cannot_be_signalled_or_traced(self):
        first, last = random_range(16)
        daemon = self.start_daemon(first, last, 8, 2)
        self.hold(daemon.port)
        self.hold(daemon.port)
        own, other = live_pids(daemon, 2)[:2]
        own_uid = ids_of(own)[0][0]
        result = subprocess.run(as_uid(own_uid, [PYTHON, "-c", PROBE, str(own), str(other)]),
                                capture_output=True, text=True, timeout=30, check=False, cwd="/")
        self.assertEqual(result.returncode, 0, result.stderr)
        outcome = json.loads(result.stdout)
        # The probe's own uid may signal its process, which shows that the probe works.
        self.assertEqual(outcome["own_kill"], 0, outcome)
        self.assertEqual(outcome["other_kill"], 1, f"kill(other, 0): {outcome}")  # EPERM
        self.assertEqual(outcome["other_ptrace"], 1, f"PTRACE_ATTACH other: {outcome}")  # EPERM

    def test_uid_reused_only_after_namespace_gone(self):
        first, last = random_range(2)
        daemon = self.start_daemon(first, last, 1, 1)
        connection = open_echo(daemon.port)
        self.addCleanup(connection.close)
        (pid,) = live_pids(daemon, 1)
        uid = ids_of(pid)[0][0]
        self.assertEqual(uid, first)
        sleeper = start_group(
            ["nsenter", f"--target={pid}", "--pid", "--", *as_uid(uid, ["sleep", "300"])])
        self.addCleanup(kill_group, sleeper)
        deadline = time.monotonic() + 10
        inside = []
        while time.monotonic() < deadline and not inside:
            inside = [p for p in processes_with_uid(uid)
                      if p != pid and os.readlink(f"/proc/{p}/ns/pid") ==
                      os.readlink(f"/proc/{pid}/ns/pid")]
            time.sleep(0.05)
        self.assertTrue(inside, "the process entered into the connection's namespace is missing")

        mark = daemon.log_mark()
        connection.close()
        daemon.wait_for_record(mark)
        # nsenter returns once its child, killed with the namespace, has exited.
        sleeper.wait(timeout=10)
        # The connection's record can precede the reaping of its process, so the check for
        # processes with uid waits until the supervisor has returned uid to the pool.
        daemon.wait_for_log(rf"uid {uid} of reaped connection process {pid} is free again",
                            since=mark)
        self.assertEqual(processes_with_uid(uid), [])
        # With two ids the next spare takes the other one, so the one after it reuses uid.
        daemon.wait_for_log(rf"holds uid {first + 1}\b", since=mark)
        harness.tls_request(daemon.port, b"one\n", half_close=True)
        reuse = daemon.wait_for_log(rf"connection process (\d+) \(connection \d+\) holds uid "
                                    rf"{uid}\b", since=mark)
        freed_at = daemon.log.index(f"uid {uid} of reaped connection process {pid} is free again",
                                    mark)
        self.assertLess(freed_at, reuse.start(), daemon.log_since(mark))
        new_pid = int(reuse.group(1))
        self.assertNotEqual(new_pid, pid)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and new_pid not in processes_with_uid(uid):
            time.sleep(0.05)
        self.assertEqual(processes_with_uid(uid), [new_pid])

    def test_exhausted_range_queues_connections(self):
        first, last = random_range(3)
        daemon = self.start_daemon(first, last, 2, 1)
        holders = []

        def stop_holders():
            for holder in holders:
                kill_group(holder)

        self.addCleanup(stop_holders)
        # Two connections end while a process outside their namespace keeps their uid.
        for _ in range(2):
            connection = open_echo(daemon.port)
            pids = live_pids(daemon, 1)
            uid = ids_of(pids[0])[0][0]
            holders.append(start_group(as_uid(uid, ["sleep", "300"])))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and holders[-1].pid not in processes_with_uid(uid):
                time.sleep(0.05)
            mark = daemon.log_mark()
            connection.close()
            daemon.wait_for_record(mark)
            daemon.wait_for_children(lambda found: not any(p.pid == pids[0] for p in found))

        if not LEFTOVER_CHECK:
            # Without the /proc check the supervisor cannot see the holders, so uids are
            # handed out again and nothing waits.
            stop_holders()
            harness.tls_request(daemon.port, b"served\n", half_close=True)
            self.assertNotIn(WAIT_LINE, daemon.log)
            return

        self.assertEqual(len(re.findall(r"is still used by process", daemon.log)), 2)
        mark = daemon.log_mark()
        busy = self.hold(daemon.port)
        self.assertIsNotNone(busy)
        daemon.wait_for_log(re.escape(WAIT_LINE), since=mark)
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(harness.tls_request, daemon.port, b"queued\n", half_close=True,
                                  timeout=40)
            time.sleep(3)
            self.assertFalse(waiting.done(), "a connection was served without a free uid")
            stop_holders()
            result = waiting.result(timeout=40)
        self.assertEqual(result.data, b"queued\n")
        log = daemon.log[mark:]
        self.assertIn("a connection uid is free again", log)
        # Every loop of the supervisor sees the empty pool; the line is rate-limited to one
        # per 10 s, and the wait lasted at most about 13 s.
        self.assertIn(log.count(WAIT_LINE), (1, 2), log)


@ROOT_ONLY
class ConnectionUidStartTest(unittest.TestCase):
    """Start-up rejects a range that is unsafe on this host."""

    def setUp(self):
        self.folder = Path(tempfile.mkdtemp(prefix="uids-", dir=harness.run_dir()))
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)
        pki = harness.pki()
        self.document = harness.config(
            [harness.vhost(["www.example.test"], "127.0.0.1:9", pki.p256, default=True)],
            [pki.p256], limits={"max-connections": 2, "spare-children": 1})
        self.document["listener"] = [{"address": f"127.0.0.1:{harness.free_port()}"}]

    def start(self, uid_range: str, *args: str) -> subprocess.CompletedProcess:
        document = {**self.document, "sandbox": {"connection-uids": uid_range}}
        return harness.run_until_exit(self.folder, document, *args)

    def assert_rejected(self, result, *texts: str) -> None:
        harness.assert_start_rejected(result, *texts)

    def test_range_with_network_user_rejected(self):
        user = sandbox_users.POOL.default().network
        uid = pwd.getpwnam(user).pw_uid
        result = self.start(f"{uid}-{uid + 2}")
        self.assert_rejected(result, "sandbox.connection-uids:",
                             f"contains the ids of network-user '{user}'")

    def test_range_with_system_account_rejected(self):
        first = pwd.getpwnam("nobody").pw_uid
        result = self.start(f"{first}-{first + 2}")
        self.assert_rejected(result, "sandbox.connection-uids:", "in the user database")
        # The named account is one whose uid or gid lies in the range ('nobody' or a user
        # whose primary group is nogroup).
        match = re.search(r"contains the ids of (user|group) '([^']+)'", result.output)
        self.assertIsNotNone(match, result.output)
        if match.group(1) == "user":
            entry = pwd.getpwnam(match.group(2))
            ids = {entry.pw_uid, entry.pw_gid}
        else:
            ids = {grp.getgrnam(match.group(2)).gr_gid}
        self.assertTrue(any(first <= value <= first + 2 for value in ids), result.output)

    def test_range_with_subordinate_ids_rejected(self):
        owner = sandbox_users.POOL.take()
        self.addCleanup(sandbox_users.POOL.give_back, owner)
        for add, remove, path in (("--add-subuids", "--del-subuids", "/etc/subuid"),
                                  ("--add-subgids", "--del-subgids", "/etc/subgid")):
            with self.subTest(path=path):
                first, last = random_range(3)
                # The owner's entry covers only the last id of the range.
                sandbox_users.change_subordinate_ids(owner.network, add, last, last + 9)
                try:
                    result = self.start(f"{first}-{last}")
                finally:
                    sandbox_users.change_subordinate_ids(owner.network, remove, last, last + 9)
                self.assert_rejected(
                    result, "sandbox.connection-uids:",
                    f"overlaps the subordinate ids '{owner.network}:{last}:10' of {path}")

    def test_range_with_root_rejected(self):
        result = self.start("0-2")
        self.assert_rejected(result, "sandbox.connection-uids:", "contains uid 0 (root)")

    def test_range_smaller_than_limits_rejected(self):
        first, last = random_range(2)
        result = self.start(f"{first}-{last}")
        self.assert_rejected(result, "fewer than max-connections (2) + spare-children (1) = 3")

    def test_free_range_accepted(self):
        first, last = random_range(3)
        result = self.start(f"{first}-{last}", "--check-config")
        self.assertEqual(result.returncode, 0, result.output)
        self.assertIn(f"one uid per process from {first}-{last}", result.output)


if __name__ == "__main__":
    unittest.main()
