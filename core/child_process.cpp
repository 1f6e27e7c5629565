#include "core/child_process.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <climits>
#include <csignal>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>

#include "core/error.h"

namespace cloister {
namespace {

// Closes every descriptor listed in /proc/self/fd that keep does not contain. Used where
// close_range() is missing (Linux before 5.9).
void close_by_listing(const std::vector<int>& keep) {
    DIR* directory = opendir("/proc/self/fd");
    if (directory == nullptr) {
        throw_system_error("opendir /proc/self/fd failed");
    }
    std::vector<int> open_fds;
    while (const dirent* entry = readdir(directory)) {
        const std::string_view name(entry->d_name);
        int fd = -1;
        if (std::from_chars(name.data(), name.data() + name.size(), fd).ec == std::errc() &&
            fd != dirfd(directory)) {
            open_fds.push_back(fd);
        }
    }
    closedir(directory);
    for (const int fd : open_fds) {
        if (!std::binary_search(keep.begin(), keep.end(), fd)) {
            close(fd);
        }
    }
}

// Closes every descriptor outside keep (sorted) with close_range(). Returns false when the
// kernel lacks close_range().
bool close_by_ranges(const std::vector<int>& keep) {
    unsigned int first = 0;
    for (const int fd : keep) {
        const auto kept_fd = static_cast<unsigned int>(fd);
        if (kept_fd > first && close_range(first, kept_fd - 1, 0) != 0) {
            return false;
        }
        first = kept_fd + 1;
    }
    return close_range(first, UINT_MAX, 0) == 0;
}

void open_null_on(int fd) {
    if (fcntl(fd, F_GETFD) >= 0) {
        return;
    }
    const int null_fd = open("/dev/null", O_RDWR);
    if (null_fd < 0) {
        throw_system_error("open /dev/null failed");
    }
    if (null_fd != fd) {
        dup2(null_fd, fd);
        close(null_fd);
    }
}

}  // namespace

std::string signal_name(int signal_number) {
    const char* abbreviation = sigabbrev_np(signal_number);
    return abbreviation != nullptr ? fmt::format("SIG{}", abbreviation)
                                   : fmt::format("signal {}", signal_number);
}

std::string describe_wait_status(int status) {
    if (WIFEXITED(status)) {
        return fmt::format("status {}", WEXITSTATUS(status));
    }
    if (WIFSIGNALED(status)) {
        return fmt::format("signal {} ({})", WTERMSIG(status), signal_name(WTERMSIG(status)));
    }
    return fmt::format("wait status {:#x}", status);
}

bool exited_cleanly(int status) {
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

std::optional<int> wait_for_exit(pid_t pid, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        int status = 0;
        const pid_t reaped = waitpid(pid, &status, WNOHANG);
        if (reaped == pid) {
            return status;
        }
        if (reaped < 0 && errno != EINTR) {
            return std::nullopt;
        }
        if (std::chrono::steady_clock::now() >= deadline) {
            return std::nullopt;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
}

ssize_t send_with_descriptor(int socket_fd, std::span<const std::uint8_t> bytes, int fd) {
    // sendmsg does not write through msg_iov, whose pointer is not const only in the C API.
    iovec data{const_cast<std::uint8_t*>(bytes.data()), bytes.size()};
    alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(int))> control{};
    msghdr header{};
    header.msg_iov = &data;
    header.msg_iovlen = 1;
    if (fd >= 0) {
        header.msg_control = control.data();
        header.msg_controllen = control.size();
        cmsghdr* descriptor = CMSG_FIRSTHDR(&header);
        descriptor->cmsg_level = SOL_SOCKET;
        descriptor->cmsg_type = SCM_RIGHTS;
        descriptor->cmsg_len = CMSG_LEN(sizeof(int));
        std::memcpy(CMSG_DATA(descriptor), &fd, sizeof(fd));
    }
    return sendmsg(socket_fd, &header, MSG_NOSIGNAL | MSG_DONTWAIT);
}

std::pair<Fd, Fd> make_seqpacket_pair() {
    std::array<int, 2> fds{};
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds.data()) != 0) {
        throw_system_error("socketpair failed");
    }
    return {Fd(fds[0]), Fd(fds[1])};
}

void reset_signals_after_fork() {
    for (int signal_number = 1; signal_number < NSIG; ++signal_number) {
        if (signal_number != SIGKILL && signal_number != SIGSTOP) {
            // Fails harmlessly for the real-time signals that glibc reserves.
            static_cast<void>(std::signal(signal_number, SIG_DFL));
        }
    }
    static_cast<void>(std::signal(SIGPIPE, SIG_IGN));
    ignore_terminal_signals();
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
}

void ignore_terminal_signals() {
    static_cast<void>(std::signal(SIGINT, SIG_IGN));
    static_cast<void>(std::signal(SIGQUIT, SIG_IGN));
    static_cast<void>(std::signal(SIGHUP, SIG_IGN));
}

void close_descriptors_except(std::vector<int> keep) {
    std::sort(keep.begin(), keep.end());
    keep.erase(std::unique(keep.begin(), keep.end()), keep.end());
    keep.erase(std::remove_if(keep.begin(), keep.end(), [](int fd) { return fd < 0; }), keep.end());
    if (!close_by_ranges(keep)) {
        if (errno != ENOSYS) {
            throw_system_error("close_range failed");
        }
        close_by_listing(keep);
    }
    open_null_on(STDIN_FILENO);
    open_null_on(STDOUT_FILENO);
}

}  // namespace cloister
