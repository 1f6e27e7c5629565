// Attacks on a key channel of the real key process: run_key_process with the confinement the
// daemon gives it (key_process_confinement), in a forked child, with real SOCK_SEQPACKET
// channels attached over its control channel, the way the supervisor attaches them. Each
// attack must be refused and logged with the channel's connection id, and the key process must
// go on serving other channels. As root the process also runs as user "daemon" in an empty
// chroot; otherwise it has the layers an unprivileged process can apply.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/config.h"
#include "core/error.h"
#include "core/fd.h"
#include "core/key_protocol.h"
#include "core/log.h"
#include "core/sandbox_layers.h"
#include "keyprovider/key_process.h"

namespace cloister {
namespace {

namespace fs = std::filesystem;
using keyproto::SignatureScheme;
using keyproto::Status;
using Bytes = std::vector<std::uint8_t>;

constexpr auto ecdsa_p256 = static_cast<std::uint16_t>(SignatureScheme::ecdsa_secp256r1_sha256);
constexpr auto rsa_pss = static_cast<std::uint16_t>(SignatureScheme::rsa_pss_rsae_sha256);

struct PkeyDeleter {
    void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDeleter>;

struct BioDeleter {
    void operator()(BIO* bio) const { BIO_free(bio); }
};

struct MdCtxDeleter {
    void operator()(EVP_MD_CTX* context) const { EVP_MD_CTX_free(context); }
};

bool running_as_root() {
    return ::geteuid() == 0;
}

// TLS 1.3 server CertificateVerify content (RFC 8446 section 4.4.3) with a SHA-256 transcript
// hash: the one message that the key process signs in a TLS 1.3 handshake with this key.
Bytes certificate_verify_content() {
    Bytes message(64, 0x20);
    constexpr std::string_view context = "TLS 1.3, server CertificateVerify";
    message.insert(message.end(), context.begin(), context.end());
    message.push_back(0);
    for (std::uint8_t i = 0; i < 32; ++i) {
        message.push_back(static_cast<std::uint8_t>(i * 13 + 5));
    }
    return message;
}

bool verify_ecdsa_sha256(EVP_PKEY* key, const Bytes& message, const Bytes& signature) {
    const std::unique_ptr<EVP_MD_CTX, MdCtxDeleter> context(EVP_MD_CTX_new());
    return EVP_DigestVerifyInit_ex(context.get(), nullptr, "SHA256", nullptr, nullptr, key,
                                   nullptr) == 1 &&
           EVP_DigestVerify(context.get(), signature.data(), signature.size(), message.data(),
                            message.size()) == 1;
}

std::pair<Fd, Fd> seqpacket_pair() {
    std::array<int, 2> fds{};
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds.data()) != 0) {
        throw_system_error("socketpair");
    }
    return {Fd(fds[0]), Fd(fds[1])};
}

// Sends one attach message with fd in SCM_RIGHTS, as the supervisor's send_attach does.
void send_attach(int control, std::uint64_t connection_id, int fd) {
    const auto message = keyproto::encode(keyproto::Attach{connection_id, 0});
    iovec data{const_cast<std::uint8_t*>(message.data()), message.size()};
    alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(int))> buffer{};
    msghdr header{};
    header.msg_iov = &data;
    header.msg_iovlen = 1;
    header.msg_control = buffer.data();
    header.msg_controllen = buffer.size();
    cmsghdr* item = CMSG_FIRSTHDR(&header);
    item->cmsg_level = SOL_SOCKET;
    item->cmsg_type = SCM_RIGHTS;
    item->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(item), &fd, sizeof(fd));
    if (::sendmsg(control, &header, MSG_NOSIGNAL) < 0) {
        throw_system_error("sendmsg of an attach message");
    }
}

// Receives one datagram within 5 s; nullopt at end of stream or on timeout.
std::optional<Bytes> receive(int fd) {
    pollfd entry{fd, POLLIN, 0};
    if (::poll(&entry, 1, 5000) != 1) {
        return std::nullopt;
    }
    Bytes buffer(keyproto::max_response_size + 1);
    const ssize_t received = ::recv(fd, buffer.data(), buffer.size(), MSG_DONTWAIT);
    if (received <= 0) {
        return std::nullopt;
    }
    buffer.resize(static_cast<std::size_t>(received));
    return buffer;
}

std::string read_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

class KeyChannelAttack : public ::testing::Test {
  protected:
    static void SetUpTestSuite() {
        std::string pattern = (fs::temp_directory_path() / "cloister-attack-XXXXXX").string();
        ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
        directory_ = new fs::path(pattern);
        ASSERT_EQ(::chmod(pattern.c_str(), 0755), 0);
        fs::create_directory(*directory_ / "empty");
        ASSERT_EQ(::chmod((*directory_ / "empty").c_str(), 0755), 0);
        key_ = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
        ASSERT_NE(key_, nullptr);
        const std::unique_ptr<BIO, BioDeleter> bio(
            BIO_new_file((*directory_ / "p256.pem").c_str(), "wb"));
        ASSERT_TRUE(bio);
        ASSERT_EQ(PEM_write_bio_PrivateKey(bio.get(), key_, nullptr, nullptr, 0, nullptr, nullptr),
                  1);
        ASSERT_EQ(::chmod((*directory_ / "p256.pem").c_str(), 0600), 0);
    }

    static void TearDownTestSuite() {
        EVP_PKEY_free(key_);
        key_ = nullptr;
        std::error_code ignored;
        fs::remove_all(*directory_, ignored);
        delete directory_;
        directory_ = nullptr;
    }

    static Config make_config() {
        Config config;
        KeyConfig key;
        key.name = "p256";
        key.file = *directory_ / "p256.pem";
        config.keys.push_back(key);
        config.key_process.workers = 1;
        config.key_process.max_operations_per_channel = 1;
        // "nobody" and "daemon" exist on every Debian system; no other test runs a process as
        // "daemon", whose process count the key process's RLIMIT_NPROC limits.
        config.sandbox.network_user = "nobody";
        config.sandbox.key_user = "daemon";
        config.sandbox.root_directory = *directory_ / "empty";
        return config;
    }

    void SetUp() override {
        const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
        log_path_ = *directory_ / (std::string(info->name()) + ".log");
        config_ = make_config();
        auto [ours, theirs] = seqpacket_pair();
        pid_ = ::fork();
        ASSERT_GE(pid_, 0);
        if (pid_ == 0) {
            ours.reset();
            run_child(std::move(theirs));
        }
        control_ = std::move(ours);
        ASSERT_TRUE(wait_for_log("key process serving")) << log();
    }

    void TearDown() override {
        control_.reset();
        int status = 0;
        for (int i = 0; i < 500 && ::waitpid(pid_, &status, WNOHANG) == 0; ++i) {
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
    }

    [[noreturn]] void run_child(Fd control) {
        const Fd log(::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
        ::dup2(log.get(), STDERR_FILENO);
        int status = 99;
        try {
            init_logging("key", LogLevel::debug);
            status = run_key_process(config_, std::move(control), key_process_confinement(config_));
        } catch (const std::exception& error) {
            const std::string line = std::string("test child failed: ") + error.what() + "\n";
            static_cast<void>(::write(STDERR_FILENO, line.data(), line.size()));
        }
        ::_exit(status);
    }

    [[nodiscard]] std::string log() const { return read_file(log_path_); }

    [[nodiscard]] bool wait_for_log(std::string_view text) const {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (log().find(text) == std::string::npos) {
            if (std::chrono::steady_clock::now() > deadline) {
                return false;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        return true;
    }

    Fd attach(std::uint64_t connection_id) {
        auto [ours, theirs] = seqpacket_pair();
        send_attach(control_.get(), connection_id, theirs.get());
        return std::move(ours);
    }

    static std::optional<keyproto::Response> sign(int channel, std::uint32_t request_id,
                                                  std::uint16_t scheme, const Bytes& message) {
        keyproto::Request request;
        request.type = keyproto::MessageType::sign;
        request.scheme = scheme;
        request.request_id = request_id;
        request.key_index = 0;
        request.payload = message;
        const Bytes datagram = keyproto::encode(request);
        if (::send(channel, datagram.data(), datagram.size(), MSG_NOSIGNAL) < 0) {
            return std::nullopt;
        }
        return receive_response(channel);
    }

    static std::optional<keyproto::Response> receive_response(int channel) {
        const std::optional<Bytes> datagram = receive(channel);
        if (!datagram) {
            return std::nullopt;
        }
        auto decoded = keyproto::decode_response(*datagram);
        return decoded.value;
    }

    // Another channel still gets a valid signature, so the key process keeps serving.
    void expect_serving_another_channel(std::uint64_t connection_id) {
        const Fd channel = attach(connection_id);
        const Bytes message = certificate_verify_content();
        const auto response = sign(channel.get(), 1, ecdsa_p256, message);
        ASSERT_TRUE(response) << log();
        EXPECT_EQ(response->status, Status::ok) << log();
        EXPECT_TRUE(verify_ecdsa_sha256(key_, message, response->payload));
        int status = 0;
        EXPECT_EQ(::waitpid(pid_, &status, WNOHANG), 0) << "the key process exited";
    }

    static fs::path* directory_;
    static EVP_PKEY* key_;
    fs::path log_path_;
    Config config_;
    pid_t pid_ = -1;
    Fd control_;
};

fs::path* KeyChannelAttack::directory_ = nullptr;
EVP_PKEY* KeyChannelAttack::key_ = nullptr;

std::map<std::string, std::string> status_fields(pid_t pid) {
    std::map<std::string, std::string> fields;
    std::istringstream lines(read_file("/proc/" + std::to_string(pid) + "/status"));
    for (std::string line; std::getline(lines, line);) {
        const auto colon = line.find(':');
        const auto value = line.find_first_not_of(" \t", colon + 1);
        if (colon != std::string::npos) {
            fields[line.substr(0, colon)] = value == std::string::npos ? "" : line.substr(value);
        }
    }
    return fields;
}

TEST_F(KeyChannelAttack, KeyProcessRunsConfined) {
    auto fields = status_fields(pid_);
    EXPECT_EQ(fields["Seccomp"], "2");
    EXPECT_EQ(fields["NoNewPrivs"], "1");
    if (running_as_root()) {
        EXPECT_EQ(fields["Uid"], "1\t1\t1\t1");
        EXPECT_EQ(fs::read_symlink("/proc/" + std::to_string(pid_) + "/root"),
                  *directory_ / "empty");
    }
}

TEST_F(KeyChannelAttack, MessageOutsideTlsRefused) {
    const Fd channel = attach(11);
    // A digest-sized blob, the input of a signing oracle, is no TLS signature input.
    const Bytes message(32, 0x5a);
    const auto response = sign(channel.get(), 7, ecdsa_p256, message);
    ASSERT_TRUE(response) << log();
    EXPECT_EQ(response->status, Status::refused);
    EXPECT_TRUE(response->payload.empty());
    EXPECT_TRUE(
        wait_for_log("connection 11: sign request 7 for key 0 with "
                     "ecdsa_secp256r1_sha256 refused (refused)"))
        << log();
    expect_serving_another_channel(12);
}

TEST_F(KeyChannelAttack, SecondSignatureOnChannelRefused) {
    const Fd channel = attach(21);
    const Bytes message = certificate_verify_content();
    const auto first = sign(channel.get(), 1, ecdsa_p256, message);
    ASSERT_TRUE(first) << log();
    EXPECT_EQ(first->status, Status::ok);
    const auto second = sign(channel.get(), 2, ecdsa_p256, message);
    ASSERT_TRUE(second) << log();
    EXPECT_EQ(second->status, Status::quota_exceeded);
    EXPECT_TRUE(second->payload.empty());
    EXPECT_TRUE(
        wait_for_log("connection 21: sign request 2 for key 0 with "
                     "ecdsa_secp256r1_sha256 refused (quota_exceeded)"))
        << log();
    expect_serving_another_channel(22);

    // The refusal shows in the key operation stats, and the two served signatures are the count.
    ASSERT_EQ(::kill(pid_, SIGUSR1), 0);
    ASSERT_TRUE(wait_for_log("key process stats:")) << log();
    EXPECT_NE(log().find("key operation stats: key=p256 operation=sign period_ms="),
              std::string::npos)
        << log();
    EXPECT_NE(log().find(" count=2 failed=0 refused=1 p50_us="), std::string::npos) << log();
}

TEST_F(KeyChannelAttack, SchemeOfAnotherKeyTypeRefused) {
    const Fd channel = attach(31);
    const auto response = sign(channel.get(), 3, rsa_pss, certificate_verify_content());
    ASSERT_TRUE(response) << log();
    EXPECT_EQ(response->status, Status::unsupported_scheme);
    EXPECT_TRUE(
        wait_for_log("connection 31: sign request 3 for key 0 with rsa_pss_rsae_sha256 "
                     "refused (unsupported_scheme)"))
        << log();
    expect_serving_another_channel(32);
}

TEST_F(KeyChannelAttack, OversizedRequestRefused) {
    const Fd channel = attach(41);
    const Bytes datagram(keyproto::max_request_size + 100, 0x01);
    ASSERT_GT(::send(channel.get(), datagram.data(), datagram.size(), MSG_NOSIGNAL), 0);
    const auto response = receive_response(channel.get());
    ASSERT_TRUE(response) << log();
    EXPECT_EQ(response->status, Status::malformed);
    EXPECT_FALSE(receive(channel.get())) << "the channel stays open after a malformed request";
    EXPECT_TRUE(wait_for_log("connection 41: malformed key request: datagram of")) << log();
    expect_serving_another_channel(42);
}

TEST_F(KeyChannelAttack, TruncatedRequestRefused) {
    const Fd channel = attach(51);
    keyproto::Request request;
    request.scheme = ecdsa_p256;
    request.request_id = 5;
    request.payload = certificate_verify_content();
    Bytes datagram = keyproto::encode(request);
    datagram.resize(keyproto::request_header_size + 10);  // the header promises more payload
    ASSERT_GT(::send(channel.get(), datagram.data(), datagram.size(), MSG_NOSIGNAL), 0);
    const auto response = receive_response(channel.get());
    ASSERT_TRUE(response) << log();
    EXPECT_EQ(response->status, Status::malformed);
    EXPECT_FALSE(receive(channel.get())) << "the channel stays open after a malformed request";
    EXPECT_TRUE(wait_for_log("connection 51: malformed key request")) << log();
    expect_serving_another_channel(52);
}

}  // namespace
}  // namespace cloister
