// Listening sockets, address resolution and address formatting for log lines.
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/fd.h"

namespace cloister {

// One resolved socket address, ready for bind() or connect().
struct ResolvedAddress {
    sockaddr_storage storage{};
    socklen_t length = 0;

    [[nodiscard]] const sockaddr* get() const {
        return reinterpret_cast<const sockaddr*>(&storage);
    }
};

// Resolves address: TCP host names through getaddrinfo (numeric service), unix_socket paths
// directly. passive selects wildcard addresses for an empty host. Throws Error(config)
// naming the address when it does not resolve.
std::vector<ResolvedAddress> resolve_address(const SocketAddress& address, bool passive);

// A bound, listening socket.
struct Listener {
    Fd fd;
    std::string address;  // the bound address, formatted ("127.0.0.1:8443")
};

// Opens a listening socket on the first address that address resolves to: SO_REUSEADDR,
// IPV6_V6ONLY for IPv6, backlog 1024, non-blocking and close-on-exec. A stale Unix socket
// file at the path is removed first. Throws Error(system) naming the address when the
// socket cannot be bound.
Listener open_listener(const SocketAddress& address);

// Opens listener, the entry index of the config's [[listener]] array. Throws Error naming the
// config line, the address, the reason and the fix.
Listener open_listener(const ListenerConfig& listener, std::size_t index);

// Opens every configured listener, in order.
std::vector<Listener> open_listeners(const std::vector<ListenerConfig>& listeners);

// The address open_listener binds for address, formatted as Listener::address is. Throws
// Error(config) when the address does not resolve.
std::string listener_address(const SocketAddress& address);

// Formats address as "127.0.0.1:5555", "[::1]:5555", "unix:/run/app.sock" or "unix" for an
// unnamed Unix socket.
std::string format_address(const sockaddr* address, socklen_t length);

// Turns Nagle's algorithm off on the TCP socket fd; other sockets are left as they are.
void set_no_delay(int fd);

// Formats the local address of the socket fd.
std::string format_local_address(int fd);

}  // namespace cloister
