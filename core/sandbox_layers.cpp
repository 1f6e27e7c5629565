#include "core/sandbox_layers.h"

#include <fmt/format.h>
#include <grp.h>
#include <pwd.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <system_error>
#include <thread>
#include <utility>

#include "core/error.h"
#include "core/sandbox_sigsys.h"
#include "core/sandbox_spawn.h"

namespace cloister {
namespace {

constexpr std::uint64_t mebibyte = 1024 * 1024;

// "FILE:LINE:COLUMN: sandbox.KEY: MESSAGE", or "FILE: sandbox.KEY: ..." for a default value
// that no [sandbox] table wrote.
[[noreturn]] void fail_sandbox(const Config& config, std::string_view key,
                               const std::string& message) {
    const SourceLocation& where = config.sandbox.where;
    const std::string place = where.file.empty() ? config.source.string() : where.to_string();
    throw Error(ErrorKind::config,
                fmt::format("{}{}sandbox.{}: {}", place, place.empty() ? "" : ": ", key, message));
}

SandboxUser find_user(const Config& config, std::string_view key, const std::string& name) {
    try {
        return lookup_user(name);
    } catch (const Error& error) {
        if (error.kind() != ErrorKind::config) {
            throw;
        }
        fail_sandbox(config, key, error.what());
    }
}

void decide_users(const Config& config, SandboxLayers& layers) {
    const SandboxUser network = find_user(config, "network-user", config.sandbox.network_user);
    const SandboxUser key = find_user(config, "key-user", config.sandbox.key_user);
    try {
        check_users(network, key);
    } catch (const Error& error) {
        fail_sandbox(config, "network-user and sandbox.key-user", error.what());
    }
    layers.network_user = network;
    layers.key_user = key;
}

// Creates dir and its missing parents, mode 0755 and owned by root (the caller is root).
void create_root_directory(const Config& config, const std::filesystem::path& dir) {
    std::error_code error;
    std::filesystem::create_directories(dir, error);
    if (error || ::chmod(dir.c_str(), 0755) != 0 || ::chown(dir.c_str(), 0, 0) != 0) {
        fail_sandbox(config, "root-directory",
                     fmt::format("creating the chroot directory {} failed: {}", dir.string(),
                                 error ? error.message() : std::strerror(errno)));
    }
    spdlog::info("sandbox: created the empty chroot directory {} (mode 0755, owner root)",
                 dir.string());
}

void decide_root(const Config& config, SandboxChecks checks, SandboxLayers& layers) {
    const std::filesystem::path& dir = config.sandbox.root_directory;
    std::error_code error;
    const bool exists = std::filesystem::exists(dir, error);
    if (!exists && checks.create_root) {
        create_root_directory(config, dir);
    }
    if (exists || checks.create_root) {
        const std::array users{*layers.network_user, *layers.key_user};
        try {
            check_empty_root(dir, users);
        } catch (const Error& problem) {
            fail_sandbox(config, "root-directory", problem.what());
        }
    }
    layers.root = dir;
}

// Connection processes get their Unix socket backends from the supervisor
// (core/backend_broker.h), so their chroot does not depend on the backends.
void decide_chroots(SandboxLayers& layers) {
    layers.connection_chroot = true;
    layers.key_chroot = layers.key_role == SeccompRole::key_memory;
    if (!layers.key_chroot) {
        layers.inactive.push_back(
            "chroot of the key process: a PKCS#11 module reads its token files at every "
            "signature (SoftHSM 2.6), so they must stay reachable");
    }
}

// connection-network = "none" is asked for explicitly, so a host that cannot give it stops
// the start instead of turning the layer off.
void decide_connection_network(const Config& config, SandboxChecks checks, SandboxLayers& layers) {
    if (config.sandbox.connection_network != ConnectionNetwork::none) {
        return;
    }
    if (::geteuid() != 0) {
        fail_sandbox(config, "connection-network",
                     fmt::format("\"none\" needs root (CAP_SYS_ADMIN) to create and enter a "
                                 "network namespace, and cloister runs as uid {}; start it as "
                                 "root or set connection-network = \"host\"",
                                 ::geteuid()));
    }
    if (checks.test_namespaces) {
        const NamespaceSupport support = probe_namespaces();
        if (!support.network) {
            fail_sandbox(config, "connection-network",
                         "\"none\" needs network namespaces, which this host forbids (" +
                             fmt::format("{}", fmt::join(support.unsupported, "; ")) +
                             "); set connection-network = \"host\"");
        }
    }
    layers.connection_network_none = true;
}

void decide_seccomp(const Config& config, SandboxLayers& layers) {
    switch (config.sandbox.seccomp) {
        case SeccompSetting::enforce:
            layers.seccomp = SeccompMode::enforce;
            return;
        case SeccompSetting::log:
            layers.seccomp = SeccompMode::log;
            layers.inactive.push_back(
                "seccomp kills: seccomp = \"log\" allows every call and logs the forbidden ones "
                "to the kernel log");
            return;
        case SeccompSetting::off:
            layers.inactive.push_back("seccomp: seccomp = \"off\" in [sandbox]");
            return;
    }
}

void decide_namespaces(const Config& config, SandboxChecks checks, SandboxLayers& layers) {
    if (!config.sandbox.namespaces) {
        layers.inactive.push_back("namespaces: namespaces = false in [sandbox]");
        return;
    }
    if (::geteuid() != 0) {
        layers.inactive.push_back("namespaces: they need root (CAP_SYS_ADMIN)");
        return;
    }
    NamespaceSupport support{true, true, true, {}};
    if (checks.test_namespaces) {
        support = probe_namespaces();
    }
    for (const std::string& reason : support.unsupported) {
        layers.inactive.push_back("namespace " + reason);
    }
    layers.pid_namespace = support.pid;
    layers.ipc_namespace = support.ipc;
    const bool memory_keys = layers.key_role == SeccompRole::key_memory;
    layers.network_namespace = support.network && memory_keys;
    if (support.network && !memory_keys) {
        layers.inactive.push_back(
            "network namespace of the key process: a PKCS#11 module may reach its token over "
            "the network");
    }
}

// The name of user or group entry_name with ids that overlap range, or nullopt.
std::optional<std::string> describe_overlap(const UidRange& range, const char* kind,
                                            const char* entry_name, uid_t uid, gid_t gid) {
    if (range.contains(uid) || range.contains(gid)) {
        return fmt::format("{} '{}' (uid {}, gid {})", kind, entry_name, uid, gid);
    }
    return std::nullopt;
}

// The first account of the user and group databases (getpwent, getgrent, so NSS sources that
// enumerate are included) whose uid or gid lies in range, or nullopt.
std::optional<std::string> find_account_in_range(const UidRange& range) {
    std::optional<std::string> found;
    ::setpwent();
    while (const passwd* user = ::getpwent()) {
        found = describe_overlap(range, "user", user->pw_name, user->pw_uid, user->pw_gid);
        if (found) {
            break;
        }
    }
    ::endpwent();
    if (found) {
        return found;
    }
    ::setgrent();
    while (const group* entry = ::getgrent()) {
        if (range.contains(entry->gr_gid)) {
            found = fmt::format("group '{}' (gid {})", entry->gr_name, entry->gr_gid);
            break;
        }
    }
    ::endgrent();
    return found;
}

// The reason the host forbids PID namespaces, from the probe's list, or a generic one.
std::string pid_namespace_problem(const Config& config, const SandboxLayers& layers) {
    if (!config.sandbox.namespaces) {
        return "namespaces = false in [sandbox]; set namespaces = true";
    }
    for (const std::string& reason : layers.inactive) {
        if (reason.starts_with("namespace PID:")) {
            return "this host forbids them (" + reason + ")";
        }
    }
    return "cloister does not run as root";
}

// Fails when an entry of /etc/subuid or /etc/subgid overlaps range. A missing file has no
// entries.
void check_subordinate_ids(const Config& config, const UidRange& range) {
    for (const char* path : {"/etc/subuid", "/etc/subgid"}) {
        std::ifstream entries(path);
        if (!entries) {
            continue;
        }
        if (const auto entry = find_subordinate_overlap(range, entries)) {
            fail_sandbox(config, "connection-uids",
                         fmt::format("the range {} overlaps the subordinate ids '{}' of {}, "
                                     "which that user's containers may run as; choose a range "
                                     "outside /etc/subuid and /etc/subgid",
                                     range.to_string(), *entry, path));
        }
    }
}

// Checks the connection-uids range against the host: root, PID namespaces, and no account or
// subordinate id in the range. parse_config has checked 0 and the size already.
void decide_connection_uids(const Config& config, SandboxLayers& layers) {
    if (!config.sandbox.connection_uids) {
        return;
    }
    const UidRange& range = *config.sandbox.connection_uids;
    const std::string value = range.to_string();
    if (::geteuid() != 0) {
        fail_sandbox(config, "connection-uids",
                     fmt::format("the range {} needs cloister to run as root (it runs as uid {}), "
                                 "which switches each connection process to its uid; start it "
                                 "as root or remove connection-uids",
                                 value, ::geteuid()));
    }
    if (!layers.pid_namespace) {
        fail_sandbox(config, "connection-uids",
                     fmt::format("the range {} needs PID namespaces, because a uid is reused only "
                                 "once the namespace of its previous process is gone, but {}; "
                                 "remove connection-uids on such a host",
                                 value, pid_namespace_problem(config, layers)));
    }
    if (config.sandbox.seccomp != SeccompSetting::enforce) {
        fail_sandbox(config, "connection-uids",
                     fmt::format("the range {} needs seccomp = \"enforce\": without the filter a "
                                 "connection process can leave keyring keys, IPC objects or files "
                                 "owned by its uid to the next connection that gets the uid; set "
                                 "seccomp = \"enforce\" or remove connection-uids",
                                 value));
    }
    for (const auto& [user, key] :
         {std::pair{layers.network_user, "network-user"}, std::pair{layers.key_user, "key-user"}}) {
        if (user && (range.contains(user->uid) || range.contains(user->gid))) {
            fail_sandbox(config, "connection-uids",
                         fmt::format("the range {} contains the ids of {} '{}' (uid {}, gid {}); "
                                     "choose a range outside every account",
                                     value, key, user->name, user->uid, user->gid));
        }
    }
    if (const auto account = find_account_in_range(range)) {
        fail_sandbox(config, "connection-uids",
                     fmt::format("the range {} contains the ids of {} in the user database; "
                                 "choose a range that no user or group uses",
                                 value, *account));
    }
    check_subordinate_ids(config, range);
    layers.connection_uids = range;
}

// Fails when the chroot directory's group is an id of the range and may write it.
void check_root_against_range(const Config& config, const SandboxLayers& layers) {
    struct stat status {};
    if (!layers.connection_uids || !layers.root || ::stat(layers.root->c_str(), &status) != 0) {
        return;
    }
    if (layers.connection_uids->contains(status.st_gid) && (status.st_mode & S_IWGRP) != 0) {
        fail_sandbox(config, "root-directory",
                     fmt::format("chroot directory {} is writable by its group {}, an id of "
                                 "connection-uids; run 'chmod g-w {}'",
                                 layers.root->string(), status.st_gid, layers.root->string()));
    }
}

std::string describe_user(const std::optional<SandboxUser>& user) {
    if (!user) {
        return "";
    }
    return fmt::format("user {} (uid {}, gid {}, no supplementary groups), ", user->name, user->uid,
                       user->gid);
}

std::string describe_namespaces(const SandboxPlan& plan, bool pid_namespace) {
    std::vector<std::string> names;
    if (pid_namespace) {
        names.emplace_back("PID");
    }
    if (plan.namespaces.ipc) {
        names.emplace_back("IPC");
    }
    if (plan.namespaces.network) {
        names.emplace_back("network");
    }
    return names.empty() ? "" : fmt::format("new {} namespaces, ", fmt::join(names, "+"));
}

std::string describe_limits(const ResourceLimits& limits) {
    std::string text = "rlimits (";
    if (limits.processes) {
        text += *limits.processes == 0 ? "no new processes, "
                                       : fmt::format("{} tasks, ", *limits.processes);
    }
    if (limits.open_files) {
        text += fmt::format("{} descriptors, ", *limits.open_files);
    }
    if (limits.data_bytes) {
        text += fmt::format("{} MiB data, ", *limits.data_bytes / mebibyte);
    }
    return text + "no core file), ";
}

std::string describe_plan(const SandboxPlan& plan, bool pid_namespace) {
    std::string text = describe_user(plan.user);
    if (plan.root) {
        text += fmt::format("chroot {}, ", plan.root->string());
    }
    text += describe_namespaces(plan, pid_namespace);
    text += describe_limits(plan.limits);
    text += "not dumpable, no new privileges";
    if (plan.seccomp) {
        text += fmt::format(", seccomp {} filter ({})", to_string(*plan.seccomp),
                            plan.seccomp_mode == SeccompMode::enforce ? "enforce" : "log");
    }
    return text;
}

}  // namespace

bool uses_pkcs11_keys(const Config& config) {
    return std::any_of(config.keys.begin(), config.keys.end(),
                       [](const KeyConfig& key) { return key.in_token(); });
}

SandboxLayers decide_sandbox_layers(const Config& config, SandboxChecks checks) {
    SandboxLayers layers;
    layers.key_role = uses_pkcs11_keys(config) ? SeccompRole::key_pkcs11 : SeccompRole::key_memory;
    if (::geteuid() == 0) {
        decide_users(config, layers);
        decide_root(config, checks, layers);
        decide_chroots(layers);
    } else {
        layers.inactive.push_back(fmt::format(
            "user switch and chroot: cloister runs as uid {}, and only root can switch users "
            "and chroot",
            ::geteuid()));
    }
    decide_seccomp(config, layers);
    decide_namespaces(config, checks, layers);
    decide_connection_uids(config, layers);
    check_root_against_range(config, layers);
    decide_connection_network(config, checks, layers);
    return layers;
}

unsigned key_process_workers(const KeyProcessConfig& config) {
    return config.workers != 0 ? config.workers : std::max(1U, std::thread::hardware_concurrency());
}

SandboxPlan connection_sandbox_plan(const SandboxLayers& layers) {
    SandboxPlan plan;
    plan.namespaces.ipc = layers.ipc_namespace;
    plan.namespaces.join_network = layers.connection_network_fd;
    if (layers.connection_chroot) {
        plan.root = layers.root;
    }
    plan.limits = connection_process_limits();
    plan.user = layers.network_user;
    if (layers.seccomp) {
        plan.seccomp = layers.connection_network_none ? SeccompRole::connection_no_network
                                                      : SeccompRole::connection;
        plan.seccomp_mode = *layers.seccomp;
    }
    return plan;
}

void assign_connection_uid(SandboxPlan& plan, uid_t id) {
    plan.user = SandboxUser{id, id, fmt::format("connection-uid-{}", id)};
}

SandboxPlan key_sandbox_plan(const SandboxLayers& layers, unsigned workers) {
    SandboxPlan plan;
    plan.namespaces.ipc = layers.ipc_namespace;
    plan.namespaces.network = layers.network_namespace;
    if (layers.key_chroot) {
        plan.root = layers.root;
    }
    plan.limits = key_process_limits(workers);
    if (!layers.key_user) {
        // RLIMIT_NPROC counts every process of the real user, which without a key user of its
        // own includes the supervisor and the connection processes.
        plan.limits.processes.reset();
    }
    plan.user = layers.key_user;
    if (layers.seccomp) {
        plan.seccomp = layers.key_role;
        plan.seccomp_mode = *layers.seccomp;
    }
    return plan;
}

void log_sandbox_layers(const SandboxLayers& layers, const Config& config) {
    SandboxPlan connection_plan = connection_sandbox_plan(layers);
    std::string connection_users;
    if (layers.connection_uids) {
        connection_plan.user.reset();
        connection_users =
            fmt::format("one uid per process from {} (gid the same, no supplementary groups), ",
                        layers.connection_uids->to_string());
    }
    spdlog::info("sandbox: connection processes: {}{}{}", connection_users,
                 layers.connection_network_none
                     ? "shared empty network namespace (backends connected by the supervisor), "
                     : "",
                 describe_plan(connection_plan, layers.pid_namespace));
    const unsigned workers = key_process_workers(config.key_process);
    spdlog::info("sandbox: key process: {}",
                 describe_plan(key_sandbox_plan(layers, workers), layers.pid_namespace));
    for (const std::string& reason : layers.inactive) {
        spdlog::warn("sandbox: layer off: {}", reason);
    }
}

std::function<void()> key_process_confinement(const Config& config) {
    return [&config] {
        // A root directory removed since the supervisor's start is created again, so that a
        // restarted key process never runs without its chroot.
        const SandboxLayers layers =
            decide_sandbox_layers(config, SandboxChecks{.create_root = true});
        set_sigsys_report_label("key process");
        apply_sandbox(key_sandbox_plan(layers, key_process_workers(config.key_process)));
    };
}

}  // namespace cloister
