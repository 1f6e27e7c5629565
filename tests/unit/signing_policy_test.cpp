#include "keyprovider/signing_policy.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string_view>
#include <vector>

namespace cloister {
namespace {

using Bytes = std::vector<std::uint8_t>;

constexpr std::uint16_t rsa_pkcs1_sha1 = 0x0201;
constexpr std::uint16_t ecdsa_sha1 = 0x0203;
constexpr std::uint16_t rsa_pkcs1_sha256 = 0x0401;
constexpr std::uint16_t rsa_pkcs1_sha384 = 0x0501;
constexpr std::uint16_t rsa_pkcs1_sha512 = 0x0601;
constexpr std::uint16_t ecdsa_secp256r1_sha256 = 0x0403;
constexpr std::uint16_t ecdsa_secp384r1_sha384 = 0x0503;
constexpr std::uint16_t rsa_pss_rsae_sha256 = 0x0804;
constexpr std::uint16_t ed25519 = 0x0807;
constexpr std::uint16_t unknown_scheme = 0x0999;

void append(Bytes& out, std::string_view text) {
    out.insert(out.end(), text.begin(), text.end());
}

void append_u16(Bytes& out, std::size_t value) {
    out.push_back(static_cast<std::uint8_t>(value >> 8U));
    out.push_back(static_cast<std::uint8_t>(value & 0xffU));
}

// 64 spaces, the context string, a zero byte and hash_size bytes of transcript hash.
Bytes tls13_content(std::size_t hash_size,
                    std::string_view context = "TLS 1.3, server CertificateVerify") {
    Bytes out(64, 0x20);
    append(out, context);
    out.push_back(0x00);
    out.insert(out.end(), hash_size, 0xab);
    return out;
}

// client_random || server_random, with bytes that are not spaces.
Bytes randoms() {
    Bytes out;
    for (int i = 0; i < 64; ++i) {
        out.push_back(static_cast<std::uint8_t>(i + 1));
    }
    return out;
}

// TLS 1.2 ServerKeyExchange parameters with ServerECDHParams for group, a point_size-byte
// point starting with first_byte.
Bytes ecdhe_params(std::uint16_t group, std::size_t point_size, std::uint8_t first_byte = 0x04) {
    Bytes out = randoms();
    out.push_back(3);  // curve_type named_curve
    append_u16(out, group);
    out.push_back(static_cast<std::uint8_t>(point_size));
    if (point_size > 0) {
        out.push_back(first_byte);
        out.insert(out.end(), point_size - 1, 0x5a);
    }
    return out;
}

void append_dh_value(Bytes& out, std::size_t size, std::uint8_t fill) {
    append_u16(out, size);
    out.insert(out.end(), size, fill);
}

// TLS 1.2 ServerKeyExchange parameters with ServerDHParams of the given value sizes.
Bytes dhe_params(std::size_t p_size, std::size_t g_size, std::size_t ys_size) {
    Bytes out = randoms();
    append_dh_value(out, p_size, 0xff);
    append_dh_value(out, g_size, 0x02);
    append_dh_value(out, ys_size, 0x77);
    return out;
}

TEST(SigningPolicyTls13, AcceptsSha256Transcript) {
    const auto result = check_tls_signing_input(tls13_content(32), rsa_pss_rsae_sha256);
    EXPECT_TRUE(result.accepted()) << result.reason;
    EXPECT_EQ(result.input, SigningInput::tls13_certificate_verify);
    EXPECT_TRUE(result.reason.empty());
}

TEST(SigningPolicyTls13, AcceptsSha384TranscriptWithSha256Scheme) {
    // TLS_AES_256_GCM_SHA384 gives a 48-byte transcript hash whatever the scheme.
    const auto result = check_tls_signing_input(tls13_content(48), rsa_pss_rsae_sha256);
    EXPECT_TRUE(result.accepted()) << result.reason;
}

TEST(SigningPolicyTls13, AcceptsEcdsaAndEd25519) {
    EXPECT_TRUE(check_tls_signing_input(tls13_content(32), ecdsa_secp256r1_sha256).accepted());
    EXPECT_TRUE(check_tls_signing_input(tls13_content(48), ecdsa_secp384r1_sha384).accepted());
    EXPECT_TRUE(check_tls_signing_input(tls13_content(32), ed25519).accepted());
}

TEST(SigningPolicyTls13, RejectsHashLengthsOtherThan32And48) {
    for (const std::size_t size : {0UL, 20UL, 31UL, 33UL, 47UL, 49UL, 64UL}) {
        const auto result = check_tls_signing_input(tls13_content(size), rsa_pss_rsae_sha256);
        EXPECT_FALSE(result.accepted()) << "hash size " << size;
        EXPECT_EQ(result.input, SigningInput::none) << "hash size " << size;
    }
}

TEST(SigningPolicyTls13, RejectsTrailingByte) {
    Bytes message = tls13_content(32);
    message.push_back(0x00);
    EXPECT_FALSE(check_tls_signing_input(message, rsa_pss_rsae_sha256).accepted());
}

TEST(SigningPolicyTls13, RejectsClientContextString) {
    const auto message = tls13_content(32, "TLS 1.3, client CertificateVerify");
    const auto result = check_tls_signing_input(message, rsa_pss_rsae_sha256);
    EXPECT_FALSE(result.accepted());
    EXPECT_NE(result.reason.find("context string"), std::string_view::npos) << result.reason;
}

TEST(SigningPolicyTls13, RejectsMissingZeroSeparator) {
    Bytes message = tls13_content(32);
    message[64 + 33] = 0x01;
    EXPECT_FALSE(check_tls_signing_input(message, rsa_pss_rsae_sha256).accepted());
}

TEST(SigningPolicyTls13, RejectsTruncatedContext) {
    Bytes message(64, 0x20);
    append(message, "TLS 1.3, server");
    EXPECT_FALSE(check_tls_signing_input(message, rsa_pss_rsae_sha256).accepted());
}

TEST(SigningPolicyTls13, RejectsPkcs1Schemes) {
    for (const std::uint16_t scheme :
         {rsa_pkcs1_sha256, rsa_pkcs1_sha384, rsa_pkcs1_sha512, rsa_pkcs1_sha1}) {
        const auto result = check_tls_signing_input(tls13_content(32), scheme);
        EXPECT_FALSE(result.accepted()) << "scheme " << scheme;
        EXPECT_NE(result.reason.find("scheme"), std::string_view::npos) << result.reason;
    }
}

TEST(SigningPolicyTls13, RejectsUnknownScheme) {
    EXPECT_FALSE(check_tls_signing_input(tls13_content(32), unknown_scheme).accepted());
}

TEST(SigningPolicyTls12Ec, AcceptsEveryGroupWithItsPointSize) {
    struct Case {
        std::uint16_t group;
        std::size_t point_size;
    };
    for (const Case c : {Case{0x001d, 32}, Case{0x001e, 56}, Case{0x0017, 65}, Case{0x0018, 97},
                         Case{0x0019, 133}}) {
        const auto result =
            check_tls_signing_input(ecdhe_params(c.group, c.point_size), rsa_pkcs1_sha256);
        EXPECT_TRUE(result.accepted()) << "group " << c.group << ": " << result.reason;
        EXPECT_EQ(result.input, SigningInput::tls12_server_key_exchange_ec) << "group " << c.group;
    }
}

TEST(SigningPolicyTls12Ec, AcceptsPssEcdsaAndEd25519Schemes) {
    const auto message = ecdhe_params(0x001d, 32);
    EXPECT_TRUE(check_tls_signing_input(message, rsa_pss_rsae_sha256).accepted());
    EXPECT_TRUE(check_tls_signing_input(message, ecdsa_secp256r1_sha256).accepted());
    EXPECT_TRUE(check_tls_signing_input(message, ed25519).accepted());
}

TEST(SigningPolicyTls12Ec, RejectsSha1AndUnknownSchemes) {
    const auto message = ecdhe_params(0x001d, 32);
    EXPECT_FALSE(check_tls_signing_input(message, rsa_pkcs1_sha1).accepted());
    EXPECT_FALSE(check_tls_signing_input(message, ecdsa_sha1).accepted());
    EXPECT_FALSE(check_tls_signing_input(message, unknown_scheme).accepted());
}

TEST(SigningPolicyTls12Ec, RejectsWrongPointLength) {
    struct Case {
        std::uint16_t group;
        std::size_t point_size;
    };
    for (const Case c : {Case{0x001d, 31}, Case{0x001d, 33}, Case{0x001e, 57}, Case{0x0017, 64},
                         Case{0x0017, 66}, Case{0x0018, 96}, Case{0x0019, 132}, Case{0x0017, 0}}) {
        const auto result =
            check_tls_signing_input(ecdhe_params(c.group, c.point_size), rsa_pkcs1_sha256);
        EXPECT_FALSE(result.accepted()) << "group " << c.group << " size " << c.point_size;
    }
}

TEST(SigningPolicyTls12Ec, RejectsCompressedNistPoint) {
    for (const std::uint8_t prefix : {0x02, 0x03, 0x00}) {
        const auto message = ecdhe_params(0x0017, 65, prefix);
        const auto result = check_tls_signing_input(message, ecdsa_secp256r1_sha256);
        EXPECT_FALSE(result.accepted()) << "prefix " << int{prefix};
        EXPECT_NE(result.reason.find("uncompressed"), std::string_view::npos) << result.reason;
    }
}

TEST(SigningPolicyTls12Ec, AcceptsX25519PointStartingWithAnyByte) {
    EXPECT_TRUE(check_tls_signing_input(ecdhe_params(0x001d, 32, 0x02), ed25519).accepted());
}

TEST(SigningPolicyTls12Ec, RejectsUnknownGroup) {
    for (const std::uint16_t group : {0x0016, 0x001a, 0x001f, 0x0100, 0xff01}) {
        const auto result = check_tls_signing_input(ecdhe_params(group, 65), rsa_pkcs1_sha256);
        EXPECT_FALSE(result.accepted()) << "group " << group;
        EXPECT_NE(result.reason.find("group"), std::string_view::npos) << result.reason;
    }
}

TEST(SigningPolicyTls12Ec, RejectsExplicitCurveType) {
    Bytes message = ecdhe_params(0x0017, 65);
    message[64] = 1;  // explicit_prime, forbidden by RFC 8422 section 5.4
    EXPECT_FALSE(check_tls_signing_input(message, rsa_pkcs1_sha256).accepted());
}

TEST(SigningPolicyTls12Ec, RejectsTrailingByte) {
    Bytes message = ecdhe_params(0x0017, 65);
    message.push_back(0x00);
    const auto result = check_tls_signing_input(message, rsa_pkcs1_sha256);
    EXPECT_FALSE(result.accepted());
    EXPECT_NE(result.reason.find("follow"), std::string_view::npos) << result.reason;
}

TEST(SigningPolicyTls12Ec, RejectsTruncatedPoint) {
    Bytes message = ecdhe_params(0x0017, 65);
    message.pop_back();
    EXPECT_FALSE(check_tls_signing_input(message, rsa_pkcs1_sha256).accepted());
}

TEST(SigningPolicyTls12, RejectsRandomsOnly) {
    EXPECT_FALSE(check_tls_signing_input(randoms(), rsa_pkcs1_sha256).accepted());
    Bytes short_message = randoms();
    short_message.pop_back();
    EXPECT_FALSE(check_tls_signing_input(short_message, rsa_pkcs1_sha256).accepted());
    EXPECT_FALSE(check_tls_signing_input(Bytes{}, rsa_pkcs1_sha256).accepted());
}

TEST(SigningPolicyTls12Dh, AcceptsFfdhe2048AndMaximumPrime) {
    auto result = check_tls_signing_input(dhe_params(256, 1, 256), rsa_pkcs1_sha256);
    EXPECT_TRUE(result.accepted()) << result.reason;
    EXPECT_EQ(result.input, SigningInput::tls12_server_key_exchange_dh);
    result = check_tls_signing_input(dhe_params(1024, 1024, 1024), rsa_pss_rsae_sha256);
    EXPECT_TRUE(result.accepted()) << result.reason;
}

TEST(SigningPolicyTls12Dh, AcceptsPrimeWhoseLengthStartsWithThree) {
    // ffdhe6144: a 768-byte prime makes the first parameter byte 0x03, like curve_type.
    const auto result = check_tls_signing_input(dhe_params(768, 1, 768), rsa_pkcs1_sha256);
    EXPECT_TRUE(result.accepted()) << result.reason;
    EXPECT_EQ(result.input, SigningInput::tls12_server_key_exchange_dh);
}

TEST(SigningPolicyTls12Dh, RejectsPrimeLongerThan1024Bytes) {
    EXPECT_FALSE(check_tls_signing_input(dhe_params(1025, 1, 1025), rsa_pkcs1_sha256).accepted());
}

TEST(SigningPolicyTls12Dh, RejectsEmptyValues) {
    EXPECT_FALSE(check_tls_signing_input(dhe_params(0, 1, 1), rsa_pkcs1_sha256).accepted());
    EXPECT_FALSE(check_tls_signing_input(dhe_params(256, 0, 256), rsa_pkcs1_sha256).accepted());
    EXPECT_FALSE(check_tls_signing_input(dhe_params(256, 1, 0), rsa_pkcs1_sha256).accepted());
}

TEST(SigningPolicyTls12Dh, RejectsValuesLongerThanPrime) {
    EXPECT_TRUE(check_tls_signing_input(dhe_params(256, 256, 256), rsa_pkcs1_sha256).accepted());
    EXPECT_FALSE(check_tls_signing_input(dhe_params(256, 257, 256), rsa_pkcs1_sha256).accepted());
    EXPECT_FALSE(check_tls_signing_input(dhe_params(256, 1, 257), rsa_pkcs1_sha256).accepted());
}

TEST(SigningPolicyTls12Dh, RejectsTrailingByte) {
    Bytes message = dhe_params(256, 1, 256);
    message.push_back(0x00);
    EXPECT_FALSE(check_tls_signing_input(message, rsa_pkcs1_sha256).accepted());
}

TEST(SigningPolicyTls12Dh, RejectsTruncatedPublicValue) {
    Bytes message = dhe_params(256, 1, 256);
    message.pop_back();
    EXPECT_FALSE(check_tls_signing_input(message, rsa_pkcs1_sha256).accepted());
}

TEST(SigningPolicy, JudgesSpacePrefixAsTls13Only) {
    // Valid ECDHE parameters behind randoms that are all spaces are not a TLS 1.3 content.
    Bytes message(64, 0x20);
    const Bytes ec = ecdhe_params(0x001d, 32);
    message.insert(message.end(), ec.begin() + 64, ec.end());
    EXPECT_FALSE(check_tls_signing_input(message, rsa_pkcs1_sha256).accepted());
}

TEST(SigningPolicy, RejectsArbitraryDigest) {
    const Bytes digest(32, 0x42);
    EXPECT_FALSE(check_tls_signing_input(digest, rsa_pkcs1_sha256).accepted());
    EXPECT_FALSE(check_tls_signing_input(digest, rsa_pss_rsae_sha256).accepted());
}

}  // namespace
}  // namespace cloister
