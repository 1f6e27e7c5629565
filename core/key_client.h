// The connection-process side of a key channel.
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <vector>

#include "core/fd.h"
#include "core/key_protocol.h"

namespace cloister {

// Sends one request at a time over a SOCK_SEQPACKET key channel and waits for the response
// with a timeout. Not thread-safe: each connection process owns one client.
class KeyClient {
public:
    KeyClient(Fd channel, std::chrono::milliseconds timeout);

    // Signs message (the whole to-be-signed content) with key_index and scheme and returns
    // the signature in TLS wire form (DER for ECDSA). Throws Error(io/closed/timeout) when
    // the channel fails and Error(policy/crypto) with the key process's status otherwise.
    std::vector<std::uint8_t> sign(std::uint32_t key_index, std::uint16_t scheme,
                                   std::span<const std::uint8_t> message);

    // Returns the DER SubjectPublicKeyInfo of key_index, or an empty vector when the key
    // process returns public_key_unknown (a token key without public material).
    std::vector<std::uint8_t> public_key(std::uint32_t key_index);

    // Decrypts the RSA-encrypted premaster secret of a TLS 1.2 ClientKeyExchange with
    // key_index and returns 48 bytes: the premaster secret, or random bytes when the
    // ciphertext is invalid (implicit rejection). Throws like sign.
    std::vector<std::uint8_t> decrypt(std::uint32_t key_index, std::uint16_t client_version,
                                      std::span<const std::uint8_t> ciphertext);

    // Returns the SignatureScheme code points that the key process signs with key_index (the
    // key_info request). A key in a PKCS#11 token may serve fewer schemes than its key type
    // allows, so a TLS stack offers a vhost only these. Throws like sign, and
    // Error(protocol) for an invalid list.
    std::vector<std::uint16_t> key_schemes(std::uint32_t key_index);

    // Number of requests sent on this channel.
    [[nodiscard]] std::uint32_t requests_sent() const { return next_request_id_ - 1; }

private:
    keyproto::Response round_trip(keyproto::Request request);

    Fd channel_;
    std::chrono::milliseconds timeout_;
    std::uint32_t next_request_id_ = 1;
};

}  // namespace cloister
