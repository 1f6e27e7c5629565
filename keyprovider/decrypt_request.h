// Serving decrypt requests: the key process's part of a TLS 1.2 RSA key exchange.
#pragma once

#include "core/key_protocol.h"
#include "keyprovider/key_store.h"
#include "keyprovider/request_handler.h"

namespace cloister {

// Serves a decrypt request on channel, with these checks in order: key index (unknown_key),
// key type RSA (unsupported_scheme), options.rsa_decryption (refused), quota
// (quota_exceeded). A request that passes every check counts against the quota and gets
// status ok with 48 bytes, whatever its ciphertext contains, and an empty reason, so neither
// the response nor the log line differs between a valid and an invalid ciphertext. Status failed
// comes only from a key store error that does not depend on the ciphertext. request must be a
// decrypt request that decode_request accepted.
[[nodiscard]] HandlerResult serve_decrypt(const KeyStore& store, const HandlerOptions& options,
                                          const keyproto::Request& request, ChannelState& channel);

}  // namespace cloister
