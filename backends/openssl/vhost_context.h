// The SSL_CTX of one vhost, with every certificate of that vhost.
#pragma once

#include <openssl/ssl.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "backends/openssl/certificate_chain.h"
#include "backends/openssl/provider_key.h"
#include "core/config.h"

namespace cloister::ossl {

using SslCtxPtr = Ptr<SSL_CTX, SSL_CTX_free>;

// One certificate of a vhost with its chain and its key in the key process, plus the names
// that messages about it use.
struct ServedCertificate {
    std::string vhost_name;
    std::string key_name;
    std::filesystem::path key_file;  // or the URI of a key in a PKCS#11 token, for messages
    std::filesystem::path chain_file;
    std::string where;  // config location of the [[vhost.certificate]]
    std::uint32_t key_index = 0;
    KeyType key_type = KeyType::rsa;
    CertificateChain chain;
    EvpPkeyPtr key;  // in the "cloister" provider
};

struct VhostContext {
    SslCtxPtr ssl_ctx;
    std::vector<ServedCertificate> certificates;
};

// Returns the certificate of entry with its names and chain, but without the key. Throws
// Error(config) naming the config location and the file when the chain is invalid or the key
// reference names no [[key]]. libctx may be null (the default library context).
ServedCertificate describe_certificate(const Config& config, const VhostConfig& vhost,
                                       const CertificateConfig& entry, OSSL_LIB_CTX* libctx);

// Builds the SSL_CTX of config.vhosts[vhost_index] in libctx with the [tls] settings and every
// certificate of the vhost, RSA, ECDSA and Ed25519 side by side. Throws Error(config) naming
// the config location and the file at fault.
VhostContext build_vhost_context(const Config& config, std::size_t vhost_index,
                                 OSSL_LIB_CTX* libctx);

}  // namespace cloister::ossl
