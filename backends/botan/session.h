// One server-side TLS connection driven by Botan 2 over a non-blocking socket.
#pragma once

#include <botan/tls_callbacks.h>
#include <botan/tls_server.h>
#include <botan/tls_session_manager.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "backends/botan/credentials.h"
#include "backends/botan/policy.h"
#include "core/config.h"
#include "core/key_client.h"
#include "core/tls_stack.h"
#include "core/vhost_table.h"

namespace cloister::botan {

// The settings of one vhost besides its certificates.
struct VhostSettings {
    std::string name;               // for messages
    std::vector<std::string> alpn;  // VhostConfig::alpn
};

// The stack's read-only state that every session uses.
struct StackSettings {
    VhostTable vhosts;
    std::vector<VhostSettings> vhost_settings;    // index: vhost
    std::vector<VhostCertificates> certificates;  // index: vhost
    AlpnMismatch alpn_mismatch = AlpnMismatch::continue_without_alpn;
    ConfigPolicy policy;
    // Index: vhost. The SignatureScheme code points that the vhost's keys can sign, from the
    // key process's key_info; empty until the stack's verify_keys, and then every scheme
    // of the policy stays allowed.
    std::vector<std::vector<std::uint16_t>> key_schemes;
};

// Runs Botan's TLS::Server over a socket it borrows. Botan hands every record to send to
// tls_emit_data and every decrypted byte to tls_record_received. This class queues both and
// moves them between Botan and the socket on each call. No Botan exception leaves a public
// method, because each one becomes IoStatus::failed with a reason that names the alert sent.
class BotanSession final : public TlsSession, private Botan::TLS::Callbacks {
  public:
    BotanSession(const StackSettings& settings, KeyClient& key_client,
                 Botan::RandomNumberGenerator& random, int client_fd, std::uint64_t connection_id);
    BotanSession(const BotanSession&) = delete;
    BotanSession& operator=(const BotanSession&) = delete;
    BotanSession(BotanSession&&) = delete;
    BotanSession& operator=(BotanSession&&) = delete;
    ~BotanSession() override;

    IoResult handshake() override;
    IoResult read(std::span<std::byte> buffer) override;
    IoResult write(std::span<const std::byte> data) override;
    IoResult shutdown() override;
    [[nodiscard]] bool has_pending() const override;
    [[nodiscard]] HandshakeInfo info() const override;

  private:
    enum class Receive { fed, would_block, end_of_stream };

    // TLS::Callbacks.
    void tls_emit_data(const std::uint8_t data[], std::size_t size) override;
    void tls_record_received(std::uint64_t sequence, const std::uint8_t data[],
                             std::size_t size) override;
    void tls_alert(Botan::TLS::Alert alert) override;
    bool tls_session_established(const Botan::TLS::Session& session) override;
    void tls_examine_extensions(const Botan::TLS::Extensions& extensions,
                                Botan::TLS::Connection_Side side) override;
    std::string tls_server_choose_app_protocol(
        const std::vector<std::string>& client_protocols) override;
    std::vector<std::uint8_t> tls_sign_message(const Botan::Private_Key& key,
                                               Botan::RandomNumberGenerator& random,
                                               const std::string& padding,
                                               Botan::Signature_Format format,
                                               const std::vector<std::uint8_t>& message) override;

    void select_vhost(const Botan::TLS::Extensions& extensions);

    IoResult run_handshake();
    IoResult run_read(std::span<std::byte> buffer);
    IoResult run_write(std::span<const std::byte> data);
    IoResult run_shutdown();
    // Sends queued records. Returns false when the socket cannot take more now.
    bool flush();
    // Reads once from the socket and passes the bytes to Botan.
    Receive receive();
    // Passes bytes to Botan, turning its exceptions into Error(protocol) with the alert sent.
    void feed(std::span<const std::uint8_t> bytes);
    // Rejects a stream whose first handshake message is no ClientHello of a plausible size.
    void check_client_hello(std::span<const std::uint8_t> bytes);
    IoResult failed(const std::string& reason);
    IoResult closed_or_failed();
    std::size_t take_plaintext(std::span<std::byte> buffer);

    const StackSettings& settings_;
    KeyClient& key_client_;
    int fd_;
    std::uint64_t connection_id_;
    VhostCredentials credentials_;
    Botan::TLS::Session_Manager_Noop session_manager_;
    // This session's copy of settings.policy, limited to the schemes of the vhost's keys once
    // select_vhost has chosen it. Botan keeps a reference to it.
    ConfigPolicy policy_;

    std::vector<std::uint8_t> outgoing_;  // records Botan emitted that the socket has not taken
    std::size_t outgoing_sent_ = 0;
    std::vector<std::uint8_t> plaintext_;  // decrypted bytes not yet read
    std::size_t plaintext_read_ = 0;
    std::size_t write_taken_ = 0;  // bytes of a write() whose records still wait in outgoing_
    // The first bytes of the stream, up to the handshake message header, until checked.
    std::vector<std::uint8_t> hello_header_;
    bool hello_checked_ = false;

    std::size_t vhost_index_ = 0;
    std::optional<std::string> sni_;
    std::string protocol_;
    std::string cipher_;
    std::string scheme_;
    std::string failure_;       // set once the session failed
    std::string peer_alert_;    // a fatal alert the client sent
    bool peer_closed_ = false;  // the client sent close_notify
    bool closed_reported_ = false;
    bool close_sent_ = false;

    // Declared last: Botan calls back into the members above until it is destroyed.
    std::unique_ptr<Botan::TLS::Server> server_;
};

}  // namespace cloister::botan
