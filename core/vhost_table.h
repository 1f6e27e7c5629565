// Chooses the vhost for a TLS connection from the client's SNI.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/config.h"

namespace cloister {

// Case-insensitive, exact-before-wildcard lookup of server names, built once from the
// config. A wildcard "*.example.test" matches exactly one extra leftmost label
// ("a.example.test", not "example.test" or "a.b.example.test"). Names that are not ASCII,
// and IP literals (which RFC 6066 section 3 forbids in SNI), match no vhost.
class VhostTable {
  public:
    // Throws Error(config) naming both places when a name appears twice or two vhosts are
    // marked as the default. With none marked, the first vhost is the default.
    VhostTable(const std::vector<VhostConfig>& vhosts, const TlsConfig& tls);

    struct Selection {
        std::optional<std::size_t> vhost;  // index into Config::vhosts; empty: reject
        bool matched_name = false;         // true when the SNI matched a server name
    };

    // Selects the vhost for sni (empty optional: the client sent no SNI).
    [[nodiscard]] Selection select(std::optional<std::string_view> sni) const;

    // Index of the vhost serving name exactly or by wildcard, if any. One trailing dot in
    // name is ignored, and names with control bytes or spaces match nothing.
    [[nodiscard]] std::optional<std::size_t> match(std::string_view name) const;

    [[nodiscard]] std::optional<std::size_t> default_vhost() const { return default_; }

    // Warnings found while building (for example a default vhost that strict settings make
    // unreachable). The caller logs them.
    [[nodiscard]] const std::vector<std::string>& warnings() const { return warnings_; }

  private:
    // Fills warnings_ for vhosts that the SNI policies make unreachable or whose default flag
    // they make useless.
    void collect_warnings(const std::vector<VhostConfig>& vhosts);

    std::unordered_map<std::string, std::size_t> exact_;
    std::unordered_map<std::string, std::size_t> wildcard_;  // key: suffix after "*."
    std::optional<std::size_t> default_;
    SniMismatch unknown_sni_;
    SniMismatch missing_sni_;
    std::vector<std::string> warnings_;
};

// Lowercases ASCII letters; other bytes are unchanged.
std::string ascii_lowercase(std::string_view text);

// True when label is an LDH label: 1 to 63 ASCII letters, digits and hyphens, with no hyphen
// at either end.
bool is_ldh_label(std::string_view label);

// True when name (without a trailing dot) is an IPv6 literal (it contains ':') or its last
// label starts with a digit. The second rule covers IPv4 literals in every form inet_aton()
// accepts, whose last part is a decimal, octal or hex number ("127.1", "0x7f000001"), and no
// DNS top-level domain starts with a digit.
bool is_ip_literal(std::string_view name);

}  // namespace cloister
