// sandbox_canary: installs a role's real seccomp filter, then makes one forbidden call.
//
//   sandbox_canary ROLE ATTACK [--no-sandbox | --log-mode]
//
// ROLE is connection, key-memory or key-pkcs11. ATTACK is one of the names in attacks below.
// When the call returns, whatever its result, the canary prints "survived" and the result to
// standard output and exits 0; under an enforcing filter the kernel kills it with SIGSYS first.
// --no-sandbox skips the filter and --log-mode installs it with SeccompMode::log, to show that
// each attack works without it. Exit status 2 means a usage error, 3 a sandbox set-up error.
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <exception>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "core/seccomp_policy.h"

namespace {

// Writes with write(2) only: stdio's first write to a buffered stream calls fstat, which the
// connection filter forbids.
void print(std::string_view text) {
    while (!text.empty()) {
        const ssize_t written = ::write(STDOUT_FILENO, text.data(), text.size());
        if (written <= 0) {
            return;
        }
        text.remove_prefix(static_cast<std::size_t>(written));
    }
}

// Reports that the attack call returned, with its result or errno.
int survived(long result) {
    const std::string outcome =
        result >= 0 ? "result " + std::to_string(result) : std::string(std::strerror(errno));
    print("survived (" + outcome + ")\n");
    return 0;
}

int attack_open() {
    return survived(::open("/dev/null", O_RDONLY | O_CLOEXEC));
}

int attack_open_write() {
    return survived(::open("/dev/null", O_WRONLY | O_CLOEXEC));
}

int attack_socket_netlink() {
    return survived(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, 0));
}

int attack_socket_inet() {
    return survived(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
}

int attack_socket_unix() {
    return survived(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
}

// connect on a descriptor that is not open: without a filter it returns EBADF.
int attack_connect() {
    sockaddr_in address{};
    address.sin_family = AF_INET;
    return survived(::connect(-1, reinterpret_cast<const sockaddr*>(&address), sizeof(address)));
}

int attack_socket_udp() {
    return survived(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
}

// Replaces the canary with itself in "exec-target" mode, which prints "survived".
int attack_execve() {
    std::array<char, 4096> self{};
    const ssize_t size = ::readlink("/proc/self/exe", self.data(), self.size() - 1);
    if (size <= 0) {
        print("cannot resolve /proc/self/exe\n");
        return 3;
    }
    std::string target = "exec-target";
    std::array<char*, 3> argv{self.data(), target.data(), nullptr};
    std::array<char*, 1> envp{nullptr};
    return survived(::execve(self.data(), argv.data(), envp.data()));
}

// PTRACE_TRACEME makes the parent the tracer of the canary. That is harmless, because the
// canary exits next.
int attack_ptrace() {
    return survived(::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr));
}

int attack_fork() {
    const pid_t child = ::fork();
    if (child == 0) {
        ::_exit(0);
    }
    if (child > 0) {
        int status = 0;
        ::waitpid(child, &status, 0);
    }
    return survived(child);
}

// process_vm_readv of its own memory: the syscall a sibling's memory would be read with.
int attack_process_vm_readv() {
    return survived(::syscall(SYS_process_vm_readv, ::getpid(), nullptr, 0, nullptr, 0, 0));
}

// An executable anonymous mapping, as shellcode would need.
int attack_mmap_exec() {
    void* page = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return survived(page == MAP_FAILED ? -1 : 0);
}

// getpid through the x32 ABI (syscall number with bit 30 set), which the filters' architecture
// check must reject even in log mode.
int attack_x32_syscall() {
    constexpr long x32_syscall_bit = 0x40000000L;
    return survived(::syscall(x32_syscall_bit | SYS_getpid));
}

struct Attack {
    std::string_view name;
    std::function<int()> run;
};

const std::array<Attack, 14> attacks{{
    {"open", attack_open},
    {"open-write", attack_open_write},
    {"socket-netlink", attack_socket_netlink},
    {"socket-inet", attack_socket_inet},
    {"socket-udp", attack_socket_udp},
    {"socket-unix", attack_socket_unix},
    {"connect", attack_connect},
    {"execve", attack_execve},
    {"ptrace", attack_ptrace},
    {"fork", attack_fork},
    {"process-vm-readv", attack_process_vm_readv},
    {"mmap-exec", attack_mmap_exec},
    {"x32-syscall", attack_x32_syscall},
    {"exec-target", [] { return survived(0); }},
}};

std::optional<cloister::SeccompRole> parse_role(std::string_view name) {
    for (const auto role :
         {cloister::SeccompRole::connection, cloister::SeccompRole::connection_no_network,
          cloister::SeccompRole::key_memory, cloister::SeccompRole::key_pkcs11}) {
        if (cloister::to_string(role) == name) {
            return role;
        }
    }
    return std::nullopt;
}

const Attack* find_attack(std::string_view name) {
    for (const Attack& attack : attacks) {
        if (attack.name == name) {
            return &attack;
        }
    }
    return nullptr;
}

int usage() {
    print(
        "usage: sandbox_canary connection|connection-no-network|key-memory|key-pkcs11 ATTACK "
        "[--no-sandbox|--log-mode]\nattacks:");
    for (const Attack& attack : attacks) {
        print(" " + std::string(attack.name));
    }
    print("\n");
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc == 2 && std::string_view(argv[1]) == "exec-target") {
        return survived(0);
    }
    if (argc < 3 || argc > 4) {
        return usage();
    }
    const auto role = parse_role(argv[1]);
    const Attack* attack = find_attack(argv[2]);
    const std::string_view option = argc == 4 ? argv[3] : "";
    if (!role || attack == nullptr ||
        (!option.empty() && option != "--no-sandbox" && option != "--log-mode")) {
        return usage();
    }
    if (option != "--no-sandbox") {
        try {
            cloister::install_seccomp(*role, option == "--log-mode"
                                                 ? cloister::SeccompMode::log
                                                 : cloister::SeccompMode::enforce);
        } catch (const std::exception& error) {
            print(std::string("sandbox set-up failed: ") + error.what() + "\n");
            return 3;
        }
    }
    return attack->run();
}
