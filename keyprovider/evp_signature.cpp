#include "keyprovider/evp_signature.h"

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/rsa.h>

#include <memory>
#include <string>

#include "core/error.h"

namespace cloister {
namespace {

struct MdCtxDeleter {
    void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, MdCtxDeleter>;

[[noreturn]] void throw_crypto(const char* call) {
    throw Error(ErrorKind::crypto, fmt::format("{} failed: {}", call, take_openssl_errors()));
}

// Sets the RSA padding on a freshly initialised signing or verifying context. PSS uses MGF1
// with the signing digest and a salt as long as the digest, as RFC 8446 section 4.2.3
// requires for rsa_pss_rsae_*.
bool set_padding(EVP_PKEY_CTX* pctx, const SchemeParams& params) {
    if (params.padding == SignaturePadding::pkcs1) {
        return EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) == 1;
    }
    if (params.padding == SignaturePadding::pss) {
        return EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1 &&
               EVP_PKEY_CTX_set_rsa_mgf1_md_name(pctx, params.digest, nullptr) == 1 &&
               EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) == 1;
    }
    return true;
}

}  // namespace

std::string take_openssl_errors() {
    std::string reasons;
    while (const unsigned long code = ERR_get_error()) {
        const char* reason = ERR_reason_error_string(code);
        if (!reasons.empty()) {
            reasons += ": ";
        }
        reasons += reason != nullptr ? reason : fmt::format("error 0x{:08x}", code);
    }
    return reasons.empty() ? std::string("no OpenSSL error recorded") : reasons;
}

std::vector<std::uint8_t> sign_message(EVP_PKEY* key, const SchemeParams& params,
                                       std::span<const std::uint8_t> message) {
    const MdCtxPtr ctx(EVP_MD_CTX_new());
    if (!ctx) {
        throw_crypto("EVP_MD_CTX_new");
    }
    EVP_PKEY_CTX* pctx = nullptr;  // owned by ctx
    if (EVP_DigestSignInit_ex(ctx.get(), &pctx, params.digest, nullptr, nullptr, key, nullptr) !=
        1) {
        throw_crypto("EVP_DigestSignInit_ex");
    }
    if (!set_padding(pctx, params)) {
        throw_crypto("setting the RSA padding");
    }

    std::size_t length = 0;
    if (EVP_DigestSign(ctx.get(), nullptr, &length, message.data(), message.size()) != 1) {
        throw_crypto("EVP_DigestSign");
    }
    std::vector<std::uint8_t> signature(length);
    if (EVP_DigestSign(ctx.get(), signature.data(), &length, message.data(), message.size()) != 1) {
        throw_crypto("EVP_DigestSign");
    }
    signature.resize(length);
    return signature;
}

bool verify_message(EVP_PKEY* key, const SchemeParams& params,
                    std::span<const std::uint8_t> message,
                    std::span<const std::uint8_t> signature) {
    const MdCtxPtr ctx(EVP_MD_CTX_new());
    EVP_PKEY_CTX* pctx = nullptr;  // owned by ctx
    const bool verified = ctx &&
                          EVP_DigestVerifyInit_ex(ctx.get(), &pctx, params.digest, nullptr, nullptr,
                                                  key, nullptr) == 1 &&
                          set_padding(pctx, params) &&
                          EVP_DigestVerify(ctx.get(), signature.data(), signature.size(),
                                           message.data(), message.size()) == 1;
    ERR_clear_error();
    return verified;
}

}  // namespace cloister
