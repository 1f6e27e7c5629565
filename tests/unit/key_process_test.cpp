// Tests of the key process: keys generated here, run_key_process in a forked child, key
// channels attached over a socketpair control channel, and every signature verified with
// OpenSSL in the test.
#include "keyprovider/key_process.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/proverr.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "core/config.h"
#include "core/error.h"
#include "core/fd.h"
#include "core/key_client.h"
#include "core/key_protocol.h"
#include "keyprovider/key_file.h"
#include "keyprovider/memory_key_store.h"
#include "keyprovider/request_handler.h"

namespace cloister {
namespace {

namespace fs = std::filesystem;
using keyproto::SignatureScheme;
using keyproto::Status;
using testing::HasSubstr;
using testing::Not;

using Bytes = std::vector<std::uint8_t>;

constexpr auto code(SignatureScheme scheme) {
    return static_cast<std::uint16_t>(scheme);
}

constexpr std::chrono::milliseconds client_timeout{5000};
constexpr std::string_view passphrase = "correct horse battery";

// --- OpenSSL key generation and verification ---

struct PkeyDeleter {
    void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDeleter>;

struct BioDeleter {
    void operator()(BIO* bio) const { BIO_free(bio); }
};
using BioPtr = std::unique_ptr<BIO, BioDeleter>;

struct MdCtxDeleter {
    void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, MdCtxDeleter>;

struct EcdsaSigDeleter {
    void operator()(ECDSA_SIG* sig) const { ECDSA_SIG_free(sig); }
};

PkeyPtr generate_rsa(unsigned bits) {
    return PkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<std::size_t>(bits)));
}

PkeyPtr generate_ec(const char* curve) {
    return PkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", curve));
}

PkeyPtr generate_ed25519() {
    return PkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
}

enum class KeyFormat { pkcs8_pem, traditional_pem, pkcs8_der, encrypted_pkcs8, public_pem };

void write_key(EVP_PKEY* key, const fs::path& path, KeyFormat format) {
    const BioPtr bio(BIO_new_file(path.c_str(), "wb"));
    ASSERT_TRUE(bio) << path;
    int written = 0;
    switch (format) {
        case KeyFormat::pkcs8_pem:
            written =
                PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
            break;
        case KeyFormat::traditional_pem:
            written = PEM_write_bio_PrivateKey_traditional(bio.get(), key, nullptr, nullptr, 0,
                                                           nullptr, nullptr);
            break;
        case KeyFormat::pkcs8_der:
            written =
                i2d_PKCS8PrivateKey_bio(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
            break;
        case KeyFormat::encrypted_pkcs8: {
            std::string secret(passphrase);
            written =
                PEM_write_bio_PKCS8PrivateKey(bio.get(), key, EVP_aes_256_cbc(), secret.data(),
                                              static_cast<int>(secret.size()), nullptr, nullptr);
            break;
        }
        case KeyFormat::public_pem:
            written = PEM_write_bio_PUBKEY(bio.get(), key);
            break;
    }
    ASSERT_EQ(written, 1) << path;
}

void write_text(const fs::path& path, std::string_view text) {
    std::ofstream out(path, std::ios::binary);
    out << text;
}

std::string read_text(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

Bytes public_key_der(EVP_PKEY* key) {
    const int length = i2d_PUBKEY(key, nullptr);
    Bytes der(static_cast<std::size_t>(std::max(length, 0)));
    unsigned char* out = der.data();
    i2d_PUBKEY(key, &out);
    return der;
}

struct VerifyParams {
    const char* digest = nullptr;  // nullptr for Ed25519
    int padding = 0;               // RSA_PKCS1_PADDING or RSA_PKCS1_PSS_PADDING; 0 for others
    int salt_length = 0;           // PSS only
};

VerifyParams verify_params(SignatureScheme scheme) {
    switch (scheme) {
        case SignatureScheme::rsa_pkcs1_sha1:
            return {"SHA1", RSA_PKCS1_PADDING, 0};
        case SignatureScheme::rsa_pkcs1_sha256:
            return {"SHA256", RSA_PKCS1_PADDING, 0};
        case SignatureScheme::rsa_pkcs1_sha384:
            return {"SHA384", RSA_PKCS1_PADDING, 0};
        case SignatureScheme::rsa_pkcs1_sha512:
            return {"SHA512", RSA_PKCS1_PADDING, 0};
        case SignatureScheme::rsa_pss_rsae_sha256:
            return {"SHA256", RSA_PKCS1_PSS_PADDING, 32};
        case SignatureScheme::rsa_pss_rsae_sha384:
            return {"SHA384", RSA_PKCS1_PSS_PADDING, 48};
        case SignatureScheme::rsa_pss_rsae_sha512:
            return {"SHA512", RSA_PKCS1_PSS_PADDING, 64};
        case SignatureScheme::ecdsa_sha1:
            return {"SHA1", 0, 0};
        case SignatureScheme::ecdsa_secp256r1_sha256:
            return {"SHA256", 0, 0};
        case SignatureScheme::ecdsa_secp384r1_sha384:
            return {"SHA384", 0, 0};
        case SignatureScheme::ecdsa_secp521r1_sha512:
            return {"SHA512", 0, 0};
        default:
            return {};
    }
}

// Verifies signature independently of the key process: PSS with MGF1 on the same digest and
// the exact salt length of the digest.
bool verify(EVP_PKEY* key, SignatureScheme scheme, const Bytes& message, const Bytes& signature) {
    const VerifyParams params = verify_params(scheme);
    const MdCtxPtr ctx(EVP_MD_CTX_new());
    EVP_PKEY_CTX* pctx = nullptr;
    if (EVP_DigestVerifyInit_ex(ctx.get(), &pctx, params.digest, nullptr, nullptr, key, nullptr) !=
        1) {
        return false;
    }
    if (params.padding != 0 && EVP_PKEY_CTX_set_rsa_padding(pctx, params.padding) != 1) {
        return false;
    }
    if (params.padding == RSA_PKCS1_PSS_PADDING &&
        (EVP_PKEY_CTX_set_rsa_mgf1_md_name(pctx, params.digest, nullptr) != 1 ||
         EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, params.salt_length) != 1)) {
        return false;
    }
    return EVP_DigestVerify(ctx.get(), signature.data(), signature.size(), message.data(),
                            message.size()) == 1;
}

// True when signature is one strict DER ECDSA-Sig-Value with nothing after it.
bool is_der_ecdsa_signature(const Bytes& signature) {
    const unsigned char* cursor = signature.data();
    const std::unique_ptr<ECDSA_SIG, EcdsaSigDeleter> parsed(
        d2i_ECDSA_SIG(nullptr, &cursor, static_cast<long>(signature.size())));
    if (!parsed || cursor != signature.data() + signature.size()) {
        return false;
    }
    unsigned char* encoded = nullptr;
    const int length = i2d_ECDSA_SIG(parsed.get(), &encoded);
    const bool same = length == static_cast<int>(signature.size()) &&
                      std::memcmp(encoded, signature.data(), signature.size()) == 0;
    OPENSSL_free(encoded);
    return same;
}

// --- Messages the TLS-only signing policy accepts ---

// TLS 1.3 server CertificateVerify content (RFC 8446 section 4.4.3).
Bytes tls13_certificate_verify(std::size_t hash_size = 32) {
    Bytes message(64, 0x20);
    constexpr std::string_view context = "TLS 1.3, server CertificateVerify";
    message.insert(message.end(), context.begin(), context.end());
    message.push_back(0);
    for (std::size_t i = 0; i < hash_size; ++i) {
        message.push_back(static_cast<std::uint8_t>(i * 7 + 1));
    }
    return message;
}

// TLS 1.2 ServerKeyExchange signed content with X25519 (RFC 8422 section 5.4).
Bytes tls12_server_key_exchange() {
    Bytes message(64, 0x42);
    const Bytes params{3, 0x00, 0x1d, 32};
    message.insert(message.end(), params.begin(), params.end());
    message.insert(message.end(), 32, 0x09);
    return message;
}

bool is_pkcs1(SignatureScheme scheme) {
    return scheme == SignatureScheme::rsa_pkcs1_sha256 ||
           scheme == SignatureScheme::rsa_pkcs1_sha384 ||
           scheme == SignatureScheme::rsa_pkcs1_sha512;
}

Bytes message_for(SignatureScheme scheme) {
    return is_pkcs1(scheme) ? tls12_server_key_exchange() : tls13_certificate_verify();
}

// --- The key process in a forked child ---

std::pair<Fd, Fd> make_seqpacket_pair() {
    std::array<int, 2> fds{};
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds.data()) != 0) {
        throw_system_error("socketpair");
    }
    return {Fd(fds[0]), Fd(fds[1])};
}

void send_control(int control, std::span<const std::uint8_t> data, std::span<const int> fds) {
    iovec vector{const_cast<std::uint8_t*>(data.data()), data.size()};
    std::array<unsigned char, CMSG_SPACE(sizeof(int) * 4)> buffer{};
    msghdr header{};
    header.msg_iov = &vector;
    header.msg_iovlen = 1;
    if (!fds.empty()) {
        header.msg_control = buffer.data();
        header.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
        cmsghdr* item = CMSG_FIRSTHDR(&header);
        if (item == nullptr) {
            throw std::logic_error("no room for the SCM_RIGHTS header");
        }
        item->cmsg_level = SOL_SOCKET;
        item->cmsg_type = SCM_RIGHTS;
        item->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
        std::memcpy(CMSG_DATA(item), fds.data(), sizeof(int) * fds.size());
    }
    if (::sendmsg(control, &header, MSG_NOSIGNAL) < 0) {
        throw_system_error("sendmsg");
    }
}

// The exit status of a reaped child, or 128 + signal number when a signal ended it.
int exit_code(int wait_status) {
    if (WIFEXITED(wait_status)) {
        return WEXITSTATUS(wait_status);
    }
    return 128 + WTERMSIG(wait_status);
}

// Waits up to 10 seconds for pid to exit and returns its exit code. Kills and reaps it and
// returns -1 when it is still running.
int reap_child(pid_t pid) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    int status = 0;
    while (std::chrono::steady_clock::now() < deadline) {
        if (::waitpid(pid, &status, WNOHANG) == pid) {
            return exit_code(status);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    return -1;
}

class KeyProcess {
  public:
    KeyProcess(const Config& config, fs::path log_file) : log_file_(std::move(log_file)) {
        auto [ours, theirs] = make_seqpacket_pair();
        pid_ = ::fork();
        if (pid_ == 0) {
            ours.reset();
            run_child(config, std::move(theirs));
        }
        control_ = std::move(ours);
    }
    KeyProcess(const KeyProcess&) = delete;
    KeyProcess& operator=(const KeyProcess&) = delete;
    KeyProcess(KeyProcess&&) = delete;
    KeyProcess& operator=(KeyProcess&&) = delete;

    // Reaps the child in every case: it closes the control channel, waits, and kills the
    // child if it has not exited by then.
    ~KeyProcess() {
        if (pid_ > 0) {
            control_.reset();
            if (!wait_for_exit(std::chrono::seconds(10))) {
                ::kill(pid_, SIGKILL);
                int status = 0;
                ::waitpid(pid_, &status, 0);
            }
        }
    }

    // Attaches a new key channel and returns the connection process's end.
    Fd attach_channel(std::uint64_t connection_id, std::uint32_t flags = 0) {
        auto [ours, theirs] = make_seqpacket_pair();
        keyproto::Attach attach;
        attach.connection_id = connection_id;
        attach.flags = flags;
        const auto bytes = keyproto::encode(attach);
        const std::array<int, 1> fds{theirs.get()};
        send_control(control_.get(), bytes, fds);
        return std::move(ours);
    }

    KeyClient attach_client(std::uint64_t connection_id, std::uint32_t flags = 0) {
        return KeyClient(attach_channel(connection_id, flags), client_timeout);
    }

    [[nodiscard]] int control() const { return control_.get(); }
    [[nodiscard]] pid_t pid() const { return pid_; }

    // Closes the control channel and returns the exit code.
    int finish() {
        control_.reset();
        return wait_exit();
    }

    // Waits up to 10 seconds for the child to exit and returns its exit code (-1 on timeout).
    int wait_exit() {
        if (!wait_for_exit(std::chrono::seconds(10))) {
            return -1;
        }
        return exit_code(status_);
    }

    [[nodiscard]] std::string log() const { return read_text(log_file_); }

    // Waits up to 10 seconds for text to appear in the log and returns the log.
    [[nodiscard]] std::string wait_for_log(std::string_view text) const {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        std::string content = log();
        while (content.find(text) == std::string::npos &&
               std::chrono::steady_clock::now() < deadline) {
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
            content = log();
        }
        return content;
    }

  private:
    [[noreturn]] void run_child(const Config& config, Fd control) {
        int status = 99;
        try {
            auto logger = spdlog::basic_logger_mt("key", log_file_.string(), true);
            logger->set_level(spdlog::level::debug);
            logger->flush_on(spdlog::level::debug);
            spdlog::set_default_logger(logger);
            status = run_key_process(config, std::move(control));
            spdlog::default_logger()->flush();
        } catch (...) {
            status = 98;
        }
        ::_exit(status);
    }

    bool wait_for_exit(std::chrono::seconds limit) {
        if (reaped_) {
            return true;
        }
        const auto deadline = std::chrono::steady_clock::now() + limit;
        while (std::chrono::steady_clock::now() < deadline) {
            const pid_t done = ::waitpid(pid_, &status_, WNOHANG);
            if (done == pid_) {
                reaped_ = true;
                return true;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        return false;
    }

    fs::path log_file_;
    pid_t pid_ = -1;
    Fd control_;
    int status_ = 0;
    bool reaped_ = false;
};

// Returns the ErrorKind a call throws, and its message in *message.
template <typename Call>
std::optional<ErrorKind> error_kind_of(Call call, std::string* message = nullptr) {
    try {
        call();
    } catch (const Error& error) {
        if (message != nullptr) {
            *message = error.what();
        }
        return error.kind();
    }
    return std::nullopt;
}

// Receives one datagram within 5 seconds. Returns nullopt at end of stream or on timeout.
std::optional<Bytes> receive(int fd) {
    pollfd entry{fd, POLLIN, 0};
    if (::poll(&entry, 1, 5000) != 1) {
        return std::nullopt;
    }
    Bytes buffer(keyproto::max_response_size + 1);
    const ssize_t received = ::recv(fd, buffer.data(), buffer.size(), MSG_DONTWAIT);
    if (received <= 0) {
        return std::nullopt;
    }
    buffer.resize(static_cast<std::size_t>(received));
    return buffer;
}

// True when the peer of fd closes it within 5 seconds (recv returns 0).
bool reaches_end_of_stream(int fd) {
    pollfd entry{fd, POLLIN, 0};
    if (::poll(&entry, 1, 5000) != 1) {
        return false;
    }
    std::array<std::uint8_t, 1> byte{};
    return ::recv(fd, byte.data(), byte.size(), MSG_DONTWAIT) == 0;
}

// --- Fixture: keys generated once for the whole suite ---

enum KeyIndex : std::uint32_t {
    rsa_key = 0,        // RSA-2048, traditional PEM
    p256_key = 1,       // P-256, PKCS#8 PEM
    p384_key = 2,       // P-384, traditional PEM
    ed25519_key = 3,    // Ed25519, PKCS#8 PEM
    encrypted_key = 4,  // P-256, encrypted PKCS#8 with a passphrase file
    der_key = 5,        // Ed25519, PKCS#8 DER
};

class KeyProcessTest : public testing::Test {
  protected:
    static void SetUpTestSuite() {
        std::string pattern = (fs::temp_directory_path() / "cloister-key-test-XXXXXX").string();
        ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
        directory_ = new fs::path(pattern);

        keys_ = new std::vector<PkeyPtr>();
        keys_->push_back(generate_rsa(2048));
        keys_->push_back(generate_ec("P-256"));
        keys_->push_back(generate_ec("P-384"));
        keys_->push_back(generate_ed25519());
        keys_->push_back(generate_ec("P-256"));
        keys_->push_back(generate_ed25519());
        for (const PkeyPtr& key : *keys_) {
            ASSERT_TRUE(key);
        }

        write_key(key(rsa_key), path("rsa.pem"), KeyFormat::traditional_pem);
        write_key(key(p256_key), path("p256.pem"), KeyFormat::pkcs8_pem);
        write_key(key(p384_key), path("p384.pem"), KeyFormat::traditional_pem);
        write_key(key(ed25519_key), path("ed25519.pem"), KeyFormat::pkcs8_pem);
        write_key(key(encrypted_key), path("encrypted.pem"), KeyFormat::encrypted_pkcs8);
        write_key(key(der_key), path("ed25519.der"), KeyFormat::pkcs8_der);
        // A trailing LF, as an editor writes it, is not part of the passphrase.
        write_text(path("passphrase"), std::string(passphrase) + "\n");
    }

    static void TearDownTestSuite() {
        delete keys_;
        keys_ = nullptr;
        std::error_code ignored;
        // KEEP_KEY_TEST_DIR=1 keeps the generated keys and each test's key process log.
        if (std::getenv("KEEP_KEY_TEST_DIR") == nullptr) {
            fs::remove_all(*directory_, ignored);
        }
        delete directory_;
        directory_ = nullptr;
    }

    static EVP_PKEY* key(std::uint32_t index) { return (*keys_)[index].get(); }
    static fs::path path(const std::string& name) { return *directory_ / name; }

    static KeyConfig key_config(std::string name, const std::string& file,
                                std::optional<std::string> passphrase_file = std::nullopt) {
        KeyConfig config;
        config.name = std::move(name);
        config.file = path(file);
        if (passphrase_file) {
            config.passphrase_file = path(*passphrase_file);
        }
        return config;
    }

    static Config make_config() {
        Config config;
        config.key_process.workers = 2;
        config.key_process.max_operations_per_channel = 1;
        config.keys.push_back(key_config("rsa", "rsa.pem"));
        config.keys.push_back(key_config("p256", "p256.pem"));
        config.keys.push_back(key_config("p384", "p384.pem"));
        config.keys.push_back(key_config("ed25519", "ed25519.pem"));
        config.keys.push_back(key_config("encrypted", "encrypted.pem", "passphrase"));
        config.keys.push_back(key_config("der", "ed25519.der"));
        return config;
    }

    void SetUp() override {
        const auto* info = testing::UnitTest::GetInstance()->current_test_info();
        log_file_ = path(std::string(info->name()) + ".log");
    }

    // Runs a key process with config until it exits and returns its exit code.
    int run_to_exit(const Config& config) {
        KeyProcess process(config, log_file_);
        return process.wait_exit();
    }

    static fs::path* directory_;
    static std::vector<PkeyPtr>* keys_;
    fs::path log_file_;
};

fs::path* KeyProcessTest::directory_ = nullptr;
std::vector<PkeyPtr>* KeyProcessTest::keys_ = nullptr;

struct SchemeCase {
    std::uint32_t key_index;
    SignatureScheme scheme;
};

// --- Serving ---

TEST_F(KeyProcessTest, PublicKeysMatch) {
    KeyProcess process(make_config(), log_file_);
    KeyClient client = process.attach_client(1);
    for (std::uint32_t index = rsa_key; index <= der_key; ++index) {
        EXPECT_EQ(client.public_key(index), public_key_der(key(index))) << "key " << index;
    }
    EXPECT_EQ(process.finish(), 0);
}

TEST_F(KeyProcessTest, SignsWithEverySchemeAndVerifies) {
    const std::vector<SchemeCase> cases{
        {rsa_key, SignatureScheme::rsa_pkcs1_sha256},
        {rsa_key, SignatureScheme::rsa_pkcs1_sha384},
        {rsa_key, SignatureScheme::rsa_pkcs1_sha512},
        {rsa_key, SignatureScheme::rsa_pss_rsae_sha256},
        {rsa_key, SignatureScheme::rsa_pss_rsae_sha384},
        {rsa_key, SignatureScheme::rsa_pss_rsae_sha512},
        {p256_key, SignatureScheme::ecdsa_secp256r1_sha256},
        {p384_key, SignatureScheme::ecdsa_secp384r1_sha384},
        // TLS 1.2 names no curve: any ecdsa_* hash goes with any accepted curve.
        {p256_key, SignatureScheme::ecdsa_secp384r1_sha384},
        {p256_key, SignatureScheme::ecdsa_secp521r1_sha512},
        {p384_key, SignatureScheme::ecdsa_secp256r1_sha256},
        {ed25519_key, SignatureScheme::ed25519},
        {encrypted_key, SignatureScheme::ecdsa_secp256r1_sha256},
        {der_key, SignatureScheme::ed25519},
    };
    KeyProcess process(make_config(), log_file_);
    std::uint64_t connection_id = 100;
    for (const SchemeCase& entry : cases) {
        const std::string label = *keyproto::scheme_name(code(entry.scheme)) + " with key " +
                                  std::to_string(entry.key_index);
        KeyClient client = process.attach_client(++connection_id);
        const Bytes message = message_for(entry.scheme);
        const Bytes signature = client.sign(entry.key_index, code(entry.scheme), message);
        EXPECT_TRUE(verify(key(entry.key_index), entry.scheme, message, signature)) << label;
        if (entry.key_index == p256_key || entry.key_index == p384_key) {
            EXPECT_TRUE(is_der_ecdsa_signature(signature)) << label;
        }
        Bytes tampered = message;
        tampered.back() ^= 1;
        EXPECT_FALSE(verify(key(entry.key_index), entry.scheme, tampered, signature)) << label;
    }
    EXPECT_EQ(process.finish(), 0);
    EXPECT_THAT(process.log(), HasSubstr("signatures=14 refused=0 malformed=0"));
}

TEST_F(KeyProcessTest, PssSaltIsDigestLength) {
    KeyProcess process(make_config(), log_file_);
    KeyClient client = process.attach_client(1);
    const Bytes message = tls13_certificate_verify(48);
    const Bytes signature =
        client.sign(rsa_key, code(SignatureScheme::rsa_pss_rsae_sha384), message);
    EXPECT_TRUE(verify(key(rsa_key), SignatureScheme::rsa_pss_rsae_sha384, message, signature));

    // The same signature checked with a 32-byte salt must fail: the salt is exactly 48 bytes.
    const MdCtxPtr ctx(EVP_MD_CTX_new());
    EVP_PKEY_CTX* pctx = nullptr;
    ASSERT_EQ(EVP_DigestVerifyInit_ex(ctx.get(), &pctx, "SHA384", nullptr, nullptr, key(rsa_key),
                                      nullptr),
              1);
    ASSERT_EQ(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING), 1);
    ASSERT_EQ(EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, 32), 1);
    EXPECT_NE(EVP_DigestVerify(ctx.get(), signature.data(), signature.size(), message.data(),
                               message.size()),
              1);
    EXPECT_EQ(process.finish(), 0);
}

TEST_F(KeyProcessTest, QuotaEndsSigningOnChannel) {
    KeyProcess process(make_config(), log_file_);
    KeyClient first = process.attach_client(7);
    const Bytes message = tls13_certificate_verify();
    EXPECT_FALSE(first.sign(ed25519_key, code(SignatureScheme::ed25519), message).empty());

    std::string error;
    const auto kind = error_kind_of(
        [&] { (void)first.sign(ed25519_key, code(SignatureScheme::ed25519), message); }, &error);
    EXPECT_EQ(kind, ErrorKind::policy);
    EXPECT_THAT(error, HasSubstr("quota_exceeded"));

    // The channel stays open, and public keys do not count against the quota.
    EXPECT_EQ(first.public_key(ed25519_key), public_key_der(key(ed25519_key)));

    KeyClient second = process.attach_client(8);
    const Bytes signature = second.sign(ed25519_key, code(SignatureScheme::ed25519), message);
    EXPECT_TRUE(verify(key(ed25519_key), SignatureScheme::ed25519, message, signature));

    const std::string log = process.wait_for_log("quota_exceeded");
    EXPECT_THAT(log, HasSubstr("connection 7: sign request 2 for key 3 with ed25519 refused "
                               "(quota_exceeded)"));
    EXPECT_EQ(process.finish(), 0);
}

TEST_F(KeyProcessTest, UnlimitedChannelHasNoQuota) {
    KeyProcess process(make_config(), log_file_);
    KeyClient client = process.attach_client(1, keyproto::attach_flag_unlimited);
    const Bytes message = tls13_certificate_verify();
    for (int i = 0; i < 5; ++i) {
        const Bytes signature =
            client.sign(p256_key, code(SignatureScheme::ecdsa_secp256r1_sha256), message);
        EXPECT_TRUE(
            verify(key(p256_key), SignatureScheme::ecdsa_secp256r1_sha256, message, signature))
            << "signature " << i;
    }
    EXPECT_EQ(process.finish(), 0);
}

TEST_F(KeyProcessTest, UnknownKeyIndexRefused) {
    KeyProcess process(make_config(), log_file_);
    KeyClient client = process.attach_client(3);
    std::string error;
    EXPECT_EQ(error_kind_of(
                  [&] {
                      (void)client.sign(6, code(SignatureScheme::ed25519),
                                        tls13_certificate_verify());
                  },
                  &error),
              ErrorKind::policy);
    EXPECT_THAT(error, HasSubstr("unknown_key"));
    EXPECT_THAT(error, HasSubstr("key 6"));

    EXPECT_EQ(error_kind_of([&] { (void)client.public_key(0xffffffff); }, &error),
              ErrorKind::policy);
    EXPECT_THAT(error, HasSubstr("unknown_key"));

    // A refusal does not use the quota.
    EXPECT_FALSE(
        client.sign(ed25519_key, code(SignatureScheme::ed25519), tls13_certificate_verify())
            .empty());
    EXPECT_EQ(process.finish(), 0);
    EXPECT_THAT(process.log(), HasSubstr("refused=2"));
}

TEST_F(KeyProcessTest, SchemeMustFitKey) {
    const std::vector<SchemeCase> cases{
        {rsa_key, SignatureScheme::ed25519},
        {rsa_key, SignatureScheme::ecdsa_secp256r1_sha256},
        {p256_key, SignatureScheme::rsa_pss_rsae_sha256},
        {p384_key, SignatureScheme::ed25519},
        {ed25519_key, SignatureScheme::rsa_pss_rsae_sha256},
        {ed25519_key, SignatureScheme::ecdsa_secp256r1_sha256},
        {ed25519_key, SignatureScheme::ed448},
    };
    KeyProcess process(make_config(), log_file_);
    KeyClient client = process.attach_client(4);
    for (const SchemeCase& entry : cases) {
        std::string error;
        const auto kind = error_kind_of(
            [&] {
                (void)client.sign(entry.key_index, code(entry.scheme), tls13_certificate_verify());
            },
            &error);
        EXPECT_EQ(kind, ErrorKind::policy) << *keyproto::scheme_name(code(entry.scheme));
        EXPECT_THAT(error, HasSubstr("unsupported_scheme"));
    }
    EXPECT_EQ(process.finish(), 0);
    EXPECT_THAT(process.log(), HasSubstr("refused=7"));
}

TEST_F(KeyProcessTest, SigningPolicyRefusesOtherMessages) {
    KeyProcess process(make_config(), log_file_);
    KeyClient client = process.attach_client(5);
    const Bytes arbitrary{'p', 'a', 'y', ' ', '1', '0', '0', '0'};
    std::string error;
    EXPECT_EQ(
        error_kind_of(
            [&] { (void)client.sign(rsa_key, code(SignatureScheme::rsa_pkcs1_sha256), arbitrary); },
            &error),
        ErrorKind::policy);
    EXPECT_THAT(error, HasSubstr("refused"));

    // SHA-1 schemes fit RSA and EC keys, but the policy signs no TLS input with them.
    EXPECT_EQ(error_kind_of([&] {
                  (void)client.sign(rsa_key, code(SignatureScheme::rsa_pkcs1_sha1),
                                    tls12_server_key_exchange());
              }),
              ErrorKind::policy);
    EXPECT_EQ(error_kind_of([&] {
                  (void)client.sign(p256_key, code(SignatureScheme::ecdsa_sha1),
                                    tls12_server_key_exchange());
              }),
              ErrorKind::policy);
    const std::string log = process.wait_for_log("connection 5: sign request 3");
    EXPECT_THAT(log, HasSubstr("connection 5: sign request 1 for key 0 with rsa_pkcs1_sha256 "
                               "refused (refused): signing policy rejected the 8-byte message"));
    EXPECT_EQ(process.finish(), 0);
}

TEST_F(KeyProcessTest, MalformedDatagramClosesOnlyItsChannel) {
    KeyProcess process(make_config(), log_file_);
    KeyClient good = process.attach_client(20);
    const Fd bad = process.attach_channel(21);

    const Bytes garbage{1, 1, 0x07, 0x08, 42, 0, 0, 0};  // a header cut after request_id
    ASSERT_EQ(::send(bad.get(), garbage.data(), garbage.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(garbage.size()));
    const auto reply = receive(bad.get());
    ASSERT_TRUE(reply);
    const auto response = keyproto::decode_response(*reply);
    ASSERT_TRUE(response) << response.error;
    EXPECT_EQ(response.value->status, Status::malformed);
    EXPECT_EQ(response.value->request_id, 42U);
    EXPECT_TRUE(reaches_end_of_stream(bad.get()));

    const Bytes message = tls13_certificate_verify();
    const Bytes signature = good.sign(ed25519_key, code(SignatureScheme::ed25519), message);
    EXPECT_TRUE(verify(key(ed25519_key), SignatureScheme::ed25519, message, signature));

    KeyClient later = process.attach_client(22);
    EXPECT_EQ(later.public_key(rsa_key), public_key_der(key(rsa_key)));

    EXPECT_EQ(process.finish(), 0);
    const std::string log = process.log();
    EXPECT_THAT(log, HasSubstr("connection 21: malformed key request: datagram of 8 bytes is "
                               "shorter than the 16-byte request header"));
    EXPECT_THAT(log, HasSubstr("channels=3 signatures=1 refused=0 malformed=1"));
}

TEST_F(KeyProcessTest, OversizedDatagramClosesChannel) {
    KeyProcess process(make_config(), log_file_);
    const Fd channel = process.attach_channel(30);
    Bytes datagram = keyproto::encode(
        keyproto::Request{keyproto::MessageType::sign, code(SignatureScheme::ed25519), 5,
                          ed25519_key, Bytes(keyproto::max_request_payload, 0)});
    datagram.push_back(0);  // one byte over the maximum
    ASSERT_EQ(::send(channel.get(), datagram.data(), datagram.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(datagram.size()));
    const auto reply = receive(channel.get());
    ASSERT_TRUE(reply);
    const auto response = keyproto::decode_response(*reply);
    ASSERT_TRUE(response) << response.error;
    EXPECT_EQ(response.value->status, Status::malformed);
    EXPECT_EQ(response.value->request_id, 5U);
    EXPECT_TRUE(reaches_end_of_stream(channel.get()));

    EXPECT_EQ(process.finish(), 0);
    EXPECT_THAT(process.log(), HasSubstr("connection 30: malformed key request: datagram of "
                                         "8209 bytes exceeds the maximum of 8208 bytes"));
}

TEST_F(KeyProcessTest, EncryptedKeyLoadsWithPassphraseFile) {
    KeyProcess process(make_config(), log_file_);
    KeyClient client = process.attach_client(40);
    EXPECT_EQ(client.public_key(encrypted_key), public_key_der(key(encrypted_key)));
    const Bytes message = tls13_certificate_verify();
    const Bytes signature =
        client.sign(encrypted_key, code(SignatureScheme::ecdsa_secp256r1_sha256), message);
    EXPECT_TRUE(
        verify(key(encrypted_key), SignatureScheme::ecdsa_secp256r1_sha256, message, signature));
    EXPECT_EQ(process.finish(), 0);
    const std::string log = process.log();
    EXPECT_THAT(log, HasSubstr("loaded EC key 'encrypted' (index 4)"));
    EXPECT_THAT(log, Not(HasSubstr(std::string(passphrase))));
}

// --- Control channel and signals ---

TEST_F(KeyProcessTest, AttachWithoutDescriptorRejected) {
    KeyProcess process(make_config(), log_file_);
    keyproto::Attach attach;
    attach.connection_id = 50;
    send_control(process.control(), keyproto::encode(attach), {});
    const std::string log = process.wait_for_log("rejected attach message");
    EXPECT_THAT(log, HasSubstr("carries 0 descriptors (expected 1)"));

    KeyClient client = process.attach_client(51);
    EXPECT_EQ(client.public_key(p384_key), public_key_der(key(p384_key)));
    EXPECT_EQ(process.finish(), 0);
}

TEST_F(KeyProcessTest, AttachWithTwoDescriptorsClosesBoth) {
    KeyProcess process(make_config(), log_file_);
    auto first = make_seqpacket_pair();
    auto second = make_seqpacket_pair();
    keyproto::Attach attach;
    attach.connection_id = 60;
    const std::array<int, 2> fds{first.second.get(), second.second.get()};
    send_control(process.control(), keyproto::encode(attach), fds);
    first.second.reset();
    second.second.reset();

    // The key process closed its copies, so our ends see end of stream.
    EXPECT_TRUE(reaches_end_of_stream(first.first.get()));
    EXPECT_TRUE(reaches_end_of_stream(second.first.get()));
    EXPECT_THAT(process.wait_for_log("rejected attach message"),
                HasSubstr("rejected attach message for connection 60: the message carries 2 "
                          "descriptors (expected 1)"));
    EXPECT_EQ(process.finish(), 0);
}

TEST_F(KeyProcessTest, AttachWithReservedFlagRejected) {
    KeyProcess process(make_config(), log_file_);
    auto pair = make_seqpacket_pair();
    keyproto::Attach attach;
    attach.connection_id = 61;
    attach.flags = 2;
    const std::array<int, 1> fds{pair.second.get()};
    send_control(process.control(), keyproto::encode(attach), fds);
    pair.second.reset();
    EXPECT_TRUE(reaches_end_of_stream(pair.first.get()));
    EXPECT_THAT(process.wait_for_log("rejected attach message"), HasSubstr("reserved bits"));
    EXPECT_EQ(process.finish(), 0);
}

TEST_F(KeyProcessTest, Sigusr1LogsStats) {
    KeyProcess process(make_config(), log_file_);
    KeyClient client = process.attach_client(70);
    (void)client.sign(ed25519_key, code(SignatureScheme::ed25519), tls13_certificate_verify());
    ASSERT_EQ(::kill(process.pid(), SIGUSR1), 0);
    const std::string log = process.wait_for_log("key process stats");
    EXPECT_THAT(log, HasSubstr("key process stats: channels=1 signatures=1 refused=0 malformed=0"));
    EXPECT_THAT(log, HasSubstr("key operation stats: key=ed25519 operation=sign period_ms="));
    EXPECT_THAT(log, HasSubstr(" count=1 failed=0 refused=0 p50_us="));
    EXPECT_THAT(log, HasSubstr("key operation stats: key=rsa operation=sign period_ms="));
    // Memory keys have no token time.
    EXPECT_THAT(log, HasSubstr(" token_p50_us=- token_p90_us=- token_p99_us=- token_max_us=- "));

    // The process keeps serving after SIGUSR1.
    EXPECT_EQ(client.public_key(rsa_key), public_key_der(key(rsa_key)));
    EXPECT_EQ(process.finish(), 0);
}

TEST_F(KeyProcessTest, StatsIntervalLogsWithoutSignal) {
    Config config = make_config();
    config.key_process.stats_interval = std::chrono::seconds(1);
    KeyProcess process(config, log_file_);
    KeyClient client = process.attach_client(75);
    (void)client.sign(ed25519_key, code(SignatureScheme::ed25519), tls13_certificate_verify());
    const std::string log = process.wait_for_log("key operation stats: key=ed25519");
    EXPECT_THAT(log, HasSubstr("key operation stats: key=ed25519 operation=sign period_ms="));
    EXPECT_THAT(log, HasSubstr("key process stats: channels=1 signatures=1"));
    EXPECT_EQ(process.finish(), 0);
}

TEST_F(KeyProcessTest, NoStatsIntervalWhenZero) {
    Config config = make_config();
    config.key_process.stats_interval = std::chrono::seconds(0);
    KeyProcess process(config, log_file_);
    KeyClient client = process.attach_client(76);
    (void)client.sign(ed25519_key, code(SignatureScheme::ed25519), tls13_certificate_verify());
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    EXPECT_THAT(process.log(), Not(HasSubstr("key operation stats")));
    EXPECT_EQ(process.finish(), 0);
    // The report at exit still comes.
    EXPECT_THAT(process.log(), HasSubstr("key operation stats: key=ed25519 operation=sign"));
}

TEST_F(KeyProcessTest, SigtermStopsCleanly) {
    KeyProcess process(make_config(), log_file_);
    KeyClient client = process.attach_client(80);
    EXPECT_EQ(client.public_key(rsa_key), public_key_der(key(rsa_key)));
    ASSERT_EQ(::kill(process.pid(), SIGTERM), 0);
    EXPECT_EQ(process.wait_exit(), 0);
    const std::string log = process.log();
    EXPECT_THAT(log, HasSubstr("key process stopping on SIGTERM"));
    EXPECT_THAT(log, HasSubstr("key process stats: channels=1"));
}

TEST_F(KeyProcessTest, ControlChannelCloseStopsProcess) {
    KeyProcess process(make_config(), log_file_);
    EXPECT_EQ(process.finish(), 0);
    const std::string log = process.log();
    EXPECT_THAT(log, HasSubstr("control channel closed by the supervisor"));
    EXPECT_THAT(log, HasSubstr("key process stats: channels=0 signatures=0 refused=0 "
                               "malformed=0"));
}

TEST_F(KeyProcessTest, BeforeServingRunsAfterKeysLoad) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        auto logger = spdlog::basic_logger_mt("key", log_file_.string(), true);
        logger->flush_on(spdlog::level::debug);
        spdlog::set_default_logger(logger);
        auto [ours, theirs] = make_seqpacket_pair();
        ours.reset();  // end of stream at once: the process stops right after it starts
        const int status = run_key_process(make_config(), std::move(theirs),
                                           [] { spdlog::info("before serving"); });
        ::_exit(status);
    }
    EXPECT_EQ(reap_child(pid), 0);

    const std::string log = read_text(log_file_);
    const auto loaded = log.find("loaded Ed25519 key 'der'");
    const auto hook = log.find("before serving");
    const auto serving = log.find("key process serving");
    ASSERT_NE(loaded, std::string::npos);
    ASSERT_NE(hook, std::string::npos);
    ASSERT_NE(serving, std::string::npos);
    EXPECT_LT(loaded, hook);
    EXPECT_LT(hook, serving);
}

TEST_F(KeyProcessTest, BeforeServingErrorStopsProcess) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        auto logger = spdlog::basic_logger_mt("key", log_file_.string(), true);
        logger->flush_on(spdlog::level::debug);
        spdlog::set_default_logger(logger);
        auto [ours, theirs] = make_seqpacket_pair();
        const int status = run_key_process(make_config(), std::move(theirs), [] {
            throw Error(ErrorKind::system, "chroot failed: test");
        });
        ::_exit(status);
    }
    EXPECT_EQ(reap_child(pid), 1);
    const std::string log = read_text(log_file_);
    EXPECT_THAT(log, HasSubstr("key process failed: chroot failed: test"));
    EXPECT_THAT(log, Not(HasSubstr("key process serving")));
}

// A key process whose worker threads cannot all start exits with status 1 before any worker
// responds to a request, so a supervisor's self-check fails instead of passing just before the
// exit. The request waits on its channel before the process starts.
TEST_F(KeyProcessTest, WorkerStartFailureAnswersNoRequest) {
    if (::geteuid() != 0) {
        GTEST_SKIP() << "RLIMIT_NPROC counts exactly only for a user id of its own, which "
                        "needs root to switch to";
    }
    auto [control, child_control] = make_seqpacket_pair();
    auto [channel, child_channel] = make_seqpacket_pair();
    keyproto::Attach attach;
    attach.connection_id = 30;
    const std::array<int, 1> fds{child_channel.get()};
    send_control(control.get(), keyproto::encode(attach), fds);
    child_channel.reset();
    const Bytes garbage{1, 1, 0x07, 0x08, 42, 0, 0, 0};  // gets a response with status malformed
    ASSERT_EQ(::send(channel.get(), garbage.data(), garbage.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(garbage.size()));
    Config config = make_config();
    // 99 workers start before the 100th fails, which gives the first ones time to respond.
    config.key_process.workers = 300;

    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        control.reset();
        channel.reset();
        auto logger = spdlog::basic_logger_mt("key", log_file_.string(), true);
        logger->flush_on(spdlog::level::debug);
        spdlog::set_default_logger(logger);
        const int status = run_key_process(config, std::move(child_control), [] {
            // A user id that runs no other process, so the main thread and 99 workers fill
            // the limit of 100.
            const uid_t unused = 0x7ff00000U + static_cast<uid_t>(::getpid() & 0xffff);
            const rlimit limit{100, 100};
            if (::setrlimit(RLIMIT_NPROC, &limit) != 0 ||
                ::setresgid(unused, unused, unused) != 0 ||
                ::setresuid(unused, unused, unused) != 0) {
                throw Error(ErrorKind::system, "switching to an unused user id failed");
            }
        });
        ::_exit(status);
    }
    child_control.reset();
    EXPECT_EQ(reap_child(pid), 1);
    // No datagram: end of stream, or EAGAIN while the unread attach message keeps the other
    // end open.
    std::array<std::uint8_t, 64> reply{};
    EXPECT_LE(::recv(channel.get(), reply.data(), reply.size(), MSG_DONTWAIT), 0)
        << "a worker responded to the request";
    EXPECT_THAT(read_text(log_file_), HasSubstr("starting key process worker threads failed"));
}

// --- Key loading failures: exit status 2 and one precise log line ---

TEST_F(KeyProcessTest, WeakRsaKeyFailsToLoad) {
    const PkeyPtr weak = generate_rsa(1024);
    write_key(weak.get(), path("rsa1024.pem"), KeyFormat::pkcs8_pem);
    Config config = make_config();
    config.keys.push_back(key_config("weak", "rsa1024.pem"));
    EXPECT_EQ(run_to_exit(config), key_process_exit_key_load_failed);
    EXPECT_THAT(read_text(log_file_),
                HasSubstr("key 'weak' (" + path("rsa1024.pem").string() +
                          "): RSA key of 1024 bits is not supported; use 2048 to 4096 bits"));
}

TEST_F(KeyProcessTest, UnsupportedCurveFailsToLoad) {
    const PkeyPtr p521 = generate_ec("P-521");
    write_key(p521.get(), path("p521.pem"), KeyFormat::pkcs8_pem);
    Config config = make_config();
    config.keys.push_back(key_config("p521", "p521.pem"));
    EXPECT_EQ(run_to_exit(config), key_process_exit_key_load_failed);
    EXPECT_THAT(read_text(log_file_),
                HasSubstr("key 'p521' (" + path("p521.pem").string() +
                          "): EC curve secp521r1 is not supported; use P-256 or P-384"));
}

// A FIFO without a writer blocked the key process in open() before the regular-file check.
TEST_F(KeyProcessTest, FifoKeyFileFailsWithoutBlocking) {
    const fs::path fifo = path("fifo.pem");
    fs::remove(fifo);
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    Config config = make_config();
    config.keys.push_back(key_config("fifo", "fifo.pem"));
    EXPECT_EQ(run_to_exit(config), key_process_exit_key_load_failed);
    EXPECT_THAT(read_text(log_file_),
                HasSubstr("key 'fifo' (" + fifo.string() + "): key file is not a regular file"));
    fs::remove(fifo);
}

TEST_F(KeyProcessTest, WrongPassphraseFailsToLoad) {
    write_text(path("wrong-passphrase"), "not the passphrase\n");
    Config config;
    config.keys.push_back(key_config("encrypted", "encrypted.pem", "wrong-passphrase"));
    EXPECT_EQ(run_to_exit(config), key_process_exit_key_load_failed);
    const std::string log = read_text(log_file_);
    EXPECT_THAT(log,
                HasSubstr("key 'encrypted' (" + path("encrypted.pem").string() +
                          "): decryption failed: the passphrase is wrong or the file is damaged"));
    EXPECT_THAT(log, Not(HasSubstr("not the passphrase")));
}

// Returns a wrong passphrase whose decryption of file passes the CBC padding check, so
// that OpenSSL reports a generic decoder error instead of "bad decrypt".
std::optional<std::string> find_wrong_passphrase_with_valid_padding(const fs::path& file) {
    const std::string pem = read_text(file);
    for (int i = 0; i < 5000; ++i) {
        const std::string candidate = "wrong-" + std::to_string(i);
        const BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
        std::string buffer = candidate;
        EVP_PKEY* key = PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, buffer.data());
        EVP_PKEY_free(key);
        bool bad_decrypt = false;
        while (const unsigned long code = ERR_get_error()) {
            bad_decrypt = bad_decrypt || ERR_GET_REASON(code) == PROV_R_BAD_DECRYPT;
        }
        if (key == nullptr && !bad_decrypt) {
            return candidate;
        }
    }
    return std::nullopt;
}

TEST_F(KeyProcessTest, WrongPassphraseWithValidPadding) {
    const auto wrong = find_wrong_passphrase_with_valid_padding(path("encrypted.pem"));
    ASSERT_TRUE(wrong) << "no candidate passed the padding check";
    write_text(path("lucky-passphrase"), *wrong);
    KeyConfig config = key_config("encrypted", "encrypted.pem", "lucky-passphrase");
    try {
        (void)load_private_key(config);
        FAIL() << "a wrong passphrase loaded the key";
    } catch (const Error& error) {
        EXPECT_EQ(error.kind(), ErrorKind::config);
        EXPECT_THAT(error.what(), HasSubstr("the passphrase is wrong"));
        EXPECT_THAT(error.what(), Not(HasSubstr(*wrong)));
    }
}

TEST_F(KeyProcessTest, PassphraseWithTwoNewlinesIsWrong) {
    // Only one trailing LF is removed, so the passphrase keeps the second one.
    write_text(path("two-newlines"), std::string(passphrase) + "\n\n");
    Config config;
    config.keys.push_back(key_config("encrypted", "encrypted.pem", "two-newlines"));
    EXPECT_EQ(run_to_exit(config), key_process_exit_key_load_failed);
    EXPECT_THAT(read_text(log_file_), HasSubstr("the passphrase is wrong"));
}

TEST_F(KeyProcessTest, EncryptedKeyWithoutPassphraseFailsToLoad) {
    Config config;
    config.keys.push_back(key_config("encrypted", "encrypted.pem"));
    EXPECT_EQ(run_to_exit(config), key_process_exit_key_load_failed);
    EXPECT_THAT(read_text(log_file_),
                HasSubstr("the key is encrypted, so passphrase-file must be set"));
}

TEST_F(KeyProcessTest, MissingFilesFailToLoad) {
    Config config;
    config.keys.push_back(key_config("missing", "no-such.pem"));
    EXPECT_EQ(run_to_exit(config), key_process_exit_key_load_failed);
    EXPECT_THAT(read_text(log_file_),
                HasSubstr("key 'missing' (" + path("no-such.pem").string() +
                          "): failed to open key file: No such file or directory"));

    Config no_passphrase;
    no_passphrase.keys.push_back(key_config("encrypted", "encrypted.pem", "no-such-passphrase"));
    EXPECT_EQ(run_to_exit(no_passphrase), key_process_exit_key_load_failed);
    EXPECT_THAT(read_text(log_file_), HasSubstr("failed to open passphrase file"));
}

TEST_F(KeyProcessTest, PublicKeyFileFailsToLoad) {
    write_key(key(rsa_key), path("public.pem"), KeyFormat::public_pem);
    Config config = make_config();
    config.keys.push_back(key_config("public", "public.pem"));
    EXPECT_EQ(run_to_exit(config), key_process_exit_key_load_failed);
    EXPECT_THAT(read_text(log_file_), HasSubstr("key 'public' (" + path("public.pem").string() +
                                                "): no private key found"));
}

// --- RequestHandler without a process and without the signing policy ---

TEST_F(KeyProcessTest, HandlerSignsSha1SchemesWithoutPolicy) {
    const MemoryKeyStore store(make_config().keys);
    HandlerOptions options;
    options.tls_signing_policy = false;
    const RequestHandler handler(store, options);
    const Bytes message{'a', 'n', 'y', ' ', 'm', 'e', 's', 's', 'a', 'g', 'e'};

    for (const SchemeCase& entry : {SchemeCase{rsa_key, SignatureScheme::rsa_pkcs1_sha1},
                                    SchemeCase{p256_key, SignatureScheme::ecdsa_sha1},
                                    SchemeCase{p384_key, SignatureScheme::ecdsa_sha1}}) {
        ChannelState channel;
        keyproto::Request request{keyproto::MessageType::sign, code(entry.scheme), 9,
                                  entry.key_index, message};
        const HandlerResult result = handler.handle(request, channel);
        ASSERT_EQ(result.response.status, Status::ok) << result.reason;
        EXPECT_EQ(result.response.request_id, 9U);
        EXPECT_TRUE(verify(key(entry.key_index), entry.scheme, message, result.response.payload))
            << *keyproto::scheme_name(code(entry.scheme));
        EXPECT_EQ(channel.operations, 1U);
    }
}

TEST_F(KeyProcessTest, HandlerChecksInOrder) {
    const MemoryKeyStore store(make_config().keys);
    const RequestHandler handler(store, HandlerOptions{});
    ChannelState channel;
    channel.operations = 1;  // the quota is used up

    keyproto::Request request{keyproto::MessageType::sign, code(SignatureScheme::ed25519), 1, 99,
                              tls13_certificate_verify()};
    EXPECT_EQ(handler.handle(request, channel).response.status, Status::unknown_key);
    request.key_index = rsa_key;
    EXPECT_EQ(handler.handle(request, channel).response.status, Status::unsupported_scheme);
    request.key_index = ed25519_key;
    request.payload = {1, 2, 3};
    EXPECT_EQ(handler.handle(request, channel).response.status, Status::refused);
    request.payload = tls13_certificate_verify();
    const HandlerResult quota = handler.handle(request, channel);
    EXPECT_EQ(quota.response.status, Status::quota_exceeded);
    EXPECT_THAT(quota.reason, HasSubstr("1 private-key operations"));
    EXPECT_EQ(channel.operations, 1U);

    channel.unlimited = true;
    EXPECT_EQ(handler.handle(request, channel).response.status, Status::ok);
    EXPECT_EQ(channel.operations, 2U);
}

}  // namespace
}  // namespace cloister
