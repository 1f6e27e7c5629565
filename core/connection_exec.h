// spawn = "exec": connection processes that start from a fresh address space. The supervisor
// forks, moves the descriptors a connection process needs to fixed numbers, and fexecve()s
// its own executable, opened once at start, with the hidden entry argument
// --connection-process. The new process loads the configuration itself, checks that its
// files still have the digest the supervisor computed, builds its TLS stack, applies the
// same sandbox and waits as a spare. It never loads a private key: keys stay in the key
// process, as in fork mode.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "core/config.h"
#include "core/connection.h"
#include "core/fd.h"

namespace cloister {

// The first argument that selects the entry point of an exec'd connection process.
inline constexpr std::string_view exec_entry_argument = "--connection-process";

// The descriptor numbers an exec'd connection process finds its channels at.
inline constexpr int exec_status_fd = 3;
inline constexpr int exec_key_channel_fd = 4;
inline constexpr int exec_network_fd = 5;  // open only with connection-network = "none"
inline constexpr int exec_first_listener_fd = 6;

// The executable and the config digest that the supervisor prepares at start for
// spawn = "exec".
struct ExecSpawn {
    Fd executable;       // /proc/self/exe, so that a replaced binary on disk changes nothing
    std::string digest;  // of the config file and every certificate chain file, in hex
};

// Opens /proc/self/exe read-only and close-on-exec. Throws Error(system) on failure.
Fd open_own_executable();

// Runs in the forked child. Moves the channels and setup's network namespace descriptor to
// the fixed numbers and closes every other descriptor. Then fexecve()s spawn.executable with
// the entry arguments and an environment reduced to the variables the libraries read (TZ,
// the locale and OpenSSL's). Logs the error and exits with status 1 when a step fails.
[[noreturn]] void exec_connection_process(const ExecSpawn& spawn, const Config& config,
                                          const ConnectionChannels& channels,
                                          const ConnectionSetup& setup) noexcept;

// The entry arguments of an exec'd connection process.
struct ExecArguments {
    std::filesystem::path config;
    std::uint64_t connection_id = 0;
    std::size_t listeners = 0;
    std::string digest;
    bool network_none = false;  // setns into the namespace at exec_network_fd
    bool pid_namespace = false;
    std::optional<uid_t> uid;  // the uid from [sandbox] connection-uids; unset: network-user
};

// Parses argv of an exec'd connection process (argv[1] is exec_entry_argument). Throws
// Error(config) naming the argument that is missing or invalid.
ExecArguments parse_exec_arguments(int argc, char** argv);

// The channels an exec'd connection process inherited at the fixed numbers.
ConnectionChannels inherited_channels(const ExecArguments& arguments);

}  // namespace cloister
