// Mapping from each TLS SignatureScheme to a key type, a padding and a digest.
#pragma once

#include <cstdint>
#include <optional>

#include "core/key_protocol.h"
#include "keyprovider/key_store.h"

namespace cloister {

enum class SignaturePadding {
    none,   // ECDSA and Ed25519
    pkcs1,  // RSASSA-PKCS1-v1_5 (RFC 8017 section 8.2)
    pss,    // RSASSA-PSS with MGF1 on the same digest and a salt as long as the digest
};

struct SchemeParams {
    keyproto::SignatureScheme scheme;
    KeyType key_type;
    SignaturePadding padding;
    const char* digest;  // OpenSSL digest name, or nullptr for Ed25519 (it hashes internally)
};

// Returns the parameters of code_point, or nullopt when no key the key process accepts can
// sign with it (unknown code points and ed448).
std::optional<SchemeParams> find_scheme(std::uint16_t code_point);

// Tells whether a key of type can sign with code_point. Every ecdsa_* scheme fits every EC
// key, whatever curve the scheme names, because the TLS 1.2 code point 0x0403 means ECDSA
// with SHA-256 on any curve (RFC 8446 section 4.2.3 ties the curve only in TLS 1.3).
bool scheme_fits(KeyType type, std::uint16_t code_point);

}  // namespace cloister
