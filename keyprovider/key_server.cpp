#include "keyprovider/key_server.h"

#include <fmt/format.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <exception>
#include <latch>
#include <optional>
#include <thread>
#include <vector>

#include "core/error.h"

namespace cloister {
namespace {

using keyproto::Status;

sigset_t stop_and_stats_signals() {
    sigset_t set;
    sigemptyset(&set);
    // SIGINT is left out and ignored (reset_signals_after_fork), because Ctrl-C in a terminal
    // reaches the whole process group and only the supervisor stops on it, so that it drains.
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGUSR1);
    return set;
}

unsigned resolve_worker_count(unsigned configured) {
    if (configured != 0) {
        return configured;
    }
    return std::max(1U, std::thread::hardware_concurrency());
}

// Returns a CLOCK_MONOTONIC timerfd that expires every interval, or an empty Fd when interval is
// 0. Created and armed before the sandbox, because the seccomp policy of the key process
// allows neither timerfd_create nor timerfd_settime; reading it needs only read().
Fd make_stats_timer(std::chrono::seconds interval) {
    if (interval.count() <= 0) {
        return {};
    }
    Fd fd(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
    if (!fd) {
        throw_system_error("timerfd_create");
    }
    itimerspec period{};
    period.it_interval.tv_sec = static_cast<time_t>(interval.count());
    period.it_value = period.it_interval;
    if (::timerfd_settime(fd.get(), 0, &period, nullptr) != 0) {
        throw_system_error("timerfd_settime");
    }
    return fd;
}

// Returns the private-key operation of a request type, or nullopt for a type without one.
std::optional<KeyOperation> private_key_operation(keyproto::MessageType type) {
    if (type == keyproto::MessageType::sign) {
        return KeyOperation::sign;
    }
    if (type == keyproto::MessageType::decrypt) {
        return KeyOperation::decrypt;
    }
    return std::nullopt;
}

Fd make_signalfd() {
    const sigset_t set = stop_and_stats_signals();
    // Blocked first, so that none of them takes its default action before the signalfd
    // exists. Worker threads inherit this mask.
    const int error = ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
    if (error != 0) {
        errno = error;
        throw_system_error("pthread_sigmask");
    }
    Fd fd(::signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
    if (!fd) {
        throw_system_error("signalfd");
    }
    return fd;
}

const char* signal_name(std::uint32_t number) {
    switch (number) {
        case SIGTERM:
            return "SIGTERM";
        case SIGUSR1:
            return "SIGUSR1";
        default:
            return "an unexpected signal";
    }
}

bool is_refusal(Status status) {
    return status == Status::unknown_key || status == Status::unsupported_scheme ||
           status == Status::refused || status == Status::quota_exceeded;
}

std::string describe_request(const keyproto::Request& request) {
    if (request.type == keyproto::MessageType::public_key) {
        return fmt::format("public_key request {} for key {}", request.request_id,
                           request.key_index);
    }
    if (request.type == keyproto::MessageType::decrypt) {
        return fmt::format("decrypt request {} for key {}", request.request_id, request.key_index);
    }
    const auto name = keyproto::scheme_name(request.scheme);
    return fmt::format("sign request {} for key {} with {}", request.request_id, request.key_index,
                       name ? *name : "an unknown scheme");
}

}  // namespace

void KeyProcessStats::count_response(keyproto::MessageType type, Status status) {
    const auto index = static_cast<std::size_t>(status);
    if (index < by_status_.size()) {
        by_status_.at(index).fetch_add(1, std::memory_order_relaxed);
    }
    if (status == Status::ok && type == keyproto::MessageType::sign) {
        signatures_.fetch_add(1, std::memory_order_relaxed);
    }
    if (status == Status::ok && type == keyproto::MessageType::decrypt) {
        decryptions_.fetch_add(1, std::memory_order_relaxed);
    }
}

std::uint64_t KeyProcessStats::responses(Status status) const {
    const auto index = static_cast<std::size_t>(status);
    return index < by_status_.size() ? by_status_.at(index).load() : 0;
}

std::uint64_t KeyProcessStats::refused() const {
    return responses(Status::unknown_key) + responses(Status::unsupported_scheme) +
           responses(Status::refused) + responses(Status::quota_exceeded);
}

std::string KeyProcessStats::summary() const {
    return fmt::format(
        "key process stats: channels={} signatures={} refused={} malformed={} decryptions={}",
        channels(), signatures(), refused(), responses(Status::malformed), decryptions());
}

KeyServer::KeyServer(const KeyStore& store, const KeyProcessConfig& config, Fd control,
                     bool rsa_decryption)
    : store_(store),
      handler_(store, make_handler_options(config, rsa_decryption)),
      worker_count_(resolve_worker_count(config.workers)),
      metrics_(store, rsa_decryption) {
    signals_.fd = make_signalfd();
    timer_.fd = make_stats_timer(config.stats_interval);
    control_.fd = std::move(control);
    wake_.fd = Fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (!wake_.fd) {
        throw_system_error("eventfd");
    }
    epoll_ = Fd(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_) {
        throw_system_error("epoll_create1");
    }
    add(control_, EPOLLIN | EPOLLONESHOT);
    add(signals_, EPOLLIN | EPOLLONESHOT);
    if (timer_.fd) {
        add(timer_, EPOLLIN | EPOLLONESHOT);
    }
    // Level-triggered without EPOLLONESHOT: once written, it wakes every worker.
    add(wake_, EPOLLIN);
}

KeyServer::~KeyServer() = default;

void KeyServer::add(const Source& source, std::uint32_t events) {
    epoll_event event{};
    event.events = events;
    event.data.fd = source.fd.get();
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, source.fd.get(), &event) != 0) {
        throw_system_error("epoll_ctl(EPOLL_CTL_ADD)");
    }
}

void KeyServer::rearm(const Source& source) {
    epoll_event event{};
    event.events = EPOLLIN | EPOLLONESHOT;
    event.data.fd = source.fd.get();
    // Under the lock, so that every change this worker made to the source happens before
    // the next worker's lock in find_channel.
    const std::lock_guard lock(channels_mutex_);
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, source.fd.get(), &event) != 0) {
        throw_system_error("epoll_ctl(EPOLL_CTL_MOD)");
    }
}

void KeyServer::stop(int status) {
    int unset = -1;
    exit_status_.compare_exchange_strong(unset, status);
    stopping_.store(true);
    const std::uint64_t increment = 1;
    if (::write(wake_.fd.get(), &increment, sizeof(increment)) < 0 && errno != EAGAIN) {
        spdlog::error("waking the key process workers failed: {}", std::strerror(errno));
    }
}

int KeyServer::run() {
    spdlog::info("key process serving {} keys with {} worker threads", store_.size(),
                 worker_count_);
    std::vector<std::thread> workers;
    // The workers wait until every one has started. So a process whose later worker fails
    // to start (RLIMIT_NPROC) responds to no request, and the supervisor's self-check fails
    // instead of passing just before the exit.
    std::latch started(1);
    try {
        for (unsigned i = 0; i < worker_count_; ++i) {
            workers.emplace_back([this, &started] {
                started.wait();
                work();
            });
        }
    } catch (const std::system_error& error) {
        spdlog::error("starting key process worker threads failed: {}", error.what());
        stop(1);
    }
    started.count_down();
    for (std::thread& worker : workers) {
        worker.join();
    }
    report_stats();
    const int status = exit_status_.load();
    return status < 0 ? 0 : status;
}

void KeyServer::work() {
    // Every signal but SIGSYS goes to the main thread (blocked there too, and read from the
    // signalfd), never to a thread in the middle of a signing operation.
    sigset_t all;
    sigfillset(&all);
    // SIGSYS stays deliverable, so that a call the seccomp filter traps in a worker thread
    // reaches the handler that names the system call before the process dies.
    sigdelset(&all, SIGSYS);
    ::pthread_sigmask(SIG_BLOCK, &all, nullptr);

    while (!stopping_.load()) {
        epoll_event event{};
        const int ready = ::epoll_wait(epoll_.get(), &event, 1, -1);
        if (ready < 0 && errno == EINTR) {
            continue;
        }
        if (ready < 0) {
            spdlog::error("epoll_wait failed: {}", std::strerror(errno));
            stop(1);
            return;
        }
        if (ready == 1) {
            dispatch(event.data.fd);
        }
    }
}

void KeyServer::dispatch(int fd) {
    if (fd == wake_.fd.get()) {
        return;
    }
    const bool is_timer = timer_.fd && fd == timer_.fd.get();
    if (fd == control_.fd.get() || fd == signals_.fd.get() || is_timer) {
        try {
            if (fd == control_.fd.get()) {
                serve_control();
            } else if (is_timer) {
                serve_timer();
            } else {
                serve_signal();
            }
        } catch (const std::exception& error) {
            spdlog::error("key process failed: {}", error.what());
            stop(1);
        }
        return;
    }

    Source* channel = find_channel(fd);
    if (channel == nullptr) {
        return;
    }
    try {
        serve_channel(*channel);
    } catch (const std::exception& error) {
        spdlog::warn("connection {}: key channel failed: {}", channel->state.connection_id,
                     error.what());
        close_channel(*channel);
    }
}

KeyServer::Source* KeyServer::find_channel(int fd) {
    const std::lock_guard lock(channels_mutex_);
    const auto found = channels_.find(fd);
    return found == channels_.end() ? nullptr : found->second.get();
}

void KeyServer::serve_control() {
    ControlMessage message = receive_control_message(control_.fd.get());
    if (message.kind == ControlMessage::Kind::end_of_stream) {
        spdlog::info("control channel closed by the supervisor; key process stopping");
        stop(0);
        return;
    }
    if (message.kind == ControlMessage::Kind::datagram) {
        attach(message);
    }
    rearm(control_);
}

void KeyServer::serve_signal() {
    signalfd_siginfo info{};
    const ssize_t count = ::read(signals_.fd.get(), &info, sizeof(info));
    if (count != static_cast<ssize_t>(sizeof(info))) {
        rearm(signals_);
        return;
    }
    if (info.ssi_signo == SIGUSR1) {
        report_stats();
        rearm(signals_);
        return;
    }
    spdlog::info("key process stopping on {}", signal_name(info.ssi_signo));
    stop(0);
}

void KeyServer::serve_timer() {
    // The expiration count is not used, because a report covers the time since the previous one.
    std::uint64_t expirations = 0;
    if (::read(timer_.fd.get(), &expirations, sizeof(expirations)) < 0 && errno != EAGAIN) {
        spdlog::error("reading the stats timer failed: {}", std::strerror(errno));
    } else if (expirations > 0) {
        report_stats();
    }
    rearm(timer_);
}

void KeyServer::report_stats() {
    const std::lock_guard lock(report_mutex_);
    for (const std::string& line : metrics_.report()) {
        spdlog::info("{}", line);
    }
    spdlog::info("{}", stats_.summary());
}

void KeyServer::attach(ControlMessage& message) {
    const auto decoded = keyproto::decode_attach(message.data());
    std::string reason;
    if (!decoded) {
        reason = decoded.error;
    } else if (message.descriptors_truncated) {
        reason = "the message carries more descriptors than the control buffer holds";
    } else if (message.descriptors.size() != 1) {
        reason = fmt::format("the message carries {} descriptors (expected 1)",
                             message.descriptors.size());
    } else if (!is_seqpacket_socket(message.descriptors.front().get())) {
        reason = "the descriptor is not a SOCK_SEQPACKET socket";
    }
    if (!reason.empty()) {
        // The received descriptors close when message goes out of scope.
        const std::string connection =
            decoded ? fmt::format(" for connection {}", decoded.value->connection_id) : "";
        spdlog::warn("rejected attach message{}: {}", connection, reason);
        return;
    }
    const bool unlimited = (decoded.value->flags & keyproto::attach_flag_unlimited) != 0;
    register_channel(decoded.value->connection_id, unlimited,
                     std::move(message.descriptors.front()));
}

void KeyServer::register_channel(std::uint64_t connection_id, bool unlimited, Fd fd) {
    auto source = std::make_unique<Source>();
    source->fd = std::move(fd);
    source->state.connection_id = connection_id;
    source->state.unlimited = unlimited;
    stats_.count_channel();
    spdlog::debug("connection {}: key channel attached{}", connection_id,
                  unlimited ? " without an operation quota" : "");

    const std::lock_guard lock(channels_mutex_);
    // From here on another worker may serve and close the channel.
    add(*source, EPOLLIN | EPOLLONESHOT);
    const int number = source->fd.get();
    channels_.emplace(number, std::move(source));
}

void KeyServer::close_channel(Source& channel) {
    const int number = channel.fd.get();
    const std::lock_guard lock(channels_mutex_);
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, number, nullptr);
    channels_.erase(number);  // closes the descriptor and destroys channel
}

void KeyServer::serve_channel(Source& channel) {
    // One byte more than the largest valid request, with MSG_TRUNC returning the real
    // length, so an oversized datagram is detected instead of silently cut.
    std::vector<std::uint8_t> buffer(keyproto::max_request_size + 1);
    const ssize_t received =
        ::recv(channel.fd.get(), buffer.data(), buffer.size(), MSG_TRUNC | MSG_DONTWAIT);
    if (received < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        rearm(channel);
        return;
    }
    // NOTE: the latency starts here, so the time the request waited in the socket while every
    // worker was busy is not measured.
    const auto arrival = KeyMetrics::Clock::now();
    if (received <= 0) {
        // 0: end of stream. A zero-length SOCK_SEQPACKET datagram reads the same way and
        // also ends the channel.
        spdlog::debug("connection {}: key channel closed ({})", channel.state.connection_id,
                      received == 0 ? "end of stream" : std::strerror(errno));
        close_channel(channel);
        return;
    }

    const auto size = static_cast<std::size_t>(received);
    const std::span<const std::uint8_t> datagram(buffer.data(), std::min(size, buffer.size()));
    if (size > keyproto::max_request_size) {
        reject_malformed(channel, datagram,
                         fmt::format("datagram of {} bytes exceeds the maximum of {} bytes", size,
                                     keyproto::max_request_size));
        return;
    }
    const auto decoded = keyproto::decode_request(datagram);
    if (!decoded) {
        reject_malformed(channel, datagram, decoded.error);
        return;
    }

    const HandlerResult result = handler_.handle(*decoded.value, channel.state);
    record(channel, *decoded.value, result);
    // Measured before the send, so that a report asked for right after the client has its
    // response already counts the operation.
    measure(*decoded.value, result, arrival);
    const bool sent = send_response(channel, result.response);
    if (!sent) {
        close_channel(channel);
        return;
    }
    rearm(channel);
}

void KeyServer::reject_malformed(Source& channel, std::span<const std::uint8_t> datagram,
                                 const std::string& reason) {
    spdlog::warn("connection {}: malformed key request: {}", channel.state.connection_id, reason);
    const keyproto::Response response = keyproto::malformed_response(datagram);
    stats_.count_response(response.type, response.status);
    send_response(channel, response);
    close_channel(channel);
}

void KeyServer::record(const Source& channel, const keyproto::Request& request,
                       const HandlerResult& result) {
    const Status status = result.response.status;
    stats_.count_response(request.type, status);
    const std::uint64_t id = channel.state.connection_id;
    if (status == Status::ok) {
        spdlog::debug("connection {}: served {}", id, describe_request(request));
    } else if (status == Status::public_key_unknown) {
        spdlog::debug("connection {}: {}: {}", id, describe_request(request), result.reason);
    } else if (is_refusal(status)) {
        spdlog::warn("connection {}: {} refused ({}): {}", id, describe_request(request),
                     keyproto::to_string(status), result.reason);
    } else {
        spdlog::error("connection {}: {} failed: {}", id, describe_request(request), result.reason);
    }
}

void KeyServer::measure(const keyproto::Request& request, const HandlerResult& result,
                        KeyMetrics::Clock::time_point arrival) {
    const std::optional<KeyOperation> operation = private_key_operation(request.type);
    if (!operation) {
        return;
    }
    OperationTiming timing;
    timing.request = KeyMetrics::Clock::now() - arrival;
    timing.token = result.token_time;
    metrics_.record(request.key_index, *operation, result.response.status, timing);
}

bool KeyServer::send_response(const Source& channel, const keyproto::Response& response) {
    const std::vector<std::uint8_t> datagram = keyproto::encode(response);
    ssize_t sent = -1;
    do {
        sent =
            ::send(channel.fd.get(), datagram.data(), datagram.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (sent < 0 && errno == EINTR);
    if (sent < 0) {
        // EAGAIN means the connection process stopped reading its responses.
        spdlog::warn("connection {}: sending the key response failed: {}",
                     channel.state.connection_id, std::strerror(errno));
        return false;
    }
    return true;
}

}  // namespace cloister
