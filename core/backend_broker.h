// The backend broker: the supervisor connects a connection process's backend for it and passes
// the connected socket back, so that the connection process needs neither network access
// (connection-network = "none") nor a view of a Unix socket path outside its chroot.
//
// Both messages travel on the connection process's status socket (SOCK_SEQPACKET, so one
// message per datagram):
//   request  connection process to supervisor: 'B', then the vhost index (its position in
//            Config::vhosts) as 4 bytes, little-endian. Nothing else is read from it.
//   reply    supervisor to connection process: 'C', then an errno value as 4 bytes,
//            little-endian. 0 carries the connected, non-blocking socket in SCM_RIGHTS.
// The supervisor serves one request per connection, only from a process that has accepted a
// client. It never blocks on a backend, because its connects are non-blocking and polled in its
// loop.
#pragma once

#include <poll.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "core/fd.h"
#include "core/listener.h"

namespace cloister {

// The backend addresses of each vhost, by index in Config::vhosts, resolved at start. One
// table belongs to one loaded configuration.
using BackendTable = std::vector<std::vector<ResolvedAddress>>;

inline constexpr std::uint8_t backend_request_tag = 'B';
inline constexpr std::uint8_t backend_reply_tag = 'C';
inline constexpr std::size_t backend_message_size = 5;

using BackendMessage = std::array<std::uint8_t, backend_message_size>;

BackendMessage encode_backend_request(std::uint32_t vhost_index);

// Returns the vhost index of a request, or nothing when bytes is anything but exactly one
// request message.
std::optional<std::uint32_t> parse_backend_request(std::span<const std::uint8_t> bytes);

BackendMessage encode_backend_reply(int error_number);

// Returns the errno value of a reply, or nothing when bytes is not exactly one reply message.
std::optional<int> parse_backend_reply(std::span<const std::uint8_t> bytes);

// Connection process side: sends the request for vhost_index on status_fd and waits up to
// timeout for the reply, skipping one-byte status messages. Returns the connected socket.
// Throws Error(io) with the reason the supervisor gave, or Error(timeout).
Fd request_backend(int status_fd, std::uint32_t vhost_index, std::chrono::milliseconds timeout);

// The connection process that sent a message, as the supervisor records it.
struct BrokerClient {
    std::uint64_t connection_id = 0;
    int status_fd = -1;    // the supervisor's end of the status socket; the reply goes here
    bool serving = false;  // the process reported that it accepted a client
};

// Whether the supervisor keeps reading the client's status socket after a message.
enum class BrokerVerdict { keep_reading, stop_reading };

// The supervisor side. The supervisor calls handle_message for each message a connection
// process sends besides its status bytes, adds poll_fds to its poll set, passes their results
// to handle_poll, and calls handle_timeouts when next_deadline passes.
class BackendBroker {
  public:
    using Clock = std::chrono::steady_clock;

    // Treats message as untrusted input: a well-formed request, from a serving process, its
    // first, for a vhost index in table, starts a connect that ends within connect_timeout.
    // Anything else gets an error reply and a warning naming the connection id. Every message
    // after the first is rejected and ends the reading (stop_reading). message_size is the
    // size the datagram had, which may exceed message.size() when it was truncated.
    BrokerVerdict handle_message(const BrokerClient& client, std::span<const std::uint8_t> message,
                                 std::size_t message_size, const BackendTable& table,
                                 std::chrono::milliseconds connect_timeout);

    // One pollfd per connect in progress.
    void poll_fds(std::vector<pollfd>& fds) const;

    // Handles the poll results of the entries poll_fds appended.
    void handle_poll(std::span<const pollfd> fds);

    // Fails every connect whose deadline has passed.
    void handle_timeouts(Clock::time_point now);

    [[nodiscard]] std::optional<Clock::time_point> next_deadline() const;

    // Drops the state of a connection process that exited, with any connect in progress.
    void forget(std::uint64_t connection_id);

    [[nodiscard]] std::size_t pending() const { return pending_.size(); }

  private:
    struct Pending {
        Fd reply;  // a duplicate of the status socket, so that its owner may close it
        std::vector<ResolvedAddress> addresses;
        std::size_t next = 0;  // the next address to try
        Fd socket;             // the connect in progress
        Clock::time_point deadline;
        std::chrono::milliseconds timeout{0};
        int last_error = 0;
    };

    void reject(const BrokerClient& client, int error_number, const std::string& reason) const;
    // Tries the remaining addresses until one connects, one is in progress, or none is left.
    void advance(std::uint64_t connection_id, Pending& pending);
    void finish(std::uint64_t connection_id, Pending& pending, int error_number);

    std::set<std::uint64_t> requested_;         // connections that sent their one request
    std::map<std::uint64_t, Pending> pending_;  // by connection id
};

}  // namespace cloister
