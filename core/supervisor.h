// The supervisor: starts the key process, keeps spare connection processes, reaps children
// and handles signals. It never reads network bytes and never loads a private key.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "core/config.h"
#include "core/fd.h"
#include "core/tls_stack.h"
#include "core/vhost_table.h"

namespace cloister {

struct SupervisorHooks {
    // Runs in the forked key process with its end of the control channel and returns the
    // process's exit status. Supplied by main so that core/ does not link the key store.
    std::function<int(const Config&, Fd control)> key_process_main;
    // Builds the TLS stack named by config.server.tls_backend.
    std::function<std::unique_ptr<TlsStack>(const Config&, const VhostTable&)> make_tls_stack;
    // Reads the configuration file again for a reload (SIGHUP); throws Error(config) naming
    // the problem. Without it a reload fails and the running configuration stays.
    std::function<Config()> load_config;
    // Returns the digest of the config file and every certificate chain file it names, for
    // spawn = "exec" (core/connection_exec.h).
    std::function<std::string(const Config&)> config_digest;
};

// Exit statuses of run_supervisor and check_config, and of the cloister command;
// docs/operations.md lists them all.
inline constexpr int exit_failure = 1;         // a runtime failure
inline constexpr int exit_invalid_config = 2;  // the config, a certificate or a key is invalid

// The release version from the CMake project, such as "0.1.0".
const char* version() noexcept;

// Runs the daemon until SIGTERM or SIGINT has drained it. Returns the exit status. SIGHUP
// reloads the configuration through hooks.load_config (docs/operations.md).
int run_supervisor(const Config& config, const SupervisorHooks& hooks);

// Validates config without serving: builds the TLS stack, starts a temporary key process
// and checks every key against its certificate. Returns 0 when all is well; logs each error
// and returns non-zero otherwise.
int check_config(const Config& config, const SupervisorHooks& hooks);

}  // namespace cloister
