#include "backends/openssl/key_capabilities.h"

#include <openssl/tls1.h>

#include <algorithm>
#include <array>

#include "core/key_protocol.h"

namespace cloister::ossl {
namespace {

using keyproto::SignatureScheme;

struct Preference {
    SignatureScheme scheme;
    KeyType type;
};

// OpenSSL 3.0's default server order (ssl/t1_lib.c tls12_sigalgs) restricted to the schemes
// the key process signs, without SHA-1.
constexpr std::array<Preference, 10> preferences{{
    {SignatureScheme::ecdsa_secp256r1_sha256, KeyType::ec},
    {SignatureScheme::ecdsa_secp384r1_sha384, KeyType::ec},
    {SignatureScheme::ecdsa_secp521r1_sha512, KeyType::ec},
    {SignatureScheme::ed25519, KeyType::ed25519},
    {SignatureScheme::rsa_pss_rsae_sha256, KeyType::rsa},
    {SignatureScheme::rsa_pss_rsae_sha384, KeyType::rsa},
    {SignatureScheme::rsa_pss_rsae_sha512, KeyType::rsa},
    {SignatureScheme::rsa_pkcs1_sha256, KeyType::rsa},
    {SignatureScheme::rsa_pkcs1_sha384, KeyType::rsa},
    {SignatureScheme::rsa_pkcs1_sha512, KeyType::rsa},
}};

bool is_pss(SignatureScheme scheme) {
    return scheme == SignatureScheme::rsa_pss_rsae_sha256 ||
           scheme == SignatureScheme::rsa_pss_rsae_sha384 ||
           scheme == SignatureScheme::rsa_pss_rsae_sha512;
}

bool serves(const KeySchemes& key, SignatureScheme scheme) {
    const auto code = static_cast<std::uint16_t>(scheme);
    return std::find(key.schemes.begin(), key.schemes.end(), code) != key.schemes.end();
}

// True when key serves fewer of its type's preferences than all of them.
bool restricted(const KeySchemes& key) {
    return std::any_of(preferences.begin(), preferences.end(), [&key](const Preference& entry) {
        return entry.type == key.type && !serves(key, entry.scheme);
    });
}

void note_missing_pss(const KeySchemes& key, VhostSigning& signing) {
    const bool pss = std::any_of(key.schemes.begin(), key.schemes.end(), [](std::uint16_t code) {
        return is_pss(static_cast<SignatureScheme>(code));
    });
    if (key.type == KeyType::rsa && !pss) {
        signing.tls12_only = true;
        signing.keys_without_pss += signing.keys_without_pss.empty() ? "" : ", ";
        signing.keys_without_pss += "'" + key.key_name + "'";
    }
}

}  // namespace

VhostSigning derive_vhost_signing(std::span<const KeySchemes> keys) {
    VhostSigning signing;
    for (const KeySchemes& key : keys) {
        note_missing_pss(key, signing);
    }
    if (std::none_of(keys.begin(), keys.end(), restricted)) {
        return signing;
    }
    for (const Preference& entry : preferences) {
        const bool offered = std::any_of(keys.begin(), keys.end(), [&entry](const KeySchemes& key) {
            return key.type == entry.type && serves(key, entry.scheme);
        });
        if (offered) {
            signing.sigalgs += signing.sigalgs.empty() ? "" : ":";
            signing.sigalgs +=
                keyproto::scheme_name(static_cast<std::uint16_t>(entry.scheme)).value_or("");
        }
    }
    return signing;
}

std::optional<std::string_view> parse_server_name(std::span<const unsigned char> extension) {
    if (extension.size() < 2) {
        return std::nullopt;
    }
    const std::size_t list_size = (std::size_t{extension[0]} << 8U) | extension[1];
    if (list_size != extension.size() - 2) {
        return std::nullopt;
    }
    std::size_t position = 2;
    while (position + 3 <= extension.size()) {
        const unsigned type = extension[position];
        const std::size_t size =
            (std::size_t{extension[position + 1]} << 8U) | extension[position + 2];
        position += 3;
        if (size > extension.size() - position) {
            return std::nullopt;
        }
        if (type == TLSEXT_NAMETYPE_host_name) {
            const auto* name = reinterpret_cast<const char*>(extension.data() + position);
            return std::string_view(name, size);
        }
        position += size;
    }
    return std::nullopt;
}

std::optional<std::string_view> client_hello_server_name(SSL* ssl) {
    const unsigned char* data = nullptr;
    std::size_t size = 0;
    if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &data, &size) != 1) {
        return std::nullopt;
    }
    return parse_server_name({data, size});
}

}  // namespace cloister::ossl
