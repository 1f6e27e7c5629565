// Tests of the connection summary line and of backend connections against real sockets.
#include "core/connection.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/listener.h"

namespace cloister {
namespace {

using namespace std::chrono_literals;

ConnectionSummary full_summary() {
    ConnectionSummary summary;
    summary.peer = "127.0.0.1:5555";
    summary.sni = "www.example.test";
    summary.vhost = "www.example.test";
    summary.protocol = "TLSv1.3";
    summary.cipher = "TLS_AES_256_GCM_SHA384";
    summary.scheme = "rsa_pss_rsae_sha256";
    summary.alpn = "http/1.1";
    summary.bytes_in = 78;
    summary.bytes_out = 1234;
    summary.duration = 15ms;
    return summary;
}

TEST(FormatSummary, OkLineHasEveryField) {
    EXPECT_EQ(format_summary(full_summary()),
              "connection closed: peer=127.0.0.1:5555 sni=www.example.test "
              "vhost=www.example.test protocol=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384 "
              "scheme=rsa_pss_rsae_sha256 alpn=http/1.1 bytes_in=78 bytes_out=1234 "
              "duration_ms=15 result=ok");
}

TEST(FormatSummary, FailureHasQuotedReason) {
    ConnectionSummary summary;
    summary.peer = "[::1]:4000";
    summary.result = ConnectionResult::handshake_failed;
    summary.reason = "no shared cipher \"x\"";
    EXPECT_EQ(format_summary(summary),
              "connection closed: peer=[::1]:4000 sni=- vhost=- protocol=- cipher=- scheme=- "
              "alpn=- bytes_in=0 bytes_out=0 duration_ms=0 result=handshake_failed "
              "reason=\"no shared cipher \\x22x\\x22\"");
}

// A client chooses its SNI, so spaces and line breaks in it must not forge log fields.
TEST(FormatSummary, PeerValuesAreEscaped) {
    ConnectionSummary summary = full_summary();
    summary.sni = "a b\nresult=ok\xff";
    const std::string line = format_summary(summary);
    EXPECT_NE(line.find("sni=a\\x20b\\x0aresult=ok\\xff "), std::string::npos) << line;
    EXPECT_EQ(line.find('\n'), std::string::npos);
}

TEST(FormatSummary, EveryResultHasAName) {
    EXPECT_STREQ(to_string(ConnectionResult::ok), "ok");
    EXPECT_STREQ(to_string(ConnectionResult::handshake_failed), "handshake_failed");
    EXPECT_STREQ(to_string(ConnectionResult::handshake_timeout), "handshake_timeout");
    EXPECT_STREQ(to_string(ConnectionResult::backend_unreachable), "backend_unreachable");
    EXPECT_STREQ(to_string(ConnectionResult::idle_timeout), "idle_timeout");
    EXPECT_STREQ(to_string(ConnectionResult::truncated), "truncated");
    EXPECT_STREQ(to_string(ConnectionResult::error), "error");
}

SocketAddress tcp_address(const std::string& host, std::uint16_t port) {
    SocketAddress address;
    address.kind = SocketAddress::Kind::tcp;
    address.host = host;
    address.port = port;
    address.text = host + ":" + std::to_string(port);
    return address;
}

std::uint16_t local_port(int fd) {
    sockaddr_in address{};
    socklen_t length = sizeof(address);
    EXPECT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length), 0);
    return ntohs(address.sin_port);
}

TEST(ConnectBackend, ConnectsToListeningPort) {
    const Listener listener = open_listener(tcp_address("127.0.0.1", 0));
    const Fd fd = connect_backend(tcp_address("127.0.0.1", local_port(listener.fd.get())), 2s);
    ASSERT_TRUE(fd.valid());
    EXPECT_NE(fcntl(fd.get(), F_GETFL) & O_NONBLOCK, 0);
    EXPECT_NE(fcntl(fd.get(), F_GETFD) & FD_CLOEXEC, 0);
}

TEST(ConnectBackend, ClosedPortIsRefused) {
    std::uint16_t port = 0;
    {
        const Listener listener = open_listener(tcp_address("127.0.0.1", 0));
        port = local_port(listener.fd.get());
    }
    try {
        connect_backend(tcp_address("127.0.0.1", port), 2s);
        FAIL() << "connect_backend succeeded on a closed port";
    } catch (const Error& error) {
        EXPECT_EQ(error.kind(), ErrorKind::io);
        EXPECT_STREQ(error.what(), "Connection refused");
    }
}

TEST(ConnectBackend, MissingUnixSocketFails) {
    SocketAddress address;
    address.kind = SocketAddress::Kind::unix_socket;
    address.path = "/nonexistent/cloister-test.sock";
    address.text = "unix:" + address.path;
    try {
        connect_backend(address, 2s);
        FAIL() << "connect_backend succeeded on a missing socket";
    } catch (const Error& error) {
        EXPECT_EQ(error.kind(), ErrorKind::io);
        EXPECT_STREQ(error.what(), "No such file or directory");
    }
}

TEST(ConnectBackend, ConnectsToUnixSocket) {
    SocketAddress address;
    address.kind = SocketAddress::Kind::unix_socket;
    address.path = "/tmp/cloister-connection-test-" + std::to_string(getpid()) + ".sock";
    address.text = "unix:" + address.path;
    const Listener listener = open_listener(address);
    const Fd fd = connect_backend(address, 2s);
    EXPECT_TRUE(fd.valid());
    unlink(address.path.c_str());
}

// A listener whose accept queue is full drops new SYNs, so the connect never completes.
TEST(ConnectBackend, FullBacklogTimesOut) {
    Fd listener(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(bind(listener.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    ASSERT_EQ(listen(listener.get(), 0), 0);
    const std::uint16_t port = local_port(listener.get());
    std::vector<Fd> fillers;
    for (int i = 0; i < 4; ++i) {
        try {
            fillers.push_back(connect_backend(tcp_address("127.0.0.1", port), 200ms));
        } catch (const Error&) {
            break;
        }
    }
    const auto started = std::chrono::steady_clock::now();
    try {
        fillers.push_back(connect_backend(tcp_address("127.0.0.1", port), 300ms));
        FAIL() << "connect_backend succeeded although the accept queue was full";
    } catch (const Error& error) {
        EXPECT_EQ(error.kind(), ErrorKind::timeout);
        EXPECT_STREQ(error.what(), "connect timed out after 300 ms");
    }
    EXPECT_GE(std::chrono::steady_clock::now() - started, 300ms);
}

}  // namespace
}  // namespace cloister
