// The key channel's cost alone: one request from a KeyClient to a real key process (forked,
// one worker thread, memory keys) and back, against the same signature made in-process with
// the key store. The difference between the *_channel and *_in_process figures is what the
// isolation costs per private-key operation, without any TLS around it.
#include <benchmark/benchmark.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "core/config.h"
#include "core/error.h"
#include "core/fd.h"
#include "core/key_client.h"
#include "core/key_process_handle.h"
#include "core/key_protocol.h"
#include "core/supervisor.h"
#include "keyprovider/key_process.h"
#include "keyprovider/memory_key_store.h"

namespace {

namespace fs = std::filesystem;
using cloister::keyproto::SignatureScheme;

constexpr std::uint32_t rsa_index = 0;
constexpr std::uint32_t p256_index = 1;

// The TLS 1.3 server CertificateVerify input for a SHA-256 transcript hash: the only
// message shape the key process's signing policy signs in TLS 1.3.
std::vector<std::uint8_t> certificate_verify_input() {
    std::string text(64, ' ');
    text += "TLS 1.3, server CertificateVerify";
    text += '\0';
    for (int i = 0; i < 32; ++i) {
        text += static_cast<char>(i * 7 + 1);
    }
    return {text.begin(), text.end()};
}

void write_key(const fs::path& path, const char* algorithm, const char* parameter) {
    EVP_PKEY* key = parameter == nullptr
                        ? EVP_PKEY_Q_keygen(nullptr, nullptr, algorithm, std::size_t{2048})
                        : EVP_PKEY_Q_keygen(nullptr, nullptr, algorithm, parameter);
    if (key == nullptr) {
        throw std::runtime_error(std::string("key generation failed for ") + algorithm);
    }
    const std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> owner(key, EVP_PKEY_free);
    std::FILE* file = std::fopen(path.c_str(), "w");
    if (file == nullptr) {
        throw std::runtime_error("cannot write " + path.string());
    }
    const int written = PEM_write_PrivateKey(file, key, nullptr, nullptr, 0, nullptr, nullptr);
    std::fclose(file);
    if (written != 1) {
        throw std::runtime_error("cannot write " + path.string());
    }
}

// An RSA-2048 and a P-256 key in a temporary folder, a key process serving them, and one
// key channel without an operation quota.
class Fixture {
  public:
    Fixture() {
        std::string pattern = (fs::temp_directory_path() / "cloister-key-bench-XXXXXX").string();
        if (::mkdtemp(pattern.data()) == nullptr) {
            throw std::runtime_error("mkdtemp failed");
        }
        folder_ = pattern;
        write_key(folder_ / "rsa.key", "RSA", nullptr);
        write_key(folder_ / "p256.key", "EC", "P-256");
        for (const char* name : {"rsa", "p256"}) {
            cloister::KeyConfig key;
            key.name = name;
            key.file = folder_ / (std::string(name) + ".key");
            config_.keys.push_back(key);
        }
        config_.key_process.workers = 1;
        store_ = std::make_unique<cloister::MemoryKeyStore>(config_.keys);

        cloister::SupervisorHooks hooks;
        hooks.key_process_main = [](const cloister::Config& config, cloister::Fd control) {
            return cloister::run_key_process(config, std::move(control));
        };
        key_process_ = cloister::start_key_process(config_, hooks);
        std::array<int, 2> fds{};
        if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds.data()) != 0) {
            throw std::runtime_error("socketpair failed");
        }
        cloister::Fd key_end(fds[0]);
        cloister::send_attach(key_process_.control.get(), key_end, 1,
                              cloister::keyproto::attach_flag_unlimited);
        client_ =
            std::make_unique<cloister::KeyClient>(cloister::Fd(fds[1]), std::chrono::seconds(5));
    }
    Fixture(const Fixture&) = delete;
    Fixture& operator=(const Fixture&) = delete;
    Fixture(Fixture&&) = delete;
    Fixture& operator=(Fixture&&) = delete;
    ~Fixture() {
        client_.reset();
        cloister::stop_key_process(key_process_);
        std::error_code ignored;
        fs::remove_all(folder_, ignored);
    }

    cloister::KeyClient& client() { return *client_; }
    const cloister::MemoryKeyStore& store() const { return *store_; }

  private:
    fs::path folder_;
    cloister::Config config_;
    std::unique_ptr<cloister::MemoryKeyStore> store_;
    cloister::KeyProcess key_process_;
    std::unique_ptr<cloister::KeyClient> client_;
};

Fixture& fixture() {
    static Fixture instance;
    return instance;
}

void key_info_channel(benchmark::State& state) {
    cloister::KeyClient& client = fixture().client();
    for (auto _ : state) {
        benchmark::DoNotOptimize(client.key_schemes(p256_index));
    }
}

void sign_channel(benchmark::State& state, std::uint32_t key_index, SignatureScheme scheme) {
    cloister::KeyClient& client = fixture().client();
    const std::vector<std::uint8_t> message = certificate_verify_input();
    for (auto _ : state) {
        benchmark::DoNotOptimize(
            client.sign(key_index, static_cast<std::uint16_t>(scheme), message));
    }
}

void sign_in_process(benchmark::State& state, std::uint32_t key_index, SignatureScheme scheme) {
    const cloister::MemoryKeyStore& store = fixture().store();
    const std::vector<std::uint8_t> message = certificate_verify_input();
    for (auto _ : state) {
        benchmark::DoNotOptimize(store.sign(key_index, scheme, message));
    }
}

BENCHMARK(key_info_channel)->UseRealTime();
BENCHMARK_CAPTURE(sign_channel, p256, p256_index, SignatureScheme::ecdsa_secp256r1_sha256)
    ->UseRealTime();
BENCHMARK_CAPTURE(sign_in_process, p256, p256_index, SignatureScheme::ecdsa_secp256r1_sha256)
    ->UseRealTime();
BENCHMARK_CAPTURE(sign_channel, rsa2048_pss, rsa_index, SignatureScheme::rsa_pss_rsae_sha256)
    ->UseRealTime();
BENCHMARK_CAPTURE(sign_in_process, rsa2048_pss, rsa_index, SignatureScheme::rsa_pss_rsae_sha256)
    ->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
    spdlog::set_level(spdlog::level::warn);
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
        return 1;
    }
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
