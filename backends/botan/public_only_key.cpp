#include "backends/botan/public_only_key.h"

#include <botan/asn1_obj.h>

#include <utility>

#include "core/error.h"

namespace cloister::botan {

PublicOnlyKey::PublicOnlyKey(std::unique_ptr<Botan::Public_Key> key, std::uint32_t key_index)
    : key_(std::move(key)), key_index_(key_index) {}

std::string PublicOnlyKey::algo_name() const {
    return key_->algo_name();
}

std::size_t PublicOnlyKey::estimated_strength() const {
    return key_->estimated_strength();
}

std::size_t PublicOnlyKey::key_length() const {
    return key_->key_length();
}

bool PublicOnlyKey::check_key(Botan::RandomNumberGenerator& rng, bool strong) const {
    return key_->check_key(rng, strong);
}

Botan::AlgorithmIdentifier PublicOnlyKey::algorithm_identifier() const {
    return key_->algorithm_identifier();
}

std::vector<std::uint8_t> PublicOnlyKey::public_key_bits() const {
    return key_->public_key_bits();
}

std::size_t PublicOnlyKey::message_parts() const {
    return key_->message_parts();
}

std::size_t PublicOnlyKey::message_part_size() const {
    return key_->message_part_size();
}

Botan::secure_vector<std::uint8_t> PublicOnlyKey::private_key_bits() const {
    throw Error(ErrorKind::crypto,
                "the private key is in the key process; only its public half "
                "is in this process");
}

}  // namespace cloister::botan
