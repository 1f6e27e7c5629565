// The one signing path of the Botan stack: from Botan's signature request to the key process.
#pragma once

#include <botan/pk_keys.h>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "backends/botan/public_only_key.h"
#include "core/key_client.h"

namespace cloister::botan {

// Returns the TLS SignatureScheme code point (RFC 8446 section 4.2.3) whose Botan padding
// string, as Botan::TLS::padding_string_for_scheme gives it, is padding for a key of algorithm
// ("RSA" or "ECDSA"). "PSSR(SHA-256,MGF1,32)" on RSA gives 0x0804 (rsa_pss_rsae_sha256).
// Throws Error(crypto) when no scheme matches.
std::uint16_t scheme_for_padding(std::string_view algorithm, std::string_view padding);

struct RemoteSignature {
    std::vector<std::uint8_t> signature;  // TLS wire form: DER for ECDSA
    std::uint16_t scheme = 0;
};

// Sends message (the whole to-be-signed content) to the key process for key, with the scheme
// that padding names, and returns the signature. Throws Error(crypto) when padding or format
// fits no scheme of the key, and the errors of KeyClient::sign.
RemoteSignature sign_remotely(KeyClient& client, const PublicOnlyKey& key, std::string_view padding,
                              Botan::Signature_Format format,
                              std::span<const std::uint8_t> message);

}  // namespace cloister::botan
