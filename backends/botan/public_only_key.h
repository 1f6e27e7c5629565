// The key object that Botan's TLS server signs with: a public key and the index of its
// private half in the key process.
#pragma once

#include <botan/pk_keys.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace cloister::botan {

// Botan's TLS server needs a Private_Key to choose the signature format, and hands it to
// TLS::Callbacks::tls_sign_message, which sends the signature to the key process. Every
// private-key operation of Botan's own throws: signature, decryption and key agreement
// (Botan's defaults) and private_key_bits (Error(crypto)).
class PublicOnlyKey final : public Botan::Private_Key {
  public:
    PublicOnlyKey(std::unique_ptr<Botan::Public_Key> key, std::uint32_t key_index);

    [[nodiscard]] std::uint32_t key_index() const { return key_index_; }
    [[nodiscard]] const Botan::Public_Key& public_key() const { return *key_; }

    [[nodiscard]] std::string algo_name() const override;
    [[nodiscard]] std::size_t estimated_strength() const override;
    [[nodiscard]] std::size_t key_length() const override;
    [[nodiscard]] bool check_key(Botan::RandomNumberGenerator& rng, bool strong) const override;
    [[nodiscard]] Botan::AlgorithmIdentifier algorithm_identifier() const override;
    [[nodiscard]] std::vector<std::uint8_t> public_key_bits() const override;
    [[nodiscard]] std::size_t message_parts() const override;
    [[nodiscard]] std::size_t message_part_size() const override;
    [[nodiscard]] Botan::secure_vector<std::uint8_t> private_key_bits() const override;

  private:
    std::unique_ptr<Botan::Public_Key> key_;
    std::uint32_t key_index_;
};

}  // namespace cloister::botan
