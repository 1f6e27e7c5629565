// Turns one decoded key-channel request into its response. No I/O and no logging: the
// serving loop sends the response and logs the outcome.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "core/config.h"
#include "core/key_protocol.h"
#include "keyprovider/key_store.h"

namespace cloister {

// State the key process keeps for one key channel.
struct ChannelState {
    std::uint64_t connection_id = 0;
    // The supervisor's start-up check channel (attach_flag_unlimited): no operation quota.
    bool unlimited = false;
    // Private-key operations attempted on this channel so far.
    std::uint32_t operations = 0;
};

struct HandlerOptions {
    // Private-key operations a channel without attach_flag_unlimited may request.
    unsigned max_operations_per_channel = 1;
    // Signs only TLS handshake signature inputs (check_tls_signing_input); others get
    // Status::refused.
    bool tls_signing_policy = true;
    // Serves decrypt requests ([tls] rsa-key-exchange); without it they get Status::refused.
    bool rsa_decryption = false;
};

// Returns the options the key process serves with: the quota of config, the TLS signing
// policy on, and decrypt requests served only with rsa_decryption ([tls] rsa-key-exchange).
HandlerOptions make_handler_options(const KeyProcessConfig& config, bool rsa_decryption);

struct HandlerResult {
    keyproto::Response response;
    // Reason the request was not served, for the log line. Empty when the status is ok.
    std::string reason;
    // Duration of the PKCS#11 token's signing calls, when the request reached a token.
    std::optional<std::chrono::nanoseconds> token_time;
};

// Returns a response to request with status and no payload, and reason for the log line.
HandlerResult make_result(const keyproto::Request& request, keyproto::Status status,
                          std::string reason);

class RequestHandler {
  public:
    // store must outlive the handler.
    RequestHandler(const KeyStore& store, HandlerOptions options);

    // Serves request on the channel described by channel, updating its operation count. A
    // sign request is checked in this order: key index (unknown_key), scheme against the key
    // type (unsupported_scheme), signing policy (refused), scheme against the store's
    // supported_schemes (unsupported_scheme), quota (quota_exceeded). Only a request that
    // passes every check counts against the quota. A decrypt request is served by
    // serve_decrypt. public_key and key_info requests never count. Safe to call from several
    // threads for different channels.
    [[nodiscard]] HandlerResult handle(const keyproto::Request& request,
                                       ChannelState& channel) const;

  private:
    [[nodiscard]] HandlerResult public_key(const keyproto::Request& request) const;
    [[nodiscard]] HandlerResult key_info(const keyproto::Request& request) const;
    [[nodiscard]] HandlerResult sign(const keyproto::Request& request, ChannelState& channel) const;
    // Returns the refusal for a sign request that fails a check, or nullopt.
    [[nodiscard]] std::optional<HandlerResult> check_sign(const keyproto::Request& request,
                                                          const ChannelState& channel) const;

    const KeyStore& store_;
    HandlerOptions options_;
};

}  // namespace cloister
