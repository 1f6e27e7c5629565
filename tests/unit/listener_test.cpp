// Tests of listening sockets and address formatting against the real socket API.
#include "core/listener.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"

namespace cloister {
namespace {

SocketAddress tcp_address(const std::string& host, std::uint16_t port) {
    SocketAddress address;
    address.host = host;
    address.port = port;
    address.text = (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" +
                   std::to_string(port);
    return address;
}

SocketAddress unix_address(const std::string& path) {
    SocketAddress address;
    address.kind = SocketAddress::Kind::unix_socket;
    address.path = path;
    address.text = "unix:" + path;
    return address;
}

int int_option(int fd, int level, int name) {
    int value = -1;
    socklen_t length = sizeof(value);
    EXPECT_EQ(getsockopt(fd, level, name, &value, &length), 0);
    return value;
}

bool ipv6_loopback_available() {
    try {
        open_listener(tcp_address("::1", 0));
        return true;
    } catch (const Error&) {
        return false;
    }
}

TEST(OpenListener, Ipv4HasExpectedOptions) {
    const Listener listener = open_listener(tcp_address("127.0.0.1", 0));
    const int fd = listener.fd.get();
    EXPECT_TRUE(listener.address.starts_with("127.0.0.1:")) << listener.address;
    EXPECT_NE(listener.address, "127.0.0.1:0");
    EXPECT_NE(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
    EXPECT_NE(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
    EXPECT_EQ(int_option(fd, SOL_SOCKET, SO_REUSEADDR), 1);
    EXPECT_EQ(int_option(fd, SOL_SOCKET, SO_ACCEPTCONN), 1);
}

TEST(OpenListener, Ipv6IsV6Only) {
    if (!ipv6_loopback_available()) {
        GTEST_SKIP() << "no IPv6 loopback";
    }
    const Listener listener = open_listener(tcp_address("::1", 0));
    EXPECT_TRUE(listener.address.starts_with("[::1]:")) << listener.address;
    EXPECT_EQ(int_option(listener.fd.get(), IPPROTO_IPV6, IPV6_V6ONLY), 1);
}

TEST(OpenListener, AddressInUseNamesAddress) {
    const Listener first = open_listener(tcp_address("127.0.0.1", 0));
    const std::string port = first.address.substr(first.address.rfind(':') + 1);
    const SocketAddress same =
        tcp_address("127.0.0.1", static_cast<std::uint16_t>(std::stoi(port)));
    try {
        open_listener(same);
        FAIL() << "a second listener bound " << same.text;
    } catch (const Error& error) {
        EXPECT_EQ(error.kind(), ErrorKind::system);
        EXPECT_EQ(error.error_number(), EADDRINUSE);
        EXPECT_EQ(std::string(error.what()),
                  "bind to " + same.text + " failed: Address already in use");
    }
}

TEST(OpenListeners, AddressInUseNamesLocationAndFix) {
    const Listener first = open_listener(tcp_address("127.0.0.1", 0));
    const std::string port = first.address.substr(first.address.rfind(':') + 1);
    const std::vector<ListenerConfig> listeners{
        {tcp_address("127.0.0.1", 0), SourceLocation{"cloister.toml", 2, 11}},
        {tcp_address("127.0.0.1", static_cast<std::uint16_t>(std::stoi(port))),
         SourceLocation{"cloister.toml", 5, 11}},
    };
    try {
        static_cast<void>(open_listeners(listeners));
        FAIL() << "a second listener bound port " << port;
    } catch (const Error& error) {
        EXPECT_EQ(error.kind(), ErrorKind::system);
        EXPECT_EQ(error.error_number(), EADDRINUSE);
        EXPECT_EQ(std::string(error.what()),
                  "cloister.toml:5:11: listener[1].address: bind to 127.0.0.1:" + port +
                      " failed: Address already in use; stop the program that uses this "
                      "address or choose another one");
    }
}

TEST(OpenListener, UnixSocketReplacesStaleSocket) {
    const std::string path = "/tmp/cloister-listener-test-" + std::to_string(getpid()) + ".sock";
    {
        const Listener first = open_listener(unix_address(path));
        EXPECT_EQ(first.address, "unix:" + path);
    }
    // The first socket file is still there; a new listener replaces it.
    const Listener second = open_listener(unix_address(path));
    struct stat info {};
    ASSERT_EQ(stat(path.c_str(), &info), 0);
    EXPECT_TRUE(S_ISSOCK(info.st_mode));
    unlink(path.c_str());
}

TEST(OpenListener, UnixPathThatIsRegularFileIsKept) {
    const std::string path = "/tmp/cloister-listener-test-" + std::to_string(getpid()) + ".txt";
    std::ofstream(path) << "keep me";
    EXPECT_THROW(open_listener(unix_address(path)), Error);
    std::ifstream file(path);
    std::string content;
    std::getline(file, content);
    EXPECT_EQ(content, "keep me");
    unlink(path.c_str());
}

TEST(FormatAddress, Families) {
    sockaddr_in in{};
    in.sin_family = AF_INET;
    in.sin_port = htons(5555);
    inet_pton(AF_INET, "192.0.2.7", &in.sin_addr);
    EXPECT_EQ(format_address(reinterpret_cast<sockaddr*>(&in), sizeof(in)), "192.0.2.7:5555");

    sockaddr_in6 in6{};
    in6.sin6_family = AF_INET6;
    in6.sin6_port = htons(443);
    inet_pton(AF_INET6, "2001:db8::1", &in6.sin6_addr);
    EXPECT_EQ(format_address(reinterpret_cast<sockaddr*>(&in6), sizeof(in6)), "[2001:db8::1]:443");

    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    EXPECT_EQ(format_address(reinterpret_cast<sockaddr*>(&un), sizeof(sa_family_t)), "unix");
    const std::string path = "/run/app.sock";
    path.copy(un.sun_path, path.size());
    EXPECT_EQ(format_address(reinterpret_cast<sockaddr*>(&un), sizeof(un)), "unix:/run/app.sock");
}

}  // namespace
}  // namespace cloister
