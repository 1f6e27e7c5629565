#include "core/vhost_table.h"

#include <fmt/format.h>

#include <algorithm>
#include <unordered_map>
#include <utility>

namespace cloister {

namespace {

// A DNS name is at most 255 octets in wire form, length bytes included, which leaves 253
// characters of dotted text without the trailing dot.
constexpr std::size_t kMaxNameLength = 253;
constexpr std::size_t kMaxLabelLength = 63;
constexpr std::string_view kWildcardPrefix = "*.";

bool is_ascii_letter_or_digit(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

// True when name contains only printable ASCII, so that no byte >= 0x80 or control byte can
// reach a lookup.
bool is_printable_ascii(std::string_view name) {
    return std::all_of(name.begin(), name.end(), [](char c) {
        const auto byte = static_cast<unsigned char>(c);
        return byte > 0x20 && byte < 0x7f;
    });
}

// Position of one configured server name: its vhost and its index in server_names.
struct NameOrigin {
    std::size_t vhost = 0;
    std::size_t index = 0;
};

std::string describe_origin(const std::vector<VhostConfig>& vhosts, const NameOrigin& origin) {
    const VhostConfig& vhost = vhosts[origin.vhost];
    const std::string path = fmt::format("vhost[{}].server-names[{}]", origin.vhost, origin.index);
    if (origin.index < vhost.server_name_locations.size()) {
        return fmt::format("{} at {}", path, vhost.server_name_locations[origin.index].to_string());
    }
    return fmt::format("{} at {}", path, vhost.where.to_string());
}

[[noreturn]] void throw_duplicate_name(const std::vector<VhostConfig>& vhosts,
                                       const std::string& name, const NameOrigin& first,
                                       const NameOrigin& second) {
    const VhostConfig& vhost = vhosts[second.vhost];
    const SourceLocation& where = second.index < vhost.server_name_locations.size()
                                      ? vhost.server_name_locations[second.index]
                                      : vhost.where;
    throw Error(ErrorKind::config,
                fmt::format("{}: vhost[{}].server-names[{}]: duplicate server name \"{}\", first "
                            "listed as {}; expected each name once across all vhosts (names "
                            "are case-insensitive)",
                            where.to_string(), second.vhost, second.index, name,
                            describe_origin(vhosts, first)));
}

std::optional<std::size_t> find_default(const std::vector<VhostConfig>& vhosts) {
    std::optional<std::size_t> found;
    for (std::size_t i = 0; i < vhosts.size(); ++i) {
        if (!vhosts[i].is_default) {
            continue;
        }
        if (found) {
            throw Error(ErrorKind::config,
                        fmt::format("{}: vhost[{}]: vhost[{}] at {} is already the default; "
                                    "expected at most one default vhost",
                                    vhosts[i].where.to_string(), i, *found,
                                    vhosts[*found].where.to_string()));
        }
        found = i;
    }
    // With no vhost marked, the first one is the default, as load_config also decides.
    if (!found && !vhosts.empty()) {
        found = 0;
    }
    return found;
}

}  // namespace

std::string ascii_lowercase(std::string_view text) {
    std::string lower(text);
    for (char& c : lower) {
        if (c >= 'A' && c <= 'Z') {
            c = static_cast<char>(c - 'A' + 'a');
        }
    }
    return lower;
}

bool is_ldh_label(std::string_view label) {
    if (label.empty() || label.size() > kMaxLabelLength) {
        return false;
    }
    if (label.front() == '-' || label.back() == '-') {
        return false;
    }
    return std::all_of(label.begin(), label.end(),
                       [](char c) { return is_ascii_letter_or_digit(c) || c == '-'; });
}

bool is_ip_literal(std::string_view name) {
    if (name.find(':') != std::string_view::npos) {
        return true;
    }
    const std::size_t dot = name.rfind('.');
    const std::string_view last = dot == std::string_view::npos ? name : name.substr(dot + 1);
    return !last.empty() && last.front() >= '0' && last.front() <= '9';
}

VhostTable::VhostTable(const std::vector<VhostConfig>& vhosts, const TlsConfig& tls)
    : unknown_sni_(tls.unknown_sni), missing_sni_(tls.missing_sni) {
    std::unordered_map<std::string, NameOrigin> seen;
    for (std::size_t v = 0; v < vhosts.size(); ++v) {
        const auto& names = vhosts[v].server_names;
        for (std::size_t n = 0; n < names.size(); ++n) {
            const std::string name = ascii_lowercase(names[n]);
            const NameOrigin origin{v, n};
            const auto [it, inserted] = seen.emplace(name, origin);
            if (!inserted) {
                throw_duplicate_name(vhosts, name, it->second, origin);
            }
            if (name.starts_with(kWildcardPrefix)) {
                wildcard_.emplace(name.substr(kWildcardPrefix.size()), v);
            } else {
                exact_.emplace(name, v);
            }
        }
    }
    default_ = find_default(vhosts);
    collect_warnings(vhosts);
}

void VhostTable::collect_warnings(const std::vector<VhostConfig>& vhosts) {
    if (unknown_sni_ != SniMismatch::reject || missing_sni_ != SniMismatch::reject) {
        return;
    }
    for (std::size_t i = 0; i < vhosts.size(); ++i) {
        const VhostConfig& vhost = vhosts[i];
        if (vhost.server_names.empty() && default_ == i) {
            warnings_.push_back(fmt::format(
                "{}: vhost[{}] has no server names and tls.unknown-sni and tls.missing-sni are "
                "both \"reject\", so no client can reach it",
                vhost.where.to_string(), i));
        } else if (vhost.default_explicit) {
            warnings_.push_back(fmt::format(
                "{}: vhost[{}] ({}) sets default = true, which has no effect because "
                "tls.unknown-sni and tls.missing-sni are both \"reject\"; clients reach it "
                "only through its server names",
                vhost.where.to_string(), i, vhost.name));
        }
    }
}

std::optional<std::size_t> VhostTable::match(std::string_view name) const {
    if (name.ends_with('.')) {
        name.remove_suffix(1);
    }
    if (name.empty() || name.size() > kMaxNameLength || !is_printable_ascii(name) ||
        is_ip_literal(name)) {
        return std::nullopt;
    }
    const std::string lower = ascii_lowercase(name);
    if (const auto exact = exact_.find(lower); exact != exact_.end()) {
        return exact->second;
    }
    // A wildcard covers exactly one extra leftmost label. That label must be an LDH label,
    // so "*", an empty label or one with other bytes matches no wildcard.
    const std::size_t dot = lower.find('.');
    if (dot == std::string::npos || !is_ldh_label(std::string_view(lower).substr(0, dot))) {
        return std::nullopt;
    }
    if (const auto wildcard = wildcard_.find(lower.substr(dot + 1)); wildcard != wildcard_.end()) {
        return wildcard->second;
    }
    return std::nullopt;
}

VhostTable::Selection VhostTable::select(std::optional<std::string_view> sni) const {
    if (!sni) {
        return Selection{missing_sni_ == SniMismatch::use_default ? default_ : std::nullopt, false};
    }
    if (const auto matched = match(*sni)) {
        return Selection{matched, true};
    }
    return Selection{unknown_sni_ == SniMismatch::use_default ? default_ : std::nullopt, false};
}

}  // namespace cloister
