#include "core/key_client.h"

#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <utility>

#include "core/error.h"

#ifdef CLOISTER_BENCH_INPROCESS_KEYS
#include "bench/inprocess/inprocess_keys.h"
#endif

namespace cloister {
namespace {

using Clock = std::chrono::steady_clock;

// Waits until fd reports one of events or deadline passes. Restarts after EINTR with the
// time that is left, so the deadline covers the whole round trip.
void wait_for(int fd, short events, Clock::time_point deadline, std::chrono::milliseconds timeout) {
    while (true) {
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) {
            throw Error(ErrorKind::timeout,
                        fmt::format("key process did not respond within {} ms", timeout.count()));
        }
        pollfd entry{fd, events, 0};
        const int ready = ::poll(&entry, 1, static_cast<int>(left.count()));
        if (ready < 0 && errno == EINTR) {
            continue;
        }
        if (ready < 0) {
            throw_system_error("poll on key channel");
        }
        if (ready == 0) {
            continue;  // the loop head reports the timeout
        }
        if ((entry.revents & events) != 0) {
            return;
        }
        // POLLHUP or POLLERR without the awaited event: the key process closed the channel.
        throw Error(ErrorKind::closed, "key channel closed by the key process");
    }
}

[[noreturn]] void throw_channel_error(const char* call) {
    const int saved = errno;
    if (saved == EPIPE || saved == ECONNRESET) {
        throw Error(ErrorKind::closed, "key channel closed by the key process");
    }
    throw Error(ErrorKind::io, fmt::format("{} on key channel: {}", call, std::strerror(saved)),
                saved);
}

void send_datagram(int fd, const std::vector<std::uint8_t>& datagram, Clock::time_point deadline,
                   std::chrono::milliseconds timeout) {
    while (true) {
        const ssize_t sent =
            ::send(fd, datagram.data(), datagram.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (sent >= 0) {
            return;  // SOCK_SEQPACKET sends the whole datagram or nothing
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            throw_channel_error("send");
        }
        wait_for(fd, POLLOUT, deadline, timeout);
    }
}

// Receives one datagram. The buffer has one byte more than the largest valid response, and
// MSG_TRUNC makes recv return the real length, so an oversized response is detected.
std::vector<std::uint8_t> receive_datagram(int fd, Clock::time_point deadline,
                                           std::chrono::milliseconds timeout) {
    std::vector<std::uint8_t> buffer(keyproto::max_response_size + 1);
    while (true) {
        wait_for(fd, POLLIN, deadline, timeout);
        const ssize_t received = ::recv(fd, buffer.data(), buffer.size(), MSG_TRUNC | MSG_DONTWAIT);
        if (received < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) {
            continue;
        }
        if (received < 0) {
            throw_channel_error("recv");
        }
        if (received == 0) {
            throw Error(ErrorKind::closed, "key channel closed by the key process");
        }
        const auto size = static_cast<std::size_t>(received);
        if (size > keyproto::max_response_size) {
            throw Error(ErrorKind::protocol,
                        fmt::format("key process sent a {}-byte response (maximum {})", size,
                                    keyproto::max_response_size));
        }
        buffer.resize(size);
        return buffer;
    }
}

std::string describe(const keyproto::Request& request) {
    if (request.type == keyproto::MessageType::public_key) {
        return fmt::format("public_key request for key {}", request.key_index);
    }
    if (request.type == keyproto::MessageType::decrypt) {
        return fmt::format("decrypt request for key {}", request.key_index);
    }
    if (request.type == keyproto::MessageType::key_info) {
        return fmt::format("key_info request for key {}", request.key_index);
    }
    const auto name = keyproto::scheme_name(request.scheme);
    return fmt::format("sign request for key {} with {}", request.key_index,
                       name ? *name : fmt::format("0x{:04x}", request.scheme));
}

void check_matches(const keyproto::Request& request, const keyproto::Response& response) {
    if (response.status == keyproto::Status::malformed) {
        throw Error(ErrorKind::protocol,
                    fmt::format("key process rejected {} as malformed", describe(request)));
    }
    if (response.request_id != request.request_id) {
        throw Error(ErrorKind::protocol,
                    fmt::format("key process answered request id {} to request id {}",
                                response.request_id, request.request_id));
    }
    if (response.type != request.type) {
        throw Error(
            ErrorKind::protocol,
            fmt::format("key process sent a {} response to a {} request",
                        keyproto::to_string(response.type), keyproto::to_string(request.type)));
    }
}

// Maps a status other than ok to the error kind the caller acts on.
[[noreturn]] void throw_status(const keyproto::Request& request, keyproto::Status status) {
    const std::string message = fmt::format("key process returned {} for {}",
                                            keyproto::to_string(status), describe(request));
    if (status == keyproto::Status::failed) {
        throw Error(ErrorKind::crypto, message);
    }
    throw Error(ErrorKind::policy, message);
}

}  // namespace

KeyClient::KeyClient(Fd channel, std::chrono::milliseconds timeout)
    : channel_(std::move(channel)), timeout_(timeout) {}

std::vector<std::uint8_t> KeyClient::sign(std::uint32_t key_index, std::uint16_t scheme,
                                          std::span<const std::uint8_t> message) {
    keyproto::Request request;
    request.type = keyproto::MessageType::sign;
    request.scheme = scheme;
    request.key_index = key_index;
    request.payload.assign(message.begin(), message.end());
    keyproto::Response response = round_trip(std::move(request));
    if (response.payload.empty()) {
        throw Error(ErrorKind::protocol, "key process returned an empty signature");
    }
    return std::move(response.payload);
}

std::vector<std::uint8_t> KeyClient::public_key(std::uint32_t key_index) {
    keyproto::Request request;
    request.type = keyproto::MessageType::public_key;
    request.key_index = key_index;
    keyproto::Response response = round_trip(std::move(request));
    if (response.status == keyproto::Status::public_key_unknown) {
        return {};
    }
    if (response.payload.empty()) {
        throw Error(ErrorKind::protocol, "key process returned an empty public key");
    }
    return std::move(response.payload);
}

std::vector<std::uint8_t> KeyClient::decrypt(std::uint32_t key_index, std::uint16_t client_version,
                                             std::span<const std::uint8_t> ciphertext) {
    keyproto::Request request;
    request.type = keyproto::MessageType::decrypt;
    request.key_index = key_index;
    request.payload = keyproto::encode_decrypt_payload({client_version, ciphertext});
    keyproto::Response response = round_trip(std::move(request));
    if (response.payload.size() != keyproto::premaster_secret_size) {
        throw Error(ErrorKind::protocol,
                    fmt::format("key process returned a {}-byte premaster secret (expected {})",
                                response.payload.size(), keyproto::premaster_secret_size));
    }
    return std::move(response.payload);
}

std::vector<std::uint16_t> KeyClient::key_schemes(std::uint32_t key_index) {
    keyproto::Request request;
    request.type = keyproto::MessageType::key_info;
    request.key_index = key_index;
    const keyproto::Response response = round_trip(std::move(request));
    keyproto::Decoded<std::vector<std::uint16_t>> schemes =
        keyproto::decode_key_info(response.payload);
    if (!schemes) {
        throw Error(ErrorKind::protocol,
                    fmt::format("invalid key_info response for key {}: {}", key_index,
                                schemes.error));
    }
    return std::move(*schemes.value);
}

keyproto::Response KeyClient::round_trip(keyproto::Request request) {
    const auto deadline = Clock::now() + timeout_;
    request.request_id = next_request_id_;
    const std::vector<std::uint8_t> datagram = keyproto::encode(request);
    ++next_request_id_;
#ifdef CLOISTER_BENCH_INPROCESS_KEYS
    // Benchmark-only build (bench/CMakeLists.txt): the same request and response encoding,
    // served by the key process's handler inside this process instead of over the channel.
    (void)deadline;
    const std::vector<std::uint8_t> reply = bench::serve_in_process(datagram);
#else
    send_datagram(channel_.get(), datagram, deadline, timeout_);

    const std::vector<std::uint8_t> reply = receive_datagram(channel_.get(), deadline, timeout_);
#endif
    keyproto::Decoded<keyproto::Response> decoded = keyproto::decode_response(reply);
    if (!decoded) {
        throw Error(ErrorKind::protocol,
                    fmt::format("invalid key process response: {}", decoded.error));
    }
    keyproto::Response& response = *decoded.value;
    check_matches(request, response);
    const bool unknown_public_key = request.type == keyproto::MessageType::public_key &&
                                    response.status == keyproto::Status::public_key_unknown;
    if (response.status != keyproto::Status::ok && !unknown_public_key) {
        throw_status(request, response.status);
    }
    return std::move(response);
}

}  // namespace cloister
