#include "pkcs11/mechanisms.h"

#include <algorithm>
#include <array>

#include "core/error.h"

namespace cloister::pkcs11 {
namespace {

using keyproto::SignatureScheme;

// RFC 8446 section 4.2.3 with the PKCS#11 2.40 mechanisms that produce each signature. PSS
// uses MGF1 with the same digest and a salt as long as the digest (RFC 8446 section 4.2.3).
// CKM_ECDSA signs the digest that the key process computed. The token truncates it to the
// bit length of the curve order as ANSI X9.62 prescribes, so every ecdsa_* scheme fits every
// EC key, as in TLS 1.2. CKM_EDDSA without parameters is Ed25519 (PureEdDSA) over the whole
// message.
constexpr std::array<SchemeMechanisms, 10> schemes{{
    {SignatureScheme::rsa_pss_rsae_sha256, KeyType::rsa, Algorithm::rsa_pss, "SHA256", 32,
     CKM_SHA256, CKG_MGF1_SHA256, CKM_RSA_PKCS_PSS, CKM_SHA256_RSA_PKCS_PSS},
    {SignatureScheme::rsa_pss_rsae_sha384, KeyType::rsa, Algorithm::rsa_pss, "SHA384", 48,
     CKM_SHA384, CKG_MGF1_SHA384, CKM_RSA_PKCS_PSS, CKM_SHA384_RSA_PKCS_PSS},
    {SignatureScheme::rsa_pss_rsae_sha512, KeyType::rsa, Algorithm::rsa_pss, "SHA512", 64,
     CKM_SHA512, CKG_MGF1_SHA512, CKM_RSA_PKCS_PSS, CKM_SHA512_RSA_PKCS_PSS},
    {SignatureScheme::rsa_pkcs1_sha256, KeyType::rsa, Algorithm::rsa_pkcs1, "SHA256", 32, 0, 0,
     CKM_RSA_PKCS, CKM_SHA256_RSA_PKCS},
    {SignatureScheme::rsa_pkcs1_sha384, KeyType::rsa, Algorithm::rsa_pkcs1, "SHA384", 48, 0, 0,
     CKM_RSA_PKCS, CKM_SHA384_RSA_PKCS},
    {SignatureScheme::rsa_pkcs1_sha512, KeyType::rsa, Algorithm::rsa_pkcs1, "SHA512", 64, 0, 0,
     CKM_RSA_PKCS, CKM_SHA512_RSA_PKCS},
    {SignatureScheme::ecdsa_secp256r1_sha256, KeyType::ec, Algorithm::ecdsa, "SHA256", 32, 0, 0,
     CKM_ECDSA, CKM_ECDSA_SHA256},
    {SignatureScheme::ecdsa_secp384r1_sha384, KeyType::ec, Algorithm::ecdsa, "SHA384", 48, 0, 0,
     CKM_ECDSA, CKM_ECDSA_SHA384},
    {SignatureScheme::ecdsa_secp521r1_sha512, KeyType::ec, Algorithm::ecdsa, "SHA512", 64, 0, 0,
     CKM_ECDSA, CKM_ECDSA_SHA512},
    {SignatureScheme::ed25519, KeyType::ed25519, Algorithm::eddsa, nullptr, 0, 0, 0, CKM_EDDSA, 0},
}};

bool contains(std::span<const CK_MECHANISM_TYPE> list, CK_MECHANISM_TYPE mechanism) {
    return std::find(list.begin(), list.end(), mechanism) != list.end();
}

bool usable(const MechanismSupport& support, CK_MECHANISM_TYPE mechanism) {
    if (mechanism == 0 || !contains(support.token, mechanism)) {
        return false;
    }
    const bool restricted = support.allowed && !support.allowed->empty();
    return !restricted || contains(*support.allowed, mechanism);
}

}  // namespace

std::span<const SchemeMechanisms> served_schemes() {
    return schemes;
}

std::vector<SignPlan> plan_schemes(KeyType type, const MechanismSupport& support) {
    std::vector<SignPlan> plans;
    for (const SchemeMechanisms& scheme : schemes) {
        if (scheme.key_type != type) {
            continue;
        }
        if (usable(support, scheme.on_digest)) {
            plans.push_back({&scheme, scheme.on_digest, scheme.algorithm != Algorithm::eddsa});
        } else if (usable(support, scheme.on_message)) {
            plans.push_back({&scheme, scheme.on_message, false});
        }
    }
    return plans;
}

bool has_pss(std::span<const SignPlan> plans) {
    return std::any_of(plans.begin(), plans.end(), [](const SignPlan& plan) {
        return plan.scheme->algorithm == Algorithm::rsa_pss;
    });
}

std::vector<CK_MECHANISM_TYPE> read_sign_mechanisms(const CK_FUNCTION_LIST& api, CK_SLOT_ID slot) {
    CK_ULONG count = 0;
    check_rv(api.C_GetMechanismList(slot, nullptr, &count), "C_GetMechanismList");
    std::vector<CK_MECHANISM_TYPE> listed(count);
    check_rv(api.C_GetMechanismList(slot, listed.data(), &count), "C_GetMechanismList");
    listed.resize(count);

    std::vector<CK_MECHANISM_TYPE> signing;
    for (const SchemeMechanisms& scheme : schemes) {
        for (const CK_MECHANISM_TYPE mechanism : {scheme.on_digest, scheme.on_message}) {
            if (mechanism == 0 || !contains(listed, mechanism) || contains(signing, mechanism)) {
                continue;
            }
            CK_MECHANISM_INFO info{};
            const CK_RV rv = api.C_GetMechanismInfo(slot, mechanism, &info);
            if (rv == CKR_OK && (info.flags & CKF_SIGN) != 0) {
                signing.push_back(mechanism);
            }
        }
    }
    return signing;
}

std::optional<std::vector<CK_MECHANISM_TYPE>> read_allowed_mechanisms(const CK_FUNCTION_LIST& api,
                                                                      CK_SESSION_HANDLE session,
                                                                      CK_OBJECT_HANDLE key) {
    const AttributeValue value = read_attribute(api, session, key, CKA_ALLOWED_MECHANISMS);
    if (!value.bytes) {
        if (value.rv != CKR_ATTRIBUTE_TYPE_INVALID && value.rv != CKR_ATTRIBUTE_SENSITIVE &&
            value.rv != CKR_OK) {
            check_rv(value.rv, "C_GetAttributeValue(CKA_ALLOWED_MECHANISMS)");
        }
        return std::nullopt;
    }
    const std::vector<std::uint8_t>& bytes = *value.bytes;
    std::vector<CK_MECHANISM_TYPE> mechanisms(bytes.size() / sizeof(CK_MECHANISM_TYPE));
    std::copy_n(bytes.begin(), mechanisms.size() * sizeof(CK_MECHANISM_TYPE),
                reinterpret_cast<std::uint8_t*>(mechanisms.data()));
    return mechanisms;
}

std::string describe_mechanisms(std::span<const CK_MECHANISM_TYPE> mechanisms) {
    std::string text;
    for (const CK_MECHANISM_TYPE mechanism : mechanisms) {
        text += text.empty() ? "" : ", ";
        text += mechanism_name(mechanism);
    }
    return text.empty() ? "none" : text;
}

}  // namespace cloister::pkcs11
