// Tests of the proxy loop against real socket pairs. A plaintext TlsSession replaces the
// TLS stack: it reads and writes its socket directly, and its shutdown() is a write
// shutdown, so each test sees on its sockets what the proxy loop did.
#include "core/proxy.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/sockios.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/fd.h"

namespace cloister {
namespace {

using namespace std::chrono_literals;

// A TlsSession without TLS over a non-blocking socket. EOF from the peer is reported as
// eof_status. With chunk set, read() takes everything the socket has into an internal
// buffer but hands out at most chunk bytes per call, so data waits inside the "stack" the
// way decrypted TLS records do. With records set as well, read() hands out bytes only in
// whole records of chunk bytes, and an incomplete record waits in the stack as with OpenSSL's
// read-ahead: has_pending() is true, yet read() returns want_read until the rest arrives.
// With write_limit set, write() takes at most that many bytes per call, as one TLS record.
class PlainSession : public TlsSession {
  public:
    explicit PlainSession(int fd, IoStatus eof_status = IoStatus::closed, std::size_t chunk = 0,
                          bool records = false)
        : fd_(fd), eof_status_(eof_status), chunk_(chunk), records_(records) {}

    IoResult handshake() override { return {IoStatus::done, 0, {}}; }

    IoResult read(std::span<std::byte> buffer) override {
        ++read_calls;
        if (pending_.empty() || chunk_ == 0 || (records_ && pending_.size() < chunk_)) {
            IoResult fill = fill_pending(chunk_ == 0 ? buffer.size() : 65536);
            if (fill.status != IoStatus::done) {
                return fill;
            }
            if (records_ && pending_.size() < chunk_) {
                return {IoStatus::want_read, 0, {}};
            }
        }
        const std::size_t limit = chunk_ == 0 ? buffer.size() : std::min(chunk_, buffer.size());
        const std::size_t count = std::min(limit, pending_.size());
        std::memcpy(buffer.data(), pending_.data(), count);
        pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(count));
        bytes_read += count;
        return {IoStatus::done, count, {}};
    }

    IoResult write(std::span<const std::byte> data) override {
        ++write_calls;
        const std::size_t size =
            write_limit == 0 ? data.size() : std::min(write_limit, data.size());
        const ssize_t sent = send(fd_, data.data(), size, MSG_NOSIGNAL);
        if (sent >= 0) {
            return {IoStatus::done, static_cast<std::size_t>(sent), {}};
        }
        if (errno == EAGAIN) {
            return {IoStatus::want_write, 0, {}};
        }
        return {IoStatus::failed, 0, std::strerror(errno)};
    }

    IoResult shutdown() override {
        ::shutdown(fd_, SHUT_WR);
        return {IoStatus::done, 0, {}};
    }

    [[nodiscard]] bool has_pending() const override { return !pending_.empty(); }

    [[nodiscard]] HandshakeInfo info() const override { return {}; }

    std::atomic<std::size_t> bytes_read{0};
    std::atomic<std::size_t> read_calls{0};
    std::atomic<std::size_t> write_calls{0};
    std::size_t write_limit = 0;  // set before the proxy loop starts

  private:
    IoResult fill_pending(std::size_t size) {
        std::vector<std::byte> buffer(size);
        const ssize_t received = recv(fd_, buffer.data(), buffer.size(), 0);
        if (received > 0) {
            pending_.insert(pending_.end(), buffer.begin(), buffer.begin() + received);
            return {IoStatus::done, 0, {}};
        }
        if (received == 0) {
            return {eof_status_, 0, {}};
        }
        if (errno == EAGAIN) {
            return {IoStatus::want_read, 0, {}};
        }
        return {IoStatus::failed, 0, std::strerror(errno)};
    }

    int fd_;
    IoStatus eof_status_;
    std::size_t chunk_;
    bool records_;
    std::vector<std::byte> pending_;
};

std::array<Fd, 2> stream_pair() {
    std::array<int, 2> fds{};
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds.data()), 0);
    return {Fd(fds[0]), Fd(fds[1])};
}

void set_non_blocking(int fd) {
    ASSERT_EQ(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
}

void write_all(int fd, std::string_view data) {
    while (!data.empty()) {
        const ssize_t sent = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
        ASSERT_GT(sent, 0) << std::strerror(errno);
        data.remove_prefix(static_cast<std::size_t>(sent));
    }
}

// Reads from the blocking socket fd until EOF.
std::string read_to_eof(int fd) {
    std::string data;
    std::array<char, 8192> buffer{};
    for (;;) {
        const ssize_t received = recv(fd, buffer.data(), buffer.size(), 0);
        if (received <= 0) {
            return data;
        }
        data.append(buffer.data(), static_cast<std::size_t>(received));
    }
}

std::string read_exactly(int fd, std::size_t size) {
    std::string data(size, '\0');
    std::size_t done = 0;
    while (done < size) {
        const ssize_t received = recv(fd, data.data() + done, size - done, 0);
        if (received <= 0) {
            break;
        }
        done += static_cast<std::size_t>(received);
    }
    data.resize(done);
    return data;
}

// Compares byte strings by size and content, without printing megabytes on a mismatch.
::testing::AssertionResult same_bytes(const std::string& actual, const std::string& expected) {
    if (actual.size() != expected.size()) {
        return ::testing::AssertionFailure()
               << "received " << actual.size() << " bytes, expected " << expected.size();
    }
    const auto mismatch = std::mismatch(actual.begin(), actual.end(), expected.begin());
    if (mismatch.first != actual.end()) {
        return ::testing::AssertionFailure()
               << "first difference at byte " << (mismatch.first - actual.begin());
    }
    return ::testing::AssertionSuccess();
}

std::string random_bytes(std::size_t size, unsigned seed) {
    std::mt19937 generator(seed);
    std::string data(size, '\0');
    for (char& c : data) {
        c = static_cast<char>(generator() & 0xff);
    }
    return data;
}

// Two socket pairs and a proxy loop between them in its own thread. client_ and backend_
// are the test's blocking ends.
class ProxyTest : public ::testing::Test {
  protected:
    void SetUp() override {
        auto [client_test, client_proxy] = stream_pair();
        auto [backend_test, backend_proxy] = stream_pair();
        client_ = std::move(client_test);
        client_proxy_ = std::move(client_proxy);
        backend_ = std::move(backend_test);
        backend_proxy_ = std::move(backend_proxy);
        set_non_blocking(client_proxy_.get());
        set_non_blocking(backend_proxy_.get());
        // A proxy loop that stalls makes the test's reads fail after 5 s instead of hanging.
        const timeval timeout{5, 0};
        for (const Fd* end : {&client_, &backend_}) {
            ASSERT_EQ(setsockopt(end->get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout)),
                      0);
        }
    }

    void start(PlainSession& session, ProxyOptions options = {}) {
        result_ = std::async(std::launch::async, [this, &session, options] {
            return run_proxy(session, client_proxy_.get(), backend_proxy_.get(), options);
        });
    }

    ProxyResult finish() {
        EXPECT_EQ(result_.wait_for(10s), std::future_status::ready);
        return result_.get();
    }

    Fd client_;
    Fd client_proxy_;
    Fd backend_;
    Fd backend_proxy_;
    std::future<ProxyResult> result_;
};

TEST_F(ProxyTest, RelaysBothWaysAndCountsBytes) {
    PlainSession session(client_proxy_.get());
    start(session);

    write_all(client_.get(), "hello");
    EXPECT_EQ(read_exactly(backend_.get(), 5), "hello");
    write_all(backend_.get(), "world!");
    EXPECT_EQ(read_exactly(client_.get(), 6), "world!");
    shutdown(client_.get(), SHUT_WR);
    EXPECT_EQ(read_to_eof(backend_.get()), "");
    shutdown(backend_.get(), SHUT_WR);
    EXPECT_EQ(read_to_eof(client_.get()), "");

    const ProxyResult result = finish();
    EXPECT_EQ(result.end, ProxyEnd::finished);
    EXPECT_EQ(result.bytes_in, 5U);
    EXPECT_EQ(result.bytes_out, 6U);
    EXPECT_FALSE(result.client_truncated);
}

// A backend that replies only after the request's EOF still reaches the client.
TEST_F(ProxyTest, ClientHalfCloseKeepsBackendReply) {
    PlainSession session(client_proxy_.get());
    start(session);

    write_all(client_.get(), "request");
    shutdown(client_.get(), SHUT_WR);
    EXPECT_EQ(read_to_eof(backend_.get()), "request");
    write_all(backend_.get(), "got-eof");
    shutdown(backend_.get(), SHUT_WR);
    EXPECT_EQ(read_to_eof(client_.get()), "got-eof");

    const ProxyResult result = finish();
    EXPECT_EQ(result.end, ProxyEnd::finished);
    EXPECT_EQ(result.bytes_in, 7U);
    EXPECT_EQ(result.bytes_out, 7U);
}

// After the backend's EOF the client may still send; the loop ends at the client's EOF.
TEST_F(ProxyTest, BackendEofWaitsForClientEof) {
    PlainSession session(client_proxy_.get());
    start(session);

    write_all(backend_.get(), "early reply");
    shutdown(backend_.get(), SHUT_WR);
    EXPECT_EQ(read_to_eof(client_.get()), "early reply");
    EXPECT_EQ(result_.wait_for(100ms), std::future_status::timeout);

    write_all(client_.get(), "late");
    shutdown(client_.get(), SHUT_WR);
    EXPECT_EQ(read_to_eof(backend_.get()), "late");
    const ProxyResult result = finish();
    EXPECT_EQ(result.end, ProxyEnd::finished);
    EXPECT_EQ(result.bytes_in, 4U);
}

TEST_F(ProxyTest, TruncatedClientEofIsPassedOn) {
    PlainSession session(client_proxy_.get(), IoStatus::truncated);
    start(session);

    write_all(client_.get(), "partial");
    shutdown(client_.get(), SHUT_WR);
    EXPECT_EQ(read_to_eof(backend_.get()), "partial");
    shutdown(backend_.get(), SHUT_WR);

    const ProxyResult result = finish();
    EXPECT_EQ(result.end, ProxyEnd::finished);
    EXPECT_TRUE(result.client_truncated);
}

TEST_F(ProxyTest, IdleTimeoutEndsLoop) {
    PlainSession session(client_proxy_.get());
    const auto started = std::chrono::steady_clock::now();
    start(session, ProxyOptions{1024, 300ms});

    const ProxyResult result = finish();
    const auto elapsed = std::chrono::steady_clock::now() - started;
    EXPECT_EQ(result.end, ProxyEnd::idle_timeout);
    EXPECT_GE(elapsed, 300ms);
    EXPECT_LT(elapsed, 3s);
}

TEST_F(ProxyTest, TrafficResetsIdleTimeout) {
    PlainSession session(client_proxy_.get());
    const auto started = std::chrono::steady_clock::now();
    start(session, ProxyOptions{1024, 400ms});

    for (int i = 0; i < 4; ++i) {
        std::this_thread::sleep_for(200ms);
        write_all(client_.get(), "x");
        EXPECT_EQ(read_exactly(backend_.get(), 1), "x");
    }
    const ProxyResult result = finish();
    EXPECT_EQ(result.end, ProxyEnd::idle_timeout);
    EXPECT_GE(std::chrono::steady_clock::now() - started, 1200ms);
    EXPECT_EQ(result.bytes_in, 4U);
}

// The proxy reads from the client only while its buffer towards the backend has room: what
// it has read and not yet handed to the backend socket never exceeds buffer_size.
TEST_F(ProxyTest, SlowBackendHoldsBackClient) {
    constexpr std::size_t buffer_size = 4096;
    PlainSession session(client_proxy_.get());
    start(session, ProxyOptions{buffer_size, 10s});

    const std::string data = random_bytes(4 << 20, 1);
    std::thread writer([&] {
        write_all(client_.get(), data);
        shutdown(client_.get(), SHUT_WR);
    });
    std::this_thread::sleep_for(500ms);
    int queued = 0;
    ASSERT_EQ(ioctl(backend_.get(), SIOCINQ, &queued), 0);
    const std::size_t read_by_proxy = session.bytes_read;
    EXPECT_GT(read_by_proxy, 0U);
    EXPECT_LT(read_by_proxy, data.size());
    EXPECT_LE(read_by_proxy - static_cast<std::size_t>(queued), buffer_size);

    EXPECT_TRUE(same_bytes(read_to_eof(backend_.get()), data));
    writer.join();
    shutdown(backend_.get(), SHUT_WR);
    EXPECT_EQ(finish().bytes_in, data.size());
}

// Bytes held inside the session are read although the socket has nothing more to read.
TEST_F(ProxyTest, PendingSessionDataIsRead) {
    PlainSession session(client_proxy_.get(), IoStatus::closed, 10);
    start(session);

    const std::string data = random_bytes(1000, 2);
    write_all(client_.get(), data);
    EXPECT_TRUE(same_bytes(read_exactly(backend_.get(), data.size()), data));
    shutdown(client_.get(), SHUT_WR);
    shutdown(backend_.get(), SHUT_WR);
    EXPECT_EQ(finish().bytes_in, data.size());
}

TEST_F(ProxyTest, LargeTransfersBothWaysArrive) {
    PlainSession session(client_proxy_.get());
    start(session, ProxyOptions{1024, 10s});

    const std::string upload = random_bytes(3 << 20, 3);
    const std::string download = random_bytes(5 << 20, 4);
    std::thread client_writer([&] {
        write_all(client_.get(), upload);
        shutdown(client_.get(), SHUT_WR);
    });
    std::thread backend_writer([&] {
        write_all(backend_.get(), download);
        shutdown(backend_.get(), SHUT_WR);
    });
    auto received_by_client =
        std::async(std::launch::async, [&] { return read_to_eof(client_.get()); });
    EXPECT_TRUE(same_bytes(read_to_eof(backend_.get()), upload));
    EXPECT_TRUE(same_bytes(received_by_client.get(), download));
    client_writer.join();
    backend_writer.join();

    const ProxyResult result = finish();
    EXPECT_EQ(result.end, ProxyEnd::finished);
    EXPECT_EQ(result.bytes_in, upload.size());
    EXPECT_EQ(result.bytes_out, download.size());
}

TEST_F(ProxyTest, ClosedBackendFailsClientWrite) {
    PlainSession session(client_proxy_.get());
    start(session);

    backend_.reset();
    write_all(client_.get(), "nobody listens");
    const ProxyResult result = finish();
    EXPECT_EQ(result.end, ProxyEnd::backend_failed);
    EXPECT_NE(result.error.find("send to backend failed"), std::string::npos) << result.error;
}

// A backend that replies and closes while the client is still sending makes the proxy's next
// send fail. Its reply still reaches the client, and the result names the failed send. The
// session's first read waits until the backend has closed, so that the send fails before the
// loop has read the reply.
TEST_F(ProxyTest, AnswerOfBackendClosedEarlyReachesClient) {
    class GatedSession final : public PlainSession {
      public:
        using PlainSession::PlainSession;
        IoResult read(std::span<std::byte> buffer) override {
            if (!gate_passed_) {
                gate_passed_ = true;
                reading.set_value();
                backend_closed.get_future().wait();
            }
            return PlainSession::read(buffer);
        }
        std::promise<void> reading;
        std::promise<void> backend_closed;

      private:
        bool gate_passed_ = false;
    };
    GatedSession session(client_proxy_.get());
    auto reading = session.reading.get_future();
    start(session);

    write_all(client_.get(), "a request the backend refuses");
    reading.wait();
    write_all(backend_.get(), "refused");
    backend_.reset();
    session.backend_closed.set_value();

    EXPECT_EQ(read_to_eof(client_.get()), "refused");
    const ProxyResult result = finish();
    EXPECT_EQ(result.end, ProxyEnd::backend_failed);
    EXPECT_NE(result.error.find("send to backend failed"), std::string::npos) << result.error;
    EXPECT_EQ(result.bytes_out, 7U);
}

// A backend that closes with the request unread makes its peer's receive fail with
// ECONNRESET after the bytes it sent before. Those bytes still reach the client, without
// close_notify, because the backend's end was not orderly.
TEST_F(ProxyTest, ResetBackendSkipsCloseNotify) {
    class CountingSession final : public PlainSession {
      public:
        using PlainSession::PlainSession;
        IoResult shutdown() override {
            ++shutdowns;
            return PlainSession::shutdown();
        }
        int shutdowns = 0;
    };
    CountingSession session(client_proxy_.get());
    start(session);

    write_all(client_.get(), "request");
    pollfd readable{backend_.get(), POLLIN, 0};
    ASSERT_EQ(poll(&readable, 1, 5000), 1);
    write_all(backend_.get(), "partial");
    backend_.reset();

    EXPECT_EQ(read_exactly(client_.get(), 7), "partial");
    const ProxyResult result = finish();
    EXPECT_EQ(result.end, ProxyEnd::backend_failed);
    EXPECT_NE(result.error.find("receive from backend failed"), std::string::npos) << result.error;
    EXPECT_EQ(result.bytes_out, 7U);
    EXPECT_TRUE(result.client_input_dropped);
    EXPECT_EQ(session.shutdowns, 0);
}

TEST_F(ProxyTest, ClientFailureIsReported) {
    class FailingSession final : public PlainSession {
      public:
        using PlainSession::PlainSession;
        IoResult read(std::span<std::byte> /*buffer*/) override {
            return {IoStatus::failed, 0, "decryption failed"};
        }
    };
    FailingSession session(client_proxy_.get());
    start(session);

    write_all(client_.get(), "x");
    const ProxyResult result = finish();
    EXPECT_EQ(result.end, ProxyEnd::client_failed);
    EXPECT_EQ(result.error, "TLS read failed: decryption failed");
}

// Several records that arrive in one segment are all read ahead into the stack. Each one is
// passed on, although the socket has nothing more to read.
TEST_F(ProxyTest, PipelinedRecordsAllPassOn) {
    PlainSession session(client_proxy_.get(), IoStatus::closed, 100, true);
    start(session);

    const std::string requests = random_bytes(20 * 100, 5);
    write_all(client_.get(), requests);
    EXPECT_TRUE(same_bytes(read_exactly(backend_.get(), requests.size()), requests));
    shutdown(client_.get(), SHUT_WR);
    shutdown(backend_.get(), SHUT_WR);
    EXPECT_EQ(finish().bytes_in, requests.size());
}

// An incomplete record inside the stack makes has_pending() true, yet read() cannot finish it
// until more bytes arrive, so the loop waits in poll() instead of calling read() again.
TEST_F(ProxyTest, IncompleteRecordWaitsForSocket) {
    PlainSession session(client_proxy_.get(), IoStatus::closed, 100, true);
    start(session);

    const std::string data = random_bytes(300, 6);
    write_all(client_.get(), data.substr(0, 150));
    EXPECT_TRUE(same_bytes(read_exactly(backend_.get(), 100), data.substr(0, 100)));
    std::this_thread::sleep_for(300ms);
    EXPECT_LE(session.read_calls, 4U);

    write_all(client_.get(), data.substr(150));
    EXPECT_TRUE(same_bytes(read_exactly(backend_.get(), 200), data.substr(100)));
    shutdown(client_.get(), SHUT_WR);
    shutdown(backend_.get(), SHUT_WR);
    const ProxyResult result = finish();
    EXPECT_EQ(result.end, ProxyEnd::finished);
    EXPECT_EQ(result.bytes_in, data.size());
}

// In a request-response exchange the session is read once per request: the loop reads the
// client only when poll() reported it readable, not whenever the backend woke it.
TEST_F(ProxyTest, ExchangeReadsClientOncePerRequest) {
    PlainSession session(client_proxy_.get());
    start(session);

    constexpr std::size_t exchanges = 50;
    for (std::size_t i = 0; i < exchanges; ++i) {
        write_all(client_.get(), "request");
        ASSERT_EQ(read_exactly(backend_.get(), 7), "request");
        write_all(backend_.get(), "response");
        ASSERT_EQ(read_exactly(client_.get(), 8), "response");
    }
    EXPECT_EQ(session.read_calls, exchanges);
    EXPECT_EQ(session.write_calls, exchanges);
    shutdown(client_.get(), SHUT_WR);
    shutdown(backend_.get(), SHUT_WR);
    EXPECT_EQ(finish().end, ProxyEnd::finished);
}

// A session that takes one small record per write() gets the whole buffer written record by
// record, and a response many times the buffer size arrives intact.
TEST_F(ProxyTest, ResponseLargerThanBufferInRecords) {
    PlainSession session(client_proxy_.get());
    session.write_limit = 700;
    start(session, ProxyOptions{4096, 10s});

    const std::string response = random_bytes(2 << 20, 7);
    std::thread backend_writer([&] {
        write_all(backend_.get(), response);
        shutdown(backend_.get(), SHUT_WR);
    });
    EXPECT_TRUE(same_bytes(read_to_eof(client_.get()), response));
    backend_writer.join();
    shutdown(client_.get(), SHUT_WR);

    const ProxyResult result = finish();
    EXPECT_EQ(result.end, ProxyEnd::finished);
    EXPECT_EQ(result.bytes_out, response.size());
}

// A client that reads slowly holds back the backend: the loop stops reading the backend while
// the client cannot take more, waits in poll() meanwhile, and loses no byte.
TEST_F(ProxyTest, SlowClientHoldsBackBackend) {
    constexpr std::size_t buffer_size = 4096;
    PlainSession session(client_proxy_.get());
    start(session, ProxyOptions{buffer_size, 10s});

    const std::string response = random_bytes(4 << 20, 8);
    std::atomic<std::size_t> written{0};
    std::thread backend_writer([&] {
        for (std::size_t offset = 0; offset < response.size(); offset += 4096) {
            write_all(backend_.get(), std::string_view(response).substr(offset, 4096));
            written = offset + 4096;
        }
        shutdown(backend_.get(), SHUT_WR);
    });
    std::this_thread::sleep_for(500ms);
    const std::size_t calls_while_blocked = session.write_calls;
    EXPECT_LT(written.load(), response.size());
    std::this_thread::sleep_for(300ms);
    // Without backpressure the writer would have finished; without poll() the loop would
    // retry the blocked write thousands of times.
    EXPECT_LT(written.load(), response.size());
    EXPECT_LE(session.write_calls - calls_while_blocked, 2U);

    std::string received;
    std::array<char, 16384> piece{};
    while (received.size() < response.size()) {
        const ssize_t count = recv(client_.get(), piece.data(), piece.size(), 0);
        ASSERT_GT(count, 0) << std::strerror(errno);
        received.append(piece.data(), static_cast<std::size_t>(count));
    }
    EXPECT_TRUE(same_bytes(received, response));
    backend_writer.join();
    EXPECT_EQ(read_to_eof(client_.get()), "");
    shutdown(client_.get(), SHUT_WR);
    EXPECT_EQ(finish().bytes_out, response.size());
}

}  // namespace
}  // namespace cloister
