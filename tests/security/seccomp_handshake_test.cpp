// Real work under the real filters: a forked child installs a role's enforcing seccomp filter
// and then runs what that role does in production, against a peer in the test process.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <csignal>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/fd.h"
#include "core/seccomp_policy.h"
#include "tests/security/child.h"

namespace cloister {
namespace {

using testing::describe_status;
using testing::exited_zero;
using testing::run_in_child;

struct PkeyDeleter {
    void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDeleter>;
struct X509Deleter {
    void operator()(X509* cert) const { X509_free(cert); }
};
using X509Ptr = std::unique_ptr<X509, X509Deleter>;
struct SslCtxDeleter {
    void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxDeleter>;
struct SslDeleter {
    void operator()(SSL* ssl) const { SSL_free(ssl); }
};
using SslPtr = std::unique_ptr<SSL, SslDeleter>;
struct MdCtxDeleter {
    void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, MdCtxDeleter>;

constexpr std::string_view request_text = "ping";
constexpr std::string_view response_text = "pong";

PkeyPtr generate_key(bool rsa) {
    return PkeyPtr(rsa ? EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048})
                       : EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
}

// A self-signed certificate for CN=localhost, valid for one day.
X509Ptr self_signed(EVP_PKEY* key) {
    X509Ptr cert(X509_new());
    X509_set_version(cert.get(), 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert.get()), 0);
    X509_gmtime_adj(X509_getm_notAfter(cert.get()), 86400);
    X509_NAME* name = X509_get_subject_name(cert.get());
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("localhost"), -1, -1, 0);
    X509_set_issuer_name(cert.get(), name);
    X509_set_pubkey(cert.get(), key);
    X509_sign(cert.get(), key, EVP_sha256());
    return cert;
}

struct HandshakeCase {
    const char* name;
    bool rsa;
    int version;  // TLS1_2_VERSION or TLS1_3_VERSION
};

// The server context is built before fork, as the supervisor builds the TLS stack.
SslCtxPtr server_context(const HandshakeCase& test_case) {
    PkeyPtr key = generate_key(test_case.rsa);
    X509Ptr cert = self_signed(key.get());
    SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
    SSL_CTX_use_certificate(ctx.get(), cert.get());
    SSL_CTX_use_PrivateKey(ctx.get(), key.get());
    SSL_CTX_set_min_proto_version(ctx.get(), test_case.version);
    SSL_CTX_set_max_proto_version(ctx.get(), test_case.version);
    return ctx;
}

// The child: filter first, then accept one TLS connection, read the request, send the
// response and close. Returns a distinct exit code for each step that fails.
int serve_one_connection(SSL_CTX* ctx, int fd) {
    install_seccomp(SeccompRole::connection, SeccompMode::enforce);
    SslPtr ssl(SSL_new(ctx));
    SSL_set_fd(ssl.get(), fd);
    if (SSL_accept(ssl.get()) != 1) {
        return 10;
    }
    std::array<char, 16> buffer{};
    const int size = SSL_read(ssl.get(), buffer.data(), static_cast<int>(buffer.size()));
    if (size != static_cast<int>(request_text.size()) ||
        std::string_view(buffer.data(), request_text.size()) != request_text) {
        return 11;
    }
    if (SSL_write(ssl.get(), response_text.data(), static_cast<int>(response_text.size())) <= 0) {
        return 12;
    }
    SSL_shutdown(ssl.get());
    spdlog::info("log line written under the connection filter");
    return 0;
}

// The client side, in the test process: returns the negotiated version and the response.
std::pair<std::string, std::string> run_client(int fd) {
    SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
    SslPtr ssl(SSL_new(ctx.get()));
    SSL_set_fd(ssl.get(), fd);
    if (SSL_connect(ssl.get()) != 1) {
        return {"handshake failed", ""};
    }
    SSL_write(ssl.get(), request_text.data(), static_cast<int>(request_text.size()));
    std::array<char, 16> buffer{};
    const int size = SSL_read(ssl.get(), buffer.data(), static_cast<int>(buffer.size()));
    return {SSL_get_version(ssl.get()),
            std::string(buffer.data(), static_cast<std::size_t>(std::max(size, 0)))};
}

void PrintTo(const HandshakeCase& test_case, std::ostream* out) {
    *out << test_case.name;
}

class ConnectionFilterHandshake : public ::testing::TestWithParam<HandshakeCase> {};

TEST_P(ConnectionFilterHandshake, CompletesUnderEnforcingFilter) {
    testing::use_stderr_logger();
    // A child killed mid-handshake must fail the test, not end the test process with SIGPIPE.
    ::signal(SIGPIPE, SIG_IGN);
    const SslCtxPtr ctx = server_context(GetParam());
    std::array<int, 2> fds{};
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds.data()), 0);
    Fd client(fds[0]);
    Fd server(fds[1]);
    // Fork before the client thread starts, so that the child inherits no lock it holds.
    const pid_t child =
        testing::start_child([&] { return serve_one_connection(ctx.get(), server.get()); });
    server.reset();
    const auto result = run_client(client.get());
    const int status = testing::wait_child(child);
    EXPECT_TRUE(exited_zero(status)) << describe_status(status);
    EXPECT_EQ(result.first, GetParam().version == TLS1_3_VERSION ? "TLSv1.3" : "TLSv1.2");
    EXPECT_EQ(result.second, response_text);
}

INSTANTIATE_TEST_SUITE_P(OpenSsl, ConnectionFilterHandshake,
                         ::testing::Values(HandshakeCase{"Tls13Rsa", true, TLS1_3_VERSION},
                                           HandshakeCase{"Tls12Rsa", true, TLS1_2_VERSION},
                                           HandshakeCase{"Tls13Ecdsa", false, TLS1_3_VERSION},
                                           HandshakeCase{"Tls12Ecdsa", false, TLS1_2_VERSION}),
                         [](const auto& param_info) { return std::string(param_info.param.name); });

// A listening socket on 127.0.0.1 with a kernel-chosen port.
Fd loopback_listener(std::uint16_t& port) {
    Fd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(address);
    if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&address), length) != 0 ||
        ::listen(listener.get(), 1) != 0 ||
        ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&address), &length) != 0) {
        return Fd();
    }
    port = ntohs(address.sin_port);
    return listener;
}

// The child: filter first, then a non-blocking TCP connect as the backend connect does it.
int connect_to_backend(std::uint16_t port) {
    install_seccomp(SeccompRole::connection, SeccompMode::enforce);
    const Fd socket(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!socket) {
        return 20;
    }
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(socket.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 &&
        errno != EINPROGRESS) {
        return 21;
    }
    pollfd waiting{socket.get(), POLLOUT, 0};
    int error = 0;
    socklen_t error_size = sizeof(error);
    if (::poll(&waiting, 1, 5000) != 1 ||
        ::getsockopt(socket.get(), SOL_SOCKET, SO_ERROR, &error, &error_size) != 0 || error != 0) {
        return 22;
    }
    return ::send(socket.get(), request_text.data(), request_text.size(), 0) ==
                   static_cast<ssize_t>(request_text.size())
               ? 0
               : 23;
}

TEST(ConnectionFilter, ConnectsToLoopbackBackend) {
    std::uint16_t port = 0;
    const Fd listener = loopback_listener(port);
    ASSERT_TRUE(listener.valid());
    const int status = run_in_child([&] { return connect_to_backend(port); });
    EXPECT_TRUE(exited_zero(status)) << describe_status(status);
    const Fd accepted(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    ASSERT_TRUE(accepted.valid());
    std::array<char, 8> buffer{};
    const ssize_t size = ::recv(accepted.get(), buffer.data(), buffer.size(), 0);
    EXPECT_EQ(std::string_view(buffer.data(), static_cast<std::size_t>(std::max<ssize_t>(size, 0))),
              request_text);
}

// Signs with RSA-PSS and checks the signature, as a key process worker does.
bool sign_and_verify(EVP_PKEY* key) {
    const std::array<unsigned char, 32> message{1, 2, 3};
    MdCtxPtr sign_ctx(EVP_MD_CTX_new());
    EVP_PKEY_CTX* params = nullptr;
    std::array<unsigned char, 512> signature{};
    std::size_t signature_size = signature.size();
    if (EVP_DigestSignInit(sign_ctx.get(), &params, EVP_sha256(), nullptr, key) != 1 ||
        EVP_PKEY_CTX_set_rsa_padding(params, RSA_PKCS1_PSS_PADDING) != 1 ||
        EVP_DigestSign(sign_ctx.get(), signature.data(), &signature_size, message.data(),
                       message.size()) != 1) {
        return false;
    }
    MdCtxPtr verify_ctx(EVP_MD_CTX_new());
    return EVP_DigestVerifyInit(verify_ctx.get(), &params, EVP_sha256(), nullptr, key) == 1 &&
           EVP_PKEY_CTX_set_rsa_padding(params, RSA_PKCS1_PSS_PADDING) == 1 &&
           EVP_DigestVerify(verify_ctx.get(), signature.data(), signature_size, message.data(),
                            message.size()) == 1;
}

// Receives one descriptor in SCM_RIGHTS, as the key process adopts a new key channel.
Fd receive_descriptor(int channel) {
    std::array<char, 16> data{};
    iovec vector{data.data(), data.size()};
    alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(int))> control{};
    msghdr message{};
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    message.msg_control = control.data();
    message.msg_controllen = control.size();
    if (::recvmsg(channel, &message, MSG_CMSG_CLOEXEC) <= 0) {
        return Fd();
    }
    const cmsghdr* header = CMSG_FIRSTHDR(&message);
    if (header == nullptr || header->cmsg_type != SCM_RIGHTS) {
        return Fd();
    }
    int fd = -1;
    std::memcpy(&fd, CMSG_DATA(header), sizeof(fd));
    return Fd(fd);
}

bool send_descriptor(int channel, int fd) {
    char byte = 'a';
    iovec vector{&byte, 1};
    alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(int))> control{};
    msghdr message{};
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    message.msg_control = control.data();
    message.msg_controllen = control.size();
    cmsghdr* header = CMSG_FIRSTHDR(&message);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(header), &fd, sizeof(fd));
    return ::sendmsg(channel, &message, 0) == 1;
}

// The child: filter first, then two worker threads sign, and a descriptor received over the
// control channel carries the result back.
int run_key_workers(EVP_PKEY* key, int control) {
    install_seccomp(SeccompRole::key_memory, SeccompMode::enforce);
    std::array<bool, 2> signed_ok{};
    std::vector<std::thread> workers;
    for (bool& ok : signed_ok) {
        workers.emplace_back([&ok, key] { ok = sign_and_verify(key); });
    }
    for (std::thread& worker : workers) {
        worker.join();
    }
    if (!signed_ok[0] || !signed_ok[1]) {
        return 30;
    }
    const Fd channel = receive_descriptor(control);
    if (!channel) {
        return 31;
    }
    return ::write(channel.get(), "ok", 2) == 2 ? 0 : 32;
}

TEST(KeyMemoryFilter, SignsInThreadsAndAdoptsChannel) {
    const PkeyPtr key = generate_key(true);
    ASSERT_TRUE(key);
    std::array<int, 2> control{};
    std::array<int, 2> channel{};
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, control.data()), 0);
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, channel.data()), 0);
    const Fd control_ours(control[0]);
    const Fd control_theirs(control[1]);
    const Fd channel_ours(channel[0]);
    Fd channel_theirs(channel[1]);
    ASSERT_TRUE(send_descriptor(control_ours.get(), channel_theirs.get()));
    channel_theirs.reset();
    const int status =
        run_in_child([&] { return run_key_workers(key.get(), control_theirs.get()); });
    EXPECT_TRUE(exited_zero(status)) << describe_status(status);
    std::array<char, 4> buffer{};
    EXPECT_EQ(::recv(channel_ours.get(), buffer.data(), buffer.size(), MSG_DONTWAIT), 2);
    EXPECT_EQ(std::string_view(buffer.data(), 2), "ok");
}

}  // namespace
}  // namespace cloister
