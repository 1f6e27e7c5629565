#include "core/backend_broker.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <future>
#include <random>
#include <string>
#include <vector>

#include "core/child_process.h"
#include "core/error.h"

namespace cloister {
namespace {

using std::chrono::milliseconds;

constexpr milliseconds connect_timeout{2'000};

// A listening TCP socket on 127.0.0.1 with a kernel-chosen port.
struct TcpListener {
    Fd fd;
    ResolvedAddress address;

    explicit TcpListener(int backlog = 16) : fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
        sockaddr_in in{};
        in.sin_family = AF_INET;
        in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        EXPECT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&in), sizeof(in)), 0);
        EXPECT_EQ(::listen(fd.get(), backlog), 0);
        address.length = sizeof(sockaddr_in);
        EXPECT_EQ(
            ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&address.storage), &address.length),
            0);
    }
};

// A listener whose accept queue is full, so that the kernel drops new SYNs and a connect to
// it stays in progress.
struct FullListener : TcpListener {
    std::vector<Fd> fillers;

    FullListener() : TcpListener(0) {
        for (int i = 0; i < 4; ++i) {
            fillers.emplace_back(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
            ::connect(fillers.back().get(), address.get(), address.length);
        }
    }
};

// An address on 127.0.0.1 where nothing listens: the port of a listener that was closed.
ResolvedAddress closed_port() {
    const TcpListener listener;
    return listener.address;
}

// The supervisor side of one connection process: its status socket pair and the broker.
class BrokerHarness {
  public:
    BrokerHarness() {
        auto [supervisor, child] = make_seqpacket_pair();
        supervisor_ = std::move(supervisor);
        child_ = std::move(child);
    }

    [[nodiscard]] int child_fd() const { return child_.get(); }

    // Runs the supervisor's part until done is ready: reads each message from the child and
    // hands it to the broker, and polls the broker's connects.
    template <typename Result>
    Result serve(std::future<Result>& done, const BackendTable& table, bool serving = true) {
        while (done.wait_for(milliseconds(0)) != std::future_status::ready) {
            std::vector<pollfd> fds{{supervisor_.get(), POLLIN, 0}};
            broker.poll_fds(fds);
            if (::poll(fds.data(), fds.size(), 20) > 0) {
                if (fds[0].revents != 0) {
                    read_one(table, serving);
                }
                broker.handle_poll(std::span(fds).subspan(1));
            }
            broker.handle_timeouts(BackendBroker::Clock::now());
        }
        return done.get();
    }

    // Sends raw bytes as the child would, then lets the broker read them.
    BrokerVerdict send_raw(std::span<const std::uint8_t> bytes, const BackendTable& table,
                           bool serving = true) {
        EXPECT_EQ(::send(child_.get(), bytes.data(), bytes.size(), 0),
                  static_cast<ssize_t>(bytes.size()));
        return read_one(table, serving);
    }

    // The errno value of the next reply the child end receives, while the broker's connects
    // are polled.
    int reply_error() {
        const auto deadline = std::chrono::steady_clock::now() + milliseconds(5'000);
        pollfd entry{child_.get(), POLLIN, 0};
        while (::poll(&entry, 1, 0) == 0 && std::chrono::steady_clock::now() < deadline) {
            std::vector<pollfd> fds;
            broker.poll_fds(fds);
            ::poll(fds.data(), fds.size(), 20);
            broker.handle_poll(fds);
        }
        std::array<std::uint8_t, 16> buffer{};
        const ssize_t size = ::recv(child_.get(), buffer.data(), buffer.size(), MSG_DONTWAIT);
        EXPECT_GT(size, 0);
        const auto error = parse_backend_reply(
            std::span(buffer).first(static_cast<std::size_t>(std::max<ssize_t>(size, 0))));
        EXPECT_TRUE(error);
        return error.value_or(-1);
    }

    BrokerVerdict last_verdict = BrokerVerdict::keep_reading;
    BackendBroker broker;

  private:
    BrokerVerdict read_one(const BackendTable& table, bool serving) {
        std::array<std::uint8_t, backend_message_size> buffer{};
        const ssize_t size =
            ::recv(supervisor_.get(), buffer.data(), buffer.size(), MSG_DONTWAIT | MSG_TRUNC);
        if (size <= 0) {
            return last_verdict;
        }
        const auto full = static_cast<std::size_t>(size);
        last_verdict = broker.handle_message(BrokerClient{42, supervisor_.get(), serving},
                                             std::span(buffer).first(std::min(full, buffer.size())),
                                             full, table, connect_timeout);
        return last_verdict;
    }

    Fd supervisor_;
    Fd child_;
};

// Requests the backend of vhost index on the harness's child end, in another thread.
std::future<Fd> request_async(const BrokerHarness& harness, std::uint32_t index,
                              milliseconds timeout = connect_timeout) {
    const int fd = harness.child_fd();
    return std::async(std::launch::async,
                      [fd, index, timeout] { return request_backend(fd, index, timeout); });
}

TEST(BackendMessages, RequestRoundTrip) {
    for (const std::uint32_t index : {0U, 1U, 255U, 256U, 0x01020304U, 0xffffffffU}) {
        const BackendMessage message = encode_backend_request(index);
        EXPECT_EQ(message[0], 'B');
        EXPECT_EQ(parse_backend_request(message), index);
        EXPECT_FALSE(parse_backend_reply(message));
    }
    EXPECT_EQ(encode_backend_request(0x01020304U), (BackendMessage{'B', 4, 3, 2, 1}));
}

TEST(BackendMessages, ReplyRoundTrip) {
    for (const int error : {0, ECONNREFUSED, ETIMEDOUT, EINVAL}) {
        EXPECT_EQ(parse_backend_reply(encode_backend_reply(error)), error);
    }
}

// Random inputs: only a 5-byte message that starts with 'B' parses, and then to the index
// its bytes spell.
TEST(BackendMessages, ParserAcceptsOnlyExactRequests) {
    std::mt19937 random(20261204);
    std::uniform_int_distribution<int> byte(0, 255);
    std::uniform_int_distribution<std::size_t> length(0, 12);
    std::size_t parsed = 0;
    for (int round = 0; round < 200'000; ++round) {
        std::vector<std::uint8_t> input(length(random));
        for (std::uint8_t& value : input) {
            value = static_cast<std::uint8_t>(byte(random));
        }
        // Every tenth input starts as a request, so that the accepting path is exercised.
        if (round % 10 == 0 && !input.empty()) {
            input[0] = backend_request_tag;
        }
        const auto index = parse_backend_request(input);
        const bool valid = input.size() == backend_message_size && input[0] == 'B';
        ASSERT_EQ(index.has_value(), valid);
        if (valid) {
            ++parsed;
            const std::uint32_t expected = input[1] | (input[2] << 8U) | (input[3] << 16U) |
                                           (static_cast<std::uint32_t>(input[4]) << 24U);
            ASSERT_EQ(*index, expected);
        }
    }
    EXPECT_GT(parsed, 100U);
}

TEST(BackendBroker, ConnectsTcpBackendAndPassesSocket) {
    const TcpListener listener;
    const BackendTable table{{closed_port()}, {listener.address}};
    BrokerHarness harness;
    std::future<Fd> done = request_async(harness, 1);
    Fd backend = harness.serve(done, table);
    ASSERT_TRUE(backend);
    const Fd accepted(::accept(listener.fd.get(), nullptr, nullptr));
    ASSERT_TRUE(accepted);
    ASSERT_EQ(::send(backend.get(), "ping", 4, MSG_NOSIGNAL), 4);
    std::array<char, 4> buffer{};
    ASSERT_EQ(::recv(accepted.get(), buffer.data(), buffer.size(), MSG_WAITALL), 4);
    EXPECT_EQ(std::string(buffer.data(), 4), "ping");
    EXPECT_EQ(harness.broker.pending(), 0U);
}

TEST(BackendBroker, TriesNextAddressAfterRefusal) {
    const TcpListener listener;
    const BackendTable table{{closed_port(), listener.address}};
    BrokerHarness harness;
    std::future<Fd> done = request_async(harness, 0);
    EXPECT_TRUE(harness.serve(done, table));
}

TEST(BackendBroker, ConnectsUnixSocketBackend) {
    const std::filesystem::path path = std::filesystem::temp_directory_path() /
                                       ("broker-test-" + std::to_string(::getpid()) + ".sock");
    std::filesystem::remove(path);
    const Fd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    ResolvedAddress address;
    auto* un = reinterpret_cast<sockaddr_un*>(&address.storage);
    un->sun_family = AF_UNIX;
    std::strncpy(un->sun_path, path.c_str(), sizeof(un->sun_path) - 1);
    address.length = sizeof(sockaddr_un);
    ASSERT_EQ(::bind(listener.get(), address.get(), address.length), 0);
    ASSERT_EQ(::listen(listener.get(), 4), 0);
    const BackendTable table{{address}};
    BrokerHarness harness;
    std::future<Fd> done = request_async(harness, 0);
    EXPECT_TRUE(harness.serve(done, table));
    std::filesystem::remove(path);
}

TEST(BackendBroker, RefusedConnectReportsReason) {
    const BackendTable table{{closed_port()}};
    BrokerHarness harness;
    std::future<std::string> done =
        std::async(std::launch::async, [fd = harness.child_fd()]() -> std::string {
            try {
                request_backend(fd, 0, connect_timeout);
            } catch (const Error& error) {
                return error.what();
            }
            return "connected";
        });
    EXPECT_EQ(harness.serve(done, table), "Connection refused (connected by the supervisor)");
}

TEST(BackendBroker, UnresolvedBackendFails) {
    const BackendTable table{{}};
    BrokerHarness harness;
    EXPECT_EQ(harness.send_raw(encode_backend_request(0), table), BrokerVerdict::keep_reading);
    EXPECT_NE(harness.reply_error(), 0);
}

TEST(BackendBroker, OutOfRangeIndexRejected) {
    const BackendTable table{{closed_port()}};
    BrokerHarness harness;
    EXPECT_EQ(harness.send_raw(encode_backend_request(1), table), BrokerVerdict::keep_reading);
    EXPECT_EQ(harness.reply_error(), EINVAL);
    EXPECT_EQ(harness.send_raw(encode_backend_request(0xffffffffU), table),
              BrokerVerdict::stop_reading);
    EXPECT_EQ(harness.reply_error(), EALREADY);
    EXPECT_EQ(harness.broker.pending(), 0U);
}

TEST(BackendBroker, SecondRequestRejected) {
    const TcpListener listener;
    const BackendTable table{{listener.address}};
    BrokerHarness harness;
    EXPECT_EQ(harness.send_raw(encode_backend_request(0), table), BrokerVerdict::keep_reading);
    EXPECT_EQ(harness.reply_error(), 0);
    EXPECT_EQ(harness.send_raw(encode_backend_request(0), table), BrokerVerdict::stop_reading);
    EXPECT_EQ(harness.reply_error(), EALREADY);
}

TEST(BackendBroker, MalformedMessagesRejected) {
    const BackendTable table{{closed_port()}};
    const std::vector<std::vector<std::uint8_t>> inputs{
        {'B', 0, 0, 0},        // short
        {'B', 0, 0, 0, 0, 0},  // long: truncated to 5 bytes, still rejected
        {'X', 0, 0, 0, 0},     // wrong tag
        {'C', 0, 0, 0, 0},     // a reply sent back
        {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
    };
    for (const auto& input : inputs) {
        BrokerHarness harness;
        EXPECT_EQ(harness.send_raw(input, table), BrokerVerdict::stop_reading);
        EXPECT_EQ(harness.reply_error(), EBADMSG);
        EXPECT_EQ(harness.broker.pending(), 0U);
    }
}

TEST(BackendBroker, RequestBeforeAcceptRejected) {
    const BackendTable table{{closed_port()}};
    BrokerHarness harness;
    EXPECT_EQ(harness.send_raw(encode_backend_request(0), table, false),
              BrokerVerdict::stop_reading);
    EXPECT_EQ(harness.reply_error(), EPERM);
}

TEST(BackendBroker, ConnectTimesOutWithoutBlocking) {
    const FullListener listener;
    const BackendTable table{{listener.address}};
    BrokerHarness harness;
    const auto before = std::chrono::steady_clock::now();
    EXPECT_EQ(harness.send_raw(encode_backend_request(0), table), BrokerVerdict::keep_reading);
    EXPECT_LT(std::chrono::steady_clock::now() - before, milliseconds(500));
    ASSERT_EQ(harness.broker.pending(), 1U);
    ASSERT_TRUE(harness.broker.next_deadline());
    harness.broker.handle_timeouts(*harness.broker.next_deadline());
    EXPECT_EQ(harness.reply_error(), ETIMEDOUT);
    EXPECT_EQ(harness.broker.pending(), 0U);
}

TEST(BackendBroker, ForgetDropsPendingConnect) {
    const FullListener listener;
    const BackendTable table{{listener.address}};
    BrokerHarness harness;
    harness.send_raw(encode_backend_request(0), table);
    ASSERT_EQ(harness.broker.pending(), 1U);
    harness.broker.forget(42);
    EXPECT_EQ(harness.broker.pending(), 0U);
    EXPECT_FALSE(harness.broker.next_deadline());
}

}  // namespace
}  // namespace cloister
