r"""System users for the sandbox of the daemon under test.

Run as root, cloister switches its connection processes and its key process to two
unprivileged users ([sandbox] network-user and key-user) and does not start when they are
missing. The integration tests therefore create their own users with ``useradd --system``,
named ``clt-<8 hex digits>-net`` and ``-key`` so that they are unique to the test process, and
delete them with ``userdel`` when the process exits, also after a failed test.

``harness.Daemon`` takes a pair of its own from ``POOL`` and gives it back when closed: the key
process's RLIMIT_NPROC counts every process of the key user, so two daemons running at once
must not share a key user. ``POOL.default()`` is the pair for configs that tests write
themselves (``harness.write_config``).

useradd and userdel lock /etc/passwd. A lock file in the temporary directory serializes them
across test processes, including those of other build directories.

Leftovers. Each user is recorded, before it is created, in a file of the folder named by
CLOISTER_TEST_USERS_DIR (when set), one file per test process. A test process that is killed
leaves its record behind, and

    python3 sandbox_users.py cleanup FOLDER

deletes the users of every record whose process is gone. ctest runs it before and after the
integration tests (FIXTURES_SETUP and FIXTURES_CLEANUP in CMakeLists.txt).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import fcntl
import os
import pwd
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

USERS_DIR_VARIABLE = "CLOISTER_TEST_USERS_DIR"
LOCK_FILE = Path(tempfile.gettempdir()) / "cloister-test-users.lock"
COMMAND_TIMEOUT = 60.0  # seconds for one useradd or userdel, lock wait included


def running_as_root() -> bool:
    return os.geteuid() == 0


@contextlib.contextmanager
def _passwd_lock() -> Iterator[None]:
    with open(LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def create_user(name: str) -> None:
    """Create the system user ``name`` (no home, nologin shell, a group of its own)."""
    with _passwd_lock():
        result = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"useradd {name} failed ({result.returncode}): {result.stderr}")


def change_subordinate_ids(name: str, option: str, first: int, last: int) -> None:
    """Run ``usermod OPTION FIRST-LAST name``, such as --add-subuids or --del-subgids."""
    with _passwd_lock():
        result = subprocess.run(["usermod", option, f"{first}-{last}", name],
                                capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                                check=False)
    if result.returncode != 0:
        raise RuntimeError(f"usermod {option} {first}-{last} {name} failed "
                           f"({result.returncode}): {result.stderr}")


def processes_of(uid: int, any_uid: bool = False) -> list[int]:
    """Return the pids of every process whose real uid is ``uid``.

    With ``any_uid``, a process also counts when uid is its effective, saved or file-system uid.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if not line.startswith("Uid:"):
                continue
            ids = [int(value) for value in line.split()[1:]]
            if uid in (ids if any_uid else ids[:1]):
                found.append(int(entry.name))
    return found


def wait_until_unused(name: str, timeout: float = 10.0) -> list[int]:
    """Wait until no process runs as ``name``; return the pids still running after timeout."""
    if not user_exists(name):
        return []
    uid = pwd.getpwnam(name).pw_uid
    deadline = time.monotonic() + timeout
    while True:
        remaining = processes_of(uid)
        if not remaining or time.monotonic() > deadline:
            return remaining
        time.sleep(0.05)


def delete_user(name: str) -> None:
    """Delete the user ``name`` and its group. A user that does not exist is ignored."""
    if not user_exists(name):
        return
    with _passwd_lock():
        result = subprocess.run(["userdel", name], capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT, check=False)
    if result.returncode != 0 and user_exists(name):
        raise RuntimeError(f"userdel {name} failed ({result.returncode}): {result.stderr}")


@dataclasses.dataclass(frozen=True)
class UserPair:
    """The two users of one daemon's sandbox."""

    network: str
    key: str

    @property
    def names(self) -> tuple[str, str]:
        return (self.network, self.key)


class UserPool:
    """Pairs of users created on demand for this test process and deleted when it exits."""

    def __init__(self) -> None:
        self._created: list[UserPair] = []
        self._free: list[UserPair] = []
        self._default: UserPair | None = None
        self._before_deleting: list[Callable[[], None]] = []
        self._record: Path | None = None

    def default(self) -> UserPair:
        """Return the pair for configs written outside a Daemon, created on first use."""
        if self._default is None:
            self._default = self._create()
        return self._default

    def take(self) -> UserPair:
        """Return a pair that no live daemon uses."""
        return self._free.pop() if self._free else self._create()

    def give_back(self, pair: UserPair) -> None:
        """Return a pair once no process runs as its users any more."""
        for name in pair.names:
            wait_until_unused(name)
        self._free.append(pair)

    def before_deleting(self, action: Callable[[], None]) -> None:
        """Run ``action`` at exit before the users are deleted (to stop daemons first)."""
        self._before_deleting.append(action)

    def delete_all(self) -> None:
        for action in self._before_deleting:
            action()
        for pair in self._created:
            for name in pair.names:
                wait_until_unused(name)
                delete_user(name)
        self._created.clear()
        self._free.clear()
        self._default = None
        if self._record is not None:
            self._record.unlink(missing_ok=True)

    def _create(self) -> UserPair:
        if not self._created:
            atexit.register(self.delete_all)
        token = secrets.token_hex(4)
        pair = UserPair(f"clt-{token}-net", f"clt-{token}-key")
        self._write_record(pair)
        self._created.append(pair)
        for name in pair.names:
            create_user(name)
        return pair

    def _write_record(self, pair: UserPair) -> None:
        folder = os.environ.get(USERS_DIR_VARIABLE)
        if not folder:
            return
        Path(folder).mkdir(parents=True, exist_ok=True)
        self._record = Path(folder) / f"users-{os.getpid()}"
        with open(self._record, "a") as record:
            record.write(f"{pair.network}\n{pair.key}\n")


POOL = UserPool()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup(folder: Path) -> int:
    """Delete the users recorded in ``folder`` by test processes that are gone.

    Returns the number of users deleted.
    """
    deleted = 0
    if not folder.is_dir():
        return deleted
    for record in sorted(folder.glob("users-*")):
        pid = int(record.name.split("-", 1)[1])
        if _process_alive(pid):
            continue
        for name in record.read_text().split():
            if user_exists(name):
                wait_until_unused(name)
                delete_user(name)
                deleted += 1
        record.unlink()
    return deleted


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] != "cleanup":
        print(f"usage: {argv[0]} cleanup FOLDER", file=sys.stderr)
        return 2
    deleted = cleanup(Path(argv[2]))
    print(f"deleted {deleted} leftover test users")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
