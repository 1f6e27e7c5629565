#include "keyprovider/decrypt_request.h"

#include <fmt/format.h>

#include <optional>
#include <string>
#include <utility>

#include "core/error.h"

namespace cloister {
namespace {

using keyproto::Request;
using keyproto::Status;

// Returns the refusal for a decrypt request that fails a check, or nullopt. Each check looks
// only at public facts (the key, the config, the channel), never at the ciphertext.
std::optional<HandlerResult> check_decrypt(const KeyStore& store, const HandlerOptions& options,
                                           const Request& request, const ChannelState& channel) {
    if (request.key_index >= store.size()) {
        return make_result(request, Status::unknown_key,
                           fmt::format("key index {} does not exist ({} keys loaded)",
                                       request.key_index, store.size()));
    }
    const KeyType type = store.key_type(request.key_index);
    if (type != KeyType::rsa) {
        return make_result(request, Status::unsupported_scheme,
                           fmt::format("{} key '{}' cannot decrypt", to_string(type),
                                       store.key_name(request.key_index)));
    }
    if (!options.rsa_decryption) {
        return make_result(request, Status::refused,
                           "RSA key exchange is off ([tls] rsa-key-exchange = false)");
    }
    if (!channel.unlimited && channel.operations >= options.max_operations_per_channel) {
        return make_result(request, Status::quota_exceeded,
                           fmt::format("the channel has used its {} private-key operations",
                                       options.max_operations_per_channel));
    }
    return std::nullopt;
}

}  // namespace

HandlerResult serve_decrypt(const KeyStore& store, const HandlerOptions& options,
                            const Request& request, ChannelState& channel) {
    if (auto refusal = check_decrypt(store, options, request, channel)) {
        return std::move(*refusal);
    }

    ++channel.operations;
    const keyproto::DecryptInput input = keyproto::parse_decrypt_payload(request.payload);
    HandlerResult result = make_result(request, Status::ok, {});
    try {
        result.response.payload = store.decrypt_premaster_secret(
            request.key_index, input.client_version, input.ciphertext);
    } catch (const Error& error) {
        return make_result(request, Status::failed,
                           fmt::format("decrypting with key '{}' failed: {}",
                                       store.key_name(request.key_index), error.what()));
    }
    return result;
}

}  // namespace cloister
