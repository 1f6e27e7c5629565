// The costs of connection-network = "none", measured on this host:
//   1. a child that joins one shared empty network namespace (setns) against a child that
//      creates its own (unshare(CLONE_NEWNET)), each forked, entered and reaped;
//   2. a backend connect made by the backend broker and passed back with SCM_RIGHTS, against
//      a direct non-blocking connect, both to a listener on 127.0.0.1.
// Needs root. Usage: netless_bench [ROUNDS]
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <thread>

#include "core/backend_broker.h"
#include "core/child_process.h"
#include "core/connection.h"
#include "core/sandbox_spawn.h"

namespace {

using Clock = std::chrono::steady_clock;
using cloister::Fd;

// Runs body in a forked child `rounds` times and returns the mean microseconds per child,
// from fork to reaping.
double per_child(int rounds, const std::function<int()>& body) {
    const auto start = Clock::now();
    for (int i = 0; i < rounds; ++i) {
        const pid_t pid = fork();
        if (pid == 0) {
            _exit(body());
        }
        int status = 0;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            std::fprintf(stderr, "child failed (status %d)\n", status);
            std::exit(1);
        }
    }
    return std::chrono::duration<double, std::micro>(Clock::now() - start).count() / rounds;
}

double mean_micros(int rounds, const std::function<void()>& body) {
    const auto start = Clock::now();
    for (int i = 0; i < rounds; ++i) {
        body();
    }
    return std::chrono::duration<double, std::micro>(Clock::now() - start).count() / rounds;
}

}  // namespace

int main(int argc, char** argv) {
    const int rounds = argc > 1 ? std::atoi(argv[1]) : 1000;
    spdlog::set_level(spdlog::level::warn);

    // 1. Namespaces.
    const Fd shared = cloister::create_empty_network_namespace();
    const double plain = per_child(rounds, [] { return 0; });
    const double join = per_child(rounds, [&shared] { return setns(shared.get(), CLONE_NEWNET); });
    const double own = per_child(rounds, [] { return unshare(CLONE_NEWNET); });
    std::printf("fork+exit:                 %8.1f us per child\n", plain);
    std::printf("fork+setns(shared)+exit:   %8.1f us per child\n", join);
    std::printf("fork+unshare(NEWNET)+exit: %8.1f us per child\n", own);

    // 2. Backend connects.
    const Fd listener(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(listener.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address));
    listen(listener.get(), 4096);
    cloister::ResolvedAddress backend;
    backend.length = sizeof(sockaddr_in);
    getsockname(listener.get(), reinterpret_cast<sockaddr*>(&backend.storage), &backend.length);
    std::atomic<bool> stop{false};
    std::thread acceptor([&] {
        while (!stop) {
            pollfd entry{listener.get(), POLLIN, 0};
            if (poll(&entry, 1, 50) > 0) {
                close(accept(listener.get(), nullptr, nullptr));
            }
        }
    });
    const std::vector<cloister::ResolvedAddress> addresses{backend};
    const double direct = mean_micros(
        rounds, [&] { cloister::connect_backend(addresses, std::chrono::milliseconds(2'000)); });

    auto [supervisor_end, child_end] = cloister::make_seqpacket_pair();
    const cloister::BackendTable table{addresses};
    std::thread supervisor([&, fd = supervisor_end.get()] {
        std::uint64_t id = 0;
        cloister::BackendBroker broker;
        while (!stop) {
            std::vector<pollfd> fds{{fd, POLLIN, 0}};
            broker.poll_fds(fds);
            if (poll(fds.data(), fds.size(), 50) <= 0) {
                continue;
            }
            if (fds[0].revents != 0) {
                std::array<std::uint8_t, cloister::backend_message_size> buffer{};
                const ssize_t size = recv(fd, buffer.data(), buffer.size(), MSG_DONTWAIT);
                if (size > 0) {
                    broker.forget(id);  // one request per connection: a new id each time
                    broker.handle_message({++id, fd, true}, buffer, static_cast<std::size_t>(size),
                                          table, std::chrono::milliseconds(2'000));
                }
            }
            broker.handle_poll(std::span(fds).subspan(1));
        }
    });
    const double brokered = mean_micros(rounds, [&] {
        cloister::request_backend(child_end.get(), 0, std::chrono::milliseconds(2'000));
    });
    stop = true;
    supervisor.join();
    acceptor.join();
    std::printf("direct connect:            %8.1f us per connect\n", direct);
    std::printf("brokered connect:          %8.1f us per connect\n", brokered);
    return 0;
}
