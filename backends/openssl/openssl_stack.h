// The OpenSSL 3 TLS stack with its built-in key-forwarding provider.
#pragma once

#include <memory>

#include "core/config.h"
#include "core/tls_stack.h"
#include "core/vhost_table.h"

namespace cloister {

// Builds one SSL_CTX per vhost certificate set, with private keys that live in the key
// process. Reads certificate files; throws Error(config) naming the file on any problem.
std::unique_ptr<TlsStack> make_openssl_stack(const Config& config, const VhostTable& vhosts);

}  // namespace cloister
