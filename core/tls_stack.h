// The interface every TLS stack ("backend") implements. core/ includes only this header, so it
// includes no crypto-library headers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace cloister {

class KeyClient;

// The parameters a finished handshake negotiated, for the connection log line.
struct HandshakeInfo {
    std::string sni;               // as the client sent it; empty when none
    std::size_t vhost_index = 0;   // index into Config::vhosts
    std::string protocol;          // "TLSv1.3"
    std::string cipher;            // "TLS_AES_256_GCM_SHA384"
    std::string signature_scheme;  // "rsa_pss_rsae_sha256"; empty when resumed
    std::string alpn;              // empty when none was agreed
};

enum class IoStatus {
    done,        // the call completed; IoResult::bytes is the number of bytes moved
    want_read,   // retry when the socket is readable
    want_write,  // retry when the socket is writable
    closed,      // the peer sent close_notify
    truncated,   // the peer closed the TCP stream without close_notify
    failed,      // a fatal TLS or socket error; IoResult::error describes it
};

struct IoResult {
    IoStatus status = IoStatus::done;
    std::size_t bytes = 0;
    std::string error;
};

// One TLS connection over a non-blocking socket that the caller owns.
class TlsSession {
public:
    TlsSession() = default;
    TlsSession(const TlsSession&) = delete;
    TlsSession& operator=(const TlsSession&) = delete;
    TlsSession(TlsSession&&) = delete;
    TlsSession& operator=(TlsSession&&) = delete;
    virtual ~TlsSession() = default;

    // Advances the server handshake. Returns done once it has finished.
    virtual IoResult handshake() = 0;
    // Reads decrypted application data into buffer.
    virtual IoResult read(std::span<std::byte> buffer) = 0;
    // Encrypts and sends data; bytes is the number of bytes taken.
    virtual IoResult write(std::span<const std::byte> data) = 0;
    // Sends close_notify. Returns done once it was written.
    virtual IoResult shutdown() = 0;
    // True when bytes wait inside the stack, decrypted or read ahead from the socket, so
    // read() can make progress without the socket being readable.
    [[nodiscard]] virtual bool has_pending() const = 0;
    [[nodiscard]] virtual HandshakeInfo info() const = 0;
};

// A TLS stack configured for every vhost. It is built in the supervisor before any child is
// forked, so connection processes inherit it ready to use.
class TlsStack {
public:
    TlsStack() = default;
    TlsStack(const TlsStack&) = delete;
    TlsStack& operator=(const TlsStack&) = delete;
    TlsStack(TlsStack&&) = delete;
    TlsStack& operator=(TlsStack&&) = delete;
    virtual ~TlsStack() = default;

    [[nodiscard]] virtual std::string_view name() const = 0;

    // Sends every private-key operation of this process to client from now on. Called once
    // in each connection process after fork, and in the supervisor for the start-up check.
    virtual void use_key_client(KeyClient& client) = 0;

    // Gives this process a random generator state of its own. Called in every child right
    // after fork, before any random byte is drawn.
    virtual void reseed_after_fork() = 0;

    // Checks that each certificate's key in the key process matches the certificate, by
    // comparing public keys and by signing and verifying a test message through the stack's
    // own signing path. Throws Error(config) naming the certificate and key files.
    virtual void verify_keys() = 0;

    // Starts a server session on the connected, non-blocking socket client_fd (borrowed).
    virtual std::unique_ptr<TlsSession> new_session(int client_fd, std::uint64_t connection_id) = 0;
};

}  // namespace cloister
