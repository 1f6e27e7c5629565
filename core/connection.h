// Connection processes: each one waits as a spare, accepts one client, serves that TLS
// connection and exits.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/fd.h"
#include "core/listener.h"
#include "core/sandbox.h"
#include "core/tls_stack.h"

namespace cloister {

// One-byte messages on the status socket between the supervisor and a connection process.
enum class StatusMessage : std::uint8_t {
    accepted = 'A',  // child to supervisor: the child accepted a client and is now busy
    retire = 'R',    // supervisor to child: exit unless a client was already accepted
};

// The descriptors a connection process receives at fork time.
struct ConnectionChannels {
    std::vector<Listener> listeners;  // shared with the supervisor and every spare
    Fd key_channel;                   // attached to the key process under connection_id
    Fd status;                        // this child's end of the status socket
    std::uint64_t connection_id = 0;
};

// The backends that the supervisor connects for a connection process (core/backend_broker.h)
// instead of the process itself.
enum class BrokeredBackends {
    none,          // the process connects every backend itself
    unix_sockets,  // Unix socket backends, whose paths an empty chroot hides
    all,           // every backend: the process has no network (connection-network = "none")
};

// The state the supervisor prepares once, at start, for every connection process.
struct ConnectionSetup {
    // The addresses of each vhost's backend, in the order of Config::vhosts, resolved by the
    // supervisor: a sandboxed process can neither read /etc/hosts nor open a DNS socket. An
    // empty list makes every connection to that vhost fail as backend_unreachable.
    std::vector<std::vector<ResolvedAddress>> backends;
    std::optional<SandboxPlan> sandbox;  // unset: the process is not confined
    bool pid_namespace = false;          // the process is PID 1 of its own PID namespace
    BrokeredBackends brokered = BrokeredBackends::none;
};

// Runs a connection process from just after fork() to its exit. The process waits on the
// listeners and the status socket, accepts one client, serves it and exits with status 0;
// it exits with status 0 at once when the status socket becomes readable before a client
// arrives. Any error ends the process with status 1 after one log line. Never returns.
[[noreturn]] void run_connection_process(const Config& config, TlsStack& stack,
                                         ConnectionChannels channels) noexcept;

// Same as above, and before waiting for a client the process confines itself with
// setup.sandbox. It connects to backends only at the addresses in setup.backends, or asks the
// supervisor on its status socket for those that setup.brokered names.
[[noreturn]] void run_connection_process(const Config& config, TlsStack& stack,
                                         ConnectionChannels channels,
                                         const ConnectionSetup& setup) noexcept;

enum class ConnectionResult {
    ok,
    handshake_failed,
    handshake_timeout,
    backend_unreachable,
    idle_timeout,
    truncated,  // the client closed TCP without close_notify
    error,
};

const char* to_string(ConnectionResult result) noexcept;

// The facts of the "connection closed" log line.
struct ConnectionSummary {
    std::string peer;
    std::string sni;
    std::string vhost;
    std::string protocol;
    std::string cipher;
    std::string scheme;
    std::string alpn;             // the protocol agreed by ALPN; empty when none
    std::uint64_t bytes_in = 0;   // plaintext bytes from the client to the backend
    std::uint64_t bytes_out = 0;  // plaintext bytes from the backend to the client
    std::chrono::milliseconds duration{0};
    ConnectionResult result = ConnectionResult::ok;
    std::string reason;  // set when result is not ok
};

// Formats the summary as "connection closed: peer=... result=ok". Bytes outside printable
// ASCII, spaces and quotes in peer-supplied values are escaped as \xHH.
std::string format_summary(const ConnectionSummary& summary);

// Serves one accepted client on the non-blocking socket client_fd: the TLS handshake under
// one overall deadline, the connection to the vhost's backend and the proxy loop. The
// stack must already use this process's key client. Returns the summary of how the
// connection went; throws Error only when this process itself fails.
ConnectionSummary serve_connection(const Config& config, TlsStack& stack, int client_fd,
                                   std::string peer, std::uint64_t connection_id);

// Connects to address within timeout (one deadline for every address the name resolves
// to) and returns the connected, non-blocking socket. Throws Error(io) or Error(timeout)
// with the reason.
Fd connect_backend(const SocketAddress& address, std::chrono::milliseconds timeout);

// Same as above with the addresses already resolved, tried in order.
Fd connect_backend(const std::vector<ResolvedAddress>& addresses,
                   std::chrono::milliseconds timeout);

// Resolves the backend of every vhost, in the order of config.vhosts, and logs the addresses.
// A backend that does not resolve gets an empty list and a warning.
std::vector<std::vector<ResolvedAddress>> resolve_backends(const Config& config);

}  // namespace cloister
