"""Keys in PKCS#11 tokens: SoftHSM 2 tokens behind the key process.

Each test class creates its own SoftHSM token in a temporary folder, with SOFTHSM2_CONF
naming a softhsm2.conf of its own, and points [[key]] uri entries at it. The cases:

- the handshake matrix of test_handshakes.py (and of the Botan stack in test_backends.py)
  with every key in a token;
- what a key may sign with: CKA_ALLOWED_MECHANISMS absent, empty or restricted, and a token
  without RSA-PSS, which limits its vhost to TLS 1.2;
- PINs with URI-special and non-ASCII characters, from a file or the URI, and the
  references cloister rejects;
- the messages for a wrong PIN, a missing token or object, and an ambiguous reference;
- OpenSC's pkcs11-spy.so between the key process and SoftHSM: only the key process loads a
  module, and signing opens no session, logs in and searches nothing after warm-up, also
  with 8 concurrent clients; the key operation stats count each signature and time the
  token calls;
- a remote token through p11-kit server and p11-kit-client.so that stops and comes back.

Needs softhsm2-util, pkcs11-tool (opensc), p11-kit and the modules of the softhsm2, opensc
and p11-kit-modules packages; the classes skip when one is missing.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest
from pathlib import Path
from typing import Any, Iterator, Mapping
from unittest import mock

import harness
import test_backends
import test_handshakes

SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
MODULE_DIR = Path("/usr/lib/x86_64-linux-gnu/pkcs11")
SPY_MODULE = MODULE_DIR / "pkcs11-spy.so"
P11KIT_CLIENT = MODULE_DIR / "p11-kit-client.so"
USER_PIN = "1234"
SO_PIN = "87654321"
# A user PIN with the characters that break naive URI, shell or file handling.
AWKWARD_PIN = "pa;ss%2F?&\u00e91"
AWKWARD_PIN_IN_URI = "pa%3Bss%252F%3F%26%C3%A91"
HTTP_BODY = b"cloister PKCS#11 test backend\n"

# openssl s_client prints this for an alert it received.
ALERT_RE = re.compile(r"alert number (\d+)")
SPY_CALL_RE = re.compile(r"^\d+: (C_\w+)$", re.MULTILINE)


def missing_tools() -> str | None:
    """Return why the PKCS#11 tests cannot run here, or None."""
    for tool in ("softhsm2-util", "pkcs11-tool", "p11-kit", "openssl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    for module in (SOFTHSM_MODULE, SPY_MODULE, P11KIT_CLIENT):
        if not module.is_file():
            return f"{module} is not installed"
    return None


def alert_number(result: harness.SClientResult) -> int | None:
    match = ALERT_RE.search(result.text)
    return int(match.group(1)) if match else None


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the daemons and tools started inside the block."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_checked(argv: list[str], env: Mapping[str, str]) -> bytes:
    result = subprocess.run(argv, capture_output=True, timeout=120, check=False,
                            env={**os.environ, **env})
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n"
                           f"{result.stdout.decode(errors='replace')}"
                           f"{result.stderr.decode(errors='replace')}")
    return result.stdout


class Token:
    """A SoftHSM 2 token in a folder of its own.

    The folder contains softhsm2.conf, the token files and the PIN files. ``environment`` is
    what a process needs to find this token (SOFTHSM2_CONF).
    """

    def __init__(self, label: str = "cloister", pin: str = USER_PIN, extra_conf: str = ""):
        self.folder = Path(tempfile.mkdtemp(prefix="token-", dir=harness.run_dir()))
        self.folder.chmod(0o711)
        (self.folder / "tokens").mkdir()
        self.conf = self.folder / "softhsm2.conf"
        self.label = label
        self.pin = pin
        self._ids = itertools.count(1)
        self.write_conf(extra_conf)
        self.init(label, pin)

    @property
    def environment(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf)}

    def write_conf(self, extra: str = "") -> None:
        self.conf.write_text(f"directories.tokendir = {self.folder / 'tokens'}\n"
                             "objectstore.backend = file\nlog.level = ERROR\n" + extra)
        self.conf.chmod(0o644)

    def init(self, label: str, pin: str) -> None:
        run_checked(["softhsm2-util", "--init-token", "--free", "--label", label,
                     "--so-pin", SO_PIN, "--pin", pin], self.environment)
        self.share()

    def share(self) -> None:
        """Let every user read the token files.

        SoftHSM rereads them at every C_SignInit, after the key process switched to its
        sandbox user. The folder is private to this test run.
        """
        for path in self.folder.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        for pin_file in self.folder.glob("*.pin"):
            pin_file.chmod(0o600)

    def import_key(self, key: Path, label: str, token: str | None = None,
                   pin: str | None = None, public: bool = True) -> str:
        """Import a PEM private key (and, when ``public``, its public key object); return its
        id as hex."""
        hex_id = f"{next(self._ids):02x}"
        run_checked(["softhsm2-util", "--import", str(key), "--token", token or self.label,
                     "--label", label, "--id", hex_id, "--pin", pin or self.pin,
                     *([] if public else ["--no-public-key"])], self.environment)
        self.share()
        return hex_id

    def tool(self, *args: str) -> bytes:
        return run_checked(["pkcs11-tool", "--module", str(SOFTHSM_MODULE), "--token-label",
                            self.label, "--login", "--pin", self.pin, *args], self.environment)

    def generate_rsa(self, label: str, allowed: str) -> Path:
        """Generate an RSA-2048 key pair in the token with CKA_ALLOWED_MECHANISMS set to
        ``allowed`` (pkcs11-tool names); return its public key as a PEM file."""
        hex_id = f"{next(self._ids):02x}"
        self.tool("--keypairgen", "--key-type", "rsa:2048", "--label", label, "--id", hex_id,
                  "--allowed-mechanisms", allowed)
        self.share()
        der = self.folder / f"{label}.pub.der"
        self.tool("--read-object", "--type", "pubkey", "--id", hex_id, "-o", str(der))
        pem = self.folder / f"{label}.pub.pem"
        for form in (["pkey", "-pubin"], ["rsa", "-RSAPublicKey_in", "-pubout"]):
            result = harness.run(["openssl", *form, "-inform", "DER", "-in", str(der),
                                  "-out", str(pem)])
            if result.returncode == 0:
                return pem
        raise RuntimeError(f"cannot read the public key that pkcs11-tool wrote to {der}")

    def pin_file(self, text: str | None = None, mode: int = 0o600,
                 name: str = "user") -> Path:
        path = self.folder / f"{name}.pin"
        path.write_bytes((self.pin + "\n" if text is None else text).encode())
        path.chmod(mode)
        return path

    def key_entry(self, name: str, uri: str | None = None,
                  module: Path = SOFTHSM_MODULE, pin_file: Path | None = None) -> dict[str, Any]:
        """Return a [[key]] table for the object labelled ``name`` in this token."""
        return {"name": name,
                "uri": uri or f"pkcs11:token={self.label};object={name};type=private",
                "module": str(module), "pin-file": str(pin_file or self.pin_file())}

    def key_for(self, cert: harness.Cert) -> dict[str, Any]:
        """Import ``cert``'s key under the certificate's name and return its [[key]] table."""
        self.import_key(cert.key, cert.name)
        return self.key_entry(cert.name)


def issue_for_public_key(name: str, public_key: Path,
                         sans: tuple[str, ...] = harness.DEFAULT_SANS) -> harness.Cert:
    """Have the test root sign a certificate for a public key whose private half is in a
    token (openssl x509 -force_pubkey)."""
    pki = harness.pki()
    folder = pki.folder
    request_key = pki.make_key(f"{name}-request", "p256")
    request = folder / f"{name}.csr"
    cert = folder / f"{name}.crt"
    extensions = folder / f"{name}.ext"
    alt_names = ",".join(f"DNS:{san}" for san in sans if not san[0].isdigit() and ":" not in san)
    extensions.write_text("[ext]\nbasicConstraints = critical,CA:FALSE\n"
                          "keyUsage = critical,digitalSignature\nextendedKeyUsage = serverAuth\n"
                          f"subjectAltName = {alt_names}\n")
    harness.run(["openssl", "req", "-new", "-key", str(request_key), "-subj", f"/CN={sans[0]}",
                 "-config", str(folder / "req.cnf"), "-out", str(request)])
    result = harness.run(["openssl", "x509", "-req", "-in", str(request), "-CA",
                          str(pki.ca.cert), "-CAkey", str(pki.ca.key), "-force_pubkey",
                          str(public_key), "-set_serial", str(secrets.randbits(63)),
                          "-days", "30", "-extfile", str(extensions), "-extensions", "ext",
                          "-out", str(cert)])
    if result.returncode != 0:
        raise RuntimeError(result.stderr.decode(errors="replace"))
    return harness.Cert(name, sans[0], "rsa", public_key, cert, cert, pki.ca)


def token_config(vhosts: list[Mapping[str, Any]], keys: list[Mapping[str, Any]],
                 **sections: Mapping[str, Any]) -> dict[str, Any]:
    """A harness config whose [[key]] tables are ``keys``."""
    document = harness.config(vhosts, [], **sections)
    document["key"] = list(keys)
    return document


def handshake(daemon: harness.Daemon, servername: str = "www.example.test",
              version: str | None = "1.3", sigalgs: str | None = None,
              timeout: float = harness.DEFAULT_TIMEOUT) -> harness.SClientResult:
    return harness.s_client(daemon.port, servername=servername, verify_hostname=servername,
                            version=version, sigalgs=sigalgs,
                            request=harness.http_request(servername), timeout=timeout)


def check_config(document: Mapping[str, Any]) -> subprocess.CompletedProcess:
    """Run cloister --check-config on ``document`` in a folder of its own."""
    folder = Path(tempfile.mkdtemp(prefix="check-", dir=harness.run_dir()))
    listener = {"address": harness.format_address("127.0.0.1", harness.free_port())}
    path = harness.write_config(folder, {"listener": [listener], **document})
    return harness.run_cloister("--config", path, "--check-config")


# ------------------------------------------------------------------------------------------
# The handshake matrix with keys in a token


class TokenKeys:
    """Runs a handshake matrix class with every [[key]] imported into a SoftHSM token.

    While the matrix class's setUpClass builds its config, harness.config returns the same
    document with each key entry replaced by the token object holding that key.
    """

    token_label = "matrix"

    @classmethod
    def setUpClass(cls):
        reason = missing_tools()
        if reason:
            raise unittest.SkipTest(reason)
        cls.token = Token(cls.token_label)
        build = harness.config

        def config_with_token_keys(vhosts, keys, **kwargs):
            certs = {cert.name: cert for cert in keys}
            document = build(vhosts, list(certs.values()), **kwargs)
            document["key"] = [cls.token.key_for(cert) for cert in certs.values()]
            return document

        scope = environment(cls.token.environment)
        scope.__enter__()
        cls.addClassCleanup(scope.__exit__, None, None, None)
        with mock.patch.object(harness, "config", config_with_token_keys):
            super().setUpClass()

    def test_keys_come_from_the_token(self):
        self.assertRegex(self.daemon.log,
                         rf"loaded RSA key 'rsa' \(index \d+\) from pkcs11:token="
                         rf"{self.token_label};object=rsa;type=private")
        self.assertIn("has an empty CKA_ALLOWED_MECHANISMS list, which means no restriction",
                      self.daemon.log)


class TokenHandshakeMatrixTest(TokenKeys, test_handshakes.HandshakeMatrixTest):
    """The OpenSSL stack's handshake matrix with RSA-2048, P-256, P-384 and Ed25519 keys in
    SoftHSM, signed with CKM_RSA_PKCS_PSS, CKM_RSA_PKCS, CKM_ECDSA and CKM_EDDSA."""

    token_label = "matrix-openssl"


class BotanTokenHandshakeMatrixTest(TokenKeys, test_backends.BotanHandshakeMatrixTest):
    """The Botan stack's handshake matrix with the keys in SoftHSM."""

    token_label = "matrix-botan"


# ------------------------------------------------------------------------------------------
# What each key can sign


class MechanismLimitsTest(unittest.TestCase):
    """Keys whose CKA_ALLOWED_MECHANISMS lists or leaves out RSA-PSS.

    pss.example.test: a key that allows PSS and PKCS#1 v1.5 but not raw RSA.
    v15.example.test: a key that allows PKCS#1 v1.5 only, so its vhost serves TLS 1.2.
    www.example.test: a key imported without the attribute, which SoftHSM reports as an
    empty list: no restriction.
    """

    @classmethod
    def setUpClass(cls):
        reason = missing_tools()
        if reason:
            raise unittest.SkipTest(reason)
        pki = harness.pki()
        cls.token = Token("limits")
        pss = issue_for_public_key("pssonly", cls.token.generate_rsa(
            "pssonly", "RSA-PKCS-PSS,SHA256-RSA-PKCS-PSS,RSA-PKCS,SHA256-RSA-PKCS"))
        v15 = issue_for_public_key("v15only", cls.token.generate_rsa(
            "v15only", "RSA-PKCS,SHA256-RSA-PKCS"))
        cls.token.import_key(pki.rsa.key, "rsa")
        cls.backend = harness.HttpBackend(HTTP_BODY).start()
        cls.addClassCleanup(cls.backend.stop)
        cls.vhosts = [harness.vhost(["pss.example.test"], cls.backend, pss),
                      harness.vhost(["v15.example.test"], cls.backend, v15),
                      harness.vhost(["www.example.test"], cls.backend, pki.rsa, default=True)]
        cls.keys = [cls.token.key_entry("pssonly"), cls.token.key_entry("v15only"),
                    cls.token.key_entry("rsa")]
        scope = environment(cls.token.environment)
        scope.__enter__()
        cls.addClassCleanup(scope.__exit__, None, None, None)
        cls.daemon = harness.Daemon(token_config(cls.vhosts, cls.keys))
        cls.addClassCleanup(cls.daemon.close)
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def expect_handshake(self, servername, version, protocol, signature_type, sigalgs=None):
        mark = self.daemon.log_mark()
        result = handshake(self.daemon, servername, version, sigalgs)
        details = result.describe() + self.daemon.log_since(mark)
        self.assertEqual(result.returncode, 0, details)
        self.assertEqual(result.protocol, protocol, details)
        self.assertEqual(result.peer_signature_type, signature_type, details)
        self.assertEqual(result.verify_code, 0, details)
        self.assertEqual(result.stdout.count(HTTP_BODY), 1, details)

    def test_pss_key_serves_tls13(self):
        self.expect_handshake("pss.example.test", "1.3", "TLSv1.3", "RSA-PSS")

    def test_pss_key_serves_tls12_pkcs1(self):
        self.expect_handshake("pss.example.test", "1.2", "TLSv1.2", "RSA", "RSA+SHA256")

    def test_pkcs1_key_gets_tls12(self):
        # A client that offers both versions gets TLS 1.2 with a PKCS#1 v1.5 signature.
        self.expect_handshake("v15.example.test", None, "TLSv1.2", "RSA")

    def test_pkcs1_key_rejects_tls13_before_signing(self):
        stats = self.daemon.key_stats()
        mark = self.daemon.log_mark()
        result = handshake(self.daemon, "v15.example.test", "1.3")
        details = result.describe() + self.daemon.log_since(mark)
        self.assertNotEqual(result.returncode, 0, details)
        self.assertIsNone(result.protocol, details)
        self.assertEqual(alert_number(result), 70, details)  # protocol_version
        # The key process was never asked to sign: the handshake failed at version
        # negotiation, not at CertificateVerify.
        self.daemon.wait_for_record(mark, result="handshake_failed")
        self.assertEqual(self.daemon.key_stats()["signatures"], stats["signatures"], details)
        self.assertNotIn("sign request", self.daemon.log[mark:])

    def test_pkcs1_key_never_offers_pss(self):
        # A TLS 1.2 client that accepts only RSA-PSS finds no common signature scheme.
        mark = self.daemon.log_mark()
        result = handshake(self.daemon, "v15.example.test", "1.2", "RSA-PSS+SHA256")
        details = result.describe() + self.daemon.log_since(mark)
        self.assertNotEqual(result.returncode, 0, details)
        self.assertIsNone(result.protocol, details)
        self.assertEqual(alert_number(result), 40, details)  # handshake_failure
        self.assertNotIn("sign request", self.daemon.log[mark:])

    def test_empty_allowed_list_means_no_restriction(self):
        self.expect_handshake("www.example.test", "1.3", "TLSv1.3", "RSA-PSS")
        log = self.daemon.log
        self.assertEqual(log.count("key 'rsa' has an empty CKA_ALLOWED_MECHANISMS list, which "
                                   "means no restriction"), 1, log)
        self.assertEqual(log.count("key 'v15only' allows only these mechanisms "
                                   "(CKA_ALLOWED_MECHANISMS): CKM_RSA_PKCS, CKM_SHA256_RSA_PKCS"),
                         1, log)

    def test_tls12_limit_logged_once(self):
        log = self.daemon.log
        self.assertEqual(log.count("vhost 'v15.example.test' serves TLS 1.2 only: key "
                                   "'v15only' cannot sign RSA-PSS"), 1, log)
        self.assertEqual(log.count("key 'v15only': the token cannot sign RSA-PSS with it"), 1, log)
        self.assertNotIn("vhost 'pss.example.test' serves TLS 1.2 only", log)

    def test_tls13_only_config_rejected(self):
        result = check_config(token_config(self.vhosts, self.keys, tls={"min-version": "1.3"}))
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 2, output)
        self.assertIn("vhost 'v15.example.test': key 'v15only' cannot sign RSA-PSS, which TLS "
                      "1.3 requires of RSA keys, and [tls] min-version is 1.3", output)


class BotanMechanismLimitsTest(unittest.TestCase):
    """The Botan stack (TLS 1.2 only) with token keys whose CKA_ALLOWED_MECHANISMS lists or
    leaves out RSA-PSS: pss.example.test allows both paddings, v15.example.test PKCS#1 v1.5
    only, so Botan must never ask it for an RSA-PSS signature."""

    @classmethod
    def setUpClass(cls):
        reason = missing_tools()
        if reason:
            raise unittest.SkipTest(reason)
        cls.token = Token("botanlimits")
        pss = issue_for_public_key("botanpss", cls.token.generate_rsa(
            "botanpss", "RSA-PKCS-PSS,SHA256-RSA-PKCS-PSS,RSA-PKCS,SHA256-RSA-PKCS"))
        v15 = issue_for_public_key("botanv15", cls.token.generate_rsa(
            "botanv15", "RSA-PKCS,SHA256-RSA-PKCS"))
        cls.backend = harness.HttpBackend(HTTP_BODY).start()
        cls.addClassCleanup(cls.backend.stop)
        vhosts = [harness.vhost(["pss.example.test"], cls.backend, pss, default=True),
                  harness.vhost(["v15.example.test"], cls.backend, v15)]
        keys = [cls.token.key_entry("botanpss"), cls.token.key_entry("botanv15")]
        scope = environment(cls.token.environment)
        scope.__enter__()
        cls.addClassCleanup(scope.__exit__, None, None, None)
        cls.daemon = harness.Daemon(token_config(vhosts, keys, tls_backend="botan"))
        cls.addClassCleanup(cls.daemon.close)
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def expect_handshake(self, servername, signature_type, scheme):
        mark = self.daemon.log_mark()
        # OpenSSL's client offers the RSA-PSS schemes before the PKCS#1 v1.5 ones.
        result = handshake(self.daemon, servername, "1.2")
        details = result.describe() + self.daemon.log_since(mark)
        self.assertEqual(result.returncode, 0, details)
        self.assertEqual(result.protocol, "TLSv1.2", details)
        self.assertEqual(result.peer_signature_type, signature_type, details)
        self.assertEqual(result.stdout.count(HTTP_BODY), 1, details)
        record = self.daemon.wait_for_record(mark, sni=servername)
        self.assertEqual(record.get("scheme"), scheme, record)
        self.assertNotIn("refused", self.daemon.log[mark:])

    def test_pkcs1_key_signs_pkcs1(self):
        self.expect_handshake("v15.example.test", "RSA", "rsa_pkcs1_sha256")

    def test_pss_key_signs_pss(self):
        self.expect_handshake("pss.example.test", "RSA-PSS", "rsa_pss_rsae_sha256")

    def test_pkcs1_key_never_offers_pss(self):
        stats = self.daemon.key_stats()
        mark = self.daemon.log_mark()
        result = handshake(self.daemon, "v15.example.test", "1.2", "RSA-PSS+SHA256")
        details = result.describe() + self.daemon.log_since(mark)
        self.assertNotEqual(result.returncode, 0, details)
        self.assertIsNone(result.protocol, details)
        self.assertEqual(alert_number(result), 40, details)  # handshake_failure
        self.daemon.wait_for_record(mark, result="handshake_failed")
        self.assertEqual(self.daemon.key_stats()["signatures"], stats["signatures"], details)

    def test_missing_schemes_logged(self):
        log = self.daemon.log
        self.assertRegex(log, r"botan: vhost 'v15\.example\.test' does not offer "
                              r"RSA_PSS_SHA256, RSA_PSS_SHA384, RSA_PSS_SHA512: key 'botanv15' "
                              r"cannot sign them")
        self.assertNotIn("vhost 'pss.example.test' does not offer", log)


class TokenWithoutPssTest(unittest.TestCase):
    """A token whose mechanism list has no RSA-PSS at all (softhsm2.conf slots.mechanisms)."""

    def test_rsa_key_serves_tls12_only(self):
        reason = missing_tools()
        if reason:
            self.skipTest(reason)
        # SoftHSM 2.6.1 keeps the '-' of a negative list in the first name, so the list
        # starts with a placeholder.
        token = Token("nopss", extra_conf="slots.mechanisms = -,CKM_RSA_PKCS_PSS,"
                      "CKM_SHA1_RSA_PKCS_PSS,CKM_SHA224_RSA_PKCS_PSS,CKM_SHA256_RSA_PKCS_PSS,"
                      "CKM_SHA384_RSA_PKCS_PSS,CKM_SHA512_RSA_PKCS_PSS\n")
        pki = harness.pki()
        token.import_key(pki.rsa.key, "rsa")
        with harness.HttpBackend(HTTP_BODY) as backend, environment(token.environment):
            vhosts = [harness.vhost(["www.example.test"], backend, pki.rsa, default=True)]
            with harness.Daemon(token_config(vhosts, [token.key_entry("rsa")])) as daemon:
                result = handshake(daemon, version=None)
                details = result.describe() + daemon.log
                self.assertEqual(result.returncode, 0, details)
                self.assertEqual(result.protocol, "TLSv1.2", details)
                self.assertEqual(result.peer_signature_type, "RSA", details)
                rejected = handshake(daemon, version="1.3")
                self.assertEqual(alert_number(rejected), 70, rejected.describe())
                self.assertIn("key 'rsa' (RSA 2048-bit) signs rsa_pkcs1_sha256, "
                              "rsa_pkcs1_sha384, rsa_pkcs1_sha512", daemon.log)


# ------------------------------------------------------------------------------------------
# Keys imported without a public key object


class PrivateOnlyKeysTest(unittest.TestCase):
    """Private keys imported with --no-public-key, certificates in files.

    An RSA private key object carries its modulus and exponent; an EC one carries no public
    point, so its certificate is checked by a test signature alone.
    """

    @classmethod
    def setUpClass(cls):
        reason = missing_tools()
        if reason:
            raise unittest.SkipTest(reason)
        cls.pki = harness.pki()
        cls.token = Token("privonly")
        cls.token.import_key(cls.pki.rsa.key, "rsa", public=False)
        cls.token.import_key(cls.pki.p256.key, "p256", public=False)
        cls.stranger = cls.pki.make_key("privonly-stranger", "p256")
        cls.token.import_key(cls.stranger, "stranger", public=False)
        scope = environment(cls.token.environment)
        scope.__enter__()
        cls.addClassCleanup(scope.__exit__, None, None, None)
        cls.backend = harness.HttpBackend(HTTP_BODY).start()
        cls.addClassCleanup(cls.backend.stop)

    def serve(self, cert: harness.Cert, tls_backend: str, version: str,
              signature_type: str) -> str:
        """Start cloister with the token key ``cert.name`` for ``cert``, check one verified
        handshake and return the log."""
        vhosts = [harness.vhost(["www.example.test"], self.backend, cert, default=True)]
        document = token_config(vhosts, [self.token.key_entry(cert.name)],
                                tls_backend=tls_backend)
        with harness.Daemon(document) as daemon:
            result = handshake(daemon, version=version)
            details = result.describe() + daemon.log
            self.assertEqual(result.returncode, 0, details)
            self.assertEqual(result.verify_code, 0, details)
            self.assertEqual(result.peer_signature_type, signature_type, details)
            self.assertEqual(result.stdout.count(HTTP_BODY), 1, details)
            daemon.stop()
            return daemon.log

    def test_rsa_key_serves_openssl(self):
        log = self.serve(self.pki.rsa, "openssl", "1.3", "RSA-PSS")
        self.assertNotIn("no public key", log)

    def test_rsa_key_serves_botan(self):
        log = self.serve(self.pki.rsa, "botan", "1.2", "RSA-PSS")
        self.assertNotIn("no public key", log)

    def test_p256_key_serves_openssl(self):
        log = self.serve(self.pki.p256, "openssl", "1.3", "ECDSA")
        self.assertIn("key 'p256' (EC P-256): the token contains no public key for it", log)
        self.assertIn("vhost 'www.example.test': key 'p256' has no public key in its token; "
                      f"certificate {self.pki.p256.chain} is checked with a test signature "
                      "only", log)

    def test_p256_key_serves_botan(self):
        log = self.serve(self.pki.p256, "botan", "1.2", "ECDSA")
        self.assertIn("key 'p256' has no public key in its token", log)

    def test_foreign_certificate_stops_start(self):
        for tls_backend in ("openssl", "botan"):
            with self.subTest(tls_backend=tls_backend):
                vhosts = [harness.vhost(["www.example.test"], "127.0.0.1:9", self.pki.p256,
                                        default=True)]
                document = token_config(vhosts, [{**self.token.key_entry("stranger"),
                                                  "name": "p256"}], tls_backend=tls_backend)
                folder = Path(tempfile.mkdtemp(prefix="privonly-", dir=harness.run_dir()))
                listener = {"address": harness.format_address("127.0.0.1",
                                                              harness.free_port())}
                path = harness.write_config(folder, {"listener": [listener], **document})
                result = harness.run_cloister("--config", path, timeout=30)
                output = result.stdout + result.stderr
                self.assertEqual(result.returncode, 2, output)
                self.assertNotRegex(output, harness.STARTED_PATTERN)
                self.assertIn("key 'p256' (pkcs11:token=privonly;object=stranger;type=private) "
                              f"and certificate {self.pki.p256.chain}: a test signature by the "
                              "key process does not verify with the certificate's public key",
                              output)


# ------------------------------------------------------------------------------------------
# PINs and URIs


class PinAndUriTest(unittest.TestCase):
    """The PIN "pa;ss%2F?&é1" and the key label "web key/1" in every accepted form.

    C_Login must receive the exact PIN bytes whether the PIN comes from a file (with or
    without a trailing newline) or from a percent-encoded pin-value in the URI query.
    """

    URI = "pkcs11:token=pintest;object=web%20key%2F1;type=private"

    @classmethod
    def setUpClass(cls):
        reason = missing_tools()
        if reason:
            raise unittest.SkipTest(reason)
        cls.pki = harness.pki()
        cls.token = Token("pintest", AWKWARD_PIN)
        cls.token.import_key(cls.pki.p256.key, "web key/1")
        cls.backend = harness.HttpBackend(HTTP_BODY).start()
        cls.addClassCleanup(cls.backend.stop)
        scope = environment(cls.token.environment)
        scope.__enter__()
        cls.addClassCleanup(scope.__exit__, None, None, None)

    def document(self, key: Mapping[str, Any]) -> dict[str, Any]:
        vhosts = [harness.vhost(["pin.example.test"], self.backend, self.pki.p256, default=True)]
        return token_config(vhosts, [{**key, "name": "p256"}])

    def entry(self, uri: str = URI, **fields: Any) -> dict[str, Any]:
        entry = {"name": "p256", "uri": uri, "module": str(SOFTHSM_MODULE)}
        entry.update({name.replace("_", "-"): value for name, value in fields.items()})
        return entry

    def expect_serves(self, key: Mapping[str, Any]) -> None:
        with harness.Daemon(self.document(key)) as daemon:
            result = handshake(daemon, "pin.example.test")
            details = result.describe() + daemon.log
            self.assertEqual(result.returncode, 0, details)
            self.assertEqual(result.verify_line, "Verify return code: 0 (ok)", details)
            self.assert_pin_hidden(daemon)

    def assert_pin_hidden(self, daemon: harness.Daemon) -> None:
        self.assertNotIn("pa;ss", daemon.log)
        self.assertNotIn(AWKWARD_PIN_IN_URI, daemon.log)
        for process in [*daemon.processes(), harness.Process(daemon.pid, 0, "", "")]:
            try:
                cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
            except OSError:
                continue
            self.assertNotIn(b"pa;ss", cmdline, process)

    def expect_rejected(self, key: Mapping[str, Any], message: str) -> str:
        result = check_config(self.document(key))
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 2, output)
        self.assertIn(message, output)
        self.assertNotIn("pa;ss", output)
        self.assertNotIn("pa%3Bss", output)
        return output

    def test_pin_file_with_newline(self):
        self.expect_serves(self.entry(pin_file=str(self.token.pin_file(AWKWARD_PIN + "\n"))))

    def test_pin_file_without_newline(self):
        self.expect_serves(self.entry(pin_file=str(self.token.pin_file(AWKWARD_PIN,
                                                                       name="bare"))))

    def test_pin_value_in_query(self):
        self.expect_serves(self.entry(uri=f"{self.URI}?pin-value={AWKWARD_PIN_IN_URI}"))

    def test_pin_source_in_query(self):
        pin = self.token.pin_file(AWKWARD_PIN, name="source")
        self.expect_serves(self.entry(uri=f"{self.URI}?pin-source=file:{pin}"))

    def test_pin_value_in_path_rejected(self):
        self.expect_rejected(self.entry(uri=f"{self.URI};pin-value={AWKWARD_PIN_IN_URI}"),
                            "pin-value is in the path part (after ';'), where parsers disagree")

    def test_command_pin_source_rejected(self):
        self.expect_rejected(self.entry(uri=f"{self.URI}?pin-source=%7C/bin/cat%20/etc/pin"),
                            "pin-source starts with '|'")

    def test_readable_pin_file_rejected(self):
        pin = self.token.pin_file(AWKWARD_PIN, mode=0o644, name="readable")
        self.expect_rejected(self.entry(pin_file=str(pin)),
                            f"PIN file {pin}: group or others have access (mode 0644); run "
                            f"chmod 600 {pin}")

    def test_newline_is_stripped_only_once(self):
        pin = self.token.pin_file(AWKWARD_PIN + "\n\n", name="two-newlines")
        self.expect_rejected(self.entry(pin_file=str(pin)), "CKR_PIN_INCORRECT")


# ------------------------------------------------------------------------------------------
# Errors


class TokenErrorTest(unittest.TestCase):
    """The start-up messages for references that do not work."""

    @classmethod
    def setUpClass(cls):
        reason = missing_tools()
        if reason:
            raise unittest.SkipTest(reason)
        cls.pki = harness.pki()
        cls.token = Token("errors")
        cls.token.import_key(cls.pki.p256.key, "www")
        cls.token.import_key(cls.pki.p384.key, "mail")
        cls.token.import_key(cls.pki.p256.key, "twin")
        cls.token.import_key(cls.pki.p256.key, "twin")
        scope = environment(cls.token.environment)
        scope.__enter__()
        cls.addClassCleanup(scope.__exit__, None, None, None)

    def check(self, key: Mapping[str, Any]) -> str:
        vhosts = [harness.vhost(["www.example.test"], "127.0.0.1:9", self.pki.p256,
                                default=True)]
        result = check_config(token_config(vhosts, [{**key, "name": "p256"}]))
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 2, output)
        return output

    def test_wrong_pin(self):
        spy_log = self.token.folder / "wrong-pin-spy.log"
        spy = {"PKCS11SPY": str(SOFTHSM_MODULE), "PKCS11SPY_OUTPUT": str(spy_log)}
        wrong = self.token.pin_file("4321", name="wrong")
        with environment(spy):
            output = self.check(self.token.key_entry("www", module=SPY_MODULE, pin_file=wrong))
        self.assertIn("key 'p256' (pkcs11:token=errors;object=www;type=private): login to "
                      "token 'errors' failed: CKR_PIN_INCORRECT: the token rejected the PIN. "
                      "cloister does not retry a rejected PIN", output)
        self.assertNotIn("4321", output)
        # One login attempt, no retry loop: the token's retry counter is used once.
        calls = SPY_CALL_RE.findall(spy_log.read_text(errors="replace"))
        self.assertEqual(calls.count("C_Login"), 1, calls)
        # The correct PIN still works afterwards.
        self.token.tool("--list-objects")

    def test_token_not_found(self):
        output = self.check(self.token.key_entry(
            "www", uri="pkcs11:token=missing;object=www;type=private"))
        self.assertIn("no tokens of module /usr/lib/softhsm/libsofthsm2.so match "
                      "pkcs11:token=missing;object=www;type=private; expected one. Tokens "
                      "present: 'errors' (serial ", output)

    def test_object_not_found_lists_objects(self):
        output = self.check(self.token.key_entry(
            "www", uri="pkcs11:token=errors;object=web;type=private"))
        self.assertIn("no private key on token 'errors' matches "
                      "pkcs11:token=errors;object=web;type=private; the private keys there: ",
                      output)
        self.assertIn("object=www (id=%01)", output)
        self.assertIn("object=mail (id=%02)", output)

    def test_two_matching_objects_rejected(self):
        output = self.check(self.token.key_entry("twin"))
        self.assertIn("2 private keys on token 'errors' match "
                      "pkcs11:token=errors;object=twin;type=private, so the reference is "
                      "ambiguous: object=twin (id=%03), object=twin (id=%04)", output)

    def test_key_file_and_uri_rejected(self):
        output = self.check({**self.token.key_entry("www"), "file": str(self.pki.p256.key)})
        self.assertIn("key[0].uri: file and uri are both set", output)


# ------------------------------------------------------------------------------------------
# Which process calls PKCS#11, and how often


def spy_calls(path: Path) -> list[str]:
    return SPY_CALL_RE.findall(path.read_text(errors="replace"))


def mapped_files(pid: int) -> set[str]:
    """Return the names (without folders) of the files that process pid maps."""
    names = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5].startswith("/"):
            names.add(Path(fields[5]).name)
    return names


class SpyTest(unittest.TestCase):
    """pkcs11-spy.so between the key process and SoftHSM records every PKCS#11 call."""

    CLIENTS = 8
    HANDSHAKES_PER_CLIENT = 13
    SESSION_CALLS = ("C_OpenSession", "C_Login", "C_FindObjectsInit", "C_FindObjects",
                     "C_GetSlotList", "C_CloseSession")

    @contextlib.contextmanager
    def spy_daemon(self, label: str, **sections: Mapping[str, Any]
                   ) -> Iterator[tuple[harness.Daemon, Path]]:
        """Start a daemon whose RSA key is in a new token behind pkcs11-spy.so; yield it and
        the spy's log."""
        reason = missing_tools()
        if reason:
            self.skipTest(reason)
        pki = harness.pki()
        token = Token(label)
        token.import_key(pki.rsa.key, "rsa")
        spy_log = token.folder / "spy.log"
        spy = {**token.environment, "PKCS11SPY": str(SOFTHSM_MODULE),
               "PKCS11SPY_OUTPUT": str(spy_log)}
        with harness.HttpBackend(HTTP_BODY) as backend, environment(spy):
            vhosts = [harness.vhost(["www.example.test"], backend, pki.rsa, default=True)]
            document = token_config(vhosts, [token.key_entry("rsa", module=SPY_MODULE)],
                                    **sections)
            with harness.Daemon(document) as daemon:
                yield daemon, spy_log

    def test_module_loading_and_call_counts(self):
        with self.spy_daemon("spy") as (daemon, spy_log):
            self.check_maps(daemon)
            self.check_calls(daemon, spy_log)

    def test_concurrent_handshakes_reuse_sessions(self):
        """8 clients at once: every signature reuses the sessions, login and key handle of
        the start, and the key operation stats count each one."""
        with self.spy_daemon("spy-busy", key_process={"workers": 4},
                             limits={"spare-children": 4}) as (daemon, spy_log):
            self.assertEqual(handshake(daemon).returncode, 0)  # warm-up
            daemon.key_operation_stats()  # starts a new period
            before = spy_calls(spy_log)
            failures = self.run_concurrent_handshakes(daemon)
            self.assertEqual(failures, [], daemon.log)
            after = spy_calls(spy_log)
            stats = daemon.key_operation_stats()

        handshakes = self.CLIENTS * self.HANDSHAKES_PER_CLIENT
        new = after[len(before):]
        self.assertEqual(new.count("C_SignInit"), handshakes)
        self.assertEqual(new.count("C_Sign"), handshakes)
        for call in self.SESSION_CALLS:
            self.assertEqual(after.count(call), before.count(call), f"{call} during the load")
        # One session per worker thread, opened at start.
        self.assertGreaterEqual(before.count("C_OpenSession"), 4)
        self.assertEqual(before.count("C_Login"), 1)

        line = stats[("rsa", "sign")]
        self.assertEqual(int(line["count"]), handshakes, line)
        self.assertEqual(int(line["failed"]), 0, line)
        self.assertEqual(int(line["refused"]), 0, line)
        request = harness.check_latency_quantiles(self, line)
        token = harness.check_latency_quantiles(self, line, "token_")
        # The token calls are part of each request, so no token quantile exceeds the request's.
        for token_value, request_value in zip(token, request):
            self.assertLessEqual(token_value, request_value, line)

    def run_concurrent_handshakes(self, daemon: harness.Daemon) -> list[str]:
        """Run HANDSHAKES_PER_CLIENT full handshakes in each of CLIENTS threads; return a
        description of each one that failed."""
        failures: list[str] = []

        def client() -> None:
            for _ in range(self.HANDSHAKES_PER_CLIENT):
                result = handshake(daemon)
                if result.returncode != 0 or result.peer_signature_type != "RSA-PSS":
                    failures.append(result.describe())

        threads = [threading.Thread(target=client) for _ in range(self.CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return failures

    def check_maps(self, daemon: harness.Daemon) -> None:
        modules = {SPY_MODULE.name, SOFTHSM_MODULE.name}
        key_pid = daemon.key_pid
        self.assertEqual(mapped_files(key_pid) & modules, modules)
        others = [daemon.pid] + [p.pid for p in daemon.processes() if p.pid != key_pid]
        self.assertGreaterEqual(len(others), 2, "expected the supervisor and spare children")
        for pid in others:
            self.assertEqual(mapped_files(pid) & modules, set(), f"process {pid}")

    def check_calls(self, daemon: harness.Daemon, spy_log: Path) -> None:
        self.assertEqual(handshake(daemon).returncode, 0)  # warm-up
        before = spy_calls(spy_log)
        for _ in range(20):
            result = handshake(daemon)
            self.assertEqual(result.returncode, 0, result.describe() + daemon.log)
            self.assertEqual(result.peer_signature_type, "RSA-PSS")
        after = spy_calls(spy_log)
        new = after[len(before):]
        self.assertEqual(after.count("C_Initialize"), 1, after)
        self.assertEqual(new.count("C_SignInit"), 20, new)
        self.assertEqual(new.count("C_Sign"), 20, new)
        for call in self.SESSION_CALLS:
            self.assertEqual(new.count(call), 0, f"{call} after warm-up: {new}")


# ------------------------------------------------------------------------------------------
# A remote token


class P11KitServer:
    """p11-kit server exporting a SoftHSM token on a Unix socket, in its own process group.

    The key process connects twice as different users: as root when it loads its keys, and
    as its sandbox user when it reconnects after an outage. So the server runs without
    --user (which would make it reject root) and the socket belongs to ``client_user``, whom
    the socket's mode lets connect. ``stop`` ends the server and the per-client processes it
    forked, as a restart of the token's host would.
    """

    def __init__(self, token: Token, client_user: str | None):
        self.token = token
        self.client_user = client_user
        folder = Path(tempfile.mkdtemp(prefix="p11kit-", dir=harness.run_dir()))
        folder.chmod(0o711)
        self.socket = folder / "p11.sock"
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"unix:path={self.socket}"

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        argv = ["p11-kit", "server", "--foreground", "--provider", str(SOFTHSM_MODULE),
                "--name", str(self.socket), f"pkcs11:token={self.token.label}"]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        env={**os.environ, **self.token.environment},
                                        start_new_session=True)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("p11-kit server did not create its socket: "
                                   + self.process.stderr.read().decode(errors="replace"))
            time.sleep(0.05)
        if self.client_user:
            shutil.chown(self.socket, user=self.client_user)

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process.stderr.close()
        self.process = None
        self.socket.unlink(missing_ok=True)


class RemoteTokenTest(unittest.TestCase):
    """The key process reaches SoftHSM through p11-kit-client.so and p11-kit server."""

    def test_server_outage_and_return(self):
        reason = missing_tools()
        if reason:
            self.skipTest(reason)
        pki = harness.pki()
        token = Token("remote")
        token.import_key(pki.rsa.key, "rsa")
        with harness.HttpBackend(HTTP_BODY) as backend:
            vhosts = [harness.vhost(["www.example.test"], backend, pki.rsa, default=True)]
            document = token_config(vhosts, [token.key_entry("rsa", module=P11KIT_CLIENT)])
            daemon = harness.Daemon(document)
            users = daemon.sandbox_users
            server = P11KitServer(token, users.key if users else None)
            self.addCleanup(server.stop)
            self.addCleanup(daemon.close)
            server.start()
            with environment({**token.environment, "P11_KIT_SERVER_ADDRESS": server.address}):
                daemon.start()
            self.check_outage(daemon, server)
            daemon.stop()

    def check_outage(self, daemon: harness.Daemon, server: P11KitServer) -> None:
        self.assertEqual(handshake(daemon).returncode, 0, daemon.log)
        key_pid = daemon.key_pid

        server.stop()
        mark = daemon.log_mark()
        for _ in range(3):
            started = time.monotonic()
            result = handshake(daemon, timeout=10)
            elapsed = time.monotonic() - started
            self.assertNotEqual(result.returncode, 0, result.describe())
            self.assertLess(elapsed, 2.0, result.describe() + daemon.log_since(mark))
        outage_log = daemon.log[mark:]
        self.assertRegex(outage_log, r"C_SignInit with key 'rsa' on PKCS#11 token 'remote' "
                                     r"failed: CKR_\w+; the token's sessions are reopened")
        self.assertIn("the PKCS#11 token of module " + str(P11KIT_CLIENT) + " is unavailable",
                      outage_log)

        server.start()
        deadline = time.monotonic() + 15
        while True:
            result = handshake(daemon, timeout=10)
            if result.returncode == 0:
                break
            self.assertLess(time.monotonic(), deadline, result.describe() + daemon.log)
            time.sleep(0.3)
        self.assertEqual(result.peer_signature_type, "RSA-PSS")
        self.assertEqual(daemon.key_pid, key_pid, "the key process was restarted")
        self.assertIn(f"PKCS#11 module {P11KIT_CLIENT} reopened after", daemon.log)
        self.assertTrue(daemon.running)


if __name__ == "__main__":
    unittest.main()
