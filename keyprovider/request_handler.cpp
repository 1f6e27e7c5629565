#include "keyprovider/request_handler.h"

#include <fmt/format.h>

#include <algorithm>
#include <utility>

#include "core/error.h"
#include "keyprovider/decrypt_request.h"
#include "keyprovider/signature_schemes.h"
#include "keyprovider/signing_policy.h"

namespace cloister {

HandlerOptions make_handler_options(const KeyProcessConfig& config, bool rsa_decryption) {
    HandlerOptions options;
    options.max_operations_per_channel = config.max_operations_per_channel;
    options.tls_signing_policy = true;
    options.rsa_decryption = rsa_decryption;
    return options;
}

HandlerResult make_result(const keyproto::Request& request, keyproto::Status status,
                          std::string reason) {
    HandlerResult result;
    result.response.type = request.type;
    result.response.status = status;
    result.response.request_id = request.request_id;
    result.reason = std::move(reason);
    return result;
}

namespace {

using keyproto::Request;
using keyproto::Status;

HandlerResult make_ok(const Request& request, std::vector<std::uint8_t> payload) {
    HandlerResult result = make_result(request, Status::ok, {});
    result.response.payload = std::move(payload);
    return result;
}

std::string scheme_text(std::uint16_t scheme) {
    const auto name = keyproto::scheme_name(scheme);
    return name ? *name : fmt::format("0x{:04x}", scheme);
}

}  // namespace

RequestHandler::RequestHandler(const KeyStore& store, HandlerOptions options)
    : store_(store), options_(options) {}

HandlerResult RequestHandler::handle(const Request& request, ChannelState& channel) const {
    if (request.type == keyproto::MessageType::public_key) {
        return public_key(request);
    }
    if (request.type == keyproto::MessageType::decrypt) {
        return serve_decrypt(store_, options_, request, channel);
    }
    if (request.type == keyproto::MessageType::key_info) {
        return key_info(request);
    }
    return sign(request, channel);
}

HandlerResult RequestHandler::key_info(const Request& request) const {
    if (request.key_index >= store_.size()) {
        return make_result(request, Status::unknown_key,
                           fmt::format("key index {} does not exist ({} keys loaded)",
                                       request.key_index, store_.size()));
    }
    const std::vector<std::uint16_t> schemes = store_.supported_schemes(request.key_index);
    return make_ok(request, keyproto::encode_key_info(schemes));
}

HandlerResult RequestHandler::public_key(const Request& request) const {
    if (request.key_index >= store_.size()) {
        return make_result(request, Status::unknown_key,
                           fmt::format("key index {} does not exist ({} keys loaded)",
                                       request.key_index, store_.size()));
    }
    std::vector<std::uint8_t> public_key = store_.public_key(request.key_index);
    if (public_key.empty()) {
        return make_result(request, Status::public_key_unknown,
                           fmt::format("key {} has no public key in its store; the certificate "
                                       "check relies on a test signature",
                                       request.key_index));
    }
    return make_ok(request, std::move(public_key));
}

HandlerResult RequestHandler::sign(const Request& request, ChannelState& channel) const {
    if (auto refusal = check_sign(request, channel)) {
        return std::move(*refusal);
    }

    ++channel.operations;
    std::optional<std::chrono::nanoseconds> token_time;
    HandlerResult result;
    try {
        const auto scheme = static_cast<keyproto::SignatureScheme>(request.scheme);
        result = make_ok(request,
                         store_.sign_timed(request.key_index, scheme, request.payload, token_time));
    } catch (const Error& error) {
        result = make_result(request, Status::failed,
                             fmt::format("signing with key '{}' failed: {}",
                                         store_.key_name(request.key_index), error.what()));
    }
    result.token_time = token_time;
    return result;
}

std::optional<HandlerResult> RequestHandler::check_sign(const Request& request,
                                                        const ChannelState& channel) const {
    if (request.key_index >= store_.size()) {
        return make_result(request, Status::unknown_key,
                           fmt::format("key index {} does not exist ({} keys loaded)",
                                       request.key_index, store_.size()));
    }
    const KeyType type = store_.key_type(request.key_index);
    if (!scheme_fits(type, request.scheme)) {
        return make_result(
            request, Status::unsupported_scheme,
            fmt::format("scheme {} does not fit {} key '{}'", scheme_text(request.scheme),
                        to_string(type), store_.key_name(request.key_index)));
    }
    if (options_.tls_signing_policy) {
        const PolicyResult verdict = check_tls_signing_input(request.payload, request.scheme);
        if (!verdict.accepted()) {
            return make_result(request, Status::refused,
                               fmt::format("signing policy rejected the {}-byte message: {}",
                                           request.payload.size(), verdict.reason));
        }
    }
    // A key in a PKCS#11 token may lack the mechanism of a scheme that fits its type.
    const std::vector<std::uint16_t> served = store_.supported_schemes(request.key_index);
    if (std::find(served.begin(), served.end(), request.scheme) == served.end()) {
        return make_result(request, Status::unsupported_scheme,
                           fmt::format("key '{}' cannot sign {}: its token lacks or forbids "
                                       "the mechanism",
                                       store_.key_name(request.key_index),
                                       scheme_text(request.scheme)));
    }
    if (!channel.unlimited && channel.operations >= options_.max_operations_per_channel) {
        return make_result(request, Status::quota_exceeded,
                           fmt::format("the channel has used its {} private-key operations",
                                       options_.max_operations_per_channel));
    }
    return std::nullopt;
}

}  // namespace cloister
