#include "core/seccomp_policy.h"

#include <fcntl.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/fd.h"
#include "core/sandbox_sigsys.h"

namespace cloister {
namespace {

// One filter entry: the syscall, what happens when it matches, and the argument checks that
// must all hold for it to match. A syscall with several entries matches if any entry does.
struct Rule {
    int syscall = 0;
    std::uint32_t action = SCMP_ACT_ALLOW;
    std::vector<scmp_arg_cmp> checks;
};

Rule allow(int syscall) {
    return {syscall, SCMP_ACT_ALLOW, {}};
}

Rule allow_if(int syscall, std::vector<scmp_arg_cmp> checks) {
    return {syscall, SCMP_ACT_ALLOW, std::move(checks)};
}

Rule fail_with(int syscall, int error_number) {
    return {syscall, SCMP_ACT_ERRNO(static_cast<std::uint32_t>(error_number)), {}};
}

// Argument index equals value. Compares the low 32 bits only, as the kernel reads these
// arguments as int.
scmp_arg_cmp arg_is(unsigned index, std::uint64_t value) {
    return {index, SCMP_CMP_MASKED_EQ, 0xffffffffU, value};
}

// Argument index with mask applied equals value.
scmp_arg_cmp arg_masked_is(unsigned index, std::uint64_t mask, std::uint64_t value) {
    return {index, SCMP_CMP_MASKED_EQ, mask, value};
}

constexpr std::uint64_t socket_type_flags = SOCK_NONBLOCK | SOCK_CLOEXEC;
constexpr std::uint64_t socket_type_mask = 0xffffffffU & ~socket_type_flags;

// socket(domain, SOCK_STREAM with any of SOCK_NONBLOCK and SOCK_CLOEXEC, any protocol).
Rule allow_stream_socket(int domain) {
    return allow_if(SCMP_SYS(socket), {arg_is(0, static_cast<std::uint64_t>(domain)),
                                       arg_masked_is(1, socket_type_mask, SOCK_STREAM)});
}

// The memory calls every role needs. mmap and mprotect must not ask for PROT_EXEC: no code is
// loaded after the sandbox is in place, so an executable mapping could only serve an exploit.
std::vector<Rule> memory_rules() {
    return {
        allow(SCMP_SYS(brk)),
        allow_if(SCMP_SYS(mmap), {arg_masked_is(2, PROT_EXEC, 0)}),
        allow_if(SCMP_SYS(mprotect), {arg_masked_is(2, PROT_EXEC, 0)}),
        allow(SCMP_SYS(munmap)),
        allow(SCMP_SYS(mremap)),   // glibc realloc of a chunk it allocated with mmap
        allow(SCMP_SYS(madvise)),  // glibc free returning pages (MADV_DONTNEED)
    };
}

// fcntl commands for descriptor flags and O_NONBLOCK; no locks, no F_DUPFD, no F_SETOWN.
std::vector<Rule> fcntl_rules() {
    return {
        allow_if(SCMP_SYS(fcntl), {arg_is(1, F_GETFL)}),
        allow_if(SCMP_SYS(fcntl), {arg_is(1, F_SETFL)}),
        allow_if(SCMP_SYS(fcntl), {arg_is(1, F_GETFD)}),
        allow_if(SCMP_SYS(fcntl), {arg_is(1, F_SETFD)}),
    };
}

void append(std::vector<Rule>& to, std::vector<Rule> from) {
    to.insert(to.end(), std::make_move_iterator(from.begin()), std::make_move_iterator(from.end()));
}

// Connection process. The handshake entries were measured with strace in a forked child that
// ran a full server handshake (OpenSSL 3.0.22 with TLS 1.3 and 1.2, Botan 2.19.3 with TLS
// 1.2, RSA and ECDSA keys), a TCP connect to 127.0.0.1 and an exit. The entries for accept,
// the key channel and the proxy loop come from reading the code that makes those calls.
//
// 1. Architecture: libseccomp checks the audit architecture first and applies the bad-arch
//    action (kill process) to any other ABI, 32-bit int 0x80 and x32 calls included.
// With network = false (connection-network = "none") the table has no socket or connect: the
// supervisor hands the backend socket in, and the process's network namespace is empty anyway.
std::vector<Rule> connection_table(pid_t self, bool network) {
    std::vector<Rule> rules{
        // 2. Denied with an errno.
        // clone3 passes its flags in memory, which seccomp cannot read. ENOSYS makes glibc
        // (2.34 and later) fall back to clone, which the default action kills.
        fail_with(SCMP_SYS(clone3), ENOSYS),

        // 3. Allowed.
        // Sockets already open: client, backend, key channel (SOCK_SEQPACKET), log.
        allow(SCMP_SYS(read)),
        allow(SCMP_SYS(write)),
        allow(SCMP_SYS(readv)),
        allow(SCMP_SYS(writev)),
        allow(SCMP_SYS(recvfrom)),  // recv()
        allow(SCMP_SYS(sendto)),    // send()
        allow(SCMP_SYS(recvmsg)),   // key channel
        allow(SCMP_SYS(sendmsg)),   // key channel
        allow(SCMP_SYS(shutdown)),  // half-close towards client or backend
        allow(SCMP_SYS(close)),
        allow(SCMP_SYS(accept)),      // a spare child takes its connection
        allow(SCMP_SYS(accept4)),     // the same, with SOCK_NONBLOCK and SOCK_CLOEXEC
        allow(SCMP_SYS(getsockopt)),  // SO_ERROR after a non-blocking connect
        allow(SCMP_SYS(setsockopt)),  // TCP_NODELAY, keepalive
        allow(SCMP_SYS(getsockname)),
        allow(SCMP_SYS(getpeername)),
        // Waiting, with the handshake and idle deadlines as timeouts.
        allow(SCMP_SYS(poll)),
        allow(SCMP_SYS(ppoll)),
        allow(SCMP_SYS(epoll_create1)),
        allow(SCMP_SYS(epoll_ctl)),
        allow(SCMP_SYS(epoll_wait)),
        allow(SCMP_SYS(epoll_pwait)),
        allow(SCMP_SYS(clock_gettime)),  // normally the vDSO; the syscall is its fallback
        allow(SCMP_SYS(gettimeofday)),   // the same
        allow(SCMP_SYS(clock_nanosleep)),
        allow(SCMP_SYS(nanosleep)),
        allow(SCMP_SYS(alarm)),  // the backstop of the handshake deadline (SIGALRM)
        // OpenSSL 3.0 reseeds its DRBG with getrandom when getpid shows a fork.
        allow(SCMP_SYS(getrandom)),
        allow(SCMP_SYS(getpid)),
        allow(SCMP_SYS(gettid)),  // spdlog's thread id
        allow(SCMP_SYS(futex)),   // glibc locks (stdio, malloc)
        allow(SCMP_SYS(sched_yield)),
        // Signals: SIGTERM handling for drain, and sigreturn from any handler.
        allow(SCMP_SYS(rt_sigaction)),
        allow(SCMP_SYS(rt_sigprocmask)),
        allow(SCMP_SYS(rt_sigreturn)),
        allow(SCMP_SYS(restart_syscall)),
        allow(SCMP_SYS(exit)),
        allow(SCMP_SYS(exit_group)),

        // 4. Allowed with argument checks.
        // abort() sends SIGABRT to itself with tgkill; no other process may be signalled.
        allow_if(SCMP_SYS(tgkill), {arg_is(0, static_cast<std::uint64_t>(self))}),
        // The process title ("cloister: connection 42"); no other prctl option.
        allow_if(SCMP_SYS(prctl), {arg_is(0, PR_SET_NAME)}),
    };
    if (network) {
        append(rules, {
                          // The backend, after the handshake.
                          allow(SCMP_SYS(connect)),
                          // The backend connection: TCP over IPv4 or IPv6. No raw, netlink,
                          // packet, datagram or Unix sockets: the supervisor connects Unix
                          // socket backends.
                          allow_stream_socket(AF_INET),
                          allow_stream_socket(AF_INET6),
                      });
    }
    append(rules, memory_rules());
    append(rules, fcntl_rules());
    // 5. Default: kill the process (SIGSYS), or log in SeccompMode::log. Among what falls
    // here: open, openat, execve, execveat, ptrace, process_vm_readv, process_vm_writev,
    // clone, fork, vfork, kill, socketpair, bind, listen, ioctl, mount, unshare, setns, and
    // socket and connect without network.
    return rules;
}

// Key process with keys in memory. Nothing here reaches the network or the file system: the
// keys are loaded and the worker count is known before the sandbox is installed.
//
// 1. Architecture: as for the connection table.
std::vector<Rule> key_memory_table(pid_t self) {
    std::vector<Rule> rules{
        // 2. Denied with an errno.
        // clone3 flags cannot be read (see the connection table); ENOSYS makes glibc's
        // pthread_create fall back to clone, which is checked below.
        fail_with(SCMP_SYS(clone3), ENOSYS),

        // 3. Allowed.
        // Key channels and the control channel: SOCK_SEQPACKET, descriptors in SCM_RIGHTS.
        allow(SCMP_SYS(read)),
        allow(SCMP_SYS(write)),
        allow(SCMP_SYS(readv)),
        allow(SCMP_SYS(writev)),
        allow(SCMP_SYS(recvfrom)),
        allow(SCMP_SYS(sendto)),
        allow(SCMP_SYS(recvmsg)),
        allow(SCMP_SYS(sendmsg)),
        allow(SCMP_SYS(shutdown)),
        allow(SCMP_SYS(close)),
        allow(SCMP_SYS(poll)),
        allow(SCMP_SYS(ppoll)),
        allow(SCMP_SYS(epoll_create1)),
        allow(SCMP_SYS(epoll_ctl)),
        allow(SCMP_SYS(epoll_wait)),
        allow(SCMP_SYS(epoll_pwait)),
        allow(SCMP_SYS(eventfd2)),  // waking worker threads
        // No timerfd_create or timerfd_settime: KeyServer arms the stats timer before this
        // filter is installed, and serving only reads it.
        allow(SCMP_SYS(clock_gettime)),
        allow(SCMP_SYS(gettimeofday)),
        allow(SCMP_SYS(clock_nanosleep)),
        allow(SCMP_SYS(nanosleep)),
        allow(SCMP_SYS(getrandom)),  // RSA blinding and ECDSA nonces
        allow(SCMP_SYS(getpid)),
        allow(SCMP_SYS(gettid)),
        // Worker threads: glibc thread start and exit, and their locks.
        allow(SCMP_SYS(futex)),
        allow(SCMP_SYS(set_robust_list)),
        allow(SCMP_SYS(rseq)),  // glibc 2.35 and later registers it in each new thread
        allow(SCMP_SYS(sched_yield)),
        allow(SCMP_SYS(sched_getaffinity)),
        allow(SCMP_SYS(rt_sigaction)),
        allow(SCMP_SYS(rt_sigprocmask)),
        allow(SCMP_SYS(rt_sigreturn)),
        allow(SCMP_SYS(restart_syscall)),
        allow(SCMP_SYS(exit)),  // a thread ends
        allow(SCMP_SYS(exit_group)),

        // 4. Allowed with argument checks.
        // New threads only: clone without CLONE_THREAD would create a process.
        allow_if(SCMP_SYS(clone), {arg_masked_is(0, CLONE_THREAD, CLONE_THREAD)}),
        allow_if(SCMP_SYS(tgkill), {arg_is(0, static_cast<std::uint64_t>(self))}),
        allow_if(SCMP_SYS(prctl), {arg_is(0, PR_SET_NAME)}),
        // An adopted descriptor must be a SOCK_SEQPACKET socket: getsockopt SO_TYPE only.
        allow_if(SCMP_SYS(getsockopt), {arg_is(1, SOL_SOCKET), arg_is(2, SO_TYPE)}),
    };
    append(rules, memory_rules());
    append(rules, fcntl_rules());
    // 5. Default: kill the process. Among what falls here: socket, connect, accept, open,
    // openat, execve, ptrace, process_vm_*, fork, vfork, clone of a process.
    return rules;
}

// Key process with a PKCS#11 module: the key_memory table plus what a module needs after
// login, measured with strace around C_SignInit and C_Sign (ECDSA) of SoftHSM 2.6.1 with the
// file object store. Each C_SignInit opens the token's "generation" file and the key's object
// file read-only. It takes and releases a read lock on each, then stats and reads them. When
// the files are unreachable, C_SignInit fails with CKR_OBJECT_HANDLE_INVALID and SoftHSM
// reports it with syslog(3).
// NOTE: so SoftHSM cannot sign inside an empty chroot: its token directory must be reachable
// at the same path. The socket entries for p11-kit-client.so and network HSM modules have not
// been run under this filter.
std::vector<Rule> key_pkcs11_table(pid_t self) {
    std::vector<Rule> rules = key_memory_table(self);
    append(
        rules,
        {
            // 3. Allowed.
            allow(SCMP_SYS(newfstatat)),  // glibc 2.36 implements fstat and stat with it
            allow(SCMP_SYS(lseek)),
            allow(SCMP_SYS(connect)),  // the module's socket, created under the checks below

            // 4. Allowed with argument checks.
            // Read-only opens of token files: no O_WRONLY, O_RDWR, O_CREAT or O_TRUNC.
            allow_if(SCMP_SYS(openat), {arg_masked_is(2, O_ACCMODE | O_CREAT | O_TRUNC, O_RDONLY)}),
            // SoftHSM's read locks on token files (F_SETLKW to lock, F_SETLK to unlock).
            allow_if(SCMP_SYS(fcntl), {arg_is(1, F_SETLK)}),
            allow_if(SCMP_SYS(fcntl), {arg_is(1, F_SETLKW)}),
            // syslog(3) from a module reaches /dev/log over a Unix datagram socket.
            allow_if(SCMP_SYS(socket),
                     {arg_is(0, AF_UNIX), arg_masked_is(1, socket_type_mask, SOCK_DGRAM)}),
            // The module's server: a Unix socket (p11-kit-client.so) or TCP (network HSM).
            allow_stream_socket(AF_UNIX),
            allow_stream_socket(AF_INET),
            allow_stream_socket(AF_INET6),
        });
    // 5. Default: as for key_memory; open (not openat), execve, ptrace and process creation
    // stay forbidden.
    return rules;
}

std::vector<Rule> table_for(SeccompRole role, pid_t self) {
    switch (role) {
        case SeccompRole::connection:
            return connection_table(self, true);
        case SeccompRole::connection_no_network:
            return connection_table(self, false);
        case SeccompRole::key_memory:
            return key_memory_table(self);
        case SeccompRole::key_pkcs11:
            return key_pkcs11_table(self);
    }
    throw Error(ErrorKind::system, "unknown seccomp role");
}

struct FilterDeleter {
    void operator()(void* filter) const { seccomp_release(filter); }
};
using FilterPtr = std::unique_ptr<void, FilterDeleter>;

// libseccomp returns a negative errno value instead of setting errno.
void check_seccomp(int result, const std::string& what) {
    if (result < 0) {
        errno = -result;
        throw_system_error(what);
    }
}

// seccomp_syscall_resolve_num_arch returns a name allocated with malloc.
struct MallocDeleter {
    void operator()(char* text) const {
        std::free(text);  // NOLINT(cppcoreguidelines-no-malloc, cppcoreguidelines-owning-memory)
    }
};

void add_rule(scmp_filter_ctx filter, const Rule& rule, SeccompRole role) {
    const int result =
        seccomp_rule_add_array(filter, rule.action, rule.syscall,
                               static_cast<unsigned>(rule.checks.size()), rule.checks.data());
    if (result < 0) {
        const std::unique_ptr<char, MallocDeleter> name(
            seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, rule.syscall));
        const std::string syscall_name = name ? name.get() : std::to_string(rule.syscall);
        check_seccomp(result, "seccomp rule for " + syscall_name + " in the " +
                                  std::string(to_string(role)) + " filter");
    }
}

// Two ids no process has (the kernel's pid_max is at most 2^22). The filter is built once
// with each, and the instructions that differ are those that hold the process's own id.
constexpr pid_t placeholder_self = 0x5eed0001;
constexpr pid_t other_placeholder_self = 0x5eed0002;

FilterPtr build_filter(SeccompRole role, SeccompMode mode, pid_t self) {
    // SCMP_ACT_TRAP rather than SCMP_ACT_KILL_PROCESS, so that the handler can name the call
    // before the process dies; install_sigsys_reporter describes how it still dies.
    const std::uint32_t default_action =
        mode == SeccompMode::enforce ? SCMP_ACT_TRAP : SCMP_ACT_LOG;
    FilterPtr filter(seccomp_init(default_action));
    if (!filter) {
        throw Error(ErrorKind::system,
                    "seccomp_init failed for the " + std::string(to_string(role)) + " filter");
    }
    // Another ABI (i386 through int 0x80, x32) kills the process even in log mode, because
    // syscall numbers differ there and the table would mean something else.
    check_seccomp(seccomp_attr_set(filter.get(), SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS),
                  "seccomp bad-architecture action");
    // Lays the rules out as a binary search over the system call numbers instead of a linear
    // list. The kernel runs the program once for each number when it attaches it, to fill its
    // cache of always-allowed calls, so a shorter path per number makes each attach cheaper.
    check_seccomp(seccomp_attr_set(filter.get(), SCMP_FLTATR_CTL_OPTIMIZE, 2),
                  "seccomp binary-tree optimization");
    for (const Rule& rule : table_for(role, self)) {
        add_rule(filter.get(), rule, role);
    }
    return filter;
}

// The BPF program of filter. libseccomp 2.5 exports only to a descriptor.
std::vector<sock_filter> export_program(const FilterPtr& filter, SeccompRole role) {
    const std::string what = "the " + std::string(to_string(role)) + " seccomp program";
    const Fd memory(::memfd_create("cloister-seccomp", MFD_CLOEXEC));
    if (!memory) {
        throw_system_error("memfd_create for " + what);
    }
    check_seccomp(seccomp_export_bpf(filter.get(), memory.get()), "exporting " + what);
    const off_t size = ::lseek(memory.get(), 0, SEEK_END);
    if (size < 0) {
        throw_system_error("measuring " + what);
    }
    const auto bytes = static_cast<std::size_t>(size);
    if (bytes == 0 || bytes % sizeof(sock_filter) != 0 ||
        bytes / sizeof(sock_filter) > BPF_MAXINSNS) {
        throw Error(ErrorKind::system, what + " has " + std::to_string(bytes) +
                                           " bytes, not 1 to " + std::to_string(BPF_MAXINSNS) +
                                           " whole BPF instructions");
    }
    std::vector<sock_filter> program(bytes / sizeof(sock_filter));
    if (::pread(memory.get(), program.data(), bytes, 0) != size) {
        throw_system_error("reading " + what);
    }
    return program;
}

bool same_instruction(const sock_filter& left, const sock_filter& right) {
    return left.code == right.code && left.jt == right.jt && left.jf == right.jf &&
           left.k == right.k;
}

// Loads program as libseccomp's seccomp_load does: in enforce mode after the SIGSYS reporter,
// then PR_SET_NO_NEW_PRIVS and the seccomp syscall with SECCOMP_FILTER_FLAG_TSYNC.
void load_program(SeccompRole role, SeccompMode mode, std::vector<sock_filter> program) {
    const std::string role_name(to_string(role));
    if (mode == SeccompMode::enforce) {
        install_sigsys_reporter(role_name);
    }
    const sock_fprog bpf{static_cast<unsigned short>(program.size()), program.data()};
    // The kernel requires no_new_privs (or CAP_SYS_ADMIN) before it accepts a filter.
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        throw_system_error("prctl PR_SET_NO_NEW_PRIVS 1 before the " + role_name +
                           " seccomp filter");
    }
    // Apply the filter to every thread of the process, not only the caller.
    const long result =
        ::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &bpf);
    if (result > 0) {
        // With TSYNC, a positive result is the id of a thread that could not take the filter.
        errno = ESRCH;
        throw_system_error("loading the " + role_name + " seccomp filter: thread " +
                           std::to_string(result) + " could not be synchronised");
    }
    if (result < 0) {
        throw_system_error("loading the " + role_name + " seccomp filter");
    }
}

}  // namespace

SeccompProgram::SeccompProgram(SeccompRole role, SeccompMode mode)
    : role_(role),
      mode_(mode),
      program_(export_program(build_filter(role, mode, placeholder_self), role)) {
    if (mode == SeccompMode::enforce) {
        // install() sets up the SIGSYS reporter; its name table is then inherited.
        load_sigsys_names();
    }
    const std::vector<sock_filter> other =
        export_program(build_filter(role, mode, other_placeholder_self), role);
    const auto mismatch = [role] {
        return Error(ErrorKind::system, "the " + std::string(to_string(role)) +
                                            " seccomp program does not differ in the process "
                                            "id alone between two builds");
    };
    if (other.size() != program_.size()) {
        throw mismatch();
    }
    for (std::size_t i = 0; i < program_.size(); ++i) {
        if (same_instruction(program_[i], other[i])) {
            continue;
        }
        sock_filter expected = program_[i];
        expected.k = static_cast<std::uint32_t>(other_placeholder_self);
        if (program_[i].k != static_cast<std::uint32_t>(placeholder_self) ||
            !same_instruction(expected, other[i])) {
            throw mismatch();
        }
        self_slots_.push_back(i);
    }
    // Every table checks tgkill against the own id; without a slot, abort() would trap.
    if (self_slots_.empty()) {
        throw mismatch();
    }
}

void SeccompProgram::install() const {
    std::vector<sock_filter> program = program_;
    const auto self = static_cast<std::uint32_t>(::getpid());
    for (const std::size_t slot : self_slots_) {
        program[slot].k = self;
    }
    load_program(role_, mode_, std::move(program));
}

void install_seccomp(SeccompRole role, SeccompMode mode) {
    load_program(role, mode, export_program(build_filter(role, mode, ::getpid()), role));
}

std::string_view to_string(SeccompRole role) noexcept {
    switch (role) {
        case SeccompRole::connection:
            return "connection";
        case SeccompRole::connection_no_network:
            return "connection-no-network";
        case SeccompRole::key_memory:
            return "key-memory";
        case SeccompRole::key_pkcs11:
            return "key-pkcs11";
    }
    return "unknown";
}

}  // namespace cloister
