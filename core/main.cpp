// The cloister daemon's entry point: command line, configuration, then the supervisor.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <exception>
#include <filesystem>
#include <string>

#include "backends/botan/botan_stack.h"
#include "backends/openssl/openssl_stack.h"
#include "core/config.h"
#include "core/error.h"
#include "core/log.h"
#include "core/process_title.h"
#include "core/sandbox_layers.h"
#include "core/supervisor.h"
#include "keyprovider/key_process.h"

#ifdef CLOISTER_BENCH_INPROCESS_KEYS
#include "bench/inprocess/inprocess_keys.h"
#endif

namespace {

constexpr int exit_usage = 64;  // EX_USAGE from sysexits.h

struct Options {
    std::filesystem::path config;
    bool check_only = false;
};

cloister::SupervisorHooks make_hooks() {
    cloister::SupervisorHooks hooks;
    hooks.key_process_main = [](const cloister::Config& config, cloister::Fd control) {
        // Confined after its keys load and before it serves a key channel.
        return cloister::run_key_process(config, std::move(control),
                                         cloister::key_process_confinement(config));
    };
    hooks.make_tls_stack = [](const cloister::Config& config, const cloister::VhostTable& vhosts) {
        if (config.server.tls_backend == "botan") {
            return cloister::make_botan_stack(config, vhosts);
        }
        if (config.server.tls_backend != "openssl") {
            throw cloister::Error(
                cloister::ErrorKind::config,
                fmt::format(R"(tls-backend "{}" is not available in this build; use "openssl" )"
                            R"(or "botan")",
                            config.server.tls_backend));
        }
        return cloister::make_openssl_stack(config, vhosts);
    };
    return hooks;
}

int run(const Options& options) {
    const cloister::Config config = cloister::load_config(options.config);
    cloister::init_logging("supervisor", config.server.log_level);
    const cloister::SupervisorHooks hooks = make_hooks();
#ifdef CLOISTER_BENCH_INPROCESS_KEYS
    cloister::bench::load_in_process_keys(config);
#endif
    if (!options.check_only) {
        return cloister::run_supervisor(config, hooks);
    }
    const int status = cloister::check_config(config, hooks);
    if (status == 0) {
        fmt::print("configuration {} is valid\n", options.config.string());
    }
    return status;
}

int exit_status_for(cloister::ErrorKind kind) {
    return kind == cloister::ErrorKind::config ? cloister::exit_invalid_config
                                               : cloister::exit_failure;
}

}  // namespace

// Function-try-block: every error that reaches main becomes one log line and an exit status.
int main(int argc, char** argv) try {
    cloister::init_process_title(argc, argv);
    cloister::init_logging("supervisor", cloister::LogLevel::info);

    CLI::App app{
        "cloister: a TLS-terminating proxy that keeps private keys in a separate "
        "process"};
    Options options;
    app.set_version_flag("--version", std::string("cloister ") + cloister::version());
    app.add_option("--config", options.config, "Configuration file (TOML)")->required();
    app.add_flag("--check-config", options.check_only,
                 "Validate the configuration, the certificates and the keys, then exit");
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& error) {
        const int status = app.exit(error);
        return status == 0 ? 0 : exit_usage;
    }
    return run(options);
} catch (const cloister::Error& error) {
    if (error.kind() == cloister::ErrorKind::config) {
        spdlog::error("{}", error.what());
    } else {
        spdlog::error("{} error: {}", cloister::to_string(error.kind()), error.what());
    }
    return exit_status_for(error.kind());
} catch (const std::exception& error) {
    spdlog::error("unexpected error: {}", error.what());
    return cloister::exit_failure;
}
