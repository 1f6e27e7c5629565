#include "backends/openssl/remote_key.h"

#include <openssl/params.h>

#include <array>
#include <string>
#include <string_view>

#include "backends/openssl/openssl_errors.h"
#include "core/error.h"

namespace cloister::ossl {
namespace {

using EvpPkeyCtxPtr = Ptr<EVP_PKEY_CTX, EVP_PKEY_CTX_free>;
using ParamsPtr = Ptr<OSSL_PARAM, OSSL_PARAM_free>;

std::string group_name(const EVP_PKEY* key) {
    std::array<char, 64> name{};
    size_t length = 0;
    if (EVP_PKEY_get_group_name(key, name.data(), name.size(), &length) != 1) {
        return {};
    }
    return std::string(name.data(), length);
}

[[noreturn]] void throw_key_error(const std::string& what) {
    throw Error(ErrorKind::crypto, what + ": " + take_openssl_errors());
}

}  // namespace

KeyType certificate_key_type(X509* certificate) {
    const EVP_PKEY* key = X509_get0_pubkey(certificate);
    if (key == nullptr) {
        throw Error(ErrorKind::config,
                    "the certificate's public key cannot be decoded: " + take_openssl_errors());
    }
    if (EVP_PKEY_is_a(key, "RSA") == 1) {
        return KeyType::rsa;
    }
    if (EVP_PKEY_is_a(key, "ED25519") == 1) {
        return KeyType::ed25519;
    }
    if (EVP_PKEY_is_a(key, "EC") == 1) {
        const std::string group = group_name(key);
        if (group == "prime256v1" || group == "secp384r1") {
            return KeyType::ec;
        }
        throw Error(ErrorKind::config, "unsupported EC curve \"" + group +
                                           "\" in the certificate; use P-256 or P-384");
    }
    throw Error(ErrorKind::config, std::string("unsupported public key type \"") +
                                       EVP_PKEY_get0_type_name(key) +
                                       "\" in the certificate; use RSA, EC or Ed25519");
}

EvpPkeyPtr make_remote_key(X509* certificate, std::uint32_t key_index, OSSL_LIB_CTX* libctx) {
    const KeyType type = certificate_key_type(certificate);
    OSSL_PARAM* exported = nullptr;
    if (EVP_PKEY_todata(X509_get0_pubkey(certificate), EVP_PKEY_PUBLIC_KEY, &exported) != 1) {
        throw_key_error("cannot export the certificate's public key");
    }
    const ParamsPtr public_params(exported);
    unsigned int index = key_index;
    const std::array<OSSL_PARAM, 2> index_params{OSSL_PARAM_construct_uint(key_index_param, &index),
                                                 OSSL_PARAM_construct_end()};
    const ParamsPtr merged(OSSL_PARAM_merge(public_params.get(), index_params.data()));

    // The property query makes the key land in the cloister provider. Without it the default
    // provider would take the key as public-only, and handshakes would fail with "missing
    // private key" although SSL_CTX_check_private_key succeeds.
    EvpPkeyCtxPtr context(EVP_PKEY_CTX_new_from_name(libctx, key_type_name(type), provider_query));
    EVP_PKEY* key = nullptr;
    if (!merged || !context || EVP_PKEY_fromdata_init(context.get()) != 1 ||
        EVP_PKEY_fromdata(context.get(), &key, EVP_PKEY_KEYPAIR, merged.get()) != 1) {
        throw_key_error("cannot build the key-process key");
    }
    return EvpPkeyPtr(key);
}

}  // namespace cloister::ossl
