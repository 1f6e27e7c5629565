// ALPN protocol selection (RFC 7301), shared by every TLS stack so that each agrees on the
// same protocol for the same vhost and client.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "core/config.h"

namespace cloister {

struct AlpnSelection {
    std::string protocol;  // the agreed protocol; empty when none is agreed
    // True when the handshake must fail with alert no_application_protocol (120).
    bool reject = false;
};

// Chooses the protocol for a client that offered the ALPN protocols offered. The first
// protocol of vhost_protocols (the server's order of preference) that the client offered
// wins. A vhost without protocols agrees on none and never rejects. When the lists share no
// protocol, mismatch decides between no protocol and rejection (RFC 7301 section 3.2).
AlpnSelection select_alpn(const std::vector<std::string>& vhost_protocols,
                          std::span<const std::string> offered, AlpnMismatch mismatch);

// Formats protocols for a log line: ["h2", "http/1.1"], with bytes outside printable ASCII
// written as \xHH.
std::string describe_alpn(std::span<const std::string> protocols);

}  // namespace cloister
