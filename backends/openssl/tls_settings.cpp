#include "backends/openssl/tls_settings.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <string>
#include <string_view>

#include "backends/openssl/openssl_errors.h"
#include "core/error.h"

namespace cloister::ossl {
namespace {

[[noreturn]] void throw_setting_error(const Config& config, std::string_view key,
                                      std::string_view value, std::string_view problem) {
    throw Error(ErrorKind::config,
                fmt::format("{}: [tls] {} = \"{}\": {}: {}", config.source.string(), key, value,
                            problem, take_openssl_errors()));
}

int protocol_version(TlsVersion version) {
    return version == TlsVersion::tls1_3 ? TLS1_3_VERSION : TLS1_2_VERSION;
}

void apply_versions(SSL_CTX* context, const TlsConfig& tls) {
    // Both values come from an enum, so OpenSSL accepts them. The loader checks min <= max.
    SSL_CTX_set_min_proto_version(context, protocol_version(tls.min_version));
    SSL_CTX_set_max_proto_version(context, protocol_version(tls.max_version));
}

bool lists_rsa_key_exchange(const SSL_CTX* context) {
    const STACK_OF(SSL_CIPHER)* ciphers = SSL_CTX_get_ciphers(context);
    for (int i = 0; i < sk_SSL_CIPHER_num(ciphers); ++i) {
        if (SSL_CIPHER_get_kx_nid(sk_SSL_CIPHER_value(ciphers, i)) == NID_kx_rsa) {
            return true;
        }
    }
    return false;
}

void apply_ciphers(SSL_CTX* context, const Config& config) {
    const TlsConfig& tls = config.tls;
    if (SSL_CTX_set_ciphersuites(context, tls.ciphersuites.c_str()) != 1) {
        throw_setting_error(config, "ciphersuites", tls.ciphersuites,
                            "invalid TLS 1.3 cipher suite list");
    }
    // RSA key exchange lacks forward secrecy, so it stays off unless the config turns it on.
    const std::string ciphers = tls.rsa_key_exchange ? tls.ciphers : tls.ciphers + ":!kRSA";
    if (SSL_CTX_set_cipher_list(context, ciphers.c_str()) != 1) {
        throw_setting_error(config, "ciphers", tls.ciphers,
                            tls.rsa_key_exchange
                                ? "no TLS 1.2 cipher matches"
                                : "no TLS 1.2 cipher matches (RSA key exchange is removed)");
    }
    if (tls.rsa_key_exchange && !lists_rsa_key_exchange(context)) {
        spdlog::warn(
            "{}: [tls] rsa-key-exchange is true, but ciphers = \"{}\" contains no RSA key "
            "exchange suite. Add one such as AES128-GCM-SHA256 to ciphers.",
            config.source.string(), tls.ciphers);
    }
}

void apply_groups(SSL_CTX* context, const Config& config) {
    if (SSL_CTX_set1_groups_list(context, config.tls.groups.c_str()) != 1) {
        throw_setting_error(config, "groups", config.tls.groups, "invalid or unknown group");
    }
}

}  // namespace

void apply_tls_settings(SSL_CTX* context, const Config& config) {
    apply_versions(context, config.tls);
    apply_ciphers(context, config);
    apply_groups(context, config);

    std::uint64_t options = SSL_OP_NO_RENEGOTIATION;
    if (config.tls.prefer_server_ciphers) {
        options |= SSL_OP_CIPHER_SERVER_PREFERENCE;
    }
    SSL_CTX_set_options(context, options);
    // Each connection process serves one connection, so a session cache would never be hit.
    // Stateless tickets still allow resumption, because every child inherits the ticket keys.
    // The ClientHello callback of OpensslStack binds each session to its vhost with a session
    // id context, so a ticket resumes only on the vhost that issued it.
    SSL_CTX_set_session_cache_mode(context, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(context, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
}

}  // namespace cloister::ossl
