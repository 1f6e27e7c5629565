// The PKCS#11 mechanism for each TLS SignatureScheme, and the choice of schemes for a key in
// a token.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/key_protocol.h"
#include "keyprovider/key_store.h"
#include "pkcs11/cryptoki.h"

namespace cloister::pkcs11 {

enum class Algorithm { rsa_pkcs1, rsa_pss, ecdsa, eddsa };

// One scheme the key store serves, with both ways a token may sign it.
struct SchemeMechanisms {
    keyproto::SignatureScheme scheme;
    KeyType key_type;
    Algorithm algorithm;
    const char* digest;            // OpenSSL digest name; nullptr for Ed25519
    std::size_t digest_size;       // bytes; 0 for Ed25519
    CK_MECHANISM_TYPE hash;        // CKM_SHA256...: the PSS hashAlg; 0 otherwise
    CK_RSA_PKCS_MGF_TYPE mgf;      // CKG_MGF1_SHA256...: the PSS mask generation; 0 otherwise
    CK_MECHANISM_TYPE on_digest;   // signs a digest the key process computed; for Ed25519 the
                                   // message itself
    CK_MECHANISM_TYPE on_message;  // hashes and signs in the token; 0 when none exists
};

// The mechanism chosen for one scheme of one key.
struct SignPlan {
    const SchemeMechanisms* scheme = nullptr;
    CK_MECHANISM_TYPE mechanism = 0;
    // True when C_Sign receives the digest (or the DigestInfo for PKCS#1 v1.5), false when it
    // receives the whole message.
    bool digest_input = true;
};

// The mechanisms available to one key: the token's mechanisms with CKF_SIGN, and the key's
// CKA_ALLOWED_MECHANISMS.
struct MechanismSupport {
    std::vector<CK_MECHANISM_TYPE> token;
    // nullopt when the key has no CKA_ALLOWED_MECHANISMS attribute. Absent and empty both mean
    // no restriction: SoftHSM 2.6 reports an empty list for keys created without one.
    std::optional<std::vector<CK_MECHANISM_TYPE>> allowed;
};

// The schemes the key store serves, strongest digest last within each algorithm: RSA PKCS#1
// v1.5 and PSS, ECDSA and Ed25519 with SHA-256, SHA-384 and SHA-512. The SHA-1 schemes are
// absent, because the signing policy rejects them.
std::span<const SchemeMechanisms> served_schemes();

// Returns a plan for each scheme of type that the key can sign, in served_schemes() order.
// For each scheme the mechanism over a digest comes first, and the hash-and-sign mechanism is
// the fallback for tokens that allow only that one. Never CKM_RSA_X_509: raw RSA would let
// the key process pad PSS itself, which tokens that restrict mechanisms reject.
std::vector<SignPlan> plan_schemes(KeyType type, const MechanismSupport& support);

// True when plans contain an RSA-PSS scheme, which TLS 1.3 needs for an RSA key (RFC 8446
// section 4.2.3: rsa_pkcs1_* schemes sign only certificates there).
bool has_pss(std::span<const SignPlan> plans);

// Reads the mechanisms of slot that can sign (C_GetMechanismList, then C_GetMechanismInfo
// for each one that served_schemes() uses). Throws Error(crypto) on failure.
std::vector<CK_MECHANISM_TYPE> read_sign_mechanisms(const CK_FUNCTION_LIST& api, CK_SLOT_ID slot);

// Reads CKA_ALLOWED_MECHANISMS of key: nullopt when the key does not have it.
std::optional<std::vector<CK_MECHANISM_TYPE>> read_allowed_mechanisms(const CK_FUNCTION_LIST& api,
                                                                      CK_SESSION_HANDLE session,
                                                                      CK_OBJECT_HANDLE key);

// Returns "CKM_RSA_PKCS, CKM_ECDSA", or "none" for an empty list.
std::string describe_mechanisms(std::span<const CK_MECHANISM_TYPE> mechanisms);

}  // namespace cloister::pkcs11
