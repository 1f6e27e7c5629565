// cloister-demo-backend: a small plaintext HTTP/1.1 server for the demo. It responds to every
// request with 200 and a short page that shows the request arrived as plaintext, then closes
// the connection. Single-threaded, driven by poll().
#include <fmt/format.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <array>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <list>
#include <string>

#include "core/config.h"
#include "core/error.h"
#include "core/fd.h"
#include "core/listener.h"
#include "core/log.h"

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::size_t max_request_head = 16384;     // bytes up to the blank line
constexpr std::chrono::seconds client_timeout{10};  // per connection, from accept
constexpr std::size_t read_chunk = 4096;

enum class Stage {
    reading,   // collecting the request head
    writing,   // sending the response
    draining,  // response sent and write side shut: reading until EOF, so close sends no RST
};

struct Client {
    cloister::Fd fd;
    std::string peer;
    std::string request;
    std::string response;
    std::size_t sent = 0;
    Stage stage = Stage::reading;
    Clock::time_point deadline;
    bool done = false;
};

std::string make_response(const Client& client) {
    const std::string transport =
        client.peer.starts_with("unix") ? "a Unix socket" : "TCP from " + client.peer;
    const std::string body = fmt::format(
        "Hello from the cloister demo backend.\nYour request reached me as plaintext over {}.\n",
        transport);
    return fmt::format(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n"
        "Connection: close\r\n\r\n{}",
        body.size(), body);
}

std::string make_error_response() {
    const std::string body = "request head too large\n";
    return fmt::format(
        "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\n"
        "Content-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.size(), body);
}

void read_request(Client& client) {
    std::array<char, read_chunk> buffer{};
    const ssize_t received = recv(client.fd.get(), buffer.data(), buffer.size(), 0);
    if (received == 0 || (received < 0 && errno != EAGAIN && errno != EINTR)) {
        client.done = true;
        return;
    }
    if (received < 0) {
        return;
    }
    if (client.stage == Stage::draining) {
        return;
    }
    client.request.append(buffer.data(), static_cast<std::size_t>(received));
    if (client.request.find("\r\n\r\n") != std::string::npos) {
        client.response = make_response(client);
        client.stage = Stage::writing;
    } else if (client.request.size() > max_request_head) {
        client.response = make_error_response();
        client.stage = Stage::writing;
    }
}

void write_response(Client& client) {
    const ssize_t sent = send(client.fd.get(), client.response.data() + client.sent,
                              client.response.size() - client.sent, MSG_NOSIGNAL);
    if (sent < 0) {
        client.done = errno != EAGAIN && errno != EINTR;
        return;
    }
    client.sent += static_cast<std::size_t>(sent);
    if (client.sent == client.response.size()) {
        const auto first_line = client.request.substr(0, client.request.find("\r\n"));
        spdlog::info("responded to {} from {}", first_line.substr(0, 200), client.peer);
        shutdown(client.fd.get(), SHUT_WR);
        client.stage = Stage::draining;
    }
}

void serve_client(Client& client, short revents) {
    if (client.stage == Stage::writing && (revents & (POLLOUT | POLLERR | POLLHUP)) != 0) {
        write_response(client);
    } else if ((revents & (POLLIN | POLLERR | POLLHUP)) != 0) {
        read_request(client);
    }
}

void accept_clients(const cloister::Listener& listener, std::list<Client>& clients) {
    for (;;) {
        sockaddr_storage address{};
        socklen_t length = sizeof(address);
        cloister::Fd fd(accept4(listener.fd.get(), reinterpret_cast<sockaddr*>(&address), &length,
                                SOCK_NONBLOCK | SOCK_CLOEXEC));
        if (!fd) {
            if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
                spdlog::warn("accept failed: {}", std::strerror(errno));
            }
            return;
        }
        std::string peer = cloister::format_address(reinterpret_cast<sockaddr*>(&address), length);
        clients.push_back(Client{std::move(fd),
                                 std::move(peer),
                                 {},
                                 {},
                                 0,
                                 Stage::reading,
                                 Clock::now() + client_timeout,
                                 false});
    }
}

cloister::Fd open_stop_signals() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, nullptr);
    cloister::Fd fd(signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
    if (!fd) {
        cloister::throw_system_error("signalfd failed");
    }
    return fd;
}

// Serves until SIGINT or SIGTERM arrives.
void serve(const cloister::Listener& listener, const cloister::Fd& stop) {
    std::list<Client> clients;
    for (;;) {
        std::vector<pollfd> fds{{stop.get(), POLLIN, 0}, {listener.fd.get(), POLLIN, 0}};
        for (const Client& client : clients) {
            const short events = client.stage == Stage::writing ? POLLOUT : POLLIN;
            fds.push_back({client.fd.get(), events, 0});
        }
        if (poll(fds.data(), fds.size(), 1000) < 0 && errno != EINTR) {
            cloister::throw_system_error("poll failed");
        }
        if (fds[0].revents != 0) {
            return;
        }
        std::size_t index = 2;
        for (Client& client : clients) {
            serve_client(client, fds[index++].revents);
        }
        const auto now = Clock::now();
        clients.remove_if(
            [now](const Client& client) { return client.done || now > client.deadline; });
        if (fds[1].revents != 0) {
            accept_clients(listener, clients);
        }
    }
}

}  // namespace

int main(int argc, char** argv) try {
    cloister::init_logging("demo-backend", cloister::LogLevel::info);
    CLI::App app{"cloister-demo-backend: a plaintext HTTP/1.1 server for the cloister demo"};
    std::string listen = "127.0.0.1:8080";
    app.add_option("--listen", listen, "Address to listen on: host:port, [v6]:port or unix:/path")
        ->capture_default_str();
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& error) {
        return app.exit(error) == 0 ? 0 : 64;
    }
    if (std::signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
        cloister::throw_system_error("ignoring SIGPIPE failed");
    }
    const cloister::Fd stop = open_stop_signals();
    const cloister::Listener listener =
        cloister::open_listener(cloister::SocketAddress::parse(listen));
    spdlog::info("listening on {}", listener.address);
    serve(listener, stop);
    spdlog::info("stopped");
    return 0;
} catch (const cloister::Error& error) {
    spdlog::error("{}", error.what());
    return error.kind() == cloister::ErrorKind::config ? 2 : 1;
} catch (const std::exception& error) {
    spdlog::error("unexpected error: {}", error.what());
    return 1;
}
