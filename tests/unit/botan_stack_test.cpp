// Tests for the Botan stack's pieces that need no key process: the mapping from Botan's
// padding names to TLS signature schemes, the [tls] settings as a Botan policy, the public-only
// key, and the ALPN selection that both stacks share.
#include <botan/auto_rng.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/pubkey.h>
#include <botan/tls_algos.h>
#include <botan/tls_ciphersuite.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backends/botan/policy.h"
#include "backends/botan/public_only_key.h"
#include "backends/botan/signing.h"
#include "core/alpn.h"
#include "core/config.h"
#include "core/error.h"

namespace cloister::botan {
namespace {

using Botan::TLS::Group_Params;
using Botan::TLS::Signature_Scheme;

std::uint16_t code(Signature_Scheme scheme) {
    return static_cast<std::uint16_t>(scheme);
}

TEST(SchemeForPadding, RsaSchemes) {
    for (const Signature_Scheme scheme :
         {Signature_Scheme::RSA_PSS_SHA256, Signature_Scheme::RSA_PSS_SHA384,
          Signature_Scheme::RSA_PSS_SHA512, Signature_Scheme::RSA_PKCS1_SHA256,
          Signature_Scheme::RSA_PKCS1_SHA384, Signature_Scheme::RSA_PKCS1_SHA512}) {
        const std::string padding = Botan::TLS::padding_string_for_scheme(scheme);
        EXPECT_EQ(scheme_for_padding("RSA", padding), code(scheme)) << padding;
    }
}

TEST(SchemeForPadding, PssNamesRsaeCodePoints) {
    EXPECT_EQ(scheme_for_padding("RSA", "PSSR(SHA-256,MGF1,32)"), 0x0804);
    EXPECT_EQ(scheme_for_padding("RSA", "PSSR(SHA-512,MGF1,64)"), 0x0806);
    EXPECT_EQ(scheme_for_padding("RSA", "EMSA_PKCS1(SHA-256)"), 0x0401);
}

TEST(SchemeForPadding, EcdsaSchemes) {
    EXPECT_EQ(scheme_for_padding("ECDSA", "EMSA1(SHA-256)"), 0x0403);
    EXPECT_EQ(scheme_for_padding("ECDSA", "EMSA1(SHA-384)"), 0x0503);
    EXPECT_EQ(scheme_for_padding("ECDSA", "EMSA1(SHA-512)"), 0x0603);
}

TEST(SchemeForPadding, MismatchRejected) {
    EXPECT_THROW(scheme_for_padding("ECDSA", "PSSR(SHA-256,MGF1,32)"), Error);
    EXPECT_THROW(scheme_for_padding("RSA", "EMSA1(SHA-256)"), Error);
    EXPECT_THROW(scheme_for_padding("Ed25519", "Pure"), Error);
    EXPECT_THROW(scheme_for_padding("RSA", "PSSR(SHA-256,MGF1,20)"), Error);
}

Config tls_config() {
    Config config;
    config.source = "/etc/cloister/cloister.toml";
    return config;
}

bool lists(const std::vector<std::uint16_t>& suites, std::uint16_t suite) {
    return std::find(suites.begin(), suites.end(), suite) != suites.end();
}

TEST(ConfigPolicy, DefaultSuitesAreEphemeralAead) {
    const ConfigPolicy policy(tls_config());
    const auto suites = policy.ciphersuite_list(Botan::TLS::Protocol_Version::TLS_V12, false);
    ASSERT_FALSE(suites.empty());
    EXPECT_TRUE(lists(suites, 0xC02F));  // ECDHE_RSA_WITH_AES_128_GCM_SHA256
    EXPECT_TRUE(lists(suites, 0xC02B));  // ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    EXPECT_TRUE(lists(suites, 0xCCA8));  // ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
    for (const std::uint16_t suite : suites) {
        const auto info = Botan::TLS::Ciphersuite::by_id(suite);
        EXPECT_EQ(info.kex_method(), Botan::TLS::Kex_Algo::ECDH) << info.to_string();
        EXPECT_EQ(info.mac_algo(), "AEAD") << info.to_string();
    }
    EXPECT_TRUE(policy.skipped().empty());
}

TEST(ConfigPolicy, RsaKeyExchangeSuiteLeftOut) {
    Config config = tls_config();
    config.tls.ciphers = "ECDHE+AESGCM:AES128-GCM-SHA256";
    const ConfigPolicy policy(config);
    const auto suites = policy.ciphersuite_list(Botan::TLS::Protocol_Version::TLS_V12, false);
    EXPECT_FALSE(lists(suites, 0x009C));  // RSA_WITH_AES_128_GCM_SHA256
    EXPECT_TRUE(lists(suites, 0xC02F));
}

TEST(ConfigPolicy, RsaKeyExchangeOptionRejected) {
    Config config = tls_config();
    config.tls.rsa_key_exchange = true;
    try {
        const ConfigPolicy policy(config);
        ADD_FAILURE() << "rsa_key_exchange accepted";
    } catch (const Error& error) {
        EXPECT_EQ(error.kind(), ErrorKind::config);
        EXPECT_EQ(std::string(error.what()),
                  "/etc/cloister/cloister.toml: [tls] rsa-key-exchange = true: tls-backend "
                  "\"botan\" has no RSA key exchange; expected false, or tls-backend = "
                  "\"openssl\"");
    }
}

TEST(ConfigPolicy, GroupsKeepTheirOrder) {
    Config config = tls_config();
    config.tls.groups = "P-384:X448:x25519:prime256v1";
    const ConfigPolicy policy(config);
    EXPECT_EQ(policy.key_exchange_groups(),
              (std::vector<Group_Params>{Group_Params::SECP384R1, Group_Params::X25519,
                                         Group_Params::SECP256R1}));
    EXPECT_EQ(policy.skipped(), std::vector<std::string>{"group X448"});
}

TEST(ConfigPolicy, InvalidListsRejected) {
    Config config = tls_config();
    config.tls.ciphers = "NO-SUCH-CIPHER";
    EXPECT_THROW(ConfigPolicy{config}, Error);
    config = tls_config();
    config.tls.groups = "P-999";
    EXPECT_THROW(ConfigPolicy{config}, Error);
    config = tls_config();
    config.tls.groups = "X448";
    EXPECT_THROW(ConfigPolicy{config}, Error);
}

TEST(ConfigPolicy, Tls12OnlyWithoutRenegotiation) {
    Config config = tls_config();
    config.tls.prefer_server_ciphers = false;
    const ConfigPolicy policy(config);
    EXPECT_TRUE(policy.acceptable_protocol_version(Botan::TLS::Protocol_Version::TLS_V12));
    EXPECT_FALSE(policy.acceptable_protocol_version(Botan::TLS::Protocol_Version::TLS_V11));
    EXPECT_FALSE(policy.acceptable_protocol_version(Botan::TLS::Protocol_Version::DTLS_V12));
    EXPECT_FALSE(policy.allow_client_initiated_renegotiation());
    EXPECT_FALSE(policy.server_uses_own_ciphersuite_preferences());
    EXPECT_EQ(policy.allowed_signature_schemes().front(), Signature_Scheme::ECDSA_SHA256);
}

TEST(PublicOnlyKey, HasNoPrivateHalf) {
    Botan::AutoSeeded_RNG random;
    const Botan::ECDSA_PrivateKey full(random, Botan::EC_Group("secp256r1"));
    const PublicOnlyKey key(std::make_unique<Botan::ECDSA_PublicKey>(full), 7);
    EXPECT_EQ(key.algo_name(), "ECDSA");
    EXPECT_EQ(key.key_index(), 7U);
    EXPECT_EQ(key.public_key_bits(), full.public_key_bits());
    EXPECT_EQ(key.message_parts(), 2U);
    EXPECT_THROW(static_cast<void>(key.private_key_bits()), Error);
    // Botan's own signer finds no signature operation in the key.
    EXPECT_ANY_THROW(Botan::PK_Signer(key, random, "EMSA1(SHA-256)", Botan::DER_SEQUENCE));
}

const std::vector<std::string> http11{"http/1.1"};

TEST(AlpnSelect, ServerOrderWins) {
    const std::vector<std::string> served{"h2", "http/1.1"};
    const std::vector<std::string> offered{"http/1.1", "h2"};
    EXPECT_EQ(select_alpn(served, offered, AlpnMismatch::reject).protocol, "h2");
}

TEST(AlpnSelect, MismatchPolicies) {
    const std::vector<std::string> offered{"h2"};
    const AlpnSelection proceed = select_alpn(http11, offered, AlpnMismatch::continue_without_alpn);
    EXPECT_EQ(proceed.protocol, "");
    EXPECT_FALSE(proceed.reject);
    const AlpnSelection reject = select_alpn(http11, offered, AlpnMismatch::reject);
    EXPECT_EQ(reject.protocol, "");
    EXPECT_TRUE(reject.reject);
}

TEST(AlpnSelect, NothingToMatch) {
    const std::vector<std::string> none;
    const std::vector<std::string> offered{"h2"};
    EXPECT_FALSE(select_alpn(http11, none, AlpnMismatch::reject).reject);
    EXPECT_FALSE(select_alpn(none, offered, AlpnMismatch::reject).reject);
    EXPECT_EQ(select_alpn(none, offered, AlpnMismatch::reject).protocol, "");
}

TEST(AlpnDescribe, EscapesBytes) {
    const std::vector<std::string> protocols{"h2", std::string("a\x01\"b")};
    EXPECT_EQ(describe_alpn(protocols), R"(["h2", "a\x01\x22b"])");
}

}  // namespace
}  // namespace cloister::botan
