#include "core/listener.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>

#include "core/error.h"

namespace cloister {
namespace {

constexpr int listen_backlog = 1024;

using AddrInfoPtr = std::unique_ptr<addrinfo, decltype(&freeaddrinfo)>;

ResolvedAddress resolve_unix(const SocketAddress& address) {
    ResolvedAddress resolved;
    auto* un = reinterpret_cast<sockaddr_un*>(&resolved.storage);
    if (address.path.empty() || address.path.size() >= sizeof(un->sun_path)) {
        throw Error(ErrorKind::config, "socket path of " + address.text +
                                           " is empty or longer than " +
                                           std::to_string(sizeof(un->sun_path) - 1) + " bytes");
    }
    un->sun_family = AF_UNIX;
    std::memcpy(un->sun_path, address.path.data(), address.path.size());
    resolved.length =
        static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + address.path.size() + 1);
    return resolved;
}

std::vector<ResolvedAddress> resolve_tcp(const SocketAddress& address, bool passive) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
    const std::string port = std::to_string(address.port);
    addrinfo* list = nullptr;
    const int status = getaddrinfo(address.host.empty() ? nullptr : address.host.c_str(),
                                   port.c_str(), &hints, &list);
    if (status != 0) {
        throw Error(ErrorKind::config,
                    "address " + address.text + " does not resolve: " + gai_strerror(status));
    }
    const AddrInfoPtr owner(list, &freeaddrinfo);
    std::vector<ResolvedAddress> result;
    for (const addrinfo* entry = list; entry != nullptr; entry = entry->ai_next) {
        ResolvedAddress resolved;
        std::memcpy(&resolved.storage, entry->ai_addr, entry->ai_addrlen);
        resolved.length = entry->ai_addrlen;
        result.push_back(resolved);
    }
    return result;
}

// Removes a Unix socket file left by an earlier run; any other kind of file stays, so bind()
// then fails and names the path.
void remove_stale_socket(const std::string& path) {
    struct stat info {};
    if (lstat(path.c_str(), &info) == 0 && S_ISSOCK(info.st_mode)) {
        unlink(path.c_str());
    }
}

void set_option(int fd, int level, int name, const std::string& address) {
    const int on = 1;
    if (setsockopt(fd, level, name, &on, sizeof(on)) != 0) {
        throw_system_error("setsockopt on listener " + address + " failed");
    }
}

Fd bind_and_listen(const ResolvedAddress& resolved, const SocketAddress& address) {
    const int family = resolved.storage.ss_family;
    Fd fd(socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) {
        throw_system_error("socket for listener " + address.text + " failed");
    }
    if (family != AF_UNIX) {
        set_option(fd.get(), SOL_SOCKET, SO_REUSEADDR, address.text);
    }
    if (family == AF_INET6) {
        set_option(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, address.text);
    }
    if (family == AF_UNIX) {
        remove_stale_socket(address.path);
    }
    if (bind(fd.get(), resolved.get(), resolved.length) != 0) {
        throw_system_error("bind to " + address.text + " failed");
    }
    if (listen(fd.get(), listen_backlog) != 0) {
        throw_system_error("listen on " + address.text + " failed");
    }
    return fd;
}

}  // namespace

std::vector<ResolvedAddress> resolve_address(const SocketAddress& address, bool passive) {
    if (address.kind == SocketAddress::Kind::unix_socket) {
        return {resolve_unix(address)};
    }
    return resolve_tcp(address, passive);
}

Listener open_listener(const SocketAddress& address) {
    const std::vector<ResolvedAddress> resolved = resolve_address(address, true);
    // NOTE: a host name that resolves to several addresses is bound on the first one only.
    Fd fd = bind_and_listen(resolved.front(), address);
    std::string bound = format_local_address(fd.get());
    return Listener{std::move(fd), std::move(bound)};
}

namespace {

// The next step for an operator whose listener failed to open with error_number.
std::string listener_fix(int error_number) {
    switch (error_number) {
        case EADDRINUSE:
            return "; stop the program that uses this address or choose another one";
        case EADDRNOTAVAIL:
            return "; no local interface has this address: choose one that does, or \"0.0.0.0\" "
                   "or \"[::]\" for all";
        case EAFNOSUPPORT:
            return "; the host does not support this address family (IPv6 may be disabled): "
                   "remove this listener or enable the family";
        case EACCES:
            return "; ports below 1024 need root or CAP_NET_BIND_SERVICE";
        default:
            return "";
    }
}

}  // namespace

Listener open_listener(const ListenerConfig& listener, std::size_t index) {
    try {
        return open_listener(listener.address);
    } catch (const Error& error) {
        // Names the config line and the fix, keeping the kind and errno of the failure.
        throw Error(error.kind(),
                    listener.where.to_string() + ": listener[" + std::to_string(index) +
                        "].address: " + error.what() + listener_fix(error.error_number()),
                    error.error_number());
    }
}

std::vector<Listener> open_listeners(const std::vector<ListenerConfig>& listeners) {
    std::vector<Listener> result;
    result.reserve(listeners.size());
    for (std::size_t i = 0; i < listeners.size(); ++i) {
        result.push_back(open_listener(listeners[i], i));
    }
    return result;
}

std::string listener_address(const SocketAddress& address) {
    const ResolvedAddress first = resolve_address(address, true).front();
    return format_address(first.get(), first.length);
}

std::string format_address(const sockaddr* address, socklen_t length) {
    std::array<char, INET6_ADDRSTRLEN> text{};
    switch (address->sa_family) {
        case AF_INET: {
            const auto* in = reinterpret_cast<const sockaddr_in*>(address);
            inet_ntop(AF_INET, &in->sin_addr, text.data(), text.size());
            return std::string(text.data()) + ":" + std::to_string(ntohs(in->sin_port));
        }
        case AF_INET6: {
            const auto* in6 = reinterpret_cast<const sockaddr_in6*>(address);
            inet_ntop(AF_INET6, &in6->sin6_addr, text.data(), text.size());
            return "[" + std::string(text.data()) + "]:" + std::to_string(ntohs(in6->sin6_port));
        }
        case AF_UNIX: {
            const auto* un = reinterpret_cast<const sockaddr_un*>(address);
            const auto path_length =
                static_cast<std::size_t>(length) - offsetof(sockaddr_un, sun_path);
            if (length <= offsetof(sockaddr_un, sun_path) || un->sun_path[0] == '\0') {
                return "unix";
            }
            return "unix:" + std::string(un->sun_path, strnlen(un->sun_path, path_length));
        }
        default:
            return "address family " + std::to_string(address->sa_family);
    }
}

void set_no_delay(int fd) {
    const int on = 1;
    // Only TCP sockets have the option; a Unix socket reports an error, which is harmless.
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
}

std::string format_local_address(int fd) {
    sockaddr_storage storage{};
    socklen_t length = sizeof(storage);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&storage), &length) != 0) {
        throw_system_error("getsockname failed");
    }
    return format_address(reinterpret_cast<const sockaddr*>(&storage), length);
}

}  // namespace cloister
