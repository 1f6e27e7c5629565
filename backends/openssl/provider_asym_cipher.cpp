// Asymmetric cipher operation of the provider: the RSA decryption of a TLS 1.2 RSA key
// exchange, done by the key process.
//
// libssl 3.0 decrypts the ClientKeyExchange with EVP_PKEY_decrypt after setting pad-mode 7
// (RSA_PKCS1_WITH_TLS_PADDING, as an integer) and tls-client-version, and passes a 48-byte
// output buffer without a size query. Only that padding mode is accepted. A plain PKCS#1
// decryption would report padding errors and so turn the key process into a Bleichenbacher
// oracle. The key process returns 48 bytes for every well-formed request, random ones for an
// invalid ciphertext, so a bad ciphertext makes the handshake fail at Finished.
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/params.h>
#include <openssl/rsa.h>

#include <cstring>
#include <new>
#include <span>
#include <string>
#include <vector>

#include "backends/openssl/provider.h"
#include "backends/openssl/provider_key.h"
#include "core/error.h"
#include "core/key_client.h"
#include "core/key_protocol.h"

namespace cloister::ossl {
namespace {

struct DecryptContext {
    ProviderContext* provider = nullptr;
    const RemoteKey* key = nullptr;
    int padding = RSA_PKCS1_PADDING;  // libssl sets RSA_PKCS1_WITH_TLS_PADDING
    unsigned int client_version = 0;  // ClientHello.client_version; 0 until libssl sets it
};

DecryptContext* as_context(void* ctx) {
    return static_cast<DecryptContext*>(ctx);
}

void* cipher_newctx(void* provctx) {
    auto* context = new (std::nothrow) DecryptContext{};
    if (context != nullptr) {
        context->provider = static_cast<ProviderContext*>(provctx);
    }
    return context;
}

void cipher_freectx(void* ctx) {
    delete as_context(ctx);
}

void* cipher_dupctx(void* ctx) {
    return new (std::nothrow) DecryptContext(*as_context(ctx));
}

bool apply_padding(DecryptContext& context, const OSSL_PARAM& param) {
    int padding = 0;
    if (OSSL_PARAM_get_int(&param, &padding) != 1 || padding != RSA_PKCS1_WITH_TLS_PADDING) {
        raise_provider_error(ProviderReason::unsupported_padding,
                             "RSA decryption supports only RSA_PKCS1_WITH_TLS_PADDING");
        return false;
    }
    context.padding = padding;
    return true;
}

// RFC 5246 appendix E: every SSL 3.0 and TLS 1.x version has major version 3, and the key
// channel accepts no other.
bool apply_client_version(DecryptContext& context, const OSSL_PARAM& param) {
    unsigned int version = 0;
    if (OSSL_PARAM_get_uint(&param, &version) != 1 || (version >> 8U) != 3) {
        raise_provider_error(ProviderReason::missing_client_version,
                             "tls-client-version must be a TLS version 0x0300 to 0x03ff");
        return false;
    }
    context.client_version = version;
    return true;
}

// libssl sends tls-negotiated-version only with SSL_OP_TLS_ROLLBACK_BUG, which cloister never
// sets. The key process checks client_version alone, so any other value is rejected.
bool apply_negotiated_version(const OSSL_PARAM& param) {
    unsigned int version = 0;
    if (OSSL_PARAM_get_uint(&param, &version) != 1 || version != 0) {
        raise_provider_error(ProviderReason::missing_client_version,
                             "tls-negotiated-version is not supported");
        return false;
    }
    return true;
}

int cipher_set_ctx_params(void* ctx, const OSSL_PARAM params[]) {
    DecryptContext* context = as_context(ctx);
    if (context == nullptr || context->key == nullptr) {
        return 0;
    }
    if (params == nullptr) {
        return 1;
    }
    const OSSL_PARAM* padding = OSSL_PARAM_locate_const(params, OSSL_ASYM_CIPHER_PARAM_PAD_MODE);
    if (padding != nullptr && !apply_padding(*context, *padding)) {
        return 0;
    }
    const OSSL_PARAM* client =
        OSSL_PARAM_locate_const(params, OSSL_ASYM_CIPHER_PARAM_TLS_CLIENT_VERSION);
    if (client != nullptr && !apply_client_version(*context, *client)) {
        return 0;
    }
    const OSSL_PARAM* negotiated =
        OSSL_PARAM_locate_const(params, OSSL_ASYM_CIPHER_PARAM_TLS_NEGOTIATED_VERSION);
    if (negotiated != nullptr && !apply_negotiated_version(*negotiated)) {
        return 0;
    }
    return 1;
}

// libcrypto passes on only the parameters listed here.
const OSSL_PARAM settable_params[] = {
    OSSL_PARAM_int(OSSL_ASYM_CIPHER_PARAM_PAD_MODE, nullptr),
    OSSL_PARAM_uint(OSSL_ASYM_CIPHER_PARAM_TLS_CLIENT_VERSION, nullptr),
    OSSL_PARAM_uint(OSSL_ASYM_CIPHER_PARAM_TLS_NEGOTIATED_VERSION, nullptr),
    OSSL_PARAM_END,
};

const OSSL_PARAM* cipher_settable_ctx_params(void* /*ctx*/, void* /*provctx*/) {
    return settable_params;
}

int cipher_decrypt_init(void* ctx, void* provkey, const OSSL_PARAM params[]) {
    DecryptContext* context = as_context(ctx);
    const auto* key = static_cast<const RemoteKey*>(provkey);
    if (context == nullptr || key == nullptr || key->type != KeyType::rsa) {
        return 0;
    }
    if (!key->key_index) {
        raise_provider_error(ProviderReason::missing_key_index,
                             "the key has no key index and cannot decrypt");
        return 0;
    }
    context->key = key;
    context->padding = RSA_PKCS1_PADDING;
    context->client_version = 0;
    return cipher_set_ctx_params(ctx, params);
}

ProviderReason reason_for(const Error& error) {
    switch (error.kind()) {
        case ErrorKind::closed:
            return ProviderReason::key_channel_closed;
        case ErrorKind::timeout:
            return ProviderReason::key_operation_timed_out;
        case ErrorKind::io:
        case ErrorKind::protocol:
        case ErrorKind::system:
            return ProviderReason::key_channel_failed;
        case ErrorKind::policy:
            return ProviderReason::key_operation_rejected;
        default:
            return ProviderReason::key_operation_failed;
    }
}

// Returns false after raising the reason why context cannot decrypt a ciphertext of
// ciphertext_size bytes into an output of output_size bytes.
bool check_decrypt(const DecryptContext& context, std::size_t output_size,
                   std::size_t ciphertext_size) {
    if (context.key == nullptr) {
        raise_provider_error(ProviderReason::internal_error, "decrypt before decrypt_init");
        return false;
    }
    if (context.padding != RSA_PKCS1_WITH_TLS_PADDING) {
        raise_provider_error(ProviderReason::unsupported_padding,
                             "RSA decryption supports only RSA_PKCS1_WITH_TLS_PADDING");
        return false;
    }
    if (context.client_version == 0) {
        raise_provider_error(ProviderReason::missing_client_version,
                             "set tls-client-version before decrypting");
        return false;
    }
    if (output_size < keyproto::premaster_secret_size) {
        raise_provider_error(ProviderReason::internal_error,
                             "the output buffer is shorter than a premaster secret");
        return false;
    }
    if (ciphertext_size == 0 || ciphertext_size > keyproto::max_decrypt_ciphertext) {
        raise_provider_error(ProviderReason::message_too_long,
                             "the ciphertext is empty or longer than an RSA-4096 modulus");
        return false;
    }
    if (context.provider->key_client == nullptr) {
        raise_provider_error(ProviderReason::no_key_channel, "call use_key_client first");
        return false;
    }
    return true;
}

// Sends the ciphertext to the key process. A null output is a size query: the result is
// always a 48-byte premaster secret.
int cipher_decrypt(void* ctx, unsigned char* out, size_t* outlen, size_t outsize,
                   const unsigned char* in, size_t inlen) {
    DecryptContext* context = as_context(ctx);
    if (out == nullptr) {
        *outlen = keyproto::premaster_secret_size;
        return 1;
    }
    if (!check_decrypt(*context, outsize, inlen)) {
        return 0;
    }
    const std::uint32_t key_index = *context->key->key_index;
    std::vector<std::uint8_t> premaster;
    try {
        premaster = context->provider->key_client->decrypt(
            key_index, static_cast<std::uint16_t>(context->client_version),
            std::span<const std::uint8_t>(in, inlen));
    } catch (const Error& error) {
        const std::string detail = "key index " + std::to_string(key_index) + ": " + error.what();
        raise_provider_error(reason_for(error), detail.c_str());
        return 0;
    } catch (const std::exception& error) {
        raise_provider_error(ProviderReason::internal_error, error.what());
        return 0;
    }
    std::memcpy(out, premaster.data(), premaster.size());
    *outlen = premaster.size();
    return 1;
}

const OSSL_DISPATCH asym_cipher_functions[] = {
    {OSSL_FUNC_ASYM_CIPHER_NEWCTX, dispatch_entry<OSSL_FUNC_asym_cipher_newctx_fn>(cipher_newctx)},
    {OSSL_FUNC_ASYM_CIPHER_FREECTX,
     dispatch_entry<OSSL_FUNC_asym_cipher_freectx_fn>(cipher_freectx)},
    {OSSL_FUNC_ASYM_CIPHER_DUPCTX, dispatch_entry<OSSL_FUNC_asym_cipher_dupctx_fn>(cipher_dupctx)},
    {OSSL_FUNC_ASYM_CIPHER_DECRYPT_INIT,
     dispatch_entry<OSSL_FUNC_asym_cipher_decrypt_init_fn>(cipher_decrypt_init)},
    {OSSL_FUNC_ASYM_CIPHER_DECRYPT,
     dispatch_entry<OSSL_FUNC_asym_cipher_decrypt_fn>(cipher_decrypt)},
    {OSSL_FUNC_ASYM_CIPHER_SET_CTX_PARAMS,
     dispatch_entry<OSSL_FUNC_asym_cipher_set_ctx_params_fn>(cipher_set_ctx_params)},
    {OSSL_FUNC_ASYM_CIPHER_SETTABLE_CTX_PARAMS,
     dispatch_entry<OSSL_FUNC_asym_cipher_settable_ctx_params_fn>(cipher_settable_ctx_params)},
    {0, nullptr},
};

}  // namespace

// The name matches the RSA key management, the only key type that decrypts.
const OSSL_ALGORITHM asym_cipher_algorithms[] = {
    {"RSA:rsaEncryption:1.2.840.113549.1.1.1", provider_query, asym_cipher_functions,
     "RSA decryption in the key process"},
    {nullptr, nullptr, nullptr, nullptr},
};

}  // namespace cloister::ossl
