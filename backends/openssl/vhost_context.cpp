#include "backends/openssl/vhost_context.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <limits>

#include "backends/openssl/openssl_errors.h"
#include "backends/openssl/provider.h"
#include "backends/openssl/remote_key.h"
#include "backends/openssl/tls_settings.h"
#include "core/error.h"

namespace cloister::ossl {
namespace {

[[noreturn]] void throw_certificate_error(const ServedCertificate& certificate,
                                          std::string_view problem) {
    throw Error(ErrorKind::config,
                fmt::format("{}: vhost '{}': certificate {}: {}", certificate.where,
                            certificate.vhost_name, certificate.chain_file.string(), problem));
}


void attach_key(ServedCertificate& certificate, OSSL_LIB_CTX* libctx) {
    try {
        certificate.key_type = certificate_key_type(certificate.chain.leaf.get());
        certificate.key =
            make_remote_key(certificate.chain.leaf.get(), certificate.key_index, libctx);
    } catch (const Error& error) {
        throw_certificate_error(certificate, error.what());
    }
}

// Installs the certificate, its key and its chain in the certificate slot of its key type.
// The certificate goes first: SSL_CTX_use_PrivateKey then compares the key with it, and
// SSL_CTX_check_private_key catches the case where OpenSSL silently dropped a key.
void install_certificate(SSL_CTX* context, const ServedCertificate& certificate) {
    if (SSL_CTX_use_certificate(context, certificate.chain.leaf.get()) != 1 ||
        SSL_CTX_use_PrivateKey(context, certificate.key.get()) != 1 ||
        SSL_CTX_check_private_key(context) != 1) {
        throw_certificate_error(certificate,
                                fmt::format("the key-process key for key '{}' "
                                            "cannot be used with the certificate: {}",
                                            certificate.key_name, take_openssl_errors()));
    }
    for (const X509Ptr& intermediate : certificate.chain.intermediates) {
        if (SSL_CTX_add1_chain_cert(context, intermediate.get()) != 1) {
            throw_certificate_error(
                certificate, "cannot add an intermediate certificate: " + take_openssl_errors());
        }
    }
}

// OpenSSL keeps one certificate per key type in an SSL_CTX, so a second one would silently
// replace the first.
void check_unique_key_type(const std::vector<ServedCertificate>& installed,
                           const ServedCertificate& certificate) {
    for (const ServedCertificate& other : installed) {
        if (other.key_type == certificate.key_type) {
            throw_certificate_error(
                certificate,
                fmt::format("the vhost already has a certificate with a {} key ({}). A "
                            "vhost serves at most one certificate per key type",
                            key_type_name(certificate.key_type), other.chain_file.string()));
        }
    }
}

SslCtxPtr new_ssl_ctx(const Config& config, OSSL_LIB_CTX* libctx) {
    // "?provider=default" prefers the default provider for every fetch libssl makes, so key
    // exchange groups and the certificates' public keys stay with the default provider.
    SslCtxPtr context(SSL_CTX_new_ex(libctx, "?provider=default", TLS_server_method()));
    if (!context) {
        throw Error(ErrorKind::crypto, "cannot create an SSL_CTX: " + take_openssl_errors());
    }
    apply_tls_settings(context.get(), config);
    return context;
}

}  // namespace

ServedCertificate describe_certificate(const Config& config, const VhostConfig& vhost,
                                       const CertificateConfig& entry, OSSL_LIB_CTX* libctx) {
    ServedCertificate certificate;
    certificate.vhost_name = vhost.name;
    certificate.chain_file = entry.chain;
    certificate.where = entry.where.to_string();
    if (entry.key_index >= config.keys.size() ||
        entry.key_index > std::numeric_limits<std::uint32_t>::max()) {
        throw_certificate_error(certificate,
                                fmt::format("key index {} names no [[key]]", entry.key_index));
    }
    const KeyConfig& key = config.keys[entry.key_index];
    certificate.key_name = key.name;
    // A key in a PKCS#11 token is named by its URI without the query, which may hold a PIN.
    certificate.key_file =
        key.in_token() ? std::filesystem::path(key.uri.substr(0, key.uri.find('?'))) : key.file;
    certificate.key_index = static_cast<std::uint32_t>(entry.key_index);
    certificate.chain = load_certificate_chain(entry.chain, certificate.where, libctx);
    return certificate;
}

VhostContext build_vhost_context(const Config& config, std::size_t vhost_index,
                                 OSSL_LIB_CTX* libctx) {
    const VhostConfig& vhost = config.vhosts.at(vhost_index);
    if (vhost.certificates.empty()) {
        throw Error(ErrorKind::config, fmt::format("{}: vhost '{}' has no certificate",
                                                   vhost.where.to_string(), vhost.name));
    }
    VhostContext result{new_ssl_ctx(config, libctx), {}};
    for (const CertificateConfig& entry : vhost.certificates) {
        ServedCertificate certificate = describe_certificate(config, vhost, entry, libctx);
        attach_key(certificate, libctx);
        check_unique_key_type(result.certificates, certificate);
        install_certificate(result.ssl_ctx.get(), certificate);
        spdlog::debug("vhost '{}': loaded certificate {} ({} key '{}', {} intermediates)",
                      vhost.name, certificate.chain_file.string(),
                      key_type_name(certificate.key_type), certificate.key_name,
                      certificate.chain.intermediates.size());
        result.certificates.push_back(std::move(certificate));
    }
    return result;
}

}  // namespace cloister::ossl
