#include "backends/openssl/session.h"

#include <fmt/format.h>
#include <openssl/err.h>

#include <cerrno>
#include <cstring>

#include "backends/openssl/openssl_errors.h"
#include "core/key_protocol.h"

namespace cloister::ossl {
namespace {

IoResult with_status(IoStatus status, std::size_t bytes = 0) {
    return IoResult{status, bytes, {}};
}

IoResult failure(std::string error) {
    return IoResult{IoStatus::failed, 0, std::move(error)};
}

// True when the peer closed the TCP stream without close_notify and OpenSSL reported it as a
// fatal error. The session sets SSL_OP_IGNORE_UNEXPECTED_EOF, so this remains only as a fallback.
bool is_unexpected_eof() {
    const unsigned long error = ERR_peek_error();
    return ERR_GET_LIB(error) == ERR_LIB_SSL &&
           ERR_GET_REASON(error) == SSL_R_UNEXPECTED_EOF_WHILE_READING;
}

}  // namespace

OpensslSession::OpensslSession(SslPtr ssl, std::uint64_t connection_id, ProviderContext& provider,
                               std::size_t vhost_index)
    : ssl_(std::move(ssl)),
      connection_id_(connection_id),
      provider_(provider),
      vhost_index_(vhost_index) {
    SSL_set_app_data(ssl_.get(), this);
    // Without this option OpenSSL 3.0 treats a TCP EOF without close_notify as fatal. It sends
    // a decode_error alert and fails every later write, so the backend's reply to a request
    // that ended with a bare FIN would not reach the client. on_message still reports the
    // truncation.
    SSL_set_options(ssl_.get(), SSL_OP_IGNORE_UNEXPECTED_EOF);
    // Read-ahead lets one read() take every record the socket holds, up to the read buffer,
    // instead of one read() for each record's header and one for its body. Records read ahead
    // are not in SSL_pending(), so has_pending() uses SSL_has_pending().
    SSL_set_read_ahead(ssl_.get(), 1);
    SSL_set_msg_callback(ssl_.get(), on_message);
    SSL_set_msg_callback_arg(ssl_.get(), this);
    // A scheme recorded before this connection (by verify_keys in the parent) must not show.
    provider_.last_scheme = 0;
}

OpensslSession* OpensslSession::from(SSL* ssl) {
    return static_cast<OpensslSession*>(SSL_get_app_data(ssl));
}

void OpensslSession::set_vhost(std::size_t vhost_index, std::string sni) {
    vhost_index_ = vhost_index;
    sni_ = std::move(sni);
}

IoResult OpensslSession::result_of(int ret, int error_number, const char* operation) {
    switch (SSL_get_error(ssl_.get(), ret)) {
        case SSL_ERROR_WANT_READ:
            return with_status(IoStatus::want_read);
        case SSL_ERROR_WANT_WRITE:
            return with_status(IoStatus::want_write);
        case SSL_ERROR_ZERO_RETURN:
            return with_status(close_notify_received_ ? IoStatus::closed : IoStatus::truncated);
        case SSL_ERROR_SYSCALL:
            if (ERR_peek_error() == 0) {
                return failure(fmt::format(
                    "TLS {} failed: {}", operation,
                    error_number != 0 ? std::strerror(error_number) : "connection closed"));
            }
            break;
        case SSL_ERROR_SSL:
            if (is_unexpected_eof()) {
                ERR_clear_error();
                return with_status(IoStatus::truncated);
            }
            break;
        default:
            break;
    }
    return failure(fmt::format("TLS {} failed: {}", operation, take_openssl_errors()));
}

void OpensslSession::on_message(int write_p, int /*version*/, int content_type, const void* buffer,
                                std::size_t length, SSL* /*ssl*/, void* arg) {
    // An alert is two bytes: level, then description (RFC 8446 section 6).
    if (write_p != 0 || content_type != SSL3_RT_ALERT || length < 2) {
        return;
    }
    if (static_cast<const unsigned char*>(buffer)[1] == SSL_AD_CLOSE_NOTIFY) {
        static_cast<OpensslSession*>(arg)->close_notify_received_ = true;
    }
}

void OpensslSession::record_handshake() {
    if (SSL_session_reused(ssl_.get()) == 1 || provider_.last_scheme == 0) {
        signature_scheme_.clear();
        return;
    }
    signature_scheme_ = keyproto::scheme_name(provider_.last_scheme)
                            .value_or(fmt::format("0x{:04x}", provider_.last_scheme));
}

IoResult OpensslSession::handshake() {
    ERR_clear_error();
    errno = 0;
    const int ret = SSL_do_handshake(ssl_.get());
    if (ret == 1) {
        record_handshake();
        return with_status(IoStatus::done);
    }
    return result_of(ret, errno, "handshake");
}

IoResult OpensslSession::read(std::span<std::byte> buffer) {
    ERR_clear_error();
    errno = 0;
    std::size_t bytes = 0;
    const int ret = SSL_read_ex(ssl_.get(), buffer.data(), buffer.size(), &bytes);
    if (ret == 1) {
        return with_status(IoStatus::done, bytes);
    }
    return result_of(ret, errno, "read");
}

IoResult OpensslSession::write(std::span<const std::byte> data) {
    ERR_clear_error();
    errno = 0;
    std::size_t bytes = 0;
    const int ret = SSL_write_ex(ssl_.get(), data.data(), data.size(), &bytes);
    if (ret == 1) {
        return with_status(IoStatus::done, bytes);
    }
    return result_of(ret, errno, "write");
}

// SSL_shutdown returns 0 once this side's close_notify is written and 1 when the peer's has
// also arrived. Either way the caller's part is done: the proxy does not wait for the peer.
IoResult OpensslSession::shutdown() {
    ERR_clear_error();
    errno = 0;
    const int ret = SSL_shutdown(ssl_.get());
    if (ret >= 0) {
        return with_status(IoStatus::done);
    }
    return result_of(ret, errno, "shutdown");
}

bool OpensslSession::has_pending() const {
    return SSL_has_pending(ssl_.get()) == 1;
}

HandshakeInfo OpensslSession::info() const {
    HandshakeInfo info;
    info.sni = sni_;
    info.vhost_index = vhost_index_;
    info.protocol = SSL_get_version(ssl_.get());
    if (const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl_.get())) {
        info.cipher = SSL_CIPHER_standard_name(cipher);
    }
    info.signature_scheme = signature_scheme_;
    const unsigned char* alpn = nullptr;
    unsigned int alpn_length = 0;
    SSL_get0_alpn_selected(ssl_.get(), &alpn, &alpn_length);
    if (alpn != nullptr) {
        info.alpn.assign(reinterpret_cast<const char*>(alpn), alpn_length);
    }
    return info;
}

}  // namespace cloister::ossl
