// Turning a TLS signature request into PKCS#11 calls, and the token's output into the TLS wire
// form.
#pragma once

#include <openssl/evp.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "pkcs11/cryptoki.h"
#include "pkcs11/mechanisms.h"

namespace cloister::pkcs11 {

// Hashes message with the OpenSSL digest named digest ("SHA256"). Throws Error(crypto).
std::vector<std::uint8_t> hash(const char* digest, std::span<const std::uint8_t> message);

// Returns the DER DigestInfo of a SHA-256, SHA-384 or SHA-512 digest (RFC 8017 section 9.2,
// note 1): the input of CKM_RSA_PKCS for an RSASSA-PKCS1-v1_5 signature. Throws
// Error(crypto) for another digest or a digest of the wrong length.
std::vector<std::uint8_t> digest_info(const char* digest, std::span<const std::uint8_t> value);

// Converts the raw ECDSA output of PKCS#11 (r || s, each as long as the curve order, PKCS#11
// 2.40 section 2.3.1) to the DER ECDSA-Sig-Value that TLS sends (RFC 8446 section 4.2.3).
// Leading zero bytes of r and s are dropped and a zero byte is added before a high bit, as
// DER INTEGER requires. Throws Error(crypto) for an empty, odd-length or over-long input.
std::vector<std::uint8_t> ecdsa_raw_to_der(std::span<const std::uint8_t> raw);

// The result of one C_SignInit and C_Sign pair.
struct TokenSignature {
    CK_RV rv = CKR_OK;
    const char* call = "";                // "C_SignInit" or "C_Sign" when rv is not CKR_OK
    std::vector<std::uint8_t> signature;  // TLS wire form when rv is CKR_OK
};

// Signs message as plan prescribes, on session with key: computes the digest (and DigestInfo)
// when the mechanism takes one, builds CK_RSA_PKCS_PSS_PARAMS for PSS, and converts ECDSA
// output to DER. Returns the token's code instead of throwing, so that the caller can tell a
// lost session from a rejected operation. Throws Error(crypto) only for local failures
// (hashing, DER encoding).
TokenSignature sign_on_token(const CK_FUNCTION_LIST& api, CK_SESSION_HANDLE session,
                             CK_OBJECT_HANDLE key, const SignPlan& plan,
                             std::span<const std::uint8_t> message);

// Verifies a TLS wire-form signature of message with public_key as scheme prescribes.
bool verify_signature(EVP_PKEY* public_key, const SchemeMechanisms& scheme,
                      std::span<const std::uint8_t> message,
                      std::span<const std::uint8_t> signature);

}  // namespace cloister::pkcs11
