#include "backends/botan/key_check.h"

#include <botan/hash.h>
#include <botan/hex.h>
#include <botan/pubkey.h>
#include <botan/tls_algos.h>
#include <botan/x509_key.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <string_view>
#include <vector>

#include "backends/botan/signing.h"
#include "core/error.h"

namespace cloister::botan {
namespace {

using Bytes = std::vector<std::uint8_t>;

[[noreturn]] void throw_check_error(const ServedCertificate& certificate,
                                    std::string_view problem) {
    throw Error(ErrorKind::config, fmt::format("vhost '{}': key '{}' ({}) and certificate {}: {}",
                                               certificate.vhost_name, certificate.key_name,
                                               certificate.key_file.string(),
                                               certificate.chain_file.string(), problem));
}

std::string sha256_fingerprint(const Bytes& data) {
    const auto hash = Botan::HashFunction::create_or_throw("SHA-256");
    return Botan::hex_encode(hash->process(data));
}

void compare_public_keys(const ServedCertificate& certificate, KeyClient& client) {
    Bytes remote;
    std::unique_ptr<Botan::Public_Key> remote_key;
    try {
        remote = client.public_key(certificate.key->key_index());
        if (remote.empty()) {
            spdlog::info(
                "vhost '{}': key '{}' has no public key in its token; certificate {} is "
                "checked with a test signature only",
                certificate.vhost_name, certificate.key_name, certificate.chain_file.string());
            return;
        }
        remote_key.reset(Botan::X509::load_key(remote));
    } catch (const std::exception& error) {
        throw_check_error(certificate, fmt::format("the key process did not return a public key "
                                                   "Botan can read: {}",
                                                   error.what()));
    }
    // Both sides re-encoded by Botan, so that equal keys compare equal byte for byte.
    const Bytes local = Botan::X509::BER_encode(certificate.key->public_key());
    if (Botan::X509::BER_encode(*remote_key) == local) {
        return;
    }
    throw Error(ErrorKind::config,
                fmt::format("vhost '{}': key '{}' ({}, SHA-256 of public key {}) does not match "
                            "certificate {} (public key SHA-256 {})",
                            certificate.vhost_name, certificate.key_name,
                            certificate.key_file.string(), sha256_fingerprint(remote),
                            certificate.chain_file.string(), sha256_fingerprint(local)));
}

// Returns the two 32-byte hello randoms followed by ServerECDHParams for x25519 (RFC 8422
// section 5.4), all random, so that the key process's TLS-only signing policy accepts it.
Bytes test_message(Botan::RandomNumberGenerator& random) {
    constexpr std::uint8_t named_curve = 3;
    constexpr std::uint8_t x25519_high = 0x00;
    constexpr std::uint8_t x25519_low = 0x1d;
    constexpr std::uint8_t x25519_point_size = 32;
    Bytes message(64);
    random.randomize(message.data(), message.size());
    message.insert(message.end(), {named_curve, x25519_high, x25519_low, x25519_point_size});
    Bytes point(x25519_point_size);
    random.randomize(point.data(), point.size());
    message.insert(message.end(), point.begin(), point.end());
    return message;
}

bool has_scheme(std::span<const std::uint16_t> schemes, Botan::TLS::Signature_Scheme scheme) {
    return std::find(schemes.begin(), schemes.end(), static_cast<std::uint16_t>(scheme)) !=
           schemes.end();
}

// The scheme of the test signature: the one a handshake with a current client would use.
Botan::TLS::Signature_Scheme test_scheme(const ServedCertificate& certificate, bool ecdsa,
                                         std::span<const std::uint16_t> key_schemes) {
    using Botan::TLS::Signature_Scheme;
    const std::vector<Signature_Scheme> candidates =
        ecdsa ? std::vector{Signature_Scheme::ECDSA_SHA256}
              : std::vector{Signature_Scheme::RSA_PSS_SHA256, Signature_Scheme::RSA_PKCS1_SHA256};
    for (const Signature_Scheme scheme : candidates) {
        if (has_scheme(key_schemes, scheme)) {
            return scheme;
        }
    }
    throw_check_error(certificate, ecdsa ? "the key process cannot sign ecdsa_secp256r1_sha256 "
                                           "with it"
                                         : "the key process can sign neither rsa_pss_rsae_sha256 "
                                           "nor rsa_pkcs1_sha256 with it");
}

}  // namespace

void verify_certificate_key(const ServedCertificate& certificate, KeyClient& client,
                            Botan::RandomNumberGenerator& random,
                            std::span<const std::uint16_t> key_schemes) {
    compare_public_keys(certificate, client);
    const bool ecdsa = certificate.key->algo_name() == "ECDSA";
    const Botan::TLS::Signature_Scheme scheme = test_scheme(certificate, ecdsa, key_schemes);
    const std::string padding = Botan::TLS::padding_string_for_scheme(scheme);
    const Botan::Signature_Format format = ecdsa ? Botan::DER_SEQUENCE : Botan::IEEE_1363;
    const Bytes message = test_message(random);
    Bytes signature;
    try {
        signature = sign_remotely(client, *certificate.key, padding, format, message).signature;
    } catch (const Error& error) {
        throw_check_error(
            certificate,
            fmt::format("the key process did not sign a test message: {}", error.what()));
    }
    bool valid = false;
    try {
        Botan::PK_Verifier verifier(certificate.key->public_key(), padding, format);
        valid = verifier.verify_message(message, signature);
    } catch (const std::exception& error) {
        throw_check_error(certificate,
                          fmt::format("cannot verify a test signature: {}", error.what()));
    }
    if (!valid) {
        throw_check_error(certificate,
                          "a test signature by the key process does not verify with "
                          "the certificate's public key");
    }
}

}  // namespace cloister::botan
