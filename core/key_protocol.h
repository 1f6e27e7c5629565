// The key channel protocol between connection processes and the key process.
//
// docs/key-protocol.md is the written specification. One SOCK_SEQPACKET datagram carries one
// message. All integers are little-endian and fixed-width. A decoder accepts a datagram only
// when its length equals the header plus the stated payload length and every field is in
// range; anything else is malformed and ends the channel.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace cloister::keyproto {

inline constexpr std::uint8_t protocol_version = 1;

// Request header: version u8, type u8, scheme u16, request_id u32, key_index u32,
// payload_length u32.
inline constexpr std::size_t request_header_size = 16;
// Response header: version u8, type u8, status u16, request_id u32, payload_length u32.
inline constexpr std::size_t response_header_size = 12;
// Attach header (supervisor to key process, with one descriptor in SCM_RIGHTS):
// version u8, type u8, reserved u16 (zero), flags u32, connection_id u64.
inline constexpr std::size_t attach_size = 16;

// Attach flags. Bit 0 marks the supervisor's start-up check channel, which has no quota of
// private-key operations. The other bits are reserved and must be zero.
inline constexpr std::uint32_t attach_flag_unlimited = 1U << 0;
inline constexpr std::uint32_t attach_known_flags = attach_flag_unlimited;

// The largest to-be-signed message: a TLS 1.2 ServerKeyExchange with ffdhe8192 parameters
// is 64 + 3 * (2 + 1024) = 3142 bytes, so 8 KiB leaves room without inviting abuse.
inline constexpr std::size_t max_request_payload = 8192;
// The largest response payload: an RSA-8192 signature is 1024 bytes; a SubjectPublicKeyInfo
// of an RSA-4096 key is about 550 bytes.
inline constexpr std::size_t max_response_payload = 2048;
inline constexpr std::size_t max_request_size = request_header_size + max_request_payload;
inline constexpr std::size_t max_response_size = response_header_size + max_response_payload;

// A decrypt payload: the ClientHello's client_version (u16), then the RSA ciphertext of the
// ClientKeyExchange (RFC 5246 section 7.4.7.1), at most an RSA-4096 modulus long.
inline constexpr std::size_t decrypt_version_size = 2;
inline constexpr std::size_t max_decrypt_ciphertext = 512;
// The TLS 1.2 premaster secret that every ok response to decrypt carries.
inline constexpr std::size_t premaster_secret_size = 48;

enum class MessageType : std::uint8_t {
    sign = 1,        // payload: the whole to-be-signed message; response: the signature
    public_key = 2,  // payload: empty; response: the key's SubjectPublicKeyInfo, DER
    decrypt = 3,     // payload: client_version and RSA ciphertext; response: 48 bytes
    key_info = 4,    // payload: empty; response: the schemes the key can sign (see below)
    attach = 16,     // control channel only: adopt the descriptor as a new key channel
};

// A key_info response payload: a u16 count, then that many u16 SignatureScheme code points,
// the schemes the key process signs with the key. A key in a PKCS#11 token may serve fewer
// schemes than its key type allows (the token lacks a mechanism or the key forbids it).
inline constexpr std::size_t max_key_info_schemes = 32;

enum class Status : std::uint16_t {
    ok = 0,
    malformed = 1,           // the request broke the protocol; the channel is closed after
    unknown_key = 2,         // no key has this index
    unsupported_scheme = 3,  // the key cannot sign with this scheme, or decrypt (not RSA)
    refused = 4,             // the signing policy refused the message, or decrypt is off
    quota_exceeded = 5,      // the channel used up its operations
    failed = 6,              // the key store failed to sign or decrypt
    // public_key only: the store has the private key without its public key, so the
    // certificate check relies on a test signature
    public_key_unknown = 7,
};

// TLS SignatureScheme code points (RFC 8446 section 4.2.3).
enum class SignatureScheme : std::uint16_t {
    rsa_pkcs1_sha1 = 0x0201,
    ecdsa_sha1 = 0x0203,
    rsa_pkcs1_sha256 = 0x0401,
    rsa_pkcs1_sha384 = 0x0501,
    rsa_pkcs1_sha512 = 0x0601,
    ecdsa_secp256r1_sha256 = 0x0403,
    ecdsa_secp384r1_sha384 = 0x0503,
    ecdsa_secp521r1_sha512 = 0x0603,
    rsa_pss_rsae_sha256 = 0x0804,
    rsa_pss_rsae_sha384 = 0x0805,
    rsa_pss_rsae_sha512 = 0x0806,
    ed25519 = 0x0807,
    ed448 = 0x0808,
};

// Returns the IANA name ("rsa_pss_rsae_sha256"), or nullopt for a code point not listed.
std::optional<std::string> scheme_name(std::uint16_t code_point);
const char* to_string(Status status) noexcept;
const char* to_string(MessageType type) noexcept;

struct Request {
    MessageType type = MessageType::sign;
    std::uint16_t scheme = 0;  // a SignatureScheme code point for sign, 0 otherwise
    std::uint32_t request_id = 0;
    std::uint32_t key_index = 0;
    std::vector<std::uint8_t> payload;
};

struct Response {
    MessageType type = MessageType::sign;
    Status status = Status::ok;
    std::uint32_t request_id = 0;
    std::vector<std::uint8_t> payload;
};

struct Attach {
    std::uint64_t connection_id = 0;
    std::uint32_t flags = 0;
};

// The fields of a decrypt request's payload.
struct DecryptInput {
    std::uint16_t client_version = 0;  // ClientHello.client_version, 0x0303 for TLS 1.2
    std::span<const std::uint8_t> ciphertext;
};

// Outcome of a decode: a value, or the reason the datagram was rejected.
template <typename T>
struct Decoded {
    std::optional<T> value;
    std::string error;  // set when value is empty, for the log line

    explicit operator bool() const { return value.has_value(); }
};

// Encoders throw Error(protocol) when a payload exceeds its cap.
std::vector<std::uint8_t> encode(const Request& request);
std::vector<std::uint8_t> encode(const Response& response);
std::array<std::uint8_t, attach_size> encode(const Attach& attach);

// Builds and splits the payload of a decrypt request. parse_decrypt_payload expects a
// payload that decode_request accepted, and throws Error(protocol) when it is too short.
std::vector<std::uint8_t> encode_decrypt_payload(const DecryptInput& input);
DecryptInput parse_decrypt_payload(std::span<const std::uint8_t> payload);

// Builds and reads the payload of a key_info response. encode_key_info throws
// Error(protocol) for more than max_key_info_schemes schemes. decode_key_info returns the
// reason a payload is invalid (wrong length, no scheme, a code point not in
// SignatureScheme) in Decoded::error.
std::vector<std::uint8_t> encode_key_info(std::span<const std::uint16_t> schemes);
Decoded<std::vector<std::uint16_t>> decode_key_info(std::span<const std::uint8_t> payload);

Decoded<Request> decode_request(std::span<const std::uint8_t> datagram);
Decoded<Response> decode_response(std::span<const std::uint8_t> datagram);
Decoded<Attach> decode_attach(std::span<const std::uint8_t> datagram);

// Builds the reply to a request datagram that failed to decode: status malformed and no
// payload. The request id is copied when the datagram has at least 8 bytes (0 otherwise), and
// the type when it is sign, public_key, decrypt or key_info (sign otherwise).
Response malformed_response(std::span<const std::uint8_t> datagram);

}  // namespace cloister::keyproto
