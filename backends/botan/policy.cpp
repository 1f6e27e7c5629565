#include "backends/botan/policy.h"

#include <botan/tls_ciphersuite.h>
#include <fmt/format.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <array>
#include <optional>
#include <string_view>
#include <utility>

#include "backends/openssl/openssl_errors.h"
#include "backends/openssl/ossl_ptr.h"
#include "core/error.h"
#include "core/vhost_table.h"

namespace cloister::botan {
namespace {

using Botan::TLS::Group_Params;
using Botan::TLS::Signature_Scheme;
using SslCtxPtr = ossl::Ptr<SSL_CTX, SSL_CTX_free>;

constexpr unsigned tls13_suite_prefix = 0x13;

struct PolicyScheme {
    Signature_Scheme scheme;
    std::string_view algorithm;  // Botan's name of the key type that signs it
};

// SHA-256 first, as in OpenSSL 3.0's default list, so that both stacks choose alike when the
// client offers several hashes. TLS 1.2 does not tie an ECDSA hash to the curve.
constexpr std::array<PolicyScheme, 9> preferred_schemes{{
    {Signature_Scheme::ECDSA_SHA256, "ECDSA"},
    {Signature_Scheme::ECDSA_SHA384, "ECDSA"},
    {Signature_Scheme::ECDSA_SHA512, "ECDSA"},
    {Signature_Scheme::RSA_PSS_SHA256, "RSA"},
    {Signature_Scheme::RSA_PSS_SHA384, "RSA"},
    {Signature_Scheme::RSA_PSS_SHA512, "RSA"},
    {Signature_Scheme::RSA_PKCS1_SHA256, "RSA"},
    {Signature_Scheme::RSA_PKCS1_SHA384, "RSA"},
    {Signature_Scheme::RSA_PKCS1_SHA512, "RSA"},
}};

[[noreturn]] void throw_setting_error(const Config& config, std::string_view key,
                                      std::string_view value, std::string_view problem) {
    throw Error(ErrorKind::config, fmt::format("{}: [tls] {} = \"{}\": {}", config.source.string(),
                                               key, value, problem));
}

SslCtxPtr new_parser_context() {
    SslCtxPtr context(SSL_CTX_new(TLS_server_method()));
    if (!context) {
        throw Error(ErrorKind::crypto, "cannot create an SSL_CTX: " + ossl::take_openssl_errors());
    }
    return context;
}

// Expands the OpenSSL cipher string of `ciphers` to TLS 1.2 suite code points, in order.
std::vector<std::uint16_t> openssl_suite_codes(const Config& config) {
    const SslCtxPtr context = new_parser_context();
    if (SSL_CTX_set_cipher_list(context.get(), config.tls.ciphers.c_str()) != 1) {
        throw_setting_error(config, "ciphers", config.tls.ciphers,
                            "no TLS 1.2 cipher matches: " + ossl::take_openssl_errors());
    }
    std::vector<std::uint16_t> codes;
    const STACK_OF(SSL_CIPHER)* ciphers = SSL_CTX_get_ciphers(context.get());
    for (int i = 0; i < sk_SSL_CIPHER_num(ciphers); ++i) {
        const std::uint16_t code = SSL_CIPHER_get_protocol_id(sk_SSL_CIPHER_value(ciphers, i));
        // The list also contains the TLS 1.3 suites, 0x13XX (RFC 8446 appendix B.4).
        if ((code >> 8U) != tls13_suite_prefix) {
            codes.push_back(code);
        }
    }
    return codes;
}

// True for suites with an ephemeral (EC)DH key exchange signed by an RSA or ECDSA key, the
// only ones the key process can take part in.
bool usable_suite(const Botan::TLS::Ciphersuite& suite) {
    const bool ephemeral = suite.kex_method() == Botan::TLS::Kex_Algo::ECDH ||
                           suite.kex_method() == Botan::TLS::Kex_Algo::DH;
    const bool signed_by_key = suite.auth_method() == Botan::TLS::Auth_Method::RSA ||
                               suite.auth_method() == Botan::TLS::Auth_Method::ECDSA;
    return suite.valid() && ephemeral && signed_by_key;
}

struct GroupName {
    std::string_view name;  // lowercase, as OpenSSL 3.0 accepts it
    Group_Params group;
};

constexpr std::array<GroupName, 16> group_names{{
    {"x25519", Group_Params::X25519},
    {"p-256", Group_Params::SECP256R1},
    {"prime256v1", Group_Params::SECP256R1},
    {"secp256r1", Group_Params::SECP256R1},
    {"p-384", Group_Params::SECP384R1},
    {"secp384r1", Group_Params::SECP384R1},
    {"p-521", Group_Params::SECP521R1},
    {"secp521r1", Group_Params::SECP521R1},
    {"brainpoolp256r1", Group_Params::BRAINPOOL256R1},
    {"brainpoolp384r1", Group_Params::BRAINPOOL384R1},
    {"brainpoolp512r1", Group_Params::BRAINPOOL512R1},
    {"ffdhe2048", Group_Params::FFDHE_2048},
    {"ffdhe3072", Group_Params::FFDHE_3072},
    {"ffdhe4096", Group_Params::FFDHE_4096},
    {"ffdhe6144", Group_Params::FFDHE_6144},
    {"ffdhe8192", Group_Params::FFDHE_8192},
}};

std::optional<Group_Params> find_group(std::string_view name) {
    const std::string lower = ascii_lowercase(name);
    for (const GroupName& entry : group_names) {
        if (entry.name == lower) {
            return entry.group;
        }
    }
    return std::nullopt;
}

// Splits an OpenSSL list ("X25519:P-256") at its colons.
std::vector<std::string> split_list(const std::string& text) {
    std::vector<std::string> items;
    std::size_t start = 0;
    while (start <= text.size()) {
        const std::size_t colon = std::min(text.find(':', start), text.size());
        if (colon > start) {
            items.push_back(text.substr(start, colon - start));
        }
        start = colon + 1;
    }
    return items;
}

}  // namespace

ConfigPolicy::ConfigPolicy(const Config& config)
    : prefer_server_(config.tls.prefer_server_ciphers) {
    if (config.tls.rsa_key_exchange) {
        throw Error(ErrorKind::config,
                    fmt::format("{}: [tls] rsa-key-exchange = true: tls-backend \"botan\" has no "
                                "RSA key exchange; expected false, or tls-backend = \"openssl\"",
                                config.source.string()));
    }
    for (const std::uint16_t code : openssl_suite_codes(config)) {
        const Botan::TLS::Ciphersuite suite = Botan::TLS::Ciphersuite::by_id(code);
        if (usable_suite(suite)) {
            suites_.push_back(code);
        } else if (suite.kex_method() != Botan::TLS::Kex_Algo::STATIC_RSA) {
            skipped_.push_back(suite.valid() ? "TLS_" + suite.to_string()
                                             : fmt::format("suite 0x{:04x}", code));
        }
    }
    if (suites_.empty()) {
        throw_setting_error(config, "ciphers", config.tls.ciphers,
                            "no listed TLS 1.2 cipher suite is one that Botan 2.19 implements "
                            "with ECDHE or DHE key exchange and RSA or ECDSA signatures");
    }
    const SslCtxPtr context = new_parser_context();
    if (SSL_CTX_set1_groups_list(context.get(), config.tls.groups.c_str()) != 1) {
        throw_setting_error(config, "groups", config.tls.groups,
                            "invalid or unknown group: " + ossl::take_openssl_errors());
    }
    for (const std::string& name : split_list(config.tls.groups)) {
        if (const auto group = find_group(name); group) {
            groups_.push_back(*group);
        } else {
            skipped_.push_back("group " + name);
        }
    }
    if (groups_.empty()) {
        throw_setting_error(config, "groups", config.tls.groups,
                            "no listed group is one that Botan 2.19 implements");
    }
}

std::vector<std::uint16_t> ConfigPolicy::ciphersuite_list(Botan::TLS::Protocol_Version /*version*/,
                                                          bool /*have_srp*/) const {
    return suites_;
}

std::vector<Group_Params> ConfigPolicy::key_exchange_groups() const {
    return groups_;
}

std::vector<Signature_Scheme> ConfigPolicy::allowed_signature_schemes() const {
    const auto kept = [this](Signature_Scheme scheme) {
        const auto code_point = static_cast<std::uint16_t>(scheme);
        return !kept_schemes_ || std::find(kept_schemes_->begin(), kept_schemes_->end(),
                                           code_point) != kept_schemes_->end();
    };
    std::vector<Signature_Scheme> allowed;
    for (const PolicyScheme& entry : preferred_schemes) {
        if (kept(entry.scheme)) {
            allowed.push_back(entry.scheme);
        }
    }
    return allowed;
}

std::vector<std::uint16_t> policy_schemes_for(std::string_view algorithm) {
    std::vector<std::uint16_t> schemes;
    for (const PolicyScheme& entry : preferred_schemes) {
        if (entry.algorithm == algorithm) {
            schemes.push_back(static_cast<std::uint16_t>(entry.scheme));
        }
    }
    return schemes;
}

}  // namespace cloister::botan
