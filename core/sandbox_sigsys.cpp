#include "core/sandbox_sigsys.h"

#include <seccomp.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <csignal>
#include <cstddef>
#include <cstring>

#include "core/error.h"

namespace cloister {
namespace {

// Everything the handler reads is filled in before the filter is loaded, because the handler
// may only make async-signal-safe calls: no allocation, no locale, no stdio.
constexpr std::size_t max_label_size = 64;   // bytes, with the terminating NUL
constexpr std::size_t named_syscalls = 512;  // x86_64 and aarch64 numbers stay below it
// si_code of a SIGSYS sent by seccomp: SYS_SECCOMP in <asm-generic/siginfo.h>, which glibc
// 2.36 does not export.
constexpr int sys_seccomp_code = 1;

// Process-wide by nature: a signal handler has no other way to reach its data.
// NOLINTBEGIN(cppcoreguidelines-avoid-non-const-global-variables)
std::array<char, max_label_size> report_label{};
std::array<char, max_label_size> report_role{};
std::array<const char*, named_syscalls> syscall_names{};
bool syscall_names_loaded = false;
// NOLINTEND(cppcoreguidelines-avoid-non-const-global-variables)

void copy_cut(std::string_view text, std::array<char, max_label_size>& to) noexcept {
    const std::size_t length = std::min(text.size(), to.size() - 1);
    std::memcpy(to.data(), text.data(), length);
    to.at(length) = '\0';
}

// Resolves every syscall number once. The names come from libseccomp and stay allocated for
// the life of the process.
void load_syscall_names() {
    if (syscall_names_loaded) {
        return;
    }
    for (std::size_t number = 0; number < named_syscalls; ++number) {
        syscall_names.at(number) =
            seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, static_cast<int>(number));
    }
    syscall_names_loaded = true;
}

// A line buffer filled without allocation, for the signal handler.
class LineBuffer {
  public:
    void append(const char* text) noexcept {
        for (; text != nullptr && *text != '\0' && size_ < data_.size(); ++text) {
            data_.at(size_++) = *text;
        }
    }

    void append_number(long value) noexcept {
        std::array<char, 24> digits{};
        std::size_t count = 0;
        unsigned long rest =
            value < 0 ? 0UL - static_cast<unsigned long>(value) : static_cast<unsigned long>(value);
        do {
            digits.at(count++) = static_cast<char>('0' + rest % 10);
            rest /= 10;
        } while (rest != 0 && count < digits.size());
        if (value < 0) {
            append("-");
        }
        while (count > 0 && size_ < data_.size()) {
            data_.at(size_++) = digits.at(--count);
        }
    }

    void write_to(int fd) const noexcept {
        std::size_t written = 0;
        while (written < size_) {
            const ssize_t result = ::write(fd, data_.data() + written, size_ - written);
            if (result <= 0) {
                return;
            }
            written += static_cast<std::size_t>(result);
        }
    }

  private:
    std::array<char, 256> data_{};
    std::size_t size_ = 0;
};

void write_report(long syscall_number) noexcept {
    LineBuffer line;
    line.append("cloister: ");
    line.append(report_label.data());
    line.append(": killed by seccomp: system call ");
    line.append_number(syscall_number);
    const bool named = syscall_number >= 0 &&
                       static_cast<std::size_t>(syscall_number) < named_syscalls &&
                       syscall_names.at(static_cast<std::size_t>(syscall_number)) != nullptr;
    if (named) {
        line.append(" (");
        line.append(syscall_names.at(static_cast<std::size_t>(syscall_number)));
        line.append(")");
    }
    line.append(" is not in the ");
    line.append(report_role.data());
    line.append(" filter\n");
    line.write_to(STDERR_FILENO);
}

using SyscallArguments = std::array<long, 6>;

// The six argument registers of the trapped call, in the kernel's calling convention.
#if defined(__x86_64__)
SyscallArguments trapped_arguments(const ucontext_t& context) noexcept {
    const auto& registers = context.uc_mcontext.gregs;
    return {registers[REG_RDI], registers[REG_RSI], registers[REG_RDX],
            registers[REG_R10], registers[REG_R8],  registers[REG_R9]};
}
#elif defined(__aarch64__)
SyscallArguments trapped_arguments(const ucontext_t& context) noexcept {
    const auto& registers = context.uc_mcontext.regs;
    return {static_cast<long>(registers[0]), static_cast<long>(registers[1]),
            static_cast<long>(registers[2]), static_cast<long>(registers[3]),
            static_cast<long>(registers[4]), static_cast<long>(registers[5])};
}
#else
// NOTE: on other architectures the call is made again with zero arguments. A filter entry
// with argument checks may then allow it, so the process exits with status 159 instead.
SyscallArguments trapped_arguments(const ucontext_t& /*context*/) noexcept {
    return {};
}
#endif

extern "C" void report_sigsys(int signal_number, siginfo_t* info, void* context) {
    struct sigaction default_action {};
    default_action.sa_handler = SIG_DFL;
    ::sigaction(SIGSYS, &default_action, nullptr);
    if (info == nullptr || info->si_code != sys_seccomp_code || context == nullptr) {
        // SIGSYS sent by another process. PID 1 of a PID namespace ignores a signal at its
        // default action, so the exit status is the fallback.
        ::raise(signal_number);
        ::_exit(128 + SIGSYS);
    }
    write_report(info->si_syscall);
    // SIGSYS stays blocked inside this handler. A forced seccomp SIGSYS that finds it blocked
    // resets it to the default action and delivers it, which ends the whole thread group.
    const SyscallArguments arguments = trapped_arguments(*static_cast<ucontext_t*>(context));
    ::syscall(info->si_syscall, arguments[0], arguments[1], arguments[2], arguments[3],
              arguments[4], arguments[5]);
    ::_exit(128 + SIGSYS);
}

}  // namespace

void load_sigsys_names() {
    load_syscall_names();
}

void install_sigsys_reporter(std::string_view role) {
    load_syscall_names();
    copy_cut(role, report_role);
    if (report_label.front() == '\0') {
        copy_cut("process", report_label);
    }
    struct sigaction action {};
    action.sa_sigaction = report_sigsys;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    if (::sigaction(SIGSYS, &action, nullptr) != 0) {
        throw_system_error("sigaction for SIGSYS");
    }
}

void set_sigsys_report_label(std::string_view label) noexcept {
    copy_cut(label, report_label);
}

}  // namespace cloister
