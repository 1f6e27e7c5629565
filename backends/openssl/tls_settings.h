// Applying the [tls] section of the config to an SSL_CTX.
#pragma once

#include <openssl/ssl.h>

#include "core/config.h"

namespace cloister::ossl {

// Sets the protocol range, TLS 1.3 cipher suites, TLS 1.2 cipher list (without RSA key
// exchange unless [tls] rsa-key-exchange is true), groups, server preference, no renegotiation, no stateful session cache, and the
// write modes the proxy loop relies on. Throws Error(config) naming Config::source, the key
// and the value that OpenSSL rejects.
void apply_tls_settings(SSL_CTX* context, const Config& config);

}  // namespace cloister::ossl
