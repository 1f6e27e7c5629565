// Signing and verifying with an OpenSSL EVP_PKEY as a TLS SignatureScheme prescribes.
#pragma once

#include <openssl/evp.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "keyprovider/signature_schemes.h"

namespace cloister {

// Hashes and signs the whole message with EVP_DigestSign: PKCS#1 v1.5, PSS (MGF1 on the same
// digest, salt length = digest length), ECDSA (DER output) or Ed25519. Safe to call from
// several threads with the same key. Throws Error(crypto) with OpenSSL's reason on failure.
std::vector<std::uint8_t> sign_message(EVP_PKEY* key, const SchemeParams& params,
                                       std::span<const std::uint8_t> message);

// Returns true when signature is valid for message under the same parameters.
bool verify_message(EVP_PKEY* key, const SchemeParams& params,
                    std::span<const std::uint8_t> message, std::span<const std::uint8_t> signature);

// Returns the reasons in this thread's OpenSSL error queue, joined with ": ", and empties
// the queue. Returns "no OpenSSL error recorded" when the queue is empty.
std::string take_openssl_errors();

}  // namespace cloister
