// Loading private keys from PEM or DER files into the key process's memory.
#pragma once

#include <openssl/evp.h>

#include <memory>

#include "core/config.h"
#include "keyprovider/key_store.h"

namespace cloister {

struct EvpPkeyDeleter {
    void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, EvpPkeyDeleter>;

struct LoadedKey {
    EvpPkeyPtr key;
    KeyType type = KeyType::rsa;
};

// Loads config.file: PEM or DER, traditional or PKCS#8, encrypted PKCS#8 when
// config.passphrase_file is set (its content minus at most one trailing LF is the passphrase).
// Accepts RSA of 2048 to 4096 bits, EC on P-256 or P-384, and Ed25519, and checks the key by
// signing and verifying a test message. The file and passphrase bytes are cleansed from
// memory before the function returns. Throws Error(config) with a message of the form
// "key 'NAME' (FILE): reason". The message never contains key or passphrase bytes.
LoadedKey load_private_key(const KeyConfig& config);

}  // namespace cloister
