// cloister-bench-connection-profile: serves COUNT connections with the OpenSSL stack, each
// in a forked connection process without the sandbox, one after another, then exits.
//
// valgrind cannot follow cloister's own connection processes, because the sandbox lowers
// RLIMIT_NOFILE and valgrind rejects that call. This program runs the same code
// (run_connection_process without a ConnectionSetup, a key process without confinement), so
// that callgrind can profile a connection process:
//
//   valgrind --tool=callgrind --trace-children=yes --callgrind-out-file=cg.%p
//       cloister-bench-connection-profile cloister.toml 8     (one command line)
//
// and a client such as cloister-bench-load connects to the config's first listener. Each
// child's file contains the parent's cost before the fork as well; compare the inclusive
// cost of run_connection_process.
#include <sys/wait.h>
#include <unistd.h>

#include <charconv>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string_view>
#include <utility>
#include <vector>

#include "backends/openssl/openssl_stack.h"
#include "core/child_process.h"
#include "core/config.h"
#include "core/connection.h"
#include "core/error.h"
#include "core/key_process_handle.h"
#include "core/listener.h"
#include "core/log.h"
#include "core/vhost_table.h"
#include "keyprovider/key_process.h"

namespace {

// Forks one connection process with its own key channel and waits until it exits.
void serve_one(const cloister::Config& config, cloister::TlsStack& stack,
               const cloister::KeyProcess& key, const std::vector<cloister::Listener>& listeners,
               std::uint64_t connection_id) {
    auto [key_end, client_end] = cloister::make_seqpacket_pair();
    cloister::send_attach(key.control.get(), key_end, connection_id, 0);
    key_end.reset();
    auto [status_ours, status_theirs] = cloister::make_seqpacket_pair();
    const pid_t pid = ::fork();
    if (pid < 0) {
        cloister::throw_system_error("fork");
    }
    if (pid == 0) {
        cloister::ConnectionChannels channels;
        for (const cloister::Listener& listener : listeners) {
            channels.listeners.push_back(
                {cloister::Fd(::dup(listener.fd.get())), listener.address});
        }
        channels.key_channel = std::move(client_end);
        channels.status = std::move(status_theirs);
        channels.connection_id = connection_id;
        cloister::run_connection_process(config, stack, std::move(channels));
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
}

}  // namespace

int main(int argc, char** argv) try {
    int count = 0;
    const std::string_view text = argc == 3 ? argv[2] : "";
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), count);
    if (argc != 3 || error != std::errc{} || end != text.data() + text.size() || count < 1) {
        std::fprintf(stderr, "usage: %s CONFIG COUNT  (COUNT: connections to serve, 1 or more)\n",
                     argv[0]);
        return 64;
    }
    const cloister::Config config = cloister::load_config(argv[1]);
    cloister::init_logging("supervisor", config.server.log_level);
    const cloister::VhostTable vhosts(config.vhosts, config.tls);
    const auto stack = cloister::make_openssl_stack(config, vhosts);
    cloister::SupervisorHooks hooks;
    hooks.key_process_main = [](const cloister::Config& key_config, cloister::Fd control) {
        return cloister::run_key_process(key_config, std::move(control));
    };
    cloister::KeyProcess key = cloister::start_key_process(config, hooks);
    cloister::run_self_check(*stack, key, config);
    const std::vector<cloister::Listener> listeners = cloister::open_listeners(config.listeners);
    for (int i = 1; i <= count; ++i) {
        serve_one(config, *stack, key, listeners, static_cast<std::uint64_t>(i));
    }
    cloister::stop_key_process(key);
    return 0;
} catch (const std::exception& error) {
    std::fprintf(stderr, "cloister-bench-connection-profile: %s\n", error.what());
    return 1;
}
