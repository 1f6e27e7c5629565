// Tests of the key channel codec and of KeyClient against an in-test peer.
#include "core/key_protocol.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/fd.h"
#include "core/key_client.h"

namespace cloister {
namespace {

using keyproto::Attach;
using keyproto::MessageType;
using keyproto::Request;
using keyproto::Response;
using keyproto::SignatureScheme;
using keyproto::Status;
using testing::HasSubstr;

using Bytes = std::vector<std::uint8_t>;

constexpr auto scheme_code(SignatureScheme scheme) {
    return static_cast<std::uint16_t>(scheme);
}

Request make_sign_request(Bytes payload) {
    Request request;
    request.type = MessageType::sign;
    request.scheme = scheme_code(SignatureScheme::rsa_pss_rsae_sha256);
    request.request_id = 7;
    request.key_index = 3;
    request.payload = std::move(payload);
    return request;
}

// A request header written by hand, so the decoder gets exactly these fields.
Bytes request_header(std::uint8_t version, std::uint8_t type, std::uint16_t scheme,
                     std::uint32_t payload_length) {
    return {version,
            type,
            static_cast<std::uint8_t>(scheme),
            static_cast<std::uint8_t>(scheme >> 8),
            7,
            0,
            0,
            0,
            3,
            0,
            0,
            0,
            static_cast<std::uint8_t>(payload_length),
            static_cast<std::uint8_t>(payload_length >> 8),
            static_cast<std::uint8_t>(payload_length >> 16),
            static_cast<std::uint8_t>(payload_length >> 24)};
}

Bytes response_header(std::uint8_t type, std::uint16_t status, std::uint32_t payload_length) {
    return {1,
            type,
            static_cast<std::uint8_t>(status),
            static_cast<std::uint8_t>(status >> 8),
            9,
            0,
            0,
            0,
            static_cast<std::uint8_t>(payload_length),
            static_cast<std::uint8_t>(payload_length >> 8),
            static_cast<std::uint8_t>(payload_length >> 16),
            static_cast<std::uint8_t>(payload_length >> 24)};
}

Bytes with_payload(Bytes header, std::size_t payload_size) {
    header.resize(header.size() + payload_size, 0xab);
    return header;
}

TEST(KeyProtocol, SignRequestRoundTrip) {
    const Request request = make_sign_request({1, 2, 3, 4, 5});
    const Bytes datagram = keyproto::encode(request);
    ASSERT_EQ(datagram.size(), keyproto::request_header_size + 5);

    const auto decoded = keyproto::decode_request(datagram);
    ASSERT_TRUE(decoded) << decoded.error;
    EXPECT_EQ(decoded.value->type, MessageType::sign);
    EXPECT_EQ(decoded.value->scheme, request.scheme);
    EXPECT_EQ(decoded.value->request_id, 7U);
    EXPECT_EQ(decoded.value->key_index, 3U);
    EXPECT_EQ(decoded.value->payload, request.payload);
}

TEST(KeyProtocol, RequestHeaderIsLittleEndian) {
    Request request = make_sign_request({0xee});
    request.request_id = 0x11223344;
    request.key_index = 0x55667788;
    const Bytes expected{1,    1,    0x04, 0x08, 0x44, 0x33, 0x22, 0x11, 0x88,
                         0x77, 0x66, 0x55, 1,    0,    0,    0,    0xee};
    EXPECT_EQ(keyproto::encode(request), expected);
}

TEST(KeyProtocol, PublicKeyRequestRoundTrip) {
    Request request;
    request.type = MessageType::public_key;
    request.request_id = 1;
    request.key_index = 0xfffffffe;
    const Bytes datagram = keyproto::encode(request);
    ASSERT_EQ(datagram.size(), keyproto::request_header_size);

    const auto decoded = keyproto::decode_request(datagram);
    ASSERT_TRUE(decoded) << decoded.error;
    EXPECT_EQ(decoded.value->type, MessageType::public_key);
    EXPECT_EQ(decoded.value->scheme, 0);
    EXPECT_EQ(decoded.value->key_index, 0xfffffffeU);
    EXPECT_TRUE(decoded.value->payload.empty());
}

TEST(KeyProtocol, ResponseRoundTrip) {
    Response response;
    response.type = MessageType::public_key;
    response.status = Status::quota_exceeded;
    response.request_id = 0x01020304;
    response.payload = {9, 8, 7};
    const Bytes datagram = keyproto::encode(response);
    const Bytes expected{1, 2, 5, 0, 4, 3, 2, 1, 3, 0, 0, 0, 9, 8, 7};
    ASSERT_EQ(datagram, expected);

    const auto decoded = keyproto::decode_response(datagram);
    ASSERT_TRUE(decoded) << decoded.error;
    EXPECT_EQ(decoded.value->type, MessageType::public_key);
    EXPECT_EQ(decoded.value->status, Status::quota_exceeded);
    EXPECT_EQ(decoded.value->request_id, 0x01020304U);
    EXPECT_EQ(decoded.value->payload, response.payload);
}

TEST(KeyProtocol, EveryStatusRoundTrips) {
    for (std::uint16_t value = 0; value <= 7; ++value) {
        Response response;
        response.status = static_cast<Status>(value);
        const auto decoded = keyproto::decode_response(keyproto::encode(response));
        ASSERT_TRUE(decoded) << "status " << value << ": " << decoded.error;
        EXPECT_EQ(static_cast<std::uint16_t>(decoded.value->status), value);
    }
}

TEST(KeyProtocol, AttachEncoding) {
    Attach attach;
    attach.connection_id = 0x0102030405060708;
    attach.flags = keyproto::attach_flag_unlimited;
    const auto bytes = keyproto::encode(attach);
    const std::array<std::uint8_t, keyproto::attach_size> expected{1, 16, 0, 0, 1, 0, 0, 0,
                                                                   8, 7,  6, 5, 4, 3, 2, 1};
    EXPECT_EQ(bytes, expected);

    const auto decoded = keyproto::decode_attach(bytes);
    ASSERT_TRUE(decoded) << decoded.error;
    EXPECT_EQ(decoded.value->connection_id, attach.connection_id);
    EXPECT_EQ(decoded.value->flags, keyproto::attach_flag_unlimited);
}

TEST(KeyProtocol, RequestPayloadAtCapAccepted) {
    const Request request = make_sign_request(Bytes(keyproto::max_request_payload, 0x5a));
    const Bytes datagram = keyproto::encode(request);
    EXPECT_EQ(datagram.size(), keyproto::max_request_size);
    const auto decoded = keyproto::decode_request(datagram);
    ASSERT_TRUE(decoded) << decoded.error;
    EXPECT_EQ(decoded.value->payload.size(), keyproto::max_request_payload);
}

TEST(KeyProtocol, RequestPayloadOverCapRejected) {
    const Request request = make_sign_request(Bytes(keyproto::max_request_payload + 1, 0x5a));
    try {
        (void)keyproto::encode(request);
        FAIL() << "encode accepted a payload over the cap";
    } catch (const Error& error) {
        EXPECT_EQ(error.kind(), ErrorKind::protocol);
        EXPECT_THAT(error.what(), HasSubstr("8193 bytes"));
    }

    const auto too_long = with_payload(request_header(1, 1, scheme_code(SignatureScheme::ed25519),
                                                      keyproto::max_request_payload + 1),
                                       keyproto::max_request_payload + 1);
    const auto decoded = keyproto::decode_request(too_long);
    ASSERT_FALSE(decoded);
    EXPECT_THAT(decoded.error, HasSubstr("payload length 8193 exceeds the maximum of 8192"));
}

TEST(KeyProtocol, ResponsePayloadAtCapAccepted) {
    Response response;
    response.payload.assign(keyproto::max_response_payload, 0x11);
    const Bytes datagram = keyproto::encode(response);
    EXPECT_EQ(datagram.size(), keyproto::max_response_size);
    const auto decoded = keyproto::decode_response(datagram);
    ASSERT_TRUE(decoded) << decoded.error;
    EXPECT_EQ(decoded.value->payload.size(), keyproto::max_response_payload);
}

TEST(KeyProtocol, ResponsePayloadOverCapRejected) {
    Response response;
    response.payload.assign(keyproto::max_response_payload + 1, 0x11);
    EXPECT_THROW((void)keyproto::encode(response), Error);

    const auto too_long = with_payload(response_header(1, 0, keyproto::max_response_payload + 1),
                                       keyproto::max_response_payload + 1);
    const auto decoded = keyproto::decode_response(too_long);
    ASSERT_FALSE(decoded);
    EXPECT_THAT(decoded.error, HasSubstr("payload length 2049 exceeds the maximum of 2048"));
}

TEST(KeyProtocol, TruncatedHeaderRejected) {
    const Bytes full = keyproto::encode(make_sign_request({}));
    for (std::size_t size = 0; size < keyproto::request_header_size; ++size) {
        const auto decoded = keyproto::decode_request(std::span(full).first(size));
        ASSERT_FALSE(decoded) << "size " << size;
        EXPECT_THAT(decoded.error, HasSubstr("shorter than the 16-byte request header"));
    }

    const Bytes response = keyproto::encode(Response{});
    for (std::size_t size = 0; size < keyproto::response_header_size; ++size) {
        const auto decoded = keyproto::decode_response(std::span(response).first(size));
        ASSERT_FALSE(decoded) << "size " << size;
        EXPECT_THAT(decoded.error, HasSubstr("shorter than the 12-byte response header"));
    }
}

TEST(KeyProtocol, DatagramLongerThanStatedRejected) {
    Bytes datagram = keyproto::encode(make_sign_request({1, 2, 3}));
    datagram.push_back(0);
    const auto decoded = keyproto::decode_request(datagram);
    ASSERT_FALSE(decoded);
    EXPECT_THAT(decoded.error, HasSubstr("datagram of 20 bytes does not match"));

    Bytes response = keyproto::encode(Response{});
    response.push_back(0);
    EXPECT_FALSE(keyproto::decode_response(response));
}

TEST(KeyProtocol, DatagramShorterThanStatedRejected) {
    Bytes datagram = keyproto::encode(make_sign_request({1, 2, 3}));
    datagram.pop_back();
    const auto decoded = keyproto::decode_request(datagram);
    ASSERT_FALSE(decoded);
    EXPECT_THAT(decoded.error, HasSubstr("datagram of 18 bytes does not match"));

    Response response;
    response.payload = {1, 2};
    Bytes encoded = keyproto::encode(response);
    encoded.pop_back();
    EXPECT_FALSE(keyproto::decode_response(encoded));
}

TEST(KeyProtocol, BadVersionRejected) {
    for (const std::uint8_t version : {0, 2, 255}) {
        const auto decoded = keyproto::decode_request(
            request_header(version, 1, scheme_code(SignatureScheme::ed25519), 0));
        ASSERT_FALSE(decoded);
        EXPECT_THAT(decoded.error, HasSubstr("unsupported protocol version"));
    }
    Bytes response = keyproto::encode(Response{});
    response[0] = 2;
    EXPECT_FALSE(keyproto::decode_response(response));
    auto attach = keyproto::encode(Attach{});
    attach[0] = 0;
    EXPECT_FALSE(keyproto::decode_attach(attach));
}

TEST(KeyProtocol, UnknownTypeRejected) {
    for (const std::uint8_t type : {0, 5, 15, 17, 255}) {
        const auto decoded = keyproto::decode_request(request_header(1, type, 0, 0));
        ASSERT_FALSE(decoded) << "type " << int{type};
        EXPECT_THAT(decoded.error, HasSubstr("unknown message type"));
        EXPECT_FALSE(keyproto::decode_response(response_header(type, 0, 0)));
    }
    const auto attach_on_channel = keyproto::decode_request(request_header(1, 16, 0, 0));
    ASSERT_FALSE(attach_on_channel);
    EXPECT_THAT(attach_on_channel.error, HasSubstr("only on the control channel"));
}

TEST(KeyProtocol, UnknownSchemeRejected) {
    // 0x0809 is rsa_pss_pss_sha256, which the key channel does not carry.
    for (const std::uint16_t scheme : {0x0000, 0x0402, 0x0809, 0xffff}) {
        const auto decoded = keyproto::decode_request(request_header(1, 1, scheme, 0));
        ASSERT_FALSE(decoded) << "scheme " << scheme;
        EXPECT_THAT(decoded.error, HasSubstr("unknown signature scheme"));
    }
}

TEST(KeyProtocol, PublicKeyRequestFieldsChecked) {
    const auto with_scheme =
        keyproto::decode_request(request_header(1, 2, scheme_code(SignatureScheme::ed25519), 0));
    ASSERT_FALSE(with_scheme);
    EXPECT_THAT(with_scheme.error, HasSubstr("non-zero scheme"));

    const auto with_body = keyproto::decode_request(with_payload(request_header(1, 2, 0, 1), 1));
    ASSERT_FALSE(with_body);
    EXPECT_THAT(with_body.error, HasSubstr("1-byte payload"));
}

TEST(KeyProtocol, UnknownStatusRejected) {
    for (const std::uint16_t status : {8, 255, 0xffff}) {
        const auto decoded = keyproto::decode_response(response_header(1, status, 0));
        ASSERT_FALSE(decoded) << "status " << status;
        EXPECT_THAT(decoded.error, HasSubstr("unknown status"));
    }
}

TEST(KeyProtocol, AttachReservedBitsRejected) {
    auto reserved = keyproto::encode(Attach{});
    reserved[3] = 0x80;
    const auto decoded_reserved = keyproto::decode_attach(reserved);
    ASSERT_FALSE(decoded_reserved);
    EXPECT_THAT(decoded_reserved.error, HasSubstr("reserved field is 0x8000"));

    for (const std::uint32_t flags : {2U, 0x80000000U, 0xffffffffU}) {
        Attach attach;
        attach.flags = flags;
        const auto decoded = keyproto::decode_attach(keyproto::encode(attach));
        ASSERT_FALSE(decoded) << "flags " << flags;
        EXPECT_THAT(decoded.error, HasSubstr("reserved bits"));
    }
}

TEST(KeyProtocol, AttachLengthAndTypeChecked) {
    const auto bytes = keyproto::encode(Attach{});
    EXPECT_FALSE(keyproto::decode_attach(std::span(bytes).first(keyproto::attach_size - 1)));
    Bytes longer(bytes.begin(), bytes.end());
    longer.push_back(0);
    EXPECT_FALSE(keyproto::decode_attach(longer));

    auto wrong_type = bytes;
    wrong_type[1] = 1;
    const auto decoded = keyproto::decode_attach(wrong_type);
    ASSERT_FALSE(decoded);
    EXPECT_THAT(decoded.error, HasSubstr("expected attach"));
}

TEST(KeyProtocol, SchemeNamesAreIana) {
    EXPECT_EQ(keyproto::scheme_name(0x0201), "rsa_pkcs1_sha1");
    EXPECT_EQ(keyproto::scheme_name(0x0203), "ecdsa_sha1");
    EXPECT_EQ(keyproto::scheme_name(0x0401), "rsa_pkcs1_sha256");
    EXPECT_EQ(keyproto::scheme_name(0x0501), "rsa_pkcs1_sha384");
    EXPECT_EQ(keyproto::scheme_name(0x0601), "rsa_pkcs1_sha512");
    EXPECT_EQ(keyproto::scheme_name(0x0403), "ecdsa_secp256r1_sha256");
    EXPECT_EQ(keyproto::scheme_name(0x0503), "ecdsa_secp384r1_sha384");
    EXPECT_EQ(keyproto::scheme_name(0x0603), "ecdsa_secp521r1_sha512");
    EXPECT_EQ(keyproto::scheme_name(0x0804), "rsa_pss_rsae_sha256");
    EXPECT_EQ(keyproto::scheme_name(0x0805), "rsa_pss_rsae_sha384");
    EXPECT_EQ(keyproto::scheme_name(0x0806), "rsa_pss_rsae_sha512");
    EXPECT_EQ(keyproto::scheme_name(0x0807), "ed25519");
    EXPECT_EQ(keyproto::scheme_name(0x0808), "ed448");
    EXPECT_EQ(keyproto::scheme_name(0x0809), std::nullopt);
    EXPECT_EQ(keyproto::scheme_name(0), std::nullopt);
}

TEST(KeyProtocol, StatusNames) {
    EXPECT_STREQ(keyproto::to_string(Status::ok), "ok");
    EXPECT_STREQ(keyproto::to_string(Status::quota_exceeded), "quota_exceeded");
    EXPECT_STREQ(keyproto::to_string(Status::unsupported_scheme), "unsupported_scheme");
    EXPECT_STREQ(keyproto::to_string(Status::public_key_unknown), "public_key_unknown");
    EXPECT_STREQ(keyproto::to_string(MessageType::public_key), "public_key");
}

TEST(KeyProtocol, MalformedResponseCopiesRequestId) {
    Bytes datagram = request_header(1, 2, 0, 0);
    datagram.push_back(0);  // breaks the length, keeps the header readable
    const Response response = keyproto::malformed_response(datagram);
    EXPECT_EQ(response.status, Status::malformed);
    EXPECT_EQ(response.type, MessageType::public_key);
    EXPECT_EQ(response.request_id, 7U);

    const Response short_one = keyproto::malformed_response(Bytes{1, 1, 0});
    EXPECT_EQ(short_one.request_id, 0U);
    EXPECT_EQ(short_one.type, MessageType::sign);

    const Response unknown_type = keyproto::malformed_response(request_header(1, 99, 0, 0));
    EXPECT_EQ(unknown_type.type, MessageType::sign);
    EXPECT_EQ(unknown_type.request_id, 7U);
}

// --- KeyClient against a peer thread on a SOCK_SEQPACKET socketpair ---

std::pair<Fd, Fd> make_channel() {
    std::array<int, 2> fds{};
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds.data()) != 0) {
        throw_system_error("socketpair");
    }
    return {Fd(fds[0]), Fd(fds[1])};
}

// Receives one request on peer and sends what reply returns for it (nothing when empty).
std::thread serve_once(const Fd& peer, std::function<Bytes(const Request&)> reply) {
    return std::thread([fd = peer.get(), reply = std::move(reply)] {
        Bytes buffer(keyproto::max_request_size);
        const ssize_t received = ::recv(fd, buffer.data(), buffer.size(), 0);
        if (received <= 0) {
            return;
        }
        buffer.resize(static_cast<std::size_t>(received));
        const auto decoded = keyproto::decode_request(buffer);
        if (!decoded) {
            return;
        }
        const Bytes answer = reply(*decoded.value);
        if (!answer.empty()) {
            ::send(fd, answer.data(), answer.size(), MSG_NOSIGNAL);
        }
    });
}

Bytes reply_with(const Request& request, Status status, Bytes payload) {
    Response response;
    response.type = request.type;
    response.status = status;
    response.request_id = request.request_id;
    response.payload = std::move(payload);
    return keyproto::encode(response);
}

ErrorKind sign_error_kind(KeyClient& client, std::string* message = nullptr) {
    try {
        const Bytes data{1, 2, 3};
        (void)client.sign(3, scheme_code(SignatureScheme::ed25519), data);
    } catch (const Error& error) {
        if (message != nullptr) {
            *message = error.what();
        }
        return error.kind();
    }
    ADD_FAILURE() << "sign succeeded";
    return ErrorKind::config;
}

TEST(KeyClient, SignReturnsSignature) {
    auto [ours, peer] = make_channel();
    Request seen;
    std::thread server = serve_once(peer, [&seen](const Request& request) {
        seen = request;
        return reply_with(request, Status::ok, {0xaa, 0xbb});
    });
    KeyClient client(std::move(ours), std::chrono::milliseconds(2000));
    const Bytes message{'h', 'i'};
    const Bytes signature = client.sign(3, scheme_code(SignatureScheme::ed25519), message);
    server.join();

    EXPECT_EQ(signature, (Bytes{0xaa, 0xbb}));
    EXPECT_EQ(seen.type, MessageType::sign);
    EXPECT_EQ(seen.key_index, 3U);
    EXPECT_EQ(seen.scheme, scheme_code(SignatureScheme::ed25519));
    EXPECT_EQ(seen.payload, message);
    EXPECT_EQ(seen.request_id, 1U);
    EXPECT_EQ(client.requests_sent(), 1U);
}

TEST(KeyClient, PublicKeyReturnsPayload) {
    auto [ours, peer] = make_channel();
    std::thread server = serve_once(peer, [](const Request& request) {
        return reply_with(request, Status::ok, {0x30, 0x03, 1, 2, 3});
    });
    KeyClient client(std::move(ours), std::chrono::milliseconds(2000));
    EXPECT_EQ(client.public_key(0), (Bytes{0x30, 0x03, 1, 2, 3}));
    server.join();
}

TEST(KeyClient, PublicKeyUnknownReturnsEmpty) {
    auto [ours, peer] = make_channel();
    std::thread server = serve_once(peer, [](const Request& request) {
        return reply_with(request, Status::public_key_unknown, {});
    });
    KeyClient client(std::move(ours), std::chrono::milliseconds(2000));
    EXPECT_TRUE(client.public_key(0).empty());
    server.join();
}

TEST(KeyClient, TimeoutWhenNoResponse) {
    auto [ours, peer] = make_channel();
    KeyClient client(std::move(ours), std::chrono::milliseconds(150));
    const auto start = std::chrono::steady_clock::now();
    EXPECT_EQ(sign_error_kind(client), ErrorKind::timeout);
    const auto elapsed = std::chrono::steady_clock::now() - start;
    EXPECT_GE(elapsed, std::chrono::milliseconds(150));
    EXPECT_LT(elapsed, std::chrono::milliseconds(1500));
}

TEST(KeyClient, ClosedWhenPeerCloses) {
    auto [ours, peer] = make_channel();
    peer.reset();
    KeyClient client(std::move(ours), std::chrono::milliseconds(1000));
    EXPECT_EQ(sign_error_kind(client), ErrorKind::closed);
}

TEST(KeyClient, ClosedWhenPeerClosesBeforeReply) {
    auto channel = make_channel();
    Fd& peer = channel.second;
    std::thread server = serve_once(peer, [&peer](const Request&) {
        peer.reset();
        return Bytes{};
    });
    KeyClient client(std::move(channel.first), std::chrono::milliseconds(2000));
    EXPECT_EQ(sign_error_kind(client), ErrorKind::closed);
    server.join();
}

TEST(KeyClient, GarbageResponseIsProtocolError) {
    auto [ours, peer] = make_channel();
    std::thread server = serve_once(peer, [](const Request&) { return Bytes{1, 2, 3}; });
    KeyClient client(std::move(ours), std::chrono::milliseconds(2000));
    std::string message;
    EXPECT_EQ(sign_error_kind(client, &message), ErrorKind::protocol);
    EXPECT_THAT(message, HasSubstr("invalid key process response"));
    server.join();
}

TEST(KeyClient, OversizedResponseIsProtocolError) {
    auto [ours, peer] = make_channel();
    std::thread server =
        serve_once(peer, [](const Request&) { return Bytes(keyproto::max_response_size + 1, 0); });
    KeyClient client(std::move(ours), std::chrono::milliseconds(2000));
    std::string message;
    EXPECT_EQ(sign_error_kind(client, &message), ErrorKind::protocol);
    EXPECT_THAT(message, HasSubstr("2061-byte response"));
    server.join();
}

TEST(KeyClient, MismatchedRequestIdIsProtocolError) {
    auto [ours, peer] = make_channel();
    std::thread server = serve_once(peer, [](const Request& request) {
        Request other = request;
        other.request_id += 1;
        return reply_with(other, Status::ok, {1});
    });
    KeyClient client(std::move(ours), std::chrono::milliseconds(2000));
    std::string message;
    EXPECT_EQ(sign_error_kind(client, &message), ErrorKind::protocol);
    EXPECT_THAT(message, HasSubstr("request id 2 to request id 1"));
    server.join();
}

TEST(KeyClient, MismatchedTypeIsProtocolError) {
    auto [ours, peer] = make_channel();
    std::thread server = serve_once(peer, [](const Request& request) {
        Request other = request;
        other.type = MessageType::public_key;
        return reply_with(other, Status::ok, {1});
    });
    KeyClient client(std::move(ours), std::chrono::milliseconds(2000));
    EXPECT_EQ(sign_error_kind(client), ErrorKind::protocol);
    server.join();
}

TEST(KeyClient, RefusalStatusesArePolicyErrors) {
    for (const Status status : {Status::unknown_key, Status::unsupported_scheme, Status::refused,
                                Status::quota_exceeded}) {
        auto [ours, peer] = make_channel();
        std::thread server = serve_once(
            peer, [status](const Request& request) { return reply_with(request, status, {}); });
        KeyClient client(std::move(ours), std::chrono::milliseconds(2000));
        std::string message;
        EXPECT_EQ(sign_error_kind(client, &message), ErrorKind::policy)
            << keyproto::to_string(status);
        EXPECT_THAT(message, HasSubstr(keyproto::to_string(status)));
        EXPECT_THAT(message, HasSubstr("key 3"));
        server.join();
    }
}

TEST(KeyClient, FailedStatusIsCryptoError) {
    auto [ours, peer] = make_channel();
    std::thread server = serve_once(
        peer, [](const Request& request) { return reply_with(request, Status::failed, {}); });
    KeyClient client(std::move(ours), std::chrono::milliseconds(2000));
    std::string message;
    EXPECT_EQ(sign_error_kind(client, &message), ErrorKind::crypto);
    EXPECT_THAT(message, HasSubstr("failed"));
    server.join();
}

TEST(KeyClient, MalformedStatusIsProtocolError) {
    auto [ours, peer] = make_channel();
    std::thread server = serve_once(peer, [](const Request&) {
        Response response;
        response.status = Status::malformed;
        return keyproto::encode(response);
    });
    KeyClient client(std::move(ours), std::chrono::milliseconds(2000));
    std::string message;
    EXPECT_EQ(sign_error_kind(client, &message), ErrorKind::protocol);
    EXPECT_THAT(message, HasSubstr("malformed"));
    server.join();
}

TEST(KeyClient, OversizedMessageNotSent) {
    auto [ours, peer] = make_channel();
    KeyClient client(std::move(ours), std::chrono::milliseconds(100));
    const Bytes message(keyproto::max_request_payload + 1, 0);
    EXPECT_THROW((void)client.sign(0, scheme_code(SignatureScheme::ed25519), message), Error);
    EXPECT_EQ(client.requests_sent(), 0U);
}

// --- key_info -------------------------------------------------------------------------------

TEST(KeyProtocolKeyInfo, RequestCarriesOnlyTheKeyIndex) {
    const auto decoded = keyproto::decode_request(request_header(1, 4, 0, 0));
    ASSERT_TRUE(decoded) << decoded.error;
    EXPECT_EQ(decoded.value->type, MessageType::key_info);
    EXPECT_EQ(decoded.value->key_index, 3U);

    const auto with_scheme = keyproto::decode_request(request_header(1, 4, 0x0804, 0));
    ASSERT_FALSE(with_scheme);
    EXPECT_THAT(with_scheme.error, HasSubstr("key_info request with non-zero scheme 0x0804"));
    Bytes with_payload = request_header(1, 4, 0, 1);
    with_payload.push_back(0);
    const auto decoded_payload = keyproto::decode_request(with_payload);
    ASSERT_FALSE(decoded_payload);
    EXPECT_THAT(decoded_payload.error, HasSubstr("key_info request with a 1-byte payload"));
    EXPECT_EQ(keyproto::malformed_response(with_payload).type, MessageType::key_info);
}

TEST(KeyProtocolKeyInfo, SchemeListRoundTrips) {
    const std::vector<std::uint16_t> schemes{0x0804, 0x0401, 0x0807};
    const Bytes payload = keyproto::encode_key_info(schemes);
    EXPECT_EQ(payload, (Bytes{3, 0, 0x04, 0x08, 0x01, 0x04, 0x07, 0x08}));
    const auto decoded = keyproto::decode_key_info(payload);
    ASSERT_TRUE(decoded) << decoded.error;
    EXPECT_EQ(*decoded.value, schemes);
}

TEST(KeyProtocolKeyInfo, InvalidSchemeListsRejected) {
    EXPECT_THAT(keyproto::decode_key_info(Bytes{1}).error, HasSubstr("no scheme count"));
    EXPECT_THAT(keyproto::decode_key_info(Bytes{0, 0}).error, HasSubstr("stated 0 schemes"));
    EXPECT_THAT(keyproto::decode_key_info(Bytes{2, 0, 0x04, 0x08}).error,
                HasSubstr("stated 2 schemes"));
    EXPECT_THAT(keyproto::decode_key_info(Bytes{1, 0, 0x04, 0x08, 0}).error,
                HasSubstr("stated 1 schemes"));
    EXPECT_THAT(keyproto::decode_key_info(Bytes{1, 0, 0x09, 0x08}).error,
                HasSubstr("unknown scheme 0x0809"));
    const std::vector<std::uint16_t> too_many(keyproto::max_key_info_schemes + 1, 0x0401);
    EXPECT_THROW(static_cast<void>(keyproto::encode_key_info(too_many)), Error);
}

}  // namespace
}  // namespace cloister
