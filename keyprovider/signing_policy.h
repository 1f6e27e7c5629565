// The TLS-only signing policy: the key process signs a message only when it has the exact
// structure of a server's TLS handshake signature input, so that a hijacked connection process
// cannot use the key channel as a general signing oracle.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

namespace cloister {

enum class PolicyVerdict { accepted, rejected };

// The kind of handshake message whose signature input was recognised.
enum class SigningInput {
    none,                          // rejected: no form matched
    tls13_certificate_verify,      // RFC 8446 section 4.4.3, server side
    tls12_server_key_exchange_ec,  // RFC 8422 section 5.4: ServerECDHParams
    tls12_server_key_exchange_dh,  // RFC 5246 section 7.4.3: ServerDHParams
};

struct PolicyResult {
    PolicyVerdict verdict = PolicyVerdict::rejected;
    SigningInput input = SigningInput::none;
    // The rejection reason for the log line, empty when accepted. It points to a string
    // literal, so it stays valid for the life of the program.
    std::string_view reason;

    [[nodiscard]] bool accepted() const { return verdict == PolicyVerdict::accepted; }
};

// Checks that message is the whole to-be-signed content of one server handshake signature and
// that scheme (a TLS SignatureScheme code point) fits it. Accepted forms:
//  - TLS 1.3 server CertificateVerify content: 64 bytes 0x20, "TLS 1.3, server
//    CertificateVerify", one 0x00 byte, then a 32- or 48-byte transcript hash (SHA-256 or
//    SHA-384, chosen by the cipher suite, not by the scheme). The scheme must be one that TLS
//    1.3 allows: RSA-PSS, ECDSA with a named curve, Ed25519 or Ed448, never rsa_pkcs1_*.
//  - TLS 1.2 ServerKeyExchange parameters: client_random (32) || server_random (32) || either
//    named-curve ServerECDHParams (x25519, x448, secp256r1, secp384r1, secp521r1, with the
//    point length of the group and an uncompressed NIST point) or ServerDHParams (p, g, Ys,
//    each non-empty and u16-length-prefixed, p at most 1024 bytes, g and Ys no longer than p),
//    with no trailing byte. The scheme must be a known scheme without SHA-1.
// A message that starts with 64 bytes 0x20 is judged as TLS 1.3 content only. A pure function
// that keeps no state.
[[nodiscard]] PolicyResult check_tls_signing_input(std::span<const std::uint8_t> message,
                                                   std::uint16_t scheme) noexcept;

const char* to_string(SigningInput input) noexcept;

}  // namespace cloister
