#include "backends/botan/signing.h"

#include <botan/tls_algos.h>
#include <fmt/format.h>

#include <array>

#include "core/error.h"

namespace cloister::botan {
namespace {

using Botan::TLS::Signature_Scheme;

struct SchemeEntry {
    Signature_Scheme scheme;
    std::string_view algorithm;  // Botan's name of the key algorithm
};

// The schemes Botan 2.19 can ask an RSA or ECDSA key for in TLS 1.2. The key process refuses
// the SHA-1 ones.
constexpr std::array<SchemeEntry, 11> schemes{{
    {Signature_Scheme::RSA_PSS_SHA256, "RSA"},
    {Signature_Scheme::RSA_PSS_SHA384, "RSA"},
    {Signature_Scheme::RSA_PSS_SHA512, "RSA"},
    {Signature_Scheme::RSA_PKCS1_SHA256, "RSA"},
    {Signature_Scheme::RSA_PKCS1_SHA384, "RSA"},
    {Signature_Scheme::RSA_PKCS1_SHA512, "RSA"},
    {Signature_Scheme::RSA_PKCS1_SHA1, "RSA"},
    {Signature_Scheme::ECDSA_SHA256, "ECDSA"},
    {Signature_Scheme::ECDSA_SHA384, "ECDSA"},
    {Signature_Scheme::ECDSA_SHA512, "ECDSA"},
    {Signature_Scheme::ECDSA_SHA1, "ECDSA"},
}};

// The signature encoding TLS uses for each algorithm (RFC 5246 section 4.7, RFC 8422
// section 5.4): the plain integer for RSA, an ASN.1 sequence of r and s for ECDSA.
Botan::Signature_Format wire_format(std::string_view algorithm) {
    return algorithm == "ECDSA" ? Botan::DER_SEQUENCE : Botan::IEEE_1363;
}

}  // namespace

std::uint16_t scheme_for_padding(std::string_view algorithm, std::string_view padding) {
    for (const SchemeEntry& entry : schemes) {
        if (entry.algorithm == algorithm &&
            Botan::TLS::padding_string_for_scheme(entry.scheme) == padding) {
            return static_cast<std::uint16_t>(entry.scheme);
        }
    }
    throw Error(ErrorKind::crypto, fmt::format("Botan asked for a {} signature with padding {}, "
                                               "which matches no TLS signature scheme",
                                               algorithm, padding));
}

RemoteSignature sign_remotely(KeyClient& client, const PublicOnlyKey& key, std::string_view padding,
                              Botan::Signature_Format format,
                              std::span<const std::uint8_t> message) {
    const std::string algorithm = key.algo_name();
    const std::uint16_t scheme = scheme_for_padding(algorithm, padding);
    if (format != wire_format(algorithm)) {
        throw Error(ErrorKind::crypto,
                    fmt::format("Botan asked for a {} signature in a format that TLS does not "
                                "use ({})",
                                algorithm, static_cast<int>(format)));
    }
    return RemoteSignature{client.sign(key.key_index(), scheme, message), scheme};
}

}  // namespace cloister::botan
