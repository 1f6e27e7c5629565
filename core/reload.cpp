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

}  // namespace cloister
