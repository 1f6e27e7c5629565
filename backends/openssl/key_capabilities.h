// Offering each vhost only the signature schemes that its keys can sign. A key in a PKCS#11
// token may lack a mechanism (RSA-PSS above all), and the key process reports what each key
// serves with the key_info request.
#pragma once

#include <openssl/ssl.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "backends/openssl/provider_key.h"

namespace cloister::ossl {

// One certificate's key and the SignatureScheme code points the key process signs with it.
struct KeySchemes {
    KeyType type = KeyType::rsa;
    std::string key_name;
    std::vector<std::uint16_t> schemes;
};

// The limits of one vhost.
struct VhostSigning {
    // The SSL_CTX_set1_sigalgs_list value, in OpenSSL 3.0's default order of preference. Empty
    // when every key serves every scheme of its type, so OpenSSL's defaults stay.
    std::string sigalgs;
    // An RSA key of the vhost cannot sign RSA-PSS, which TLS 1.3 requires of RSA keys (RFC
    // 8446 section 4.2.3), so the vhost serves TLS 1.2 only. keys_without_pss names them.
    bool tls12_only = false;
    std::string keys_without_pss;
};

// Derives the limits of a vhost from its keys. SHA-1 schemes are never offered.
VhostSigning derive_vhost_signing(std::span<const KeySchemes> keys);

// Returns the host_name of a server_name extension body (RFC 6066 section 3): a u16 list
// length, then entries of name type (u8), u16 length and name. Returns nullopt when the body
// is malformed or lists no host_name; OpenSSL rejects a malformed one later in the handshake.
std::optional<std::string_view> parse_server_name(std::span<const unsigned char> extension);

// Reads the server_name extension of the ClientHello that ssl is processing. Only valid in
// a client_hello callback (SSL_CTX_set_client_hello_cb).
std::optional<std::string_view> client_hello_server_name(SSL* ssl);

}  // namespace cloister::ossl
