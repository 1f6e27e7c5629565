#include "keyprovider/signature_schemes.h"

#include <algorithm>
#include <array>
#include <vector>

namespace cloister {
namespace {

using keyproto::SignatureScheme;

// RFC 8446 section 4.2.3 and RFC 5246 section 7.4.1.4.1. Schemes that no accepted key can
// use (ed448) are absent.
constexpr std::array<SchemeParams, 12> schemes{{
    {SignatureScheme::rsa_pkcs1_sha1, KeyType::rsa, SignaturePadding::pkcs1, "SHA1"},
    {SignatureScheme::rsa_pkcs1_sha256, KeyType::rsa, SignaturePadding::pkcs1, "SHA256"},
    {SignatureScheme::rsa_pkcs1_sha384, KeyType::rsa, SignaturePadding::pkcs1, "SHA384"},
    {SignatureScheme::rsa_pkcs1_sha512, KeyType::rsa, SignaturePadding::pkcs1, "SHA512"},
    {SignatureScheme::rsa_pss_rsae_sha256, KeyType::rsa, SignaturePadding::pss, "SHA256"},
    {SignatureScheme::rsa_pss_rsae_sha384, KeyType::rsa, SignaturePadding::pss, "SHA384"},
    {SignatureScheme::rsa_pss_rsae_sha512, KeyType::rsa, SignaturePadding::pss, "SHA512"},
    {SignatureScheme::ecdsa_sha1, KeyType::ec, SignaturePadding::none, "SHA1"},
    {SignatureScheme::ecdsa_secp256r1_sha256, KeyType::ec, SignaturePadding::none, "SHA256"},
    {SignatureScheme::ecdsa_secp384r1_sha384, KeyType::ec, SignaturePadding::none, "SHA384"},
    {SignatureScheme::ecdsa_secp521r1_sha512, KeyType::ec, SignaturePadding::none, "SHA512"},
    {SignatureScheme::ed25519, KeyType::ed25519, SignaturePadding::none, nullptr},
}};

}  // namespace

const char* to_string(KeyType type) noexcept {
    switch (type) {
        case KeyType::rsa:
            return "RSA";
        case KeyType::ec:
            return "EC";
        case KeyType::ed25519:
            return "Ed25519";
    }
    return "unknown";
}

std::optional<SchemeParams> find_scheme(std::uint16_t code_point) {
    const auto* entry =
        std::find_if(schemes.begin(), schemes.end(), [code_point](const SchemeParams& params) {
            return static_cast<std::uint16_t>(params.scheme) == code_point;
        });
    if (entry == schemes.end()) {
        return std::nullopt;
    }
    return *entry;
}

bool scheme_fits(KeyType type, std::uint16_t code_point) {
    const auto params = find_scheme(code_point);
    return params && params->key_type == type;
}

std::vector<std::uint16_t> KeyStore::supported_schemes(std::size_t index) const {
    const KeyType type = key_type(index);
    std::vector<std::uint16_t> served;
    for (const SchemeParams& params : schemes) {
        if (params.key_type == type) {
            served.push_back(static_cast<std::uint16_t>(params.scheme));
        }
    }
    return served;
}

}  // namespace cloister
