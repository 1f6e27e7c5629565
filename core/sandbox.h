// Process confinement for the key process and connection processes: own user, empty chroot,
// resource limits, no core dumps, no new privileges, optional namespaces, and the seccomp
// filter of core/seccomp_policy.h. Linux only.
//
// A child calls the steps in this order, as root, after everything it needs from the file
// system is loaded (certificates, keys, PKCS#11 module, locale, time zone):
//   enter_namespaces, enter_chroot, set_resource_limits, drop_privileges, set_no_dump,
//   set_no_new_privs, install_seccomp.
// apply_sandbox() runs them all in that order. Each step throws Error(system) with errno on
// failure; the caller must then exit, because the process is half-confined.
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/seccomp_policy.h"

namespace cloister {

// A system account that a sandboxed process runs as.
struct SandboxUser {
    uid_t uid = 0;
    gid_t gid = 0;  // the primary group; supplementary groups are always dropped
    std::string name;
};

// Looks up name in the user database (getpwnam_r). Throws Error(config) when the user does not
// exist, and Error(system) when the lookup itself fails. Call before entering a chroot, since
// the lookup may read /etc/passwd or load NSS modules.
SandboxUser lookup_user(const std::string& name);

// Checks that both users are unprivileged (uid and gid not 0) and distinct (different uids),
// so that a connection process can neither signal nor ptrace the key process. Throws
// Error(config) naming the users.
void check_users(const SandboxUser& network, const SandboxUser& key);

// Checks that dir exists, is a directory owned by root, is empty, and cannot be written by any
// of users. So it must have no write bit for others, and no group write bit when its group is
// the primary group of one of users. Throws Error(config) naming the reason and the fix.
// NOTE: the parent directories are not checked; a user who can rename a parent can swap the
// directory between this check and enter_chroot().
void check_empty_root(const std::filesystem::path& dir, std::span<const SandboxUser> users);

// Namespaces a process may leave the host's for; a bit set of CLONE_NEWIPC and CLONE_NEWNET.
// A new network namespace has only a loopback interface that is down, so a process in it
// reaches no backend: request it only when every socket the process needs is open already.
struct NamespaceRequest {
    bool ipc = false;
    bool network = false;
    // setns() into this network namespace, such as the shared empty one of
    // create_empty_network_namespace() (core/sandbox_spawn.h); -1 for none. A socket stays in
    // the namespace it was created in, so inherited listeners keep working.
    int join_network = -1;
};

struct NamespaceResult {
    bool ipc = false;      // true: the process is in a new IPC namespace
    bool network = false;  // true: the process is in a new network namespace
    // The namespaces requested but not entered because the host forbids them (EPERM, EINVAL,
    // ENOSPC or ENOSYS from unshare), for example "network: Operation not permitted".
    std::vector<std::string> unsupported;
};

// Leaves the host's IPC and network namespaces as requested. A namespace the host forbids is
// reported in the result instead of thrown; any other failure throws Error(system), as does a
// failed join_network, which the caller asked for explicitly.
NamespaceResult enter_namespaces(const NamespaceRequest& request);

// Makes dir the root and the working directory (chdir, chroot, chdir "/"). Needs
// CAP_SYS_CHROOT, so it runs before drop_privileges().
void enter_chroot(const std::filesystem::path& dir);

// Resource limits of one process role. Each value is both the soft and the hard limit, so the
// process cannot raise it again. nullopt leaves the inherited limit unchanged.
struct ResourceLimits {
    // RLIMIT_NPROC: processes and threads of the real user. Not enforced while the process is
    // root, so it takes effect at drop_privileges().
    std::optional<rlim_t> processes;
    // RLIMIT_NOFILE: one more than the highest descriptor number a new descriptor may take.
    // Descriptors already open above it stay open.
    std::optional<rlim_t> open_files;
    // RLIMIT_DATA, in bytes: private writable memory (heap, anonymous mappings, thread stacks).
    std::optional<rlim_t> data_bytes;
    // RLIMIT_CORE, in bytes: 0 means no core file.
    std::optional<rlim_t> core_bytes = 0;
};

// Limits for a connection process: no new process or thread, 64 descriptors, 256 MiB of data.
// NOTE: the data limit is an estimate for one TLS connection with 16 KiB buffers plus the
// inherited heap of the supervisor. It is left unset in AddressSanitizer builds, because their
// shadow memory counts as data.
ResourceLimits connection_process_limits();

// The maximum number of older generations that may still serve connections after reloads,
// each with its own key process. The supervisor rejects a reload beyond it.
inline constexpr unsigned max_draining_generations = 8;

// The key processes of one daemon that may run at once, all as the key user: the current one,
// one per draining generation, and the temporary one of a --check-config run.
inline constexpr unsigned max_key_processes = max_draining_generations + 2;

// Limits for the key process with threads worker threads: 1024 descriptors, 1 GiB of data,
// and room for max_key_processes key processes of that size.
// NOTE: RLIMIT_NPROC counts every process of the key user, so the key user must run nothing
// else, and two daemons need two key users. An older generation with more worker threads
// than this one takes more of the room. The data limit is an estimate, and it is left unset
// in AddressSanitizer builds.
ResourceLimits key_process_limits(unsigned threads);

// Applies limits with setrlimit. Throws Error(system) naming the limit that failed.
void set_resource_limits(const ResourceLimits& limits);

// Switches to user for good: setgroups(0), setresgid, setresuid, then checks that the saved
// and effective ids changed and that setuid(0) and setgid(0) now fail. Throws Error(system) if
// a call fails or if root can be regained.
void drop_privileges(const SandboxUser& user);

// Marks the process not dumpable (PR_SET_DUMPABLE 0): no core file, and /proc/PID entries owned
// by root, so processes of the same user cannot ptrace it or read its memory.
void set_no_dump();

// Sets PR_SET_NO_NEW_PRIVS, so that no later execve can gain privileges (set-user-ID, file
// capabilities). Also lets an unprivileged process install a seccomp filter.
void set_no_new_privs();

// Returns the processes visible in /proc (this PID namespace and those below it) that have id
// as real, effective, saved or file-system uid or gid. A process that exits during the scan
// is left out. Throws Error(system) when /proc cannot be listed.
std::vector<pid_t> find_processes_with_id(uid_t id);

// Everything one process role applies, in the order of the step functions above.
struct SandboxPlan {
    NamespaceRequest namespaces;
    std::optional<std::filesystem::path> root;  // nullopt: no chroot
    ResourceLimits limits;
    std::optional<SandboxUser> user;  // nullopt: keep the current ids (tests, unprivileged runs)
    std::optional<SeccompRole> seccomp;
    SeccompMode seccomp_mode = SeccompMode::enforce;
    // The filter of seccomp and seccomp_mode compiled by precompile_seccomp; nullptr: the
    // process compiles it in apply_sandbox.
    std::shared_ptr<const SeccompProgram> seccomp_program;
};

// Compiles plan's seccomp filter into plan.seccomp_program, so that forked processes that
// apply plan only install it. Does nothing when plan has no seccomp role.
void precompile_seccomp(SandboxPlan& plan);

// Runs every step of plan in order and logs one line naming the role's layers, with the
// namespaces the host forbade. Throws Error(system) from the first step that fails.
NamespaceResult apply_sandbox(const SandboxPlan& plan);

}  // namespace cloister
