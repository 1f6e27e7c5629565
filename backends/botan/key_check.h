// The start-up check that a certificate's key in the key process matches the certificate.
#pragma once

#include <botan/rng.h>

#include "backends/botan/credentials.h"
#include "core/key_client.h"

namespace cloister::botan {

// Compares the key process's public key for the certificate's key index with the
// certificate's. Then signs a TLS 1.2 ServerKeyExchange-shaped message with
// rsa_pss_rsae_sha256 or ecdsa_secp256r1_sha256 through sign_remotely, the signing path of a
// handshake, and verifies the signature with the certificate's public key. Throws
// Error(config) naming the vhost, the key and its file, and the certificate file.
void verify_certificate_key(const ServedCertificate& certificate, KeyClient& client,
                            Botan::RandomNumberGenerator& random);

}  // namespace cloister::botan
