#include "backends/botan/botan_stack.h"

#include <botan/tls_algos.h>
#include <botan/version.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "backends/botan/key_check.h"
#include "backends/botan/random.h"
#include "backends/botan/session.h"
#include "core/error.h"

namespace cloister {
namespace {

using botan::BotanSession;
using botan::StackSettings;

StackSettings make_settings(const Config& config, const VhostTable& vhosts) {
    if (config.vhosts.empty()) {
        throw Error(ErrorKind::config, config.source.string() + ": no [[vhost]] is configured");
    }
    StackSettings settings{vhosts, {}, {}, config.tls.alpn_mismatch, botan::ConfigPolicy(config),
                           {}};
    for (std::size_t i = 0; i < config.vhosts.size(); ++i) {
        settings.vhost_settings.push_back({config.vhosts[i].name, config.vhosts[i].alpn});
        settings.certificates.push_back(botan::load_vhost_certificates(config, i));
    }
    return settings;
}

// Logs the schemes that the policy allows for the certificate's key type and that the key
// process cannot sign with its key, such as RSA-PSS with a token key without CKM_RSA_PKCS_PSS.
void log_missing_schemes(const botan::ServedCertificate& certificate,
                         const std::vector<std::uint16_t>& schemes) {
    std::vector<std::string> missing;
    for (const std::uint16_t scheme : botan::policy_schemes_for(certificate.key->algo_name())) {
        if (std::find(schemes.begin(), schemes.end(), scheme) == schemes.end()) {
            missing.push_back(Botan::TLS::sig_scheme_to_string(
                static_cast<Botan::TLS::Signature_Scheme>(scheme)));
        }
    }
    if (!missing.empty()) {
        spdlog::info("botan: vhost '{}' does not offer {}: key '{}' cannot sign them",
                     certificate.vhost_name, fmt::join(missing, ", "), certificate.key_name);
    }
}

class BotanStack final : public TlsStack {
  public:
    BotanStack(const Config& config, const VhostTable& vhosts);

    [[nodiscard]] std::string_view name() const override { return "botan"; }
    void use_key_client(KeyClient& client) override { key_client_ = &client; }
    void reseed_after_fork() override;
    void verify_keys() override;
    std::unique_ptr<TlsSession> new_session(int client_fd, std::uint64_t connection_id) override;

  private:
    StackSettings settings_;
    botan::KernelRandom kernel_random_;
    // This process's generator. Each child replaces it in reseed_after_fork, so no two
    // processes continue from one state.
    std::unique_ptr<Botan::RandomNumberGenerator> random_;
    KeyClient* key_client_ = nullptr;
};

BotanStack::BotanStack(const Config& config, const VhostTable& vhosts)
    : settings_(make_settings(config, vhosts)),
      random_(botan::make_process_random(kernel_random_)) {
    std::size_t certificates = 0;
    for (const botan::VhostCertificates& vhost : settings_.certificates) {
        certificates += vhost.size();
    }
    if (!settings_.policy.skipped().empty()) {
        spdlog::info(
            "botan: [tls] lists {}, which this stack leaves out: Botan 2.19 lacks "
            "them, or they need DSA, PSK or anonymous authentication",
            fmt::join(settings_.policy.skipped(), ", "));
    }
    spdlog::info("botan: {} vhosts with {} certificates ready ({}, TLS 1.2 only)",
                 settings_.certificates.size(), certificates, Botan::short_version_string());
}

void BotanStack::reseed_after_fork() {
    // Created before any sandbox step: the generator needs only getrandom(2), never a file.
    random_ = botan::make_process_random(kernel_random_);
}

void BotanStack::verify_keys() {
    if (key_client_ == nullptr) {
        throw Error(ErrorKind::config, "verify_keys needs a key channel: call use_key_client");
    }
    std::size_t checked = 0;
    settings_.key_schemes.clear();
    for (const botan::VhostCertificates& vhost : settings_.certificates) {
        std::vector<std::uint16_t> vhost_schemes;
        for (const botan::ServedCertificate& certificate : vhost) {
            const std::vector<std::uint16_t> schemes =
                key_client_->key_schemes(certificate.key->key_index());
            botan::verify_certificate_key(certificate, *key_client_, *random_, schemes);
            log_missing_schemes(certificate, schemes);
            vhost_schemes.insert(vhost_schemes.end(), schemes.begin(), schemes.end());
            ++checked;
        }
        // Runs in the supervisor before any connection process is forked, so every child
        // inherits the limits. Keys of one vhost differ in type, so one list serves them all.
        settings_.key_schemes.push_back(std::move(vhost_schemes));
    }
    spdlog::info("botan: {} certificate keys match their keys in the key process", checked);
}

std::unique_ptr<TlsSession> BotanStack::new_session(int client_fd, std::uint64_t connection_id) {
    if (key_client_ == nullptr) {
        throw Error(ErrorKind::crypto, "a TLS session needs a key channel: call use_key_client");
    }
    try {
        return std::make_unique<BotanSession>(settings_, *key_client_, *random_, client_fd,
                                              connection_id);
    } catch (const Error&) {
        throw;
    } catch (const std::exception& error) {
        throw Error(ErrorKind::crypto, std::string("cannot create a TLS session: ") + error.what());
    }
}

}  // namespace

std::unique_ptr<TlsStack> make_botan_stack(const Config& config, const VhostTable& vhosts) {
    return std::make_unique<BotanStack>(config, vhosts);
}

}  // namespace cloister
