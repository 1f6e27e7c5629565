#include "core/sandbox_spawn.h"

#include <fcntl.h>
#include <sched.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <csignal>
#include <cstring>

#include "core/error.h"
#include "core/fd.h"

namespace cloister {
namespace {

// Returns true when errno means the host forbids a namespace (no CAP_SYS_ADMIN, a kernel
// without it, a namespace count limit of 0), rather than a failure of the call itself.
bool namespace_forbidden(int error_number) {
    return error_number == EPERM || error_number == EINVAL || error_number == ENOSPC ||
           error_number == ENOSYS;
}

// Sets the calling thread's namespace for new children to a new PID namespace, and back to
// the thread's own PID namespace when destroyed. setns() to the caller's own active namespace
// is allowed to any process that could unshare.
class PidNamespaceForChildren {
  public:
    PidNamespaceForChildren() : own_(::open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC)) {
        if (!own_) {
            throw_system_error("opening /proc/self/ns/pid");
        }
        if (::unshare(CLONE_NEWPID) != 0) {
            throw_system_error("unshare(CLONE_NEWPID)");
        }
    }
    PidNamespaceForChildren(const PidNamespaceForChildren&) = delete;
    PidNamespaceForChildren& operator=(const PidNamespaceForChildren&) = delete;
    PidNamespaceForChildren(PidNamespaceForChildren&&) = delete;
    PidNamespaceForChildren& operator=(PidNamespaceForChildren&&) = delete;
    // Keeps the switch: the child, PID 1 of the new namespace, cannot enter its ancestor's
    // namespace and has no children of its own to place.
    void keep_in_child() { own_.reset(); }

    ~PidNamespaceForChildren() {
        if (!own_) {
            return;
        }
        // A failure leaves later children in the namespace of this child, where fork() fails
        // once this child exits, so the supervisor then logs each failed fork.
        if (::setns(own_.get(), CLONE_NEWPID) != 0) {
            spdlog::error("setns back to the own PID namespace failed: {}", std::strerror(errno));
        }
    }

  private:
    Fd own_;
};

extern "C" void exit_on_signal(int signal_number) {
    ::_exit(stop_signal_exit_status(signal_number));
}

// The body of the test child: tries each namespace and writes the two errno values (0 for
// success) to fd.
[[noreturn]] void run_namespace_test(int fd) noexcept {
    std::array<int, 2> errors{};
    errors[0] = ::unshare(CLONE_NEWIPC) == 0 ? 0 : errno;
    errors[1] = ::unshare(CLONE_NEWNET) == 0 ? 0 : errno;
    const ssize_t written = ::write(fd, errors.data(), sizeof(errors));
    ::_exit(written == static_cast<ssize_t>(sizeof(errors)) ? 0 : 1);
}

void record(int error_number, const char* name, bool& supported, NamespaceSupport& support) {
    supported = error_number == 0;
    if (!supported) {
        support.unsupported.push_back(std::string(name) + ": " + std::strerror(error_number));
    }
}

pid_t start_test_child(int fd, NamespaceSupport& support) {
    try {
        const pid_t pid = fork_child(true);
        if (pid == 0) {
            run_namespace_test(fd);
        }
        support.pid = true;
        return pid;
    } catch (const Error& error) {
        if (!namespace_forbidden(error.error_number())) {
            throw;
        }
        support.unsupported.push_back(std::string("PID: ") + std::strerror(error.error_number()));
    }
    const pid_t pid = fork_child(false);
    if (pid == 0) {
        run_namespace_test(fd);
    }
    return pid;
}

}  // namespace

pid_t fork_child(bool pid_namespace) {
    if (!pid_namespace) {
        const pid_t pid = ::fork();
        if (pid < 0) {
            throw_system_error("fork");
        }
        return pid;
    }
    PidNamespaceForChildren switched;
    const pid_t pid = ::fork();
    if (pid < 0) {
        throw_system_error("fork into a new PID namespace");
    }
    if (pid == 0) {
        switched.keep_in_child();
    }
    return pid;
}

Fd create_empty_network_namespace() {
    const Fd own(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
    if (!own) {
        throw_system_error("opening /proc/thread-self/ns/net");
    }
    if (::unshare(CLONE_NEWNET) != 0) {
        throw_system_error("unshare(CLONE_NEWNET) for the connection processes' namespace");
    }
    Fd empty(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
    const int open_error = errno;
    if (::setns(own.get(), CLONE_NEWNET) != 0) {
        // The supervisor would open its listeners and connect backends in the empty
        // namespace, so this is fatal.
        throw_system_error("setns back to the supervisor's own network namespace");
    }
    if (!empty) {
        errno = open_error;
        throw_system_error("opening the new empty network namespace");
    }
    return empty;
}

NamespaceSupport probe_namespaces() {
    std::array<int, 2> pipe_fds{};
    if (::pipe2(pipe_fds.data(), O_CLOEXEC) != 0) {
        throw_system_error("pipe2 for the namespace test");
    }
    Fd read_end(pipe_fds[0]);
    Fd write_end(pipe_fds[1]);
    NamespaceSupport support;
    const pid_t pid = start_test_child(write_end.get(), support);
    write_end.reset();
    std::array<int, 2> errors{};
    const ssize_t received = ::read(read_end.get(), errors.data(), sizeof(errors));
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            throw_system_error("waitpid for the namespace test child");
        }
    }
    if (received != static_cast<ssize_t>(sizeof(errors))) {
        throw Error(ErrorKind::system, "the namespace test child reported nothing");
    }
    record(errors[0], "IPC", support.ipc, support);
    record(errors[1], "network", support.network, support);
    return support;
}

void exit_on_stop_signals() {
    struct sigaction action {};
    action.sa_handler = exit_on_signal;
    sigemptyset(&action.sa_mask);
    for (const int signal_number : {SIGTERM, SIGALRM}) {
        if (::sigaction(signal_number, &action, nullptr) != 0) {
            throw_system_error("sigaction for signal " + std::to_string(signal_number));
        }
    }
}

}  // namespace cloister
