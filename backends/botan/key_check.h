// The start-up check that a certificate's key in the key process matches the certificate.
#pragma once

#include <botan/rng.h>

#include <cstdint>
#include <span>

#include "backends/botan/credentials.h"
#include "core/key_client.h"

namespace cloister::botan {

// Compares the key process's public key for the certificate's key index with the
// certificate's. Then signs a TLS 1.2 ServerKeyExchange-shaped message through sign_remotely,
// the signing path of a handshake, and verifies the signature with the certificate's public
// key. The scheme is ecdsa_secp256r1_sha256 for ECDSA; for RSA it is rsa_pss_rsae_sha256, or
// rsa_pkcs1_sha256 when key_schemes (the key's schemes from KeyClient::key_schemes) lacks
// RSA-PSS, as for a token key without CKM_RSA_PKCS_PSS. Throws Error(config) naming the
// vhost, the key and its file, and the certificate file.
void verify_certificate_key(const ServedCertificate& certificate, KeyClient& client,
                            Botan::RandomNumberGenerator& random,
                            std::span<const std::uint16_t> key_schemes);

}  // namespace cloister::botan
