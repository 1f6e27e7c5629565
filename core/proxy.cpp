#include "core/proxy.h"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <span>
#include <vector>

namespace cloister {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// A bounded byte queue: bytes are appended at the tail and taken from the head.
class ByteBuffer {
  public:
    explicit ByteBuffer(std::size_t capacity) : data_(capacity) {}

    [[nodiscard]] bool empty() const { return begin_ == end_; }
    // True unless every byte of the buffer contains unsent data.
    [[nodiscard]] bool has_room() const { return end_ - begin_ < data_.size(); }
    // True when bytes can be appended without compacting first.
    [[nodiscard]] bool has_tail_room() const { return end_ < data_.size(); }
    [[nodiscard]] std::span<const std::byte> readable() const {
        return {data_.data() + begin_, end_ - begin_};
    }
    [[nodiscard]] std::span<std::byte> writable() {
        return {data_.data() + end_, data_.size() - end_};
    }
    void commit(std::size_t count) { end_ += count; }
    void consume(std::size_t count) {
        begin_ += count;
        if (begin_ == end_) {
            begin_ = 0;
            end_ = 0;
        }
    }
    // Moves the unread bytes to the front so that the tail has room again.
    void compact() {
        if (begin_ == 0) {
            return;
        }
        std::memmove(data_.data(), data_.data() + begin_, end_ - begin_);
        end_ -= begin_;
        begin_ = 0;
    }

  private:
    std::vector<std::byte> data_;
    std::size_t begin_ = 0;
    std::size_t end_ = 0;
};

std::string errno_text(const char* operation) {
    return std::string(operation) + ": " + std::strerror(errno);
}

bool would_block(int error) {
    return error == EAGAIN || error == EWOULDBLOCK || error == EINTR;
}

// The poll events that let a TLS call retry after it returned status.
short wait_events(IoStatus status) {
    return status == IoStatus::want_write ? POLLOUT : POLLIN;
}

// True when revents lets an operation that waits for events go ahead. An error or hang-up
// counts as ready, so that the next call reports it.
bool is_ready(short revents, short events) {
    return (revents & (events | POLLERR | POLLHUP | POLLNVAL)) != 0;
}

// Rounds of reads and writes between two poll() calls while every wanted operation can go on
// without waiting, so that a steady stream one way still lets the loop notice the other side.
constexpr int max_rounds_per_wait = 8;

// Each operation runs only when it is wanted (see wants_*) and may make progress: a read when
// poll() reported the socket readable or the TLS stack contains data, a write until the socket
// returned EAGAIN. A short read from a socket counts as having emptied it, so the next read
// waits for poll() instead of calling into an empty socket.
class Proxy {
  public:
    Proxy(TlsSession& session, int client_fd, int backend_fd, const ProxyOptions& options)
        : session_(session),
          client_(client_fd),
          backend_(backend_fd),
          idle_timeout_(options.idle_timeout),
          to_backend_(options.buffer_size),
          to_client_(options.buffer_size),
          last_activity_(Clock::now()) {}

    ProxyResult run() {
        while (!done()) {
            for (int round = 0; round < max_rounds_per_wait && can_progress(); ++round) {
                read_client();
                write_backend();
                read_backend();
                write_client();
            }
            if (done()) {
                break;
            }
            if (!wait()) {
                result_.end = ProxyEnd::idle_timeout;
                break;
            }
        }
        return result_;
    }

  private:
    [[nodiscard]] bool done() const {
        return stopped_ || (client_eof_ && backend_shut_ && backend_eof_ && client_shut_);
    }

    // Each side is read only while the buffer towards the other side has room, so a slow
    // reader holds back the fast writer (backpressure).
    [[nodiscard]] bool wants_client_read() const {
        return !client_eof_ && !stopped_ && to_backend_.has_room();
    }
    [[nodiscard]] bool wants_client_write() const {
        return !client_shut_ && !stopped_ && (!to_client_.empty() || backend_eof_);
    }
    [[nodiscard]] bool wants_backend_read() const {
        if (backend_eof_ || stopped_) {
            return false;
        }
        // A TLS write that must be retried needs its bytes where they are, so the buffer
        // cannot be compacted until that write completes.
        return client_write_blocked_ ? to_client_.has_tail_room() : to_client_.has_room();
    }
    [[nodiscard]] bool wants_backend_write() const { return !to_backend_.empty() && !stopped_; }

    // Bytes already inside the TLS stack (decrypted, or records read ahead) can be read
    // without waiting. After a read returned want_read they are an incomplete record.
    [[nodiscard]] bool client_data_pending() const {
        return !client_read_blocked_ && session_.has_pending();
    }

    [[nodiscard]] bool can_read_client() const {
        return wants_client_read() && (client_readable_ || client_data_pending());
    }
    [[nodiscard]] bool can_write_client() const { return wants_client_write() && client_writable_; }
    [[nodiscard]] bool can_read_backend() const {
        return wants_backend_read() && backend_readable_;
    }
    [[nodiscard]] bool can_write_backend() const {
        return wants_backend_write() && backend_writable_;
    }
    [[nodiscard]] bool can_progress() const {
        return !stopped_ && (can_read_client() || can_write_backend() || can_read_backend() ||
                             can_write_client());
    }

    [[nodiscard]] short client_poll_events() const {
        int events = 0;
        if (wants_client_read()) {
            events |= client_read_wait_;
        }
        if (wants_client_write()) {
            events |= client_write_wait_;
        }
        return static_cast<short>(events);
    }

    [[nodiscard]] short backend_poll_events() const {
        int events = 0;
        if (wants_backend_read()) {
            events |= POLLIN;
        }
        if (wants_backend_write()) {
            events |= POLLOUT;
        }
        return static_cast<short>(events);
    }

    // Waits for the next event and records which operations may go on. Returns false when the
    // idle timeout has passed.
    bool wait() {
        const Clock::time_point now = Clock::now();
        if (moved_bytes_) {
            last_activity_ = now;
            moved_bytes_ = false;
        }
        const auto idle_left =
            idle_timeout_ - std::chrono::duration_cast<milliseconds>(now - last_activity_);
        if (idle_left.count() <= 0) {
            return false;
        }
        const short client_events = client_poll_events();
        const short backend_events = backend_poll_events();
        // A descriptor with no wanted event is left out, because poll() reports POLLHUP on it
        // regardless and the loop would spin.
        std::array<pollfd, 2> fds{{{client_events != 0 ? client_ : -1, client_events, 0},
                                   {backend_events != 0 ? backend_ : -1, backend_events, 0}}};
        const int timeout = can_progress() ? 0 : static_cast<int>(idle_left.count());
        if (poll(fds.data(), fds.size(), timeout) < 0) {
            if (errno != EINTR) {
                fail(ProxyEnd::client_failed, errno_text("poll failed"));
            }
            return true;
        }
        const short client_revents = fds[0].revents;
        const short backend_revents = fds[1].revents;
        if (is_ready(client_revents, client_read_wait_)) {
            client_readable_ = true;
            client_read_blocked_ = false;
        }
        if (is_ready(client_revents, client_write_wait_)) {
            client_writable_ = true;
        }
        backend_readable_ = backend_readable_ || is_ready(backend_revents, POLLIN);
        backend_writable_ = backend_writable_ || is_ready(backend_revents, POLLOUT);
        return true;
    }

    void read_client() {
        if (!can_read_client()) {
            return;
        }
        if (!to_backend_.has_tail_room()) {
            to_backend_.compact();
        }
        const std::span<std::byte> room = to_backend_.writable();
        if (room.empty()) {
            return;
        }
        const IoResult result = session_.read(room);
        client_read_blocked_ = false;
        client_read_wait_ = POLLIN;
        client_readable_ = false;
        switch (result.status) {
            case IoStatus::done:
                to_backend_.commit(result.bytes);
                touch(result.bytes);
                // A read that filled the buffer may have left bytes in the socket. After a
                // shorter one, the next read waits for poll() unless the stack contains more.
                client_readable_ = result.bytes == room.size();
                break;
            case IoStatus::want_read:
            case IoStatus::want_write:
                client_read_blocked_ = true;
                client_read_wait_ = wait_events(result.status);
                break;
            case IoStatus::closed:
                client_eof_ = true;
                break;
            case IoStatus::truncated:
                spdlog::info("client closed without close_notify");
                client_eof_ = true;
                result_.client_truncated = true;
                break;
            case IoStatus::failed:
                fail(ProxyEnd::client_failed, "TLS read failed: " + result.error);
                break;
        }
    }

    void write_backend() {
        while (can_write_backend() && !to_backend_.empty()) {
            const std::span<const std::byte> data = to_backend_.readable();
            const ssize_t sent = send(backend_, data.data(), data.size(), MSG_NOSIGNAL);
            if (sent > 0) {
                to_backend_.consume(static_cast<std::size_t>(sent));
                result_.bytes_in += static_cast<std::uint64_t>(sent);
                touch(static_cast<std::size_t>(sent));
            } else if (sent < 0 && !would_block(errno)) {
                backend_failed(errno_text("send to backend failed"));
                return;
            } else {
                backend_writable_ = false;
            }
        }
        if (client_eof_ && to_backend_.empty() && !backend_shut_ && !stopped_) {
            // The backend may already have closed its side; the connection still ends cleanly.
            shutdown(backend_, SHUT_WR);
            backend_shut_ = true;
        }
    }

    void read_backend() {
        if (!can_read_backend()) {
            return;
        }
        if (!to_client_.has_tail_room() && !client_write_blocked_) {
            to_client_.compact();
        }
        const std::span<std::byte> room = to_client_.writable();
        if (room.empty()) {
            return;
        }
        const ssize_t received = recv(backend_, room.data(), room.size(), 0);
        if (received > 0) {
            to_client_.commit(static_cast<std::size_t>(received));
            touch(static_cast<std::size_t>(received));
            // A short read emptied the socket receive queue, at least for this moment.
            backend_readable_ = static_cast<std::size_t>(received) == room.size();
        } else if (received == 0) {
            backend_eof_ = true;
        } else if (would_block(errno)) {
            backend_readable_ = false;
        } else {
            backend_read_failed(errno_text("receive from backend failed"));
        }
    }

    void write_client() {
        while (can_write_client() && !to_client_.empty()) {
            write_client_data();
        }
        if (can_write_client() && to_client_.empty()) {
            if (backend_aborted_) {
                client_shut_ = true;
            } else {
                send_close_notify();
            }
        }
    }

    void write_client_data() {
        const IoResult result = session_.write(to_client_.readable());
        client_write_blocked_ = false;
        client_write_wait_ = POLLOUT;
        switch (result.status) {
            case IoStatus::done:
                to_client_.consume(result.bytes);
                result_.bytes_out += result.bytes;
                touch(result.bytes);
                // A stack that took nothing is retried after poll() instead of in a tight loop.
                client_writable_ = result.bytes > 0;
                break;
            case IoStatus::want_read:
            case IoStatus::want_write:
                client_write_blocked_ = true;
                client_writable_ = false;
                client_write_wait_ = wait_events(result.status);
                break;
            case IoStatus::closed:
            case IoStatus::truncated:
            case IoStatus::failed:
                client_write_failed("TLS write failed: " + result.error);
                break;
        }
    }

    void send_close_notify() {
        const IoResult result = session_.shutdown();
        switch (result.status) {
            case IoStatus::done:
                client_shut_ = true;
                break;
            case IoStatus::want_read:
            case IoStatus::want_write:
                client_writable_ = false;
                client_write_wait_ = wait_events(result.status);
                break;
            case IoStatus::closed:
            case IoStatus::truncated:
            case IoStatus::failed:
                client_write_failed("sending close_notify failed: " + result.error);
                break;
        }
    }

    // Ends the client-to-backend direction after a failed send or receive on the backend. A
    // backend that closed with the client's bytes unread resets the connection, so the next
    // send fails, and the next receive too once the bytes before the reset are read. What the
    // backend sent still goes to the client. The client's further bytes are dropped here, and
    // the caller reads them until the client stops (ProxyResult::client_input_dropped),
    // because unread bytes at close would reset the client's connection and could discard
    // the end of the reply.
    void backend_failed(const std::string& error) {
        spdlog::info("{}; passing on what the backend sent before", error);
        if (result_.end != ProxyEnd::backend_failed) {
            result_.end = ProxyEnd::backend_failed;
            result_.error = error;
        }
        result_.client_input_dropped = result_.client_input_dropped || !client_eof_;
        to_backend_.consume(to_backend_.readable().size());
        client_eof_ = true;
        backend_shut_ = true;
    }

    // After a failed receive no more bytes come from the backend. Its end was not orderly, so
    // the client gets no close_notify: the connection ends with a bare FIN, which the client
    // can tell from the end of a complete reply.
    void backend_read_failed(const std::string& error) {
        backend_failed(error);
        backend_eof_ = true;
        backend_aborted_ = true;
    }

    // After a truncated EOF the client is gone, so a failed write ends the loop normally.
    void client_write_failed(const std::string& error) {
        if (result_.client_truncated) {
            spdlog::debug("client is gone: {}", error);
            stopped_ = true;
            return;
        }
        fail(ProxyEnd::client_failed, error);
    }

    void fail(ProxyEnd end, const std::string& error) {
        if (stopped_) {
            return;
        }
        result_.end = end;
        result_.error = error;
        stopped_ = true;
    }

    // Notes that bytes moved. wait() turns this into last_activity_, so the clock is read once
    // per poll() instead of once per operation.
    void touch(std::size_t bytes) {
        if (bytes > 0) {
            moved_bytes_ = true;
        }
    }

    TlsSession& session_;
    int client_;
    int backend_;
    milliseconds idle_timeout_;
    ByteBuffer to_backend_;
    ByteBuffer to_client_;
    Clock::time_point last_activity_;
    ProxyResult result_;

    bool client_eof_ = false;       // close_notify or EOF came from the client
    bool backend_shut_ = false;     // the write side towards the backend is shut down
    bool backend_eof_ = false;      // the backend closed its write side
    bool client_shut_ = false;      // close_notify was sent to the client
    bool stopped_ = false;          // the loop ends now, with result_ as it is
    bool moved_bytes_ = false;      // bytes moved since wait() last read the clock
    bool backend_aborted_ = false;  // a receive from the backend failed, so no close_notify follows
    // The last TLS read or write returned want_read or want_write and waits for
    // client_read_wait_ or client_write_wait_.
    bool client_read_blocked_ = false;
    bool client_write_blocked_ = false;
    short client_read_wait_ = POLLIN;
    short client_write_wait_ = POLLOUT;
    // Whether the next call on each socket may make progress without waiting for poll(). The
    // first write is tried at once, and the first read waits for poll() unless the TLS stack
    // contains data.
    bool client_readable_ = false;
    bool client_writable_ = true;
    bool backend_readable_ = false;
    bool backend_writable_ = true;
};

}  // namespace

ProxyResult run_proxy(TlsSession& session, int client_fd, int backend_fd,
                      const ProxyOptions& options) {
    Proxy proxy(session, client_fd, backend_fd, options);
    return proxy.run();
}

const char* to_string(ProxyEnd end) noexcept {
    switch (end) {
        case ProxyEnd::finished:
            return "finished";
        case ProxyEnd::idle_timeout:
            return "idle_timeout";
        case ProxyEnd::client_failed:
            return "client_failed";
        case ProxyEnd::backend_failed:
            return "backend_failed";
    }
    return "unknown";
}

}  // namespace cloister
