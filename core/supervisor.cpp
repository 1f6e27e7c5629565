#include "core/supervisor.h"

#include <fmt/format.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <map>
#include <optional>
#include <span>
#include <thread>
#include <utility>

#include "core/backend_broker.h"
#include "core/child_process.h"
#include "core/connection.h"
#include "core/connection_exec.h"
#include "core/error.h"
#include "core/key_process_handle.h"
#include "core/listener.h"
#include "core/log.h"
#include "core/process_title.h"
#include "core/sandbox_layers.h"
#include "core/sandbox_spawn.h"

#ifndef CLOISTER_VERSION
#error "CLOISTER_VERSION must be defined by the build"
#endif

namespace cloister {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// A key process that dies sooner than this after its start is restarted after a delay that
// starts at this value and doubles with each early death, up to key_restart_backoff_max.
constexpr milliseconds key_restart_backoff{1'000};
constexpr milliseconds key_restart_backoff_max{60'000};
// Between SIGTERM and SIGKILL for connection processes that outlive the drain.
constexpr milliseconds terminate_grace{1'000};
// After a failed fork of a spare, the next attempt waits this long.
constexpr milliseconds spare_retry_delay{1'000};
// After a spare dies within spare_early_death of its start, before it accepted a client (a
// sandbox step failed, or seccomp killed it), the next spare waits spare_backoff_first,
// doubling with each such death up to spare_backoff_max.
constexpr milliseconds spare_early_death{2'000};
constexpr milliseconds spare_backoff_first{100};
constexpr milliseconds spare_backoff_max{30'000};

// The delay before the next start of a process that keeps failing: first, then doubling up to
// max. reset() returns to no delay.
class RestartBackoff {
  public:
    RestartBackoff(milliseconds first, milliseconds max) : first_(first), max_(max) {}

    // Records a failure and returns the delay before the next start.
    milliseconds fail() {
        delay_ = delay_.count() == 0 ? first_ : std::min(delay_ * 2, max_);
        return delay_;
    }

    void reset() { delay_ = milliseconds(0); }

  private:
    milliseconds first_;
    milliseconds max_;
    milliseconds delay_{0};
};

// A write to a closed socket or pipe (standard error included) then returns EPIPE instead of
// killing the supervisor.
void ignore_sigpipe() {
    if (std::signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
        throw_system_error("ignoring SIGPIPE failed");
    }
}

void log_vhost_warnings(const VhostTable& vhosts) {
    for (const std::string& warning : vhosts.warnings()) {
        spdlog::warn("{}", warning);
    }
}

// Every backend with connection-network = "none"; otherwise the Unix socket backends, whose
// paths the connection processes' chroot hides.
BrokeredBackends brokered_backends(const Config& config, const SandboxLayers& layers) {
    if (layers.connection_network_none) {
        return BrokeredBackends::all;
    }
    const bool unix_backend =
        std::any_of(config.vhosts.begin(), config.vhosts.end(), [](const VhostConfig& vhost) {
            return vhost.backend.kind == SocketAddress::Kind::unix_socket;
        });
    return unix_backend ? BrokeredBackends::unix_sockets : BrokeredBackends::none;
}

// ---- the supervisor --------------------------------------------------------------------

enum class ChildState {
    spare,     // waiting for a client
    busy,      // serving a client
    retiring,  // sent a retire message: it exits unless it accepted a client first
};

struct Child {
    std::uint64_t connection_id = 0;
    Fd status;  // the supervisor's end of the status socket
    ChildState state = ChildState::spare;
    bool status_open = true;     // false once the status socket reported EOF
    bool broker_reading = true;  // false once the broker refused a message from it
    Clock::time_point started = Clock::now();
};

struct ChildCounts {
    std::size_t spare = 0;
    std::size_t busy = 0;
    std::size_t retiring = 0;
};

enum class Phase {
    running,
    draining,     // stop requested: no new clients, live connections may finish
    terminating,  // the drain timed out: SIGTERM was sent
    killing,      // SIGKILL was sent
};

class Supervisor {
  public:
    Supervisor(const Config& config, const SupervisorHooks& hooks)
        : config_(config), hooks_(hooks) {}
    Supervisor(const Supervisor&) = delete;
    Supervisor& operator=(const Supervisor&) = delete;
    Supervisor(Supervisor&&) = delete;
    Supervisor& operator=(Supervisor&&) = delete;
    // Kills whatever is still running when an error ends the supervisor early.
    ~Supervisor() { kill_everything(); }

    int run() {
        signals_ = open_signal_fd();
        set_process_title("supervisor");
        const int status = start();
        if (status != 0) {
            return status;
        }
        while (!stopped()) {
            replenish_spares();
            wait_for_events();
            handle_timers();
        }
        stop_key_process(key_);
        spdlog::info("stopped");
        return 0;
    }

  private:
    // ---- start-up ----

    static Fd open_signal_fd() {
        ignore_sigpipe();
        sigset_t set;
        sigemptyset(&set);
        for (const int signal_number : {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR1}) {
            sigaddset(&set, signal_number);
        }
        if (sigprocmask(SIG_BLOCK, &set, nullptr) != 0) {
            throw_system_error("sigprocmask failed");
        }
        Fd fd(signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
        if (!fd) {
            throw_system_error("signalfd failed");
        }
        return fd;
    }

    // Decides the sandbox layers, starts the key process before any listener is open, builds
    // and checks the TLS stack, then opens the listeners. Returns non-zero when start-up
    // failed.
    int start() {
        SandboxLayers layers = decide_sandbox_layers(
            config_, SandboxChecks{.create_root = true, .test_namespaces = true});
        if (layers.connection_network_none) {
            connection_network_ = create_empty_network_namespace();
            layers.connection_network_fd = connection_network_.get();
        }
        log_sandbox_layers(layers, config_);
        setup_.sandbox = connection_sandbox_plan(layers);
        setup_.brokered = brokered_backends(config_, layers);
        setup_.pid_namespace = layers.pid_namespace;
        key_ = start_key_process(config_, hooks_, setup_.pid_namespace);
        try {
            vhosts_.emplace(config_.vhosts, config_.tls);
            log_vhost_warnings(*vhosts_);
            stack_ = hooks_.make_tls_stack(config_, *vhosts_);
            run_self_check(*stack_, key_, config_);
        } catch (const Error& error) {
            return startup_failure_status(error, key_);
        }
        setup_.backends = resolve_backends(config_);
        if (config_.sandbox.spawn == SpawnMode::exec) {
            prepare_exec_spawn();
        }
        listeners_ = open_listeners(config_.listeners);
        for (const Listener& listener : listeners_) {
            spdlog::info("listening on {}", listener.address);
        }
        spdlog::info(
            "cloister {} started: tls-backend={}, {} listeners, {} vhosts, key process "
            "pid {}",
            version(), stack_->name(), listeners_.size(), config_.vhosts.size(), key_.pid);
        return 0;
    }

    // An exec'd connection process has no copy of the resolved backend addresses, so the
    // supervisor connects every backend for it.
    void prepare_exec_spawn() {
        exec_.emplace(ExecSpawn{open_own_executable(), hooks_.config_digest(config_)});
        setup_.brokered = BrokeredBackends::all;
        spdlog::info("spawn = \"exec\": connection processes start from {} with config digest {}",
                     config_.source.string(), exec_->digest);
    }

    // ---- events ----

    // True when some backend is connected by the supervisor, so busy children may send a
    // request.
    [[nodiscard]] bool brokers_backends() const {
        return setup_.brokered != BrokeredBackends::none;
    }

    [[nodiscard]] bool stopped() const { return phase_ != Phase::running && children_.empty(); }

    void wait_for_events() {
        std::vector<pollfd> fds{{signals_.get(), POLLIN, 0}};
        std::vector<pid_t> pids;
        // Busy children are polled only for backend requests: otherwise their status sockets
        // carry nothing more, and the hang-up at their exit would wake the loop before SIGCHLD
        // does.
        for (const auto& [pid, child] : children_) {
            const bool busy_polled = child.broker_reading && brokers_backends();
            if ((child.state != ChildState::busy || busy_polled) && child.status_open) {
                fds.push_back({child.status.get(), POLLIN, 0});
                pids.push_back(pid);
            }
        }
        const std::size_t broker_first = fds.size();
        broker_.poll_fds(fds);
        if (poll(fds.data(), fds.size(), next_timeout()) < 0) {
            if (errno == EINTR) {
                return;
            }
            throw_system_error("poll failed");
        }
        // Status messages first: a child that accepted and exited at once is counted.
        for (std::size_t i = 1; i < broker_first; ++i) {
            if (fds[i].revents != 0) {
                read_status(pids[i - 1]);
            }
        }
        broker_.handle_poll(std::span(fds).subspan(broker_first));
        if (fds[0].revents != 0) {
            handle_signals();
        }
    }

    // Milliseconds until the next timer, or -1 for none.
    [[nodiscard]] int next_timeout() const {
        std::optional<Clock::time_point> next;
        const auto consider = [&next](std::optional<Clock::time_point> when) {
            if (when && (!next || *when < *next)) {
                next = when;
            }
        };
        consider(key_restart_at_);
        consider(spare_retry_at_);
        consider(broker_.next_deadline());
        if (phase_ == Phase::draining || phase_ == Phase::terminating) {
            consider(phase_deadline_);
        }
        if (!next) {
            return -1;
        }
        const auto left = std::chrono::ceil<milliseconds>(*next - Clock::now()).count();
        return static_cast<int>(std::max<std::int64_t>(left, 0));
    }

    void read_status(pid_t pid) {
        const auto found = children_.find(pid);
        if (found == children_.end()) {
            return;
        }
        Child& child = found->second;
        std::array<std::uint8_t, backend_message_size> buffer{};
        // MSG_TRUNC: the size of the whole message, even when it is longer than the buffer.
        const ssize_t received =
            recv(child.status.get(), buffer.data(), buffer.size(), MSG_DONTWAIT | MSG_TRUNC);
        const std::uint8_t message = buffer[0];
        if (received == 1 && message == static_cast<std::uint8_t>(StatusMessage::accepted)) {
            child.state = ChildState::busy;
            ++served_;
            spare_backoff_.reset();
        } else if (received == 0 || (received < 0 && errno != EAGAIN && errno != EINTR)) {
            // The child is exiting; SIGCHLD follows and reaps it.
            child.status_open = false;
        } else if (received > 0 && brokers_backends()) {
            const auto size = static_cast<std::size_t>(received);
            const BrokerClient client{child.connection_id, child.status.get(),
                                      child.state == ChildState::busy};
            const BrokerVerdict verdict = broker_.handle_message(
                client, std::span(buffer).first(std::min(size, buffer.size())), size,
                setup_.backends, config_.limits.backend_connect_timeout);
            child.broker_reading = verdict == BrokerVerdict::keep_reading;
        } else if (received == 1) {
            spdlog::warn("connection process {} sent an unknown status message {:#04x}", pid,
                         message);
        }
    }

    void handle_signals() {
        signalfd_siginfo info{};
        while (read(signals_.get(), &info, sizeof(info)) == sizeof(info)) {
            handle_signal(static_cast<int>(info.ssi_signo));
        }
    }

    void handle_signal(int signal_number) {
        switch (signal_number) {
            case SIGCHLD:
                reap_children();
                break;
            case SIGTERM:
            case SIGINT:
                begin_stop(signal_number);
                break;
            case SIGHUP:
                // NOTE: reload is not implemented; a restart applies a changed config.
                spdlog::warn("reload is not supported yet; restart to apply config changes");
                break;
            case SIGUSR1:
                report_counts();
                break;
            default:
                break;
        }
    }

    // ---- children ----

    void reap_children() {
        for (;;) {
            int status = 0;
            const pid_t pid = waitpid(-1, &status, WNOHANG);
            if (pid < 0 && errno == EINTR) {
                continue;
            }
            if (pid <= 0) {
                return;
            }
            try {
                if (pid == key_.pid) {
                    key_process_exited(status);
                } else {
                    connection_process_exited(pid, status);
                }
            } catch (const Error& error) {
                spdlog::error("handling the exit of process {} failed: {}", pid, error.what());
            }
        }
    }

    void connection_process_exited(pid_t pid, int status) {
        const auto found = children_.find(pid);
        if (found == children_.end()) {
            spdlog::debug("reaped process {}, which is not a connection process", pid);
            return;
        }
        const std::uint64_t id = found->second.connection_id;
        if (WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS) {
            // The process's own last line names the system call (core/sandbox_sigsys.h).
            spdlog::error(
                "connection {} killed by seccomp (SIGSYS): connection process {} made a system "
                "call that its filter forbids",
                id, pid);
        } else if (stopped_by_supervisor(status)) {
            spdlog::info("connection process {} (connection {}) exited ({})", pid, id,
                         describe_wait_status(status));
        } else if (!exited_cleanly(status)) {
            spdlog::warn("connection process {} (connection {}) exited ({})", pid, id,
                         describe_wait_status(status));
        }
        if (found->second.state == ChildState::spare && !exited_cleanly(status) &&
            !stopped_by_supervisor(status)) {
            spare_failed(pid, found->second);
        }
        broker_.forget(id);
        children_.erase(found);  // closes the status socket
    }

    // A spare that failed right after its start will most likely fail again, so the next
    // spares wait instead of being forked in a tight loop.
    void spare_failed(pid_t pid, const Child& child) {
        if (Clock::now() - child.started >= spare_early_death) {
            spare_backoff_.reset();
            return;
        }
        const milliseconds delay = spare_backoff_.fail();
        spdlog::warn(
            "connection process {} failed within {} ms of its start, before it accepted a "
            "client; starting the next spare in {} ms",
            pid, spare_early_death.count(), delay.count());
        spare_retry_at_ = Clock::now() + delay;
    }

    // True for a child that the stop sequence ended with its own SIGTERM or SIGKILL. PID 1 of
    // a PID namespace reports SIGTERM as an exit status (exit_on_stop_signals).
    [[nodiscard]] bool stopped_by_supervisor(int status) const {
        const bool exited_on_sigterm =
            WIFEXITED(status) && WEXITSTATUS(status) == stop_signal_exit_status(SIGTERM);
        if (exited_on_sigterm) {
            return phase_ == Phase::terminating || phase_ == Phase::killing;
        }
        if (!WIFSIGNALED(status)) {
            return false;
        }
        const int signal_number = WTERMSIG(status);
        return (phase_ == Phase::terminating && signal_number == SIGTERM) ||
               (phase_ == Phase::killing && (signal_number == SIGTERM || signal_number == SIGKILL));
    }

    void key_process_exited(int status) {
        const bool died_early = Clock::now() - key_.started < key_restart_backoff;
        if (WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS) {
            spdlog::error(
                "key process {} killed by seccomp (SIGSYS): it made a system call that its "
                "filter forbids",
                key_.pid);
        }
        if (phase_ == Phase::running) {
            spdlog::error("key process {} exited ({}); restarting", key_.pid,
                          describe_wait_status(status));
        } else {
            spdlog::warn("key process {} exited ({})", key_.pid, describe_wait_status(status));
        }
        key_.pid = -1;
        key_.control.reset();
        // Spares hold channels to the dead key process, so new ones replace them. Busy
        // connections keep their channel: a key operation on it fails, and so does the
        // handshake that needed it.
        retire_spares();
        if (!died_early) {
            key_backoff_.reset();
        }
        if (phase_ == Phase::running) {
            const milliseconds delay = died_early ? key_backoff_.fail() : milliseconds(0);
            if (died_early) {
                spdlog::warn("key process died within {} ms of its start; restarting in {} ms",
                             key_restart_backoff.count(), delay.count());
            }
            key_restart_at_ = Clock::now() + delay;
        }
    }

    void restart_key_process() {
        key_restart_at_.reset();
        try {
            key_ = start_key_process(config_, hooks_, setup_.pid_namespace);
        } catch (const Error& error) {
            spdlog::error("restarting the key process failed: {}; retrying in {} ms", error.what(),
                          key_restart_backoff.count());
            key_restart_at_ = Clock::now() + key_restart_backoff;
        }
    }

    [[nodiscard]] ChildCounts count_children() const {
        ChildCounts counts;
        for (const auto& [pid, child] : children_) {
            switch (child.state) {
                case ChildState::spare:
                    ++counts.spare;
                    break;
                case ChildState::busy:
                    ++counts.busy;
                    break;
                case ChildState::retiring:
                    ++counts.retiring;
                    break;
            }
        }
        return counts;
    }

    // Forks spares until spare-children wait or max-connections processes exist. Retiring
    // children count against max-connections until they exit.
    void replenish_spares() {
        if (phase_ != Phase::running || !key_.running() || spare_retry_at_) {
            return;
        }
        std::size_t spares = count_children().spare;
        while (spares < config_.limits.spare_children &&
               children_.size() < config_.limits.max_connections) {
            try {
                fork_spare();
            } catch (const Error& error) {
                spdlog::error("starting a spare connection process failed: {}; retrying in {} ms",
                              error.what(), spare_retry_delay.count());
                spare_retry_at_ = Clock::now() + spare_retry_delay;
                return;
            }
            ++spares;
        }
    }

    void fork_spare() {
        const std::uint64_t id = next_connection_id_++;
        auto [key_end, child_key_end] = make_seqpacket_pair();
        send_attach(key_.control.get(), key_end, id, 0);
        key_end.reset();
        auto [status_end, child_status_end] = make_seqpacket_pair();
        const pid_t pid = fork_child(setup_.pid_namespace);
        if (pid == 0) {
            // This copy of the supervisor is never used again, so the child takes the
            // listeners over.
            ConnectionChannels channels{std::move(listeners_), std::move(child_key_end),
                                        std::move(child_status_end), id};
            if (exec_) {
                exec_connection_process(*exec_, config_, channels, setup_);
            }
            run_connection_process(config_, *stack_, std::move(channels), setup_);
        }
        children_.emplace(pid, Child{id, std::move(status_end), ChildState::spare, true});
    }

    // Tells every spare to exit; one that accepted a client meanwhile serves it.
    void retire_spares() {
        const auto message = static_cast<std::uint8_t>(StatusMessage::retire);
        for (auto& [pid, child] : children_) {
            if (child.state == ChildState::spare) {
                // A failed send means the child is already exiting.
                send(child.status.get(), &message, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
                child.state = ChildState::retiring;
            }
        }
    }

    void signal_children(int signal_number) {
        for (const auto& [pid, child] : children_) {
            kill(pid, signal_number);
        }
    }

    void report_counts() {
        if (key_.running()) {
            kill(key_.pid, SIGUSR1);
        }
        const ChildCounts counts = count_children();
        spdlog::info(
            "connection processes: {} spare, {} busy, {} retiring; {} connections "
            "served; key process pid {}",
            counts.spare, counts.busy, counts.retiring, served_, key_.pid);
    }

    // ---- stopping ----

    void begin_stop(int signal_number) {
        if (phase_ != Phase::running) {
            // A second stop signal skips the rest of the drain.
            if (phase_ == Phase::draining) {
                spdlog::info("{} received again; ending the drain now", signal_name(signal_number));
                phase_deadline_ = Clock::now();
            }
            return;
        }
        const ChildCounts counts = count_children();
        spdlog::info("{} received; stopping: draining {} connections", signal_name(signal_number),
                     counts.busy);
        phase_ = Phase::draining;
        phase_deadline_ = Clock::now() + config_.limits.drain_timeout;
        listeners_.clear();
        retire_spares();
        key_restart_at_.reset();
        spare_retry_at_.reset();
    }

    void handle_timers() {
        const auto now = Clock::now();
        if (key_restart_at_ && now >= *key_restart_at_) {
            restart_key_process();
        }
        if (spare_retry_at_ && now >= *spare_retry_at_) {
            spare_retry_at_.reset();
        }
        broker_.handle_timeouts(now);
        if (phase_ == Phase::draining && now >= phase_deadline_ && !children_.empty()) {
            spdlog::warn(
                "drain timeout of {} ms passed; sending SIGTERM to {} connection "
                "processes",
                config_.limits.drain_timeout.count(), children_.size());
            signal_children(SIGTERM);
            phase_ = Phase::terminating;
            phase_deadline_ = now + terminate_grace;
        } else if (phase_ == Phase::terminating && now >= phase_deadline_ && !children_.empty()) {
            spdlog::warn("sending SIGKILL to {} connection processes", children_.size());
            signal_children(SIGKILL);
            phase_ = Phase::killing;
        }
    }

    void kill_everything() noexcept {
        for (const auto& [pid, child] : children_) {
            kill(pid, SIGKILL);
        }
        for (const auto& [pid, child] : children_) {
            waitpid(pid, nullptr, 0);
        }
        children_.clear();
        stop_key_process(key_);
    }

    const Config& config_;
    const SupervisorHooks& hooks_;
    std::optional<VhostTable> vhosts_;  // outlives stack_, which may refer to it
    std::unique_ptr<TlsStack> stack_;
    KeyProcess key_;
    std::vector<Listener> listeners_;
    Fd signals_;
    std::map<pid_t, Child> children_;
    std::uint64_t next_connection_id_ = 1;
    std::uint64_t served_ = 0;
    Phase phase_ = Phase::running;
    Clock::time_point phase_deadline_;
    std::optional<Clock::time_point> key_restart_at_;
    std::optional<Clock::time_point> spare_retry_at_;
    ConnectionSetup setup_;  // the sandbox plan and backend addresses of connection processes
    Fd connection_network_;  // the empty network namespace of connection-network = "none"
    std::optional<ExecSpawn> exec_;  // set for spawn = "exec"
    BackendBroker broker_;
    RestartBackoff spare_backoff_{spare_backoff_first, spare_backoff_max};
    RestartBackoff key_backoff_{key_restart_backoff, key_restart_backoff_max};
};

}  // namespace

const char* version() noexcept {
    return CLOISTER_VERSION;
}

int run_supervisor(const Config& config, const SupervisorHooks& hooks) {
    Supervisor supervisor(config, hooks);
    return supervisor.run();
}

int check_config(const Config& config, const SupervisorHooks& hooks) {
    ignore_sigpipe();
    // The root directory is created here too: the temporary key process chroots into it.
    const SandboxLayers layers =
        decide_sandbox_layers(config, SandboxChecks{.create_root = true, .test_namespaces = true});
    log_sandbox_layers(layers, config);
    KeyProcess key = start_key_process(config, hooks, layers.pid_namespace);
    int status = 0;
    try {
        for (const ListenerConfig& listener : config.listeners) {
            resolve_address(listener.address, true);
        }
        const VhostTable vhosts(config.vhosts, config.tls);
        log_vhost_warnings(vhosts);
        const std::unique_ptr<TlsStack> stack = hooks.make_tls_stack(config, vhosts);
        run_self_check(*stack, key, config);
    } catch (const Error& error) {
        status = startup_failure_status(error, key);
    }
    stop_key_process(key);
    return status;
}

}  // namespace cloister
