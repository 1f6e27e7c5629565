// The Botan 2 TLS stack.
#pragma once

#include <memory>

#include "core/config.h"
#include "core/tls_stack.h"
#include "core/vhost_table.h"

namespace cloister {

// Builds a Botan 2.19 TLS::Server configuration for every vhost: certificate chains with
// public keys only, the [tls] settings as a TLS::Policy, and signing through the key process.
// TLS 1.2 only. Reads certificate files; throws Error(config) naming the file or the setting
// on any problem.
std::unique_ptr<TlsStack> make_botan_stack(const Config& config, const VhostTable& vhosts);

}  // namespace cloister
