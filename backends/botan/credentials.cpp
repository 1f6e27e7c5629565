#include "backends/botan/credentials.h"

#include <botan/x509_key.h>
#include <fmt/format.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <limits>
#include <string_view>

#include "backends/openssl/certificate_chain.h"
#include "backends/openssl/vhost_context.h"
#include "backends/openssl/openssl_errors.h"
#include "core/error.h"

namespace cloister::botan {
namespace {

[[noreturn]] void throw_certificate_error(const ServedCertificate& certificate,
                                          std::string_view problem) {
    throw Error(ErrorKind::config,
                fmt::format("{}: vhost '{}': certificate {}: {}", certificate.where,
                            certificate.vhost_name, certificate.chain_file.string(), problem));
}

// Frees memory that OpenSSL allocated; OPENSSL_free is a macro, not a function.
struct OpensslFree {
    void operator()(unsigned char* data) const noexcept { OPENSSL_free(data); }
};

Botan::X509_Certificate to_botan(const ServedCertificate& certificate, X509* x509) {
    unsigned char* der = nullptr;
    const int length = i2d_X509(x509, &der);
    const std::unique_ptr<unsigned char, OpensslFree> owned(der);
    if (length <= 0) {
        throw_certificate_error(certificate,
                                "cannot encode a certificate: " + ossl::take_openssl_errors());
    }
    try {
        return Botan::X509_Certificate(std::vector<std::uint8_t>(der, der + length));
    } catch (const std::exception& error) {
        throw_certificate_error(certificate,
                                fmt::format("Botan cannot read a certificate: {}", error.what()));
    }
}


void attach_key(ServedCertificate& certificate, std::uint32_t key_index) {
    std::unique_ptr<Botan::Public_Key> key;
    try {
        key = certificate.chain.front().load_subject_public_key();
    } catch (const std::exception& error) {
        throw_certificate_error(certificate,
                                fmt::format("Botan cannot read the public key: {}", error.what()));
    }
    const std::string algorithm = key->algo_name();
    if (algorithm != "RSA" && algorithm != "ECDSA") {
        throw_certificate_error(
            certificate,
            fmt::format("the key is {}, and tls-backend \"botan\" (Botan 2.19) signs TLS "
                        "handshakes with RSA and ECDSA keys only; expected an RSA or ECDSA "
                        "certificate, or tls-backend = \"openssl\"",
                        algorithm));
    }
    certificate.key = std::make_unique<PublicOnlyKey>(std::move(key), key_index);
}

// Takes the names and the chain from the OpenSSL stack's loader, so that both stacks order,
// warn about and reject the same files, and converts the chain to Botan's type.
ServedCertificate describe_certificate(const Config& config, const VhostConfig& vhost,
                                       const CertificateConfig& entry) {
    const ossl::ServedCertificate loaded =
        ossl::describe_certificate(config, vhost, entry, nullptr);
    ServedCertificate certificate;
    certificate.vhost_name = loaded.vhost_name;
    certificate.key_name = loaded.key_name;
    certificate.key_file = loaded.key_file;
    certificate.chain_file = loaded.chain_file;
    certificate.where = loaded.where;
    certificate.chain.push_back(to_botan(certificate, loaded.chain.leaf.get()));
    for (const ossl::X509Ptr& intermediate : loaded.chain.intermediates) {
        certificate.chain.push_back(to_botan(certificate, intermediate.get()));
    }
    return certificate;
}

// Botan requests one chain per key type, so a second certificate of a type could never be
// served.
void check_unique_key_type(const VhostCertificates& loaded, const ServedCertificate& next) {
    for (const ServedCertificate& other : loaded) {
        if (other.key->algo_name() == next.key->algo_name()) {
            throw_certificate_error(
                next, fmt::format("the vhost already has a certificate with a {} key ({}). A "
                                  "vhost serves at most one certificate per key type",
                                  next.key->algo_name(), other.chain_file.string()));
        }
    }
}

}  // namespace

VhostCertificates load_vhost_certificates(const Config& config, std::size_t vhost_index) {
    const VhostConfig& vhost = config.vhosts.at(vhost_index);
    if (vhost.certificates.empty()) {
        throw Error(ErrorKind::config, fmt::format("{}: vhost '{}' has no certificate",
                                                   vhost.where.to_string(), vhost.name));
    }
    VhostCertificates certificates;
    for (const CertificateConfig& entry : vhost.certificates) {
        ServedCertificate certificate = describe_certificate(config, vhost, entry);
        attach_key(certificate, static_cast<std::uint32_t>(entry.key_index));
        check_unique_key_type(certificates, certificate);
        spdlog::debug("vhost '{}': loaded certificate {} ({} key '{}', {} intermediates)",
                      vhost.name, certificate.chain_file.string(), certificate.key->algo_name(),
                      certificate.key_name, certificate.chain.size() - 1);
        certificates.push_back(std::move(certificate));
    }
    return certificates;
}

std::vector<Botan::X509_Certificate> VhostCredentials::find_cert_chain(
    const std::vector<std::string>& key_types,
    const std::vector<Botan::X509_DN>& /*acceptable_issuers*/, const std::string& type,
    const std::string& /*context*/) {
    if (type != "tls-server" || !selected_) {
        return {};
    }
    for (const ServedCertificate& certificate : vhosts_.at(*selected_)) {
        const std::string algorithm = certificate.key->algo_name();
        if (std::find(key_types.begin(), key_types.end(), algorithm) != key_types.end()) {
            return certificate.chain;
        }
    }
    return {};
}

Botan::Private_Key* VhostCredentials::private_key_for(const Botan::X509_Certificate& certificate,
                                                      const std::string& type,
                                                      const std::string& /*context*/) {
    if (type != "tls-server" || !selected_) {
        return nullptr;
    }
    for (const ServedCertificate& served : vhosts_.at(*selected_)) {
        if (served.chain.front() == certificate) {
            return served.key.get();
        }
    }
    return nullptr;
}

}  // namespace cloister::botan
