#include "core/supervisor.h"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
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
#include <ctime>
#include <map>
#include <optional>
#include <set>
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
#include "core/reload.h"
#include "core/sandbox.h"
#include "core/sandbox_layers.h"
#include "core/sandbox_spawn.h"
#include "core/uid_pool.h"

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
// How long the key process of an old generation has to exit after its control channel
// closes, before SIGKILL.
constexpr milliseconds retired_key_stop_timeout{5'000};
// While no connection uid is free, one log line per interval, and a withheld uid is checked
// again after this long.
constexpr milliseconds uid_wait_interval{10'000};

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

// The current UTC time, such as "2026-01-31T12:00:00Z".
std::string utc_now() {
    return fmt::format("{:%Y-%m-%dT%H:%M:%SZ}", fmt::gmtime(std::time(nullptr)));
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

// ---- generations -----------------------------------------------------------------------

// One loaded configuration and what the supervisor built from it for new connections. A
// reload builds the next generation beside the current one and switches to it only once
// every check has passed.
struct Generation {
    Generation() = default;
    Generation(const Generation&) = delete;
    Generation& operator=(const Generation&) = delete;
    Generation(Generation&&) = delete;
    Generation& operator=(Generation&&) = delete;
    ~Generation() { stop_key_process(key); }

    std::uint64_t number = 0;  // 1 at start, one more with each successful reload
    Config config;
    std::string loaded_at;             // UTC time of the load, for log lines
    std::optional<VhostTable> vhosts;  // outlives stack, which may refer to it
    std::unique_ptr<TlsStack> stack;
    KeyProcess key;
    ConnectionSetup setup;  // the sandbox plan and backend addresses of connection processes
    // [sandbox] connection-uids once checked; a restart-only key, so the same in every
    // generation.
    std::optional<UidRange> connection_uids;
    // The backend table that the broker connects from for this generation's connection
    // processes; unset when setup.brokered is none.
    std::shared_ptr<const BackendTable> brokered_backends;
    std::optional<ExecSpawn> exec;  // set for spawn = "exec"
};

// The key process of an old generation: it serves the key channels of that generation's
// connection processes until the last one exits, then its control channel closes.
struct RetiredKeyProcess {
    std::uint64_t generation = 0;
    KeyProcess key;
    std::optional<Clock::time_point> kill_at;  // set once the control channel is closed
};

// Builds generation number from config: decides the sandbox layers, starts the key process,
// builds the vhost table and the TLS stack, checks every key against its certificate through
// the key process and resolves the backends. Throws the Error of check_failure; the key
// process is stopped by then.
std::unique_ptr<Generation> build_generation(const Config& config, const SupervisorHooks& hooks,
                                             std::uint64_t number, Fd* connection_network) {
    auto generation = std::make_unique<Generation>();
    generation->number = number;
    generation->config = config;
    generation->loaded_at = utc_now();
    SandboxLayers layers = decide_sandbox_layers(
        generation->config, SandboxChecks{.create_root = true, .test_namespaces = true});
    if (layers.connection_network_none && connection_network != nullptr) {
        if (!*connection_network) {
            *connection_network = create_empty_network_namespace();
        }
        layers.connection_network_fd = connection_network->get();
    }
    log_sandbox_layers(layers, generation->config);
    generation->setup.sandbox = connection_sandbox_plan(layers);
    if (generation->config.sandbox.spawn != SpawnMode::exec) {
        // Each forked connection process installs this program instead of building its own.
        precompile_seccomp(*generation->setup.sandbox);
    }
    generation->setup.brokered = brokered_backends(generation->config, layers);
    generation->setup.pid_namespace = layers.pid_namespace;
    generation->connection_uids = layers.connection_uids;
    generation->key = start_key_process(generation->config, hooks, layers.pid_namespace);
    try {
        generation->vhosts.emplace(generation->config.vhosts, generation->config.tls);
        log_vhost_warnings(*generation->vhosts);
        generation->stack = hooks.make_tls_stack(generation->config, *generation->vhosts);
        run_self_check(*generation->stack, generation->key, generation->config);
    } catch (const Error& error) {
        throw check_failure(error, generation->key);
    }
    generation->setup.backends = resolve_backends(generation->config);
    if (generation->config.sandbox.spawn == SpawnMode::exec) {
        generation->exec.emplace(
            ExecSpawn{open_own_executable(), hooks.config_digest(generation->config)});
        generation->setup.brokered = BrokeredBackends::all;
        spdlog::info(R"(spawn = "exec": connection processes start from {} with config digest {})",
                     generation->config.source.string(), generation->exec->digest);
    }
    if (generation->setup.brokered != BrokeredBackends::none) {
        generation->brokered_backends =
            std::make_shared<const BackendTable>(generation->setup.backends);
    }
    return generation;
}

// Logs the failed check of the configuration at start or with --check-config, and returns
// the exit status.
int startup_failure_status(const Error& failure) {
    if (failure.kind() == ErrorKind::config) {
        spdlog::error("{}", failure.what());
        return exit_invalid_config;
    }
    spdlog::error("start-up check failed ({} error): {}", to_string(failure.kind()),
                  failure.what());
    return exit_failure;
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
    std::uint64_t generation = 0;  // the generation it was forked with
    std::optional<uid_t> uid;      // from [sandbox] connection-uids; unset: network-user
    // Its generation's backend table when the supervisor connects its backends, and the
    // connect timeout of that generation.
    std::shared_ptr<const BackendTable> brokered_backends;
    milliseconds backend_connect_timeout{0};
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
        : initial_config_(config), hooks_(hooks) {}
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
        stop_key_process(key());
        for (RetiredKeyProcess& retired : retired_keys_) {
            stop_key_process(retired.key);
        }
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

    // Builds generation 1, whose key process starts before any listener is open, then opens
    // the listeners. Returns non-zero when start-up failed.
    int start() {
        try {
            current_ = build_generation(initial_config_, hooks_, 1, &connection_network_);
        } catch (const Error& error) {
            return startup_failure_status(error);
        }
        if (current_->connection_uids) {
            uids_.emplace(*current_->connection_uids);
        }
        listeners_ = open_listeners(config().listeners);
        for (const Listener& listener : listeners_) {
            spdlog::info("listening on {}", listener.address);
        }
        spdlog::info(
            "cloister {} started: tls-backend={}, {} listeners, {} vhosts, key process "
            "pid {}",
            version(), stack().name(), listeners_.size(), config().vhosts.size(), key().pid);
        return 0;
    }

    // An exec'd connection process has no copy of the resolved backend addresses, so the
    // supervisor connects every backend for it.
    // ---- events ----

    // True when some backend is connected by the supervisor, so busy children may send a
    // request.
    [[nodiscard]] bool stopped() const { return phase_ != Phase::running && children_.empty(); }

    void wait_for_events() {
        std::vector<pollfd> fds{{signals_.get(), POLLIN, 0}};
        std::vector<pid_t> pids;
        // Busy children are polled only for backend requests: otherwise their status sockets
        // carry nothing more, and the hang-up at their exit would wake the loop before SIGCHLD
        // does.
        for (const auto& [pid, child] : children_) {
            const bool busy_polled = child.broker_reading && child.brokered_backends;
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
        for (const RetiredKeyProcess& retired : retired_keys_) {
            consider(retired.kill_at);
        }
        consider(uid_check_at_);
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
        } else if (received > 0 && child.brokered_backends) {
            const auto size = static_cast<std::size_t>(received);
            const BrokerClient client{child.connection_id, child.status.get(),
                                      child.state == ChildState::busy};
            const BrokerVerdict verdict = broker_.handle_message(
                client, std::span(buffer).first(std::min(size, buffer.size())), size,
                *child.brokered_backends, child.backend_connect_timeout);
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
                reload();
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
                if (pid == key().pid) {
                    key_process_exited(status);
                } else if (is_retired_key_process(pid)) {
                    retired_key_process_exited(pid, status);
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
        if (found->second.uid) {
            return_uid(*found->second.uid, pid, id);
        }
        broker_.forget(id);
        children_.erase(found);  // closes the status socket
        stop_idle_key_processes();
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
        const bool died_early = Clock::now() - key().started < key_restart_backoff;
        if (WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS) {
            spdlog::error(
                "key process {} killed by seccomp (SIGSYS): it made a system call that its "
                "filter forbids",
                key().pid);
        }
        if (phase_ == Phase::running) {
            spdlog::error("key process {} exited ({}); restarting", key().pid,
                          describe_wait_status(status));
        } else {
            spdlog::warn("key process {} exited ({})", key().pid, describe_wait_status(status));
        }
        key().pid = -1;
        key().control.reset();
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
            key() = start_key_process(config(), hooks_, setup().pid_namespace);
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
        if (phase_ != Phase::running || !key().running() || spare_retry_at_) {
            return;
        }
        std::size_t spares = count_children().spare;
        while (spares < config().limits.spare_children &&
               children_.size() < config().limits.max_connections) {
            if (!connection_uid_free()) {
                return;
            }
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
        const std::optional<uid_t> uid = uids_ ? uids_->take() : std::nullopt;
        if (uids_ && !uid) {
            // replenish_spares checks connection_uid_free first, so this is a bug; a child
            // without its own uid would run as network-user.
            throw Error(ErrorKind::policy, "no free uid in sandbox.connection-uids");
        }
        try {
            fork_spare_as(uid);
        } catch (const Error&) {
            if (uid) {
                uids_->give_back(*uid);
            }
            throw;
        }
    }

    // Forks a spare that runs as uid, or as network-user when uid is unset.
    void fork_spare_as(std::optional<uid_t> uid) {
        const std::uint64_t id = next_connection_id_++;
        auto [key_end, child_key_end] = make_seqpacket_pair();
        send_attach(key().control.get(), key_end, id, 0);
        key_end.reset();
        auto [status_end, child_status_end] = make_seqpacket_pair();
        const pid_t pid = fork_child(setup().pid_namespace);
        if (pid == 0) {
            // This copy of the supervisor is never used again, so the child takes the
            // listeners over, and its plan takes the uid of this child alone.
            ConnectionSetup child_setup = setup();
            if (uid) {
                assign_connection_uid(*child_setup.sandbox, *uid);
            }
            ConnectionChannels channels{std::move(listeners_), std::move(child_key_end),
                                        std::move(child_status_end), id};
            if (current_->exec) {
                exec_connection_process(*current_->exec, config(), channels, child_setup);
            }
            run_connection_process(config(), stack(), std::move(channels), child_setup);
        }
        if (uid) {
            spdlog::debug("connection process {} (connection {}) holds uid {}", pid, id, *uid);
        }
        Child child;
        child.connection_id = id;
        child.status = std::move(status_end);
        child.generation = current_->number;
        child.uid = uid;
        child.brokered_backends = current_->brokered_backends;
        child.backend_connect_timeout = config().limits.backend_connect_timeout;
        children_.emplace(pid, std::move(child));
    }

    // ---- connection uids ----

    // True when fork_spare can take a connection uid, or none is needed. Otherwise logs once
    // per uid_wait_interval that new connections wait.
    bool connection_uid_free() {
        if (!uids_) {
            return true;
        }
        if (uids_->free_count() > 0) {
            if (uid_wait_logged_) {
                spdlog::info("a connection uid is free again; starting spare connection processes");
                uid_wait_logged_.reset();
            }
            return true;
        }
        const auto now = Clock::now();
        if (!uid_wait_logged_ || now - *uid_wait_logged_ >= uid_wait_interval) {
            spdlog::warn(
                "no free uid in sandbox.connection-uids {}: {} held by connection processes, {} "
                "withheld; no spare is started and new connections wait in the listen backlog",
                uids_->range().to_string(), uids_->held_count(), uids_->withheld().size());
            uid_wait_logged_ = now;
        }
        return false;
    }

    // Returns the uid of reaped connection process pid to the pool. The process was PID 1 of
    // its namespace, so the kernel has ended every process inside it.
    // Keys in the uid's user keyring would outlive the namespace, and so would files and IPC
    // objects. The enforcing connection filter, which connection-uids requires, forbids them.
    void return_uid(uid_t uid, pid_t pid, std::uint64_t id) {
#ifndef NDEBUG
        if (const std::vector<pid_t> left = processes_using_uid(uid); !left.empty()) {
            spdlog::error(
                "connection {}: uid {} of reaped connection process {} is still used by process "
                "{}; keeping the uid out of the pool",
                id, uid, pid, fmt::join(left, ", "));
            uids_->withhold(uid);
            if (!uid_check_at_) {
                uid_check_at_ = Clock::now() + uid_wait_interval;
            }
            return;
        }
#endif
        uids_->give_back(uid);
        spdlog::debug("connection {}: uid {} of reaped connection process {} is free again", id,
                      uid, pid);
    }

    // The processes that use uid, by find_processes_with_id. A failed scan counts as use
    // (pid -1), so that the uid stays out of the pool.
    static std::vector<pid_t> processes_using_uid(uid_t uid) {
        try {
            return find_processes_with_id(uid);
        } catch (const Error& error) {
            spdlog::error("checking which processes use uid {} failed: {}", uid, error.what());
            return {-1};
        }
    }

    // Frees each withheld uid that no process uses any more.
    void recheck_withheld_uids() {
        uid_check_at_.reset();
        const std::set<uid_t> withheld = uids_->withheld();
        for (const uid_t uid : withheld) {
            if (processes_using_uid(uid).empty()) {
                spdlog::info("uid {} is no longer used by any process; it is free again", uid);
                uids_->release_withheld(uid);
            }
        }
        if (!uids_->withheld().empty()) {
            uid_check_at_ = Clock::now() + uid_wait_interval;
        }
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
        if (key().running()) {
            kill(key().pid, SIGUSR1);
        }
        const ChildCounts counts = count_children();
        spdlog::info(
            "connection processes: {} spare, {} busy, {} retiring; {} connections "
            "served; key process pid {}; generation {}, {} older generations draining",
            counts.spare, counts.busy, counts.retiring, served_, key().pid, current_->number,
            retired_keys_.size());
    }

    // ---- reload ----

    // Loads the configuration again and checks all of it beside the current generation:
    // restart-only keys, the vhost table, the TLS stack, a new key process with every key
    // checked against its certificate, and the new listeners. Switches to it only when every
    // step passed; otherwise the current generation keeps serving.
    void reload() {
        if (phase_ != Phase::running) {
            spdlog::info("SIGHUP received during the drain; ignoring the reload request");
            return;
        }
        spdlog::info("reload requested");
        try {
            if (retired_keys_.size() >= max_draining_generations) {
                throw Error(ErrorKind::policy,
                            fmt::format("{} older generations still serve connections, the "
                                        "maximum; send SIGHUP again once one of them has "
                                        "drained",
                                        retired_keys_.size()));
            }
            if (!hooks_.load_config) {
                throw Error(ErrorKind::config,
                            "this supervisor has no configuration file to "
                            "read again");
            }
            const Config next = hooks_.load_config();
            const std::vector<std::string> changes = restart_only_changes(config(), next);
            if (!changes.empty()) {
                throw Error(ErrorKind::config, fmt::format("{}", fmt::join(changes, "; ")));
            }
            std::unique_ptr<Generation> generation =
                build_generation(next, hooks_, current_->number + 1, &connection_network_);
            replace_listeners(generation->config);
            switch_to(std::move(generation));
        } catch (const std::exception& error) {
            spdlog::error(
                "reload failed: {}; keeping the configuration loaded at {} "
                "(generation {})",
                error.what(), current_->loaded_at, current_->number);
        }
    }

    // Makes listeners_ those of config: sockets whose address stays keep serving, new
    // addresses are bound and removed ones close. Binds every new address before it changes
    // anything, so a failed bind throws with listeners_ unchanged.
    void replace_listeners(const Config& next) {
        std::vector<std::string> current;
        for (const Listener& listener : listeners_) {
            current.push_back(listener.address);
        }
        std::vector<std::string> wanted;
        for (const ListenerConfig& listener : next.listeners) {
            wanted.push_back(listener_address(listener.address));
        }
        const ListenerDiff diff = diff_listeners(current, wanted);
        std::vector<std::optional<Listener>> opened(wanted.size());
        for (std::size_t i = 0; i < wanted.size(); ++i) {
            if (!diff.reuse[i]) {
                opened[i] = open_new_listener(next.listeners[i], i, current, wanted, diff);
            }
        }
        std::vector<Listener> listeners;
        for (std::size_t i = 0; i < wanted.size(); ++i) {
            if (diff.reuse[i]) {
                listeners.push_back(std::move(listeners_[*diff.reuse[i]]));
            } else {
                spdlog::info("listening on {}", opened[i]->address);
                listeners.push_back(std::move(*opened[i]));
            }
        }
        for (const std::size_t removed : diff.removed) {
            spdlog::info("closed listener {}: the configuration no longer lists it",
                         listeners_[removed].address);
        }
        // Removed sockets close here; spares of the old generation drop theirs as they retire.
        listeners_ = std::move(listeners);
    }

    // Opens listener, entry index of the new configuration. A bind that one of the current
    // listeners blocks throws with a message that names it instead of another program.
    static Listener open_new_listener(const ListenerConfig& listener, std::size_t index,
                                      const std::vector<std::string>& current,
                                      const std::vector<std::string>& wanted,
                                      const ListenerDiff& diff) {
        try {
            return open_listener(listener, index);
        } catch (const Error& error) {
            const std::optional<std::string> conflict =
                error.error_number() == EADDRINUSE
                    ? own_listener_conflict(current, wanted, diff, index)
                    : std::nullopt;
            if (!conflict) {
                throw;
            }
            throw Error(error.kind(),
                        fmt::format("{}: listener[{}].address: {}", listener.where.to_string(),
                                    index, *conflict),
                        error.error_number());
        }
    }

    // Makes next the generation of new connections. The spares of the old one retire, and
    // its key process serves the old generation's busy connections until they end.
    void switch_to(std::unique_ptr<Generation> next) {
        retire_spares();
        if (key().running()) {
            retired_keys_.push_back(
                RetiredKeyProcess{current_->number, std::exchange(key(), KeyProcess{}), {}});
        }
        if (next->config.server.log_level != config().server.log_level) {
            init_logging("supervisor", next->config.server.log_level);
        }
        current_ = std::move(next);
        key_restart_at_.reset();
        key_backoff_.reset();
        spare_retry_at_.reset();
        spare_backoff_.reset();
        spdlog::info("reloaded: {} listeners, {} vhosts, key process pid {} (generation {})",
                     listeners_.size(), config().vhosts.size(), key().pid, current_->number);
        stop_idle_key_processes();
        if (!retired_keys_.empty()) {
            std::vector<std::string> draining;
            for (const RetiredKeyProcess& retired : retired_keys_) {
                draining.push_back(fmt::format("generation {} ({} connection processes)",
                                               retired.generation,
                                               count_generation(retired.generation)));
            }
            spdlog::info("{} older generations draining (at most {}): {}", draining.size(),
                         max_draining_generations, fmt::join(draining, ", "));
        }
    }

    [[nodiscard]] std::size_t count_generation(std::uint64_t generation) const {
        return static_cast<std::size_t>(std::count_if(
            children_.begin(), children_.end(),
            [generation](const auto& entry) { return entry.second.generation == generation; }));
    }

    // Closes the control channel of each old generation's key process once that generation
    // has no connection process left, so that the key process exits; SIGCHLD reaps it.
    void stop_idle_key_processes() {
        for (RetiredKeyProcess& retired : retired_keys_) {
            if (retired.kill_at || count_generation(retired.generation) != 0) {
                continue;
            }
            spdlog::info(
                "stopping key process {} of generation {}: its last connection has "
                "ended",
                retired.key.pid, retired.generation);
            retired.key.control.reset();
            retired.kill_at = Clock::now() + retired_key_stop_timeout;
        }
    }

    [[nodiscard]] bool is_retired_key_process(pid_t pid) const {
        return std::any_of(
            retired_keys_.begin(), retired_keys_.end(),
            [pid](const RetiredKeyProcess& retired) { return retired.key.pid == pid; });
    }

    // An old generation's key process exited: the current key process is not affected.
    void retired_key_process_exited(pid_t pid, int status) {
        const auto found = std::find_if(
            retired_keys_.begin(), retired_keys_.end(),
            [pid](const RetiredKeyProcess& retired) { return retired.key.pid == pid; });
        if (found->kill_at && exited_cleanly(status)) {
            spdlog::info("key process {} of generation {} stopped", pid, found->generation);
        } else {
            spdlog::warn(
                "key process {} of generation {} exited ({}) with {} connection "
                "processes of its generation left; their key operations fail",
                pid, found->generation, describe_wait_status(status),
                count_generation(found->generation));
        }
        found->key.pid = -1;
        retired_keys_.erase(found);
    }

    // Kills the old generations' key processes that outlived retired_key_stop_timeout after
    // their control channel closed; SIGCHLD then reaps them.
    void kill_late_key_processes(Clock::time_point now) {
        for (RetiredKeyProcess& retired : retired_keys_) {
            if (retired.kill_at && now >= *retired.kill_at) {
                spdlog::warn(
                    "key process {} of generation {} did not exit within {} ms; "
                    "sending SIGKILL",
                    retired.key.pid, retired.generation, retired_key_stop_timeout.count());
                kill(retired.key.pid, SIGKILL);
                retired.kill_at = now + retired_key_stop_timeout;
            }
        }
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
        phase_deadline_ = Clock::now() + config().limits.drain_timeout;
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
        kill_late_key_processes(now);
        if (uid_check_at_ && now >= *uid_check_at_) {
            recheck_withheld_uids();
        }
        broker_.handle_timeouts(now);
        if (phase_ == Phase::draining && now >= phase_deadline_ && !children_.empty()) {
            spdlog::warn(
                "drain timeout of {} ms passed; sending SIGTERM to {} connection "
                "processes",
                config().limits.drain_timeout.count(), children_.size());
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
        for (RetiredKeyProcess& retired : retired_keys_) {
            stop_key_process(retired.key);
        }
        current_.reset();  // stops its key process
    }

    // The generation of new connections and its parts.
    [[nodiscard]] const Config& config() const { return current_->config; }
    [[nodiscard]] KeyProcess& key() { return current_->key; }
    [[nodiscard]] TlsStack& stack() { return *current_->stack; }
    [[nodiscard]] const ConnectionSetup& setup() const { return current_->setup; }

    const Config initial_config_;  // the configuration of generation 1
    const SupervisorHooks& hooks_;
    std::unique_ptr<Generation> current_;
    std::vector<RetiredKeyProcess> retired_keys_;  // of old generations, oldest first
    std::vector<Listener> listeners_;
    Fd signals_;
    std::map<pid_t, Child> children_;
    std::uint64_t next_connection_id_ = 1;
    std::uint64_t served_ = 0;
    Phase phase_ = Phase::running;
    Clock::time_point phase_deadline_;
    std::optional<Clock::time_point> key_restart_at_;
    std::optional<Clock::time_point> spare_retry_at_;
    std::optional<UidPool> uids_;                       // set when [sandbox] connection-uids is
    std::optional<Clock::time_point> uid_wait_logged_;  // the last "no free uid" line
    std::optional<Clock::time_point> uid_check_at_;     // the next check of withheld uids
    Fd connection_network_;  // the empty network namespace of connection-network = "none"
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
    try {
        for (const ListenerConfig& listener : config.listeners) {
            resolve_address(listener.address, true);
        }
        // The root directory is created here too: the temporary key process chroots into it.
        // The generation stops its key process when it goes out of scope.
        const std::unique_ptr<Generation> generation = build_generation(config, hooks, 0, nullptr);
    } catch (const Error& error) {
        return startup_failure_status(error);
    }
    return 0;
}

}  // namespace cloister
