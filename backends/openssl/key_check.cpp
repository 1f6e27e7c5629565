#include "backends/openssl/key_check.h"

#include <fmt/format.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <memory>
#include <string_view>
#include <vector>

#include "backends/openssl/openssl_errors.h"
#include "backends/openssl/provider.h"
#include "core/error.h"

namespace cloister::ossl {
namespace {

using EvpMdCtxPtr = Ptr<EVP_MD_CTX, EVP_MD_CTX_free>;
using Bytes = std::vector<std::uint8_t>;

[[noreturn]] void throw_check_error(const ServedCertificate& certificate,
                                    std::string_view problem) {
    throw Error(ErrorKind::config, fmt::format("vhost '{}': key '{}' ({}) and certificate {}: {}",
                                               certificate.vhost_name, certificate.key_name,
                                               certificate.key_file.string(),
                                               certificate.chain_file.string(), problem));
}

// Frees memory that OpenSSL allocated. OPENSSL_free is a macro, so it cannot be a template
// argument of ossl::Deleter.
struct OpensslFree {
    void operator()(unsigned char* data) const noexcept { OPENSSL_free(data); }
};

Bytes certificate_public_key(const ServedCertificate& certificate) {
    unsigned char* der = nullptr;
    const int length = i2d_PUBKEY(X509_get0_pubkey(certificate.chain.leaf.get()), &der);
    const std::unique_ptr<unsigned char, OpensslFree> owned(der);
    if (length <= 0) {
        throw_check_error(certificate,
                          "cannot encode the certificate's public key: " + take_openssl_errors());
    }
    return Bytes(der, der + length);
}

// Returns the SHA-256 of data as colon-separated uppercase hex ("AB:CD:...").
std::string sha256_fingerprint(const Bytes& data, OSSL_LIB_CTX* libctx) {
    std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
    size_t length = 0;
    if (EVP_Q_digest(libctx, "SHA256", nullptr, data.data(), data.size(), digest.data(), &length) !=
        1) {
        return "(digest failed: " + take_openssl_errors() + ")";
    }
    std::string text;
    for (size_t i = 0; i < length; ++i) {
        text += fmt::format("{}{:02X}", i == 0 ? "" : ":", digest[i]);
    }
    return text;
}

void compare_public_keys(const ServedCertificate& certificate, KeyClient& client,
                         OSSL_LIB_CTX* libctx) {
    Bytes remote;
    try {
        remote = client.public_key(certificate.key_index);
    } catch (const Error& error) {
        throw_check_error(
            certificate,
            fmt::format("the key process did not return the public key: {}", error.what()));
    }
    if (remote.empty()) {
        spdlog::info(
            "vhost '{}': key '{}' has no public key in its token; certificate {} is checked "
            "with a test signature only",
            certificate.vhost_name, certificate.key_name, certificate.chain_file.string());
        return;
    }
    const Bytes local = certificate_public_key(certificate);
    if (remote == local) {
        return;
    }
    throw Error(ErrorKind::config,
                fmt::format("vhost '{}': key '{}' ({}, SHA-256 of public key {}) does not match "
                            "certificate {} (public key SHA-256 {})",
                            certificate.vhost_name, certificate.key_name,
                            certificate.key_file.string(), sha256_fingerprint(remote, libctx),
                            certificate.chain_file.string(), sha256_fingerprint(local, libctx)));
}

// True when the key process signs rsa_pss_rsae_sha256 with the RSA key of certificate. A key
// in a PKCS#11 token without CKM_RSA_PKCS_PSS cannot, and its test signature uses PKCS#1 v1.5.
bool rsa_pss(const ServedCertificate& certificate, KeyClient& client) {
    if (certificate.key_type != KeyType::rsa) {
        return false;
    }
    const std::vector<std::uint16_t> schemes = client.key_schemes(certificate.key_index);
    const auto pss_sha256 =
        static_cast<std::uint16_t>(keyproto::SignatureScheme::rsa_pss_rsae_sha256);
    return std::find(schemes.begin(), schemes.end(), pss_sha256) != schemes.end();
}

// Returns TLS 1.2 ServerKeyExchange parameters (RFC 8422 section 5.4): two random 32-byte
// randoms and ServerECDHParams for x25519 with a random point. The signing policy accepts an
// rsa_pkcs1_* scheme only for this input, because TLS 1.3 does not allow those schemes.
Bytes tls12_test_message(const ServedCertificate& certificate, OSSL_LIB_CTX* libctx) {
    constexpr std::array<unsigned char, 4> x25519_params{3, 0x00, 0x1d, 32};  // named_curve
    Bytes message(64 + x25519_params.size() + 32);
    if (RAND_bytes_ex(libctx, message.data(), message.size(), 0) != 1) {
        throw_check_error(certificate, "no random bytes: " + take_openssl_errors());
    }
    std::copy(x25519_params.begin(), x25519_params.end(), message.begin() + 64);
    return message;
}

// Returns RFC 8446 section 4.4.3 server CertificateVerify content with a random 32-byte
// transcript hash, so that the key process's TLS-only signing policy accepts it.
Bytes test_message(const ServedCertificate& certificate, OSSL_LIB_CTX* libctx) {
    constexpr std::string_view context = "TLS 1.3, server CertificateVerify";
    Bytes message;
    message.reserve(64 + context.size() + 1 + 32);
    message.resize(64, 0x20);
    for (const char c : context) {
        message.push_back(static_cast<unsigned char>(c));
    }
    message.push_back(0x00);
    std::array<unsigned char, 32> hash{};
    if (RAND_bytes_ex(libctx, hash.data(), hash.size(), 0) != 1) {
        throw_check_error(certificate, "no random bytes: " + take_openssl_errors());
    }
    message.insert(message.end(), hash.begin(), hash.end());
    return message;
}

// Returns the digest of the TLS 1.3 scheme for the key: SHA-256 for RSA-PSS and P-256, SHA-384
// for P-384, none for Ed25519.
const char* test_digest(const ServedCertificate& certificate) {
    switch (certificate.key_type) {
        case KeyType::ed25519:
            return nullptr;
        case KeyType::ec:
            return EVP_PKEY_get_bits(certificate.key.get()) > 256 ? "SHA384" : "SHA256";
        case KeyType::rsa:
            break;
    }
    return "SHA256";
}

// Selects RSA-PSS with a salt as long as the digest, the only RSA padding TLS 1.3 allows, or
// PKCS#1 v1.5 when pss is false.
bool set_pss(const ServedCertificate& certificate, EVP_PKEY_CTX* context, bool pss) {
    if (certificate.key_type != KeyType::rsa) {
        return true;
    }
    if (!pss) {
        return EVP_PKEY_CTX_set_rsa_padding(context, RSA_PKCS1_PADDING) == 1;
    }
    return EVP_PKEY_CTX_set_rsa_padding(context, RSA_PKCS1_PSS_PADDING) == 1 &&
           EVP_PKEY_CTX_set_rsa_pss_saltlen(context, RSA_PSS_SALTLEN_DIGEST) == 1;
}

Bytes sign_through_provider(const ServedCertificate& certificate, const Bytes& message,
                            OSSL_LIB_CTX* libctx, bool pss) {
    EvpMdCtxPtr context(EVP_MD_CTX_new());
    EVP_PKEY_CTX* key_context = nullptr;
    size_t length = 0;
    if (!context ||
        EVP_DigestSignInit_ex(context.get(), &key_context, test_digest(certificate), libctx,
                              nullptr, certificate.key.get(), nullptr) != 1 ||
        !set_pss(certificate, key_context, pss) ||
        EVP_DigestSign(context.get(), nullptr, &length, message.data(), message.size()) != 1) {
        throw_check_error(certificate, "cannot start a test signature: " + take_openssl_errors());
    }
    Bytes signature(length);
    if (EVP_DigestSign(context.get(), signature.data(), &length, message.data(), message.size()) !=
        1) {
        throw_check_error(certificate,
                          "the key process did not sign a test message: " + take_openssl_errors());
    }
    signature.resize(length);
    return signature;
}

void verify_with_certificate(const ServedCertificate& certificate, const Bytes& message,
                             const Bytes& signature, OSSL_LIB_CTX* libctx, bool pss) {
    EvpMdCtxPtr context(EVP_MD_CTX_new());
    EVP_PKEY_CTX* key_context = nullptr;
    EVP_PKEY* public_key = X509_get0_pubkey(certificate.chain.leaf.get());
    if (!context ||
        EVP_DigestVerifyInit_ex(context.get(), &key_context, test_digest(certificate), libctx,
                                default_query, public_key, nullptr) != 1 ||
        !set_pss(certificate, key_context, pss)) {
        throw_check_error(certificate, "cannot verify a test signature: " + take_openssl_errors());
    }
    if (EVP_DigestVerify(context.get(), signature.data(), signature.size(), message.data(),
                         message.size()) != 1) {
        throw_check_error(certificate,
                          "a test signature by the key process does not verify with the "
                          "certificate's public key: " +
                              take_openssl_errors());
    }
}

}  // namespace

void verify_certificate_key(const ServedCertificate& certificate, KeyClient& client,
                            OSSL_LIB_CTX* libctx) {
    compare_public_keys(certificate, client, libctx);
    const bool tls13_scheme = certificate.key_type != KeyType::rsa || rsa_pss(certificate, client);
    const Bytes message = tls13_scheme ? test_message(certificate, libctx)
                                       : tls12_test_message(certificate, libctx);
    const Bytes signature = sign_through_provider(certificate, message, libctx, tls13_scheme);
    verify_with_certificate(certificate, message, signature, libctx, tls13_scheme);
}

}  // namespace cloister::ossl
