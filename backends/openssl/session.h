// One server-side TLS connection driven by OpenSSL over a non-blocking socket.
#pragma once

#include <openssl/ssl.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "backends/openssl/ossl_ptr.h"
#include "backends/openssl/provider.h"
#include "core/tls_stack.h"

namespace cloister::ossl {

using SslPtr = Ptr<SSL, SSL_free>;

class OpensslSession final : public TlsSession {
  public:
    // Takes ssl, already attached to the socket and in accept state. The session registers
    // itself as the SSL's app data, where the server-name callback finds it. vhost_index is
    // the vhost of ssl's initial SSL_CTX.
    OpensslSession(SslPtr ssl, std::uint64_t connection_id, ProviderContext& provider,
                   std::size_t vhost_index);

    IoResult handshake() override;
    IoResult read(std::span<std::byte> buffer) override;
    IoResult write(std::span<const std::byte> data) override;
    IoResult shutdown() override;
    [[nodiscard]] bool has_pending() const override;
    [[nodiscard]] HandshakeInfo info() const override;

    [[nodiscard]] std::uint64_t connection_id() const { return connection_id_; }
    // The vhost chosen from the client's SNI, or the initial one before the SNI callback.
    [[nodiscard]] std::size_t vhost_index() const { return vhost_index_; }
    // Records the vhost chosen from the client's SNI (empty sni: none was sent).
    void set_vhost(std::size_t vhost_index, std::string sni);
    // Records the client's SNI before a vhost is chosen, so that a rejected name is logged.
    void set_sni(std::string sni) { sni_ = std::move(sni); }

    // Returns the session that owns ssl, or null.
    static OpensslSession* from(SSL* ssl);

  private:
    // Maps the result of an SSL_* call to an IoResult. error_number is errno right after it.
    IoResult result_of(int ret, int error_number, const char* operation);
    void record_handshake();
    // SSL message callback: notes the client's close_notify alert.
    static void on_message(int write_p, int version, int content_type, const void* buffer,
                           std::size_t length, SSL* ssl, void* arg);

    SslPtr ssl_;
    std::uint64_t connection_id_;
    ProviderContext& provider_;
    std::size_t vhost_index_;
    std::string sni_;
    std::string signature_scheme_;
    // Set when the client's close_notify arrived. With SSL_OP_IGNORE_UNEXPECTED_EOF, OpenSSL
    // reports a TCP EOF without close_notify as SSL_ERROR_ZERO_RETURN too, so this flag
    // distinguishes the two.
    bool close_notify_received_ = false;
};

}  // namespace cloister::ossl
