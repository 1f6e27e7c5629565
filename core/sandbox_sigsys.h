// Reporting a seccomp violation. The enforcing filters trap a forbidden system call
// (SECCOMP_RET_TRAP), and the kernel then sends SIGSYS to the calling thread with the call's
// number in siginfo. The handler installed here writes that number to standard error and
// ends the process with SIGSYS, because the wait status that the supervisor receives carries
// only the signal.
#pragma once

#include <string_view>

namespace cloister {

// Installs the SIGSYS handler for a process under the filter named role ("connection",
// "key-memory"...). On a seccomp trap the handler writes one line to standard error:
//   cloister: LABEL: killed by seccomp: system call N (NAME) is not in the ROLE filter
// then sets SIGSYS to its default action and makes the same call with the same arguments
// again. The filter traps it again, and the kernel, finding SIGSYS at its default action,
// kills the whole process with SIGSYS, even when it is PID 1 of a PID namespace. The call
// never runs. A thread that blocks SIGSYS dies the same way without the line.
// Throws Error(system) when sigaction fails.
// NOTE: code already running in the process can replace the handler (rt_sigaction is allowed)
// and so survive a trapped call, but the call still does not run.
void install_sigsys_reporter(std::string_view role);

// Resolves the system call names the handler prints (512 lookups in libseccomp's tables),
// which install_sigsys_reporter otherwise does in the process itself. A process that forks
// many children calls it once before, so that each child inherits the table.
void load_sigsys_names();

// Sets the LABEL of the line above, such as "connection 42" or "key process"; labels are cut
// to 63 bytes. Call it before a forbidden call can happen.
void set_sigsys_report_label(std::string_view label) noexcept;

}  // namespace cloister
