#include "keyprovider/signing_policy.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <optional>

namespace cloister {
namespace {

// RFC 8446 section 4.4.3: 64 spaces, the context string, one zero byte, the transcript hash.
constexpr std::size_t tls13_padding_size = 64;
constexpr std::uint8_t tls13_padding_byte = 0x20;
constexpr std::string_view tls13_server_context = "TLS 1.3, server CertificateVerify";
constexpr std::size_t sha256_size = 32;
constexpr std::size_t sha384_size = 48;

// RFC 5246 section 7.4.1.2: each Random is 32 bytes.
constexpr std::size_t randoms_size = 64;
// RFC 8422 section 5.4: ECCurveType named_curve.
constexpr std::uint8_t curve_type_named_curve = 3;
// RFC 8422 section 5.4.1: the uncompressed point format of the NIST curves.
constexpr std::uint8_t uncompressed_point_prefix = 0x04;
// The largest DH prime in bytes: ffdhe8192 (RFC 7919) is 8192 bits.
constexpr std::size_t max_dh_prime_size = 1024;

struct NamedGroup {
    std::uint16_t code_point;
    std::uint8_t point_size;  // bytes of the ECPoint opaque, including the 0x04 prefix
    bool uncompressed_prefix;
};

// RFC 8422 section 5.1.1 and RFC 7748 section 6: the groups the policy accepts.
constexpr std::array<NamedGroup, 5> named_groups{{
    {0x0017, 65, true},   // secp256r1
    {0x0018, 97, true},   // secp384r1
    {0x0019, 133, true},  // secp521r1
    {0x001d, 32, false},  // x25519
    {0x001e, 56, false},  // x448
}};

// RFC 8446 section 4.2.3: the schemes valid in TLS 1.3 CertificateVerify.
constexpr std::array<std::uint16_t, 11> tls13_schemes{
    0x0403, 0x0503, 0x0603,  // ecdsa_secp256r1_sha256, secp384r1_sha384, secp521r1_sha512
    0x0804, 0x0805, 0x0806,  // rsa_pss_rsae_sha256, sha384, sha512
    0x0807, 0x0808,          // ed25519, ed448
    0x0809, 0x080a, 0x080b,  // rsa_pss_pss_sha256, sha384, sha512
};

// TLS 1.2 schemes: the TLS 1.3 set plus PKCS#1 v1.5. The SHA-1 schemes (0x0201, 0x0203)
// are absent on purpose because SHA-1 signatures are forgeable by chosen-prefix collision.
constexpr std::array<std::uint16_t, 3> tls12_only_schemes{
    0x0401, 0x0501, 0x0601,  // rsa_pkcs1_sha256, sha384, sha512
};

template <std::size_t N>
bool contains(const std::array<std::uint16_t, N>& codes, std::uint16_t code) {
    return std::find(codes.begin(), codes.end(), code) != codes.end();
}

PolicyResult accept(SigningInput input) {
    return {PolicyVerdict::accepted, input, {}};
}

PolicyResult reject(std::string_view reason) {
    return {PolicyVerdict::rejected, SigningInput::none, reason};
}

// Reads big-endian fields from the front of a byte span; every read is bounds-checked.
class Reader {
  public:
    explicit Reader(std::span<const std::uint8_t> bytes) : rest_(bytes) {}

    std::optional<std::uint8_t> u8() {
        if (rest_.empty()) {
            return std::nullopt;
        }
        const std::uint8_t value = rest_[0];
        rest_ = rest_.subspan(1);
        return value;
    }

    std::optional<std::uint16_t> u16() {
        if (rest_.size() < 2) {
            return std::nullopt;
        }
        const auto value = static_cast<std::uint16_t>((rest_[0] << 8U) | rest_[1]);
        rest_ = rest_.subspan(2);
        return value;
    }

    std::optional<std::span<const std::uint8_t>> bytes(std::size_t size) {
        if (rest_.size() < size) {
            return std::nullopt;
        }
        const auto value = rest_.first(size);
        rest_ = rest_.subspan(size);
        return value;
    }

    [[nodiscard]] bool empty() const { return rest_.empty(); }

  private:
    std::span<const std::uint8_t> rest_;
};

bool starts_with_tls13_padding(std::span<const std::uint8_t> message) {
    if (message.size() < tls13_padding_size) {
        return false;
    }
    const auto padding = message.first(tls13_padding_size);
    return std::all_of(padding.begin(), padding.end(),
                       [](std::uint8_t byte) { return byte == tls13_padding_byte; });
}

PolicyResult check_tls13_certificate_verify(std::span<const std::uint8_t> message,
                                            std::uint16_t scheme) {
    const auto rest = message.subspan(tls13_padding_size);
    const std::size_t prefix_size = tls13_server_context.size() + 1;
    if (rest.size() < prefix_size ||
        !std::equal(tls13_server_context.begin(), tls13_server_context.end(), rest.begin())) {
        return reject("TLS 1.3 content without the server CertificateVerify context string");
    }
    if (rest[tls13_server_context.size()] != 0) {
        return reject("TLS 1.3 context string not followed by a zero byte");
    }
    const std::size_t hash_size = rest.size() - prefix_size;
    if (hash_size != sha256_size && hash_size != sha384_size) {
        return reject("TLS 1.3 transcript hash is neither 32 (SHA-256) nor 48 (SHA-384) bytes");
    }
    if (!contains(tls13_schemes, scheme)) {
        return reject("signature scheme is not allowed in TLS 1.3 CertificateVerify");
    }
    return accept(SigningInput::tls13_certificate_verify);
}

const NamedGroup* find_group(std::uint16_t code_point) {
    const auto* found =
        std::find_if(named_groups.begin(), named_groups.end(),
                     [&](const NamedGroup& g) { return g.code_point == code_point; });
    return found == named_groups.end() ? nullptr : found;
}

// ServerECDHParams: curve_type u8 (already read), NamedGroup u16, ECPoint <1..2^8-1>.
PolicyResult check_ecdh_params(Reader& reader) {
    const auto group_code = reader.u16();
    if (!group_code) {
        return reject("ServerECDHParams truncated before the named group");
    }
    const NamedGroup* group = find_group(*group_code);
    if (group == nullptr) {
        return reject("ServerECDHParams names a group the policy does not accept");
    }
    const auto point_size = reader.u8();
    if (!point_size || *point_size != group->point_size) {
        return reject("ServerECDHParams point length does not match its named group");
    }
    const auto point = reader.bytes(*point_size);
    if (!point) {
        return reject("ServerECDHParams point is truncated");
    }
    if (group->uncompressed_prefix && (*point)[0] != uncompressed_point_prefix) {
        return reject("ServerECDHParams NIST curve point is not in uncompressed form");
    }
    if (!reader.empty()) {
        return reject("bytes follow the ServerECDHParams");
    }
    return accept(SigningInput::tls12_server_key_exchange_ec);
}

// Reads one opaque <1..2^16-1> value of at most max_size bytes; returns its size.
std::optional<std::size_t> read_dh_value(Reader& reader, std::size_t max_size) {
    const auto size = reader.u16();
    if (!size || *size == 0 || *size > max_size || !reader.bytes(*size)) {
        return std::nullopt;
    }
    return *size;
}

// ServerDHParams: dh_p, dh_g, dh_Ys, each opaque <1..2^16-1>.
PolicyResult check_dh_params(Reader& reader) {
    const auto prime_size = read_dh_value(reader, max_dh_prime_size);
    if (!prime_size) {
        return reject("ServerDHParams prime is empty, truncated or longer than 1024 bytes");
    }
    if (!read_dh_value(reader, *prime_size)) {
        return reject("ServerDHParams generator is empty, truncated or longer than the prime");
    }
    if (!read_dh_value(reader, *prime_size)) {
        return reject("ServerDHParams public value is empty, truncated or longer than the prime");
    }
    if (!reader.empty()) {
        return reject("bytes follow the ServerDHParams");
    }
    return accept(SigningInput::tls12_server_key_exchange_dh);
}

PolicyResult check_tls12_server_key_exchange(std::span<const std::uint8_t> message,
                                             std::uint16_t scheme) {
    if (message.size() <= randoms_size) {
        return reject("message too short for TLS 1.2 ServerKeyExchange parameters");
    }
    if (!contains(tls13_schemes, scheme) && !contains(tls12_only_schemes, scheme)) {
        return reject("signature scheme is not allowed in TLS 1.2 ServerKeyExchange");
    }
    const auto params = message.subspan(randoms_size);
    // ServerECDHParams starts with curve_type 3. ServerDHParams starts with the u16 length of
    // p, whose first byte is also 3 for a prime of 768 to 1023 bytes (ffdhe6144 is 768). So
    // such input is tried as both forms, and the EC reason is reported when neither matches.
    if (params[0] != curve_type_named_curve) {
        Reader dh_reader(params);
        return check_dh_params(dh_reader);
    }
    Reader ec_reader(params.subspan(1));
    PolicyResult ec_result = check_ecdh_params(ec_reader);
    if (ec_result.accepted()) {
        return ec_result;
    }
    Reader dh_reader(params);
    PolicyResult dh_result = check_dh_params(dh_reader);
    return dh_result.accepted() ? dh_result : ec_result;
}

}  // namespace

PolicyResult check_tls_signing_input(std::span<const std::uint8_t> message,
                                     std::uint16_t scheme) noexcept {
    if (starts_with_tls13_padding(message)) {
        return check_tls13_certificate_verify(message, scheme);
    }
    return check_tls12_server_key_exchange(message, scheme);
}

const char* to_string(SigningInput input) noexcept {
    switch (input) {
        case SigningInput::none:
            return "none";
        case SigningInput::tls13_certificate_verify:
            return "TLS 1.3 CertificateVerify";
        case SigningInput::tls12_server_key_exchange_ec:
            return "TLS 1.2 ServerKeyExchange (ECDHE)";
        case SigningInput::tls12_server_key_exchange_dh:
            return "TLS 1.2 ServerKeyExchange (DHE)";
    }
    return "unknown";
}

}  // namespace cloister
