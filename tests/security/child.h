// Runs test code in a forked child, so that a sandbox step or a seccomp kill stays there.
#pragma once

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <string>

namespace cloister::testing {

// Exit status of a child whose body threw.
inline constexpr int child_threw = 120;

// Forks and runs body in the child, which exits with its return value (child_threw if it
// threw) and never returns into GoogleTest. Returns the child's pid, or -1.
inline pid_t start_child(const std::function<int()>& body) {
    const pid_t pid = ::fork();
    if (pid != 0) {
        return pid;
    }
    int code = child_threw;
    try {
        code = body();
    } catch (const std::exception& error) {
        const std::string line = std::string("child threw: ") + error.what() + "\n";
        [[maybe_unused]] const ssize_t ignored = ::write(STDERR_FILENO, line.data(), line.size());
    }
    ::_exit(code);
}

// Waits for pid and returns its wait status, or -1.
inline int wait_child(pid_t pid) {
    if (pid < 0) {
        return -1;
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            return -1;
        }
    }
    return status;
}

inline int run_in_child(const std::function<int()>& body) {
    return wait_child(start_child(body));
}

// Makes the default spdlog logger a plain standard-error logger, as cloister's processes have
// before they fork. Call it before start_child: creating spdlog's registry or a color sink
// under the connection filter would call isatty (ioctl TCGETS), which the filter forbids.
inline void use_stderr_logger() {
    spdlog::set_default_logger(std::make_shared<spdlog::logger>(
        "test", std::make_shared<spdlog::sinks::stderr_sink_mt>()));
}

// "exited 0", "killed by SIGSYS", for assertion messages.
inline std::string describe_status(int status) {
    if (status == -1) {
        return "fork or waitpid failed";
    }
    if (WIFEXITED(status)) {
        return "exited " + std::to_string(WEXITSTATUS(status));
    }
    if (WIFSIGNALED(status)) {
        const char* name = ::sigabbrev_np(WTERMSIG(status));
        return std::string("killed by SIG") + (name != nullptr ? name : "?");
    }
    return "status " + std::to_string(status);
}

inline bool exited_zero(int status) {
    return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

inline bool killed_by_sigsys(int status) {
    return status != -1 && WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS;
}

}  // namespace cloister::testing
