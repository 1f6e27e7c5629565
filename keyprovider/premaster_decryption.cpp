#include "keyprovider/premaster_decryption.h"

#include <fmt/format.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include <array>
#include <memory>

#include "core/error.h"
#include "core/key_protocol.h"
#include "keyprovider/evp_signature.h"
#include "keyprovider/key_store.h"

namespace cloister {
namespace {

struct PkeyCtxDeleter {
    void operator()(EVP_PKEY_CTX* ctx) const { EVP_PKEY_CTX_free(ctx); }
};
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, PkeyCtxDeleter>;

using Secret = std::array<std::uint8_t, keyproto::premaster_secret_size>;

// Zeroes a premaster secret buffer when it goes out of scope.
class CleansedSecret {
  public:
    CleansedSecret() = default;
    CleansedSecret(const CleansedSecret&) = delete;
    CleansedSecret& operator=(const CleansedSecret&) = delete;
    CleansedSecret(CleansedSecret&&) = delete;
    CleansedSecret& operator=(CleansedSecret&&) = delete;
    ~CleansedSecret() { OPENSSL_cleanse(bytes.data(), bytes.size()); }

    Secret bytes{};
};

[[noreturn]] void throw_crypto(const char* call) {
    throw Error(ErrorKind::crypto, fmt::format("{} failed: {}", call, take_openssl_errors()));
}

// Prepares a decryption with RSA_PKCS1_WITH_TLS_PADDING and the client's version. In that
// mode the OpenSSL 3.0 default provider checks the padding, the length and the version in
// constant time and returns random bytes instead of failing when any check fails.
PkeyCtxPtr make_tls_decryption(EVP_PKEY* key, std::uint16_t client_version) {
    PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key, nullptr));
    if (!ctx) {
        throw_crypto("EVP_PKEY_CTX_new_from_pkey");
    }
    int padding = RSA_PKCS1_WITH_TLS_PADDING;
    unsigned int version = client_version;
    const std::array<OSSL_PARAM, 3> params{
        OSSL_PARAM_construct_int(OSSL_ASYM_CIPHER_PARAM_PAD_MODE, &padding),
        OSSL_PARAM_construct_uint(OSSL_ASYM_CIPHER_PARAM_TLS_CLIENT_VERSION, &version),
        OSSL_PARAM_construct_end(),
    };
    if (EVP_PKEY_decrypt_init_ex(ctx.get(), params.data()) != 1) {
        throw_crypto("EVP_PKEY_decrypt_init_ex");
    }
    return ctx;
}

}  // namespace

std::vector<std::uint8_t> decrypt_premaster_secret(EVP_PKEY* key, std::uint16_t client_version,
                                                   std::span<const std::uint8_t> ciphertext) {
    const PkeyCtxPtr ctx = make_tls_decryption(key, client_version);
    // Drawn before the decryption, so that every ciphertext takes the same steps.
    CleansedSecret substitute;
    if (RAND_priv_bytes(substitute.bytes.data(), static_cast<int>(substitute.bytes.size())) != 1) {
        throw_crypto("RAND_priv_bytes");
    }

    // Apart from internal errors (memory, the random generator), EVP_PKEY_decrypt fails only
    // for a ciphertext that anyone with the public key sees to be invalid: longer than the
    // modulus or not below it. Every other flaw yields 48 random bytes inside OpenSSL. The
    // result is still chosen without a branch on the outcome.
    CleansedSecret decrypted;
    std::size_t length = decrypted.bytes.size();
    const int status = EVP_PKEY_decrypt(ctx.get(), decrypted.bytes.data(), &length,
                                        ciphertext.data(), ciphertext.size());
    ERR_clear_error();
    const auto valid = static_cast<unsigned>(status == 1) &
                       static_cast<unsigned>(length == decrypted.bytes.size());
    const auto mask = static_cast<std::uint8_t>(0U - valid);

    std::vector<std::uint8_t> premaster(keyproto::premaster_secret_size);
    for (std::size_t i = 0; i < premaster.size(); ++i) {
        premaster[i] =
            static_cast<std::uint8_t>((decrypted.bytes[i] & mask) | (substitute.bytes[i] & ~mask));
    }
    return premaster;
}

std::vector<std::uint8_t> KeyStore::decrypt_premaster_secret(
    std::size_t index, std::uint16_t /*client_version*/,
    std::span<const std::uint8_t> /*ciphertext*/) const {
    throw Error(ErrorKind::policy,
                fmt::format("the key store of key '{}' cannot decrypt", key_name(index)));
}

}  // namespace cloister
