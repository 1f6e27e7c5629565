// Building the EVP_PKEY whose private half lives in the key process.
#pragma once

#include <openssl/types.h>
#include <openssl/x509.h>

#include <cstdint>

#include "backends/openssl/provider_key.h"

namespace cloister::ossl {

// Returns the provider's key type for the certificate's public key: RSA, EC on P-256 or P-384,
// or Ed25519. Throws Error(config) naming the type otherwise.
KeyType certificate_key_type(X509* certificate);

// Builds a key in the "cloister" provider from the certificate's public key and key_index.
// libssl then signs with it like with a local key, and each signature goes to the key
// process. Throws Error(crypto) with the OpenSSL errors when the provider rejects the key.
EvpPkeyPtr make_remote_key(X509* certificate, std::uint32_t key_index, OSSL_LIB_CTX* libctx);

}  // namespace cloister::ossl
