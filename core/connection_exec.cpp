#include "core/connection_exec.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <string>
#include <vector>

#include "core/child_process.h"
#include "core/error.h"

extern char** environ;  // NOLINT(readability-redundant-declaration): POSIX declares it nowhere

namespace cloister {
namespace {

// The environment variables an exec'd connection process keeps: the time zone of log lines,
// the locale, and the files and modules OpenSSL reads while it builds its stack. The rest of
// the supervisor's environment stays out of the new image.
constexpr std::array<std::string_view, 6> kept_variables{
    "TZ=", "LANG=", "OPENSSL_CONF=", "OPENSSL_MODULES=", "SSL_CERT_FILE=", "SSL_CERT_DIR="};

bool kept_variable(std::string_view entry) {
    if (entry.starts_with("LC_")) {
        return true;
    }
    for (const std::string_view prefix : kept_variables) {
        if (entry.starts_with(prefix)) {
            return true;
        }
    }
    return false;
}

// Duplicates fd to a number at or above minimum, close-on-exec.
int duplicate_above(int fd, int minimum) {
    const int copy = fcntl(fd, F_DUPFD_CLOEXEC, minimum);
    if (copy < 0) {
        throw_system_error(fmt::format("duplicating descriptor {}", fd));
    }
    return copy;
}

template <typename Number>
Number parse_number(std::string_view text, std::string_view name) {
    Number value{};
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (error != std::errc() || end != text.data() + text.size()) {
        throw Error(ErrorKind::config,
                    fmt::format("{} {}: invalid {}", exec_entry_argument, text, name));
    }
    return value;
}

// "uid=N" for a process that runs as uid N from [sandbox] connection-uids, "shared-user"
// otherwise.
std::string connection_uid_argument(const Config& config, const ConnectionSetup& setup) {
    if (config.sandbox.connection_uids && setup.sandbox && setup.sandbox->user) {
        return fmt::format("uid={}", setup.sandbox->user->uid);
    }
    return "shared-user";
}

void exec_connection_process_or_throw(const ExecSpawn& spawn, const Config& config,
                                      const ConnectionChannels& channels,
                                      const ConnectionSetup& setup) {
    const int network = setup.sandbox ? setup.sandbox->namespaces.join_network : -1;
    // Targets: exec_status_fd, exec_key_channel_fd, exec_network_fd, then the listeners.
    std::vector<int> sources{channels.status.get(), channels.key_channel.get(), network};
    for (const Listener& listener : channels.listeners) {
        sources.push_back(listener.fd.get());
    }
    // Every source moves above the target range first, so that no dup2 overwrites a source
    // that a later dup2 still reads.
    const int first_free = exec_status_fd + static_cast<int>(sources.size());
    // The executable too: its descriptor may sit inside the target range.
    const int executable = duplicate_above(spawn.executable.get(), first_free);
    std::vector<int> copies;
    for (const int source : sources) {
        copies.push_back(source < 0 ? -1 : duplicate_above(source, first_free));
    }
    std::vector<int> keep{STDERR_FILENO};
    for (std::size_t i = 0; i < copies.size(); ++i) {
        if (copies[i] < 0) {
            continue;
        }
        const int target = exec_status_fd + static_cast<int>(i);
        if (dup2(copies[i], target) < 0) {
            throw_system_error(fmt::format("moving descriptor {} to {}", sources[i], target));
        }
        keep.push_back(target);
    }
    keep.push_back(executable);
    close_descriptors_except(keep);

    std::vector<std::string> arguments{"cloister",
                                       std::string(exec_entry_argument),
                                       config.source.string(),
                                       std::to_string(channels.connection_id),
                                       std::to_string(channels.listeners.size()),
                                       spawn.digest,
                                       network >= 0 ? "none" : "host",
                                       setup.pid_namespace ? "pid-namespace" : "no-pid-namespace",
                                       connection_uid_argument(config, setup)};
    std::vector<char*> argv;
    for (std::string& argument : arguments) {
        argv.push_back(argument.data());
    }
    argv.push_back(nullptr);
    std::vector<char*> envp;
    for (char** entry = environ; *entry != nullptr; ++entry) {
        if (kept_variable(*entry)) {
            envp.push_back(*entry);
        }
    }
    envp.push_back(nullptr);
    fexecve(executable, argv.data(), envp.data());
    throw_system_error("fexecve of the cloister executable");
}

}  // namespace

Fd open_own_executable() {
    Fd fd(open("/proc/self/exe", O_RDONLY | O_CLOEXEC));
    if (!fd) {
        throw_system_error("opening /proc/self/exe for spawn = \"exec\"");
    }
    return fd;
}

[[noreturn]] void exec_connection_process(const ExecSpawn& spawn, const Config& config,
                                          const ConnectionChannels& channels,
                                          const ConnectionSetup& setup) noexcept {
    try {
        exec_connection_process_or_throw(spawn, config, channels, setup);
    } catch (const std::exception& error) {
        spdlog::error("starting connection {} with fexecve failed: {}", channels.connection_id,
                      error.what());
    }
    spdlog::default_logger()->flush();
    _exit(1);
}

ExecArguments parse_exec_arguments(int argc, char** argv) {
    if (argc != 9 || std::string_view(argv[1]) != exec_entry_argument) {
        throw Error(ErrorKind::config,
                    fmt::format("{} is an internal entry point of the supervisor, which passes "
                                "8 arguments; got {}",
                                exec_entry_argument, argc - 1));
    }
    ExecArguments arguments;
    arguments.config = argv[2];
    arguments.connection_id = parse_number<std::uint64_t>(argv[3], "connection id");
    arguments.listeners = parse_number<std::size_t>(argv[4], "listener count");
    arguments.digest = argv[5];
    arguments.network_none = std::string_view(argv[6]) == "none";
    arguments.pid_namespace = std::string_view(argv[7]) == "pid-namespace";
    if (const std::string_view uid = argv[8]; uid.starts_with("uid=")) {
        arguments.uid = parse_number<uid_t>(uid.substr(4), "connection uid");
    }
    return arguments;
}

ConnectionChannels inherited_channels(const ExecArguments& arguments) {
    ConnectionChannels channels;
    channels.status.reset(exec_status_fd);
    channels.key_channel.reset(exec_key_channel_fd);
    channels.connection_id = arguments.connection_id;
    for (std::size_t i = 0; i < arguments.listeners; ++i) {
        const int fd = exec_first_listener_fd + static_cast<int>(i);
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        channels.listeners.push_back(Listener{Fd(fd), format_local_address(fd)});
    }
    fcntl(exec_status_fd, F_SETFD, FD_CLOEXEC);
    fcntl(exec_key_channel_fd, F_SETFD, FD_CLOEXEC);
    return channels;
}

}  // namespace cloister
