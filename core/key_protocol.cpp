#include "core/key_protocol.h"

#include <fmt/format.h>

#include <algorithm>
#include <utility>

#include "core/error.h"

namespace cloister::keyproto {
namespace {

// Appends fixed-width little-endian integers and byte strings to a datagram.
class ByteWriter {
  public:
    explicit ByteWriter(std::size_t capacity) { bytes_.reserve(capacity); }

    void u8(std::uint8_t value) { put_le(value, 1); }
    void u16(std::uint16_t value) { put_le(value, 2); }
    void u32(std::uint32_t value) { put_le(value, 4); }
    void u64(std::uint64_t value) { put_le(value, 8); }
    void bytes(std::span<const std::uint8_t> data) {
        bytes_.insert(bytes_.end(), data.begin(), data.end());
    }

    std::vector<std::uint8_t> take() { return std::move(bytes_); }

  private:
    void put_le(std::uint64_t value, std::size_t width) {
        for (std::size_t i = 0; i < width; ++i) {
            bytes_.push_back(static_cast<std::uint8_t>(value >> (8 * i)));
        }
    }

    std::vector<std::uint8_t> bytes_;
};

// Reads fixed-width little-endian integers from a datagram. Every read checks the bounds and
// throws Error(protocol) past the end. The decoders check lengths first, so no datagram makes
// them reach that throw.
class ByteReader {
  public:
    explicit ByteReader(std::span<const std::uint8_t> data) : data_(data) {}

    std::uint8_t u8() { return static_cast<std::uint8_t>(get_le(1)); }
    std::uint16_t u16() { return static_cast<std::uint16_t>(get_le(2)); }
    std::uint32_t u32() { return static_cast<std::uint32_t>(get_le(4)); }
    std::uint64_t u64() { return get_le(8); }
    std::span<const std::uint8_t> bytes(std::size_t count) {
        require(count);
        const auto out = data_.subspan(position_, count);
        position_ += count;
        return out;
    }

  private:
    void require(std::size_t count) const {
        if (count > data_.size() - position_) {
            throw Error(ErrorKind::protocol, "key channel message is truncated");
        }
    }

    std::uint64_t get_le(std::size_t width) {
        require(width);
        std::uint64_t value = 0;
        for (std::size_t i = 0; i < width; ++i) {
            value |= static_cast<std::uint64_t>(data_[position_ + i]) << (8 * i);
        }
        position_ += width;
        return value;
    }

    std::span<const std::uint8_t> data_;
    std::size_t position_ = 0;
};

struct SchemeEntry {
    SignatureScheme scheme;
    const char* name;
};

// IANA TLS SignatureScheme registry names of the code points in SignatureScheme.
constexpr std::array<SchemeEntry, 13> scheme_names{{
    {SignatureScheme::rsa_pkcs1_sha1, "rsa_pkcs1_sha1"},
    {SignatureScheme::ecdsa_sha1, "ecdsa_sha1"},
    {SignatureScheme::rsa_pkcs1_sha256, "rsa_pkcs1_sha256"},
    {SignatureScheme::rsa_pkcs1_sha384, "rsa_pkcs1_sha384"},
    {SignatureScheme::rsa_pkcs1_sha512, "rsa_pkcs1_sha512"},
    {SignatureScheme::ecdsa_secp256r1_sha256, "ecdsa_secp256r1_sha256"},
    {SignatureScheme::ecdsa_secp384r1_sha384, "ecdsa_secp384r1_sha384"},
    {SignatureScheme::ecdsa_secp521r1_sha512, "ecdsa_secp521r1_sha512"},
    {SignatureScheme::rsa_pss_rsae_sha256, "rsa_pss_rsae_sha256"},
    {SignatureScheme::rsa_pss_rsae_sha384, "rsa_pss_rsae_sha384"},
    {SignatureScheme::rsa_pss_rsae_sha512, "rsa_pss_rsae_sha512"},
    {SignatureScheme::ed25519, "ed25519"},
    {SignatureScheme::ed448, "ed448"},
}};

bool is_request_type(std::uint8_t type) {
    return type == static_cast<std::uint8_t>(MessageType::sign) ||
           type == static_cast<std::uint8_t>(MessageType::public_key) ||
           type == static_cast<std::uint8_t>(MessageType::decrypt) ||
           type == static_cast<std::uint8_t>(MessageType::key_info);
}

bool is_status(std::uint16_t status) {
    return status <= static_cast<std::uint16_t>(Status::public_key_unknown);
}

template <typename T>
Decoded<T> reject(std::string reason) {
    return Decoded<T>{std::nullopt, std::move(reason)};
}

// Returns the reason a request or response type byte is invalid, or an empty string.
std::string check_type(std::uint8_t type) {
    if (type == static_cast<std::uint8_t>(MessageType::attach)) {
        return "message type attach is valid only on the control channel";
    }
    if (!is_request_type(type)) {
        return fmt::format("unknown message type {}", type);
    }
    return {};
}

// Returns the reason the stated payload length does not fit the datagram, or an empty string.
std::string check_length(std::size_t datagram_size, std::size_t header_size,
                         std::uint32_t payload_length, std::size_t max_payload) {
    if (payload_length > max_payload) {
        return fmt::format("payload length {} exceeds the maximum of {} bytes", payload_length,
                           max_payload);
    }
    if (datagram_size != header_size + payload_length) {
        return fmt::format(
            "datagram of {} bytes does not match the {}-byte header plus the "
            "stated payload length {}",
            datagram_size, header_size, payload_length);
    }
    return {};
}

std::string check_version(std::uint8_t version) {
    if (version != protocol_version) {
        return fmt::format("unsupported protocol version {} (expected {})", version,
                           protocol_version);
    }
    return {};
}

struct RequestHeader {
    std::uint8_t version = 0;
    std::uint8_t type = 0;
    std::uint16_t scheme = 0;
    std::uint32_t request_id = 0;
    std::uint32_t key_index = 0;
    std::uint32_t payload_length = 0;
};

RequestHeader read_request_header(ByteReader& reader) {
    RequestHeader header;
    header.version = reader.u8();
    header.type = reader.u8();
    header.scheme = reader.u16();
    header.request_id = reader.u32();
    header.key_index = reader.u32();
    header.payload_length = reader.u32();
    return header;
}

// Returns the reason a decrypt request breaks its rules, or an empty string. The payload
// length is already known to match the datagram.
std::string check_decrypt_fields(const RequestHeader& header,
                                 std::span<const std::uint8_t> payload) {
    if (header.scheme != 0) {
        return fmt::format("decrypt request with non-zero scheme 0x{:04x}", header.scheme);
    }
    const std::size_t ciphertext_size =
        payload.size() < decrypt_version_size ? 0 : payload.size() - decrypt_version_size;
    if (ciphertext_size == 0 || ciphertext_size > max_decrypt_ciphertext) {
        return fmt::format("decrypt request with a {}-byte payload (expected {} to {})",
                           payload.size(), decrypt_version_size + 1,
                           decrypt_version_size + max_decrypt_ciphertext);
    }
    // RFC 5246 appendix E: every SSL 3.0 and TLS 1.x ProtocolVersion has major version 3.
    const std::uint16_t client_version = parse_decrypt_payload(payload).client_version;
    if ((client_version >> 8U) != 3) {
        return fmt::format("decrypt request with client_version 0x{:04x} (expected 0x03xx)",
                           client_version);
    }
    return {};
}

// Returns the reason a request header and its payload break its type's rules, or an empty
// string.
std::string check_request_fields(const RequestHeader& header,
                                 std::span<const std::uint8_t> payload) {
    if (header.type == static_cast<std::uint8_t>(MessageType::sign)) {
        if (!scheme_name(header.scheme)) {
            return fmt::format("sign request with unknown signature scheme 0x{:04x}",
                               header.scheme);
        }
        return {};
    }
    if (header.type == static_cast<std::uint8_t>(MessageType::decrypt)) {
        return check_decrypt_fields(header, payload);
    }
    // public_key and key_info carry only the key index.
    const char* name = to_string(static_cast<MessageType>(header.type));
    if (header.scheme != 0) {
        return fmt::format("{} request with non-zero scheme 0x{:04x}", name, header.scheme);
    }
    if (header.payload_length != 0) {
        return fmt::format("{} request with a {}-byte payload (expected none)", name,
                           header.payload_length);
    }
    return {};
}

std::string check_request_header(const RequestHeader& header,
                                 std::span<const std::uint8_t> datagram) {
    std::string reason = check_version(header.version);
    if (reason.empty()) {
        reason = check_type(header.type);
    }
    if (reason.empty()) {
        reason = check_length(datagram.size(), request_header_size, header.payload_length,
                              max_request_payload);
    }
    if (reason.empty()) {
        reason = check_request_fields(header, datagram.subspan(request_header_size));
    }
    return reason;
}

struct ResponseHeader {
    std::uint8_t version = 0;
    std::uint8_t type = 0;
    std::uint16_t status = 0;
    std::uint32_t request_id = 0;
    std::uint32_t payload_length = 0;
};

ResponseHeader read_response_header(ByteReader& reader) {
    ResponseHeader header;
    header.version = reader.u8();
    header.type = reader.u8();
    header.status = reader.u16();
    header.request_id = reader.u32();
    header.payload_length = reader.u32();
    return header;
}

std::string check_response_header(const ResponseHeader& header, std::size_t datagram_size) {
    std::string reason = check_version(header.version);
    if (reason.empty()) {
        reason = check_type(header.type);
    }
    if (reason.empty() && !is_status(header.status)) {
        reason = fmt::format("unknown status {}", header.status);
    }
    if (reason.empty()) {
        reason = check_length(datagram_size, response_header_size, header.payload_length,
                              max_response_payload);
    }
    return reason;
}

void check_payload_size(std::size_t size, std::size_t max_payload, const char* what) {
    if (size > max_payload) {
        throw Error(ErrorKind::protocol,
                    fmt::format("{} payload of {} bytes exceeds the maximum of {} bytes", what,
                                size, max_payload));
    }
}

}  // namespace

std::optional<std::string> scheme_name(std::uint16_t code_point) {
    const auto* entry =
        std::find_if(scheme_names.begin(), scheme_names.end(), [code_point](const SchemeEntry& e) {
            return static_cast<std::uint16_t>(e.scheme) == code_point;
        });
    if (entry == scheme_names.end()) {
        return std::nullopt;
    }
    return std::string(entry->name);
}

const char* to_string(Status status) noexcept {
    switch (status) {
        case Status::ok:
            return "ok";
        case Status::malformed:
            return "malformed";
        case Status::unknown_key:
            return "unknown_key";
        case Status::unsupported_scheme:
            return "unsupported_scheme";
        case Status::refused:
            return "refused";
        case Status::quota_exceeded:
            return "quota_exceeded";
        case Status::failed:
            return "failed";
        case Status::public_key_unknown:
            return "public_key_unknown";
    }
    return "unknown";
}

const char* to_string(MessageType type) noexcept {
    switch (type) {
        case MessageType::sign:
            return "sign";
        case MessageType::public_key:
            return "public_key";
        case MessageType::decrypt:
            return "decrypt";
        case MessageType::key_info:
            return "key_info";
        case MessageType::attach:
            return "attach";
    }
    return "unknown";
}

std::vector<std::uint8_t> encode(const Request& request) {
    check_payload_size(request.payload.size(), max_request_payload, "request");
    ByteWriter writer(request_header_size + request.payload.size());
    writer.u8(protocol_version);
    writer.u8(static_cast<std::uint8_t>(request.type));
    writer.u16(request.scheme);
    writer.u32(request.request_id);
    writer.u32(request.key_index);
    writer.u32(static_cast<std::uint32_t>(request.payload.size()));
    writer.bytes(request.payload);
    return writer.take();
}

std::vector<std::uint8_t> encode(const Response& response) {
    check_payload_size(response.payload.size(), max_response_payload, "response");
    ByteWriter writer(response_header_size + response.payload.size());
    writer.u8(protocol_version);
    writer.u8(static_cast<std::uint8_t>(response.type));
    writer.u16(static_cast<std::uint16_t>(response.status));
    writer.u32(response.request_id);
    writer.u32(static_cast<std::uint32_t>(response.payload.size()));
    writer.bytes(response.payload);
    return writer.take();
}

std::array<std::uint8_t, attach_size> encode(const Attach& attach) {
    ByteWriter writer(attach_size);
    writer.u8(protocol_version);
    writer.u8(static_cast<std::uint8_t>(MessageType::attach));
    writer.u16(0);
    writer.u32(attach.flags);
    writer.u64(attach.connection_id);
    const std::vector<std::uint8_t> bytes = writer.take();
    std::array<std::uint8_t, attach_size> out{};
    std::copy(bytes.begin(), bytes.end(), out.begin());
    return out;
}

std::vector<std::uint8_t> encode_decrypt_payload(const DecryptInput& input) {
    ByteWriter writer(decrypt_version_size + input.ciphertext.size());
    writer.u16(input.client_version);
    writer.bytes(input.ciphertext);
    return writer.take();
}

DecryptInput parse_decrypt_payload(std::span<const std::uint8_t> payload) {
    ByteReader reader(payload);
    DecryptInput input;
    input.client_version = reader.u16();
    input.ciphertext = reader.bytes(payload.size() - decrypt_version_size);
    return input;
}

std::vector<std::uint8_t> encode_key_info(std::span<const std::uint16_t> schemes) {
    if (schemes.size() > max_key_info_schemes) {
        throw Error(ErrorKind::protocol,
                    fmt::format("key_info with {} schemes exceeds the maximum of {}",
                                schemes.size(), max_key_info_schemes));
    }
    ByteWriter writer(2 + 2 * schemes.size());
    writer.u16(static_cast<std::uint16_t>(schemes.size()));
    for (const std::uint16_t scheme : schemes) {
        writer.u16(scheme);
    }
    return writer.take();
}

Decoded<std::vector<std::uint16_t>> decode_key_info(std::span<const std::uint8_t> payload) {
    using Schemes = std::vector<std::uint16_t>;
    if (payload.size() < 2) {
        return reject<Schemes>(fmt::format("key_info payload of {} bytes has no scheme count",
                                           payload.size()));
    }
    ByteReader reader(payload);
    const std::uint16_t count = reader.u16();
    const std::size_t expected_size = 2 + 2 * std::size_t{count};
    if (count == 0 || count > max_key_info_schemes || payload.size() != expected_size) {
        return reject<Schemes>(fmt::format(
            "key_info payload of {} bytes does not hold the stated {} schemes (1 to {})",
            payload.size(), count, max_key_info_schemes));
    }
    Schemes schemes;
    for (std::uint16_t i = 0; i < count; ++i) {
        const std::uint16_t scheme = reader.u16();
        if (!scheme_name(scheme)) {
            return reject<Schemes>(fmt::format("key_info lists unknown scheme 0x{:04x}", scheme));
        }
        schemes.push_back(scheme);
    }
    return Decoded<Schemes>{std::move(schemes), {}};
}

Decoded<Request> decode_request(std::span<const std::uint8_t> datagram) {
    if (datagram.size() < request_header_size) {
        return reject<Request>(
            fmt::format("datagram of {} bytes is shorter than the {}-byte "
                        "request header",
                        datagram.size(), request_header_size));
    }
    ByteReader reader(datagram);
    const RequestHeader header = read_request_header(reader);
    std::string reason = check_request_header(header, datagram);
    if (!reason.empty()) {
        return reject<Request>(std::move(reason));
    }

    Request request;
    request.type = static_cast<MessageType>(header.type);
    request.scheme = header.scheme;
    request.request_id = header.request_id;
    request.key_index = header.key_index;
    const auto payload = reader.bytes(header.payload_length);
    request.payload.assign(payload.begin(), payload.end());
    return Decoded<Request>{std::move(request), {}};
}

Decoded<Response> decode_response(std::span<const std::uint8_t> datagram) {
    if (datagram.size() < response_header_size) {
        return reject<Response>(
            fmt::format("datagram of {} bytes is shorter than the {}-byte "
                        "response header",
                        datagram.size(), response_header_size));
    }
    ByteReader reader(datagram);
    const ResponseHeader header = read_response_header(reader);
    std::string reason = check_response_header(header, datagram.size());
    if (!reason.empty()) {
        return reject<Response>(std::move(reason));
    }

    Response response;
    response.type = static_cast<MessageType>(header.type);
    response.status = static_cast<Status>(header.status);
    response.request_id = header.request_id;
    const auto payload = reader.bytes(header.payload_length);
    response.payload.assign(payload.begin(), payload.end());
    return Decoded<Response>{std::move(response), {}};
}

Decoded<Attach> decode_attach(std::span<const std::uint8_t> datagram) {
    if (datagram.size() != attach_size) {
        return reject<Attach>(
            fmt::format("attach message of {} bytes (expected {})", datagram.size(), attach_size));
    }
    ByteReader reader(datagram);
    const std::uint8_t version = reader.u8();
    const std::uint8_t type = reader.u8();
    const std::uint16_t reserved = reader.u16();
    Attach attach;
    attach.flags = reader.u32();
    attach.connection_id = reader.u64();

    std::string reason = check_version(version);
    if (reason.empty() && type != static_cast<std::uint8_t>(MessageType::attach)) {
        reason = fmt::format("message type {} on the control channel (expected attach)", type);
    }
    if (reason.empty() && reserved != 0) {
        reason = fmt::format("attach reserved field is 0x{:04x} (expected 0)", reserved);
    }
    if (reason.empty() && (attach.flags & ~attach_known_flags) != 0) {
        reason = fmt::format("attach flags 0x{:08x} set reserved bits", attach.flags);
    }
    if (!reason.empty()) {
        return reject<Attach>(std::move(reason));
    }
    return Decoded<Attach>{attach, {}};
}

Response malformed_response(std::span<const std::uint8_t> datagram) {
    Response response;
    response.status = Status::malformed;
    // Bytes 0..7 of a request header: version, type, scheme, request_id.
    if (datagram.size() < 8) {
        return response;
    }
    ByteReader reader(datagram);
    reader.u8();
    const std::uint8_t type = reader.u8();
    reader.u16();
    response.request_id = reader.u32();
    if (is_request_type(type)) {
        response.type = static_cast<MessageType>(type);
    }
    return response;
}

}  // namespace cloister::keyproto
