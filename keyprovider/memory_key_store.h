// In-memory key store: private keys loaded from PEM or DER files into the key process.
#pragma once

#include <vector>

#include "core/config.h"
#include "keyprovider/key_file.h"
#include "keyprovider/key_store.h"

namespace cloister {

class MemoryKeyStore final : public KeyStore {
  public:
    // Loads every key with load_private_key, in config order. Throws Error(config) for the
    // first key that fails, with the message "key 'NAME' (FILE): reason".
    explicit MemoryKeyStore(const std::vector<KeyConfig>& keys);

    [[nodiscard]] std::size_t size() const override { return entries_.size(); }
    [[nodiscard]] const std::string& key_name(std::size_t index) const override;
    [[nodiscard]] KeyType key_type(std::size_t index) const override;
    [[nodiscard]] std::vector<std::uint8_t> public_key(std::size_t index) const override;
    [[nodiscard]] std::vector<std::uint8_t> sign(
        std::size_t index, keyproto::SignatureScheme scheme,
        std::span<const std::uint8_t> message) const override;
    [[nodiscard]] std::vector<std::uint8_t> decrypt_premaster_secret(
        std::size_t index, std::uint16_t client_version,
        std::span<const std::uint8_t> ciphertext) const override;

  private:
    struct Entry {
        std::string name;
        KeyType type = KeyType::rsa;
        EvpPkeyPtr key;
        std::vector<std::uint8_t> public_key_der;  // SubjectPublicKeyInfo
    };

    [[nodiscard]] const Entry& entry(std::size_t index) const;

    std::vector<Entry> entries_;
};

}  // namespace cloister
