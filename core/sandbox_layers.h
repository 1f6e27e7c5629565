// The sandbox of the running daemon: which layers the config and the host allow, decided once
// by the supervisor at start, and the plan each process role applies with apply_sandbox()
// (core/sandbox.h). docs/sandboxing.md describes the layers, docs/threat-model.md what each
// one stops.
#pragma once

#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/sandbox.h"
#include "core/seccomp_policy.h"
#include "core/uid_pool.h"

namespace cloister {

struct SandboxLayers {
    // The users of the two roles; unset when the daemon does not run as root.
    std::optional<SandboxUser> network_user;
    std::optional<SandboxUser> key_user;
    std::optional<std::filesystem::path> root;  // the empty root directory; unset likewise
    bool connection_chroot = false;
    bool key_chroot = false;             // false also for PKCS#11 keys
    std::optional<SeccompMode> seccomp;  // unset for seccomp = "off"
    SeccompRole key_role = SeccompRole::key_memory;
    bool pid_namespace = false;      // children start as PID 1 of a new PID namespace
    bool ipc_namespace = false;      // children leave the host's IPC namespace
    bool network_namespace = false;  // the key process leaves the host's network namespace
    // Set: each connection process runs as an id of its own from this range instead of as
    // network_user (assign_connection_uid).
    std::optional<UidRange> connection_uids;
    // Connection processes join one shared empty network namespace (connection-network =
    // "none"), whose descriptor the supervisor sets in connection_network_fd once it exists.
    bool connection_network_none = false;
    int connection_network_fd = -1;
    // One line per layer that is off, with the reason, such as "user switch and chroot: ...".
    std::vector<std::string> inactive;
};

// The side effects that decide_sandbox_layers may have on the host.
struct SandboxChecks {
    bool create_root = false;      // create the root directory (mode 0755, owned by root)
    bool test_namespaces = false;  // start a test child (probe_namespaces); otherwise assume
                                   // that every namespace the config requests works
};

// Decides the layers of config on this host. As root it looks up both users (lookup_user),
// checks them (check_users), creates the root directory when checks.create_root allows it and
// the directory is missing, and checks it (check_empty_root). Throws Error(config) naming the
// [sandbox] key, the problem and the fix. Not as root, the users and the chroot are off and
// listed in inactive. A connection-uids range needs root, PID namespaces and an enforcing
// seccomp filter. It must not contain the id of any user or group in the user database or of
// a subordinate id entry. Each of these is an Error(config) rather than a layer left off.
SandboxLayers decide_sandbox_layers(const Config& config, SandboxChecks checks);

// True when a [[key]] names a PKCS#11 object instead of a file.
bool uses_pkcs11_keys(const Config& config);

// The plan of a connection process. With connection_uids set, the caller must still give
// each child its own id with assign_connection_uid.
SandboxPlan connection_sandbox_plan(const SandboxLayers& layers);

// Makes plan run as uid id and gid id, with no supplementary groups.
void assign_connection_uid(SandboxPlan& plan, uid_t id);

// The plan of the key process with workers worker threads.
SandboxPlan key_sandbox_plan(const SandboxLayers& layers, unsigned workers);

// The number of worker threads the key process starts for the configured count (0: one per
// online CPU), as its RLIMIT_NPROC must leave room for them.
unsigned key_process_workers(const KeyProcessConfig& config);

// Logs one line per role with the layers it gets, and one warning per layer that is off.
void log_sandbox_layers(const SandboxLayers& layers, const Config& config);

// Returns the before_serving step of run_key_process for the key process of config: it
// decides the layers again in the key process (without test children, since a fork there would
// copy its keys, and creating a missing root directory), then applies the key plan. The
// supervisor has checked the same layers at start, so a failure here is a change on the host
// in between.
std::function<void()> key_process_confinement(const Config& config);

}  // namespace cloister
