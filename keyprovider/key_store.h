// The interface between the key process's request handling and the place where keys live.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/key_protocol.h"

namespace cloister {

// The key algorithms the key process accepts. EC covers P-256 and P-384.
enum class KeyType { rsa, ec, ed25519 };

const char* to_string(KeyType type) noexcept;

// A fixed set of private keys, addressed by the key index of the key channel (the index in
// Config::keys). Every method may be called from several worker threads at once.
class KeyStore {
  public:
    KeyStore() = default;
    KeyStore(const KeyStore&) = delete;
    KeyStore& operator=(const KeyStore&) = delete;
    KeyStore(KeyStore&&) = delete;
    KeyStore& operator=(KeyStore&&) = delete;
    virtual ~KeyStore() = default;

    // Number of keys. Valid indexes are 0 to size() - 1.
    [[nodiscard]] virtual std::size_t size() const = 0;

    // The methods below require index < size().

    // The key name from the config, for log lines.
    [[nodiscard]] virtual const std::string& key_name(std::size_t index) const = 0;
    [[nodiscard]] virtual KeyType key_type(std::size_t index) const = 0;
    // Returns the key's SubjectPublicKeyInfo, DER, or an empty vector when the store has
    // the private key without its public key (a token key without public material).
    [[nodiscard]] virtual std::vector<std::uint8_t> public_key(std::size_t index) const = 0;
    // Hashes and signs the whole message as scheme prescribes and returns the signature in TLS
    // wire form (DER for ECDSA). Throws Error(policy) when scheme does not fit the key and
    // Error(crypto) when signing fails.
    [[nodiscard]] virtual std::vector<std::uint8_t> sign(
        std::size_t index, keyproto::SignatureScheme scheme,
        std::span<const std::uint8_t> message) const = 0;
    // Same as sign(), and sets token_time to the duration of the PKCS#11 token's signing calls
    // when the key is in a token and the request reached the token, also when the token fails.
    // The default calls sign() and leaves token_time unchanged.
    [[nodiscard]] virtual std::vector<std::uint8_t> sign_timed(
        std::size_t index, keyproto::SignatureScheme scheme, std::span<const std::uint8_t> message,
        std::optional<std::chrono::nanoseconds>& token_time) const {
        static_cast<void>(token_time);
        return sign(index, scheme, message);
    }
    // Returns the SignatureScheme code points that sign() serves for the key, for the key_info
    // request. The default is every scheme that fits the key type (scheme_fits); a key in a
    // PKCS#11 token may serve fewer (see pkcs11/mechanisms.h).
    [[nodiscard]] virtual std::vector<std::uint16_t> supported_schemes(std::size_t index) const;
    // Decrypts the RSA-encrypted premaster secret of a TLS 1.2 ClientKeyExchange and returns
    // 48 bytes, random ones for an invalid ciphertext (see decrypt_premaster_secret). Throws
    // Error(policy) when the key is not RSA or the store cannot decrypt. The default is a
    // store without decryption.
    [[nodiscard]] virtual std::vector<std::uint8_t> decrypt_premaster_secret(
        std::size_t index, std::uint16_t client_version,
        std::span<const std::uint8_t> ciphertext) const;
};

}  // namespace cloister
