// Tests of the key process's part of TLS 1.2 RSA key exchange: the decrypt request on the key
// channel, its codec rules, and implicit rejection. Ciphertexts are built here from raw PKCS#1
// v1.5 blocks and encrypted with the public key, so that each kind of invalid block can be
// produced on purpose.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/config.h"
#include "core/error.h"
#include "core/key_protocol.h"
#include "keyprovider/memory_key_store.h"
#include "keyprovider/premaster_decryption.h"
#include "keyprovider/request_handler.h"

namespace cloister {
namespace {

namespace fs = std::filesystem;
using keyproto::MessageType;
using keyproto::Status;
using Bytes = std::vector<std::uint8_t>;

constexpr std::uint16_t tls12 = 0x0303;
constexpr std::size_t rsa_key_index = 0;
constexpr std::size_t ec_key_index = 1;

struct PkeyDeleter {
    void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDeleter>;

struct PkeyCtxDeleter {
    void operator()(EVP_PKEY_CTX* ctx) const { EVP_PKEY_CTX_free(ctx); }
};
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, PkeyCtxDeleter>;

struct BioDeleter {
    void operator()(BIO* bio) const { BIO_free(bio); }
};
using BioPtr = std::unique_ptr<BIO, BioDeleter>;

Bytes random_bytes(std::size_t size) {
    Bytes bytes(size);
    EXPECT_EQ(RAND_bytes(bytes.data(), static_cast<int>(size)), 1);
    return bytes;
}

Bytes nonzero_random_bytes(std::size_t size) {
    Bytes bytes = random_bytes(size);
    for (std::uint8_t& byte : bytes) {
        byte = static_cast<std::uint8_t>(byte % 255 + 1);
    }
    return bytes;
}

// A TLS 1.2 premaster secret: the client version, then 46 random bytes (RFC 5246 7.4.7.1).
Bytes make_premaster(std::uint16_t version) {
    Bytes premaster = random_bytes(keyproto::premaster_secret_size);
    premaster[0] = static_cast<std::uint8_t>(version >> 8U);
    premaster[1] = static_cast<std::uint8_t>(version & 0xffU);
    return premaster;
}

// Returns 00 || block_type || nonzero padding || 00 || message, modulus_size bytes long.
Bytes pkcs1_block(std::size_t modulus_size, const Bytes& message, std::uint8_t block_type = 2) {
    Bytes block{0x00, block_type};
    const Bytes padding = nonzero_random_bytes(modulus_size - 3 - message.size());
    block.insert(block.end(), padding.begin(), padding.end());
    block.push_back(0x00);
    block.insert(block.end(), message.begin(), message.end());
    return block;
}

void write_private_key(EVP_PKEY* key, const fs::path& path) {
    const BioPtr bio(BIO_new_file(path.c_str(), "wb"));
    ASSERT_TRUE(bio) << path;
    ASSERT_EQ(PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr), 1);
}

class RsaKeyExchangeTest : public testing::Test {
  protected:
    static void SetUpTestSuite() {
        folder_ = new fs::path(fs::temp_directory_path() /
                               ("cloister-rsa-kex-test-" + std::to_string(::getpid())));
        fs::create_directories(*folder_);
        rsa_ = PkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", std::size_t{2048})).release();
        const PkeyPtr ec(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
        write_private_key(rsa_, *folder_ / "rsa.key");
        write_private_key(ec.get(), *folder_ / "ec.key");
        std::vector<KeyConfig> keys(2);
        keys[rsa_key_index].name = "rsa";
        keys[rsa_key_index].file = *folder_ / "rsa.key";
        keys[ec_key_index].name = "ec";
        keys[ec_key_index].file = *folder_ / "ec.key";
        store_ = new MemoryKeyStore(keys);
    }

    static void TearDownTestSuite() {
        delete store_;
        EVP_PKEY_free(rsa_);
        fs::remove_all(*folder_);
        delete folder_;
    }

    static std::size_t modulus_size() { return static_cast<std::size_t>(EVP_PKEY_get_size(rsa_)); }

    // Encrypts block, which must be modulus_size() bytes, with RSA and no padding.
    static Bytes raw_encrypt(const Bytes& block) {
        const PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, rsa_, nullptr));
        EXPECT_TRUE(ctx);
        EXPECT_EQ(EVP_PKEY_encrypt_init(ctx.get()), 1);
        EXPECT_EQ(EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_NO_PADDING), 1);
        Bytes ciphertext(modulus_size());
        std::size_t length = ciphertext.size();
        EXPECT_EQ(
            EVP_PKEY_encrypt(ctx.get(), ciphertext.data(), &length, block.data(), block.size()), 1);
        ciphertext.resize(length);
        return ciphertext;
    }

    static keyproto::Request decrypt_request(std::uint32_t key_index, std::uint16_t version,
                                             const Bytes& ciphertext) {
        keyproto::Request request;
        request.type = MessageType::decrypt;
        request.request_id = 77;
        request.key_index = key_index;
        request.payload = keyproto::encode_decrypt_payload({version, ciphertext});
        return request;
    }

    HandlerResult decrypt(const Bytes& ciphertext, std::uint16_t version = tls12) {
        ChannelState channel;
        return handler_.handle(decrypt_request(rsa_key_index, version, ciphertext), channel);
    }

    static HandlerOptions options_with_decryption() {
        HandlerOptions options;
        options.rsa_decryption = true;
        return options;
    }

    static fs::path* folder_;
    static EVP_PKEY* rsa_;
    static MemoryKeyStore* store_;
    RequestHandler handler_{*store_, options_with_decryption()};
};

fs::path* RsaKeyExchangeTest::folder_ = nullptr;
EVP_PKEY* RsaKeyExchangeTest::rsa_ = nullptr;
MemoryKeyStore* RsaKeyExchangeTest::store_ = nullptr;

TEST_F(RsaKeyExchangeTest, ValidBlockReturnsPremaster) {
    const Bytes premaster = make_premaster(tls12);
    const HandlerResult result = decrypt(raw_encrypt(pkcs1_block(modulus_size(), premaster)));

    EXPECT_EQ(result.response.status, Status::ok);
    EXPECT_EQ(result.response.type, MessageType::decrypt);
    EXPECT_EQ(result.response.request_id, 77U);
    EXPECT_EQ(result.response.payload, premaster);
    EXPECT_EQ(result.reason, "");
}

// Each invalid ciphertext gets what a valid one gets: status ok, 48 bytes, no reason, and an
// encoded response of the same length. The bytes are not the premaster inside the block.
TEST_F(RsaKeyExchangeTest, InvalidCiphertextsLookValid) {
    const std::size_t size = modulus_size();
    const Bytes premaster = make_premaster(tls12);
    Bytes short_padding{0x00, 0x02, 0x11, 0x22, 0x33, 0x00};
    short_padding.resize(size, 0x42);
    Bytes no_separator{0x00, 0x02};
    const Bytes filler = nonzero_random_bytes(size - 2);
    no_separator.insert(no_separator.end(), filler.begin(), filler.end());
    Bytes first_byte_set = pkcs1_block(size, premaster);
    first_byte_set[0] = 0x01;
    const Bytes long_premaster = [&] {
        Bytes message = premaster;
        message.push_back(0x55);
        return message;
    }();
    const Bytes valid = raw_encrypt(pkcs1_block(size, premaster));

    const std::vector<std::pair<std::string, Bytes>> cases{
        {"block type 1", raw_encrypt(pkcs1_block(size, premaster, 1))},
        {"first byte not zero", raw_encrypt(first_byte_set)},
        {"no zero separator", raw_encrypt(no_separator)},
        {"padding shorter than 8 bytes", raw_encrypt(short_padding)},
        {"47-byte premaster",
         raw_encrypt(pkcs1_block(size, Bytes(premaster.begin(), premaster.end() - 1)))},
        {"49-byte premaster", raw_encrypt(pkcs1_block(size, long_premaster))},
        {"empty premaster", raw_encrypt(pkcs1_block(size, {}))},
        {"version 0x0301", raw_encrypt(pkcs1_block(size, make_premaster(0x0301)))},
        {"version 0x0304", raw_encrypt(pkcs1_block(size, make_premaster(0x0304)))},
        {"ciphertext one byte short", Bytes(valid.begin() + 1, valid.end())},
        {"ciphertext one byte long",
         [&] {
             Bytes longer = valid;
             longer.push_back(0x00);
             return longer;
         }()},
        {"ciphertext not below the modulus", Bytes(size, 0xff)},
        {"one-byte ciphertext", Bytes{0x01}},
    };
    const std::size_t valid_size = keyproto::encode(decrypt(valid).response).size();
    for (const auto& [name, ciphertext] : cases) {
        SCOPED_TRACE(name);
        const HandlerResult result = decrypt(ciphertext);
        EXPECT_EQ(result.response.status, Status::ok);
        EXPECT_EQ(result.response.payload.size(), keyproto::premaster_secret_size);
        EXPECT_EQ(result.reason, "");
        EXPECT_EQ(keyproto::encode(result.response).size(), valid_size);
        EXPECT_NE(result.response.payload, premaster);
    }
}

TEST_F(RsaKeyExchangeTest, WrongVersionGetsRandomBytes) {
    // The block is valid, but the client announced another version than the premaster
    // contains.
    const Bytes premaster = make_premaster(tls12);
    const Bytes ciphertext = raw_encrypt(pkcs1_block(modulus_size(), premaster));

    const HandlerResult result = decrypt(ciphertext, 0x0302);

    EXPECT_EQ(result.response.status, Status::ok);
    EXPECT_EQ(result.response.payload.size(), keyproto::premaster_secret_size);
    EXPECT_NE(result.response.payload, premaster);
}

TEST_F(RsaKeyExchangeTest, BadPaddingGetsFreshRandomBytes) {
    const Bytes ciphertext = raw_encrypt(pkcs1_block(modulus_size(), make_premaster(tls12), 1));

    const Bytes first = decrypt(ciphertext).response.payload;
    const Bytes second = decrypt(ciphertext).response.payload;

    EXPECT_EQ(first.size(), keyproto::premaster_secret_size);
    EXPECT_NE(first, second);
    EXPECT_NE(first, Bytes(keyproto::premaster_secret_size, 0));
}

TEST_F(RsaKeyExchangeTest, DecryptFunctionMatchesStore) {
    const Bytes premaster = make_premaster(tls12);
    const Bytes ciphertext = raw_encrypt(pkcs1_block(modulus_size(), premaster));

    EXPECT_EQ(decrypt_premaster_secret(rsa_, tls12, ciphertext), premaster);
    EXPECT_EQ(store_->decrypt_premaster_secret(rsa_key_index, tls12, ciphertext), premaster);
}

TEST_F(RsaKeyExchangeTest, DecryptCountsAsTheOperation) {
    const Bytes ciphertext = raw_encrypt(pkcs1_block(modulus_size(), make_premaster(tls12)));
    ChannelState channel;
    const auto request = decrypt_request(rsa_key_index, tls12, ciphertext);

    EXPECT_EQ(handler_.handle(request, channel).response.status, Status::ok);
    EXPECT_EQ(channel.operations, 1U);
    const HandlerResult second = handler_.handle(request, channel);
    EXPECT_EQ(second.response.status, Status::quota_exceeded);
    EXPECT_TRUE(second.response.payload.empty());
    EXPECT_EQ(channel.operations, 1U);
}

TEST_F(RsaKeyExchangeTest, DecryptAfterSignExceedsQuota) {
    keyproto::Request sign;
    sign.type = MessageType::sign;
    sign.scheme = static_cast<std::uint16_t>(keyproto::SignatureScheme::rsa_pss_rsae_sha256);
    sign.key_index = rsa_key_index;
    sign.payload.assign(64, 0x20);
    const std::string context = "TLS 1.3, server CertificateVerify";
    sign.payload.insert(sign.payload.end(), context.begin(), context.end());
    sign.payload.push_back(0x00);
    sign.payload.resize(sign.payload.size() + 32, 0xab);
    ChannelState channel;
    ASSERT_EQ(handler_.handle(sign, channel).response.status, Status::ok);

    const Bytes ciphertext = raw_encrypt(pkcs1_block(modulus_size(), make_premaster(tls12)));
    const HandlerResult result =
        handler_.handle(decrypt_request(rsa_key_index, tls12, ciphertext), channel);

    EXPECT_EQ(result.response.status, Status::quota_exceeded);
}

TEST_F(RsaKeyExchangeTest, UnlimitedChannelHasNoQuota) {
    const Bytes ciphertext = raw_encrypt(pkcs1_block(modulus_size(), make_premaster(tls12)));
    ChannelState channel;
    channel.unlimited = true;
    const auto request = decrypt_request(rsa_key_index, tls12, ciphertext);

    for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(handler_.handle(request, channel).response.status, Status::ok);
    }
}

TEST_F(RsaKeyExchangeTest, RejectedWhenOptionOff) {
    const RequestHandler handler(*store_, HandlerOptions{});
    const Bytes ciphertext = raw_encrypt(pkcs1_block(modulus_size(), make_premaster(tls12)));
    ChannelState channel;

    const HandlerResult result =
        handler.handle(decrypt_request(rsa_key_index, tls12, ciphertext), channel);

    EXPECT_EQ(result.response.status, Status::refused);
    EXPECT_TRUE(result.response.payload.empty());
    EXPECT_EQ(result.reason, "RSA key exchange is off ([tls] rsa-key-exchange = false)");
    EXPECT_EQ(channel.operations, 0U);
}

TEST_F(RsaKeyExchangeTest, EcKeyCannotDecrypt) {
    ChannelState channel;
    const HandlerResult result =
        handler_.handle(decrypt_request(ec_key_index, tls12, Bytes(64, 0x01)), channel);

    EXPECT_EQ(result.response.status, Status::unsupported_scheme);
    EXPECT_EQ(result.reason, "EC key 'ec' cannot decrypt");
    EXPECT_EQ(channel.operations, 0U);
    EXPECT_THROW(
        static_cast<void>(store_->decrypt_premaster_secret(ec_key_index, tls12, Bytes(64, 0x01))),
        Error);
}

TEST_F(RsaKeyExchangeTest, UnknownKeyIndex) {
    ChannelState channel;
    const HandlerResult result =
        handler_.handle(decrypt_request(7, tls12, Bytes(256, 0x01)), channel);

    EXPECT_EQ(result.response.status, Status::unknown_key);
    EXPECT_EQ(result.reason, "key index 7 does not exist (2 keys loaded)");
}

// --- The decrypt request on the wire ---

TEST(DecryptCodec, RoundTrip) {
    keyproto::Request request;
    request.type = MessageType::decrypt;
    request.request_id = 9;
    request.key_index = 2;
    const Bytes ciphertext(256, 0x5a);
    request.payload = keyproto::encode_decrypt_payload({0x0303, ciphertext});

    const Bytes datagram = keyproto::encode(request);
    ASSERT_EQ(datagram.size(), keyproto::request_header_size + 2 + 256);
    EXPECT_EQ(datagram[1], 3);      // type decrypt
    EXPECT_EQ(datagram[16], 0x03);  // client_version, little-endian
    EXPECT_EQ(datagram[17], 0x03);
    const auto decoded = keyproto::decode_request(datagram);
    ASSERT_TRUE(decoded) << decoded.error;
    EXPECT_EQ(decoded.value->type, MessageType::decrypt);
    const keyproto::DecryptInput input = keyproto::parse_decrypt_payload(decoded.value->payload);
    EXPECT_EQ(input.client_version, 0x0303);
    EXPECT_EQ(Bytes(input.ciphertext.begin(), input.ciphertext.end()), ciphertext);
}

std::string decode_error(std::uint16_t scheme, std::uint16_t version, std::size_t ciphertext) {
    keyproto::Request request;
    request.type = MessageType::decrypt;
    request.scheme = scheme;
    request.payload = keyproto::encode_decrypt_payload({version, Bytes(ciphertext, 0x01)});
    const auto decoded = keyproto::decode_request(keyproto::encode(request));
    return decoded ? "accepted" : decoded.error;
}

TEST(DecryptCodec, Rejections) {
    EXPECT_EQ(decode_error(0, 0x0303, 512), "accepted");
    EXPECT_EQ(decode_error(0, 0x0300, 1), "accepted");
    EXPECT_EQ(decode_error(0x0401, 0x0303, 256), "decrypt request with non-zero scheme 0x0401");
    EXPECT_EQ(decode_error(0, 0x0303, 0),
              "decrypt request with a 2-byte payload (expected 3 to 514)");
    EXPECT_EQ(decode_error(0, 0x0303, 513),
              "decrypt request with a 515-byte payload (expected 3 to 514)");
    EXPECT_EQ(decode_error(0, 0x0403, 256),
              "decrypt request with client_version 0x0403 (expected 0x03xx)");
    EXPECT_EQ(decode_error(0, 0x0000, 256),
              "decrypt request with client_version 0x0000 (expected 0x03xx)");
}

TEST(DecryptCodec, ShortPayloadRejected) {
    // One byte: not even the client version.
    keyproto::Request request;
    request.type = MessageType::decrypt;
    request.payload = {0x03};
    const auto decoded = keyproto::decode_request(keyproto::encode(request));
    ASSERT_FALSE(decoded);
    EXPECT_EQ(decoded.error, "decrypt request with a 1-byte payload (expected 3 to 514)");
    EXPECT_THROW(static_cast<void>(keyproto::parse_decrypt_payload(request.payload)), Error);
}

TEST(DecryptCodec, MalformedResponseKeepsType) {
    keyproto::Request request;
    request.type = MessageType::decrypt;
    request.request_id = 5;
    Bytes datagram = keyproto::encode(request);

    const keyproto::Response response = keyproto::malformed_response(datagram);

    EXPECT_EQ(response.type, MessageType::decrypt);
    EXPECT_EQ(response.request_id, 5U);
    EXPECT_EQ(response.status, Status::malformed);
}

TEST(DecryptCodec, TypeName) {
    EXPECT_STREQ(keyproto::to_string(MessageType::decrypt), "decrypt");
}

}  // namespace
}  // namespace cloister
