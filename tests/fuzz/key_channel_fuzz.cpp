// Fuzz target for the key channel. Each input is one datagram. It goes to the three message
// decoders, the key_info payload decoder, malformed_response and the TLS-only signing policy.
// When it decodes as a request, the key process's request handler serves it with a
// MemoryKeyStore of three small keys.
//
// Besides crashes and sanitizer reports, the target aborts when one of these properties fails:
//  - a datagram that a decoder accepts encodes back to the same bytes;
//  - a handled request gets a response of its own type and request id that encodes within the
//    caps, with a payload only when the status is ok, 48 bytes for an ok decrypt and a
//    decodable scheme list for an ok key_info;
//  - a channel never exceeds its quota: after an ok sign or decrypt, the same request on the
//    same channel gets quota_exceeded, and the other requests never count;
//  - decrypt requests are refused when RSA key exchange is off;
//  - the signing policy accepts no message longer than the largest TLS signature input.
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/key_protocol.h"
#include "keyprovider/memory_key_store.h"
#include "keyprovider/request_handler.h"
#include "keyprovider/signing_policy.h"

namespace {

using cloister::ChannelState;
using cloister::HandlerOptions;
using cloister::HandlerResult;
using cloister::RequestHandler;
using cloister::keyproto::MessageType;
using cloister::keyproto::Status;

// The largest to-be-signed message the policy can accept: a TLS 1.2 ServerKeyExchange with
// a 1024-byte DH prime, generator and public value (64 + 3 * (2 + 1024) bytes).
constexpr std::size_t max_signing_input = 3142;

void require(bool condition, const char* property) {
    if (!condition) {
        std::fprintf(stderr, "key_channel_fuzz: property failed: %s\n", property);
        std::abort();
    }
}

struct PkeyDeleter {
    void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDeleter>;

struct FileDeleter {
    void operator()(FILE* file) const { std::fclose(file); }
};

void write_key(EVP_PKEY* key, const std::filesystem::path& path) {
    const std::unique_ptr<FILE, FileDeleter> file(std::fopen(path.c_str(), "wb"));
    require(file != nullptr, "the key file can be created");
    require(key != nullptr &&
                PEM_write_PrivateKey(file.get(), key, nullptr, nullptr, 0, nullptr, nullptr) == 1,
            "the test key is generated and written");
}

// Generates the keys at key indexes 0 (RSA-2048), 1 (P-256) and 2 (Ed25519), loads them the
// way the key process does, and removes the files.
std::unique_ptr<cloister::MemoryKeyStore> make_store() {
    const std::filesystem::path folder = std::filesystem::temp_directory_path() /
                                         ("cloister-key-channel-fuzz-" + std::to_string(getpid()));
    std::filesystem::create_directories(folder);
    const PkeyPtr keys[] = {
        PkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", std::size_t{2048})),
        PkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256")),
        PkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519")),
    };
    std::vector<cloister::KeyConfig> configs;
    for (const PkeyPtr& key : keys) {
        cloister::KeyConfig config;
        config.name = "key" + std::to_string(configs.size());
        config.file = folder / (config.name + ".pem");
        write_key(key.get(), config.file);
        configs.push_back(config);
    }
    auto store = std::make_unique<cloister::MemoryKeyStore>(configs);
    std::filesystem::remove_all(folder);
    return store;
}

struct Harness {
    std::unique_ptr<cloister::MemoryKeyStore> store = make_store();
    RequestHandler with_decryption{*store, options(true)};
    RequestHandler without_decryption{*store, options(false)};

    static HandlerOptions options(bool rsa_decryption) {
        HandlerOptions result;
        result.max_operations_per_channel = 1;
        result.rsa_decryption = rsa_decryption;
        return result;
    }
};

Harness* harness = nullptr;

void check_response(const cloister::keyproto::Request& request, const HandlerResult& result) {
    const auto& response = result.response;
    require(response.type == request.type, "the response has the request's type");
    require(response.request_id == request.request_id, "the response has the request id");
    require(response.status == Status::ok || response.payload.empty(),
            "only an ok response has a payload");
    require(response.status != Status::ok || result.reason.empty(), "an ok response has no reason");
    require(response.status == Status::ok || !result.reason.empty(),
            "a rejected request has a reason");
    require(response.payload.size() <= cloister::keyproto::max_response_payload,
            "the response payload is within the cap");
    if (response.status == Status::ok && request.type == MessageType::decrypt) {
        require(response.payload.size() == cloister::keyproto::premaster_secret_size,
                "an ok decrypt response has 48 bytes");
    }
    if (response.status == Status::ok && request.type == MessageType::sign) {
        require(!response.payload.empty(), "an ok sign response has a signature");
    }
    if (response.status == Status::ok && request.type == MessageType::key_info) {
        require(static_cast<bool>(cloister::keyproto::decode_key_info(response.payload)),
                "an ok key_info response lists schemes");
    }
    const auto encoded = cloister::keyproto::encode(response);
    const auto decoded = cloister::keyproto::decode_response(encoded);
    require(decoded && decoded.value->payload == response.payload,
            "the response decodes to itself");
}

void check_handler(const cloister::keyproto::Request& request) {
    const bool private_key_operation =
        request.type == MessageType::sign || request.type == MessageType::decrypt;
    ChannelState channel;
    const HandlerResult first = harness->with_decryption.handle(request, channel);
    check_response(request, first);
    require(channel.operations <= 1, "one request counts at most one operation");
    if (!private_key_operation) {
        require(channel.operations == 0, "only sign and decrypt count");
    }
    const HandlerResult second = harness->with_decryption.handle(request, channel);
    check_response(request, second);
    if (first.response.status == Status::ok && private_key_operation) {
        require(second.response.status == Status::quota_exceeded,
                "a second operation exceeds the quota");
    }
    require(channel.operations <= 1, "the channel stays within its quota");

    if (request.type == MessageType::decrypt) {
        ChannelState fresh;
        const HandlerResult refused = harness->without_decryption.handle(request, fresh);
        check_response(request, refused);
        require(refused.response.status != Status::ok, "decrypt is refused when it is off");
        require(fresh.operations == 0, "a refused decrypt does not count");
    }
}

void check_request(std::span<const std::uint8_t> datagram) {
    const auto decoded = cloister::keyproto::decode_request(datagram);
    const auto reply = cloister::keyproto::malformed_response(datagram);
    require(reply.status == Status::malformed && reply.payload.empty(),
            "malformed_response is an empty malformed response");
    static_cast<void>(cloister::keyproto::encode(reply));
    if (!decoded) {
        require(!decoded.error.empty(), "a rejected request has a reason");
        return;
    }
    const auto encoded = cloister::keyproto::encode(*decoded.value);
    require(std::equal(encoded.begin(), encoded.end(), datagram.begin(), datagram.end()),
            "an accepted request encodes to the same bytes");
    check_handler(*decoded.value);
}

void check_response_decoder(std::span<const std::uint8_t> datagram) {
    const auto decoded = cloister::keyproto::decode_response(datagram);
    if (!decoded) {
        require(!decoded.error.empty(), "a rejected response has a reason");
        return;
    }
    const auto encoded = cloister::keyproto::encode(*decoded.value);
    require(std::equal(encoded.begin(), encoded.end(), datagram.begin(), datagram.end()),
            "an accepted response encodes to the same bytes");
}

void check_attach(std::span<const std::uint8_t> datagram) {
    const auto decoded = cloister::keyproto::decode_attach(datagram);
    if (!decoded) {
        require(!decoded.error.empty(), "a rejected attach message has a reason");
        return;
    }
    const auto encoded = cloister::keyproto::encode(*decoded.value);
    require(std::equal(encoded.begin(), encoded.end(), datagram.begin(), datagram.end()),
            "an accepted attach message encodes to the same bytes");
}

void check_key_info(std::span<const std::uint8_t> payload) {
    const auto decoded = cloister::keyproto::decode_key_info(payload);
    if (!decoded) {
        require(!decoded.error.empty(), "a rejected key_info payload has a reason");
        return;
    }
    const auto encoded = cloister::keyproto::encode_key_info(*decoded.value);
    require(std::equal(encoded.begin(), encoded.end(), payload.begin(), payload.end()),
            "an accepted key_info payload encodes to the same bytes");
}

// The first two bytes choose the scheme (big-endian, as TLS writes it) and the rest is the
// message, so the policy is reached without a valid request header around it.
void check_policy(std::span<const std::uint8_t> data) {
    if (data.size() < 2) {
        return;
    }
    const auto scheme = static_cast<std::uint16_t>((data[0] << 8U) | data[1]);
    const auto message = data.subspan(2);
    const cloister::PolicyResult verdict = cloister::check_tls_signing_input(message, scheme);
    if (verdict.accepted()) {
        require(verdict.input != cloister::SigningInput::none, "an accepted input has a kind");
        require(verdict.reason.empty(), "an accepted input has no reason");
        require(message.size() <= max_signing_input, "an accepted input is not oversized");
    } else {
        require(!verdict.reason.empty(), "a rejected input has a reason");
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
    spdlog::set_level(spdlog::level::off);
    harness = new Harness();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    // The key process reads at most max_request_size + 1 bytes and rejects longer datagrams
    // before decoding, so longer inputs test nothing the server would decode.
    if (size > cloister::keyproto::max_request_size + 1) {
        return -1;
    }
    const std::span<const std::uint8_t> datagram(data, size);
    check_request(datagram);
    check_response_decoder(datagram);
    check_attach(datagram);
    check_key_info(datagram);
    check_policy(datagram);
    return 0;
}
