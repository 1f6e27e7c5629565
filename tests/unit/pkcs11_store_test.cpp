// The PKCS#11 key store against a real SoftHSM 2 token in a temporary directory: signing with
// every mechanism, what keys may sign with, PINs, the error messages, and reopening lost
// sessions. Skipped when softhsm2-util, pkcs11-tool or the SoftHSM module is missing.
#include <dlfcn.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "keyprovider/request_handler.h"
#include "pkcs11/cryptoki.h"
#include "pkcs11/pkcs11_key_store.h"

namespace cloister::pkcs11 {
namespace {

using keyproto::SignatureScheme;
using ::testing::HasSubstr;
using ::testing::Not;
using Bytes = std::vector<std::uint8_t>;

constexpr const char* softhsm_module = "/usr/lib/softhsm/libsofthsm2.so";
constexpr const char* user_pin = "1234";
// A PIN with every character that breaks naive URI or shell handling, and a non-ASCII one.
constexpr const char* awkward_pin =
    "pa;ss%2F?&\xc3\xa9"
    "1";

struct PkeyDeleter {
    void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
struct MdCtxDeleter {
    void operator()(EVP_MD_CTX* context) const { EVP_MD_CTX_free(context); }
};
struct SigDeleter {
    void operator()(ECDSA_SIG* signature) const { ECDSA_SIG_free(signature); }
};

// A TLS 1.3 server CertificateVerify input with a SHA-256 transcript hash: what the key process
// signs in practice.
Bytes tls13_input(std::uint8_t seed) {
    Bytes input(64, 0x20);
    const std::string context = "TLS 1.3, server CertificateVerify";
    input.insert(input.end(), context.begin(), context.end());
    input.push_back(0);
    for (int i = 0; i < 32; ++i) {
        input.push_back(static_cast<std::uint8_t>(seed + i));
    }
    return input;
}

const char* digest_of(SignatureScheme scheme) {
    switch (scheme) {
        case SignatureScheme::rsa_pss_rsae_sha384:
        case SignatureScheme::rsa_pkcs1_sha384:
        case SignatureScheme::ecdsa_secp384r1_sha384:
            return "SHA384";
        case SignatureScheme::rsa_pss_rsae_sha512:
        case SignatureScheme::rsa_pkcs1_sha512:
        case SignatureScheme::ecdsa_secp521r1_sha512:
            return "SHA512";
        case SignatureScheme::ed25519:
            return nullptr;
        default:
            return "SHA256";
    }
}

bool is_pss(SignatureScheme scheme) {
    return scheme == SignatureScheme::rsa_pss_rsae_sha256 ||
           scheme == SignatureScheme::rsa_pss_rsae_sha384 ||
           scheme == SignatureScheme::rsa_pss_rsae_sha512;
}

// Verifies with OpenSSL alone, independent of the code under test.
bool verifies(const Bytes& public_key_der, SignatureScheme scheme, const Bytes& message,
              const Bytes& signature) {
    const unsigned char* in = public_key_der.data();
    const std::unique_ptr<EVP_PKEY, PkeyDeleter> key(
        d2i_PUBKEY(nullptr, &in, static_cast<long>(public_key_der.size())));
    const std::unique_ptr<EVP_MD_CTX, MdCtxDeleter> context(EVP_MD_CTX_new());
    EVP_PKEY_CTX* key_context = nullptr;
    if (!key || EVP_DigestVerifyInit_ex(context.get(), &key_context, digest_of(scheme), nullptr,
                                        nullptr, key.get(), nullptr) != 1) {
        return false;
    }
    if (is_pss(scheme) &&
        (EVP_PKEY_CTX_set_rsa_padding(key_context, RSA_PKCS1_PSS_PADDING) != 1 ||
         EVP_PKEY_CTX_set_rsa_pss_saltlen(key_context, RSA_PSS_SALTLEN_DIGEST) != 1)) {
        return false;
    }
    return EVP_DigestVerify(context.get(), signature.data(), signature.size(), message.data(),
                            message.size()) == 1;
}

class SoftHsmStoreTest : public ::testing::Test {
  protected:
    void SetUp() override {
        if (!std::filesystem::exists(softhsm_module) ||
            std::system("command -v softhsm2-util pkcs11-tool openssl >/dev/null") != 0) {
            GTEST_SKIP() << "softhsm2 or pkcs11-tool (opensc) is not installed";
        }
        std::string pattern = std::filesystem::temp_directory_path() / "cloister-p11-XXXXXX";
        ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
        dir_ = pattern;
        std::filesystem::create_directory(dir_ / "tokens");
        write_softhsm_conf("");
        ::setenv("SOFTHSM2_CONF", (dir_ / "softhsm2.conf").c_str(), 1);
        init_token("cloister", user_pin);
    }

    void TearDown() override {
        ::unsetenv("SOFTHSM2_CONF");
        if (!dir_.empty()) {
            std::error_code ignored;
            std::filesystem::remove_all(dir_, ignored);
        }
    }

    void write_softhsm_conf(const std::string& extra) {
        std::ofstream(dir_ / "softhsm2.conf")
            << "directories.tokendir = " << (dir_ / "tokens").string()
            << "\nobjectstore.backend = file\nlog.level = ERROR\n"
            << extra;
    }

    static std::string quote(const std::string& text) {
        std::string quoted = "'";
        for (const char c : text) {
            quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
        }
        return quoted + "'";
    }

    static void run(const std::string& command) {
        ASSERT_EQ(std::system((command + " >/dev/null 2>&1").c_str()), 0) << command;
    }

    void init_token(const std::string& label, const std::string& pin) {
        run("softhsm2-util --init-token --free --label " + quote(label) +
            " --so-pin 87654321 --pin " + quote(pin));
    }

    // Makes a key with openssl and imports it (private and public object) with the given id.
    void import_key(const std::string& label, const std::string& hex_id, const std::string& type,
                    const std::string& token = "cloister", const std::string& pin = user_pin) {
        const std::filesystem::path pem = dir_ / (token + "-" + hex_id + ".pem");
        const std::string algorithm =
            type == "rsa"    ? "-algorithm RSA -pkeyopt rsa_keygen_bits:2048"
            : type == "p256" ? "-algorithm EC -pkeyopt ec_paramgen_curve:P-256"
            : type == "p384" ? "-algorithm EC -pkeyopt ec_paramgen_curve:P-384"
                             : "-algorithm ED25519";
        run("openssl genpkey " + algorithm + " -out " + pem.string());
        run("softhsm2-util --import " + pem.string() + " --token " + quote(token) + " --label " +
            quote(label) + " --id " + hex_id + " --pin " + quote(pin));
    }

    // Generates an RSA key pair on the token with CKA_ALLOWED_MECHANISMS set.
    void generate_restricted(const std::string& label, const std::string& hex_id,
                             const std::string& allowed) {
        run(std::string("pkcs11-tool --module ") + softhsm_module +
            " --token-label cloister --login --pin " + user_pin +
            " --keypairgen --key-type rsa:2048 --label " + label + " --id " + hex_id +
            " --allowed-mechanisms " + allowed);
    }

    std::filesystem::path pin_file(const std::string& content, mode_t mode = 0600,
                                   const std::string& name = "pin") {
        const std::filesystem::path path = dir_ / name;
        std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
        ::chmod(path.c_str(), mode);
        return path;
    }

    KeyConfig key(const std::string& name, const std::string& uri) {
        KeyConfig config;
        config.name = name;
        config.uri = uri;
        config.module = softhsm_module;
        config.pin_file = pin_file(std::string(user_pin) + "\n");
        return config;
    }

    // Returns the Error(config) message of loading keys, or fails the test.
    static std::string load_error(const std::vector<KeyConfig>& keys) {
        try {
            const Pkcs11KeyStore store(keys, 1);
        } catch (const Error& error) {
            EXPECT_EQ(error.kind(), ErrorKind::config);
            return error.what();
        }
        ADD_FAILURE() << "the store loaded";
        return {};
    }

    void expect_signs_every_scheme(const Pkcs11KeyStore& store, std::size_t index) {
        const std::vector<std::uint16_t> schemes = store.supported_schemes(index);
        ASSERT_FALSE(schemes.empty());
        for (const std::uint16_t code : schemes) {
            const auto scheme = static_cast<SignatureScheme>(code);
            const Bytes message = tls13_input(static_cast<std::uint8_t>(code));
            const Bytes signature = store.sign(index, scheme, message);
            EXPECT_TRUE(verifies(store.public_key(index), scheme, message, signature))
                << store.key_name(index) << " scheme 0x" << std::hex << code;
        }
    }

    std::filesystem::path dir_;
};

TEST_F(SoftHsmStoreTest, SignsEveryKeyTypeAndScheme) {
    import_key("rsa", "01", "rsa");
    import_key("p256", "02", "p256");
    import_key("p384", "03", "p384");
    import_key("ed", "04", "ed25519");
    const Pkcs11KeyStore store(
        {key("rsa", "pkcs11:token=cloister;object=rsa;type=private"),
         key("p256", "pkcs11:token=cloister;id=%02"), key("p384", "pkcs11:object=p384"),
         key("ed", "pkcs11:token=cloister;object=ed;id=%04")},
        2);
    ASSERT_EQ(store.size(), 4U);
    EXPECT_EQ(store.key_type(0), KeyType::rsa);
    EXPECT_EQ(store.key_type(1), KeyType::ec);
    EXPECT_EQ(store.key_type(2), KeyType::ec);
    EXPECT_EQ(store.key_type(3), KeyType::ed25519);
    EXPECT_EQ(store.supported_schemes(0),
              (std::vector<std::uint16_t>{0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601}));
    EXPECT_EQ(store.supported_schemes(3), (std::vector<std::uint16_t>{0x0807}));
    for (std::size_t i = 0; i < store.size(); ++i) {
        expect_signs_every_scheme(store, i);
    }
}

TEST_F(SoftHsmStoreTest, ManyEcdsaSignaturesVerify) {
    import_key("p256", "02", "p256");
    const Pkcs11KeyStore store({key("p256", "pkcs11:object=p256")}, 1);
    int short_halves = 0;
    for (int i = 0; i < 2000; ++i) {
        const Bytes message = tls13_input(static_cast<std::uint8_t>(i));
        const Bytes signature = store.sign(0, SignatureScheme::ecdsa_secp256r1_sha256, message);
        ASSERT_TRUE(verifies(store.public_key(0), SignatureScheme::ecdsa_secp256r1_sha256, message,
                             signature))
            << "signature " << i;
        const unsigned char* in = signature.data();
        const std::unique_ptr<ECDSA_SIG, SigDeleter> parsed(
            d2i_ECDSA_SIG(nullptr, &in, static_cast<long>(signature.size())));
        ASSERT_TRUE(parsed);
        short_halves += BN_num_bytes(ECDSA_SIG_get0_r(parsed.get())) < 32 ||
                                BN_num_bytes(ECDSA_SIG_get0_s(parsed.get())) < 32
                            ? 1
                            : 0;
    }
    // About 16 of 2000 signatures have an r or s with a leading zero byte.
    EXPECT_GT(short_halves, 0);
}

TEST_F(SoftHsmStoreTest, Pkcs1OnlyKeyServesNoPss) {
    generate_restricted("v15only", "04", "RSA-PKCS,SHA256-RSA-PKCS");
    const Pkcs11KeyStore store({key("v15", "pkcs11:object=v15only")}, 1);
    EXPECT_EQ(store.supported_schemes(0), (std::vector<std::uint16_t>{0x0401, 0x0501, 0x0601}));
    expect_signs_every_scheme(store, 0);
    EXPECT_THROW(
        static_cast<void>(store.sign(0, SignatureScheme::rsa_pss_rsae_sha256, tls13_input(1))),
        Error);
}

TEST_F(SoftHsmStoreTest, HandlerReportsAndEnforcesSchemes) {
    generate_restricted("v15only", "04", "RSA-PKCS,SHA256-RSA-PKCS");
    const Pkcs11KeyStore store({key("v15", "pkcs11:object=v15only")}, 1);
    const RequestHandler handler(store, HandlerOptions{});

    ChannelState channel;
    const HandlerResult info =
        handler.handle({keyproto::MessageType::key_info, 0, 1, 0, {}}, channel);
    ASSERT_EQ(info.response.status, keyproto::Status::ok) << info.reason;
    EXPECT_EQ(*keyproto::decode_key_info(info.response.payload).value,
              (std::vector<std::uint16_t>{0x0401, 0x0501, 0x0601}));

    // A TLS 1.3 CertificateVerify input with RSA-PSS passes the signing policy, but the key
    // cannot sign PSS: unsupported_scheme, and the token is never asked.
    const HandlerResult pss =
        handler.handle({keyproto::MessageType::sign, 0x0804, 2, 0, tls13_input(1)}, channel);
    EXPECT_EQ(pss.response.status, keyproto::Status::unsupported_scheme);
    EXPECT_THAT(pss.reason, HasSubstr("cannot sign rsa_pss_rsae_sha256"));
    EXPECT_EQ(channel.operations, 0U);

    // TLS 1.2 ServerKeyExchange parameters (x25519) with PKCS#1 v1.5 are signed.
    Bytes ske(64, 0x5a);
    ske.insert(ske.end(), {3, 0x00, 0x1d, 32});
    ske.insert(ske.end(), 32, 0x11);
    const HandlerResult pkcs1 =
        handler.handle({keyproto::MessageType::sign, 0x0401, 3, 0, ske}, channel);
    ASSERT_EQ(pkcs1.response.status, keyproto::Status::ok) << pkcs1.reason;
    EXPECT_TRUE(verifies(store.public_key(0), SignatureScheme::rsa_pkcs1_sha256, ske,
                         pkcs1.response.payload));
}

TEST_F(SoftHsmStoreTest, PssOnlyKeyServesPss) {
    generate_restricted("pssonly", "03", "RSA-PKCS-PSS,SHA256-RSA-PKCS-PSS");
    const Pkcs11KeyStore store({key("pss", "pkcs11:id=%03")}, 1);
    EXPECT_EQ(store.supported_schemes(0), (std::vector<std::uint16_t>{0x0804, 0x0805, 0x0806}));
    expect_signs_every_scheme(store, 0);
}

TEST_F(SoftHsmStoreTest, TokenWithoutPssMechanism) {
    import_key("rsa", "01", "rsa");
    // SoftHSM 2.6.1 keeps the '-' of a negative list in the first name, so that name is a
    // placeholder that matches no mechanism.
    write_softhsm_conf(
        "slots.mechanisms = -,CKM_RSA_PKCS_PSS,CKM_SHA1_RSA_PKCS_PSS,CKM_SHA224_RSA_PKCS_PSS,"
        "CKM_SHA256_RSA_PKCS_PSS,CKM_SHA384_RSA_PKCS_PSS,CKM_SHA512_RSA_PKCS_PSS\n");
    const Pkcs11KeyStore store({key("rsa", "pkcs11:object=rsa")}, 1);
    EXPECT_EQ(store.supported_schemes(0), (std::vector<std::uint16_t>{0x0401, 0x0501, 0x0601}));
}

TEST_F(SoftHsmStoreTest, ConcurrentSignersShareTheSessionPool) {
    import_key("rsa", "01", "rsa");
    const Pkcs11KeyStore store({key("rsa", "pkcs11:object=rsa")}, 4);
    std::atomic<int> good{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&store, &good, t] {
            for (int i = 0; i < 25; ++i) {
                const Bytes message = tls13_input(static_cast<std::uint8_t>(t * 25 + i));
                const Bytes signature =
                    store.sign(0, SignatureScheme::rsa_pss_rsae_sha256, message);
                good += verifies(store.public_key(0), SignatureScheme::rsa_pss_rsae_sha256, message,
                                 signature)
                            ? 1
                            : 0;
            }
        });
    }
    for (std::thread& thread : threads) {
        thread.join();
    }
    EXPECT_EQ(good.load(), 100);
}

TEST_F(SoftHsmStoreTest, ReopensAfterLostSessions) {
    import_key("p256", "02", "p256");
    const Pkcs11KeyStore store({key("p256", "pkcs11:object=p256")}, 2);
    ASSERT_FALSE(store.sign(0, SignatureScheme::ecdsa_secp256r1_sha256, tls13_input(1)).empty());

    // Close every session of this process behind the store's back, as a token that was
    // removed and inserted again would. That also ends the login.
    void* module = ::dlopen(softhsm_module, RTLD_NOW | RTLD_NOLOAD);
    ASSERT_NE(module, nullptr);
    auto* get_list = reinterpret_cast<CK_C_GetFunctionList>(::dlsym(module, "C_GetFunctionList"));
    CK_FUNCTION_LIST* api = nullptr;
    ASSERT_EQ(get_list(&api), CKR_OK);
    CK_ULONG count = 4;
    std::vector<CK_SLOT_ID> slots(count);
    ASSERT_EQ(api->C_GetSlotList(CK_TRUE, slots.data(), &count), CKR_OK);
    for (CK_ULONG i = 0; i < count; ++i) {
        api->C_CloseAllSessions(slots[i]);
    }
    ::dlclose(module);

    try {
        static_cast<void>(store.sign(0, SignatureScheme::ecdsa_secp256r1_sha256, tls13_input(2)));
        ADD_FAILURE() << "signing on a closed session succeeded";
    } catch (const Error& error) {
        EXPECT_EQ(error.kind(), ErrorKind::crypto);
        EXPECT_THAT(error.what(), HasSubstr("CKR_SESSION_HANDLE_INVALID"));
    }
    // The next request reopens the sessions, logs in again and finds the key again.
    const Bytes message = tls13_input(3);
    const Bytes signature = store.sign(0, SignatureScheme::ecdsa_secp256r1_sha256, message);
    EXPECT_TRUE(
        verifies(store.public_key(0), SignatureScheme::ecdsa_secp256r1_sha256, message, signature));
}

TEST_F(SoftHsmStoreTest, NonAsciiPinFromFileAndUri) {
    init_token("pintest", awkward_pin);
    import_key("web key/1", "01", "p256", "pintest", awkward_pin);
    const std::string uri = "pkcs11:token=pintest;object=web%20key%2F1;type=private";

    KeyConfig from_file = key("a", uri);
    from_file.pin_file = pin_file(awkward_pin, 0600, "pin-no-newline");
    KeyConfig from_file_newline = key("b", uri);
    from_file_newline.pin_file = pin_file(std::string(awkward_pin) + "\n", 0400, "pin-newline");
    for (const KeyConfig& config : {from_file, from_file_newline}) {
        const Pkcs11KeyStore store({config}, 1);
        EXPECT_FALSE(
            store.sign(0, SignatureScheme::ecdsa_secp256r1_sha256, tls13_input(1)).empty());
    }

    KeyConfig from_uri = key("c", uri + "?pin-value=pa%3Bss%252F%3F%26%C3%A91");
    from_uri.pin_file.reset();
    const Pkcs11KeyStore store({from_uri}, 1);
    EXPECT_FALSE(store.sign(0, SignatureScheme::ecdsa_secp256r1_sha256, tls13_input(2)).empty());
}

TEST_F(SoftHsmStoreTest, WrongPinIsAClearErrorWithoutRetry) {
    import_key("p256", "02", "p256");
    KeyConfig config = key("p256", "pkcs11:object=p256");
    // Two newlines: only the last is stripped, so the PIN is "1234\n".
    config.pin_file = pin_file("1234\n\n");
    const std::string message = load_error({config});
    EXPECT_THAT(message, HasSubstr("key 'p256' (pkcs11:object=p256)"));
    EXPECT_THAT(message, HasSubstr("login to token 'cloister' failed: CKR_PIN_INCORRECT"));
    EXPECT_THAT(message, HasSubstr("does not retry"));
    EXPECT_THAT(message, Not(HasSubstr("1234")));
}

TEST_F(SoftHsmStoreTest, PinFileReadableByOthersIsRejected) {
    import_key("p256", "02", "p256");
    KeyConfig config = key("p256", "pkcs11:object=p256");
    config.pin_file = pin_file("1234", 0644);
    EXPECT_THAT(load_error({config}),
                HasSubstr("group or others have access (mode 0644); run chmod 600"));
    config.pin_file = pin_file("1234", 0640);
    EXPECT_THAT(load_error({config}), HasSubstr("(mode 0640)"));
    config.pin_file = pin_file("", 0600);
    EXPECT_THAT(load_error({config}), HasSubstr("the PIN is empty"));
}

TEST_F(SoftHsmStoreTest, TokenNotFoundListsTokens) {
    import_key("p256", "02", "p256");
    const std::string message = load_error({key("p256", "pkcs11:token=missing;object=p256")});
    EXPECT_THAT(message, HasSubstr("no tokens of module /usr/lib/softhsm/libsofthsm2.so match "
                                   "pkcs11:token=missing;object=p256"));
    EXPECT_THAT(message, HasSubstr("Tokens present: 'cloister' (serial "));
}

TEST_F(SoftHsmStoreTest, ObjectNotFoundListsLabelsAndIds) {
    import_key("www", "01", "p256");
    import_key("mail", "a2", "p256");
    const std::string message = load_error({key("x", "pkcs11:token=cloister;object=web")});
    EXPECT_THAT(message, HasSubstr("no private key on token 'cloister' matches "
                                   "pkcs11:token=cloister;object=web"));
    EXPECT_THAT(message, HasSubstr("object=www (id=%01)"));
    EXPECT_THAT(message, HasSubstr("object=mail (id=%a2)"));
}

TEST_F(SoftHsmStoreTest, TwoMatchingObjectsAreRefused) {
    import_key("www", "01", "p256");
    import_key("www", "02", "p256");
    const std::string message = load_error({key("www", "pkcs11:object=www")});
    EXPECT_THAT(message, HasSubstr("2 private keys on token 'cloister' match pkcs11:object=www, "
                                   "so the reference is ambiguous"));
    EXPECT_THAT(message, HasSubstr("object=www (id=%01)"));
    EXPECT_THAT(message, HasSubstr("object=www (id=%02)"));
    // The id selects one of them.
    const Pkcs11KeyStore store({key("www", "pkcs11:object=www;id=%02")}, 1);
    EXPECT_EQ(store.size(), 1U);
}

TEST_F(SoftHsmStoreTest, PublicKeyOfAnotherKeyIsDetected) {
    import_key("mixed", "05", "p256");
    import_key("other", "06", "p256");
    // Replace the public object of "mixed" with the public key of "other", under id 05.
    const std::string tool = std::string("pkcs11-tool --module ") + softhsm_module +
                             " --token-label cloister --login --pin " + user_pin;
    const std::filesystem::path other_public = dir_ / "other.pub.der";
    run(tool + " --read-object --type pubkey --id 06 -o " + other_public.string());
    run(tool + " --delete-object --type pubkey --id 05");
    run(tool + " --write-object " + other_public.string() + " --type pubkey --id 05 --label mixed");
    EXPECT_THAT(load_error({key("mixed", "pkcs11:object=mixed;id=%05")}),
                HasSubstr("do not belong together"));
}

TEST_F(SoftHsmStoreTest, MissingModuleIsAConfigError) {
    KeyConfig config = key("x", "pkcs11:object=x");
    config.module = dir_ / "missing.so";
    EXPECT_THAT(load_error({config}), HasSubstr("cannot load the PKCS#11 module"));
}

TEST_F(SoftHsmStoreTest, DifferentPinsOnOneTokenAreRefused) {
    import_key("a", "01", "p256");
    import_key("b", "02", "p256");
    KeyConfig second = key("b", "pkcs11:object=b");
    second.pin_file = pin_file("12345", 0600, "other-pin");
    EXPECT_THAT(load_error({key("a", "pkcs11:object=a"), second}),
                HasSubstr("gives a different PIN"));
}

}  // namespace
}  // namespace cloister::pkcs11
