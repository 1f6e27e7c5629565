// The supervisor's side of the key process: starting it, handing it key channels, checking
// the keys through it and stopping it.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>

#include "core/config.h"
#include "core/error.h"
#include "core/fd.h"
#include "core/supervisor.h"
#include "core/tls_stack.h"

namespace cloister {

struct KeyProcess {
    pid_t pid = -1;
    Fd control;  // the supervisor's end of the control channel
    std::chrono::steady_clock::time_point started;

    [[nodiscard]] bool running() const { return pid > 0; }
};

// Forks the key process with a new control channel. The child resets its signals, closes
// every descriptor but standard error and the control channel, and runs
// hooks.key_process_main.
KeyProcess start_key_process(const Config& config, const SupervisorHooks& hooks);

// Same as above; with pid_namespace the key process is PID 1 of a new PID namespace
// (fork_child in core/sandbox_spawn.h).
KeyProcess start_key_process(const Config& config, const SupervisorHooks& hooks,
                             bool pid_namespace);

// Closes the control channel, so that the key process exits, and reaps it. A key process
// that still runs after 5 s is killed with SIGKILL.
void stop_key_process(KeyProcess& key) noexcept;

// Hands channel to the key process over its control channel, as the key channel of
// connection_id (keyproto::Attach with the descriptor in SCM_RIGHTS). Never blocks: throws
// Error(io) when the send fails, for example because the key process is gone.
void send_attach(int control_fd, const Fd& channel, std::uint64_t connection_id,
                 std::uint32_t flags);

// Checks every certificate's key through the stack's own signing path, over a key channel
// without an operation quota. Throws Error(config) naming the files on a mismatch.
void run_self_check(TlsStack& stack, const KeyProcess& key, const Config& config);

// Stops or reaps key after error ended the check of a configuration (at start, on reload or
// with --check-config), and returns the error to report. A key process that exited with
// status 2 (a key failed to load) gives Error(config). Otherwise the result keeps error's
// kind and message, with the key process's exit status added when it exited.
Error check_failure(const Error& error, KeyProcess& key);

}  // namespace cloister
