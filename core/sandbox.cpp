#include "core/sandbox.h"

#include <grp.h>
#include <pwd.h>
#include <sched.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"

namespace cloister {
namespace {

// AddressSanitizer maps terabytes of shadow memory that RLIMIT_DATA counts, so a data limit
// would make every later allocation fail.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool address_sanitizer_build = true;
#else
constexpr bool address_sanitizer_build = false;
#endif

constexpr rlim_t mebibyte = rlim_t{1024} * 1024;

std::string describe(const SandboxUser& user) {
    return "'" + user.name + "' (uid " + std::to_string(user.uid) + ", gid " +
           std::to_string(user.gid) + ")";
}

// Returns the buffer size getpwnam_r needs at first; ERANGE doubles it.
std::size_t initial_passwd_buffer_size() {
    const long suggested = ::sysconf(_SC_GETPW_R_SIZE_MAX);
    return suggested > 0 ? static_cast<std::size_t>(suggested) : 16384;
}

void check_user_unprivileged(const SandboxUser& user, const char* role) {
    if (user.uid == 0 || user.gid == 0) {
        throw Error(ErrorKind::config, std::string(role) + " user " + describe(user) +
                                           " is root or in group root: choose an "
                                           "unprivileged system user for it");
    }
}

// Returns true when the host forbids a namespace rather than the call failing for another
// reason: EPERM (no CAP_SYS_ADMIN, or a container), EINVAL (kernel built without it), ENOSPC
// (the namespace count limit is 0) and ENOSYS.
bool namespace_forbidden(int error_number) {
    return error_number == EPERM || error_number == EINVAL || error_number == ENOSPC ||
           error_number == ENOSYS;
}

// Enters one namespace; returns false, with the reason in result, when the host forbids it.
bool unshare_one(int flag, const char* name, NamespaceResult& result) {
    if (::unshare(flag) == 0) {
        return true;
    }
    const int saved = errno;
    if (!namespace_forbidden(saved)) {
        throw_system_error(std::string("unshare of the ") + name + " namespace");
    }
    result.unsupported.push_back(std::string(name) + ": " + std::strerror(saved));
    return false;
}

void set_one_limit(int resource, const char* name, std::optional<rlim_t> value) {
    if (!value) {
        return;
    }
    const rlimit limit{*value, *value};
    if (::setrlimit(resource, &limit) != 0) {
        throw_system_error(std::string("setrlimit ") + name + " to " + std::to_string(*value));
    }
}

// Checks that every real, effective and saved id is the target.
void verify_ids(const SandboxUser& user) {
    uid_t ruid = 0;
    uid_t euid = 0;
    uid_t suid = 0;
    gid_t rgid = 0;
    gid_t egid = 0;
    gid_t sgid = 0;
    if (::getresuid(&ruid, &euid, &suid) != 0 || ::getresgid(&rgid, &egid, &sgid) != 0) {
        throw_system_error("getresuid after dropping privileges to " + user.name);
    }
    if (ruid != user.uid || euid != user.uid || suid != user.uid || rgid != user.gid ||
        egid != user.gid || sgid != user.gid) {
        throw Error(ErrorKind::system, "user or group ids did not all change to " + describe(user));
    }
}

// Checks that root cannot be regained. A successful setuid(0) means the process is root again,
// so the caller must exit at once.
void verify_root_lost(const SandboxUser& user) {
    if (::setuid(0) == 0 || ::seteuid(0) == 0) {
        throw Error(ErrorKind::system, "setuid(0) succeeded after dropping privileges to " +
                                           user.name + ": refusing to continue");
    }
    if (::setgid(0) == 0 || ::setegid(0) == 0) {
        throw Error(ErrorKind::system, "setgid(0) succeeded after dropping privileges to " +
                                           user.name + ": refusing to continue");
    }
}

std::string empty_root_fix(const std::filesystem::path& dir) {
    return ": run 'install -d -o root -g root -m 0755 " + dir.string() + "' and keep it empty";
}

void check_root_mode(const std::filesystem::path& dir, const struct stat& status,
                     std::span<const SandboxUser> users) {
    if ((status.st_mode & S_IWOTH) != 0) {
        throw Error(ErrorKind::config, "chroot directory " + dir.string() +
                                           " is writable by others" + empty_root_fix(dir));
    }
    if ((status.st_mode & S_IWGRP) == 0) {
        return;
    }
    for (const SandboxUser& user : users) {
        if (user.gid == status.st_gid) {
            throw Error(ErrorKind::config, "chroot directory " + dir.string() +
                                               " is group-writable by the group of user " +
                                               describe(user) + empty_root_fix(dir));
        }
    }
}

}  // namespace

SandboxUser lookup_user(const std::string& name) {
    std::vector<char> buffer(initial_passwd_buffer_size());
    passwd entry{};
    passwd* found = nullptr;
    int result = 0;
    while ((result = ::getpwnam_r(name.c_str(), &entry, buffer.data(), buffer.size(), &found)) ==
           ERANGE) {
        buffer.resize(buffer.size() * 2);
    }
    if (result != 0) {
        errno = result;
        throw_system_error("looking up user '" + name + "'");
    }
    if (found == nullptr) {
        throw Error(ErrorKind::config, "user '" + name +
                                           "' not found: create it with 'useradd --system " +
                                           "--no-create-home --shell /usr/sbin/nologin " + name +
                                           "' or name an existing unprivileged user");
    }
    return {entry.pw_uid, entry.pw_gid, name};
}

void check_users(const SandboxUser& network, const SandboxUser& key) {
    check_user_unprivileged(network, "network");
    check_user_unprivileged(key, "key");
    if (network.uid == key.uid) {
        throw Error(ErrorKind::config, "network user " + describe(network) + " and key user " +
                                           describe(key) +
                                           " have the same uid: a connection process could "
                                           "then ptrace the key process; use two users");
    }
}

void check_empty_root(const std::filesystem::path& dir, std::span<const SandboxUser> users) {
    struct stat status {};
    if (::stat(dir.c_str(), &status) != 0) {
        const int saved = errno;
        throw Error(ErrorKind::config, "chroot directory " + dir.string() + " is not usable (" +
                                           std::strerror(saved) + ")" + empty_root_fix(dir));
    }
    if (!S_ISDIR(status.st_mode)) {
        throw Error(ErrorKind::config, "chroot directory " + dir.string() + " is not a directory" +
                                           empty_root_fix(dir));
    }
    if (status.st_uid != 0) {
        throw Error(ErrorKind::config, "chroot directory " + dir.string() + " is owned by uid " +
                                           std::to_string(status.st_uid) + ", not root" +
                                           empty_root_fix(dir));
    }
    check_root_mode(dir, status, users);
    std::error_code error;
    const std::filesystem::directory_iterator entries(dir, error);
    if (error) {
        throw Error(ErrorKind::config, "chroot directory " + dir.string() + " cannot be listed (" +
                                           error.message() + ")");
    }
    if (entries != std::filesystem::directory_iterator()) {
        throw Error(ErrorKind::config, "chroot directory " + dir.string() + " is not empty (" +
                                           entries->path().filename().string() + ")" +
                                           empty_root_fix(dir));
    }
}

NamespaceResult enter_namespaces(const NamespaceRequest& request) {
    NamespaceResult result;
    if (request.ipc) {
        result.ipc = unshare_one(CLONE_NEWIPC, "IPC", result);
    }
    if (request.network) {
        result.network = unshare_one(CLONE_NEWNET, "network", result);
    }
    if (request.join_network >= 0) {
        if (::setns(request.join_network, CLONE_NEWNET) != 0) {
            throw_system_error("setns into the empty network namespace of connection processes");
        }
        result.network = true;
    }
    return result;
}

void enter_chroot(const std::filesystem::path& dir) {
    // Step 1: change into the directory while the path still resolves on the host.
    if (::chdir(dir.c_str()) != 0) {
        throw_system_error("chdir to chroot directory " + dir.string());
    }
    // Step 2: make it the root. The working directory is already inside it, so no descriptor
    // or path leads back out.
    if (::chroot(".") != 0) {
        throw_system_error("chroot to " + dir.string());
    }
    // Step 3: settle at the new root.
    if (::chdir("/") != 0) {
        throw_system_error("chdir to / in chroot " + dir.string());
    }
}

ResourceLimits connection_process_limits() {
    ResourceLimits limits;
    limits.processes = 0;
    limits.open_files = 64;
    if (!address_sanitizer_build) {
        limits.data_bytes = 256 * mebibyte;
    }
    return limits;
}

ResourceLimits key_process_limits(unsigned threads) {
    ResourceLimits limits;
    // Per key process: the main thread, the workers, and one spare for a thread that is
    // exiting.
    limits.processes = max_key_processes * (rlim_t{threads} + 2);
    limits.open_files = 1024;
    if (!address_sanitizer_build) {
        limits.data_bytes = 1024 * mebibyte;
    }
    return limits;
}

void set_resource_limits(const ResourceLimits& limits) {
    set_one_limit(RLIMIT_NPROC, "RLIMIT_NPROC", limits.processes);
    set_one_limit(RLIMIT_NOFILE, "RLIMIT_NOFILE", limits.open_files);
    set_one_limit(RLIMIT_DATA, "RLIMIT_DATA", limits.data_bytes);
    set_one_limit(RLIMIT_CORE, "RLIMIT_CORE", limits.core_bytes);
}

void drop_privileges(const SandboxUser& user) {
    // Step 1: supplementary groups first, while the process still has CAP_SETGID.
    if (::setgroups(0, nullptr) != 0) {
        throw_system_error("setgroups(0) before switching to " + user.name);
    }
    // Step 2: the group before the user, since setresgid needs the privilege setresuid drops.
    if (::setresgid(user.gid, user.gid, user.gid) != 0) {
        throw_system_error("setresgid to gid " + std::to_string(user.gid) + " of " + user.name);
    }
    if (::setresuid(user.uid, user.uid, user.uid) != 0) {
        throw_system_error("setresuid to uid " + std::to_string(user.uid) + " of " + user.name);
    }
    // Step 3: prove it.
    verify_ids(user);
    verify_root_lost(user);
}

void set_no_dump() {
    if (::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
        throw_system_error("prctl PR_SET_DUMPABLE 0");
    }
}

void set_no_new_privs() {
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        throw_system_error("prctl PR_SET_NO_NEW_PRIVS 1");
    }
}

void precompile_seccomp(SandboxPlan& plan) {
    plan.seccomp_program.reset();
    if (plan.seccomp) {
        plan.seccomp_program =
            std::make_shared<const SeccompProgram>(*plan.seccomp, plan.seccomp_mode);
    }
}

NamespaceResult apply_sandbox(const SandboxPlan& plan) {
    NamespaceResult namespaces = enter_namespaces(plan.namespaces);
    if (plan.root) {
        enter_chroot(*plan.root);
    }
    set_resource_limits(plan.limits);
    if (plan.user) {
        drop_privileges(*plan.user);
    }
    set_no_dump();
    set_no_new_privs();
    for (const std::string& reason : namespaces.unsupported) {
        spdlog::warn("sandbox: namespace not entered, the host forbids it: {}", reason);
    }
    if (plan.seccomp) {
        if (plan.seccomp_program) {
            if (plan.seccomp_program->role() != *plan.seccomp ||
                plan.seccomp_program->mode() != plan.seccomp_mode) {
                throw Error(ErrorKind::system, "the precompiled seccomp filter is not the plan's " +
                                                   std::string(to_string(*plan.seccomp)) +
                                                   " filter");
            }
            plan.seccomp_program->install();
        } else {
            install_seccomp(*plan.seccomp, plan.seccomp_mode);
        }
    }
    spdlog::debug("sandbox: in place (chroot {}, user {}, seccomp {}{})",
                  plan.root ? plan.root->string() : "none",
                  plan.user ? plan.user->name : "unchanged",
                  plan.seccomp ? to_string(*plan.seccomp) : "none",
                  plan.seccomp_mode == SeccompMode::log ? ", log mode" : "");
    return namespaces;
}

namespace {

// True when the "Uid:" or "Gid:" line of a /proc/PID/status text lists id among its four
// values (real, effective, saved, file system).
bool status_lists_id(std::istream& status, uid_t id) {
    std::string line;
    while (std::getline(status, line)) {
        if (!line.starts_with("Uid:") && !line.starts_with("Gid:")) {
            continue;
        }
        std::istringstream values(line.substr(4));
        std::uint64_t value = 0;
        while (values >> value) {
            if (value == id) {
                return true;
            }
        }
    }
    return false;
}

bool is_pid_name(const std::string& name) {
    pid_t pid = 0;
    const char* end = name.data() + name.size();
    const auto [stop, error] = std::from_chars(name.data(), end, pid);
    return !name.empty() && error == std::errc() && stop == end;
}

}  // namespace

std::vector<pid_t> find_processes_with_id(uid_t id) {
    std::error_code error;
    std::filesystem::directory_iterator entries("/proc", error);
    if (error) {
        errno = error.value();
        throw_system_error("listing /proc");
    }
    std::vector<pid_t> found;
    for (; entries != std::filesystem::directory_iterator(); entries.increment(error)) {
        if (error) {
            errno = error.value();
            throw_system_error("listing /proc");
        }
        const std::string name = entries->path().filename().string();
        if (!is_pid_name(name)) {
            continue;
        }
        std::ifstream status(entries->path() / "status");
        if (status && status_lists_id(status, id)) {
            found.push_back(static_cast<pid_t>(std::stoi(name)));
        }
    }
    return found;
}

}  // namespace cloister
