// Steps that every child of the supervisor takes right after fork().
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/fd.h"

namespace cloister {

// Restores the default action of every signal and unblocks them all, because a child
// inherits the supervisor's blocked mask (the supervisor reads signals with signalfd).
// SIGPIPE is then ignored: a write to a closed socket returns EPIPE instead of killing the
// process. SIGINT, SIGQUIT and SIGHUP are ignored too (ignore_terminal_signals).
void reset_signals_after_fork();

// Ignores SIGINT, SIGQUIT and SIGHUP. A terminal sends them to the whole foreground process
// group (SIGHUP when it hangs up), and only the supervisor acts on them: it drains, and stops
// its children when it chooses.
void ignore_terminal_signals();

// Closes every descriptor except those in keep, then opens /dev/null on 0 and 1 when they
// are closed, so that a stray write to standard output cannot reach a socket.
void close_descriptors_except(std::vector<int> keep);

// Creates an AF_UNIX SOCK_SEQPACKET socket pair, both ends close-on-exec. Throws
// Error(system) when socketpair() fails.
std::pair<Fd, Fd> make_seqpacket_pair();

// Sends bytes as one message on socket_fd with MSG_NOSIGNAL and MSG_DONTWAIT, and with fd in
// SCM_RIGHTS when fd is not negative. Returns what sendmsg returns.
ssize_t send_with_descriptor(int socket_fd, std::span<const std::uint8_t> bytes, int fd);

// Returns "SIGKILL" for 9, or "signal N" for a number without a name.
std::string signal_name(int signal_number);

// Describes a waitpid() status: "status 1" or "signal 9 (SIGKILL)".
std::string describe_wait_status(int status);

// True for a waitpid() status of a normal exit with status 0.
bool exited_cleanly(int status);

// Waits up to timeout for the child pid to exit and reaps it. Returns its wait status, or
// nothing when it still runs or was reaped already.
std::optional<int> wait_for_exit(pid_t pid, std::chrono::milliseconds timeout);

}  // namespace cloister
