#include "pkcs11/key_stores.h"

#include <algorithm>
#include <thread>
#include <utility>
#include <vector>

#include "keyprovider/memory_key_store.h"
#include "pkcs11/pkcs11_key_store.h"

namespace cloister::pkcs11 {
namespace {

// Serves keys from two stores, each key under its index in config.keys.
class CombinedKeyStore final : public KeyStore {
  public:
    CombinedKeyStore(const Config& config, std::size_t sessions_per_token) {
        std::vector<KeyConfig> file_keys;
        std::vector<KeyConfig> token_keys;
        for (const KeyConfig& key : config.keys) {
            const bool in_token = key.in_token();
            std::vector<KeyConfig>& group = in_token ? token_keys : file_keys;
            places_.push_back({in_token, group.size()});
            group.push_back(key);
        }
        memory_ = std::make_unique<MemoryKeyStore>(file_keys);
        tokens_ = std::make_unique<Pkcs11KeyStore>(token_keys, sessions_per_token);
    }

    [[nodiscard]] std::size_t size() const override { return places_.size(); }
    [[nodiscard]] const std::string& key_name(std::size_t index) const override {
        return store(index).key_name(places_[index].index);
    }
    [[nodiscard]] KeyType key_type(std::size_t index) const override {
        return store(index).key_type(places_[index].index);
    }
    [[nodiscard]] std::vector<std::uint8_t> public_key(std::size_t index) const override {
        return store(index).public_key(places_[index].index);
    }
    [[nodiscard]] std::vector<std::uint8_t> sign(
        std::size_t index, keyproto::SignatureScheme scheme,
        std::span<const std::uint8_t> message) const override {
        return store(index).sign(places_[index].index, scheme, message);
    }
    [[nodiscard]] std::vector<std::uint8_t> sign_timed(
        std::size_t index, keyproto::SignatureScheme scheme, std::span<const std::uint8_t> message,
        std::optional<std::chrono::nanoseconds>& token_time) const override {
        return store(index).sign_timed(places_[index].index, scheme, message, token_time);
    }
    [[nodiscard]] std::vector<std::uint16_t> supported_schemes(std::size_t index) const override {
        return store(index).supported_schemes(places_[index].index);
    }
    [[nodiscard]] std::vector<std::uint8_t> decrypt_premaster_secret(
        std::size_t index, std::uint16_t client_version,
        std::span<const std::uint8_t> ciphertext) const override {
        return store(index).decrypt_premaster_secret(places_[index].index, client_version,
                                                     ciphertext);
    }

  private:
    struct Place {
        bool in_token = false;
        std::size_t index = 0;  // in the store that contains the key
    };

    [[nodiscard]] const KeyStore& store(std::size_t index) const {
        if (places_.at(index).in_token) {
            return *tokens_;
        }
        return *memory_;
    }

    std::vector<Place> places_;
    std::unique_ptr<MemoryKeyStore> memory_;
    std::unique_ptr<Pkcs11KeyStore> tokens_;
};

}  // namespace

std::size_t worker_threads(unsigned configured) {
    // The same rule as the key process's worker pool (keyprovider/key_server.cpp).
    if (configured != 0) {
        return configured;
    }
    return std::max(1U, std::thread::hardware_concurrency());
}

std::unique_ptr<KeyStore> make_key_store(const Config& config) {
    const auto in_token = [](const KeyConfig& key) { return key.in_token(); };
    const std::size_t token_keys =
        static_cast<std::size_t>(std::count_if(config.keys.begin(), config.keys.end(), in_token));
    const std::size_t sessions = worker_threads(config.key_process.workers);
    if (token_keys == 0) {
        return std::make_unique<MemoryKeyStore>(config.keys);
    }
    if (token_keys == config.keys.size()) {
        return std::make_unique<Pkcs11KeyStore>(config.keys, sessions);
    }
    return std::make_unique<CombinedKeyStore>(config, sessions);
}

}  // namespace cloister::pkcs11
