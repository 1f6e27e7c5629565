#include "backends/botan/session.h"

#include <botan/exceptn.h>
#include <botan/tls_alert.h>
#include <botan/tls_exceptn.h>
#include <botan/tls_extensions.h>
#include <botan/tls_session.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include "backends/botan/signing.h"
#include "core/alpn.h"
#include "core/error.h"
#include "core/key_protocol.h"

namespace cloister::botan {
namespace {

using Botan::TLS::Alert;

// Plaintext bytes handed to Botan per write: one TLS record's worth (RFC 5246 section 6.2.1).
constexpr std::size_t chunk_size = 16384;
// Bytes read from the socket per call: a record of the largest size, so that a full record never
// takes two reads. That is a 5-byte header and at most 2^14 + 2048 bytes of ciphertext (RFC 5246
// section 6.2.3).
constexpr std::size_t receive_size = 5 + 16384 + 2048;

// A TLS record header (5 bytes, RFC 5246 section 6.2.1) and a handshake message header
// (4 bytes, section 7.4).
constexpr std::size_t hello_header_size = 9;
constexpr std::uint8_t handshake_record = 22;
constexpr std::uint8_t client_hello_type = 1;
// The largest ClientHello accepted, OpenSSL 3.0's limit (CLIENT_HELLO_MAX_LENGTH). Botan 2.19
// has none and would wait for up to 16 MiB that a declared length promises.
constexpr std::size_t max_client_hello_size = 131396;

IoResult with_status(IoStatus status, std::size_t bytes = 0) {
    return IoResult{status, bytes, {}};
}

// The alert that Botan 2.19's Channel::received_data sends for an exception before it
// rethrows it.
Alert::Type alert_sent_for(const std::exception& error) {
    if (const auto* tls_error = dynamic_cast<const Botan::TLS::TLS_Exception*>(&error)) {
        return tls_error->type();
    }
    if (dynamic_cast<const Botan::Invalid_Authentication_Tag*>(&error) != nullptr) {
        return Alert::BAD_RECORD_MAC;
    }
    if (dynamic_cast<const Botan::Decoding_Error*>(&error) != nullptr) {
        return Alert::DECODE_ERROR;
    }
    return Alert::INTERNAL_ERROR;
}

// Formats a client-supplied name for a message: at most 255 bytes, and '?' for bytes outside
// printable ASCII.
std::string printable(std::string_view text) {
    std::string result(text.substr(0, 255));
    std::replace_if(
        result.begin(), result.end(), [](char c) { return c < 0x20 || c > 0x7e; }, '?');
    return result;
}

// Returns "TLSv1.2", the form OpenSSL's SSL_get_version uses, so both stacks log alike.
std::string protocol_name(Botan::TLS::Protocol_Version version) {
    if (version.major_version() == 3 && version.minor_version() >= 1) {
        return fmt::format("TLSv1.{}", version.minor_version() - 1);
    }
    return version.to_string();
}

}  // namespace

BotanSession::BotanSession(const StackSettings& settings, KeyClient& key_client,
                           Botan::RandomNumberGenerator& random, int client_fd,
                           std::uint64_t connection_id)
    : settings_(settings),
      key_client_(key_client),
      fd_(client_fd),
      connection_id_(connection_id),
      credentials_(settings.certificates),
      policy_(settings.policy),
      server_(std::make_unique<Botan::TLS::Server>(static_cast<Botan::TLS::Callbacks&>(*this),
                                                   session_manager_, credentials_, policy_,
                                                   random)) {}

BotanSession::~BotanSession() = default;

// ---- public operations: each one turns every exception into a failed result ----

IoResult BotanSession::handshake() {
    try {
        return run_handshake();
    } catch (const std::exception& error) {
        return failed(error.what());
    }
}

IoResult BotanSession::read(std::span<std::byte> buffer) {
    try {
        return run_read(buffer);
    } catch (const std::exception& error) {
        return failed(error.what());
    }
}

IoResult BotanSession::write(std::span<const std::byte> data) {
    try {
        return run_write(data);
    } catch (const std::exception& error) {
        return failed(error.what());
    }
}

IoResult BotanSession::shutdown() {
    try {
        return run_shutdown();
    } catch (const std::exception& error) {
        return failed(error.what());
    }
}

bool BotanSession::has_pending() const {
    return plaintext_read_ < plaintext_.size() ||
           ((peer_closed_ || close_sent_) && !closed_reported_);
}

HandshakeInfo BotanSession::info() const {
    HandshakeInfo info;
    info.sni = sni_.value_or("");
    info.vhost_index = vhost_index_;
    info.protocol = protocol_;
    info.cipher = cipher_;
    info.signature_scheme = scheme_;
    info.alpn = server_->application_protocol();
    return info;
}

// ---- driving Botan over the socket ----

IoResult BotanSession::run_handshake() {
    for (;;) {
        if (!failure_.empty()) {
            return failed(failure_);
        }
        if (!flush()) {
            return with_status(IoStatus::want_write);
        }
        if (server_->is_active()) {
            return with_status(IoStatus::done);
        }
        if (server_->is_closed()) {
            return closed_or_failed();
        }
        switch (receive()) {
            case Receive::fed:
                break;
            case Receive::would_block:
                return with_status(IoStatus::want_read);
            case Receive::end_of_stream:
                return with_status(IoStatus::truncated);
        }
    }
}

IoResult BotanSession::run_read(std::span<std::byte> buffer) {
    for (;;) {
        if (plaintext_read_ < plaintext_.size()) {
            return with_status(IoStatus::done, take_plaintext(buffer));
        }
        // Botan 2 ends both directions when it sends close_notify and cannot decrypt what
        // follows, so the connection counts as closed from then on.
        if (peer_closed_ || close_sent_) {
            closed_reported_ = true;
            return with_status(IoStatus::closed);
        }
        if (!failure_.empty() || server_->is_closed()) {
            return closed_or_failed();
        }
        if (!flush()) {
            return with_status(IoStatus::want_write);
        }
        switch (receive()) {
            case Receive::fed:
                break;
            case Receive::would_block:
                return with_status(IoStatus::want_read);
            case Receive::end_of_stream:
                return with_status(IoStatus::truncated);
        }
    }
}

// Botan encrypts everything it is given at once, so a write reports its bytes as taken only
// once their records have left for the socket. Until then it returns want_write, and the
// caller retries with the same bytes at the front of data (as with OpenSSL).
IoResult BotanSession::run_write(std::span<const std::byte> data) {
    if (!flush()) {
        return with_status(IoStatus::want_write);
    }
    if (write_taken_ > 0) {
        return with_status(IoStatus::done, std::exchange(write_taken_, 0));
    }
    if (!server_->is_active()) {
        return failed(peer_closed_ ? "the client sent close_notify, and Botan 2 then closes the "
                                     "connection in both directions"
                                   : "the TLS connection is closed");
    }
    const std::size_t size = std::min(data.size(), chunk_size);
    server_->send(reinterpret_cast<const std::uint8_t*>(data.data()), size);
    if (flush()) {
        return with_status(IoStatus::done, size);
    }
    write_taken_ = size;
    return with_status(IoStatus::want_write);
}

IoResult BotanSession::run_shutdown() {
    if (!close_sent_) {
        close_sent_ = true;
        if (server_->is_active()) {
            server_->close();
        }
    }
    return with_status(flush() ? IoStatus::done : IoStatus::want_write);
}

bool BotanSession::flush() {
    while (outgoing_sent_ < outgoing_.size()) {
        const std::span<const std::uint8_t> rest(outgoing_.data() + outgoing_sent_,
                                                 outgoing_.size() - outgoing_sent_);
        const ssize_t sent = ::send(fd_, rest.data(), rest.size(), MSG_NOSIGNAL);
        if (sent > 0) {
            outgoing_sent_ += static_cast<std::size_t>(sent);
            continue;
        }
        if (sent < 0 && errno == EINTR) {
            continue;
        }
        if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return false;
        }
        throw Error(ErrorKind::io, fmt::format("send to the client failed: {}",
                                               std::strerror(sent < 0 ? errno : EPIPE)));
    }
    outgoing_.clear();
    outgoing_sent_ = 0;
    return true;
}

BotanSession::Receive BotanSession::receive() {
    // Left uninitialized, because recv() writes every byte that is used and clearing 18 KiB
    // on each call is wasted work.
    std::array<std::uint8_t, receive_size> buffer;
    for (;;) {
        const ssize_t count = ::recv(fd_, buffer.data(), buffer.size(), 0);
        if (count > 0) {
            const std::span bytes(buffer.data(), static_cast<std::size_t>(count));
            check_client_hello(bytes);
            feed(bytes);
            return Receive::fed;
        }
        if (count == 0) {
            return Receive::end_of_stream;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return Receive::would_block;
        }
        if (errno != EINTR) {
            throw Error(ErrorKind::io,
                        fmt::format("receive from the client failed: {}", std::strerror(errno)));
        }
    }
}

void BotanSession::feed(std::span<const std::uint8_t> bytes) {
    try {
        server_->received_data(bytes.data(), bytes.size());
    } catch (const std::exception& error) {
        const Alert::Type alert = alert_sent_for(error);
        // Botan 2.19.3 reads the supported_versions extension (RFC 8446 section 4.2.1), so a
        // client that offers TLS 1.3 only gets protocol_version (70) here.
        const std::string_view hint =
            alert == Alert::PROTOCOL_VERSION ? "; Botan 2.19 speaks TLS 1.2 only" : "";
        throw Error(ErrorKind::protocol, fmt::format("{} (sent alert {}){}", error.what(),
                                                     Alert(alert, true).type_string(), hint));
    }
}

void BotanSession::check_client_hello(std::span<const std::uint8_t> bytes) {
    if (hello_checked_) {
        return;
    }
    const std::size_t take = std::min(hello_header_size - hello_header_.size(), bytes.size());
    hello_header_.insert(hello_header_.end(), bytes.begin(), bytes.begin() + take);
    if (hello_header_.size() < hello_header_size) {
        return;
    }
    hello_checked_ = true;
    const std::vector<std::uint8_t>& header = hello_header_;
    const std::size_t record_size = (header[3] << 8U) | header[4];
    // Other record types, and a message header split across records, are left to Botan.
    if (header[0] != handshake_record || record_size < 4) {
        return;
    }
    const std::size_t message_size = (header[6] << 16U) | (header[7] << 8U) | header[8];
    if (header[5] == client_hello_type && message_size <= max_client_hello_size) {
        return;
    }
    const Alert::Type alert =
        header[5] != client_hello_type ? Alert::UNEXPECTED_MESSAGE : Alert::ILLEGAL_PARAMETER;
    // Botan sends no alert before it has a handshake state, so the record is written here:
    // an alert record (type 21) of TLS 1.2 with level fatal (2) (RFC 5246 section 7.2).
    const std::array<std::uint8_t, 7> record{21, 3, 3, 0, 2, 2, static_cast<std::uint8_t>(alert)};
    outgoing_.insert(outgoing_.end(), record.begin(), record.end());
    throw Error(ErrorKind::protocol,
                fmt::format("the first handshake message is not a ClientHello of at most {} "
                            "bytes: type {}, {} bytes (sent alert {})",
                            max_client_hello_size, header[5], message_size,
                            Alert(alert, true).type_string()));
}

IoResult BotanSession::failed(const std::string& reason) {
    if (failure_.empty()) {
        failure_ = reason;
    }
    try {
        // Best effort: the alert Botan queued, if any, goes out now or never.
        static_cast<void>(flush());
    } catch (const std::exception& error) {
        spdlog::debug("the alert could not be sent: {}", error.what());
    }
    return IoResult{IoStatus::failed, 0, failure_};
}

IoResult BotanSession::closed_or_failed() {
    if (!peer_alert_.empty()) {
        return failed(fmt::format("the client sent alert {}", peer_alert_));
    }
    if (peer_closed_) {
        closed_reported_ = true;
        return with_status(IoStatus::closed);
    }
    return failed(failure_.empty() ? std::string("the TLS connection is closed") : failure_);
}

std::size_t BotanSession::take_plaintext(std::span<std::byte> buffer) {
    const std::size_t count = std::min(buffer.size(), plaintext_.size() - plaintext_read_);
    std::memcpy(buffer.data(), plaintext_.data() + plaintext_read_, count);
    plaintext_read_ += count;
    if (plaintext_read_ == plaintext_.size()) {
        plaintext_.clear();
        plaintext_read_ = 0;
    }
    return count;
}

// ---- callbacks from Botan ----

void BotanSession::tls_emit_data(const std::uint8_t data[], std::size_t size) {
    outgoing_.insert(outgoing_.end(), data, data + size);
}

void BotanSession::tls_record_received(std::uint64_t /*sequence*/, const std::uint8_t data[],
                                       std::size_t size) {
    plaintext_.insert(plaintext_.end(), data, data + size);
}

void BotanSession::tls_alert(Alert alert) {
    if (alert.type() == Alert::CLOSE_NOTIFY) {
        peer_closed_ = true;
    } else if (alert.is_fatal()) {
        peer_alert_ = alert.type_string();
    } else {
        spdlog::debug("the client sent warning alert {}", alert.type_string());
    }
}

bool BotanSession::tls_session_established(const Botan::TLS::Session& session) {
    protocol_ = protocol_name(session.version());
    cipher_ = "TLS_" + session.ciphersuite().to_string();
    // false: nothing is cached, because a connection process serves one connection.
    return false;
}

void BotanSession::tls_examine_extensions(const Botan::TLS::Extensions& extensions,
                                          Botan::TLS::Connection_Side side) {
    if (side != Botan::TLS::Connection_Side::CLIENT) {
        return;
    }
    select_vhost(extensions);
}

// Chooses the vhost with the rules of VhostTable, which the OpenSSL stack shares. When the SNI
// policy is reject, a name no vhost serves ends the handshake with unrecognized_name (112, RFC
// 6066 section 3).
void BotanSession::select_vhost(const Botan::TLS::Extensions& extensions) {
    if (const auto* sni = extensions.get<Botan::TLS::Server_Name_Indicator>()) {
        sni_ = sni->host_name();
    }
    const VhostTable::Selection selection = settings_.vhosts.select(sni_);
    if (!selection.vhost) {
        throw Botan::TLS::TLS_Exception(
            Alert::UNRECOGNIZED_NAME, sni_ ? fmt::format("no vhost serves \"{}\"", printable(*sni_))
                                           : std::string("the client sent no server name"));
    }
    vhost_index_ = *selection.vhost;
    credentials_.select_vhost(vhost_index_);
    if (vhost_index_ < settings_.key_schemes.size()) {
        // Botan picks the ServerKeyExchange scheme from the policy after this callback, so a
        // key that cannot sign RSA-PSS is never asked to.
        policy_.keep_only_schemes(settings_.key_schemes[vhost_index_]);
    }
}

std::string BotanSession::tls_server_choose_app_protocol(
    const std::vector<std::string>& client_protocols) {
    const VhostSettings& vhost = settings_.vhost_settings.at(vhost_index_);
    const AlpnSelection selection =
        select_alpn(vhost.alpn, client_protocols, settings_.alpn_mismatch);
    if (selection.reject) {
        throw Botan::TLS::TLS_Exception(
            Alert::NO_APPLICATION_PROTOCOL,
            fmt::format("the client offered ALPN {}, and vhost '{}' serves only {}",
                        describe_alpn(client_protocols), vhost.name, describe_alpn(vhost.alpn)));
    }
    if (selection.protocol.empty() && !vhost.alpn.empty()) {
        spdlog::info("no ALPN protocol agreed: the client offered {}, and vhost '{}' serves {}",
                     describe_alpn(client_protocols), vhost.name, describe_alpn(vhost.alpn));
    }
    return selection.protocol;
}

std::vector<std::uint8_t> BotanSession::tls_sign_message(const Botan::Private_Key& key,
                                                         Botan::RandomNumberGenerator& /*random*/,
                                                         const std::string& padding,
                                                         Botan::Signature_Format format,
                                                         const std::vector<std::uint8_t>& message) {
    const auto* remote = dynamic_cast<const PublicOnlyKey*>(&key);
    if (remote == nullptr) {
        throw Error(ErrorKind::crypto,
                    "Botan asked to sign with a key that is not in the key "
                    "process");
    }
    RemoteSignature result = sign_remotely(key_client_, *remote, padding, format, message);
    scheme_ = keyproto::scheme_name(result.scheme).value_or(fmt::format("0x{:04x}", result.scheme));
    spdlog::debug("connection {}: signed with {} in the key process", connection_id_, scheme_);
    return std::move(result.signature);
}

}  // namespace cloister::botan
