r"""Integration-test harness: a test PKI, plaintext backends, the real daemon and TLS clients.

Every test module in this folder imports this file. It needs Python 3.11 (standard library
only), the openssl, curl, gnutls-cli and ps commands, and the paths of the binaries under test
in the environment (tests/integration/CMakeLists.txt sets them for ctest):

    CLOISTER_BIN            the cloister daemon
    CLOISTER_DEMO_BACKEND   the demo HTTP backend (optional for most tests)

Test PKI. ``pki()`` creates once per process, in a temporary folder, a root CA and four leaf
certificates (``pki().rsa``, ``.p256``, ``.p384``, ``.ed25519``) with the SANs
www.example.test, *.example.test, localhost, 127.0.0.1 and ::1. ``Pki.make_leaf``,
``make_key``, ``make_intermediate``, ``make_chain`` and ``write_bundle`` make extra material:
other names, a key that matches no certificate, and root -> I1 -> I2 -> leaf chains.

Backends. ``HttpBackend`` (fixed body), ``EchoBackend`` and ``EofBackend`` (reads until the
client half-closes, then replies) run in threads on TCP ("127.0.0.1", "::1") or on a Unix
socket (``unix_path=``). ``backend.address`` is the string for a vhost's ``backend`` key.

Sandbox. Run as root, every config that ``write_config`` or ``Daemon`` writes from a dict gets
a [sandbox] table, so every test runs with every sandbox layer on. The table names two users
of its own, which sandbox_users.py creates and deletes at exit, and ``empty_root()`` as the
chroot. Keys that a test writes in its own ``sandbox`` table win. ``Daemon.sandbox_users`` names the pair of that
daemon (None when not root), for example to hand token files to the key user.

Configuration. ``config(vhosts, keys)`` builds a config as nested dicts, with short timeouts
suited to tests; ``vhost(...)`` builds one [[vhost]] table. ``to_toml`` writes any such dict
(tables, arrays of tables, strings, integers, booleans, lists). A ``None`` value omits the key.

Daemon. ``Daemon(config_dict_or_text, listen=("127.0.0.1", "::1"))`` writes the config into a
private folder and gives each listener host (default: 127.0.0.1 only) a free port. It starts
cloister in its own process group and waits up to 20 s for the "started" log line, or raises
``DaemonError`` with the log. It exposes ``pid``, ``port`` and ``ports``, ``log``
(stderr and stdout), ``log_mark``, ``wait_for_log``, ``connection_records`` and
``wait_for_record`` (parsed "connection closed:" lines), ``processes`` and ``children`` (from
``ps``), ``key_pid``, ``key_stats`` (SIGUSR1), ``key_operation_stats`` (SIGUSR1 through the
supervisor) and ``assert_no_zombies``. ``stop()`` sends
SIGTERM, checks the exit status and checks that no child outlives the supervisor. Leaving
the ``with`` block, or ``close()``, kills the process group and removes the folder.

Clients. ``s_client`` (openssl s_client, parsed into ``SClientResult``), ``curl``,
``gnutls_cli``, ``botan_tls_client`` (Botan's CLI, parsed into ``BotanResult``) and
``tls_request`` (Python ssl, optionally half-closing with close_notify). Each sends a request
and returns the bytes received. ``tls_connect`` returns an open
``ssl.SSLSocket`` for tests that hold a connection. ``standard_cipher_name`` maps OpenSSL
cipher names to the IANA names that the daemon logs.

A typical test:

    with harness.HttpBackend(b"hello\n") as backend:
        pki = harness.pki()
        document = harness.config(
            [harness.vhost(["www.example.test"], backend, pki.rsa, default=True)], [pki.rsa])
        with harness.Daemon(document) as daemon:
            mark = daemon.log_mark()
            result = harness.curl(f"https://www.example.test:{daemon.port}/",
                                  resolve=[f"www.example.test:{daemon.port}:127.0.0.1"])
            assert result.stdout == b"hello\n"
            assert daemon.wait_for_record(mark, sni="www.example.test")["result"] == "ok"

Every client command and every wait has a timeout. Temporary folders are removed when the
test process exits.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import ipaddress
import os
import re
import secrets
import select
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import sandbox_users

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TIMEOUT = 20.0  # seconds for one client command or one wait
START_TIMEOUT = 20.0  # seconds from exec to the "started" line
STOP_TIMEOUT = 30.0  # seconds from SIGTERM to exit; the test config drains for 5 s
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

# The supervisor's last start-up line, "cloister VERSION started: ...".
STARTED_PATTERN = re.compile(r"cloister \S+ started")
_ADDRESS_IN_USE_RE = re.compile(r"address already in use", re.IGNORECASE)
_RECORD_RE = re.compile(r"connection closed: (.*)$", re.MULTILINE)
_FIELD_RE = re.compile(r"(\w+)=(\S*)")
_STATS_RE = re.compile(r"key process stats: (.*)$", re.MULTILINE)
_OPERATION_STATS_RE = re.compile(r"key operation stats: (.*)$", re.MULTILINE)


class DaemonError(Exception):
    """The daemon failed to start or to stop as expected; the message contains its log."""


# ------------------------------------------------------------------------------------------
# Temporary folders


_run_dir: Path | None = None


def run_dir() -> Path:
    """Return this process's temporary folder, created on first use and removed at exit."""
    global _run_dir
    if _run_dir is None:
        _run_dir = Path(tempfile.mkdtemp(prefix="cloister-it-"))
        # Traversable by all, so that processes that dropped root can reach Unix sockets
        # here. Listing stays private, and key files keep mode 0600.
        _run_dir.chmod(0o711)
        atexit.register(shutil.rmtree, _run_dir, ignore_errors=True)
    return _run_dir


def binary(variable: str, fallback: str) -> str:
    """Return the path in environment variable ``variable``, or the debug-build fallback.

    Raises FileNotFoundError naming the variable when neither exists.
    """
    path = os.environ.get(variable) or str(REPO_ROOT / "build" / "debug" / fallback)
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"{path} not found: set {variable} or build the debug preset (ci/build debug)"
        )
    return path


def run(argv: Sequence[str], *, input: bytes = b"", timeout: float = DEFAULT_TIMEOUT,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``argv`` with ``input`` on stdin and return the completed process (bytes output).

    Raises subprocess.TimeoutExpired after ``timeout`` seconds; the child is killed first.
    """
    return subprocess.run(list(argv), input=input, capture_output=True, timeout=timeout,
                          cwd=cwd, check=False)


TIMED_OUT = -9  # the return code of a client that run_client killed at its timeout


def run_client(argv: Sequence[str], *, input: bytes,
               timeout: float) -> subprocess.CompletedProcess:
    """Run a client like ``run``, but return TIMED_OUT and the output so far on timeout.

    A client that hangs is a test failure, and its partial output explains the failure.
    """
    try:
        return run(argv, input=input, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        return subprocess.CompletedProcess(list(argv), TIMED_OUT, expired.stdout or b"",
                                           (expired.stderr or b"")
                                           + f"\n(killed after {timeout} s)\n".encode())


# ------------------------------------------------------------------------------------------
# Test PKI


KEY_ALGORITHMS = {
    "rsa": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    "rsa3072": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"],
    "p256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "p384": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
    "ed25519": ["-algorithm", "ED25519"],
}

DEFAULT_SANS = ("www.example.test", "*.example.test", "localhost", "127.0.0.1", "::1")

_REQ_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
"""


@dataclasses.dataclass(frozen=True)
class Cert:
    """A certificate and its private key, both PEM files.

    ``chain`` lists the leaf then each intermediate up to, not including, the root; it is
    what a vhost's ``chain`` key expects. ``issuer`` is None for a self-signed root.
    """

    name: str
    subject: str
    key_type: str
    key: Path
    cert: Path
    chain: Path
    issuer: Cert | None = None


@dataclasses.dataclass(frozen=True)
class Chain:
    """A four-level hierarchy root -> i1 -> i2 -> leaf."""

    root: Cert
    i1: Cert
    i2: Cert
    leaf: Cert


def _openssl(*args: str, input: bytes = b"") -> bytes:
    result = run(["openssl", *args], input=input, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {result.stderr.decode()}")
    return result.stdout


def _san_entry(name: str) -> str:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return f"DNS:{name}"
    return f"IP:{name}"


def _leaf_extensions(key_type: str, sans: Iterable[str]) -> str:
    # keyEncipherment on RSA leaves lets a stock TLS server offer RSA key exchange, so a test
    # can prove that cloister removes it by policy rather than because the certificate forbids it.
    usage = "digitalSignature,keyEncipherment" if key_type.startswith("rsa") else "digitalSignature"
    alt_names = ",".join(_san_entry(name) for name in sans)
    return (
        "[ext]\n"
        "basicConstraints = critical,CA:FALSE\n"
        f"keyUsage = critical,{usage}\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid:always\n"
        f"subjectAltName = {alt_names}\n"
    )


def _ca_extensions(path_length: int | None, self_signed: bool) -> str:
    constraint = "CA:TRUE" if path_length is None else f"CA:TRUE,pathlen:{path_length}"
    authority = "" if self_signed else "authorityKeyIdentifier = keyid:always\n"
    return (
        "[ext]\n"
        f"basicConstraints = critical,{constraint}\n"
        "keyUsage = critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier = hash\n"
        f"{authority}"
    )


class Pki:
    """Certificates and keys made with the openssl command in one folder.

    The constructor makes the root CA (``ca``, EC P-256) and the four standard leaves it
    signs: ``rsa`` (RSA-2048), ``p256``, ``p384`` and ``ed25519``, each with DEFAULT_SANS.
    Names passed to the make_* methods become file names, so each must be unique.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "req.cnf").write_text(_REQ_CONFIG)
        self.ca = self.make_root("ca", "cloister test root CA")
        self.rsa = self.make_leaf("rsa", "rsa")
        self.p256 = self.make_leaf("p256", "p256")
        self.p384 = self.make_leaf("p384", "p384")
        self.ed25519 = self.make_leaf("ed25519", "ed25519")

    @property
    def ca_file(self) -> Path:
        """The root certificate, for -CAfile, --cacert and --x509cafile."""
        return self.ca.cert

    def make_key(self, name: str, key_type: str = "rsa") -> Path:
        """Generate a private key (PEM, PKCS#8, mode 0600) and return its path."""
        path = self.folder / f"{name}.key"
        _openssl("genpkey", "-quiet", *KEY_ALGORITHMS[key_type], "-out", str(path))
        path.chmod(0o600)
        return path

    def make_root(self, name: str, subject: str, key_type: str = "p256") -> Cert:
        """Make a self-signed CA certificate valid for 30 days."""
        key = self.make_key(name, key_type)
        cert = self.folder / f"{name}.crt"
        extensions = self._write(f"{name}.ext", _ca_extensions(None, self_signed=True))
        _openssl("req", "-x509", "-new", "-key", str(key), "-subj", f"/CN={subject}",
                 "-config", str(extensions), "-extensions", "ext", "-days", "30",
                 "-set_serial", str(secrets.randbits(63)), "-out", str(cert))
        return Cert(name, subject, key_type, key, cert, cert)

    def make_intermediate(self, name: str, subject: str, issuer: Cert,
                          key_type: str = "p256", path_length: int | None = None) -> Cert:
        """Make a CA certificate signed by ``issuer``."""
        key = self.make_key(name, key_type)
        extensions = _ca_extensions(path_length, self_signed=False)
        return self._issue(name, subject, key_type, key, issuer, extensions)

    def make_leaf(self, name: str, key_type: str = "rsa",
                  sans: Sequence[str] = DEFAULT_SANS, issuer: Cert | None = None,
                  key: Path | None = None) -> Cert:
        """Make a server certificate for ``sans``, signed by ``issuer`` (default: the root).

        ``key`` reuses an existing key file (of type ``key_type``) instead of a new one.
        """
        key = key or self.make_key(name, key_type)
        subject = sans[0] if sans else name
        extensions = _leaf_extensions(key_type, sans)
        return self._issue(name, subject, key_type, key, issuer or self.ca, extensions)

    def make_chain(self, prefix: str, key_type: str = "rsa",
                   sans: Sequence[str] = DEFAULT_SANS) -> Chain:
        """Make root -> I1 -> I2 -> leaf with subjects that name the prefix and the level."""
        root = self.make_root(f"{prefix}-root", f"{prefix} root")
        i1 = self.make_intermediate(f"{prefix}-i1", f"{prefix} intermediate 1", root,
                                    path_length=1)
        i2 = self.make_intermediate(f"{prefix}-i2", f"{prefix} intermediate 2", i1,
                                    path_length=0)
        leaf = self.make_leaf(f"{prefix}-leaf", key_type, sans, issuer=i2)
        return Chain(root, i1, i2, leaf)

    def write_bundle(self, name: str, certs: Sequence[Cert | Path]) -> Path:
        """Concatenate the certificates (each a Cert's own cert, or a PEM path) in order."""
        paths = [item.cert if isinstance(item, Cert) else item for item in certs]
        return self._write(f"{name}.pem", "".join(Path(path).read_text() for path in paths))

    def _issue(self, name: str, subject: str, key_type: str, key: Path, issuer: Cert,
               extensions: str) -> Cert:
        csr = self.folder / f"{name}.csr"
        cert = self.folder / f"{name}.crt"
        ext_file = self._write(f"{name}.ext", extensions)
        _openssl("req", "-new", "-key", str(key), "-subj", f"/CN={subject}",
                 "-config", str(self.folder / "req.cnf"), "-out", str(csr))
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(issuer.cert),
                 "-CAkey", str(issuer.key), "-set_serial", str(secrets.randbits(63)),
                 "-days", "30", "-extfile", str(ext_file), "-extensions", "ext",
                 "-out", str(cert))
        chain = cert
        if issuer.issuer is not None:
            chain = self.write_bundle(f"{name}-chain", [cert, issuer.chain])
        return Cert(name, subject, key_type, key, cert, chain, issuer)

    def _write(self, file_name: str, text: str) -> Path:
        path = self.folder / file_name
        path.write_text(text)
        return path


_pki: Pki | None = None


def pki() -> Pki:
    """Return the test PKI of this process, made on first use."""
    global _pki
    if _pki is None:
        _pki = Pki(run_dir() / "pki")
    return _pki


# ------------------------------------------------------------------------------------------
# Free ports


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago (the kernel's choice)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def ipv6_loopback_available() -> bool:
    """Return whether a socket can bind to ::1."""
    try:
        free_port("::1")
    except OSError:
        return False
    return True


def format_address(host: str, port: int) -> str:
    """Return "host:port", with brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ------------------------------------------------------------------------------------------
# Backends


class Backend:
    """A plaintext stream server in threads, on TCP or on a Unix socket.

    Subclasses implement ``serve(connection)``, and the base class closes the connection
    after it returns. ``requests`` collects what each subclass records as received, in
    arrival order.
    """

    def __init__(self, host: str = "127.0.0.1", unix_path: str | Path | None = None):
        self.host = host
        self.unix_path = Path(unix_path) if unix_path else None
        self.port = 0
        self.requests: list[bytes] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """The backend as a vhost's ``backend`` value: "host:port", "[v6]:port", "unix:/p"."""
        if self.unix_path:
            return f"unix:{self.unix_path}"
        return format_address(self.host, self.port)

    def start(self) -> Backend:
        """Bind, listen and start accepting; returns self."""
        self._listener = self._bind()
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting and remove the Unix socket file; open connections end on their own."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.unix_path:
            self.unix_path.unlink(missing_ok=True)

    def __enter__(self) -> Backend:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def record(self, data: bytes) -> None:
        """Append ``data`` to ``requests`` (thread-safe)."""
        with self._lock:
            self.requests.append(data)

    def serve(self, connection: socket.socket) -> None:
        raise NotImplementedError

    def _bind(self) -> socket.socket:
        if self.unix_path:
            self.unix_path.unlink(missing_ok=True)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(self.unix_path))
            # A connection process may run as an unprivileged user (see run_dir).
            self.unix_path.chmod(0o666)
            return listener
        listener = socket.socket(_family(self.host), socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        self.port = listener.getsockname()[1]
        return listener

    def _accept_loop(self) -> None:
        while (listener := self._listener) is not None:
            try:
                connection, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve_one, args=(connection,), daemon=True).start()

    def _serve_one(self, connection: socket.socket) -> None:
        connection.settimeout(DEFAULT_TIMEOUT)
        try:
            self.serve(connection)
        except OSError:
            pass  # the proxy or the test closed its side early; the test checks the outcome
        finally:
            connection.close()


def _finish(connection: socket.socket) -> None:
    """Send FIN, then read until the peer closes, so that unread bytes cause no RST."""
    connection.shutdown(socket.SHUT_WR)
    while connection.recv(65536):
        pass


class HttpBackend(Backend):
    """An HTTP backend that responds to every request with 200 and ``body``, then closes.

    ``response`` is the exact byte string sent, headers included.
    """

    def __init__(self, body: bytes = b"hello from the cloister test backend\n", **kwargs: Any):
        super().__init__(**kwargs)
        self.body = body
        self.response = (
            b"HTTP/1.1 200 OK\r\n"
            b"Content-Type: text/plain\r\n"
            + f"Content-Length: {len(body)}\r\n".encode()
            + b"Connection: close\r\n\r\n"
            + body
        )

    def serve(self, connection: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = connection.recv(65536)
            if not chunk:
                break
            request += chunk
        self.record(request)
        if b"\r\n\r\n" in request:
            connection.sendall(self.response)
        _finish(connection)


class EchoBackend(Backend):
    """A backend that sends back every byte it receives and half-closes after the client's EOF."""

    def serve(self, connection: socket.socket) -> None:
        received = bytearray()
        while chunk := connection.recv(65536):
            received += chunk
            connection.sendall(chunk)
        self.record(bytes(received))
        connection.shutdown(socket.SHUT_WR)


class EofBackend(Backend):
    """A backend that reads until the client half-closes, then sends ``reply(data)`` and closes.

    The default reply is b"received N bytes\\n".
    """

    def __init__(self, reply: Callable[[bytes], bytes] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.reply = reply or (lambda data: f"received {len(data)} bytes\n".encode())

    def serve(self, connection: socket.socket) -> None:
        received = bytearray()
        while chunk := connection.recv(65536):
            received += chunk
        self.record(bytes(received))
        connection.sendall(self.reply(bytes(received)))
        connection.shutdown(socket.SHUT_WR)


# ------------------------------------------------------------------------------------------
# Configuration


def to_toml(document: Mapping[str, Any]) -> str:
    """Serialize nested dicts to TOML.

    Dict values become [tables], lists of dicts become [[arrays of tables]], and None values
    are left out. Supported scalars: str, bool, int, float, and lists of them.
    """
    lines: list[str] = []
    _emit_table(lines, [], document)
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _emit_table(lines: list[str], path: list[str], table: Mapping[str, Any]) -> None:
    nested = []
    for key, value in table.items():
        if value is None:
            continue
        if isinstance(value, dict) or _is_table_array(value):
            nested.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in nested:
        header = ".".join(_toml_key(part) for part in [*path, key])
        items = value if isinstance(value, list) else [value]
        brackets = ("[[", "]]") if isinstance(value, list) else ("[", "]")
        for item in items:
            lines.extend(["", f"{brackets[0]}{header}{brackets[1]}"])
            _emit_table(lines, [*path, key], item)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)


def _toml_string(text: str) -> str:
    escaped = []
    for char in text:
        if char in '"\\':
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return _toml_string(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}: {value!r}")


def key_entry(cert: Cert) -> dict[str, Any]:
    """Return a [[key]] table for ``cert``'s private key, named after the certificate."""
    return {"name": cert.name, "file": str(cert.key)}


def vhost(server_names: Sequence[str], backend: Backend | str, *certs: Cert,
          default: bool = False, **extra: Any) -> dict[str, Any]:
    """Return a [[vhost]] table serving ``certs`` (chain and key of each) for the names.

    ``extra`` adds keys as given (underscores are not translated).
    """
    return {
        "server-names": list(server_names),
        "default": default,
        "backend": backend.address if isinstance(backend, Backend) else backend,
        **extra,
        "certificate": [{"chain": str(cert.chain), "key": cert.name} for cert in certs],
    }


TLS_BACKENDS = ("openssl", "botan")  # the values of [server] tls-backend


def config(vhosts: Sequence[Mapping[str, Any]], keys: Iterable[Cert], *,
           log_level: str = "debug", tls_backend: str = "openssl",
           **sections: Mapping[str, Any]) -> dict[str, Any]:
    """Return a complete config for ``vhosts`` with a [[key]] for each of ``keys``.

    ``tls_backend`` is the TLS stack, one of TLS_BACKENDS.

    Listeners are left out because Daemon adds them with free ports. Each keyword argument
    in ``sections`` is merged into the section of that name, written with underscores for
    dashes (``key_process`` for [key-process]). A None value in it removes that key.
    """
    document: dict[str, Any] = {
        "server": {"tls-backend": tls_backend, "log-level": log_level},
        "limits": {
            "spare-children": 2,
            "handshake-timeout": "5s",
            "idle-timeout": "30s",
            "drain-timeout": "5s",
            "backend-connect-timeout": "2s",
            "key-operation-timeout": "5s",
        },
        "key-process": {"workers": 2},
    }
    for name, table in sections.items():
        section = name.replace("_", "-")
        document[section] = {**document.get(section, {}), **table}
    unique_keys = {cert.name: key_entry(cert) for cert in keys}
    document["key"] = list(unique_keys.values())
    document["vhost"] = [dict(table) for table in vhosts]
    return document


def empty_root() -> Path:
    """Return the chroot directory of the tests: empty, owned by root, mode 0755."""
    path = run_dir() / "empty-root"
    if not path.is_dir():
        path.mkdir()
        path.chmod(0o755)
    return path


def with_sandbox(document: Mapping[str, Any] | str,
                 users: sandbox_users.UserPair | None = None) -> Mapping[str, Any] | str:
    """Return ``document`` with the [sandbox] users and root directory filled in where missing.

    Only as root, and only for dicts; ``users`` defaults to this process's default pair.
    """
    if isinstance(document, str) or not sandbox_users.running_as_root():
        return document
    users = users or sandbox_users.POOL.default()
    section = {"network-user": users.network, "key-user": users.key,
               "root-directory": str(empty_root())}
    return {**document, "sandbox": {**section, **document.get("sandbox", {})}}


def write_config(folder: Path, document: Mapping[str, Any] | str,
                 name: str = "cloister.toml") -> Path:
    """Write ``document`` (dict or TOML text) to folder/name and return the path.

    A dict gets the sandbox settings of ``with_sandbox``.
    """
    path = folder / name
    document = with_sandbox(document)
    path.write_text(document if isinstance(document, str) else to_toml(document))
    return path


def run_cloister(*args: str | Path, timeout: float = 60.0,
                 cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run cloister once with ``args`` (for --check-config or a start expected to fail).

    The result's stdout and stderr are text. The process group is killed when cloister exits
    or times out, so a daemon that starts serving unexpectedly leaves no children behind.
    Raises subprocess.TimeoutExpired after ``timeout`` seconds.
    """
    argv = [binary("CLOISTER_BIN", "cloister"), *map(str, args)]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=cwd,
                               start_new_session=True, preexec_fn=_die_with_test)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        _kill_process_group(process.pid)
        process.wait(timeout=10)
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def run_until_exit(folder: Path, document: Mapping[str, Any] | str,
                   *args: str) -> subprocess.CompletedProcess:
    """Write ``document`` to folder (see ``write_config``) and run cloister once with it.

    For starts expected to fail. The result's ``output`` is stdout and stderr joined.
    """
    path = write_config(folder, document)
    result = run_cloister("--config", path, *args, timeout=30)
    result.output = result.stdout + result.stderr
    return result


def assert_start_rejected(result: subprocess.CompletedProcess, *texts: str) -> None:
    """Raise AssertionError unless cloister exited with status 2 before its "started" line and
    ``result.output`` (from ``run_until_exit``) contains each of ``texts``."""
    if result.returncode != 2:
        raise AssertionError(f"exit status {result.returncode}, expected 2:\n{result.output}")
    if STARTED_PATTERN.search(result.output):
        raise AssertionError(f"cloister started:\n{result.output}")
    for text in texts:
        if text not in result.output:
            raise AssertionError(f"{text!r} is missing from the output:\n{result.output}")


def _die_with_test() -> None:
    """Ask the kernel to kill this child when the test process ends, however it ends.

    Runs in the child between fork and exec (``preexec_fn``). A test stopped by SIGTERM or
    SIGKILL, for example by ctest's timeout, runs no cleanup code, and a daemon in a session of
    its own would otherwise keep running.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def _kill_process_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ------------------------------------------------------------------------------------------
# Processes


@dataclasses.dataclass(frozen=True)
class Process:
    """One line of ``ps -eo pid,ppid,stat,args``."""

    pid: int
    ppid: int
    state: str
    title: str

    @property
    def is_zombie(self) -> bool:
        return self.state.startswith("Z")


def process_table() -> list[Process]:
    """Return every process on the machine as ``ps`` lists it."""
    result = run(["ps", "-eo", "pid=,ppid=,stat=,args="], timeout=10)
    table = []
    for line in result.stdout.decode(errors="replace").splitlines():
        fields = line.split(None, 3)
        if len(fields) >= 3:
            title = fields[3].strip() if len(fields) == 4 else ""
            table.append(Process(int(fields[0]), int(fields[1]), fields[2], title))
    return table


def descendants(pid: int, table: Sequence[Process] | None = None) -> list[Process]:
    """Return the processes below ``pid`` in the process tree, children first."""
    table = process_table() if table is None else table
    by_parent: dict[int, list[Process]] = {}
    for process in table:
        by_parent.setdefault(process.ppid, []).append(process)
    found: list[Process] = []
    queue = [pid]
    while queue:
        for child in by_parent.get(queue.pop(0), []):
            found.append(child)
            queue.append(child.pid)
    return found


def _title_of(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


# ------------------------------------------------------------------------------------------
# Daemon


_live_daemons: set[Daemon] = set()


@atexit.register
def _close_live_daemons() -> None:
    for daemon in list(_live_daemons):
        daemon.close()


# The users of the sandbox are deleted at exit, after the daemons that run as them.
sandbox_users.POOL.before_deleting(_close_live_daemons)


class Daemon:
    """The cloister daemon under test, in its own folder and process group.

    ``document`` is a config dict (see ``config``) or TOML text. When a dict has no
    ``listener`` entry, one listener per host in ``listen`` is added on a free port;
    IPv6 hosts are written without brackets ("::1"). Text is written unchanged.
    """

    def __init__(self, document: Mapping[str, Any] | str,
                 listen: Sequence[str] = ("127.0.0.1",), args: Sequence[str] = (),
                 start_timeout: float = START_TIMEOUT):
        self.document = document
        self.listen = tuple(listen)
        self.args = tuple(args)
        self.start_timeout = start_timeout
        self.folder = Path(tempfile.mkdtemp(prefix="daemon-", dir=run_dir()))
        self.config_path = self.folder / "cloister.toml"
        self.log_path = self.folder / "cloister.log"
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen | None = None
        self._known_children: dict[int, str] = {}
        self.sandbox_users: sandbox_users.UserPair | None = None
        if sandbox_users.running_as_root():
            self.sandbox_users = sandbox_users.POOL.take()

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> Daemon:
        """Start cloister and wait for its "started" line; returns self.

        Retries twice with new ports when a listener port was taken in the meantime.
        Raises DaemonError with the log when the daemon exits or stays silent.
        """
        for attempt in range(3):
            self._write_config()
            self._spawn()
            try:
                self.wait_for_log(STARTED_PATTERN, timeout=self.start_timeout)
                return self
            except DaemonError:
                in_use = _ADDRESS_IN_USE_RE.search(self.log) is not None
                self._kill_group()
                if not in_use or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def stop(self, expected_status: int | None = 0, timeout: float = STOP_TIMEOUT) -> int:
        """Send SIGTERM, wait for exit and return the exit status.

        Raises AssertionError when a child is a zombie before the signal, when the supervisor
        does not exit within ``timeout`` seconds, when the status differs from
        ``expected_status`` (None accepts any), or when a child outlives the supervisor.
        """
        process = self._require_process()
        self.assert_no_zombies()
        self._remember_children()
        process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log = self.log
            self._kill_group()
            raise AssertionError(f"cloister did not exit {timeout} s after SIGTERM\n{log}")
        survivors = self._surviving_children()
        self._kill_group()
        if expected_status is not None and status != expected_status:
            raise AssertionError(f"cloister exited with {status}, expected {expected_status}"
                                 f"\n{self.log}")
        if survivors:
            raise AssertionError(f"children outlived the supervisor: {survivors}\n{self.log}")
        return status

    def close(self) -> None:
        """Kill the process group and any remembered child, and remove the folder."""
        self._kill_group()
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.sandbox_users is not None:
            sandbox_users.POOL.give_back(self.sandbox_users)
            self.sandbox_users = None

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        try:
            if exc_type is None and self.running:
                self.stop()
        finally:
            self.close()

    # -- state ----------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The supervisor's process id."""
        return self._require_process().pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def port(self) -> int:
        """The port of the first listener."""
        return self.ports[self.listen[0]]

    @property
    def log(self) -> str:
        """Everything the daemon wrote to stderr and stdout so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_since(self, mark: int) -> str:
        """Return the log after offset ``mark`` with a heading, for assertion messages."""
        return f"\n--- cloister log since the mark ---\n{self.log[mark:]}"

    def log_mark(self) -> int:
        """Return the current log length, to pass as ``since`` to later log queries."""
        return len(self.log)

    def wait_for_log(self, pattern: str | re.Pattern, since: int = 0,
                     timeout: float = DEFAULT_TIMEOUT) -> re.Match:
        """Wait for ``pattern`` in the log after offset ``since`` and return the match.

        Raises DaemonError with the log on timeout or when the daemon exits first.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log, since)
            if match:
                return match
            if not self.running:
                raise DaemonError(f"cloister exited ({self._status()}) before logging "
                                  f"{regex.pattern!r}\n{self.log}")
            if time.monotonic() > deadline:
                raise DaemonError(f"no {regex.pattern!r} in the log after {timeout} s\n{self.log}")
            time.sleep(0.05)

    def connection_records(self, since: int = 0) -> list[dict[str, str]]:
        """Parse every "connection closed:" line after ``since`` into a dict of its fields.

        Fields: peer, sni, vhost, protocol, cipher, scheme, alpn ("-" when none was agreed),
        bytes_in (plaintext bytes from the client), bytes_out (plaintext bytes to the client),
        duration_ms, result.
        """
        return [dict(_FIELD_RE.findall(match.group(1)))
                for match in _RECORD_RE.finditer(self.log, since)]

    def wait_for_record(self, since: int, timeout: float = DEFAULT_TIMEOUT,
                        **fields: str) -> dict[str, str]:
        """Wait for a connection record after ``since`` whose fields equal ``fields``."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.connection_records(since):
                if all(record.get(key) == value for key, value in fields.items()):
                    return record
            if time.monotonic() > deadline:
                raise AssertionError(f"no connection record with {fields} after {timeout} s; "
                                     f"log since the mark:\n{self.log[since:]}")
            time.sleep(0.05)

    # -- processes ------------------------------------------------------------------------

    def processes(self) -> list[Process]:
        """Return every process below the supervisor (children first)."""
        return descendants(self.pid)

    def children(self) -> list[Process]:
        """Return the supervisor's direct children."""
        return [process for process in process_table() if process.ppid == self.pid]

    def wait_for_children(self, predicate: Callable[[list[Process]], bool],
                          timeout: float = DEFAULT_TIMEOUT) -> list[Process]:
        """Poll ``children()`` until ``predicate`` returns True and return that list."""
        deadline = time.monotonic() + timeout
        while True:
            children = self.children()
            if predicate(children):
                return children
            if time.monotonic() > deadline:
                listing = "\n".join(f"{p.pid} {p.state} {p.title}" for p in children)
                raise AssertionError(f"children did not reach the expected state in {timeout} s:"
                                     f"\n{listing}\n{self.log}")
            time.sleep(0.05)

    @property
    def key_pid(self) -> int:
        """The pid of the child titled "cloister: key" (waits for it to appear)."""
        children = self.wait_for_children(
            lambda found: any(p.title == "cloister: key" for p in found))
        return next(p.pid for p in children if p.title == "cloister: key")

    def key_stats(self, timeout: float = DEFAULT_TIMEOUT) -> dict[str, int]:
        """Send SIGUSR1 to the key process and return its counters.

        Keys: channels, signatures, refused, malformed.
        """
        mark = self.log_mark()
        os.kill(self.key_pid, signal.SIGUSR1)
        match = self.wait_for_log(_STATS_RE, since=mark, timeout=timeout)
        return {key: int(value) for key, value in _FIELD_RE.findall(match.group(1))}

    def key_operation_stats(self, timeout: float = DEFAULT_TIMEOUT
                            ) -> dict[tuple[str, str], dict[str, str]]:
        """Send SIGUSR1 to the supervisor, which forwards it to the key process, and return
        the key operation stats lines of that report by (key, operation).

        Each value maps the line's field names to their text ("-" for no value); the fields
        are described in docs/operations.md. Each report starts a new period.
        """
        mark = self.log_mark()
        os.kill(self.pid, signal.SIGUSR1)
        end = self.wait_for_log(_STATS_RE, since=mark, timeout=timeout)
        lines = {}
        for match in _OPERATION_STATS_RE.finditer(self.log[:end.start()], mark):
            fields = dict(_FIELD_RE.findall(match.group(1)))
            lines[(fields["key"], fields["operation"])] = fields
        return lines

    def assert_no_zombies(self, settle: float = 2.0) -> None:
        """Raise AssertionError if a child stays a zombie for ``settle`` seconds.

        A child that exited a moment ago is a zombie until the supervisor reaps it, so one
        sighting is not enough.
        """
        deadline = time.monotonic() + settle
        while True:
            zombies = [p for p in self.children() if p.is_zombie]
            if not zombies:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"unreaped children after {settle} s: {zombies}")
            time.sleep(0.05)

    # -- internals ------------------------------------------------------------------------

    def _write_config(self) -> None:
        document = self.document
        if isinstance(document, Mapping) and "listener" not in document:
            self.ports = {host: free_port(host) for host in self.listen}
            listeners = [{"address": format_address(host, port)}
                         for host, port in self.ports.items()]
            document = {**document, "listener": listeners}
        write_config(self.folder, with_sandbox(document, self.sandbox_users))

    def _spawn(self) -> None:
        argv = [binary("CLOISTER_BIN", "cloister"), "--config", str(self.config_path),
                *self.args]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, cwd=self.folder,
                                            start_new_session=True,
                                            preexec_fn=_die_with_test)
        _live_daemons.add(self)

    def _require_process(self) -> subprocess.Popen:
        if self.process is None:
            raise DaemonError("cloister was not started")
        return self.process

    def _status(self) -> str:
        code = self.process.poll() if self.process else None
        if code is None:
            return "running"
        return f"killed by signal {-code}" if code < 0 else f"exit status {code}"

    def _remember_children(self) -> None:
        if self.running:
            for process in self.processes():
                self._known_children[process.pid] = process.title

    def _surviving_children(self) -> list[str]:
        return [f"{pid} {title}" for pid, title in self._known_children.items()
                if _title_of(pid) == title]

    def _kill_group(self) -> None:
        process = self.process
        if process is None:
            return
        self._remember_children()
        _kill_process_group(process.pid)
        for pid, title in self._known_children.items():
            # Only a process that still carries the title seen earlier is ours.
            if _title_of(pid) == title:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 5
        while self._surviving_children() and time.monotonic() < deadline:
            time.sleep(0.05)
        _live_daemons.discard(self)


# ------------------------------------------------------------------------------------------
# Clients


HTTP_REQUEST = b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"


QUANTILE_FIELDS = ("p50_us", "p90_us", "p99_us", "max_us")


def check_latency_quantiles(test: unittest.TestCase, line: Mapping[str, str],
                            prefix: str = "") -> list[int]:
    """Check that the quantiles with ``prefix`` of a key operation stats line are positive
    and ordered (p50 <= p90 <= p99 <= max); return them in that order."""
    values = []
    for name in QUANTILE_FIELDS:
        text = line[prefix + name]
        test.assertRegex(text, r"^\d+$", f"{prefix}{name} in {line}")
        values.append(int(text))
    test.assertGreater(values[0], 0, line)
    test.assertEqual(values, sorted(values), line)
    return values


def http_request(host: str) -> bytes:
    """Return a minimal HTTP/1.1 GET / request for ``host`` with "Connection: close"."""
    return HTTP_REQUEST % host.encode()


@dataclasses.dataclass
class ClientOutput:
    """The command line, exit status and output of one client program run."""

    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("latin-1") + self.stderr.decode("latin-1")

    def _field(self, pattern: str) -> str | None:
        match = re.search(pattern, self.text, re.MULTILINE)
        return match.group(1) if match else None

    def describe(self) -> str:
        """Return the command and its whole output, for assertion messages."""
        return f"$ {' '.join(self.argv)}\nexit status {self.returncode}\n{self.text}"


@dataclasses.dataclass
class SClientResult(ClientOutput):
    """The outcome of one ``openssl s_client`` run.

    ``stdout`` contains the handshake report and the application data in one stream, because
    s_client writes both there; ``text`` is stdout and stderr decoded.
    """

    @property
    def protocol(self) -> str | None:
        """"TLSv1.3" or "TLSv1.2" from the "New, ..., Cipher is ..." line."""
        return self._field(r"^New, (TLSv[\d.]+), Cipher is ")

    @property
    def cipher(self) -> str | None:
        return self._field(r"^New, TLSv[\d.]+, Cipher is (\S+)")

    @property
    def peer_signature_type(self) -> str | None:
        """"RSA-PSS", "RSA", "ECDSA" or "ed25519"."""
        return self._field(r"^Peer signature type: (\S+)")

    @property
    def peer_signing_digest(self) -> str | None:
        """"SHA256" or "SHA384"; s_client prints none for Ed25519."""
        return self._field(r"^Peer signing digest: (\S+)")

    @property
    def verify_code(self) -> int | None:
        value = self._field(r"^ *Verify return code: (\d+)")
        return int(value) if value is not None else None

    @property
    def verify_line(self) -> str | None:
        """The first "Verify return code: 0 (ok)" line, without indentation.

        For TLS 1.2, s_client prints it only inside the indented SSL-Session block.
        """
        return self._field(r"^ *(Verify return code: .*)$")

    def chain_subjects(self) -> list[str]:
        """Return the subject of each certificate the server sent, in the order sent."""
        return re.findall(r"^ *\d+ s:(.*)$", self.text, re.MULTILINE)



def standard_cipher_name(openssl_name: str) -> str:
    """Return the IANA name of the cipher that OpenSSL calls ``openssl_name``.

    "ECDHE-RSA-AES256-GCM-SHA384" gives "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384". TLS 1.3
    suites have the same name in both. Raises ValueError when ``openssl ciphers`` does not
    list the name.
    """
    result = run(["openssl", "ciphers", "-stdname", "ALL:COMPLEMENTOFALL"], timeout=10)
    for line in result.stdout.decode().splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[1] == "-" and fields[2] == openssl_name:
            return fields[0]
    raise ValueError(f"openssl ciphers does not list {openssl_name!r}")


def s_client(port: int, *, host: str = "127.0.0.1", servername: str | None = None,
             cafile: Path | None = None, verify_error: bool = True,
             verify_hostname: str | None = None, version: str | None = None,
             sigalgs: str | None = None, cipher: str | None = None,
             ciphersuites: str | None = None, showcerts: bool = False,
             request: bytes = b"", wait_for_close: bool = True,
             extra: Sequence[str] = (), timeout: float = DEFAULT_TIMEOUT) -> SClientResult:
    """Run ``openssl s_client`` against host:port, send ``request`` and capture the output.

    ``version`` is "1.2" or "1.3" (-tls1_2 or -tls1_3). ``cafile`` defaults to the test root;
    ``verify_error`` adds -verify_return_error. With ``wait_for_close`` (-ign_eof) s_client
    reads until the server closes, otherwise it sends close_notify when ``request`` is sent.
    """
    argv = ["openssl", "s_client", "-connect", format_address(host, port),
            "-CAfile", str(cafile or pki().ca_file)]
    argv += ["-servername", servername] if servername else ["-noservername"]
    argv += ["-verify_return_error"] if verify_error else []
    argv += ["-verify_hostname", verify_hostname] if verify_hostname else []
    argv += [f"-tls{version.replace('.', '_')}"] if version else []
    argv += ["-sigalgs", sigalgs] if sigalgs else []
    argv += ["-cipher", cipher] if cipher else []
    argv += ["-ciphersuites", ciphersuites] if ciphersuites else []
    argv += ["-showcerts"] if showcerts else []
    argv += ["-ign_eof"] if wait_for_close else []
    argv += list(extra)
    result = run_client(argv, input=request, timeout=timeout)
    return SClientResult(argv, result.returncode, result.stdout, result.stderr)


def curl(url: str, *, cacert: Path | None = None, resolve: Sequence[str] = (),
         extra: Sequence[str] = (),
         timeout: float = DEFAULT_TIMEOUT) -> subprocess.CompletedProcess:
    """Fetch ``url`` with curl; stdout is the body as bytes.

    ``resolve`` entries are "host:port:address" (curl's --resolve). ``cacert`` defaults to
    the test root. Redirects are not followed.
    """
    argv = ["curl", "--silent", "--show-error", "--max-time", str(int(timeout) - 1),
            "--cacert", str(cacert or pki().ca_file), "--output", "-"]
    for entry in resolve:
        argv += ["--resolve", entry]
    argv += [*extra, url]
    return run(argv, timeout=timeout)


@dataclasses.dataclass
class GnutlsResult:
    """The outcome of one ``gnutls-cli`` run: application data in stdout, the report in info."""

    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: bytes
    info: str

    def describe(self) -> str:
        return (f"$ {' '.join(self.argv)}\nexit status {self.returncode}\n{self.info}"
                f"{self.stderr.decode(errors='replace')}")


def gnutls_cli(port: int, *, host: str = "127.0.0.1", servername: str | None = None,
               cafile: Path | None = None, request: bytes = b"", priority: str | None = None,
               extra: Sequence[str] = (), timeout: float = DEFAULT_TIMEOUT) -> GnutlsResult:
    """Run gnutls-cli against host:port, verifying the certificate for ``servername``.

    gnutls-cli sends ``request``, keeps reading after the end of its input until the server
    closes, and writes only application data to stdout (its report goes to ``info``).
    """
    handle, name = tempfile.mkstemp(prefix="gnutls-", suffix=".log", dir=run_dir())
    os.close(handle)
    log_file = Path(name)
    argv = ["gnutls-cli", "--port", str(port), "--x509cafile", str(cafile or pki().ca_file),
            f"--logfile={log_file}"]
    if servername:
        argv += ["--sni-hostname", servername, "--verify-hostname", servername]
    argv += [f"--priority={priority}"] if priority else []
    argv += [*extra, host]
    try:
        result = run_client(argv, input=request, timeout=timeout)
        info = log_file.read_text(errors="replace")
    finally:
        log_file.unlink(missing_ok=True)
    return GnutlsResult(argv, result.returncode, result.stdout, result.stderr, info)


@dataclasses.dataclass
class BotanResult(ClientOutput):
    """The outcome of one ``botan tls_client`` run.

    Botan's CLI writes its handshake report and the application data to stdout, so
    ``stdout`` contains both. ``protocol`` and ``cipher`` come from the "Handshake complete"
    line, ``alpn`` from the "Server choose protocol" line.
    """

    @property
    def protocol(self) -> str | None:
        """"TLS v1.2" as Botan names it."""
        return self._field(r"^Handshake complete, (TLS v[\d.]+) using ")

    @property
    def cipher(self) -> str | None:
        """The IANA name without "TLS_", as "ECDHE_RSA_WITH_AES_256_GCM_SHA384"."""
        return self._field(r"^Handshake complete, TLS v[\d.]+ using (\S+)")

    @property
    def alpn(self) -> str | None:
        return self._field(r"^Server choose protocol: (\S+)")



def botan_tls_client(port: int, *, host: str = "localhost", request: bytes = b"",
                     expect: bytes = b"", cafile: Path | None = None,
                     next_protocols: Sequence[str] = (), policy: str | None = None,
                     timeout: float = DEFAULT_TIMEOUT) -> BotanResult:
    """Run Botan's CLI ``botan tls_client`` against host:port and send ``request``.

    The CLI connects to ``host`` and sends it as SNI, so the test certificates' "localhost"
    is the usual choice. It closes the connection as soon as its standard input ends, so
    standard input stays open until ``expect`` has arrived on stdout, the client exits, or
    ``timeout`` seconds pass. ``policy`` is the text of a Botan TLS policy file.
    """
    argv = ["botan", "tls_client", host, f"--port={port}",
            f"--trusted-cas={cafile or pki().ca_file}", "--skip-system-cert-store"]
    if next_protocols:
        argv.append("--next-protocols=" + ",".join(next_protocols))
    if policy is not None:
        policy_file = Path(tempfile.mkstemp(prefix="botan-policy-", dir=run_dir())[1])
        policy_file.write_text(policy)
        argv.append(f"--policy={policy_file}")
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    output = _BotanOutput(process)
    try:
        process.stdin.write(request)
        process.stdin.flush()
        output.wait_for(expect, time.monotonic() + timeout)
        process.stdin.close()
        process.wait(timeout=max(1.0, timeout / 4))
    except (subprocess.TimeoutExpired, BrokenPipeError):
        process.kill()
        process.wait(timeout=10)
    stdout, stderr = output.finish()
    return BotanResult(argv, process.returncode, stdout, stderr)


class _BotanOutput:
    """Collects a process's stdout and stderr in threads while the caller waits."""

    def __init__(self, process: subprocess.Popen):
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._threads = [
            threading.Thread(target=self._drain, args=(process.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._drain, args=(process.stderr, self.stderr), daemon=True),
        ]
        self._process = process
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _drain(stream: Any, sink: bytearray) -> None:
        while chunk := stream.read1(65536):
            sink.extend(chunk)

    def wait_for(self, expect: bytes, deadline: float) -> None:
        while expect not in self.stdout and self._process.poll() is None:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def finish(self) -> tuple[bytes, bytes]:
        for thread in self._threads:
            thread.join(timeout=10)
        return bytes(self.stdout), bytes(self.stderr)


@dataclasses.dataclass
class TlsResult:
    """What the Python ssl client saw: bytes received and the negotiated parameters.

    ``close_notify`` is True when the server ended with a TLS close_notify alert, and False
    when it closed the TCP connection without one.
    """

    data: bytes
    version: str
    cipher: str
    peer_certificate: dict[str, Any]
    close_notify: bool


def tls_context(cafile: Path | None = None, version: str | None = None) -> ssl.SSLContext:
    """Return a client context that trusts only ``cafile`` (default: the test root).

    ``version`` "1.2" or "1.3" pins the protocol version.
    """
    context = ssl.create_default_context(cafile=str(cafile or pki().ca_file))
    if version:
        pinned = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
        context.minimum_version = pinned
        context.maximum_version = pinned
    return context


def tls_connect(port: int, *, host: str = "127.0.0.1", server_hostname: str = "www.example.test",
                cafile: Path | None = None, version: str | None = None,
                timeout: float = DEFAULT_TIMEOUT) -> ssl.SSLSocket:
    """Open a verified TLS connection to host:port; the caller closes the socket."""
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        return tls_context(cafile, version).wrap_socket(raw, server_hostname=server_hostname)
    except BaseException:
        raw.close()
        raise


def tls_request(port: int, request: bytes, *, host: str = "127.0.0.1",
                server_hostname: str = "www.example.test", cafile: Path | None = None,
                version: str | None = None, half_close: bool = False,
                timeout: float = DEFAULT_TIMEOUT) -> TlsResult:
    """Send ``request`` over a verified TLS connection and read until the server closes.

    With ``half_close`` the client sends close_notify after the request and keeps reading,
    which TLS 1.3 defines (RFC 8446 section 6.1) and OpenSSL 3.0 also allows in TLS 1.2.
    Reading and writing interleave, so a request of any size cannot deadlock against an echo.
    Raises ssl.SSLError when the handshake fails and TimeoutError after ``timeout`` seconds.
    """
    exchange = _TlsExchange(tls_context(cafile, version), server_hostname, timeout)
    with socket.create_connection((host, port), timeout=timeout) as raw:
        return exchange.run(raw, request, half_close)


class _TlsExchange:
    """One client connection driven through memory BIOs over a non-blocking socket."""

    CHUNK = 16384

    def __init__(self, context: ssl.SSLContext, server_hostname: str, timeout: float):
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing,
                                    server_hostname=server_hostname)
        self.description = f"TLS exchange with {server_hostname}"
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.pending = bytearray()  # TLS records not yet accepted by the socket
        self.received = bytearray()
        self.close_notify = False
        self.finished = False

    def run(self, raw: socket.socket, request: bytes, half_close: bool) -> TlsResult:
        raw.setblocking(False)
        self._handshake(raw)
        offset = 0
        shut_down = False
        while not self.finished:
            if offset < len(request) and len(self.pending) < 4 * self.CHUNK:
                offset += self.tls.write(request[offset:offset + self.CHUNK])
            elif offset >= len(request) and half_close and not shut_down:
                shut_down = True
                with contextlib.suppress(ssl.SSLWantReadError):
                    self.tls.unwrap()
            self.pending += self.outgoing.read()
            self._transfer(raw, want_read=True)
            self._read_plaintext()
        if self.close_notify and not shut_down:
            self._answer_close_notify(raw)
        return TlsResult(bytes(self.received), self.tls.version() or "",
                         (self.tls.cipher() or ("",))[0], self.tls.getpeercert() or {},
                         self.close_notify)

    def _handshake(self, raw: socket.socket) -> None:
        while True:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self.pending += self.outgoing.read()
                self._transfer(raw, want_read=True)
                continue
            self.pending += self.outgoing.read()
            return

    def _transfer(self, raw: socket.socket, want_read: bool) -> None:
        """Wait until the socket is ready, then send pending records and read new ones."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{self.description} timed out after {self.timeout} s")
        writers = [raw] if self.pending else []
        readable, writable, _ = select.select([raw] if want_read else [], writers, [],
                                              remaining)
        if writable:
            sent = raw.send(self.pending)
            del self.pending[:sent]
        if readable:
            chunk = raw.recv(65536)
            if chunk:
                self.incoming.write(chunk)
            else:
                self.incoming.write_eof()

    def _read_plaintext(self) -> None:
        # SSLObject.read returns b"" for a close_notify that arrives before ours was sent,
        # and raises SSLZeroReturnError for one that arrives after.
        while True:
            try:
                piece = self.tls.read(65536)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                self.close_notify = True
                self.finished = True
                return
            except ssl.SSLEOFError:
                self.finished = True
                return
            if not piece:
                self.close_notify = True
                self.finished = True
                return
            self.received += piece

    def _answer_close_notify(self, raw: socket.socket) -> None:
        """Send our close_notify before closing, as RFC 8446 section 6.1 requires of each side."""
        self.tls.unwrap()
        self.pending += self.outgoing.read()
        while self.pending:
            self._transfer(raw, want_read=False)
