// The start-up check that a certificate's key in the key process matches the certificate.
#pragma once

#include <openssl/types.h>

#include "backends/openssl/vhost_context.h"
#include "core/key_client.h"

namespace cloister::ossl {

// Compares the key process's public key for certificate.key_index with the certificate's, then
// signs a TLS 1.3 CertificateVerify-shaped message through certificate.key (so through the
// provider, the key channel and the key process) and verifies the signature with the
// certificate's public key in the default provider. An RSA key that the key process cannot
// sign RSA-PSS with (key_info) signs TLS 1.2 ServerKeyExchange parameters with PKCS#1 v1.5
// instead. Throws Error(config) naming the vhost, the
// key and its file, and the certificate file.
void verify_certificate_key(const ServedCertificate& certificate, KeyClient& client,
                            OSSL_LIB_CTX* libctx);

}  // namespace cloister::ossl
