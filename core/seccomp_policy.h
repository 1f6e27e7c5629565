// The seccomp-bpf allow-lists of the sandboxed process roles. Every table is in
// seccomp_policy.cpp, with the reason beside each entry that is not plain I/O or memory.
#pragma once

#include <string_view>

namespace cloister {

enum class SeccompRole {
    connection,  // one TLS connection: handshake, key channel, backend connect, proxy loop
    // The same without socket and connect: the supervisor connects the backend
    // (connection-network = "none").
    connection_no_network,
    key_memory,  // key process with keys in memory: worker threads and key channels only
    key_pkcs11,  // key process with a PKCS#11 module: key_memory plus what a module needs
};

enum class SeccompMode {
    enforce,  // a syscall outside the list kills the whole process with SIGSYS
    log,      // a syscall outside the list is allowed and logged by the kernel (audit or dmesg)
};

// Installs the filter of role on every thread of the process (SECCOMP_FILTER_FLAG_TSYNC) and on
// threads created later. Sets PR_SET_NO_NEW_PRIVS, as the kernel requires of an unprivileged
// caller. Call it last, after every other sandbox step. Throws Error(system) with errno on
// failure.
//
// In enforce mode a forbidden call traps (SECCOMP_RET_TRAP) instead of killing at once, so that
// the SIGSYS handler of core/sandbox_sigsys.h can name the call before the process dies of
// SIGSYS. The call itself never runs.
void install_seccomp(SeccompRole role, SeccompMode mode);

// The role's name for log lines: "connection", "connection-no-network", "key-memory",
// "key-pkcs11".
std::string_view to_string(SeccompRole role) noexcept;

}  // namespace cloister
