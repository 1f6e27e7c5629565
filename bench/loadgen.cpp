// cloister-bench-load: the TLS load generator of bench/run, built on OpenSSL.
//
// wrk resumes TLS sessions and openssl s_time opens one connection at a time, so neither
// measures full handshakes from several clients at once. This program turns off session
// tickets and the client session cache, so every connection is a full handshake, and offers
// exactly one TLS version and AES-128-GCM, and X25519 first, so every proxy does the same
// work. P-256 is in the groups list because TLS 1.2 servers accept an ECDSA P-256
// certificate only for clients that list its curve (RFC 8422 section 5.1).
//
//   handshakes HOST:PORT  N client threads, each: connect, handshake, "GET /" with
//                         Connection: close, read the response, close; for --seconds,
//                         optionally paced to --rate connections per second in total
//   bulk HOST:PORT        one connection: GET /bytes/N and read the body, repeatedly, for
//                         --seconds; the handshake is not timed
//   idle HOST:PORT        open --connections connections, one keep-alive request each, print
//                         "ready", hold them until standard input closes or --seconds pass
//
// Prints one JSON object on standard output. Certificates are not verified: the benchmark
// made them, and verification would add client CPU to every connection.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
    std::string mode;
    sockaddr_in address{};
    std::string server_name = "www.example.test";
    int tls_version = TLS1_3_VERSION;
    std::string signature = "rsa";  // rsa or ecdsa: the signature algorithms offered
    int clients = 1;
    double seconds = 5.0;
    double rate = 0.0;  // connections per second in total; 0 = as fast as possible
    std::uint64_t bytes = std::uint64_t{64} << 20;
    int connections = 500;
};

[[noreturn]] void usage_error(const std::string& message) {
    std::fprintf(stderr, "cloister-bench-load: %s\n", message.c_str());
    std::fprintf(stderr,
                 "usage: cloister-bench-load handshakes|bulk|idle 127.0.0.1:PORT [--tls 1.2|1.3]\n"
                 "       [--sig rsa|ecdsa] [--sni NAME] [--clients N] [--seconds S]\n"
                 "       [--rate PER_SECOND] [--bytes N] [--connections N]\n");
    std::exit(64);
}

template <typename T>
T parse_number(std::string_view option, std::string_view text) {
    T value{};
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (error != std::errc{} || end != text.data() + text.size() || value < T{}) {
        usage_error("invalid value '" + std::string(text) + "' for " + std::string(option) +
                    ": expected a non-negative number");
    }
    return value;
}

sockaddr_in parse_address(std::string_view text) {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) {
        usage_error("invalid address '" + std::string(text) + "': expected IPV4:PORT");
    }
    sockaddr_in address{};
    address.sin_family = AF_INET;
    const std::string host(text.substr(0, colon));
    if (inet_pton(AF_INET, host.c_str(), &address.sin_addr) != 1) {
        usage_error("invalid IPv4 address '" + host + "'");
    }
    address.sin_port = htons(parse_number<std::uint16_t>("PORT", text.substr(colon + 1)));
    return address;
}

Options parse_options(int argc, char** argv) {
    if (argc < 3) {
        usage_error("missing mode or address");
    }
    Options options;
    options.mode = argv[1];
    if (options.mode != "handshakes" && options.mode != "bulk" && options.mode != "idle") {
        usage_error("unknown mode '" + options.mode + "': expected handshakes, bulk or idle");
    }
    options.address = parse_address(argv[2]);
    for (int i = 3; i < argc; i += 2) {
        const std::string_view option = argv[i];
        if (i + 1 >= argc) {
            usage_error("missing value for " + std::string(option));
        }
        const std::string_view value = argv[i + 1];
        if (option == "--tls") {
            if (value != "1.2" && value != "1.3") {
                usage_error("invalid --tls '" + std::string(value) + "': expected 1.2 or 1.3");
            }
            options.tls_version = value == "1.2" ? TLS1_2_VERSION : TLS1_3_VERSION;
        } else if (option == "--sig") {
            if (value != "rsa" && value != "ecdsa") {
                usage_error("invalid --sig '" + std::string(value) + "': expected rsa or ecdsa");
            }
            options.signature = value;
        } else if (option == "--sni") {
            options.server_name = value;
        } else if (option == "--clients") {
            options.clients = std::max(1, parse_number<int>(option, value));
        } else if (option == "--seconds") {
            options.seconds = parse_number<double>(option, value);
        } else if (option == "--rate") {
            options.rate = parse_number<double>(option, value);
        } else if (option == "--bytes") {
            options.bytes = parse_number<std::uint64_t>(option, value);
        } else if (option == "--connections") {
            options.connections = parse_number<int>(option, value);
        } else {
            usage_error("unknown option '" + std::string(option) + "'");
        }
    }
    return options;
}

struct SslCtxDeleter {
    void operator()(SSL_CTX* context) const { SSL_CTX_free(context); }
};
struct SslDeleter {
    void operator()(SSL* ssl) const { SSL_free(ssl); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxDeleter>;
using SslPtr = std::unique_ptr<SSL, SslDeleter>;

std::string openssl_error() {
    const unsigned long code = ERR_get_error();
    ERR_clear_error();
    if (code == 0) {
        return "no OpenSSL error recorded";
    }
    std::array<char, 256> text{};
    ERR_error_string_n(code, text.data(), text.size());
    return text.data();
}

SslCtxPtr make_context(const Options& options) {
    SslCtxPtr context(SSL_CTX_new(TLS_client_method()));
    if (!context) {
        throw std::runtime_error("SSL_CTX_new failed: " + openssl_error());
    }
    SSL_CTX* raw = context.get();
    SSL_CTX_set_min_proto_version(raw, options.tls_version);
    SSL_CTX_set_max_proto_version(raw, options.tls_version);
    SSL_CTX_set_session_cache_mode(raw, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(raw, SSL_OP_NO_TICKET);
    SSL_CTX_set_verify(raw, SSL_VERIFY_NONE, nullptr);
    const char* sigalgs = options.signature == "rsa" ? "rsa_pss_rsae_sha256:rsa_pkcs1_sha256"
                                                     : "ecdsa_secp256r1_sha256";
    const char* ciphers = options.signature == "rsa" ? "ECDHE-RSA-AES128-GCM-SHA256"
                                                     : "ECDHE-ECDSA-AES128-GCM-SHA256";
    if (SSL_CTX_set1_groups_list(raw, "X25519:P-256") != 1 ||
        SSL_CTX_set1_sigalgs_list(raw, sigalgs) != 1 ||
        SSL_CTX_set_ciphersuites(raw, "TLS_AES_128_GCM_SHA256") != 1 ||
        SSL_CTX_set_cipher_list(raw, ciphers) != 1) {
        throw std::runtime_error("TLS client settings rejected: " + openssl_error());
    }
    return context;
}

// A TLS connection on a blocking socket with 10-second send and receive timeouts.
class Connection {
  public:
    Connection(SSL_CTX* context, const Options& options) {
        fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd_ < 0) {
            throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
        }
        const timeval timeout{10, 0};
        setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
        setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
        const int on = 1;
        setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
        if (connect(fd_, reinterpret_cast<const sockaddr*>(&options.address),
                    sizeof(options.address)) != 0) {
            throw std::runtime_error(std::string("connect: ") + std::strerror(errno));
        }
        ssl_.reset(SSL_new(context));
        if (!ssl_) {
            throw std::runtime_error("SSL_new failed: " + openssl_error());
        }
        SSL_set_fd(ssl_.get(), fd_);
        SSL_set_tlsext_host_name(ssl_.get(), options.server_name.c_str());
        if (SSL_connect(ssl_.get()) != 1) {
            throw std::runtime_error("TLS handshake failed: " + openssl_error());
        }
    }
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;
    Connection(Connection&&) = delete;
    Connection& operator=(Connection&&) = delete;
    ~Connection() {
        if (ssl_) {
            SSL_shutdown(ssl_.get());
        }
        ssl_.reset();
        if (fd_ >= 0) {
            close(fd_);
        }
    }

    void write(std::string_view data) {
        std::size_t written = 0;
        if (SSL_write_ex(ssl_.get(), data.data(), data.size(), &written) != 1) {
            throw std::runtime_error("TLS write failed: " + openssl_error());
        }
    }

    // Reads one response and returns its body length. Needs Content-Length.
    std::uint64_t read_response() {
        std::string head;
        std::array<char, 65536> buffer{};
        std::size_t end = std::string::npos;
        while (end == std::string::npos) {
            head.append(buffer.data(), read_some(buffer));
            end = head.find("\r\n\r\n");
        }
        const auto field = head.find("Content-Length: ");
        if (!head.starts_with("HTTP/1.1 200") || field == std::string::npos || field > end) {
            throw std::runtime_error("unexpected response: " + head.substr(0, head.find('\r')));
        }
        std::uint64_t length = 0;
        std::from_chars(head.data() + field + 16, head.data() + end, length);
        std::uint64_t received = head.size() - end - 4;
        while (received < length) {
            received += read_some(buffer);
        }
        return length;
    }

  private:
    std::size_t read_some(std::array<char, 65536>& buffer) {
        std::size_t received = 0;
        if (SSL_read_ex(ssl_.get(), buffer.data(), buffer.size(), &received) != 1) {
            throw std::runtime_error("TLS read failed before the response ended: " +
                                     openssl_error());
        }
        return received;
    }

    int fd_ = -1;
    SslPtr ssl_;
};

// Returns the value at fraction of the sorted values as JSON, or null when there is none.
std::string percentile(std::vector<double> values, double fraction) {
    if (values.empty()) {
        return "null";
    }
    std::sort(values.begin(), values.end());
    const auto index = static_cast<std::size_t>(std::ceil(fraction * values.size())) - 1;
    return std::to_string(values[std::min(index, values.size() - 1)]);
}

struct Tally {
    std::mutex mutex;
    std::vector<double> handshake_ms;
    std::uint64_t errors = 0;
    std::string first_error;
};

void handshake_client(SSL_CTX* context, const Options& options, Clock::time_point start,
                      Clock::time_point deadline, int index, Tally& tally) {
    std::vector<double> latencies;
    std::uint64_t errors = 0;
    std::string first_error;
    const std::string request =
        "GET / HTTP/1.1\r\nHost: " + options.server_name + "\r\nConnection: close\r\n\r\n";
    // Paced clients start at evenly spaced offsets and keep a fixed schedule.
    const double interval = options.rate > 0 ? options.clients / options.rate : 0.0;
    auto next = start + std::chrono::duration_cast<Clock::duration>(
                            std::chrono::duration<double>(interval * index / options.clients));
    while (Clock::now() < deadline) {
        if (interval > 0) {
            std::this_thread::sleep_until(next);
            next += std::chrono::duration_cast<Clock::duration>(
                std::chrono::duration<double>(interval));
            if (Clock::now() >= deadline) {
                break;
            }
        }
        const auto begin = Clock::now();
        try {
            Connection connection(context, options);
            const auto handshake = Clock::now() - begin;
            connection.write(request);
            connection.read_response();
            latencies.push_back(std::chrono::duration<double, std::milli>(handshake).count());
        } catch (const std::exception& error) {
            if (errors++ == 0) {
                first_error = error.what();
            }
        }
    }
    const std::lock_guard lock(tally.mutex);
    tally.handshake_ms.insert(tally.handshake_ms.end(), latencies.begin(), latencies.end());
    tally.errors += errors;
    if (tally.first_error.empty()) {
        tally.first_error = first_error;
    }
}

std::string json_string(std::string_view text) {
    std::string quoted = "\"";
    for (const char c : text) {
        if (c == '"' || c == '\\') {
            quoted += '\\';
            quoted += c;
        } else if (static_cast<unsigned char>(c) < 0x20) {
            quoted += ' ';
        } else {
            quoted += c;
        }
    }
    return quoted + "\"";
}

int run_handshakes(SSL_CTX* context, const Options& options) {
    Tally tally;
    const auto start = Clock::now();
    const auto deadline = start + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(options.seconds));
    std::vector<std::thread> threads;
    for (int i = 0; i < options.clients; ++i) {
        threads.emplace_back(handshake_client, context, std::cref(options), start, deadline, i,
                             std::ref(tally));
    }
    for (auto& thread : threads) {
        thread.join();
    }
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    std::printf(
        "{\"mode\": \"handshakes\", \"clients\": %d, \"seconds\": %.3f, \"connections\": %zu, "
        "\"errors\": %llu, \"per_second\": %.2f, \"handshake_ms_p50\": %s, "
        "\"handshake_ms_p99\": %s, \"first_error\": %s}\n",
        options.clients, elapsed, tally.handshake_ms.size(),
        static_cast<unsigned long long>(tally.errors), tally.handshake_ms.size() / elapsed,
        percentile(tally.handshake_ms, 0.5).c_str(), percentile(tally.handshake_ms, 0.99).c_str(),
        json_string(tally.first_error).c_str());
    return tally.handshake_ms.empty() ? 1 : 0;
}

int run_bulk(SSL_CTX* context, const Options& options) {
    Connection connection(context, options);
    const std::string request = "GET /bytes/" + std::to_string(options.bytes) +
                                " HTTP/1.1\r\nHost: " + options.server_name + "\r\n\r\n";
    std::uint64_t total = 0;
    const auto start = Clock::now();
    const auto deadline = start + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(options.seconds));
    do {
        connection.write(request);
        total += connection.read_response();
    } while (Clock::now() < deadline);
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    std::printf("{\"mode\": \"bulk\", \"bytes\": %llu, \"seconds\": %.3f, \"mb_per_s\": %.2f}\n",
                static_cast<unsigned long long>(total), elapsed, total / elapsed / 1e6);
    return 0;
}

int run_idle(SSL_CTX* context, const Options& options) {
    std::vector<std::unique_ptr<Connection>> connections;
    const std::string request = "GET / HTTP/1.1\r\nHost: " + options.server_name + "\r\n\r\n";
    for (int i = 0; i < options.connections; ++i) {
        auto connection = std::make_unique<Connection>(context, options);
        connection->write(request);
        connection->read_response();
        connections.push_back(std::move(connection));
    }
    std::fprintf(stderr, "ready %zu\n", connections.size());
    std::fflush(stderr);
    pollfd input{STDIN_FILENO, POLLIN, 0};
    poll(&input, 1, static_cast<int>(options.seconds * 1000));
    std::printf("{\"mode\": \"idle\", \"connections\": %zu}\n", connections.size());
    return 0;
}

}  // namespace

int main(int argc, char** argv) try {
    const Options options = parse_options(argc, argv);
    const SslCtxPtr context = make_context(options);
    if (options.mode == "handshakes") {
        return run_handshakes(context.get(), options);
    }
    if (options.mode == "bulk") {
        return run_bulk(context.get(), options);
    }
    return run_idle(context.get(), options);
} catch (const std::exception& error) {
    std::fprintf(stderr, "cloister-bench-load: %s\n", error.what());
    return 1;
}
