// Finding a private key object on a token and reading its public half.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "keyprovider/key_store.h"
#include "pkcs11/cryptoki.h"
#include "pkcs11/uri.h"

namespace cloister::pkcs11 {

// A private key object that a URI selected.
struct TokenKey {
    CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
    KeyType type = KeyType::rsa;
    std::string label;             // CKA_LABEL, empty when absent
    std::vector<std::uint8_t> id;  // CKA_ID, empty when absent
    // SubjectPublicKeyInfo, DER: from CKA_PUBLIC_KEY_INFO, from the modulus and exponent of an
    // RSA key, or from the public key object with the same CKA_ID (EC and Ed25519 private keys
    // do not carry their public point). Empty for an EC or Ed25519 key without either: its
    // certificate is then checked with a test signature only.
    std::vector<std::uint8_t> public_key;
    std::string description;  // "RSA 2048-bit", "EC P-256", "Ed25519"
};

// Finds the one private key object that the object, id and type attributes of uri select on
// the token of session. Throws Error(config) when none matches, with every private key of the
// token listed by label and id, and when several match, listing them. Also rejects a key
// without CKA_SIGN, of a type other than RSA (2048 to 4096 bits), EC on P-256 or P-384, or
// Ed25519, and one whose public key cannot be read. token_name appears in the messages.
TokenKey find_private_key(const CK_FUNCTION_LIST& api, CK_SESSION_HANDLE session, const Uri& uri,
                          const std::string& token_name);

}  // namespace cloister::pkcs11
