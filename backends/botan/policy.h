// The [tls] section of the config as a Botan TLS::Policy.
#pragma once

#include <botan/tls_policy.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/config.h"

namespace cloister::botan {

// TLS 1.2 only (Botan 2.19 has no TLS 1.3), with the cipher suites and groups of the config
// in its order, the server's preference as configured, signature schemes in the order
// OpenSSL 3.0 prefers them, and no renegotiation. The cipher and group strings use OpenSSL
// syntax and are expanded by OpenSSL, so both stacks read them alike. Entries that Botan does
// not implement (CCM, ARIA and Camellia suites, X448) are left out and listed by skipped().
// Suites with RSA key exchange are always left out, because this stack cannot decrypt with a
// key in the key process.
class ConfigPolicy final : public Botan::TLS::Policy {
  public:
    // Throws Error(config) naming Config::source, the key and its value when a string is
    // invalid, when nothing of it is left for Botan, or when tls.rsa-key-exchange is true.
    explicit ConfigPolicy(const Config& config);

    std::vector<std::uint16_t> ciphersuite_list(Botan::TLS::Protocol_Version version,
                                                bool have_srp) const override;
    std::vector<Botan::TLS::Group_Params> key_exchange_groups() const override;
    std::vector<Botan::TLS::Signature_Scheme> allowed_signature_schemes() const override;
    bool server_uses_own_ciphersuite_preferences() const override { return prefer_server_; }
    bool allow_tls10() const override { return false; }
    bool allow_tls11() const override { return false; }
    bool allow_tls12() const override { return true; }
    bool allow_dtls10() const override { return false; }
    bool allow_dtls12() const override { return false; }
    bool allow_client_initiated_renegotiation() const override { return false; }
    bool allow_server_initiated_renegotiation() const override { return false; }

    // Names of configured suites and groups that Botan does not implement, for a log line.
    [[nodiscard]] const std::vector<std::string>& skipped() const { return skipped_; }

    // Limits allowed_signature_schemes() to the schemes in keep, code points of RFC 8446
    // section 4.2.3: the ones the keys of the session's vhost can sign. A session sets it on
    // its own copy of the policy once it has chosen the vhost, before Botan picks a scheme.
    void keep_only_schemes(std::vector<std::uint16_t> keep) { kept_schemes_ = std::move(keep); }

  private:
    std::vector<std::uint16_t> suites_;
    std::vector<Botan::TLS::Group_Params> groups_;
    bool prefer_server_ = true;
    std::vector<std::string> skipped_;
    std::optional<std::vector<std::uint16_t>> kept_schemes_;  // unset: every scheme
};

// The schemes of allowed_signature_schemes(), as code points, that Botan can sign with a key
// of algorithm ("RSA" or "ECDSA").
std::vector<std::uint16_t> policy_schemes_for(std::string_view algorithm);

}  // namespace cloister::botan
