#!/usr/bin/env python3
"""Write the seed corpora of the fuzz targets into corpus/TARGET/ next to this script.

Run it again after a change to the key channel protocol or the config format, and commit
the result. Files that it does not write (such as inputs that once crashed a target, named
crash-*) are left alone. The key channel seeds follow docs/key-protocol.md: little-endian
integers, a 16-byte request header, a 12-byte response header and a 16-byte attach message.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

SIGN, PUBLIC_KEY, DECRYPT, KEY_INFO, ATTACH = 1, 2, 3, 4, 16
RSA, EC, ED25519, MISSING = 0, 1, 2, 3  # key indexes in key_channel_fuzz's store

RSA_PKCS1_SHA256, RSA_PKCS1_SHA1, ECDSA_SHA1 = 0x0401, 0x0201, 0x0203
RSA_PSS_SHA256, ECDSA_P256_SHA256, ED25519_SCHEME = 0x0804, 0x0403, 0x0807


def request(kind: int, scheme: int, key: int, payload: bytes, request_id: int = 1,
            version: int = 1, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return struct.pack("<BBHIII", version, kind, scheme, request_id, key, size) + payload


def response(kind: int, status: int, payload: bytes, request_id: int = 1) -> bytes:
    return struct.pack("<BBHII", 1, kind, status, request_id, len(payload)) + payload


def attach(flags: int, connection_id: int, kind: int = ATTACH, reserved: int = 0) -> bytes:
    return struct.pack("<BBHIQ", 1, kind, reserved, flags, connection_id)


def decrypt_payload(client_version: int, ciphertext: bytes) -> bytes:
    return struct.pack("<H", client_version) + ciphertext


def tls13_content(hash_size: int, context: bytes = b"TLS 1.3, server CertificateVerify") -> bytes:
    """RFC 8446 section 4.4.3: 64 spaces, the context string, a zero byte, the hash."""
    return b" " * 64 + context + b"\x00" + bytes(range(hash_size))


RANDOMS = bytes(range(32)) + bytes(range(100, 124)) + b"DOWNGRD\x01"


def ecdhe_params(group: int, point: bytes) -> bytes:
    """RFC 8422 section 5.4: randoms, curve_type named_curve, group, point."""
    return RANDOMS + struct.pack("!BHB", 3, group, len(point)) + point


def dhe_params(prime_size: int) -> bytes:
    """RFC 5246 section 7.4.3: randoms, then p, g and Ys with 16-bit lengths."""
    prime = b"\xff" * prime_size
    return (RANDOMS + struct.pack("!H", prime_size) + prime + b"\x00\x01\x02"
            + struct.pack("!H", prime_size) + b"\x5a" * prime_size)


def key_channel_seeds() -> dict[str, bytes]:
    x25519 = ecdhe_params(0x001D, bytes(range(32)))
    p256 = ecdhe_params(0x0017, b"\x04" + bytes(64))
    ciphertext = bytes((i * 7 + 1) % 256 for i in range(256))
    return {
        # Requests the handler serves or rejects.
        "public-key-rsa": request(PUBLIC_KEY, 0, RSA, b""),
        "public-key-ed25519": request(PUBLIC_KEY, 0, ED25519, b""),
        "public-key-missing-key": request(PUBLIC_KEY, 0, MISSING, b""),
        "key-info-rsa": request(KEY_INFO, 0, RSA, b""),
        "key-info-missing-key": request(KEY_INFO, 0, MISSING, b""),
        "sign-tls13-rsa-pss-sha256": request(SIGN, RSA_PSS_SHA256, RSA, tls13_content(32)),
        "sign-tls13-ecdsa-sha384-hash": request(SIGN, ECDSA_P256_SHA256, EC, tls13_content(48)),
        "sign-tls13-ed25519": request(SIGN, ED25519_SCHEME, ED25519, tls13_content(32)),
        "sign-tls13-rsa-pkcs1": request(SIGN, RSA_PKCS1_SHA256, RSA, tls13_content(32)),
        "sign-tls13-client-context": request(SIGN, RSA_PSS_SHA256, RSA, tls13_content(
            32, b"TLS 1.3, client CertificateVerify")),
        "sign-tls13-hash-31": request(SIGN, RSA_PSS_SHA256, RSA, tls13_content(31)),
        "sign-tls12-x25519-rsa-pkcs1": request(SIGN, RSA_PKCS1_SHA256, RSA, x25519),
        "sign-tls12-p256-ecdsa": request(SIGN, ECDSA_P256_SHA256, EC, p256),
        "sign-tls12-dhe-2048-rsa-pss": request(SIGN, RSA_PSS_SHA256, RSA, dhe_params(256)),
        "sign-tls12-dhe-768-prefix-3": request(SIGN, RSA_PSS_SHA256, RSA, dhe_params(768)),
        "sign-tls12-trailing-byte": request(SIGN, RSA_PKCS1_SHA256, RSA, x25519 + b"\x00"),
        "sign-tls12-compressed-point": request(SIGN, ECDSA_P256_SHA256, EC, ecdhe_params(
            0x0017, b"\x02" + bytes(64))),
        "sign-tls12-sha1": request(SIGN, RSA_PKCS1_SHA1, RSA, x25519),
        "sign-ecdsa-sha1": request(SIGN, ECDSA_SHA1, EC, p256),
        "sign-scheme-for-other-key": request(SIGN, ED25519_SCHEME, RSA, tls13_content(32)),
        "sign-not-tls": request(SIGN, RSA_PKCS1_SHA256, RSA, b"please sign this"),
        "sign-missing-key": request(SIGN, RSA_PSS_SHA256, MISSING, tls13_content(32)),
        "decrypt-rsa-2048": request(DECRYPT, 0, RSA, decrypt_payload(0x0303, ciphertext)),
        "decrypt-rsa-4096-size": request(DECRYPT, 0, RSA, decrypt_payload(
            0x0303, b"\x01" * 512)),
        "decrypt-one-byte": request(DECRYPT, 0, RSA, decrypt_payload(0x0301, b"\x01")),
        "decrypt-above-modulus": request(DECRYPT, 0, RSA, decrypt_payload(
            0x0303, b"\xff" * 256)),
        "decrypt-ec-key": request(DECRYPT, 0, EC, decrypt_payload(0x0303, ciphertext)),
        # Requests that fail to decode.
        "malformed-empty": b"",
        "malformed-seven-bytes": request(SIGN, RSA_PSS_SHA256, RSA, b"")[:7],
        "malformed-header-only": request(SIGN, RSA_PSS_SHA256, RSA, b"")[:15],
        "malformed-version-2": request(PUBLIC_KEY, 0, RSA, b"", version=2),
        "malformed-attach-on-key-channel": request(ATTACH, 0, RSA, b""),
        "malformed-unknown-type": request(9, 0, RSA, b""),
        "malformed-length-mismatch": request(SIGN, RSA_PSS_SHA256, RSA, b"abc", length=4),
        "malformed-length-over-cap": request(SIGN, RSA_PSS_SHA256, RSA, b"", length=8193),
        "malformed-unknown-scheme": request(SIGN, 0x1234, RSA, x25519),
        "malformed-public-key-scheme": request(PUBLIC_KEY, RSA_PSS_SHA256, RSA, b""),
        "malformed-public-key-payload": request(PUBLIC_KEY, 0, RSA, b"x"),
        "malformed-decrypt-scheme": request(DECRYPT, RSA_PSS_SHA256, RSA, decrypt_payload(
            0x0303, ciphertext)),
        "malformed-decrypt-version-0403": request(DECRYPT, 0, RSA, decrypt_payload(
            0x0403, ciphertext)),
        "malformed-decrypt-no-ciphertext": request(DECRYPT, 0, RSA, b"\x03\x03"),
        "malformed-decrypt-oversized": request(DECRYPT, 0, RSA, decrypt_payload(
            0x0303, b"\x01" * 513)),
        # Responses, for decode_response.
        "response-sign-ok": response(SIGN, 0, bytes(256)),
        "response-decrypt-ok": response(DECRYPT, 0, bytes(48)),
        "response-key-info-ok": response(KEY_INFO, 0, struct.pack("<HHH", 2, 0x0804, 0x0401)),
        # key_info payloads alone, for decode_key_info.
        "key-info-payload-two": struct.pack("<HHH", 2, 0x0804, 0x0401),
        "key-info-payload-unknown-scheme": struct.pack("<HH", 1, 0x1234),
        "key-info-payload-count-mismatch": struct.pack("<HH", 3, 0x0804),
        "response-malformed": response(SIGN, 1, b""),
        "response-unknown-status": response(SIGN, 7, b""),
        "response-over-cap": response(PUBLIC_KEY, 0, bytes(2049)),
        # Attach messages, for decode_attach.
        "attach-unlimited": attach(1, 0),
        "attach-connection": attach(0, 0x0102030405060708),
        "attach-reserved-flag": attach(2, 9),
        "attach-reserved-field": attach(0, 9, reserved=1),
        "attach-wrong-type": attach(0, 9, kind=SIGN),
        # Inputs for the signing policy alone: a big-endian scheme, then the message.
        "policy-tls13-pss": struct.pack("!H", RSA_PSS_SHA256) + tls13_content(32),
        "policy-tls12-x25519": struct.pack("!H", RSA_PKCS1_SHA256) + x25519,
        "policy-tls12-dhe": struct.pack("!H", RSA_PSS_SHA256) + dhe_params(128),
    }


MINIMAL_CONFIG = """\
[[listener]]
address = "127.0.0.1:8443"

[[key]]
name = "rsa"
file = "keys/rsa.key"

[[vhost]]
server-names = ["www.example.test"]
backend = "127.0.0.1:8080"

[[vhost.certificate]]
chain = "certs/rsa.pem"
key = "rsa"
"""


def with_minimal(extra: str) -> str:
    return MINIMAL_CONFIG + "\n" + extra


FULL_SECTIONS = """\
[server]
tls-backend = "openssl"
log-level = "debug"

[tls]
min-version = "1.3"
max-version = "1.3"
ciphers = "ECDHE+AESGCM:AES128-GCM-SHA256"
rsa-key-exchange = true
prefer-server-ciphers = false
unknown-sni = "reject"
missing-sni = "reject"

[limits]
spare-children = 0
max-connections = 1000000
handshake-timeout = "100ms"
idle-timeout = 86400
drain-timeout = "0s"
backend-connect-timeout = "5m"
key-operation-timeout = "1m"
buffer-size = 1024

[key-process]
workers = 256
max-operations-per-channel = 64
"""

TWO_VHOSTS = """\
[[listener]]
address = "[::1]:443"

[[listener]]
address = "unix:/run/cloister.sock"

[[key]]
name = "rsa"
file = "/etc/cloister/rsa.key"
passphrase-file = "rsa.pass"

[[key]]
name = "ec"
file = "ec.key"

[[vhost]]
server-names = ["*.example.test", "Example.TEST"]
backend = "unix:/run/app.sock"

[[vhost.certificate]]
chain = "rsa.pem"
key = "rsa"

[[vhost.certificate]]
chain = "ec.pem"
key = "ec"

[[vhost]]
server-names = ["api.example.test"]
default = true
backend = "backend.internal:8080"

[[vhost.certificate]]
chain = "ec.pem"
key = "ec"
"""


def config_seeds() -> dict[str, str]:
    return {
        "minimal": MINIMAL_CONFIG,
        "all-sections": with_minimal(FULL_SECTIONS),
        "two-vhosts-two-keys": TWO_VHOSTS,
        "inline-tables": 'listener = [{address = "127.0.0.1:1"}]\n'
                         'key = [{name = "k", file = "k.pem"}]\n'
                         'vhost = [{server-names = ["a.test"], backend = "127.0.0.1:2", '
                         'certificate = [{chain = "c.pem", key = "k"}]}]\n',
        "durations": with_minimal('[limits]\nhandshake-timeout = "1h"\nidle-timeout = "59m"\n'
                                  'drain-timeout = "1500ms"\n'),
        "duration-negative": with_minimal('[limits]\nidle-timeout = "-1s"\n'),
        "duration-fraction": with_minimal('[limits]\nidle-timeout = "1.5s"\n'),
        "integer-out-of-range": with_minimal("[limits]\nspare-children = 99999999999999999\n"),
        "unknown-key": with_minimal("[tls]\nzeta = 1\n"),
        "wrong-type": with_minimal('[tls]\nprefer-server-ciphers = "yes"\n'),
        "min-above-max": with_minimal('[tls]\nmin-version = "1.3"\nmax-version = "1.2"\n'),
        "invalid-toml": "[[listener]\naddress = \n",
        "control-character": with_minimal('[tls]\nciphers = "ECDHE\\u0001"\n'),
        "duplicate-key-names": MINIMAL_CONFIG.replace(
            '[[vhost]]', '[[key]]\nname = "rsa"\nfile = "other.key"\n\n[[vhost]]'),
        "unknown-key-reference": MINIMAL_CONFIG.replace('key = "rsa"', 'key = "nope"'),
        "addresses": MINIMAL_CONFIG.replace('"127.0.0.1:8443"', '"[fe80::1%eth0]:0"'),
        "unix-path-too-long": MINIMAL_CONFIG.replace('"127.0.0.1:8080"',
                                                     '"unix:/' + "a" * 120 + '"'),
        "server-names": MINIMAL_CONFIG.replace(
            '["www.example.test"]', '["*.", "a..b", "xn--bcher-kva.test", "127.0.0.1", '
            '"trailing.dot.", "' + "l" * 64 + '.test"]'),
        "two-defaults": TWO_VHOSTS.replace('server-names = ["*.example.test", "Example.TEST"]',
                                           'server-names = ["x.test"]\ndefault = true'),
        "empty": "",
    }


def write_corpus(target: str, seeds: dict[str, bytes]) -> None:
    folder = HERE / "corpus" / target
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (folder / name).write_bytes(data)


def main() -> None:
    write_corpus("key_channel_fuzz", key_channel_seeds())
    configs = {name: text.encode() for name, text in config_seeds().items()}
    write_corpus("config_fuzz", configs)
    shutil.copyfile(REPO / "cloister.example.toml",
                    HERE / "corpus" / "config_fuzz" / "example-config")


if __name__ == "__main__":
    main()
