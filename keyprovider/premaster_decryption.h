// Decrypting the premaster secret of a TLS 1.2 RSA key exchange with implicit rejection.
#pragma once

#include <openssl/evp.h>

#include <cstdint>
#include <span>
#include <vector>

namespace cloister {

// Decrypts ciphertext, the EncryptedPreMasterSecret of a TLS 1.2 ClientKeyExchange (RFC 5246
// section 7.4.7.1), with the RSA key and returns 48 bytes. An invalid ciphertext gives 48
// random bytes and no error. It may have bad PKCS#1 padding, a premaster secret of another
// length, a version other than client_version, a length other than the modulus's, or a value
// not below the modulus. Neither the caller nor a client watching the handshake can then tell
// an invalid ciphertext from a valid one, and the handshake fails later at Finished: the
// countermeasure against Bleichenbacher's attack that RFC 5246 prescribes.
// Safe to call from several threads with the same key. Throws Error(crypto) only when OpenSSL
// cannot set up the operation or draw random bytes, neither of which depends on the ciphertext.
std::vector<std::uint8_t> decrypt_premaster_secret(EVP_PKEY* key, std::uint16_t client_version,
                                                   std::span<const std::uint8_t> ciphertext);

}  // namespace cloister
