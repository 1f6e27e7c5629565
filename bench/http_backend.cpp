// cloister-bench-backend: the plaintext HTTP/1.1 server behind every proxy in bench/run.
// Keep-alive, one thread per connection, on 127.0.0.1 only. "GET /bytes/N" returns N bytes;
// every other request returns a 64-byte body. The demo backend closes each connection and
// logs each request, so it would measure itself instead of the proxies.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>

namespace {

constexpr std::size_t max_request_head = 16384;
constexpr std::uint64_t max_body = std::uint64_t{64} << 30;  // 64 GiB
const std::string small_body(64, 'x');
const std::array<char, 65536> zeros{};

bool send_all(int fd, const char* data, std::size_t size) {
    while (size > 0) {
        const ssize_t sent = send(fd, data, size, MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR) {
            continue;
        }
        if (sent <= 0) {
            return false;
        }
        data += sent;
        size -= static_cast<std::size_t>(sent);
    }
    return true;
}

// Returns the body size requested by the request line of head.
std::uint64_t body_size(std::string_view head) {
    constexpr std::string_view prefix = "GET /bytes/";
    if (!head.starts_with(prefix)) {
        return small_body.size();
    }
    std::uint64_t size = 0;
    const char* first = head.data() + prefix.size();
    const auto [end, error] = std::from_chars(first, head.data() + head.size(), size);
    if (error != std::errc{} || end == first || size > max_body) {
        return small_body.size();
    }
    return size;
}

bool respond(int fd, std::string_view head) {
    const std::uint64_t size = body_size(head);
    const bool close = head.find("\r\nConnection: close") != std::string_view::npos ||
                       head.find("\r\nconnection: close") != std::string_view::npos;
    std::string header = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n";
    header += "Content-Length: " + std::to_string(size) + "\r\n";
    header += close ? "Connection: close\r\n\r\n" : "Connection: keep-alive\r\n\r\n";
    if (!head.starts_with("GET /bytes/")) {
        header += small_body;
        return send_all(fd, header.data(), header.size()) && !close;
    }
    if (!send_all(fd, header.data(), header.size())) {
        return false;
    }
    for (std::uint64_t left = size; left > 0;) {
        const std::size_t chunk =
            left < zeros.size() ? static_cast<std::size_t>(left) : zeros.size();
        if (!send_all(fd, zeros.data(), chunk)) {
            return false;
        }
        left -= chunk;
    }
    return !close;
}

// Serves requests on fd until the client closes, sends "Connection: close" or misbehaves.
// Request bodies are not supported: every request is a head that ends with a blank line.
void serve(int fd) {
    std::string buffer;
    std::array<char, 16384> chunk{};
    for (;;) {
        std::size_t end = buffer.find("\r\n\r\n");
        while (end == std::string::npos) {
            if (buffer.size() > max_request_head) {
                close(fd);
                return;
            }
            const ssize_t received = recv(fd, chunk.data(), chunk.size(), 0);
            if (received < 0 && errno == EINTR) {
                continue;
            }
            if (received <= 0) {
                close(fd);
                return;
            }
            buffer.append(chunk.data(), static_cast<std::size_t>(received));
            end = buffer.find("\r\n\r\n");
        }
        const bool keep = respond(fd, std::string_view(buffer).substr(0, end + 4));
        buffer.erase(0, end + 4);
        if (!keep) {
            shutdown(fd, SHUT_WR);
            while (recv(fd, chunk.data(), chunk.size(), 0) > 0) {
            }
            close(fd);
            return;
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s PORT  (listens on 127.0.0.1:PORT)\n", argv[0]);
        return 64;
    }
    int port = 0;
    const std::string_view text(argv[1]);
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), port);
    if (error != std::errc{} || end != text.data() + text.size() || port < 1 || port > 65535) {
        std::fprintf(stderr, "invalid port '%s': expected 1 to 65535\n", argv[1]);
        return 64;
    }
    const int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int on = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<std::uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
        listen(listener, 4096) != 0) {
        std::fprintf(stderr, "cannot listen on 127.0.0.1:%d: %s\n", port, std::strerror(errno));
        return 1;
    }
    std::fprintf(stderr, "cloister-bench-backend listening on 127.0.0.1:%d\n", port);
    for (;;) {
        const int client = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
        if (client < 0) {
            if (errno != EINTR && errno != ECONNABORTED) {
                std::fprintf(stderr, "accept failed: %s\n", std::strerror(errno));
                usleep(10000);  // EMFILE or ENOBUFS: let connections close first
            }
            continue;
        }
        setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
        std::thread(serve, client).detach();
    }
}
