#include "pkcs11/signing.h"

#include <fmt/format.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/rsa.h>

#include <array>
#include <cstring>
#include <memory>
#include <string_view>

#include "core/error.h"

namespace cloister::pkcs11 {
namespace {

// The DER prefix of DigestInfo for each digest, from RFC 8017 section 9.2, note 1: a SEQUENCE
// of the AlgorithmIdentifier (with NULL parameters) and the OCTET STRING header.
struct DigestInfoPrefix {
    std::string_view digest;
    std::size_t size;
    std::array<std::uint8_t, 19> prefix;
};

constexpr std::array<DigestInfoPrefix, 3> digest_info_prefixes{{
    {"SHA256",
     32,
     {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
      0x05, 0x00, 0x04, 0x20}},
    {"SHA384",
     48,
     {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02,
      0x05, 0x00, 0x04, 0x30}},
    {"SHA512",
     64,
     {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03,
      0x05, 0x00, 0x04, 0x40}},
}};

// The largest signature a key the store accepts produces: RSA-4096 is 512 bytes, and an
// ECDSA r || s on P-384 is 96 bytes. Larger buffers cost nothing.
constexpr std::size_t signature_buffer_size = 1024;
// ECDSA on P-521 has 66-byte r and s; nothing the store accepts is longer.
constexpr std::size_t max_ecdsa_half = 66;

struct MdCtxDeleter {
    void operator()(EVP_MD_CTX* context) const { EVP_MD_CTX_free(context); }
};
struct MdDeleter {
    void operator()(EVP_MD* md) const { EVP_MD_free(md); }
};
struct EcdsaSigDeleter {
    void operator()(ECDSA_SIG* signature) const { ECDSA_SIG_free(signature); }
};
struct BignumDeleter {
    void operator()(BIGNUM* number) const { BN_free(number); }
};

std::string openssl_errors() {
    std::string text;
    while (const unsigned long code = ERR_get_error()) {
        std::array<char, 256> buffer{};
        ERR_error_string_n(code, buffer.data(), buffer.size());
        text += text.empty() ? "" : ": ";
        text += buffer.data();
    }
    return text.empty() ? "no OpenSSL error recorded" : text;
}

std::vector<std::uint8_t> token_input(const SignPlan& plan, std::span<const std::uint8_t> message) {
    if (!plan.digest_input) {
        return {message.begin(), message.end()};
    }
    std::vector<std::uint8_t> digest = hash(plan.scheme->digest, message);
    if (plan.scheme->algorithm == Algorithm::rsa_pkcs1) {
        return digest_info(plan.scheme->digest, digest);
    }
    return digest;
}

bool set_verify_padding(EVP_PKEY_CTX* context, const SchemeMechanisms& scheme) {
    if (scheme.algorithm == Algorithm::rsa_pkcs1) {
        return EVP_PKEY_CTX_set_rsa_padding(context, RSA_PKCS1_PADDING) == 1;
    }
    if (scheme.algorithm == Algorithm::rsa_pss) {
        return EVP_PKEY_CTX_set_rsa_padding(context, RSA_PKCS1_PSS_PADDING) == 1 &&
               EVP_PKEY_CTX_set_rsa_pss_saltlen(context, RSA_PSS_SALTLEN_DIGEST) == 1 &&
               EVP_PKEY_CTX_set_rsa_mgf1_md_name(context, scheme.digest, nullptr) == 1;
    }
    return true;
}

}  // namespace

std::vector<std::uint8_t> hash(const char* digest, std::span<const std::uint8_t> message) {
    const std::unique_ptr<EVP_MD, MdDeleter> md(EVP_MD_fetch(nullptr, digest, nullptr));
    std::array<std::uint8_t, EVP_MAX_MD_SIZE> out{};
    unsigned int size = 0;
    if (!md ||
        EVP_Digest(message.data(), message.size(), out.data(), &size, md.get(), nullptr) != 1) {
        throw Error(ErrorKind::crypto,
                    fmt::format("hashing with {} failed: {}", digest, openssl_errors()));
    }
    return {out.begin(), out.begin() + size};
}

std::vector<std::uint8_t> digest_info(const char* digest, std::span<const std::uint8_t> value) {
    for (const DigestInfoPrefix& entry : digest_info_prefixes) {
        if (entry.digest != digest) {
            continue;
        }
        if (value.size() != entry.size) {
            throw Error(ErrorKind::crypto, fmt::format("a {} digest has {} bytes, not {}", digest,
                                                       entry.size, value.size()));
        }
        std::vector<std::uint8_t> out(entry.prefix.begin(), entry.prefix.end());
        out.insert(out.end(), value.begin(), value.end());
        return out;
    }
    throw Error(ErrorKind::crypto, fmt::format("no DigestInfo for digest {}", digest));
}

std::vector<std::uint8_t> ecdsa_raw_to_der(std::span<const std::uint8_t> raw) {
    if (raw.empty() || raw.size() % 2 != 0 || raw.size() > 2 * max_ecdsa_half) {
        throw Error(ErrorKind::crypto,
                    fmt::format("the token returned a {}-byte ECDSA signature; expected r || s "
                                "of equal even length up to {} bytes",
                                raw.size(), 2 * max_ecdsa_half));
    }
    const int half = static_cast<int>(raw.size() / 2);
    std::unique_ptr<BIGNUM, BignumDeleter> r(BN_bin2bn(raw.data(), half, nullptr));
    std::unique_ptr<BIGNUM, BignumDeleter> s(BN_bin2bn(raw.data() + half, half, nullptr));
    const std::unique_ptr<ECDSA_SIG, EcdsaSigDeleter> signature(ECDSA_SIG_new());
    if (!r || !s || !signature || ECDSA_SIG_set0(signature.get(), r.get(), s.get()) != 1) {
        throw Error(ErrorKind::crypto, "building ECDSA_SIG failed: " + openssl_errors());
    }
    // ECDSA_SIG_set0 took ownership of both numbers.
    static_cast<void>(r.release());
    static_cast<void>(s.release());
    const int length = i2d_ECDSA_SIG(signature.get(), nullptr);
    std::vector<std::uint8_t> der(length > 0 ? static_cast<std::size_t>(length) : 0);
    unsigned char* out = der.data();
    if (length <= 0 || i2d_ECDSA_SIG(signature.get(), &out) != length) {
        throw Error(ErrorKind::crypto,
                    "DER encoding of the ECDSA signature failed: " + openssl_errors());
    }
    return der;
}

TokenSignature sign_on_token(const CK_FUNCTION_LIST& api, CK_SESSION_HANDLE session,
                             CK_OBJECT_HANDLE key, const SignPlan& plan,
                             std::span<const std::uint8_t> message) {
    std::vector<std::uint8_t> input = token_input(plan, message);
    CK_RSA_PKCS_PSS_PARAMS pss{plan.scheme->hash, plan.scheme->mgf, plan.scheme->digest_size};
    CK_MECHANISM mechanism{plan.mechanism, nullptr, 0};
    if (plan.scheme->algorithm == Algorithm::rsa_pss) {
        mechanism.pParameter = &pss;
        mechanism.ulParameterLen = sizeof(pss);
    }

    TokenSignature result;
    result.rv = api.C_SignInit(session, &mechanism, key);
    if (result.rv != CKR_OK) {
        result.call = "C_SignInit";
        return result;
    }
    result.signature.resize(signature_buffer_size);
    CK_ULONG size = result.signature.size();
    result.rv = api.C_Sign(session, input.data(), input.size(), result.signature.data(), &size);
    if (result.rv != CKR_OK) {
        result.call = "C_Sign";
        result.signature.clear();
        return result;
    }
    result.signature.resize(size);
    if (plan.scheme->algorithm == Algorithm::ecdsa) {
        result.signature = ecdsa_raw_to_der(result.signature);
    }
    return result;
}

bool verify_signature(EVP_PKEY* public_key, const SchemeMechanisms& scheme,
                      std::span<const std::uint8_t> message,
                      std::span<const std::uint8_t> signature) {
    const std::unique_ptr<EVP_MD_CTX, MdCtxDeleter> context(EVP_MD_CTX_new());
    EVP_PKEY_CTX* key_context = nullptr;
    if (!context ||
        EVP_DigestVerifyInit_ex(context.get(), &key_context, scheme.digest, nullptr, nullptr,
                                public_key, nullptr) != 1 ||
        !set_verify_padding(key_context, scheme)) {
        ERR_clear_error();
        return false;
    }
    const int verdict = EVP_DigestVerify(context.get(), signature.data(), signature.size(),
                                         message.data(), message.size());
    ERR_clear_error();
    return verdict == 1;
}

}  // namespace cloister::pkcs11
