// The OpenSSL stack's per-vhost signature limits and the server_name parser of its
// client_hello callback.
#include "backends/openssl/key_capabilities.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace cloister::ossl {
namespace {

const std::vector<std::uint16_t> all_rsa{0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601, 0x0201};
const std::vector<std::uint16_t> all_ec{0x0403, 0x0503, 0x0603, 0x0203};

TEST(KeyCapabilitiesTest, UnrestrictedKeysKeepOpensslDefaults) {
    const std::vector<KeySchemes> keys{{KeyType::rsa, "rsa", all_rsa}, {KeyType::ec, "ec", all_ec}};
    const VhostSigning signing = derive_vhost_signing(keys);
    EXPECT_EQ(signing.sigalgs, "");
    EXPECT_FALSE(signing.tls12_only);
}

TEST(KeyCapabilitiesTest, RsaKeyWithoutPssLimitsToTls12) {
    const std::vector<KeySchemes> keys{{KeyType::rsa, "v15", {0x0401, 0x0501, 0x0601}}};
    const VhostSigning signing = derive_vhost_signing(keys);
    EXPECT_EQ(signing.sigalgs, "rsa_pkcs1_sha256:rsa_pkcs1_sha384:rsa_pkcs1_sha512");
    EXPECT_TRUE(signing.tls12_only);
    EXPECT_EQ(signing.keys_without_pss, "'v15'");
}

TEST(KeyCapabilitiesTest, PssOnlyKeyKeepsTls13) {
    const std::vector<KeySchemes> keys{{KeyType::rsa, "pss", {0x0804}}};
    const VhostSigning signing = derive_vhost_signing(keys);
    EXPECT_EQ(signing.sigalgs, "rsa_pss_rsae_sha256");
    EXPECT_FALSE(signing.tls12_only);
}

TEST(KeyCapabilitiesTest, UnionOverTheVhostKeysInPreferenceOrder) {
    const std::vector<KeySchemes> keys{{KeyType::rsa, "v15", {0x0601, 0x0401}},
                                       {KeyType::ec, "ec", all_ec},
                                       {KeyType::ed25519, "ed", {0x0807}}};
    const VhostSigning signing = derive_vhost_signing(keys);
    EXPECT_EQ(signing.sigalgs,
              "ecdsa_secp256r1_sha256:ecdsa_secp384r1_sha384:ecdsa_secp521r1_sha512:ed25519:"
              "rsa_pkcs1_sha256:rsa_pkcs1_sha512");
    EXPECT_TRUE(signing.tls12_only);
}

std::vector<unsigned char> extension(const std::string& name, unsigned char type = 0) {
    const std::size_t entry = 3 + name.size();
    std::vector<unsigned char> bytes{static_cast<unsigned char>(entry >> 8U),
                                     static_cast<unsigned char>(entry & 0xffU), type,
                                     static_cast<unsigned char>(name.size() >> 8U),
                                     static_cast<unsigned char>(name.size() & 0xffU)};
    bytes.insert(bytes.end(), name.begin(), name.end());
    return bytes;
}

TEST(KeyCapabilitiesTest, ParsesServerName) {
    EXPECT_EQ(parse_server_name(extension("www.example.test")), "www.example.test");
    EXPECT_EQ(parse_server_name(extension("")), "");
}

TEST(KeyCapabilitiesTest, RejectsMalformedServerName) {
    std::vector<unsigned char> bytes = extension("www.example.test");
    EXPECT_FALSE(parse_server_name({bytes.data(), 1}));
    bytes[1] += 1;  // list length one more than the body
    EXPECT_FALSE(parse_server_name(bytes));
    std::vector<unsigned char> long_name = extension("abc");
    long_name[4] = 9;  // name length past the end
    long_name[1] = static_cast<unsigned char>(long_name.size() - 2);
    EXPECT_FALSE(parse_server_name(long_name));
    EXPECT_FALSE(parse_server_name(extension("abc", 7)));  // no host_name entry
    EXPECT_FALSE(parse_server_name({}));
}

}  // namespace
}  // namespace cloister::ossl
