#include "core/reload.h"

#include <fmt/format.h>

namespace cloister {
namespace {

const char* seccomp_name(SeccompSetting setting) {
    switch (setting) {
        case SeccompSetting::enforce:
            return "enforce";
        case SeccompSetting::log:
            return "log";
        case SeccompSetting::off:
            return "off";
    }
    return "unknown";
}

std::string uid_range_text(const std::optional<UidRange>& range) {
    return range ? range->to_string() : "none";
}

// Adds the message of one restart-only key when its value changed.
void compare(std::vector<std::string>& changes, const SandboxConfig& next, const char* key,
             const std::string& before, const std::string& after) {
    if (before == after) {
        return;
    }
    const std::string where = next.where.file.empty() ? "" : " (" + next.where.to_string() + ")";
    changes.push_back(fmt::format(R"([sandbox] {} changed from "{}" to "{}"{}; a restart )"
                                  R"(applies it, a reload keeps "{}")",
                                  key, before, after, where, before));
}

// A TCP listener address as format_address writes it ("127.0.0.1:8443", "[::1]:8443").
struct TcpAddress {
    std::string host;  // with the brackets of an IPv6 address
    std::string port;
};

std::optional<TcpAddress> split_tcp_address(const std::string& address) {
    const std::size_t colon = address.rfind(':');
    if (address.starts_with("unix") || colon == std::string::npos) {
        return std::nullopt;
    }
    return TcpAddress{address.substr(0, colon), address.substr(colon + 1)};
}

bool is_wildcard(const std::string& host) {
    return host == "0.0.0.0" || host == "[::]";
}

// True when a socket listening on held keeps a socket from binding wanted.
bool overlaps(const std::string& held, const std::string& wanted) {
    const std::optional<TcpAddress> a = split_tcp_address(held);
    const std::optional<TcpAddress> b = split_tcp_address(wanted);
    if (!a || !b || a->port != b->port) {
        return false;
    }
    const bool same_family = a->host.starts_with('[') == b->host.starts_with('[');
    return same_family && (a->host == b->host || is_wildcard(a->host) || is_wildcard(b->host));
}

}  // namespace

std::vector<std::string> restart_only_changes(const Config& current, const Config& next) {
    std::vector<std::string> changes;
    const SandboxConfig& before = current.sandbox;
    const SandboxConfig& after = next.sandbox;
    compare(changes, after, "network-user", before.network_user, after.network_user);
    compare(changes, after, "key-user", before.key_user, after.key_user);
    compare(changes, after, "root-directory", before.root_directory.string(),
            after.root_directory.string());
    compare(changes, after, "seccomp", seccomp_name(before.seccomp), seccomp_name(after.seccomp));
    compare(changes, after, "namespaces", before.namespaces ? "true" : "false",
            after.namespaces ? "true" : "false");
    // The supervisor builds its uid pool once, at start.
    compare(changes, after, "connection-uids", uid_range_text(before.connection_uids),
            uid_range_text(after.connection_uids));
    compare(changes, after, "connection-network",
            before.connection_network == ConnectionNetwork::none ? "none" : "host",
            after.connection_network == ConnectionNetwork::none ? "none" : "host");
    compare(changes, after, "spawn", before.spawn == SpawnMode::exec ? "exec" : "fork",
            after.spawn == SpawnMode::exec ? "exec" : "fork");
    return changes;
}

ListenerDiff diff_listeners(const std::vector<std::string>& current,
                            const std::vector<std::string>& wanted) {
    ListenerDiff diff;
    std::vector<bool> kept(current.size(), false);
    for (const std::string& address : wanted) {
        std::optional<std::size_t> match;
        for (std::size_t i = 0; i < current.size(); ++i) {
            if (!kept[i] && current[i] == address) {
                match = i;
                kept[i] = true;
                break;
            }
        }
        diff.reuse.push_back(match);
    }
    for (std::size_t i = 0; i < current.size(); ++i) {
        if (!kept[i]) {
            diff.removed.push_back(i);
        }
    }
    return diff;
}

std::optional<std::string> own_listener_conflict(const std::vector<std::string>& current,
                                                 const std::vector<std::string>& wanted,
                                                 const ListenerDiff& diff, std::size_t index) {
    for (std::size_t held = 0; held < current.size(); ++held) {
        if (!overlaps(current[held], wanted[index])) {
            continue;
        }
        for (std::size_t other = 0; other < diff.reuse.size(); ++other) {
            if (diff.reuse[other] == held) {
                return fmt::format(
                    "{} overlaps {}, which listener[{}] keeps listening on; "
                    "remove one of the two listeners",
                    wanted[index], current[held], other);
            }
        }
        return fmt::format(
            "{} overlaps {}, where cloister listens until every new listener is bound, so a "
            "reload cannot move the port between these addresses; restart cloister to apply "
            "this change, or choose another port",
            wanted[index], current[held]);
    }
    return std::nullopt;
}

}  // namespace cloister
