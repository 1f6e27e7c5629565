#include "core/connection.h"

#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <thread>
#include <utility>

#include "core/backend_broker.h"
#include "core/child_process.h"
#include "core/error.h"
#include "core/key_client.h"
#include "core/log.h"
#include "core/log_field.h"
#include "core/process_title.h"
#include "core/proxy.h"
#include "core/sandbox_sigsys.h"
#include "core/sandbox_spawn.h"

namespace cloister {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// How long to wait after accept() failed for lack of descriptors or memory.
constexpr milliseconds accept_retry_delay{100};
// At most one log line per this interval for repeated accept() failures.
constexpr std::chrono::seconds accept_log_interval{10};
// How long a close_notify may wait for the socket to become writable.
constexpr milliseconds close_notify_timeout{1'000};
// How long the client's bytes are read and dropped after the reply, when the backend stopped
// taking them (lingering close).
constexpr milliseconds linger_timeout{5'000};

// ---- waiting with a deadline ----------------------------------------------------------

// Waits until fd reports one of events (or an error or hang-up). Returns false when
// deadline passes first.
bool wait_until(int fd, short events, Clock::time_point deadline) {
    for (;;) {
        const auto left = std::chrono::ceil<milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) {
            return false;
        }
        pollfd entry{fd, events, 0};
        const int ready = poll(&entry, 1, static_cast<int>(left.count()));
        if (ready > 0) {
            return true;
        }
        if (ready < 0 && errno != EINTR) {
            throw_system_error("poll failed");
        }
    }
}

short wait_events(IoStatus status) {
    return status == IoStatus::want_write ? POLLOUT : POLLIN;
}

// ---- waiting as a spare and accepting -------------------------------------------------

struct AcceptedClient {
    Fd fd;
    std::string peer;
};

// accept() errors that concern one pending connection, not the listener: retry at once.
bool is_transient_accept_error(int error) {
    switch (error) {
        case EAGAIN:
        case ECONNABORTED:
        case EINTR:
        case EPROTO:
        case EPERM:
        case ENETDOWN:
        case ENOPROTOOPT:
        case EHOSTDOWN:
        case ENONET:
        case EHOSTUNREACH:
        case EOPNOTSUPP:
        case ENETUNREACH:
            return true;
        default:
            return false;
    }
}

bool is_resource_accept_error(int error) {
    return error == EMFILE || error == ENFILE || error == ENOBUFS || error == ENOMEM;
}

// Logs repeated accept() failures at most once per accept_log_interval.
class AcceptFailureLog {
  public:
    void record(const Listener& listener, int error) {
        ++suppressed_;
        const auto now = Clock::now();
        if (now - last_logged_ < accept_log_interval) {
            return;
        }
        spdlog::warn(
            "accept on {} failed: {}; retrying every {} ms ({} failures since the "
            "last message)",
            listener.address, std::strerror(error), accept_retry_delay.count(), suppressed_);
        last_logged_ = now;
        suppressed_ = 0;
    }

  private:
    Clock::time_point last_logged_{};
    unsigned long suppressed_ = 0;
};

// Accepts one client from listener. Returns nothing when another process took the client
// or the error concerns only that client.
std::optional<AcceptedClient> try_accept(const Listener& listener, AcceptFailureLog& log) {
    sockaddr_storage address{};
    socklen_t length = sizeof(address);
    Fd client(accept4(listener.fd.get(), reinterpret_cast<sockaddr*>(&address), &length,
                      SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (client) {
        set_no_delay(client.get());
        return AcceptedClient{std::move(client),
                              format_address(reinterpret_cast<sockaddr*>(&address), length)};
    }
    const int error = errno;
    if (is_resource_accept_error(error)) {
        // Never fatal: the process waits and tries again until descriptors free up.
        log.record(listener, error);
        std::this_thread::sleep_for(accept_retry_delay);
        return std::nullopt;
    }
    if (is_transient_accept_error(error)) {
        return std::nullopt;
    }
    errno = error;
    throw_system_error("accept on " + listener.address + " failed");
}

// Waits for a client on any listener. Returns nothing when the status socket becomes
// readable first: a retire message from the supervisor, or EOF because it is gone.
std::optional<AcceptedClient> wait_for_client(const std::vector<Listener>& listeners,
                                              int status_fd) {
    std::vector<pollfd> fds;
    fds.push_back({status_fd, POLLIN, 0});
    for (const Listener& listener : listeners) {
        fds.push_back({listener.fd.get(), POLLIN, 0});
    }
    AcceptFailureLog failure_log;
    for (;;) {
        if (poll(fds.data(), fds.size(), -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            throw_system_error("poll on listeners failed");
        }
        if (fds[0].revents != 0) {
            return std::nullopt;
        }
        for (std::size_t i = 1; i < fds.size(); ++i) {
            if ((fds[i].revents & POLLIN) == 0) {
                continue;
            }
            if (auto client = try_accept(listeners[i - 1], failure_log)) {
                return client;
            }
        }
    }
}

void send_status(int status_fd, StatusMessage message) {
    const auto byte = static_cast<std::uint8_t>(message);
    if (send(status_fd, &byte, 1, MSG_NOSIGNAL) != 1) {
        // The supervisor is gone; the client is still served.
        spdlog::warn("status message to the supervisor failed: {}", std::strerror(errno));
    }
}

// Confines the process with setup's plan. Everything it reads from the file system (the TLS
// stack's certificates, the logger, the time zone) was loaded before.
void confine_connection_process(const ConnectionSetup& setup, std::uint64_t connection_id) {
    if (setup.pid_namespace) {
        exit_on_stop_signals();
    }
    if (setup.sandbox) {
        set_sigsys_report_label(fmt::format("connection {}", connection_id));
        apply_sandbox(*setup.sandbox);
    }
}

// Applies the child set-up steps in order and keeps only the descriptors this process
// needs: stderr, the listeners, the key channel and the status socket.
void prepare_connection_process(const Config& config, TlsStack& stack,
                                const ConnectionChannels& channels, const ConnectionSetup& setup) {
    reset_signals_after_fork();
    set_process_title("connection (spare)");
    init_logging("connection", config.server.log_level);
    stack.reseed_after_fork();
    std::vector<int> keep{STDERR_FILENO, channels.key_channel.get(), channels.status.get()};
    for (const Listener& listener : channels.listeners) {
        keep.push_back(listener.fd.get());
    }
    const int network_fd = setup.sandbox ? setup.sandbox->namespaces.join_network : -1;
    if (network_fd >= 0) {
        keep.push_back(network_fd);
    }
    close_descriptors_except(std::move(keep));
    confine_connection_process(setup, channels.connection_id);
    if (network_fd >= 0) {
        ::close(network_fd);
    }
}

ConnectionSummary serve_client(const Config& config, TlsStack& stack, int client_fd,
                               std::string peer, std::uint64_t connection_id,
                               const ConnectionSetup& setup, int status_fd);

int connection_process_main(const Config& config, TlsStack& stack, ConnectionChannels channels,
                            const ConnectionSetup& setup) {
    prepare_connection_process(config, stack, channels, setup);
    std::optional<AcceptedClient> client =
        wait_for_client(channels.listeners, channels.status.get());
    if (!client) {
        return 0;
    }
    send_status(channels.status.get(), StatusMessage::accepted);
    channels.listeners.clear();
    set_log_connection(channels.connection_id);
    set_process_title(fmt::format("connection {} {}", channels.connection_id, client->peer));
    spdlog::debug("accepted a connection from {}", client->peer);

    KeyClient key_client(std::move(channels.key_channel), config.limits.key_operation_timeout);
    stack.use_key_client(key_client);
    const ConnectionSummary summary =
        serve_client(config, stack, client->fd.get(), client->peer, channels.connection_id, setup,
                     channels.status.get());
    spdlog::info("{}", format_summary(summary));
    return 0;
}

// ---- one TLS connection ---------------------------------------------------------------

// Describes a handshake step that neither finished nor asked to wait.
std::string describe_handshake_failure(const IoResult& result) {
    switch (result.status) {
        case IoStatus::closed:
            return "client sent close_notify during the handshake";
        case IoStatus::truncated:
            return "client closed the connection during the handshake";
        default:
            return result.error.empty() ? std::string("TLS handshake failed") : result.error;
    }
}

class Connection {
  public:
    // setup: the backend addresses and the brokered backends, or nullptr to resolve the
    // vhost's backend when connecting. status_fd: the status socket, for brokered backends.
    Connection(const Config& config, TlsStack& stack, int client_fd, std::string peer,
               std::uint64_t connection_id, const ConnectionSetup* setup = nullptr,
               int status_fd = -1)
        : config_(config),
          stack_(stack),
          client_fd_(client_fd),
          connection_id_(connection_id),
          setup_(setup),
          status_fd_(status_fd),
          started_(Clock::now()) {
        summary_.peer = std::move(peer);
    }

    ConnectionSummary run() {
        session_ = stack_.new_session(client_fd_, connection_id_);
        if (handshake()) {
            record_handshake_info();
            relay();
        }
        summary_.duration = std::chrono::duration_cast<milliseconds>(Clock::now() - started_);
        return summary_;
    }

  private:
    // Runs the handshake under one deadline that each received byte does not reset, with
    // alarm() as a backstop in case a single step blocks. Returns true when it finished.
    bool handshake() {
        const milliseconds timeout = config_.limits.handshake_timeout;
        const auto deadline = Clock::now() + timeout;
        alarm(static_cast<unsigned>(std::chrono::ceil<std::chrono::seconds>(timeout).count() + 1));
        const bool finished = handshake_until(deadline);
        alarm(0);
        return finished;
    }

    bool handshake_until(Clock::time_point deadline) {
        for (;;) {
            const IoResult result = session_->handshake();
            if (result.status == IoStatus::done) {
                return true;
            }
            if (result.status != IoStatus::want_read && result.status != IoStatus::want_write) {
                handshake_failed(result);
                return false;
            }
            if (!wait_until(client_fd_, wait_events(result.status), deadline)) {
                const auto timeout = config_.limits.handshake_timeout.count();
                spdlog::info("handshake timed out after {} ms", timeout);
                finish(ConnectionResult::handshake_timeout,
                       fmt::format("no complete handshake within {} ms", timeout));
                return false;
            }
        }
    }

    void handshake_failed(const IoResult& result) {
        const std::string reason = describe_handshake_failure(result);
        // The stacks record the SNI from the ClientHello, so a failure after it still names it.
        summary_.sni = session_->info().sni;
        if (result.status == IoStatus::failed) {
            spdlog::warn("handshake failed: {}", reason);
        } else {
            spdlog::info("handshake failed: {}", reason);
        }
        finish(ConnectionResult::handshake_failed, reason);
    }

    void record_handshake_info() {
        const HandshakeInfo info = session_->info();
        summary_.sni = info.sni;
        summary_.protocol = info.protocol;
        summary_.cipher = info.cipher;
        summary_.scheme = info.signature_scheme;
        summary_.alpn = info.alpn;
        vhost_index_ = info.vhost_index;
        summary_.vhost = config_.vhosts.at(vhost_index_).name;
    }

    void relay() {
        const SocketAddress& backend = config_.vhosts.at(vhost_index_).backend;
        Fd backend_fd;
        try {
            backend_fd = connect_to_backend();
        } catch (const Error& error) {
            spdlog::warn("backend {} unreachable: {}", backend.text, error.what());
            send_close_notify();
            finish(ConnectionResult::backend_unreachable,
                   "backend " + backend.text + " unreachable: " + error.what());
            return;
        }
        const ProxyOptions options{config_.limits.buffer_size, config_.limits.idle_timeout};
        const ProxyResult result = run_proxy(*session_, client_fd_, backend_fd.get(), options);
        summary_.bytes_in = result.bytes_in;
        summary_.bytes_out = result.bytes_out;
        record_proxy_end(result);
        if (result.client_input_dropped) {
            linger();
        }
    }

    // Sends FIN after the reply and any close_notify, then reads and drops the client's bytes
    // until its EOF, an error or linger_timeout. Closing with unread bytes would make the
    // kernel send a reset, and a client that is still sending would lose the end of the reply.
    void linger() {
        if (shutdown(client_fd_, SHUT_WR) != 0) {
            spdlog::debug("lingering close skipped: shutdown failed: {}", std::strerror(errno));
            return;
        }
        const auto deadline = Clock::now() + linger_timeout;
        std::array<char, 4096> scratch{};
        std::uint64_t dropped = 0;
        while (wait_until(client_fd_, POLLIN, deadline)) {
            const ssize_t count = read(client_fd_, scratch.data(), scratch.size());
            if (count > 0) {
                dropped += static_cast<std::uint64_t>(count);
                continue;
            }
            if (count < 0 && (errno == EAGAIN || errno == EINTR)) {
                continue;
            }
            if (count < 0) {
                spdlog::debug("lingering close ended: read failed: {}", std::strerror(errno));
            }
            break;
        }
        spdlog::debug("dropped {} bytes from the client after the reply", dropped);
    }

    Fd connect_to_backend() {
        const milliseconds timeout = config_.limits.backend_connect_timeout;
        const SocketAddress& backend = config_.vhosts.at(vhost_index_).backend;
        if (setup_ != nullptr && brokered(setup_->brokered, backend)) {
            return request_backend(status_fd_, static_cast<std::uint32_t>(vhost_index_), timeout);
        }
        if (setup_ == nullptr || setup_->backends.empty()) {
            return connect_backend(backend, timeout);
        }
        return connect_backend(setup_->backends.at(vhost_index_), timeout);
    }

    static bool brokered(BrokeredBackends brokered, const SocketAddress& backend) {
        return brokered == BrokeredBackends::all ||
               (brokered == BrokeredBackends::unix_sockets &&
                backend.kind == SocketAddress::Kind::unix_socket);
    }

    void record_proxy_end(const ProxyResult& result) {
        switch (result.end) {
            case ProxyEnd::finished:
                if (result.client_truncated) {
                    finish(ConnectionResult::truncated, "client closed without close_notify");
                }
                break;
            case ProxyEnd::idle_timeout:
                spdlog::info("no data in either direction for {} ms; closing",
                             config_.limits.idle_timeout.count());
                send_close_notify();
                finish(ConnectionResult::idle_timeout,
                       fmt::format("idle for {} ms", config_.limits.idle_timeout.count()));
                break;
            case ProxyEnd::client_failed:
            case ProxyEnd::backend_failed:
                spdlog::warn("connection failed: {}", result.error);
                finish(ConnectionResult::error, result.error);
                break;
        }
    }

    // Sends close_notify if the socket accepts it within close_notify_timeout; the
    // connection closes either way.
    void send_close_notify() {
        const auto deadline = Clock::now() + close_notify_timeout;
        for (;;) {
            const IoResult result = session_->shutdown();
            if (result.status != IoStatus::want_write ||
                !wait_until(client_fd_, POLLOUT, deadline)) {
                return;
            }
        }
    }

    void finish(ConnectionResult result, std::string reason) {
        summary_.result = result;
        summary_.reason = std::move(reason);
    }

    const Config& config_;
    TlsStack& stack_;
    int client_fd_;
    std::uint64_t connection_id_;
    const ConnectionSetup* setup_;
    int status_fd_;
    Clock::time_point started_;
    std::unique_ptr<TlsSession> session_;
    std::size_t vhost_index_ = 0;
    ConnectionSummary summary_;
};

// ---- backend connections --------------------------------------------------------------

Fd connect_one(const ResolvedAddress& address, Clock::time_point deadline, milliseconds timeout) {
    Fd fd(socket(address.storage.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) {
        throw Error(ErrorKind::io, std::string("socket failed: ") + std::strerror(errno));
    }
    if (connect(fd.get(), address.get(), address.length) == 0) {
        return fd;
    }
    if (errno != EINPROGRESS) {
        throw Error(ErrorKind::io, std::strerror(errno));
    }
    if (!wait_until(fd.get(), POLLOUT, deadline)) {
        throw Error(ErrorKind::timeout,
                    fmt::format("connect timed out after {} ms", timeout.count()));
    }
    int error = 0;
    socklen_t length = sizeof(error);
    if (getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &error, &length) != 0) {
        error = errno;
    }
    if (error != 0) {
        throw Error(ErrorKind::io, std::strerror(error));
    }
    return fd;
}

ConnectionSummary serve_client(const Config& config, TlsStack& stack, int client_fd,
                               std::string peer, std::uint64_t connection_id,
                               const ConnectionSetup& setup, int status_fd) {
    Connection connection(config, stack, client_fd, std::move(peer), connection_id, &setup,
                          status_fd);
    return connection.run();
}

std::vector<ResolvedAddress> resolve_backend(const SocketAddress& address) {
    try {
        return resolve_address(address, false);
    } catch (const Error& error) {
        // At run time an unresolvable name is a failed connection, not a config error.
        throw Error(ErrorKind::io, error.what());
    }
}

}  // namespace

[[noreturn]] void run_connection_process(const Config& config, TlsStack& stack,
                                         ConnectionChannels channels) noexcept {
    run_connection_process(config, stack, std::move(channels), ConnectionSetup{});
}

[[noreturn]] void run_connection_process(const Config& config, TlsStack& stack,
                                         ConnectionChannels channels,
                                         const ConnectionSetup& setup) noexcept {
    int status = 1;
    try {
        status = connection_process_main(config, stack, std::move(channels), setup);
    } catch (const Error& error) {
        spdlog::error("connection process failed ({} error): {}", to_string(error.kind()),
                      error.what());
    } catch (const std::exception& error) {
        spdlog::error("connection process failed: {}", error.what());
    }
    spdlog::default_logger()->flush();
    // _exit, not exit: the process must not run the supervisor's atexit handlers or static
    // destructors, which belong to state it only inherited.
    _exit(status);
}

const char* to_string(ConnectionResult result) noexcept {
    switch (result) {
        case ConnectionResult::ok:
            return "ok";
        case ConnectionResult::handshake_failed:
            return "handshake_failed";
        case ConnectionResult::handshake_timeout:
            return "handshake_timeout";
        case ConnectionResult::backend_unreachable:
            return "backend_unreachable";
        case ConnectionResult::idle_timeout:
            return "idle_timeout";
        case ConnectionResult::truncated:
            return "truncated";
        case ConnectionResult::error:
            return "error";
    }
    return "error";
}

std::string format_summary(const ConnectionSummary& summary) {
    std::string line = fmt::format(
        "connection closed: peer={} sni={} vhost={} protocol={} cipher={} scheme={} alpn={} "
        "bytes_in={} bytes_out={} duration_ms={} result={}",
        log_field(summary.peer), log_field(summary.sni), log_field(summary.vhost),
        log_field(summary.protocol), log_field(summary.cipher), log_field(summary.scheme),
        log_field(summary.alpn), summary.bytes_in, summary.bytes_out, summary.duration.count(),
        to_string(summary.result));
    if (summary.result != ConnectionResult::ok) {
        line += fmt::format(" reason=\"{}\"", escape_log_text(summary.reason, false));
    }
    return line;
}

ConnectionSummary serve_connection(const Config& config, TlsStack& stack, int client_fd,
                                   std::string peer, std::uint64_t connection_id) {
    Connection connection(config, stack, client_fd, std::move(peer), connection_id);
    return connection.run();
}

Fd connect_backend(const SocketAddress& address, milliseconds timeout) {
    return connect_backend(resolve_backend(address), timeout);
}

Fd connect_backend(const std::vector<ResolvedAddress>& addresses, milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    std::string last_error = "no address: the name did not resolve when cloister started";
    for (const ResolvedAddress& resolved : addresses) {
        try {
            Fd fd = connect_one(resolved, deadline, timeout);
            set_no_delay(fd.get());
            return fd;
        } catch (const Error& error) {
            if (error.kind() == ErrorKind::timeout) {
                throw;
            }
            last_error = error.what();
        }
    }
    throw Error(ErrorKind::io, last_error);
}

std::vector<std::vector<ResolvedAddress>> resolve_backends(const Config& config) {
    std::vector<std::vector<ResolvedAddress>> backends;
    for (const VhostConfig& vhost : config.vhosts) {
        std::vector<ResolvedAddress> addresses;
        try {
            addresses = resolve_address(vhost.backend, false);
        } catch (const Error& error) {
            // NOTE: names resolve once per configuration, at start and at each reload (SIGHUP).
            spdlog::warn("vhost {}: backend {} did not resolve, so its connections fail: {}",
                         vhost.name, vhost.backend.text, error.what());
        }
        std::vector<std::string> texts;
        for (const ResolvedAddress& address : addresses) {
            texts.push_back(format_address(address.get(), address.length));
        }
        if (!addresses.empty()) {
            spdlog::info("vhost {}: backend {} at {}", vhost.name, vhost.backend.text,
                         fmt::join(texts, ", "));
        }
        backends.push_back(std::move(addresses));
    }
    return backends;
}

}  // namespace cloister
