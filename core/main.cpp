// The cloister daemon's entry point: command line, configuration, then the supervisor.
#include <fmt/format.h>
#include <openssl/evp.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <array>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>

#include "backends/botan/botan_stack.h"
#include "backends/openssl/openssl_stack.h"
#include "core/config.h"
#include "core/connection_exec.h"
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

struct DigestContextDeleter {
    void operator()(EVP_MD_CTX* context) const { EVP_MD_CTX_free(context); }
};

// SHA-256 over the config file and every certificate chain file, each preceded by its path
// and size, in hex. Private keys are left out: only the key process reads them.
std::string digest_config_files(const cloister::Config& config) {
    const std::unique_ptr<EVP_MD_CTX, DigestContextDeleter> context(EVP_MD_CTX_new());
    if (!context || EVP_DigestInit_ex(context.get(), EVP_sha256(), nullptr) != 1) {
        throw cloister::Error(cloister::ErrorKind::system, "SHA-256 is not available");
    }
    const auto add = [&context](const std::filesystem::path& path) {
        std::ifstream file(path, std::ios::binary);
        std::ostringstream buffer;
        buffer << file.rdbuf();
        if (!file || !buffer) {
            throw cloister::Error(
                cloister::ErrorKind::config,
                fmt::format("reading {} for the config digest failed", path.string()));
        }
        const std::string contents = std::move(buffer).str();
        const std::string header = fmt::format("{}\n{}\n", path.string(), contents.size());
        EVP_DigestUpdate(context.get(), header.data(), header.size());
        EVP_DigestUpdate(context.get(), contents.data(), contents.size());
    };
    add(config.source);
    for (const cloister::VhostConfig& vhost : config.vhosts) {
        for (const cloister::CertificateConfig& certificate : vhost.certificates) {
            add(certificate.chain);
        }
    }
    std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
    unsigned int size = 0;
    if (EVP_DigestFinal_ex(context.get(), digest.data(), &size) != 1) {
        throw cloister::Error(cloister::ErrorKind::system, "SHA-256 of the config files failed");
    }
    std::string hex;
    for (unsigned int i = 0; i < size; ++i) {
        hex += fmt::format("{:02x}", digest[i]);
    }
    return hex;
}

cloister::SupervisorHooks make_hooks(const std::filesystem::path& config_path) {
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
    // Absolute, so that a reload reads the same file whatever the working directory is then.
    hooks.load_config = [path = std::filesystem::absolute(config_path)] {
        return cloister::load_config(path);
    };
    hooks.config_digest = digest_config_files;
    return hooks;
}

// The entry point of a connection process that the supervisor started with fexecve
// (spawn = "exec"). Never returns when it gets as far as serving.
int run_connection_entry(int argc, char** argv) {
    const cloister::ExecArguments arguments = cloister::parse_exec_arguments(argc, argv);
    const cloister::Config config = cloister::load_config(arguments.config);
    cloister::init_logging("connection", config.server.log_level);
    const cloister::SupervisorHooks hooks = make_hooks(arguments.config);
    const std::string digest = hooks.config_digest(config);
    if (digest != arguments.digest) {
        throw cloister::Error(
            cloister::ErrorKind::config,
            fmt::format("connection {}: {} or a certificate file it names changed since the "
                        "supervisor loaded them (digest {}, expected {}), so this process "
                        "would serve other certificates than the others; reload the "
                        "configuration (SIGHUP) or restart cloister",
                        arguments.connection_id, arguments.config.string(), digest,
                        arguments.digest));
    }
    const cloister::VhostTable vhosts(config.vhosts, config.tls);
    const std::unique_ptr<cloister::TlsStack> stack = hooks.make_tls_stack(config, vhosts);
    cloister::SandboxLayers layers = cloister::decide_sandbox_layers(config, {});
    layers.pid_namespace = arguments.pid_namespace;
    if (arguments.network_none) {
        layers.connection_network_fd = cloister::exec_network_fd;
    }
    cloister::ConnectionSetup setup;
    setup.sandbox = cloister::connection_sandbox_plan(layers);
    if (config.sandbox.connection_uids) {
        if (!arguments.uid) {
            throw cloister::Error(cloister::ErrorKind::config,
                                  fmt::format("connection {}: sandbox.connection-uids is set, but "
                                              "the supervisor passed no uid",
                                              arguments.connection_id));
        }
        cloister::assign_connection_uid(*setup.sandbox, *arguments.uid);
    }
    setup.pid_namespace = arguments.pid_namespace;
    setup.brokered = cloister::BrokeredBackends::all;
    cloister::run_connection_process(config, *stack, cloister::inherited_channels(arguments),
                                     setup);
}

int run(const Options& options) {
    const cloister::Config config = cloister::load_config(options.config);
    cloister::init_logging("supervisor", config.server.log_level);
    const cloister::SupervisorHooks hooks = make_hooks(options.config);
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
    if (argc > 1 && std::string_view(argv[1]) == cloister::exec_entry_argument) {
        cloister::init_logging("connection", cloister::LogLevel::info);
        return run_connection_entry(argc, argv);
    }
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
