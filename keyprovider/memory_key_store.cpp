#include "keyprovider/memory_key_store.h"

#include <fmt/format.h>
#include <openssl/x509.h>

#include "core/error.h"
#include "keyprovider/evp_signature.h"
#include "keyprovider/premaster_decryption.h"
#include "keyprovider/signature_schemes.h"

namespace cloister {
namespace {

std::vector<std::uint8_t> encode_public_key(EVP_PKEY* key) {
    const int length = i2d_PUBKEY(key, nullptr);
    if (length <= 0) {
        throw Error(ErrorKind::crypto, "i2d_PUBKEY failed: " + take_openssl_errors());
    }
    std::vector<std::uint8_t> der(static_cast<std::size_t>(length));
    unsigned char* out = der.data();
    if (i2d_PUBKEY(key, &out) != length) {
        throw Error(ErrorKind::crypto, "i2d_PUBKEY failed: " + take_openssl_errors());
    }
    return der;
}

}  // namespace

MemoryKeyStore::MemoryKeyStore(const std::vector<KeyConfig>& keys) {
    entries_.reserve(keys.size());
    for (const KeyConfig& config : keys) {
        LoadedKey loaded = load_private_key(config);
        Entry entry;
        entry.name = config.name;
        entry.type = loaded.type;
        entry.public_key_der = encode_public_key(loaded.key.get());
        entry.key = std::move(loaded.key);
        entries_.push_back(std::move(entry));
    }
}

const MemoryKeyStore::Entry& MemoryKeyStore::entry(std::size_t index) const {
    if (index >= entries_.size()) {
        throw Error(ErrorKind::policy, fmt::format("no key has index {}", index));
    }
    return entries_[index];
}

const std::string& MemoryKeyStore::key_name(std::size_t index) const {
    return entry(index).name;
}

KeyType MemoryKeyStore::key_type(std::size_t index) const {
    return entry(index).type;
}

std::vector<std::uint8_t> MemoryKeyStore::public_key(std::size_t index) const {
    return entry(index).public_key_der;
}

std::vector<std::uint8_t> MemoryKeyStore::sign(std::size_t index, keyproto::SignatureScheme scheme,
                                               std::span<const std::uint8_t> message) const {
    const Entry& key = entry(index);
    const auto params = find_scheme(static_cast<std::uint16_t>(scheme));
    if (!params || params->key_type != key.type) {
        throw Error(ErrorKind::policy,
                    fmt::format("scheme 0x{:04x} does not fit {} key '{}'",
                                static_cast<std::uint16_t>(scheme), to_string(key.type), key.name));
    }
    return sign_message(key.key.get(), *params, message);
}

std::vector<std::uint8_t> MemoryKeyStore::decrypt_premaster_secret(
    std::size_t index, std::uint16_t client_version,
    std::span<const std::uint8_t> ciphertext) const {
    const Entry& key = entry(index);
    if (key.type != KeyType::rsa) {
        throw Error(ErrorKind::policy,
                    fmt::format("{} key '{}' cannot decrypt", to_string(key.type), key.name));
    }
    return cloister::decrypt_premaster_secret(key.key.get(), client_version, ciphertext);
}

}  // namespace cloister
