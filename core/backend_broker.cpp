#include "core/backend_broker.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "core/child_process.h"
#include "core/error.h"

namespace cloister {
namespace {

using std::chrono::milliseconds;

// The connection process waits this much longer than the connect timeout for the reply, as
// the supervisor replies from its loop.
constexpr milliseconds reply_margin{1'000};

BackendMessage encode_message(std::uint8_t tag, std::uint32_t value) {
    return {tag, static_cast<std::uint8_t>(value), static_cast<std::uint8_t>(value >> 8U),
            static_cast<std::uint8_t>(value >> 16U), static_cast<std::uint8_t>(value >> 24U)};
}

std::optional<std::uint32_t> parse_message(std::uint8_t tag, std::span<const std::uint8_t> bytes) {
    if (bytes.size() != backend_message_size || bytes[0] != tag) {
        return std::nullopt;
    }
    return static_cast<std::uint32_t>(bytes[1]) | (static_cast<std::uint32_t>(bytes[2]) << 8U) |
           (static_cast<std::uint32_t>(bytes[3]) << 16U) |
           (static_cast<std::uint32_t>(bytes[4]) << 24U);
}

// Receives one message and at most one descriptor from fd, which must be readable.
std::size_t receive_message(int fd, std::span<std::uint8_t> buffer, Fd& descriptor) {
    iovec data{buffer.data(), buffer.size()};
    alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(int))> control{};
    msghdr header{};
    header.msg_iov = &data;
    header.msg_iovlen = 1;
    header.msg_control = control.data();
    header.msg_controllen = control.size();
    const ssize_t received = recvmsg(fd, &header, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (received < 0) {
        if (errno == EAGAIN || errno == EINTR) {
            return buffer.size() + 1;  // nothing yet: not a message of any valid size
        }
        throw Error(ErrorKind::io,
                    fmt::format("reading the supervisor's reply failed: {}", std::strerror(errno)));
    }
    for (cmsghdr* item = CMSG_FIRSTHDR(&header); item != nullptr;
         item = CMSG_NXTHDR(&header, item)) {
        if (item->cmsg_level == SOL_SOCKET && item->cmsg_type == SCM_RIGHTS &&
            item->cmsg_len == CMSG_LEN(sizeof(int))) {
            int received_fd = -1;
            std::memcpy(&received_fd, CMSG_DATA(item), sizeof(received_fd));
            descriptor.reset(received_fd);
        }
    }
    if (received == 0) {
        throw Error(ErrorKind::io, "the supervisor closed the status socket before replying");
    }
    return static_cast<std::size_t>(received);
}

bool one_byte_status(std::span<const std::uint8_t> bytes, std::size_t size) {
    return size == 1 && bytes[0] == 'R';
}

}  // namespace

BackendMessage encode_backend_request(std::uint32_t vhost_index) {
    return encode_message(backend_request_tag, vhost_index);
}

std::optional<std::uint32_t> parse_backend_request(std::span<const std::uint8_t> bytes) {
    return parse_message(backend_request_tag, bytes);
}

BackendMessage encode_backend_reply(int error_number) {
    return encode_message(backend_reply_tag, static_cast<std::uint32_t>(error_number));
}

std::optional<int> parse_backend_reply(std::span<const std::uint8_t> bytes) {
    const auto value = parse_message(backend_reply_tag, bytes);
    if (!value) {
        return std::nullopt;
    }
    return static_cast<int>(*value);
}

Fd request_backend(int status_fd, std::uint32_t vhost_index, milliseconds timeout) {
    const BackendMessage request = encode_backend_request(vhost_index);
    if (send(status_fd, request.data(), request.size(), MSG_NOSIGNAL) !=
        static_cast<ssize_t>(request.size())) {
        throw Error(ErrorKind::io, fmt::format("sending the backend request to the supervisor "
                                               "failed: {}",
                                               std::strerror(errno)));
    }
    const auto deadline = std::chrono::steady_clock::now() + timeout + reply_margin;
    for (;;) {
        const auto left =
            std::chrono::ceil<milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) {
            throw Error(ErrorKind::timeout, fmt::format("no reply from the supervisor within {} ms",
                                                        (timeout + reply_margin).count()));
        }
        pollfd entry{status_fd, POLLIN, 0};
        if (poll(&entry, 1, static_cast<int>(left.count())) <= 0) {
            continue;
        }
        std::array<std::uint8_t, backend_message_size + 1> buffer{};
        Fd descriptor;
        const std::size_t size = receive_message(status_fd, buffer, descriptor);
        if (size > buffer.size() || one_byte_status(buffer, size)) {
            // A retire message sent while this process was still a spare; it no longer applies.
            continue;
        }
        const auto error =
            parse_backend_reply(std::span(buffer).first(std::min(size, buffer.size())));
        if (!error) {
            throw Error(ErrorKind::io, fmt::format("the supervisor sent a malformed reply of {} "
                                                   "bytes to the backend request",
                                                   size));
        }
        if (*error != 0) {
            throw Error(ErrorKind::io,
                        fmt::format("{} (connected by the supervisor)", std::strerror(*error)));
        }
        if (!descriptor) {
            throw Error(ErrorKind::io, "the supervisor's reply carried no socket");
        }
        return descriptor;
    }
}

// ---- the supervisor side ------------------------------------------------------------------

BrokerVerdict BackendBroker::handle_message(const BrokerClient& client,
                                            std::span<const std::uint8_t> message,
                                            std::size_t message_size, const BackendTable& table,
                                            milliseconds connect_timeout) {
    const std::optional<std::uint32_t> index =
        message_size == message.size() ? parse_backend_request(message) : std::nullopt;
    if (!index) {
        reject(client, EBADMSG,
               fmt::format("a malformed message of {} bytes is no backend request", message_size));
        return BrokerVerdict::stop_reading;
    }
    if (!client.serving) {
        reject(client, EPERM, "the process has not accepted a client");
        return BrokerVerdict::stop_reading;
    }
    if (!requested_.insert(client.connection_id).second) {
        reject(client, EALREADY, "a connection gets one backend request, and this is another");
        return BrokerVerdict::stop_reading;
    }
    if (*index >= table.size()) {
        reject(client, EINVAL,
               fmt::format("vhost index {} is out of range ({} vhosts)", *index, table.size()));
        return BrokerVerdict::keep_reading;
    }
    Pending pending;
    pending.reply.reset(fcntl(client.status_fd, F_DUPFD_CLOEXEC, 0));
    if (!pending.reply) {
        spdlog::error("connection {}: duplicating the status socket failed: {}",
                      client.connection_id, std::strerror(errno));
        return BrokerVerdict::keep_reading;
    }
    pending.addresses = table[*index];
    pending.timeout = connect_timeout;
    pending.deadline = Clock::now() + connect_timeout;
    pending.last_error = EDESTADDRREQ;  // no address: the name did not resolve at start
    spdlog::debug("connection {}: connecting the backend of vhost {}", client.connection_id,
                  *index);
    auto [entry, inserted] = pending_.insert_or_assign(client.connection_id, std::move(pending));
    advance(client.connection_id, entry->second);
    if (!entry->second.socket) {
        pending_.erase(entry);
    }
    return BrokerVerdict::keep_reading;
}

void BackendBroker::reject(const BrokerClient& client, int error_number,
                           const std::string& reason) const {
    spdlog::warn("connection {}: rejected a backend request: {}", client.connection_id, reason);
    const BackendMessage reply = encode_backend_reply(error_number);
    // A process that does not read its replies cannot stall the supervisor.
    send(client.status_fd, reply.data(), reply.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

void BackendBroker::advance(std::uint64_t connection_id, Pending& pending) {
    while (pending.next < pending.addresses.size()) {
        const ResolvedAddress& address = pending.addresses[pending.next++];
        Fd fd(socket(address.storage.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
        if (!fd) {
            pending.last_error = errno;
            continue;
        }
        if (connect(fd.get(), address.get(), address.length) == 0) {
            pending.socket = std::move(fd);
            finish(connection_id, pending, 0);
            return;
        }
        if (errno == EINPROGRESS) {
            pending.socket = std::move(fd);
            return;
        }
        // A Unix socket with a full backlog reports EAGAIN; the next address may do better.
        pending.last_error = errno;
    }
    finish(connection_id, pending, pending.last_error);
}

void BackendBroker::finish(std::uint64_t connection_id, Pending& pending, int error_number) {
    if (error_number == 0) {
        set_no_delay(pending.socket.get());
    } else {
        pending.socket.reset();
        spdlog::info("connection {}: backend connect failed: {}", connection_id,
                     std::strerror(error_number));
    }
    const BackendMessage reply = encode_backend_reply(error_number);
    const ssize_t sent = send_with_descriptor(pending.reply.get(), reply, pending.socket.get());
    if (sent != static_cast<ssize_t>(reply.size())) {
        spdlog::warn("connection {}: sending the backend reply failed: {}", connection_id,
                     sent < 0 ? std::strerror(errno) : "short send");
    }
    pending.socket.reset();
}

void BackendBroker::poll_fds(std::vector<pollfd>& fds) const {
    for (const auto& [id, pending] : pending_) {
        fds.push_back({pending.socket.get(), POLLOUT, 0});
    }
}

void BackendBroker::handle_poll(std::span<const pollfd> fds) {
    for (const pollfd& entry : fds) {
        if (entry.revents == 0) {
            continue;
        }
        for (auto it = pending_.begin(); it != pending_.end(); ++it) {
            Pending& pending = it->second;
            if (pending.socket.get() != entry.fd) {
                continue;
            }
            int error = 0;
            socklen_t length = sizeof(error);
            if (getsockopt(entry.fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0) {
                error = errno;
            }
            if (error == 0) {
                finish(it->first, pending, 0);
            } else {
                pending.last_error = error;
                pending.socket.reset();
                advance(it->first, pending);
            }
            if (!pending.socket) {
                pending_.erase(it);
            }
            break;
        }
    }
}

void BackendBroker::handle_timeouts(Clock::time_point now) {
    for (auto it = pending_.begin(); it != pending_.end();) {
        if (now < it->second.deadline) {
            ++it;
            continue;
        }
        spdlog::info("connection {}: backend connect timed out after {} ms", it->first,
                     it->second.timeout.count());
        finish(it->first, it->second, ETIMEDOUT);
        it = pending_.erase(it);
    }
}

std::optional<BackendBroker::Clock::time_point> BackendBroker::next_deadline() const {
    std::optional<Clock::time_point> next;
    for (const auto& [id, pending] : pending_) {
        if (!next || pending.deadline < *next) {
            next = pending.deadline;
        }
    }
    return next;
}

void BackendBroker::forget(std::uint64_t connection_id) {
    requested_.erase(connection_id);
    pending_.erase(connection_id);
}

}  // namespace cloister
