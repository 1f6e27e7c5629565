// The pure parts of PKCS#11 signing: DigestInfo, the ECDSA r || s to DER conversion, and the
// choice of mechanism for each TLS signature scheme.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "pkcs11/mechanisms.h"
#include "pkcs11/signing.h"

namespace cloister::pkcs11 {
namespace {

using keyproto::SignatureScheme;
using Bytes = std::vector<std::uint8_t>;

struct PkeyDeleter {
    void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
struct PkeyCtxDeleter {
    void operator()(EVP_PKEY_CTX* context) const { EVP_PKEY_CTX_free(context); }
};
struct MdCtxDeleter {
    void operator()(EVP_MD_CTX* context) const { EVP_MD_CTX_free(context); }
};
struct SigDeleter {
    void operator()(ECDSA_SIG* signature) const { ECDSA_SIG_free(signature); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDeleter>;
using SigPtr = std::unique_ptr<ECDSA_SIG, SigDeleter>;

PkeyPtr generate(const char* type, const char* curve = nullptr) {
    EVP_PKEY* key = curve == nullptr ? EVP_PKEY_Q_keygen(nullptr, nullptr, type, size_t{2048})
                                     : EVP_PKEY_Q_keygen(nullptr, nullptr, type, curve);
    return PkeyPtr(key);
}

Bytes bytes_of(const std::string& text) {
    return {text.begin(), text.end()};
}

SigPtr parse_der(const Bytes& der) {
    const unsigned char* in = der.data();
    SigPtr signature(d2i_ECDSA_SIG(nullptr, &in, static_cast<long>(der.size())));
    EXPECT_EQ(in, der.data() + der.size()) << "trailing bytes after the DER signature";
    return signature;
}

// r || s with each half padded to width bytes, as PKCS#11 returns it.
Bytes raw_of(const ECDSA_SIG* signature, int width) {
    Bytes raw(static_cast<std::size_t>(2 * width));
    EXPECT_EQ(BN_bn2binpad(ECDSA_SIG_get0_r(signature), raw.data(), width), width);
    EXPECT_EQ(BN_bn2binpad(ECDSA_SIG_get0_s(signature), raw.data() + width, width), width);
    return raw;
}

TEST(Pkcs11SigningTest, DerOfSmallValues) {
    // r = 1, s = 0x7f: one content byte each, no padding byte.
    Bytes raw(64, 0);
    raw[31] = 0x01;
    raw[63] = 0x7f;
    EXPECT_EQ(ecdsa_raw_to_der(raw), (Bytes{0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x7f}));
}

TEST(Pkcs11SigningTest, DerAddsZeroBeforeHighBit) {
    // r = 0x80 00..00 (32 bytes) needs a leading zero; s = 0x00 80 (leading zero dropped, then
    // one added back for the high bit).
    Bytes raw(64, 0);
    raw[0] = 0x80;
    raw[63] = 0x80;
    const Bytes der = ecdsa_raw_to_der(raw);
    ASSERT_EQ(der.size(), 2U + 2 + 33 + 2 + 2);
    EXPECT_EQ(der[0], 0x30);
    EXPECT_EQ(der[1], 39);
    EXPECT_EQ(der[2], 0x02);
    EXPECT_EQ(der[3], 33);
    EXPECT_EQ(der[4], 0x00);
    EXPECT_EQ(der[5], 0x80);
    EXPECT_EQ(Bytes(der.end() - 4, der.end()), (Bytes{0x02, 0x02, 0x00, 0x80}));
}

TEST(Pkcs11SigningTest, DerDropsLeadingZeroBytes) {
    // r has three leading zero bytes; s has one followed by a byte below 0x80.
    Bytes raw(96, 0x11);
    raw[0] = raw[1] = raw[2] = 0;
    raw[48] = 0;
    const SigPtr signature = parse_der(ecdsa_raw_to_der(raw));
    ASSERT_TRUE(signature);
    EXPECT_EQ(BN_num_bytes(ECDSA_SIG_get0_r(signature.get())), 45);
    EXPECT_EQ(BN_num_bytes(ECDSA_SIG_get0_s(signature.get())), 47);
    EXPECT_EQ(raw_of(signature.get(), 48), raw);
}

TEST(Pkcs11SigningTest, DerRejectsBadLengths) {
    EXPECT_THROW(static_cast<void>(ecdsa_raw_to_der(Bytes{})), Error);
    EXPECT_THROW(static_cast<void>(ecdsa_raw_to_der(Bytes(63, 1))), Error);
    EXPECT_THROW(static_cast<void>(ecdsa_raw_to_der(Bytes(134, 1))), Error);
}

// Real P-256 signatures: converting their padded r || s form gives OpenSSL's own DER, also
// for the signatures whose r or s has a leading zero byte.
TEST(Pkcs11SigningTest, DerMatchesOpensslForManySignatures) {
    const PkeyPtr key = generate("EC", "P-256");
    ASSERT_TRUE(key);
    const std::unique_ptr<EVP_PKEY_CTX, PkeyCtxDeleter> context(
        EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr));
    ASSERT_EQ(EVP_PKEY_sign_init(context.get()), 1);
    int leading_zero = 0;
    for (int i = 0; i < 3000; ++i) {
        const Bytes digest = hash("SHA256", bytes_of("message " + std::to_string(i)));
        std::size_t size = 80;
        Bytes der(size);
        ASSERT_EQ(EVP_PKEY_sign(context.get(), der.data(), &size, digest.data(), digest.size()), 1);
        der.resize(size);
        const SigPtr original = parse_der(der);
        ASSERT_TRUE(original);
        const Bytes raw = raw_of(original.get(), 32);
        leading_zero += (raw[0] == 0 || raw[32] == 0) ? 1 : 0;
        ASSERT_EQ(ecdsa_raw_to_der(raw), der) << "signature " << i;
    }
    // About 23 of 3000 signatures have a zero first byte in r or s.
    EXPECT_GT(leading_zero, 0);
}

TEST(Pkcs11SigningTest, DigestInfoMatchesOpensslPkcs1) {
    const PkeyPtr key = generate("RSA");
    ASSERT_TRUE(key);
    const Bytes message = bytes_of("TLS handshake signature input");
    for (const char* digest : {"SHA256", "SHA384", "SHA512"}) {
        // Reference: OpenSSL hashes and pads itself.
        const std::unique_ptr<EVP_MD_CTX, MdCtxDeleter> md_context(EVP_MD_CTX_new());
        ASSERT_EQ(EVP_DigestSignInit_ex(md_context.get(), nullptr, digest, nullptr, nullptr,
                                        key.get(), nullptr),
                  1);
        std::size_t expected_size = 256;
        Bytes expected(expected_size);
        ASSERT_EQ(EVP_DigestSign(md_context.get(), expected.data(), &expected_size, message.data(),
                                 message.size()),
                  1);
        // PKCS#1 v1.5 padding of our DigestInfo without a digest, as CKM_RSA_PKCS does.
        const Bytes info = digest_info(digest, hash(digest, message));
        const std::unique_ptr<EVP_PKEY_CTX, PkeyCtxDeleter> context(
            EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr));
        ASSERT_EQ(EVP_PKEY_sign_init(context.get()), 1);
        ASSERT_EQ(EVP_PKEY_CTX_set_rsa_padding(context.get(), RSA_PKCS1_PADDING), 1);
        std::size_t size = 256;
        Bytes signature(size);
        ASSERT_EQ(EVP_PKEY_sign(context.get(), signature.data(), &size, info.data(), info.size()),
                  1);
        EXPECT_EQ(signature, expected) << digest;
    }
}

TEST(Pkcs11SigningTest, DigestInfoRejectsWrongSizes) {
    EXPECT_THROW(static_cast<void>(digest_info("SHA256", Bytes(31, 0))), Error);
    EXPECT_THROW(static_cast<void>(digest_info("MD5", Bytes(16, 0))), Error);
}

TEST(Pkcs11SigningTest, VerifiesPssWithDigestSalt) {
    const PkeyPtr key = generate("RSA");
    ASSERT_TRUE(key);
    const Bytes message = bytes_of("input");
    const SchemeMechanisms& scheme = served_schemes().front();
    ASSERT_EQ(scheme.scheme, SignatureScheme::rsa_pss_rsae_sha256);
    const std::unique_ptr<EVP_MD_CTX, MdCtxDeleter> context(EVP_MD_CTX_new());
    EVP_PKEY_CTX* key_context = nullptr;
    ASSERT_EQ(EVP_DigestSignInit_ex(context.get(), &key_context, "SHA256", nullptr, nullptr,
                                    key.get(), nullptr),
              1);
    ASSERT_EQ(EVP_PKEY_CTX_set_rsa_padding(key_context, RSA_PKCS1_PSS_PADDING), 1);
    ASSERT_EQ(EVP_PKEY_CTX_set_rsa_pss_saltlen(key_context, 32), 1);
    std::size_t size = 256;
    Bytes signature(size);
    ASSERT_EQ(
        EVP_DigestSign(context.get(), signature.data(), &size, message.data(), message.size()), 1);
    EXPECT_TRUE(verify_signature(key.get(), scheme, message, signature));
    signature[10] ^= 1;
    EXPECT_FALSE(verify_signature(key.get(), scheme, message, signature));
}

// --- choosing mechanisms ------------------------------------------------------------------

const std::vector<CK_MECHANISM_TYPE> softhsm_mechanisms{CKM_RSA_PKCS,
                                                        CKM_RSA_X_509,
                                                        CKM_RSA_PKCS_PSS,
                                                        CKM_SHA256_RSA_PKCS,
                                                        CKM_SHA384_RSA_PKCS,
                                                        CKM_SHA512_RSA_PKCS,
                                                        CKM_SHA256_RSA_PKCS_PSS,
                                                        CKM_SHA384_RSA_PKCS_PSS,
                                                        CKM_SHA512_RSA_PKCS_PSS,
                                                        CKM_ECDSA,
                                                        CKM_EDDSA};

std::vector<SignatureScheme> schemes_of(const std::vector<SignPlan>& plans) {
    std::vector<SignatureScheme> schemes;
    for (const SignPlan& plan : plans) {
        schemes.push_back(plan.scheme->scheme);
    }
    return schemes;
}

TEST(Pkcs11MechanismTest, UnrestrictedRsaKeyServesAll) {
    for (const auto& allowed :
         {std::optional<std::vector<CK_MECHANISM_TYPE>>{},
          std::optional<std::vector<CK_MECHANISM_TYPE>>{std::vector<CK_MECHANISM_TYPE>{}}}) {
        const std::vector<SignPlan> plans =
            plan_schemes(KeyType::rsa, MechanismSupport{softhsm_mechanisms, allowed});
        EXPECT_EQ(schemes_of(plans),
                  (std::vector<SignatureScheme>{
                      SignatureScheme::rsa_pss_rsae_sha256, SignatureScheme::rsa_pss_rsae_sha384,
                      SignatureScheme::rsa_pss_rsae_sha512, SignatureScheme::rsa_pkcs1_sha256,
                      SignatureScheme::rsa_pkcs1_sha384, SignatureScheme::rsa_pkcs1_sha512}));
        for (const SignPlan& plan : plans) {
            EXPECT_TRUE(plan.digest_input);
            EXPECT_NE(plan.mechanism, CKM_RSA_X_509);
        }
        EXPECT_TRUE(has_pss(plans));
    }
}

TEST(Pkcs11MechanismTest, Pkcs1OnlyKeyHasNoPss) {
    const MechanismSupport support{
        softhsm_mechanisms, std::vector<CK_MECHANISM_TYPE>{CKM_RSA_PKCS, CKM_SHA256_RSA_PKCS}};
    const std::vector<SignPlan> plans = plan_schemes(KeyType::rsa, support);
    EXPECT_EQ(schemes_of(plans), (std::vector<SignatureScheme>{SignatureScheme::rsa_pkcs1_sha256,
                                                               SignatureScheme::rsa_pkcs1_sha384,
                                                               SignatureScheme::rsa_pkcs1_sha512}));
    EXPECT_FALSE(has_pss(plans));
}

TEST(Pkcs11MechanismTest, TokenWithoutPssHasNoPss) {
    std::vector<CK_MECHANISM_TYPE> token = softhsm_mechanisms;
    std::erase_if(token, [](CK_MECHANISM_TYPE mechanism) {
        return mechanism == CKM_RSA_PKCS_PSS || mechanism == CKM_SHA256_RSA_PKCS_PSS ||
               mechanism == CKM_SHA384_RSA_PKCS_PSS || mechanism == CKM_SHA512_RSA_PKCS_PSS;
    });
    EXPECT_FALSE(has_pss(plan_schemes(KeyType::rsa, MechanismSupport{token, std::nullopt})));
}

TEST(Pkcs11MechanismTest, FallsBackToHashAndSignMechanism) {
    // A key that allows only SHA256-RSA-PKCS-PSS gets that one scheme, signed in the token
    // over the whole message.
    const MechanismSupport support{softhsm_mechanisms,
                                   std::vector<CK_MECHANISM_TYPE>{CKM_SHA256_RSA_PKCS_PSS}};
    const std::vector<SignPlan> plans = plan_schemes(KeyType::rsa, support);
    ASSERT_EQ(plans.size(), 1U);
    EXPECT_EQ(plans[0].scheme->scheme, SignatureScheme::rsa_pss_rsae_sha256);
    EXPECT_EQ(plans[0].mechanism, CKM_SHA256_RSA_PKCS_PSS);
    EXPECT_FALSE(plans[0].digest_input);
}

TEST(Pkcs11MechanismTest, RawRsaAloneServesNothing) {
    const MechanismSupport support{softhsm_mechanisms,
                                   std::vector<CK_MECHANISM_TYPE>{CKM_RSA_X_509}};
    EXPECT_TRUE(plan_schemes(KeyType::rsa, support).empty());
}

TEST(Pkcs11MechanismTest, EcAndEd25519Keys) {
    const MechanismSupport support{softhsm_mechanisms, std::nullopt};
    EXPECT_EQ(schemes_of(plan_schemes(KeyType::ec, support)),
              (std::vector<SignatureScheme>{SignatureScheme::ecdsa_secp256r1_sha256,
                                            SignatureScheme::ecdsa_secp384r1_sha384,
                                            SignatureScheme::ecdsa_secp521r1_sha512}));
    const std::vector<SignPlan> ed = plan_schemes(KeyType::ed25519, support);
    ASSERT_EQ(ed.size(), 1U);
    EXPECT_EQ(ed[0].mechanism, CKM_EDDSA);
    EXPECT_FALSE(ed[0].digest_input);
    EXPECT_TRUE(plan_schemes(KeyType::ed25519, MechanismSupport{{CKM_ECDSA}, {}}).empty());
}

TEST(Pkcs11MechanismTest, ServedSchemesHaveNoSha1) {
    for (const SchemeMechanisms& scheme : served_schemes()) {
        EXPECT_NE(scheme.scheme, SignatureScheme::rsa_pkcs1_sha1);
        EXPECT_NE(scheme.scheme, SignatureScheme::ecdsa_sha1);
        if (scheme.algorithm == Algorithm::rsa_pss) {
            EXPECT_EQ(scheme.digest_size * 8, scheme.hash == CKM_SHA256   ? 256U
                                              : scheme.hash == CKM_SHA384 ? 384U
                                                                          : 512U);
        }
    }
}

TEST(Pkcs11MechanismTest, NamesMechanisms) {
    EXPECT_EQ(describe_mechanisms(std::vector<CK_MECHANISM_TYPE>{CKM_RSA_PKCS, CKM_EDDSA}),
              "CKM_RSA_PKCS, CKM_EDDSA");
    EXPECT_EQ(describe_mechanisms(std::vector<CK_MECHANISM_TYPE>{}), "none");
    EXPECT_EQ(rv_name(CKR_PIN_INCORRECT), "CKR_PIN_INCORRECT");
    EXPECT_EQ(rv_name(0x12345), "CKR 0x00012345");
    EXPECT_TRUE(needs_reopen(CKR_SESSION_HANDLE_INVALID));
    EXPECT_TRUE(needs_reopen(CKR_DEVICE_REMOVED));
    EXPECT_FALSE(needs_reopen(CKR_PIN_INCORRECT));
    EXPECT_FALSE(needs_reopen(CKR_MECHANISM_INVALID));
}

}  // namespace
}  // namespace cloister::pkcs11
