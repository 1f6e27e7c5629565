// The seccomp-bpf allow-lists of the sandboxed process roles. Every table is in
// seccomp_policy.cpp, with the reason beside each entry that is not plain I/O or memory.
#pragma once

#include <linux/filter.h>

#include <cstddef>
#include <string_view>
#include <vector>

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

// The filter of one role and mode compiled to a BPF program, ready to load. libseccomp builds
// the filter in about as much CPU time as a fork takes, so the supervisor compiles the
// connection filter once and each forked connection process only installs the program.
class SeccompProgram {
  public:
    // Builds the filter with libseccomp and exports the BPF program. The table's checks on the
    // process's own id (tgkill) hold a placeholder until install(). Throws Error(system).
    SeccompProgram(SeccompRole role, SeccompMode mode);

    // Does what install_seccomp does, with this program: in enforce mode the SIGSYS reporter,
    // then PR_SET_NO_NEW_PRIVS and the seccomp syscall with SECCOMP_FILTER_FLAG_TSYNC, as
    // libseccomp's seccomp_load does. The checks on the own process id name getpid() of the
    // caller. Throws Error(system) with errno on failure.
    void install() const;

    [[nodiscard]] SeccompRole role() const noexcept { return role_; }
    [[nodiscard]] SeccompMode mode() const noexcept { return mode_; }
    // The number of BPF instructions.
    [[nodiscard]] std::size_t size() const noexcept { return program_.size(); }

  private:
    SeccompRole role_;
    SeccompMode mode_;
    std::vector<sock_filter> program_;
    // The instructions whose constant is the process's own id.
    std::vector<std::size_t> self_slots_;
};

// The role's name for log lines: "connection", "connection-no-network", "key-memory",
// "key-pkcs11".
std::string_view to_string(SeccompRole role) noexcept;

}  // namespace cloister
