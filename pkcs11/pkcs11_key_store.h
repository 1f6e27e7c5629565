// The key store for private keys in PKCS#11 tokens.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/config.h"
#include "keyprovider/key_store.h"
#include "pkcs11/module_link.h"

namespace cloister::pkcs11 {

// Signs with keys that stay in their tokens. Modules, sessions and mechanisms are driven
// through the PKCS#11 function list, not libp11 0.4.12 (Debian 12), for four reasons:
//  - libp11 has no RSA-PSS mechanism. OpenSSL pads PSS and libp11 requests raw RSA
//    (CKM_RSA_X_509), which tokens that restrict mechanisms reject.
//  - Its key enumeration fails for a whole token that contains an Ed25519 key.
//  - It hides its sessions and return codes, so neither a session per worker thread nor a
//    reopen decided by the return code is possible.
//  - It exposes no function list that other code could share, and p11-kit-client.so returns
//    a new instance from every C_GetFunctionList call.
class Pkcs11KeyStore final : public KeyStore {
  public:
    // Loads each module once, opens sessions_per_token sessions on each token and logs in once
    // per token, finds every key, and probes what each key can sign. Must run in the key
    // process, after the fork that created it. Marks the process not dumpable first, so that
    // no core file contains a PIN. Throws Error(config) "key 'NAME' (URI): reason" for the first
    // key that fails; the message never contains a PIN.
    Pkcs11KeyStore(const std::vector<KeyConfig>& keys, std::size_t sessions_per_token);
    Pkcs11KeyStore(const Pkcs11KeyStore&) = delete;
    Pkcs11KeyStore& operator=(const Pkcs11KeyStore&) = delete;
    Pkcs11KeyStore(Pkcs11KeyStore&&) = delete;
    Pkcs11KeyStore& operator=(Pkcs11KeyStore&&) = delete;
    ~Pkcs11KeyStore() override;

    [[nodiscard]] std::size_t size() const override { return keys_.size(); }
    [[nodiscard]] const std::string& key_name(std::size_t index) const override;
    [[nodiscard]] KeyType key_type(std::size_t index) const override;
    [[nodiscard]] std::vector<std::uint8_t> public_key(std::size_t index) const override;
    // Throws Error(policy) for a scheme the key cannot sign (see supported_schemes) and
    // Error(crypto) when the token fails or is unavailable.
    [[nodiscard]] std::vector<std::uint8_t> sign(
        std::size_t index, keyproto::SignatureScheme scheme,
        std::span<const std::uint8_t> message) const override;
    [[nodiscard]] std::vector<std::uint8_t> sign_timed(
        std::size_t index, keyproto::SignatureScheme scheme, std::span<const std::uint8_t> message,
        std::optional<std::chrono::nanoseconds>& token_time) const override;
    [[nodiscard]] std::vector<std::uint16_t> supported_schemes(std::size_t index) const override;

  private:
    struct Entry {
        ModuleLink* module = nullptr;
        const KeyLink* key = nullptr;
    };

    [[nodiscard]] const Entry& entry(std::size_t index) const;
    ModuleLink& module_for(const std::filesystem::path& path);
    void add(const KeyConfig& config);

    std::size_t sessions_per_token_;
    std::vector<std::unique_ptr<ModuleLink>> modules_;
    std::vector<Entry> keys_;
};

}  // namespace cloister::pkcs11
