// A Botan 2 TLS 1.2 server handshake in a forked child under the enforcing connection filter,
// against an OpenSSL client in the test process. Built only when botan-2 is installed.
#include <botan/auto_rng.h>
#include <botan/ecdsa.h>
#include <botan/system_rng.h>
#include <botan/tls_callbacks.h>
#include <botan/tls_server.h>
#include <botan/tls_session_manager.h>
#include <botan/x509self.h>
#include <gtest/gtest.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <csignal>
#include <memory>
#include <string>
#include <vector>

#include "core/fd.h"
#include "core/seccomp_policy.h"
#include "tests/security/child.h"

namespace cloister {
namespace {

using testing::describe_status;
using testing::exited_zero;

constexpr std::string_view request_text = "ping";
constexpr std::string_view response_text = "pong";

class TestCredentials : public Botan::Credentials_Manager {
  public:
    explicit TestCredentials(Botan::RandomNumberGenerator& rng)
        : key_(rng, Botan::EC_Group("secp256r1")),
          cert_(Botan::X509::create_self_signed_cert(Botan::X509_Cert_Options("localhost"), key_,
                                                     "SHA-256", rng)) {}

    std::vector<Botan::X509_Certificate> cert_chain(const std::vector<std::string>& algorithms,
                                                    const std::string& /*type*/,
                                                    const std::string& /*hostname*/) override {
        for (const std::string& algorithm : algorithms) {
            if (algorithm == "ECDSA") {
                return {cert_};
            }
        }
        return {};
    }

    Botan::Private_Key* private_key_for(const Botan::X509_Certificate& /*cert*/,
                                        const std::string& /*type*/,
                                        const std::string& /*context*/) override {
        return &key_;
    }

  private:
    Botan::ECDSA_PrivateKey key_;
    Botan::X509_Certificate cert_;
};

class SocketCallbacks : public Botan::TLS::Callbacks {
  public:
    explicit SocketCallbacks(int fd) : fd_(fd) {}

    void tls_emit_data(const uint8_t data[], size_t size) override {
        while (size > 0) {
            const ssize_t written = ::write(fd_, data, size);
            if (written <= 0) {
                failed_ = true;
                return;
            }
            data += written;
            size -= static_cast<size_t>(written);
        }
    }
    void tls_record_received(uint64_t /*sequence*/, const uint8_t data[], size_t size) override {
        received_.append(reinterpret_cast<const char*>(data), size);
    }
    void tls_alert(Botan::TLS::Alert /*alert*/) override {}
    bool tls_session_established(const Botan::TLS::Session& /*session*/) override { return false; }

    [[nodiscard]] const std::string& received() const { return received_; }
    [[nodiscard]] bool failed() const { return failed_; }

  private:
    int fd_;
    std::string received_;
    bool failed_ = false;
};

// The child: filter first, then serve one TLS 1.2 connection with Botan.
int serve_with_botan(TestCredentials& credentials, Botan::RandomNumberGenerator& rng, int fd) {
    install_seccomp(SeccompRole::connection, SeccompMode::enforce);
    SocketCallbacks callbacks(fd);
    Botan::TLS::Session_Manager_Noop sessions;
    const Botan::TLS::Policy policy;
    Botan::TLS::Server server(callbacks, sessions, credentials, policy, rng);
    std::array<uint8_t, 16384> buffer{};
    while (callbacks.received().size() < request_text.size() && !callbacks.failed()) {
        const ssize_t size = ::read(fd, buffer.data(), buffer.size());
        if (size <= 0) {
            return 40;
        }
        server.received_data(buffer.data(), static_cast<size_t>(size));
    }
    if (callbacks.received() != request_text) {
        return 41;
    }
    server.send(std::string(response_text));
    server.close();
    return callbacks.failed() ? 42 : 0;
}

struct SslCtxDeleter {
    void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};
struct SslDeleter {
    void operator()(SSL* ssl) const { SSL_free(ssl); }
};

std::pair<std::string, std::string> run_openssl_client(int fd) {
    const std::unique_ptr<SSL_CTX, SslCtxDeleter> ctx(SSL_CTX_new(TLS_client_method()));
    const std::unique_ptr<SSL, SslDeleter> ssl(SSL_new(ctx.get()));
    SSL_set_fd(ssl.get(), fd);
    if (SSL_connect(ssl.get()) != 1) {
        return {"handshake failed", ""};
    }
    SSL_write(ssl.get(), request_text.data(), static_cast<int>(request_text.size()));
    std::array<char, 16> buffer{};
    const int size = SSL_read(ssl.get(), buffer.data(), static_cast<int>(buffer.size()));
    return {SSL_get_cipher_name(ssl.get()),
            std::string(buffer.data(), static_cast<std::size_t>(std::max(size, 0)))};
}

TEST(BotanConnectionFilter, Tls12EcdsaHandshakeCompletes) {
    testing::use_stderr_logger();
    ::signal(SIGPIPE, SIG_IGN);
    // Botan 2.19's system RNG opens /dev/urandom on first use and keeps the descriptor; it
    // must be open before the filter, which forbids open.
    Botan::system_rng();
    Botan::AutoSeeded_RNG rng;
    TestCredentials credentials(rng);
    std::array<int, 2> fds{};
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds.data()), 0);
    const Fd client(fds[0]);
    Fd server(fds[1]);
    const pid_t child =
        testing::start_child([&] { return serve_with_botan(credentials, rng, server.get()); });
    server.reset();
    const auto [cipher, response] = run_openssl_client(client.get());
    const int status = testing::wait_child(child);
    EXPECT_TRUE(exited_zero(status)) << describe_status(status);
    EXPECT_NE(cipher.find("ECDHE-ECDSA"), std::string::npos) << cipher;
    EXPECT_EQ(response, response_text);
}

}  // namespace
}  // namespace cloister
