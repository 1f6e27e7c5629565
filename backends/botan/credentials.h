// Certificates of the Botan stack and the credentials manager that serves them by vhost.
#pragma once

#include <botan/credentials_manager.h>
#include <botan/x509cert.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backends/botan/public_only_key.h"
#include "core/config.h"

namespace cloister::botan {

// One certificate of a vhost, with its chain and the public half of its key, plus the names
// that messages about it use.
struct ServedCertificate {
    std::string vhost_name;
    std::string key_name;
    std::filesystem::path key_file;
    std::filesystem::path chain_file;
    std::string where;                           // config location of the [[vhost.certificate]]
    std::vector<Botan::X509_Certificate> chain;  // leaf first, then issuer order
    std::unique_ptr<PublicOnlyKey> key;
};

using VhostCertificates = std::vector<ServedCertificate>;

// Loads every certificate of config.vhosts[vhost_index] with the OpenSSL stack's chain loader,
// so that both stacks order, warn about and reject the same files. Throws Error(config)
// naming the config location and the file when a chain is invalid or when the vhost has two
// certificates of one key type. It also throws when a key is neither RSA nor ECDSA, the only
// key types that Botan 2.19's TLS server signs with.
VhostCertificates load_vhost_certificates(const Config& config, std::size_t vhost_index);

// Serves the certificates of the vhost that select_vhost chose for one session. Botan requests
// a chain by key type ("RSA", "ECDSA"). The SNI host name it passes is ignored, because
// VhostTable already chose the vhost from it.
class VhostCredentials final : public Botan::Credentials_Manager {
  public:
    explicit VhostCredentials(const std::vector<VhostCertificates>& vhosts) : vhosts_(vhosts) {}

    void select_vhost(std::size_t vhost_index) { selected_ = vhost_index; }

    std::vector<Botan::X509_Certificate> find_cert_chain(
        const std::vector<std::string>& key_types,
        const std::vector<Botan::X509_DN>& acceptable_issuers, const std::string& type,
        const std::string& context) override;

    Botan::Private_Key* private_key_for(const Botan::X509_Certificate& certificate,
                                        const std::string& type,
                                        const std::string& context) override;

  private:
    const std::vector<VhostCertificates>& vhosts_;
    std::optional<std::size_t> selected_;
};

}  // namespace cloister::botan
