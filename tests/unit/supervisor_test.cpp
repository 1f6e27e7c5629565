// Tests of the supervisor with real processes: it forks a key process and connection
// processes, and clients connect over loopback TCP. A fake key process responds to every
// key request, and a fake TLS stack passes plaintext through; its handshake waits for the
// client's first bytes and then makes one key operation over the connection's key channel.
#include "core/supervisor.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/key_client.h"
#include "core/key_protocol.h"
#include "core/log.h"

namespace cloister {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// ---- fake key process ------------------------------------------------------------------

std::optional<Fd> receive_attach(int control) {
    std::array<std::uint8_t, keyproto::attach_size> data{};
    iovec vector{data.data(), data.size()};
    alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(int))> control_data{};
    msghdr header{};
    header.msg_iov = &vector;
    header.msg_iovlen = 1;
    header.msg_control = control_data.data();
    header.msg_controllen = control_data.size();
    if (recvmsg(control, &header, MSG_CMSG_CLOEXEC) <= 0) {
        return std::nullopt;
    }
    const cmsghdr* descriptor = CMSG_FIRSTHDR(&header);
    int fd = -1;
    if (descriptor != nullptr && descriptor->cmsg_type == SCM_RIGHTS) {
        std::memcpy(&fd, CMSG_DATA(descriptor), sizeof(fd));
    }
    if (!keyproto::decode_attach(data)) {
        return Fd();
    }
    return Fd(fd);
}

// Responds to one request with status ok and three bytes. Returns false when the channel
// ended.
bool answer_request(int channel) {
    std::array<std::uint8_t, keyproto::max_request_size> data{};
    const ssize_t received = recv(channel, data.data(), data.size(), 0);
    if (received <= 0) {
        return false;
    }
    const auto request =
        keyproto::decode_request({data.data(), static_cast<std::size_t>(received)});
    if (!request) {
        return false;
    }
    keyproto::Response response;
    response.type = request.value->type;
    response.request_id = request.value->request_id;
    response.payload = {1, 2, 3};
    const auto encoded = keyproto::encode(response);
    return send(channel, encoded.data(), encoded.size(), MSG_NOSIGNAL) > 0;
}

int fake_key_process(const Config& /*config*/, Fd control) {
    std::signal(SIGUSR1, SIG_IGN);
    std::vector<Fd> channels;
    for (;;) {
        std::vector<pollfd> fds{{control.get(), POLLIN, 0}};
        for (const Fd& channel : channels) {
            fds.push_back({channel.get(), POLLIN, 0});
        }
        poll(fds.data(), fds.size(), -1);
        if (fds[0].revents != 0) {
            std::optional<Fd> channel = receive_attach(control.get());
            if (!channel) {
                return 0;
            }
            channels.push_back(std::move(*channel));
        }
        for (std::size_t i = 1; i < fds.size(); ++i) {
            if (fds[i].revents != 0 && !answer_request(fds[i].fd)) {
                channels[i - 1].reset();
            }
        }
        std::erase_if(channels, [](const Fd& channel) { return !channel.valid(); });
    }
}

// ---- fake TLS stack --------------------------------------------------------------------

class PlaintextSession final : public TlsSession {
  public:
    PlaintextSession(int fd, KeyClient* client) : fd_(fd), client_(client) {}

    // Waits for the client's first bytes (without consuming them), then signs once.
    // "abort" as the first bytes makes the process abort, as a crash would.
    IoResult handshake() override {
        std::array<char, 5> peek{};
        const ssize_t peeked = recv(fd_, peek.data(), peek.size(), MSG_PEEK);
        if (peeked < 0 && errno == EAGAIN) {
            return {IoStatus::want_read, 0, {}};
        }
        if (peeked <= 0) {
            return {IoStatus::truncated, 0, {}};
        }
        if (std::string_view(peek.data(), static_cast<std::size_t>(peeked)) == "abort") {
            std::abort();
        }
        try {
            const std::array<std::uint8_t, 1> message{7};
            client_->sign(0, 0x0804, message);
        } catch (const Error& error) {
            return {IoStatus::failed, 0, error.what()};
        }
        return {IoStatus::done, 0, {}};
    }

    IoResult read(std::span<std::byte> buffer) override {
        const ssize_t received = recv(fd_, buffer.data(), buffer.size(), 0);
        if (received > 0) {
            return {IoStatus::done, static_cast<std::size_t>(received), {}};
        }
        if (received == 0) {
            return {IoStatus::closed, 0, {}};
        }
        return errno == EAGAIN ? IoResult{IoStatus::want_read, 0, {}}
                               : IoResult{IoStatus::failed, 0, std::strerror(errno)};
    }

    IoResult write(std::span<const std::byte> data) override {
        const ssize_t sent = send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
        if (sent >= 0) {
            return {IoStatus::done, static_cast<std::size_t>(sent), {}};
        }
        return errno == EAGAIN ? IoResult{IoStatus::want_write, 0, {}}
                               : IoResult{IoStatus::failed, 0, std::strerror(errno)};
    }

    IoResult shutdown() override {
        ::shutdown(fd_, SHUT_WR);
        return {IoStatus::done, 0, {}};
    }

    [[nodiscard]] bool has_pending() const override { return false; }
    [[nodiscard]] HandshakeInfo info() const override {
        return {"fake.example.test", 0, "plain", "none", "fake_scheme", ""};
    }

  private:
    int fd_;
    KeyClient* client_;
};

class PlaintextStack final : public TlsStack {
  public:
    explicit PlaintextStack(bool keys_match) : keys_match_(keys_match) {}

    [[nodiscard]] std::string_view name() const override { return "plaintext"; }
    void use_key_client(KeyClient& client) override { client_ = &client; }
    void reseed_after_fork() override {}
    void verify_keys() override {
        client_->public_key(0);
        if (!keys_match_) {
            throw Error(ErrorKind::config, "key 'fake' does not match certificate fake.pem");
        }
    }
    std::unique_ptr<TlsSession> new_session(int client_fd, std::uint64_t /*id*/) override {
        return std::make_unique<PlaintextSession>(client_fd, client_);
    }

  private:
    bool keys_match_;
    KeyClient* client_ = nullptr;
};

// ---- helpers ---------------------------------------------------------------------------

std::uint16_t local_port(int fd) {
    sockaddr_in address{};
    socklen_t length = sizeof(address);
    getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
    return ntohs(address.sin_port);
}

Fd tcp_listener() {
    Fd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    EXPECT_EQ(listen(fd.get(), 64), 0);
    return fd;
}

std::uint16_t free_port() {
    const Fd probe = tcp_listener();
    return local_port(probe.get());
}

SocketAddress loopback(std::uint16_t port) {
    SocketAddress address;
    address.host = "127.0.0.1";
    address.port = port;
    address.text = "127.0.0.1:" + std::to_string(port);
    return address;
}

Fd connect_to(std::uint16_t port) {
    Fd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
        return Fd();
    }
    const timeval timeout{5, 0};
    setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    return fd;
}

std::string receive(int fd, std::size_t size) {
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

// Sends data on a new connection and returns what comes back before EOF.
std::string round_trip(std::uint16_t port, const std::string& data) {
    const Fd fd = connect_to(port);
    if (!fd) {
        return "<connect failed>";
    }
    send(fd.get(), data.data(), data.size(), MSG_NOSIGNAL);
    shutdown(fd.get(), SHUT_WR);
    std::string reply;
    std::array<char, 1024> buffer{};
    for (ssize_t received = 0; (received = recv(fd.get(), buffer.data(), buffer.size(), 0)) > 0;) {
        reply.append(buffer.data(), static_cast<std::size_t>(received));
    }
    return reply;
}

struct ProcessEntry {
    pid_t pid = 0;
    std::string comm;
    char state = '?';
};

// Children of parent, from /proc.
std::vector<ProcessEntry> children_of(pid_t parent) {
    std::vector<ProcessEntry> children;
    for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
        const std::string name = entry.path().filename();
        if (name.find_first_not_of("0123456789") != std::string::npos) {
            continue;
        }
        std::ifstream stat_file(entry.path() / "stat");
        std::string stat;
        std::getline(stat_file, stat);
        const auto close = stat.rfind(')');
        if (close == std::string::npos) {
            continue;
        }
        std::istringstream rest(stat.substr(close + 2));
        char state = '?';
        pid_t ppid = 0;
        rest >> state >> ppid;
        if (ppid == parent) {
            const auto open = stat.find('(');
            children.push_back({std::stoi(name), stat.substr(open + 1, close - open - 1), state});
        }
    }
    return children;
}

std::size_t count_comm(const std::vector<ProcessEntry>& processes, const std::string& comm) {
    return static_cast<std::size_t>(std::count_if(
        processes.begin(), processes.end(), [&](const ProcessEntry& p) { return p.comm == comm; }));
}

template <typename Predicate>
bool eventually(Predicate predicate, std::chrono::milliseconds timeout = 5s) {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
        if (predicate()) {
            return true;
        }
        std::this_thread::sleep_for(20ms);
    }
    return predicate();
}

// Collects what a process writes to a pipe, so tests can wait for log lines.
class LogCollector {
  public:
    explicit LogCollector(Fd pipe) : pipe_(std::move(pipe)), reader_([this] { read_all(); }) {}
    LogCollector(const LogCollector&) = delete;
    LogCollector& operator=(const LogCollector&) = delete;
    ~LogCollector() { reader_.join(); }

    // Waits until a line at or after position from matches pattern. Returns the line.
    std::optional<std::string> wait_for(const std::string& pattern, std::size_t from = 0,
                                        std::chrono::milliseconds timeout = 5s) {
        const std::regex expression(pattern);
        std::unique_lock lock(mutex_);
        std::optional<std::string> found;
        changed_.wait_for(lock, timeout, [&] {
            found = search(expression, from);
            return found.has_value() || closed_;
        });
        return found ? found : search(expression, from);
    }

    std::size_t mark() {
        const std::scoped_lock lock(mutex_);
        return text_.size();
    }

    std::string text() {
        const std::scoped_lock lock(mutex_);
        return text_;
    }

  private:
    std::optional<std::string> search(const std::regex& expression, std::size_t from) const {
        std::istringstream lines(text_.substr(std::min(from, text_.size())));
        for (std::string line; std::getline(lines, line);) {
            if (std::regex_search(line, expression)) {
                return line;
            }
        }
        return std::nullopt;
    }

    void read_all() {
        std::array<char, 4096> buffer{};
        for (;;) {
            const ssize_t received = read(pipe_.get(), buffer.data(), buffer.size());
            const std::scoped_lock lock(mutex_);
            if (received <= 0) {
                closed_ = true;
                changed_.notify_all();
                return;
            }
            text_.append(buffer.data(), static_cast<std::size_t>(received));
            changed_.notify_all();
        }
    }

    Fd pipe_;
    std::mutex mutex_;
    std::condition_variable changed_;
    std::string text_;
    bool closed_ = false;
    std::thread reader_;
};

// Echoes every connection until the peer's EOF, then closes it.
class EchoBackend {
  public:
    EchoBackend() : listener_(tcp_listener()) {}
    EchoBackend(const EchoBackend&) = delete;
    EchoBackend& operator=(const EchoBackend&) = delete;
    ~EchoBackend() { stop(); }

    [[nodiscard]] std::uint16_t port() const { return local_port(listener_.get()); }
    [[nodiscard]] int fd() const { return listener_.get(); }

    void start() {
        thread_ = std::thread([this] { accept_loop(); });
    }
    void stop() {
        stopping_ = true;
        if (thread_.joinable()) {
            thread_.join();
        }
    }

  private:
    void accept_loop() {
        std::vector<std::thread> workers;
        while (!stopping_) {
            pollfd entry{listener_.get(), POLLIN, 0};
            if (poll(&entry, 1, 50) <= 0) {
                continue;
            }
            Fd connection(accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
            if (connection) {
                workers.emplace_back([fd = std::move(connection)] { echo(fd.get()); });
            }
        }
        for (std::thread& worker : workers) {
            worker.join();
        }
    }

    static void echo(int fd) {
        const timeval timeout{10, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
        std::array<char, 4096> buffer{};
        for (ssize_t received = 0; (received = recv(fd, buffer.data(), buffer.size(), 0)) > 0;) {
            send(fd, buffer.data(), static_cast<std::size_t>(received), MSG_NOSIGNAL);
        }
    }

    Fd listener_;
    std::atomic<bool> stopping_{false};
    std::thread thread_;
};

struct FakeOptions {
    bool keys_match = true;
    int key_process_status = -1;            // >= 0: the fake key process exits at once with it
    std::function<Config()> load_config{};  // the configuration a reload reads
};

SupervisorHooks fake_hooks(FakeOptions options) {
    SupervisorHooks hooks;
    hooks.key_process_main = [options](const Config& config, Fd control) {
        if (options.key_process_status >= 0) {
            return options.key_process_status;
        }
        return fake_key_process(config, std::move(control));
    };
    hooks.make_tls_stack = [options](const Config& /*config*/, const VhostTable& /*vhosts*/) {
        return std::unique_ptr<TlsStack>(std::make_unique<PlaintextStack>(options.keys_match));
    };
    hooks.load_config = options.load_config;
    return hooks;
}

// An empty directory owned by root, mode 0755, for the chroot; removed when the test exits.
class EmptyRootDirectory {
  public:
    EmptyRootDirectory() {
        std::string pattern =
            (std::filesystem::temp_directory_path() / "cloister-empty-XXXXXX").string();
        if (mkdtemp(pattern.data()) != nullptr && chmod(pattern.c_str(), 0755) == 0) {
            path_ = pattern;
        }
    }
    EmptyRootDirectory(const EmptyRootDirectory&) = delete;
    EmptyRootDirectory& operator=(const EmptyRootDirectory&) = delete;
    ~EmptyRootDirectory() {
        std::error_code ignored;
        std::filesystem::remove(path_, ignored);
    }
    [[nodiscard]] const std::filesystem::path& path() const { return path_; }

  private:
    std::filesystem::path path_;
};

// As root, the supervisor needs two unprivileged users and an empty chroot directory: "nobody"
// and "daemon" exist on every Debian system. PID namespaces stay off, so that a signal still
// ends a connection process with that signal instead of an exit status.
void use_test_sandbox(Config& config) {
    static const EmptyRootDirectory root;
    config.sandbox.network_user = "nobody";
    config.sandbox.key_user = "daemon";
    config.sandbox.root_directory = root.path();
    config.sandbox.namespaces = false;
}

// ---- fixture ---------------------------------------------------------------------------

class SupervisorTest : public ::testing::Test {
  protected:
    SupervisorTest() {
        port_ = free_port();
        ListenerConfig listener;
        listener.address = loopback(port_);
        config_.listeners.push_back(listener);
        VhostConfig vhost;
        vhost.name = "fake";
        vhost.is_default = true;
        vhost.backend = loopback(backend_.port());
        config_.vhosts.push_back(vhost);
        config_.server.log_level = LogLevel::debug;
        config_.limits.spare_children = 2;
        config_.limits.max_connections = 8;
        config_.limits.handshake_timeout = 500ms;
        config_.limits.idle_timeout = 5s;
        config_.limits.drain_timeout = 3s;
        config_.limits.backend_connect_timeout = 1s;
        config_.limits.key_operation_timeout = 1s;
        use_test_sandbox(config_);
    }

    ~SupervisorTest() override {
        if (pid_ > 0) {
            kill(pid_, SIGKILL);
            waitpid(pid_, nullptr, 0);
        }
        for (const pid_t child : seen_children_) {
            kill(child, SIGKILL);
        }
    }

    // Forks the supervisor with stderr on a pipe, then starts the backend thread.
    void launch(FakeOptions options = {}) {
        std::array<int, 2> pipe_fds{};
        ASSERT_EQ(pipe2(pipe_fds.data(), O_CLOEXEC), 0);
        Fd read_end(pipe_fds[0]);
        Fd write_end(pipe_fds[1]);
        pid_ = fork();
        ASSERT_GE(pid_, 0);
        if (pid_ == 0) {
            dup2(write_end.get(), STDERR_FILENO);
            close(backend_.fd());
            init_logging("supervisor", LogLevel::debug);
            int status = 1;
            try {
                status = run_supervisor(config_, fake_hooks(options));
            } catch (const Error& error) {
                spdlog::error("run_supervisor threw: {}", error.what());
            }
            _exit(status);
        }
        write_end.reset();
        log_.emplace(std::move(read_end));
        backend_.start();
    }

    void launch_and_wait_ready(FakeOptions options = {}) {
        launch(options);
        ASSERT_TRUE(log_->wait_for("cloister \\S+ started")) << log_->text();
        ASSERT_TRUE(eventually([&] { return spares() == 2; })) << log_->text();
    }

    std::size_t spares() { return count_comm(children(), "cloister-conn"); }

    std::vector<ProcessEntry> children() {
        auto list = children_of(pid_);
        for (const ProcessEntry& child : list) {
            seen_children_.push_back(child.pid);
        }
        return list;
    }

    pid_t key_pid() {
        for (const ProcessEntry& child : children()) {
            if (child.comm == "cloister-key") {
                return child.pid;
            }
        }
        return -1;
    }

    // Waits for the supervisor to exit; returns its wait status, or -1 on timeout.
    int wait_exit(std::chrono::milliseconds timeout = 10s) {
        int status = -1;
        const bool exited =
            eventually([&] { return waitpid(pid_, &status, WNOHANG) == pid_; }, timeout);
        if (exited) {
            pid_ = -1;
            return status;
        }
        return -1;
    }

    Config config_;
    std::uint16_t port_ = 0;
    EchoBackend backend_;
    pid_t pid_ = -1;
    std::optional<LogCollector> log_;
    std::vector<pid_t> seen_children_;
};

// ---- tests -----------------------------------------------------------------------------

TEST_F(SupervisorTest, StartsKeyProcessAndSpares) {
    launch_and_wait_ready();
    const auto list = children();
    EXPECT_EQ(count_comm(list, "cloister-key"), 1U);
    EXPECT_EQ(count_comm(list, "cloister-conn"), 2U);
    EXPECT_TRUE(log_->wait_for("listening on 127\\.0\\.0\\.1:" + std::to_string(port_)));
    EXPECT_TRUE(
        log_->wait_for("started: tls-backend=plaintext, 1 listeners, 1 vhosts, key "
                       "process pid \\d+"));
}

TEST_F(SupervisorTest, ServesConnectionAndLogsSummary) {
    launch_and_wait_ready();
    EXPECT_EQ(round_trip(port_, "ping"), "ping");
    const auto line = log_->wait_for("connection closed:");
    ASSERT_TRUE(line) << log_->text();
    EXPECT_TRUE(std::regex_search(
        *line, std::regex("connection\\[\\d+\\]: connection closed: peer=127\\.0\\.0\\.1:\\d+ "
                          "sni=fake\\.example\\.test vhost=fake protocol=plain cipher=none "
                          "scheme=fake_scheme alpn=- bytes_in=4 bytes_out=4 duration_ms=\\d+ "
                          "result=ok$")))
        << *line;
    EXPECT_TRUE(eventually([&] { return spares() == 2; }));
}

TEST_F(SupervisorTest, ManyConnectionsLeaveNoZombiesOrDescriptors) {
    launch_and_wait_ready();
    const auto fd_count = [&] {
        const auto path = "/proc/" + std::to_string(pid_) + "/fd";
        return std::distance(std::filesystem::directory_iterator(path),
                             std::filesystem::directory_iterator());
    };
    const auto before = fd_count();
    for (int i = 0; i < 20; ++i) {
        EXPECT_EQ(round_trip(port_, "message " + std::to_string(i)),
                  "message " + std::to_string(i));
    }
    EXPECT_TRUE(eventually([&] {
        const auto list = children();
        return spares() == 2 && list.size() == 3 &&
               std::none_of(list.begin(), list.end(), [](const auto& p) { return p.state == 'Z'; });
    })) << log_->text();
    EXPECT_EQ(fd_count(), before);
}

TEST_F(SupervisorTest, HandshakeDeadlineEndsSilentClient) {
    launch_and_wait_ready();
    const Fd client = connect_to(port_);
    ASSERT_TRUE(log_->wait_for("handshake timed out after 500 ms")) << log_->text();
    EXPECT_TRUE(
        log_->wait_for("result=handshake_timeout reason=\"no complete handshake within "
                       "500 ms\""));
    EXPECT_EQ(receive(client.get(), 1), "");
}

TEST_F(SupervisorTest, CrashedConnectionProcessIsLoggedAndReplaced) {
    launch_and_wait_ready();
    const Fd client = connect_to(port_);
    send(client.get(), "abort", 5, MSG_NOSIGNAL);
    EXPECT_TRUE(
        log_->wait_for("connection process \\d+ \\(connection \\d+\\) exited \\(signal 6 "
                       "\\(SIGABRT\\)\\)"))
        << log_->text();
    EXPECT_TRUE(eventually([&] { return spares() == 2; }));
    EXPECT_EQ(round_trip(port_, "still serving"), "still serving");
}

TEST_F(SupervisorTest, KilledKeyProcessIsRestarted) {
    launch_and_wait_ready();
    const pid_t old_key = key_pid();
    ASSERT_GT(old_key, 0);
    const std::size_t mark = log_->mark();
    kill(old_key, SIGKILL);
    EXPECT_TRUE(log_->wait_for("key process " + std::to_string(old_key) +
                                   " exited \\(signal 9 \\(SIGKILL\\)\\); restarting",
                               mark))
        << log_->text();
    EXPECT_TRUE(eventually([&] {
        const pid_t key = key_pid();
        return key > 0 && key != old_key && spares() == 2;
    }));
    EXPECT_EQ(round_trip(port_, "after restart"), "after restart");
}

// A connection accepted before the key process died keeps its dead key channel, so its
// handshake fails cleanly instead of reaching the new key process.
TEST_F(SupervisorTest, LiveConnectionFailsAfterKeyProcessDies) {
    launch_and_wait_ready();
    const Fd client = connect_to(port_);
    ASSERT_TRUE(eventually([&] {
        const auto list = children();
        return std::any_of(list.begin(), list.end(),
                           [](const ProcessEntry& p) { return p.comm == "cloister-conn"; }) &&
               log_->text().find("accepted a connection") != std::string::npos;
    }));
    const std::size_t mark = log_->mark();
    kill(key_pid(), SIGKILL);
    ASSERT_TRUE(log_->wait_for("restarting", mark));
    send(client.get(), "hello", 5, MSG_NOSIGNAL);
    EXPECT_TRUE(log_->wait_for("result=handshake_failed reason=\"key channel closed", mark))
        << log_->text();
}

TEST_F(SupervisorTest, SigtermDrainsLiveConnection) {
    launch_and_wait_ready();
    const Fd client = connect_to(port_);
    send(client.get(), "ping", 4, MSG_NOSIGNAL);
    ASSERT_EQ(receive(client.get(), 4), "ping");
    kill(pid_, SIGTERM);
    ASSERT_TRUE(log_->wait_for("stopping: draining 1 connections")) << log_->text();
    std::this_thread::sleep_for(300ms);
    EXPECT_EQ(waitpid(pid_, nullptr, WNOHANG), 0) << "the supervisor did not wait for the drain";
    // The listener is closed, so new clients are refused.
    EXPECT_FALSE(connect_to(port_).valid());

    send(client.get(), "pong", 4, MSG_NOSIGNAL);
    EXPECT_EQ(receive(client.get(), 4), "pong");
    shutdown(client.get(), SHUT_WR);
    const int status = wait_exit();
    ASSERT_TRUE(WIFEXITED(status)) << status;
    EXPECT_EQ(WEXITSTATUS(status), 0);
    EXPECT_TRUE(log_->wait_for("supervisor: stopped$"));
    for (const pid_t child : seen_children_) {
        EXPECT_NE(kill(child, 0), 0) << "child " << child << " outlived the supervisor";
    }
}

TEST_F(SupervisorTest, DrainTimeoutTerminatesConnections) {
    config_.limits.drain_timeout = 300ms;
    launch_and_wait_ready();
    const Fd client = connect_to(port_);
    send(client.get(), "ping", 4, MSG_NOSIGNAL);
    ASSERT_EQ(receive(client.get(), 4), "ping");
    kill(pid_, SIGTERM);
    const int status = wait_exit(5s);
    ASSERT_TRUE(WIFEXITED(status)) << status << log_->text();
    EXPECT_EQ(WEXITSTATUS(status), 0);
    EXPECT_TRUE(
        log_->wait_for("drain timeout of 300 ms passed; sending SIGTERM to 1 connection "
                       "processes"));
    EXPECT_TRUE(log_->wait_for("exited \\(signal 15 \\(SIGTERM\\)\\)"));
}

TEST_F(SupervisorTest, SignalsAreReported) {
    launch_and_wait_ready();
    kill(pid_, SIGUSR1);
    EXPECT_TRUE(
        log_->wait_for("connection processes: 2 spare, 0 busy, 0 retiring; 0 "
                       "connections served; key process pid \\d+"))
        << log_->text();
    kill(pid_, SIGHUP);
    EXPECT_TRUE(
        log_->wait_for("reload failed: this supervisor has no configuration file to read again; "
                       "keeping the configuration loaded at \\S+ \\(generation 1\\)"))
        << log_->text();
    EXPECT_EQ(waitpid(pid_, nullptr, WNOHANG), 0);
}

TEST_F(SupervisorTest, ReloadKeepsHeldConnection) {
    Config next = config_;
    next.limits.spare_children = 3;
    launch_and_wait_ready(FakeOptions{.load_config = [next] { return next; }});
    const Fd held = connect_to(port_);
    send(held.get(), "one", 3, MSG_NOSIGNAL);
    ASSERT_EQ(receive(held.get(), 3), "one");
    const auto old_key = log_->wait_for("key process (\\d+) started");
    ASSERT_TRUE(old_key);
    kill(pid_, SIGHUP);
    ASSERT_TRUE(
        log_->wait_for("reloaded: 1 listeners, 1 vhosts, key process pid \\d+ "
                       "\\(generation 2\\)"))
        << log_->text();
    // Three spares of generation 2 and the held connection of generation 1.
    EXPECT_TRUE(eventually([&] {
        const std::size_t mark = log_->mark();
        kill(pid_, SIGUSR1);
        return log_
            ->wait_for(
                "connection processes: 3 spare, 1 busy, 0 retiring; .*generation 2, 1 "
                "older generations draining",
                mark, 200ms)
            .has_value();
    })) << log_->text();
    EXPECT_EQ(count_comm(children(), "cloister-key"), 2U);
    EXPECT_EQ(round_trip(port_, "new"), "new");
    send(held.get(), "two", 3, MSG_NOSIGNAL);
    EXPECT_EQ(receive(held.get(), 3), "two");
    shutdown(held.get(), SHUT_WR);
    EXPECT_TRUE(log_->wait_for("key process \\d+ of generation 1 stopped")) << log_->text();
    EXPECT_TRUE(eventually([&] { return count_comm(children(), "cloister-key") == 1; }));
}

TEST_F(SupervisorTest, ReloadsStopAtEightDrainingGenerations) {
    config_.limits.max_connections = 32;
    const Config next = config_;
    launch_and_wait_ready(FakeOptions{.load_config = [next] { return next; }});
    // Each held connection keeps its generation, and so its key process, alive.
    std::vector<Fd> held;
    for (int generation = 2; generation <= 9; ++generation) {
        held.push_back(connect_to(port_));
        send(held.back().get(), "x", 1, MSG_NOSIGNAL);
        ASSERT_EQ(receive(held.back().get(), 1), "x");
        const std::size_t mark = log_->mark();
        kill(pid_, SIGHUP);
        ASSERT_TRUE(log_->wait_for("\\(generation " + std::to_string(generation) + "\\)", mark))
            << log_->text();
    }
    EXPECT_TRUE(log_->wait_for("8 older generations draining \\(at most 8\\)")) << log_->text();
    EXPECT_EQ(count_comm(children(), "cloister-key"), 9U);

    std::size_t mark = log_->mark();
    kill(pid_, SIGHUP);
    EXPECT_TRUE(
        log_->wait_for("reload failed: 8 older generations still serve connections, the "
                       "maximum; send SIGHUP again once one of them has drained; keeping "
                       "the configuration loaded at \\S+ \\(generation 9\\)",
                       mark))
        << log_->text();
    EXPECT_EQ(count_comm(children(), "cloister-key"), 9U);

    mark = log_->mark();
    held.front().reset();
    EXPECT_TRUE(log_->wait_for("key process \\d+ of generation 1 stopped", mark)) << log_->text();
    kill(pid_, SIGHUP);
    EXPECT_TRUE(log_->wait_for("\\(generation 10\\)", mark)) << log_->text();
}

TEST_F(SupervisorTest, FailedReloadKeepsServing) {
    launch_and_wait_ready(FakeOptions{.load_config = []() -> Config {
        throw Error(ErrorKind::config, "cloister.toml:3:1: invalid TOML");
    }});
    kill(pid_, SIGHUP);
    EXPECT_TRUE(
        log_->wait_for("reload failed: cloister.toml:3:1: invalid TOML; keeping the "
                       "configuration loaded at"))
        << log_->text();
    EXPECT_EQ(round_trip(port_, "still"), "still");
    EXPECT_EQ(count_comm(children(), "cloister-key"), 1U);
}

TEST_F(SupervisorTest, KeyLoadFailureExitsWithStatus2) {
    launch(FakeOptions{.key_process_status = 2});
    const int status = wait_exit();
    ASSERT_TRUE(WIFEXITED(status)) << status;
    EXPECT_EQ(WEXITSTATUS(status), 2);
    EXPECT_TRUE(log_->wait_for("key process exited with status 2 during start-up")) << log_->text();
    EXPECT_FALSE(log_->wait_for("listening on", 0, 0ms));
}

TEST_F(SupervisorTest, KeyMismatchExitsWithStatus2BeforeListening) {
    launch(FakeOptions{.keys_match = false});
    const int status = wait_exit();
    ASSERT_TRUE(WIFEXITED(status)) << status;
    EXPECT_EQ(WEXITSTATUS(status), 2);
    EXPECT_TRUE(log_->wait_for("key 'fake' does not match certificate fake.pem")) << log_->text();
    EXPECT_FALSE(log_->wait_for("listening on", 0, 0ms));
    EXPECT_FALSE(connect_to(port_).valid());
}

TEST(CheckConfig, ReportsValidAndMismatchedKeys) {
    Config config;
    VhostConfig vhost;
    vhost.name = "fake";
    vhost.is_default = true;
    config.vhosts.push_back(vhost);
    use_test_sandbox(config);
    init_logging("supervisor", LogLevel::error);
    EXPECT_EQ(check_config(config, fake_hooks({})), 0);
    EXPECT_EQ(check_config(config, fake_hooks({.keys_match = false})), 2);
    EXPECT_EQ(check_config(config, fake_hooks({.key_process_status = 2})), 2);
}

}  // namespace
}  // namespace cloister
