#include "core/key_process_handle.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <utility>

#include "core/child_process.h"
#include "core/key_client.h"
#include "core/key_protocol.h"
#include "core/log.h"
#include "core/process_title.h"
#include "core/sandbox_spawn.h"

namespace cloister {
namespace {

using std::chrono::milliseconds;

// The status run_key_process exits with when a key cannot be loaded.
constexpr int key_load_failure_status = 2;
// How long the key process has to exit after its control channel closes.
constexpr milliseconds key_stop_timeout{5'000};
// How long the start-up check waits for a failing key process to exit.
constexpr milliseconds key_exit_wait{1'000};
// The same wait after a config error, which usually leaves the key process running.
constexpr milliseconds key_exit_wait_config{200};
// The connection id of the start-up check's key channel; connections count from 1.
constexpr std::uint64_t self_check_connection_id = 0;

[[noreturn]] void run_key_child(const Config& config, const SupervisorHooks& hooks,
                                Fd control) noexcept {
    int status = exit_failure;
    try {
        reset_signals_after_fork();
        set_process_title("key");
        init_logging("key", config.server.log_level);
        close_descriptors_except({STDERR_FILENO, control.get()});
        status = hooks.key_process_main(config, std::move(control));
    } catch (const Error& error) {
        spdlog::error("key process failed ({} error): {}", to_string(error.kind()), error.what());
    } catch (const std::exception& error) {
        spdlog::error("key process failed: {}", error.what());
    }
    spdlog::default_logger()->flush();
    _exit(status);
}

}  // namespace

void send_attach(int control_fd, const Fd& channel, std::uint64_t connection_id,
                 std::uint32_t flags) {
    const auto message = keyproto::encode(keyproto::Attach{connection_id, flags});
    // MSG_DONTWAIT: a key process that stops reading must not stall the supervisor.
    const ssize_t sent = send_with_descriptor(control_fd, message, channel.get());
    if (sent != static_cast<ssize_t>(message.size())) {
        throw Error(ErrorKind::io,
                    fmt::format("attaching the key channel of connection {} failed: {}",
                                connection_id, sent < 0 ? std::strerror(errno) : "short send"));
    }
}

KeyProcess start_key_process(const Config& config, const SupervisorHooks& hooks) {
    return start_key_process(config, hooks, false);
}

KeyProcess start_key_process(const Config& config, const SupervisorHooks& hooks,
                             bool pid_namespace) {
    auto [supervisor_end, key_end] = make_seqpacket_pair();
    const pid_t pid = fork_child(pid_namespace);
    if (pid == 0) {
        run_key_child(config, hooks, std::move(key_end));
    }
    spdlog::info("key process {} started", pid);
    return KeyProcess{pid, std::move(supervisor_end), std::chrono::steady_clock::now()};
}

void stop_key_process(KeyProcess& key) noexcept {
    if (!key.running()) {
        return;
    }
    key.control.reset();
    std::optional<int> status = wait_for_exit(key.pid, key_stop_timeout);
    if (!status) {
        spdlog::warn("key process {} did not exit within {} ms; sending SIGKILL", key.pid,
                     key_stop_timeout.count());
        kill(key.pid, SIGKILL);
        status = wait_for_exit(key.pid, key_stop_timeout);
    }
    if (status && !exited_cleanly(*status)) {
        spdlog::warn("key process {} exited ({})", key.pid, describe_wait_status(*status));
    }
    key.pid = -1;
}

void run_self_check(TlsStack& stack, const KeyProcess& key, const Config& config) {
    auto [key_end, client_end] = make_seqpacket_pair();
    send_attach(key.control.get(), key_end, self_check_connection_id,
                keyproto::attach_flag_unlimited);
    key_end.reset();
    KeyClient client(std::move(client_end), config.limits.key_operation_timeout);
    stack.use_key_client(client);
    stack.verify_keys();
    // NOTE: the stack keeps a pointer to client after this returns. The supervisor never
    // starts a session, and each connection process calls use_key_client first.
}

Error check_failure(const Error& error, KeyProcess& key) {
    // A key that fails to load ends the key process with status 2, and the check then finds its
    // channel closed, which the TLS stack may report as a config error too. A config error
    // found by the stack alone leaves the key process running, so it waits less.
    const milliseconds wait =
        error.kind() == ErrorKind::config ? key_exit_wait_config : key_exit_wait;
    const std::optional<int> status = wait_for_exit(key.pid, wait);
    if (!status) {
        stop_key_process(key);
        return error;
    }
    key.pid = -1;
    key.control.reset();
    if (WIFEXITED(*status) && WEXITSTATUS(*status) == key_load_failure_status) {
        return Error(ErrorKind::config,
                     fmt::format("key process exited with status {} during start-up: a key could "
                                 "not be loaded, and its error line above names the key and file",
                                 key_load_failure_status));
    }
    return Error(error.kind(), fmt::format("key process exited ({}) during start-up: {}",
                                           describe_wait_status(*status), error.what()));
}

}  // namespace cloister
