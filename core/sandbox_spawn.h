// Starting a child as PID 1 of its own PID namespace, and the signal handling that such a
// child needs.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "core/fd.h"

namespace cloister {

// Forks a child. With pid_namespace, the child is PID 1 of a new PID namespace: the caller's
// namespace for new children is switched with unshare(CLONE_NEWPID) for this one fork() and
// switched back with setns() right after it, in the parent. glibc's fork() is used rather than
// a raw clone system call, so that glibc's cached thread id and the fork handlers of OpenSSL
// stay right in the child. Returns the child's pid in the caller's namespace, and 0 in the
// child. Throws Error(system) when the switch or fork() fails. The caller must be
// single-threaded, because the switch applies to the calling thread only.
pid_t fork_child(bool pid_namespace);

// The namespaces that this host lets a child of the supervisor enter, found by starting one
// test child.
struct NamespaceSupport {
    bool pid = false;      // a child can start in a new PID namespace
    bool ipc = false;      // a child can unshare its IPC namespace
    bool network = false;  // a child can unshare its network namespace
    // One reason per namespace the host forbids, such as "PID: Operation not permitted".
    std::vector<std::string> unsupported;
};

// Starts a test child (in a new PID namespace when the host allows it) that tries to leave
// the IPC and network namespaces, and reports what worked. Throws Error(system) when the test
// child cannot be started or reaped.
NamespaceSupport probe_namespaces();

// Creates a network namespace that nothing else joins (only a loopback interface, which
// stays down) and returns a descriptor of it, for connection processes to setns() into. The
// calling thread unshares into it, opens it, and returns to its own network namespace. Needs
// CAP_SYS_ADMIN; the caller must be single-threaded. Throws Error(system) when a step fails.
Fd create_empty_network_namespace();

// Makes SIGTERM and SIGALRM end the process with exit status 128 + the signal number.
// A process that is PID 1 of a PID namespace needs this, because the kernel discards every
// signal whose action is the default there, SIGKILL from an ancestor namespace excepted. The
// process's wait status then shows an exit, not a signal. SIGINT, SIGQUIT and SIGHUP keep
// their action (ignore_terminal_signals ignores them in children).
void exit_on_stop_signals();

// The exit status exit_on_stop_signals gives a process that signal_number stopped.
constexpr int stop_signal_exit_status(int signal_number) {
    return 128 + signal_number;
}

}  // namespace cloister
