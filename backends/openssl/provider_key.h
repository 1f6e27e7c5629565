// The key object of the provider's key management: a public key plus a key index.
#pragma once

#include <openssl/evp.h>

#include <cstdint>
#include <optional>

#include "backends/openssl/ossl_ptr.h"
#include "backends/openssl/provider.h"

namespace cloister::ossl {

using EvpPkeyPtr = Ptr<EVP_PKEY, EVP_PKEY_free>;

enum class KeyType { rsa, ec, ed25519 };

// The keydata of the provider's key management. It never contains private key material, because
// the key process signs with the key that key_index names.
struct RemoteKey {
    ProviderContext* provider = nullptr;
    KeyType type = KeyType::rsa;
    // Public half (or, for a parameters-only import, the EC group) in the default provider.
    // Null until an import.
    EvpPkeyPtr public_key;
    // Index of the private key on the key channel. Empty for keys imported for comparison,
    // such as a certificate's public key during EVP_PKEY_eq.
    std::optional<std::uint32_t> key_index;
};

// Returns the OpenSSL key type name: "RSA", "EC" or "ED25519".
const char* key_type_name(KeyType type) noexcept;

}  // namespace cloister::ossl
