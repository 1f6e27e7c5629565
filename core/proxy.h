// The proxy loop: copies plaintext between a TLS session and a backend socket.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/tls_stack.h"

namespace cloister {

struct ProxyOptions {
    std::size_t buffer_size = 16384;  // bytes buffered per direction
    std::chrono::milliseconds idle_timeout{300'000};
};

// The reason the proxy loop ended.
enum class ProxyEnd {
    finished,        // both directions reached their end and every buffered byte was sent
    idle_timeout,    // no byte moved in either direction for ProxyOptions::idle_timeout
    client_failed,   // the TLS session failed; ProxyResult::error describes it
    backend_failed,  // a read or write on the backend socket failed
};

struct ProxyResult {
    ProxyEnd end = ProxyEnd::finished;
    std::uint64_t bytes_in = 0;     // plaintext bytes sent from the client to the backend
    std::uint64_t bytes_out = 0;    // plaintext bytes sent from the backend to the client
    bool client_truncated = false;  // the client closed TCP without close_notify
    // A backend failure came while the client was still sending. Its further bytes were
    // dropped, and the caller reads them until the client stops (a lingering close).
    bool client_input_dropped = false;
    std::string error;
};

// Copies bytes both ways until both directions have ended. client_fd and backend_fd are
// non-blocking sockets owned by the caller; session runs over client_fd.
//
// Each direction has one bounded buffer, and a side is read only while its buffer has room.
// The end of the client's stream (close_notify, or EOF without it) becomes a write shutdown
// towards the backend once the buffer is flushed. The backend's EOF becomes a close_notify
// once the buffer towards the client is flushed. After a truncated client EOF, a failed write to
// the client ends the loop as finished, because the client is gone.
ProxyResult run_proxy(TlsSession& session, int client_fd, int backend_fd,
                      const ProxyOptions& options);

const char* to_string(ProxyEnd end) noexcept;

}  // namespace cloister
