// Tests of the OpenSSL stack against a real key process: handshakes for every signature scheme,
// SNI, chain ordering, the key check, errors from the key channel, and fork behaviour.
#include "backends/openssl/openssl_stack.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <iterator>
#include <memory>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <vector>

#include "backends/openssl/certificate_chain.h"
#include "backends/openssl/library_context.h"
#include "backends/openssl/openssl_errors.h"
#include "backends/openssl/ossl_ptr.h"
#include "backends/openssl/provider.h"
#include "backends/openssl/remote_key.h"
#include "core/error.h"
#include "core/fd.h"
#include "core/key_client.h"
#include "core/key_protocol.h"
#include "keyprovider/key_process.h"

namespace cloister {
namespace {

namespace fs = std::filesystem;
using SslCtxPtr = ossl::Ptr<SSL_CTX, SSL_CTX_free>;
using SslPtr = ossl::Ptr<SSL, SSL_free>;
using namespace std::chrono_literals;

constexpr auto key_timeout = 5000ms;

// OpenSSL CLI configuration for the test PKI. SAN comes from the environment of each command.
constexpr const char* pki_config = R"([req]
distinguished_name = dn
prompt = no
[dn]
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[leaf_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $ENV::SAN
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
)";

void run_command(const std::string& command) {
    if (std::system(command.c_str()) != 0) {
        throw Error(ErrorKind::system, "command failed: " + command);
    }
}

std::string read_text(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_text(const fs::path& path, const std::string& text) {
    std::ofstream(path, std::ios::binary) << text;
}

// A test PKI in a temporary folder, made with the openssl command-line tool: a P-256 root,
// intermediates I1 (issued by the root) and I2 (issued by I1), and leaf certificates.
class Pki {
  public:
    explicit Pki(fs::path dir) : dir_(std::move(dir)) { write_text(dir_ / "pki.cnf", pki_config); }

    [[nodiscard]] fs::path path(const std::string& file) const { return dir_ / file; }

    void make_key(const std::string& name, const std::string& options) {
        run_command("openssl genpkey -quiet " + options + " -out " + path(name + ".key").string());
    }

    void make_root(const std::string& name) {
        make_key(name, "-algorithm EC -pkeyopt ec_paramgen_curve:P-256");
        run_openssl("req -x509 -new -config " + config() + " -extensions ca_ext -key " +
                    path(name + ".key").string() + " -subj '/CN=" + name + "' -days 30 -out " +
                    path(name + ".pem").string());
    }

    // Issues name.pem for name.key, signed by issuer. dns is the subjectAltName of a leaf. An
    // empty dns makes an intermediate CA.
    void issue(const std::string& name, const std::string& issuer, const std::string& dns) {
        const std::string csr = path(name + ".csr").string();
        run_openssl("req -new -config " + config() + " -key " + path(name + ".key").string() +
                    " -subj '/CN=" + name + "' -out " + csr);
        const std::string extensions = dns.empty() ? "ca_ext" : "leaf_ext";
        run_openssl("x509 -req -in " + csr + " -CA " + path(issuer + ".pem").string() + " -CAkey " +
                        path(issuer + ".key").string() + " -set_serial " +
                        std::to_string(++serial_) + " -days 30 -extfile " + config() +
                        " -extensions " + extensions + " -out " + path(name + ".pem").string() +
                        " 2>/dev/null",
                    dns.empty() ? "unused" : dns);
    }

    // Writes the concatenation of the named certificates to file.
    void bundle(const std::string& file, const std::vector<std::string>& names) {
        std::string text;
        for (const std::string& name : names) {
            text += read_text(path(name + ".pem"));
        }
        write_text(path(file), text);
    }

  private:
    // Runs the openssl tool. pki.cnf reads the subjectAltName from SAN, and the tool refuses a
    // config whose variable is unset, so every command sets it.
    static void run_openssl(const std::string& arguments, const std::string& dns = "unused") {
        run_command("SAN='DNS:" + dns + "' openssl " + arguments);
    }
    [[nodiscard]] std::string config() const { return path("pki.cnf").string(); }

    fs::path dir_;
    int serial_ = 1;
};

// Key indexes in World::config.keys.
enum KeyIndex : std::size_t { rsa_key, p256_key, p384_key, ed25519_key, chain_key };

// Vhost indexes in World::config.vhosts.
enum VhostIndex : std::size_t { multi_vhost, p384_vhost, ed25519_vhost, chain_vhost };

SourceLocation location(const std::string& file, std::uint32_t line) {
    return SourceLocation{file, line, 1};
}

CertificateConfig certificate_entry(const Pki& pki, const std::string& chain, KeyIndex key,
                                    const std::string& key_name, std::uint32_t line) {
    return CertificateConfig{pki.path(chain), key_name, key, location("test.toml", line)};
}

VhostConfig vhost_entry(const std::string& name, std::vector<CertificateConfig> certificates,
                        bool is_default) {
    VhostConfig vhost;
    vhost.name = name;
    vhost.server_names = {name};
    vhost.is_default = is_default;
    vhost.certificates = std::move(certificates);
    vhost.backend = SocketAddress::parse("127.0.0.1:9");
    vhost.where = location("test.toml", 1);
    return vhost;
}

Config make_config(const Pki& pki) {
    Config config;
    config.source = "test.toml";
    config.key_process.workers = 1;
    config.key_process.max_operations_per_channel = 1;
    for (const std::string name : {"rsa", "p256", "p384", "ed25519", "chain"}) {
        KeyConfig key;
        key.name = name;
        key.file = pki.path(name + ".key");
        key.where = location("test.toml", 2);
        config.keys.push_back(std::move(key));
    }
    config.vhosts.push_back(vhost_entry("multi.test",
                                        {certificate_entry(pki, "rsa.pem", rsa_key, "rsa", 10),
                                         certificate_entry(pki, "p256.pem", p256_key, "p256", 11)},
                                        true));
    config.vhosts.push_back(vhost_entry(
        "p384.test", {certificate_entry(pki, "p384.pem", p384_key, "p384", 20)}, false));
    config.vhosts.push_back(
        vhost_entry("ed25519.test",
                    {certificate_entry(pki, "ed25519.pem", ed25519_key, "ed25519", 30)}, false));
    config.vhosts.push_back(vhost_entry(
        "chain.test", {certificate_entry(pki, "chain-bundle.pem", chain_key, "chain", 40)}, false));
    return config;
}

void make_pki(Pki& pki) {
    pki.make_root("root");
    for (const std::string name : {"i1", "i2"}) {
        pki.make_key(name, "-algorithm EC -pkeyopt ec_paramgen_curve:P-256");
    }
    pki.issue("i1", "root", "");
    pki.issue("i2", "i1", "");
    pki.make_key("rsa", "-algorithm RSA -pkeyopt rsa_keygen_bits:2048");
    pki.make_key("p256", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256");
    pki.make_key("p384", "-algorithm EC -pkeyopt ec_paramgen_curve:P-384");
    pki.make_key("ed25519", "-algorithm ED25519");
    pki.make_key("chain", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256");
    pki.issue("rsa", "root", "multi.test");
    pki.issue("p256", "root", "multi.test");
    pki.issue("p384", "root", "p384.test");
    pki.issue("ed25519", "root", "ed25519.test");
    pki.issue("chain", "i2", "chain.test");
    // The issuer order is chain, i2, i1, and the root is not sent.
    pki.bundle("chain-bundle.pem", {"chain", "i1", "i2", "root"});
}

// Hands a new key channel for connection_id to the key process and returns this end.
Fd attach_channel(int control_fd, std::uint64_t connection_id, std::uint32_t flags = 0) {
    std::array<int, 2> fds{};
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds.data()) != 0) {
        throw_system_error("socketpair");
    }
    Fd mine(fds[0]);
    const Fd theirs(fds[1]);
    auto header = keyproto::encode(keyproto::Attach{connection_id, flags});
    iovec data{header.data(), header.size()};
    alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(int))> control{};
    msghdr message{};
    message.msg_iov = &data;
    message.msg_iovlen = 1;
    message.msg_control = control.data();
    message.msg_controllen = control.size();
    cmsghdr* descriptor = CMSG_FIRSTHDR(&message);
    descriptor->cmsg_level = SOL_SOCKET;
    descriptor->cmsg_type = SCM_RIGHTS;
    descriptor->cmsg_len = CMSG_LEN(sizeof(int));
    const int sent_fd = theirs.get();
    std::memcpy(CMSG_DATA(descriptor), &sent_fd, sizeof sent_fd);
    if (sendmsg(control_fd, &message, MSG_NOSIGNAL) < 0) {
        throw_system_error("sendmsg attach");
    }
    return mine;
}

// The shared test world: the PKI, a forked key process and a stack with verified keys.
struct World {
    fs::path dir;
    std::unique_ptr<Pki> pki;
    Config config;
    std::unique_ptr<VhostTable> vhosts;
    Fd control;
    pid_t key_process = -1;
    std::unique_ptr<TlsStack> stack;
    std::uint64_t next_connection_id = 100;
    bool ready = false;

    void start_key_process() {
        std::array<int, 2> fds{};
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds.data()) != 0) {
            throw_system_error("socketpair");
        }
        control.reset(fds[0]);
        Fd child_end(fds[1]);
        std::fflush(nullptr);
        key_process = fork();
        if (key_process < 0) {
            throw_system_error("fork");
        }
        if (key_process == 0) {
            control.reset();
            _exit(run_key_process(config, std::move(child_end)));
        }
    }

    // Returns a key client on a new channel, with the key process's per-channel quota.
    std::unique_ptr<KeyClient> new_client(std::uint32_t flags = 0) {
        return std::make_unique<KeyClient>(
            attach_channel(control.get(), next_connection_id++, flags), key_timeout);
    }

    void set_up() {
        std::signal(SIGPIPE, SIG_IGN);
        std::string pattern = (fs::temp_directory_path() / "openssl-stack-test-XXXXXX").string();
        if (mkdtemp(pattern.data()) == nullptr) {
            throw_system_error("mkdtemp");
        }
        dir = pattern;
        pki = std::make_unique<Pki>(dir);
        make_pki(*pki);
        config = make_config(*pki);
        vhosts = std::make_unique<VhostTable>(config.vhosts, config.tls);
        start_key_process();
        stack = make_openssl_stack(config, *vhosts);
        const std::unique_ptr<KeyClient> check = new_client(keyproto::attach_flag_unlimited);
        stack->use_key_client(*check);
        stack->verify_keys();
        ready = true;
    }

    void tear_down() {
        stack.reset();
        control.reset();
        if (key_process > 0) {
            int status = 0;
            EXPECT_EQ(waitpid(key_process, &status, 0), key_process);
            EXPECT_TRUE(WIFEXITED(status)) << "status " << status;
            EXPECT_EQ(WEXITSTATUS(status), 0);
        }
        if (!dir.empty()) {
            fs::remove_all(dir);
        }
    }
};

World& world() {
    static World instance;
    return instance;
}

class WorldEnvironment : public ::testing::Environment {
  public:
    void SetUp() override {
        try {
            world().set_up();
        } catch (const std::exception& error) {
            ADD_FAILURE() << "test set-up failed: " << error.what();
        }
    }
    void TearDown() override { world().tear_down(); }
};

[[maybe_unused]] const auto* const environment =
    ::testing::AddGlobalTestEnvironment(new WorldEnvironment);

std::string openssl_errors() {
    std::string text;
    while (const unsigned long code = ERR_get_error()) {
        std::array<char, 256> buffer{};
        ERR_error_string_n(code, buffer.data(), buffer.size());
        text += std::string(buffer.data()) + "; ";
    }
    return text;
}

// What the in-test client offers.
struct ClientOptions {
    std::string sni;  // empty: no server_name extension
    int version = TLS1_3_VERSION;
    std::string sigalgs;
    std::string ciphers;            // TLS 1.2 cipher list, or empty for OpenSSL's default
    bool check_host = true;         // verify that the certificate names sni
    std::string groups{};           // key exchange groups, or empty for OpenSSL's default
    SSL_SESSION* resume = nullptr;  // a session to resume, not owned
};

SslCtxPtr make_client_context() {
    SslCtxPtr context(SSL_CTX_new(TLS_client_method()));
    EXPECT_TRUE(context);
    EXPECT_EQ(SSL_CTX_load_verify_file(context.get(), world().pki->path("root.pem").c_str()), 1);
    SSL_CTX_set_verify(context.get(), SSL_VERIFY_PEER, nullptr);
    return context;
}

SslPtr make_client(SSL_CTX* context, const ClientOptions& options, int fd) {
    SslPtr ssl(SSL_new(context));
    EXPECT_TRUE(ssl);
    SSL_set_min_proto_version(ssl.get(), options.version);
    SSL_set_max_proto_version(ssl.get(), options.version);
    if (!options.sigalgs.empty()) {
        EXPECT_EQ(SSL_set1_sigalgs_list(ssl.get(), options.sigalgs.c_str()), 1);
    }
    if (!options.ciphers.empty()) {
        EXPECT_EQ(SSL_set_cipher_list(ssl.get(), options.ciphers.c_str()), 1);
    }
    if (!options.sni.empty()) {
        EXPECT_EQ(SSL_set_tlsext_host_name(ssl.get(), options.sni.c_str()), 1);
    }
    if (!options.sni.empty() && options.check_host) {
        EXPECT_EQ(SSL_set1_host(ssl.get(), options.sni.c_str()), 1);
    }
    if (!options.groups.empty()) {
        EXPECT_EQ(SSL_set1_groups_list(ssl.get(), options.groups.c_str()), 1);
    }
    if (options.resume != nullptr) {
        EXPECT_EQ(SSL_set_session(ssl.get(), options.resume), 1);
    }
    EXPECT_EQ(SSL_set_fd(ssl.get(), fd), 1);
    SSL_set_connect_state(ssl.get());
    return ssl;
}

// A connected pair of non-blocking stream sockets: server end and client end.
struct SocketPair {
    Fd server;
    Fd client;

    SocketPair() {
        std::array<int, 2> fds{};
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds.data()) != 0) {
            throw_system_error("socketpair");
        }
        server.reset(fds[0]);
        client.reset(fds[1]);
    }
};

enum class Side { running, done, failed };

struct HandshakeOutcome {
    Side server = Side::running;
    Side client = Side::running;
    IoResult server_result;
    std::string client_error;

    [[nodiscard]] bool succeeded() const { return server == Side::done && client == Side::done; }
};

void step_client(SSL* client, HandshakeOutcome& outcome) {
    ERR_clear_error();
    const int ret = SSL_do_handshake(client);
    if (ret == 1) {
        outcome.client = Side::done;
        return;
    }
    const int error = SSL_get_error(client, ret);
    if (error != SSL_ERROR_WANT_READ && error != SSL_ERROR_WANT_WRITE) {
        outcome.client = Side::failed;
        outcome.client_error = openssl_errors();
    }
}

void step_server(TlsSession& server, HandshakeOutcome& outcome) {
    outcome.server_result = server.handshake();
    if (outcome.server_result.status == IoStatus::done) {
        outcome.server = Side::done;
    } else if (outcome.server_result.status != IoStatus::want_read &&
               outcome.server_result.status != IoStatus::want_write) {
        outcome.server = Side::failed;
    }
}

// Drives both ends with poll until each has finished or failed, for at most ten seconds.
HandshakeOutcome run_handshake(TlsSession& server, SSL* client, const SocketPair& sockets) {
    HandshakeOutcome outcome;
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < deadline) {
        if (outcome.client == Side::running) {
            step_client(client, outcome);
        }
        if (outcome.server == Side::running) {
            step_server(server, outcome);
        }
        if (outcome.client != Side::running && outcome.server != Side::running) {
            break;
        }
        std::array<pollfd, 2> fds{
            {{sockets.server.get(), POLLIN, 0}, {sockets.client.get(), POLLIN, 0}}};
        poll(fds.data(), fds.size(), 50);
    }
    return outcome;
}

// One handshake against the shared stack, with a fresh key channel.
struct Connection {
    SocketPair sockets;
    SslCtxPtr client_context = make_client_context();
    std::unique_ptr<KeyClient> key_client;
    std::unique_ptr<TlsSession> server;
    SslPtr client;
    HandshakeOutcome outcome;

    Connection(TlsStack& stack, const ClientOptions& options,
               std::unique_ptr<KeyClient> channel = world().new_client())
        : key_client(std::move(channel)) {
        stack.use_key_client(*key_client);
        server = stack.new_session(sockets.server.get(), world().next_connection_id++);
        client = make_client(client_context.get(), options, sockets.client.get());
        outcome = run_handshake(*server, client.get(), sockets);
    }
};

std::string common_name(X509* certificate) {
    std::array<char, 256> name{};
    X509_NAME_get_text_by_NID(X509_get_subject_name(certificate), NID_commonName, name.data(),
                              name.size());
    return name.data();
}

// One handshake case: the client's offer and what the server must report.
struct SchemeCase {
    const char* name;
    ClientOptions client;
    const char* protocol;
    const char* scheme;
    std::size_t vhost;
};

void PrintTo(const SchemeCase& test_case, std::ostream* out) {
    *out << test_case.name;
}

class OpensslStackSchemeTest : public ::testing::TestWithParam<SchemeCase> {};

TEST_P(OpensslStackSchemeTest, HandshakeSignsWithScheme) {
    ASSERT_TRUE(world().ready);
    const SchemeCase& test_case = GetParam();
    Connection connection(*world().stack, test_case.client);

    ASSERT_TRUE(connection.outcome.succeeded())
        << "server: " << connection.outcome.server_result.error
        << " client: " << connection.outcome.client_error;
    EXPECT_EQ(SSL_get_verify_result(connection.client.get()), X509_V_OK);
    const HandshakeInfo info = connection.server->info();
    EXPECT_EQ(info.signature_scheme, test_case.scheme);
    EXPECT_EQ(info.protocol, test_case.protocol);
    EXPECT_EQ(info.vhost_index, test_case.vhost);
    EXPECT_EQ(info.sni, test_case.client.sni);
    EXPECT_FALSE(info.cipher.empty());
    EXPECT_EQ(connection.key_client->requests_sent(), 1U);
}

const SchemeCase scheme_cases[] = {
    {"Tls13RsaPss",
     {"multi.test", TLS1_3_VERSION, "rsa_pss_rsae_sha256", ""},
     "TLSv1.3",
     "rsa_pss_rsae_sha256",
     multi_vhost},
    {"Tls12RsaPkcs1",
     {"multi.test", TLS1_2_VERSION, "RSA+SHA256", "ECDHE-RSA-AES128-GCM-SHA256"},
     "TLSv1.2",
     "rsa_pkcs1_sha256",
     multi_vhost},
    {"Tls12RsaPss",
     {"multi.test", TLS1_2_VERSION, "rsa_pss_rsae_sha256", "ECDHE-RSA-AES128-GCM-SHA256"},
     "TLSv1.2",
     "rsa_pss_rsae_sha256",
     multi_vhost},
    {"Tls13EcdsaP256",
     {"multi.test", TLS1_3_VERSION, "ecdsa_secp256r1_sha256", "", true, "P-256"},
     "TLSv1.3",
     "ecdsa_secp256r1_sha256",
     multi_vhost},
    {"Tls12EcdsaP256",
     {"multi.test", TLS1_2_VERSION, "ECDSA+SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256", true, "P-256"},
     "TLSv1.2",
     "ecdsa_secp256r1_sha256",
     multi_vhost},
    {"Tls13EcdsaP384",
     {"p384.test", TLS1_3_VERSION, "ecdsa_secp384r1_sha384", "", true, "P-384"},
     "TLSv1.3",
     "ecdsa_secp384r1_sha384",
     p384_vhost},
    {"Tls13Ed25519",
     {"ed25519.test", TLS1_3_VERSION, "ed25519", ""},
     "TLSv1.3",
     "ed25519",
     ed25519_vhost},
};

INSTANTIATE_TEST_SUITE_P(Schemes, OpensslStackSchemeTest, ::testing::ValuesIn(scheme_cases),
                         [](const auto& param_info) { return std::string(param_info.param.name); });

TEST(OpensslStackTest, ChainServedInIssuerOrder) {
    ASSERT_TRUE(world().ready);
    Connection connection(*world().stack, {"chain.test", TLS1_3_VERSION, "", ""});

    ASSERT_TRUE(connection.outcome.succeeded()) << connection.outcome.client_error;
    EXPECT_EQ(SSL_get_verify_result(connection.client.get()), X509_V_OK);
    STACK_OF(X509)* chain = SSL_get_peer_cert_chain(connection.client.get());
    ASSERT_NE(chain, nullptr);
    ASSERT_EQ(sk_X509_num(chain), 3);
    EXPECT_EQ(common_name(sk_X509_value(chain, 0)), "chain");
    EXPECT_EQ(common_name(sk_X509_value(chain, 1)), "i2");
    EXPECT_EQ(common_name(sk_X509_value(chain, 2)), "i1");
    EXPECT_EQ(connection.server->info().vhost_index, chain_vhost);
}

// Builds a stack from config while a ring buffer collects the log, and returns the log lines.
std::vector<std::string> build_and_collect_log(const Config& config) {
    auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(100);
    const auto previous = spdlog::default_logger();
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("test", sink));
    const VhostTable vhosts(config.vhosts, config.tls);
    try {
        make_openssl_stack(config, vhosts);
    } catch (...) {
        spdlog::set_default_logger(previous);
        throw;
    }
    spdlog::set_default_logger(previous);
    return sink->last_formatted();
}

bool log_contains(const std::vector<std::string>& lines, const std::string& text) {
    return std::any_of(lines.begin(), lines.end(), [&text](const std::string& line) {
        return line.find(text) != std::string::npos;
    });
}

TEST(OpensslStackTest, ChainReorderAndRootLogged) {
    ASSERT_TRUE(world().ready);
    const std::vector<std::string> log = build_and_collect_log(world().config);

    EXPECT_TRUE(log_contains(log, "chain-bundle.pem is not in issuer order"));
    EXPECT_TRUE(log_contains(log, "leaving out root certificate \"CN=root\""));
}

// Expects that building a stack from config throws Error(config) whose message contains each
// of texts.
void expect_config_error(const Config& config, const std::vector<std::string>& texts) {
    const VhostTable vhosts(config.vhosts, config.tls);
    try {
        make_openssl_stack(config, vhosts);
        ADD_FAILURE() << "no error";
    } catch (const Error& error) {
        EXPECT_EQ(error.kind(), ErrorKind::config);
        for (const std::string& text : texts) {
            EXPECT_NE(std::string(error.what()).find(text), std::string::npos)
                << "message: " << error.what() << "\nexpected to contain: " << text;
        }
    }
}

// Returns the shared config with the chain vhost's file replaced by the named certificates.
Config config_with_chain(const std::string& file, const std::vector<std::string>& names) {
    world().pki->bundle(file, names);
    Config config = world().config;
    config.vhosts[chain_vhost].certificates[0].chain = world().pki->path(file);
    return config;
}

TEST(OpensslStackTest, ChainMissingIntermediateRejected) {
    ASSERT_TRUE(world().ready);
    expect_config_error(config_with_chain("broken.pem", {"chain", "i1"}),
                        {"test.toml:40:1", "broken.pem", "expected exactly one leaf"});
}

TEST(OpensslStackTest, ChainWithoutCertificateRejected) {
    ASSERT_TRUE(world().ready);
    write_text(world().pki->path("empty.pem"), "no PEM here\n");
    Config config = world().config;
    config.vhosts[chain_vhost].certificates[0].chain = world().pki->path("empty.pem");
    expect_config_error(config, {"empty.pem", "contains no PEM certificate"});
}

TEST(OpensslStackTest, ChainWithBadBase64Rejected) {
    ASSERT_TRUE(world().ready);
    std::string text = read_text(world().pki->path("chain.pem"));
    text.replace(text.find('\n') + 10, 4, "!!!!");
    write_text(world().pki->path("bad-base64.pem"), text);
    Config config = world().config;
    config.vhosts[chain_vhost].certificates[0].chain = world().pki->path("bad-base64.pem");
    expect_config_error(config, {"bad-base64.pem", "invalid PEM"});
}

TEST(OpensslStackTest, ChainWithPrivateKeyRejected) {
    ASSERT_TRUE(world().ready);
    const std::string text =
        read_text(world().pki->path("chain.pem")) + read_text(world().pki->path("chain.key"));
    write_text(world().pki->path("with-key.pem"), text);
    Config config = world().config;
    config.vhosts[chain_vhost].certificates[0].chain = world().pki->path("with-key.pem");
    expect_config_error(config, {"with-key.pem", "contains a private key"});
}

TEST(OpensslStackTest, ChainFileMissingRejected) {
    ASSERT_TRUE(world().ready);
    Config config = world().config;
    config.vhosts[chain_vhost].certificates[0].chain = world().pki->path("absent.pem");
    expect_config_error(config, {"test.toml:40:1", "absent.pem", "No such file"});
}

TEST(OpensslStackTest, ChainDirectoryRejected) {
    ASSERT_TRUE(world().ready);
    const std::filesystem::path directory = world().pki->path("chain-directory.pem");
    std::filesystem::create_directories(directory);
    Config config = world().config;
    config.vhosts[chain_vhost].certificates[0].chain = directory;
    expect_config_error(config, {"chain-directory.pem", "is not a regular file"});
}

// A FIFO without a writer blocked start-up in open() before the regular-file check.
TEST(OpensslStackTest, ChainFifoRejectedWithoutBlocking) {
    ASSERT_TRUE(world().ready);
    const std::filesystem::path fifo = world().pki->path("chain-fifo.pem");
    std::filesystem::remove(fifo);
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    Config config = world().config;
    config.vhosts[chain_vhost].certificates[0].chain = fifo;

    auto loading = std::async(std::launch::async, [&config] {
        expect_config_error(config, {"chain-fifo.pem", "is not a regular file"});
    });
    const bool finished = loading.wait_for(std::chrono::seconds(10)) == std::future_status::ready;
    if (!finished) {
        // Opening and closing a writer ends the blocked open, so that the test fails instead
        // of hanging.
        const Fd writer(::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC));
    }
    loading.get();
    std::filesystem::remove(fifo);
    EXPECT_TRUE(finished) << "loading the chain blocked on a FIFO";
}

TEST(OpensslStackTest, BadCipherListRejected) {
    ASSERT_TRUE(world().ready);
    Config config = world().config;
    config.tls.ciphers = "NO-SUCH-CIPHER";
    expect_config_error(config, {"test.toml", "ciphers", "NO-SUCH-CIPHER"});
}

TEST(OpensslStackTest, UnknownGroupRejected) {
    ASSERT_TRUE(world().ready);
    Config config = world().config;
    config.tls.groups = "X25519:P-999";
    expect_config_error(config, {"groups", "X25519:P-999"});
}

TEST(OpensslStackTest, KeyMismatchNamesBothFiles) {
    ASSERT_TRUE(world().ready);
    Config config = world().config;
    // The P-256 certificate of multi.test with the P-256 key of the chain certificate.
    config.vhosts[multi_vhost].certificates[1].key_index = chain_key;
    config.vhosts[multi_vhost].certificates[1].key_name = "chain";
    const VhostTable vhosts(config.vhosts, config.tls);
    const std::unique_ptr<TlsStack> stack = make_openssl_stack(config, vhosts);
    const std::unique_ptr<KeyClient> check = world().new_client(keyproto::attach_flag_unlimited);
    stack->use_key_client(*check);
    try {
        stack->verify_keys();
        ADD_FAILURE() << "verify_keys accepted a key that does not match";
    } catch (const Error& error) {
        const std::string message = error.what();
        EXPECT_EQ(error.kind(), ErrorKind::config);
        EXPECT_NE(message.find("vhost 'multi.test': key 'chain'"), std::string::npos) << message;
        EXPECT_NE(message.find(world().pki->path("chain.key").string()), std::string::npos)
            << message;
        EXPECT_NE(message.find(world().pki->path("p256.pem").string()), std::string::npos)
            << message;
        EXPECT_NE(message.find("does not match certificate"), std::string::npos) << message;
    }
}

TEST(OpensslStackTest, NoSniUsesDefaultVhost) {
    ASSERT_TRUE(world().ready);
    Connection connection(*world().stack, {"", TLS1_3_VERSION, "", ""});

    ASSERT_TRUE(connection.outcome.succeeded()) << connection.outcome.server_result.error;
    EXPECT_EQ(connection.server->info().vhost_index, multi_vhost);
    EXPECT_EQ(connection.server->info().sni, "");
}

// Returns the shared config with a [tls] SNI policy changed.
std::unique_ptr<TlsStack> strict_stack(SniMismatch unknown, SniMismatch missing) {
    Config config = world().config;
    config.tls.unknown_sni = unknown;
    config.tls.missing_sni = missing;
    const VhostTable vhosts(config.vhosts, config.tls);
    return make_openssl_stack(config, vhosts);
}

// The server-name callback runs even when the client sends no server_name extension, so a
// missing SNI can be rejected.
TEST(OpensslStackTest, MissingSniRejectedWithAlert) {
    ASSERT_TRUE(world().ready);
    const auto stack = strict_stack(SniMismatch::use_default, SniMismatch::reject);
    Connection connection(*stack, {"", TLS1_3_VERSION, "", ""});

    EXPECT_EQ(connection.outcome.server, Side::failed);
    EXPECT_EQ(connection.outcome.server_result.status, IoStatus::failed);
    EXPECT_EQ(connection.outcome.client, Side::failed);
    EXPECT_NE(connection.outcome.client_error.find("unrecognized name"), std::string::npos)
        << connection.outcome.client_error;
    EXPECT_EQ(connection.key_client->requests_sent(), 0U);
}

TEST(OpensslStackTest, UnknownSniRejectedWithAlert) {
    ASSERT_TRUE(world().ready);
    const auto stack = strict_stack(SniMismatch::reject, SniMismatch::use_default);
    Connection connection(*stack, {"other.test", TLS1_3_VERSION, "", ""});

    EXPECT_EQ(connection.outcome.server, Side::failed);
    EXPECT_NE(connection.outcome.client_error.find("unrecognized name"), std::string::npos)
        << connection.outcome.client_error;
}

TEST(OpensslStackTest, UnknownSniUsesDefaultVhost) {
    ASSERT_TRUE(world().ready);
    Connection connection(*world().stack, {"other.test", TLS1_3_VERSION, "", "", false});

    ASSERT_TRUE(connection.outcome.succeeded()) << connection.outcome.server_result.error;
    EXPECT_EQ(connection.server->info().vhost_index, multi_vhost);
    EXPECT_EQ(connection.server->info().sni, "other.test");
}

TEST(OpensslStackTest, ClosedKeyChannelNamedInError) {
    ASSERT_TRUE(world().ready);
    std::array<int, 2> fds{};
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds.data()), 0);
    Fd(fds[1]).reset();
    Connection connection(*world().stack, {"multi.test", TLS1_3_VERSION, "", ""},
                          std::make_unique<KeyClient>(Fd(fds[0]), key_timeout));

    EXPECT_EQ(connection.outcome.server, Side::failed);
    const std::string& error = connection.outcome.server_result.error;
    EXPECT_NE(error.find("cloister key provider::key channel closed"), std::string::npos) << error;
}

// Returns a TLS 1.3 server CertificateVerify content (RFC 8446 section 4.4.3) with a zero
// transcript hash, which the key process's signing policy accepts.
std::vector<std::uint8_t> certificate_verify_content() {
    const std::string context = "TLS 1.3, server CertificateVerify";
    std::vector<std::uint8_t> message(64, 0x20);
    message.insert(message.end(), context.begin(), context.end());
    message.resize(message.size() + 1 + 32, 0);
    return message;
}

TEST(OpensslStackTest, KeyTimeoutNamedInError) {
    ASSERT_TRUE(world().ready);
    std::array<int, 2> fds{};
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds.data()), 0);
    const Fd silent_end(fds[1]);  // open, but nothing responds
    Connection connection(*world().stack, {"multi.test", TLS1_3_VERSION, "", ""},
                          std::make_unique<KeyClient>(Fd(fds[0]), 200ms));

    EXPECT_EQ(connection.outcome.server, Side::failed);
    const std::string& error = connection.outcome.server_result.error;
    EXPECT_NE(error.find("key operation timed out"), std::string::npos) << error;
}

TEST(OpensslStackTest, QuotaRejectionNamedInError) {
    ASSERT_TRUE(world().ready);
    std::unique_ptr<KeyClient> used = world().new_client();
    EXPECT_FALSE(used->sign(rsa_key, 0x0804, certificate_verify_content()).empty());
    Connection connection(*world().stack, {"multi.test", TLS1_3_VERSION, "", ""}, std::move(used));

    EXPECT_EQ(connection.outcome.server, Side::failed);
    const std::string& error = connection.outcome.server_result.error;
    EXPECT_NE(error.find("key operation rejected"), std::string::npos) << error;
    EXPECT_NE(error.find("quota_exceeded"), std::string::npos) << error;
}

// A resumed TLS 1.3 handshake signs nothing, so it reports no signature scheme.
TEST(OpensslStackTest, ResumptionReportsNoScheme) {
    ASSERT_TRUE(world().ready);
    Connection first(*world().stack, {"multi.test", TLS1_3_VERSION, "", ""});
    ASSERT_TRUE(first.outcome.succeeded()) << first.outcome.server_result.error;
    std::array<char, 16> buffer{};
    EXPECT_LE(SSL_read(first.client.get(), buffer.data(), buffer.size()), 0);  // the tickets
    const ossl::Ptr<SSL_SESSION, SSL_SESSION_free> session(SSL_get1_session(first.client.get()));
    ASSERT_TRUE(session);
    ASSERT_EQ(SSL_SESSION_is_resumable(session.get()), 1);

    ClientOptions options{"multi.test", TLS1_3_VERSION, "", ""};
    options.resume = session.get();
    Connection second(*world().stack, options);

    ASSERT_TRUE(second.outcome.succeeded()) << second.outcome.server_result.error;
    EXPECT_EQ(SSL_session_reused(second.client.get()), 1);
    EXPECT_EQ(second.server->info().signature_scheme, "");
    EXPECT_EQ(second.key_client->requests_sent(), 0U);
}

// Writes text from the server and returns what the client reads, or an empty string after
// about one second.
std::string exchange_to_client(TlsSession& server, SSL* client, const std::string& text) {
    const auto bytes = std::as_bytes(std::span(text));
    const IoResult written = server.write(bytes);
    EXPECT_EQ(written.status, IoStatus::done) << written.error;
    std::array<char, 256> buffer{};
    for (int attempt = 0; attempt < 100; ++attempt) {
        const int read = SSL_read(client, buffer.data(), static_cast<int>(buffer.size()));
        if (read > 0) {
            return std::string(buffer.data(), static_cast<std::size_t>(read));
        }
        usleep(10'000);
    }
    return {};
}

IoResult read_until_not_blocked(TlsSession& server) {
    std::array<std::byte, 256> buffer{};
    IoResult result;
    for (int attempt = 0; attempt < 100; ++attempt) {
        result = server.read(buffer);
        if (result.status != IoStatus::want_read) {
            return result;
        }
        usleep(10'000);
    }
    return result;
}

// After the client's close_notify the server can still send (TLS 1.3 half-close, which the
// proxy needs to finish a backend response).
TEST(OpensslStackTest, WriteAfterClientCloseNotify) {
    ASSERT_TRUE(world().ready);
    Connection connection(*world().stack, {"multi.test", TLS1_3_VERSION, "", ""});
    ASSERT_TRUE(connection.outcome.succeeded()) << connection.outcome.server_result.error;

    EXPECT_EQ(SSL_shutdown(connection.client.get()), 0);
    EXPECT_EQ(read_until_not_blocked(*connection.server).status, IoStatus::closed);
    EXPECT_EQ(exchange_to_client(*connection.server, connection.client.get(), "late reply"),
              "late reply");
    EXPECT_EQ(connection.server->shutdown().status, IoStatus::done);
}

TEST(OpensslStackTest, EofWithoutCloseNotifyIsTruncated) {
    ASSERT_TRUE(world().ready);
    Connection connection(*world().stack, {"multi.test", TLS1_3_VERSION, "", ""});
    ASSERT_TRUE(connection.outcome.succeeded()) << connection.outcome.server_result.error;

    // Reading first consumes the session tickets. A socket closed with unread data is reset
    // instead, which the session reports as failed.
    std::array<char, 16> buffer{};
    EXPECT_LE(SSL_read(connection.client.get(), buffer.data(), buffer.size()), 0);
    connection.sockets.client.reset();
    const IoResult result = read_until_not_blocked(*connection.server);
    EXPECT_EQ(result.status, IoStatus::truncated) << result.error;
}

TEST(OpensslStackTest, WriteAfterEofWithoutCloseNotify) {
    ASSERT_TRUE(world().ready);
    Connection connection(*world().stack, {"multi.test", TLS1_3_VERSION, "", ""});
    ASSERT_TRUE(connection.outcome.succeeded()) << connection.outcome.server_result.error;

    // A bare FIN from the client ends only its direction: the backend's reply still arrives.
    std::array<char, 16> buffer{};
    EXPECT_LE(SSL_read(connection.client.get(), buffer.data(), buffer.size()), 0);
    ASSERT_EQ(shutdown(connection.sockets.client.get(), SHUT_WR), 0);
    EXPECT_EQ(read_until_not_blocked(*connection.server).status, IoStatus::truncated);
    EXPECT_EQ(exchange_to_client(*connection.server, connection.client.get(), "late reply"),
              "late reply");
}

TEST(OpensslStackTest, ReadReturnsClientData) {
    ASSERT_TRUE(world().ready);
    Connection connection(*world().stack, {"multi.test", TLS1_2_VERSION, "", ""});
    ASSERT_TRUE(connection.outcome.succeeded()) << connection.outcome.server_result.error;

    ASSERT_EQ(SSL_write(connection.client.get(), "hello", 5), 5);
    std::array<std::byte, 16> buffer{};
    IoResult result;
    for (int attempt = 0; attempt < 100 && result.bytes == 0; ++attempt) {
        result = connection.server->read(buffer);
        usleep(result.status == IoStatus::want_read ? 10'000 : 0);
    }
    ASSERT_EQ(result.status, IoStatus::done) << result.error;
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(buffer.data()), result.bytes), "hello");
    EXPECT_FALSE(connection.server->has_pending());
}

// Runs in a forked child: reseeds, runs one handshake on channel and writes 32 bytes of
// RAND_bytes followed by the server random the client saw to out. Returns the exit status.
int child_random_report(Fd channel, int out) {
    TlsStack& stack = *world().stack;
    stack.reseed_after_fork();
    std::array<unsigned char, 64> report{};
    if (RAND_bytes(report.data(), 32) != 1) {
        return 2;
    }
    Connection connection(stack, {"multi.test", TLS1_3_VERSION, "", ""},
                          std::make_unique<KeyClient>(std::move(channel), key_timeout));
    if (!connection.outcome.succeeded()) {
        return 3;
    }
    SSL_get_server_random(connection.client.get(), report.data() + 32, 32);
    return write(out, report.data(), report.size()) == 64 ? 0 : 4;
}

std::array<unsigned char, 64> fork_random_report() {
    std::array<unsigned char, 64> report{};
    std::array<int, 2> pipe_fds{};
    EXPECT_EQ(pipe(pipe_fds.data()), 0);
    Fd read_end(pipe_fds[0]);
    Fd write_end(pipe_fds[1]);
    Fd channel = attach_channel(world().control.get(), world().next_connection_id++);
    std::fflush(nullptr);
    const pid_t child = fork();
    if (child == 0) {
        read_end.reset();
        _exit(child_random_report(std::move(channel), write_end.get()));
    }
    write_end.reset();
    EXPECT_EQ(read(read_end.get(), report.data(), report.size()), 64);
    int status = 0;
    EXPECT_EQ(waitpid(child, &status, 0), child);
    EXPECT_TRUE(WIFEXITED(status)) << "status " << status;
    EXPECT_EQ(WEXITSTATUS(status), 0);
    return report;
}

TEST(OpensslStackTest, ForkedChildrenDrawDifferentRandom) {
    ASSERT_TRUE(world().ready);
    std::array<unsigned char, 32> parent{};
    ASSERT_EQ(RAND_bytes(parent.data(), parent.size()), 1);
    const auto first = fork_random_report();
    const auto second = fork_random_report();

    EXPECT_NE(std::vector(first.begin(), first.begin() + 32),
              std::vector(second.begin(), second.begin() + 32));
    EXPECT_NE(std::vector(first.begin() + 32, first.end()),
              std::vector(second.begin() + 32, second.end()));
    EXPECT_NE(std::vector(first.begin(), first.begin() + 32),
              std::vector(parent.begin(), parent.end()));
}

// Direct checks of the provider through the EVP API, without a handshake or a key channel.
class ProviderTest : public ::testing::Test {
  protected:
    void SetUp() override { ASSERT_TRUE(world().ready); }

    ossl::X509Ptr leaf(const std::string& name) {
        return ossl::load_certificate_chain(world().pki->path(name + ".pem"), "test",
                                            library_.get())
            .leaf;
    }

    ossl::EvpPkeyPtr remote_key(const std::string& name, KeyIndex index) {
        const ossl::X509Ptr certificate = leaf(name);
        return ossl::make_remote_key(certificate.get(), index, library_.get());
    }

    // Starts a signature with md (null: none) and returns whether OpenSSL accepted it.
    bool start_signing(EVP_PKEY* key, const char* md) {
        context_.reset(EVP_MD_CTX_new());
        key_context_ = nullptr;
        return EVP_DigestSignInit_ex(context_.get(), &key_context_, md, library_.get(), nullptr,
                                     key, nullptr) == 1;
    }

    ossl::LibraryContext library_;
    ossl::Ptr<EVP_MD_CTX, EVP_MD_CTX_free> context_;
    EVP_PKEY_CTX* key_context_ = nullptr;
};

TEST_F(ProviderTest, KeyEqualsOnlyItsCertificateKey) {
    const ossl::EvpPkeyPtr key = remote_key("p256", p256_key);
    const ossl::X509Ptr own = leaf("p256");
    const ossl::X509Ptr other = leaf("chain");

    EXPECT_EQ(EVP_PKEY_eq(key.get(), X509_get0_pubkey(own.get())), 1);
    EXPECT_EQ(EVP_PKEY_eq(X509_get0_pubkey(own.get()), key.get()), 1);
    EXPECT_EQ(EVP_PKEY_eq(key.get(), X509_get0_pubkey(other.get())), 0);
    EXPECT_STREQ(OSSL_PROVIDER_get0_name(EVP_PKEY_get0_provider(key.get())), ossl::provider_name);
    ossl::take_openssl_errors();
}

TEST_F(ProviderTest, KeyReportsSizes) {
    const ossl::EvpPkeyPtr rsa = remote_key("rsa", rsa_key);
    const ossl::EvpPkeyPtr p384 = remote_key("p384", p384_key);
    const ossl::EvpPkeyPtr ed25519 = remote_key("ed25519", ed25519_key);

    EXPECT_EQ(EVP_PKEY_get_bits(rsa.get()), 2048);
    EXPECT_EQ(EVP_PKEY_get_size(rsa.get()), 256);
    EXPECT_EQ(EVP_PKEY_get_security_bits(p384.get()), 192);
    EXPECT_EQ(EVP_PKEY_get_size(p384.get()), 104);
    EXPECT_EQ(EVP_PKEY_get_size(ed25519.get()), 64);
    std::array<char, 32> group{};
    EXPECT_EQ(EVP_PKEY_get_group_name(p384.get(), group.data(), group.size(), nullptr), 1);
    EXPECT_STREQ(group.data(), "secp384r1");
}

TEST_F(ProviderTest, DigestAliasesAccepted) {
    const ossl::EvpPkeyPtr key = remote_key("rsa", rsa_key);
    for (const char* md : {"SHA256", "SHA2-256", "SHA-256", "SHA384", "SHA2-512"}) {
        EXPECT_TRUE(start_signing(key.get(), md)) << md << ": " << ossl::take_openssl_errors();
    }
}

TEST_F(ProviderTest, DigestWithoutSchemeRejected) {
    const ossl::EvpPkeyPtr key = remote_key("rsa", rsa_key);
    for (const char* md : {"SHA1", "SHA224", "SHA3-256"}) {
        EXPECT_FALSE(start_signing(key.get(), md)) << md;
        EXPECT_NE(ossl::take_openssl_errors().find("cloister key provider::unsupported digest"),
                  std::string::npos)
            << md;
    }
}

TEST_F(ProviderTest, Ed25519RejectsDigest) {
    const ossl::EvpPkeyPtr key = remote_key("ed25519", ed25519_key);
    EXPECT_FALSE(start_signing(key.get(), "SHA256"));
    ossl::take_openssl_errors();
    EXPECT_TRUE(start_signing(key.get(), nullptr)) << ossl::take_openssl_errors();
}

// Sets the PSS salt length as a UTF-8 string, the form libssl uses.
int set_salt_text(EVP_PKEY_CTX* context, const char* text) {
    const std::array<OSSL_PARAM, 2> params{
        OSSL_PARAM_construct_utf8_string("saltlen", const_cast<char*>(text), 0),
        OSSL_PARAM_construct_end()};
    return EVP_PKEY_CTX_set_params(context, params.data());
}

TEST_F(ProviderTest, PssSaltMustBeDigestLength) {
    const ossl::EvpPkeyPtr key = remote_key("rsa", rsa_key);
    ASSERT_TRUE(start_signing(key.get(), "SHA256"));
    ASSERT_EQ(EVP_PKEY_CTX_set_rsa_padding(key_context_, RSA_PKCS1_PSS_PADDING), 1);

    EXPECT_EQ(set_salt_text(key_context_, "digest"), 1);
    EXPECT_EQ(set_salt_text(key_context_, "32"), 1);
    EXPECT_EQ(EVP_PKEY_CTX_set_rsa_pss_saltlen(key_context_, RSA_PSS_SALTLEN_DIGEST), 1);
    for (const char* text : {"max", "auto", "20"}) {
        EXPECT_NE(set_salt_text(key_context_, text), 1) << text;
        EXPECT_NE(ossl::take_openssl_errors().find("unsupported salt length"), std::string::npos)
            << text;
    }
    EXPECT_NE(EVP_PKEY_CTX_set_rsa_pss_saltlen(key_context_, RSA_PSS_SALTLEN_MAX), 1);
    ossl::take_openssl_errors();
}

TEST_F(ProviderTest, SigningWithoutKeyChannelFails) {
    const ossl::EvpPkeyPtr key = remote_key("p256", p256_key);
    const std::array<unsigned char, 4> message{1, 2, 3, 4};
    ASSERT_TRUE(start_signing(key.get(), "SHA256"));
    size_t length = 0;
    ASSERT_EQ(EVP_DigestSign(context_.get(), nullptr, &length, message.data(), message.size()), 1);
    EXPECT_EQ(length, 72U);  // the DER maximum for P-256, returned without a request
    std::vector<unsigned char> signature(length);
    EXPECT_NE(
        EVP_DigestSign(context_.get(), signature.data(), &length, message.data(), message.size()),
        1);
    EXPECT_NE(ossl::take_openssl_errors().find("no key channel in this process"),
              std::string::npos);
}

// The key management contains no private key, so a key-pair import without a key index fails.
TEST_F(ProviderTest, PrivateImportNeedsKeyIndex) {
    const ossl::X509Ptr certificate = leaf("p256");
    OSSL_PARAM* params = nullptr;
    ASSERT_EQ(EVP_PKEY_todata(X509_get0_pubkey(certificate.get()), EVP_PKEY_PUBLIC_KEY, &params),
              1);
    const ossl::Ptr<OSSL_PARAM, OSSL_PARAM_free> owned(params);
    const ossl::Ptr<EVP_PKEY_CTX, EVP_PKEY_CTX_free> context(
        EVP_PKEY_CTX_new_from_name(library_.get(), "EC", ossl::provider_query));
    ASSERT_TRUE(context);
    ASSERT_EQ(EVP_PKEY_fromdata_init(context.get()), 1);
    EVP_PKEY* key = nullptr;

    EXPECT_NE(EVP_PKEY_fromdata(context.get(), &key, EVP_PKEY_KEYPAIR, params), 1);
    EXPECT_EQ(key, nullptr);
    EXPECT_NE(ossl::take_openssl_errors().find("missing key index"), std::string::npos);
}

}  // namespace
}  // namespace cloister
