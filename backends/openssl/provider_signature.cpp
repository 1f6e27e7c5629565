// Signature operation of the provider: sends the whole to-be-signed message to the key process.
//
// libssl 3.0 signs through EVP_DigestSign, so the provider receives the complete message (the TLS
// 1.3 CertificateVerify content or the TLS 1.2 ServerKeyExchange parameters). The key process
// hashes it itself, which lets it check that the message is a TLS handshake signature input.
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/params.h>
#include <openssl/rsa.h>

#include <array>
#include <charconv>
#include <cstring>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "backends/openssl/provider.h"
#include "backends/openssl/provider_key.h"
#include "core/error.h"
#include "core/key_client.h"
#include "core/key_protocol.h"

namespace cloister::ossl {
namespace {

using keyproto::SignatureScheme;
using EvpMdPtr = Ptr<EVP_MD, EVP_MD_free>;

// A SHA-2 digest that TLS signature schemes use, with the scheme for each key type
// (RFC 8446 section 4.2.3).
struct DigestScheme {
    const char* name;  // the canonical OpenSSL name
    int size;          // bytes
    SignatureScheme rsa_pkcs1;
    SignatureScheme rsa_pss;
    SignatureScheme ecdsa;
};

// SHA-224 and SHA-1 are absent because no scheme on the key channel uses them. Rejecting them
// in digest_sign_init makes libssl choose another signature algorithm.
constexpr std::array<DigestScheme, 3> digest_schemes{{
    {"SHA2-256", 32, SignatureScheme::rsa_pkcs1_sha256, SignatureScheme::rsa_pss_rsae_sha256,
     SignatureScheme::ecdsa_secp256r1_sha256},
    {"SHA2-384", 48, SignatureScheme::rsa_pkcs1_sha384, SignatureScheme::rsa_pss_rsae_sha384,
     SignatureScheme::ecdsa_secp384r1_sha384},
    {"SHA2-512", 64, SignatureScheme::rsa_pkcs1_sha512, SignatureScheme::rsa_pss_rsae_sha512,
     SignatureScheme::ecdsa_secp521r1_sha512},
}};

struct SignContext {
    ProviderContext* provider = nullptr;
    const RemoteKey* key = nullptr;
    const DigestScheme* digest = nullptr;  // null for Ed25519
    int padding = RSA_PKCS1_PADDING;       // RSA only. The default suits TLS 1.2 PKCS#1 signing
    std::vector<std::uint8_t> message;     // buffered by digest_sign_update
};

SignContext* as_context(void* ctx) {
    return static_cast<SignContext*>(ctx);
}

// Finds the digest by any of its names ("SHA256", "SHA2-256", "SHA-256", the OID). libssl
// uses the short name when it probes and the canonical name when it signs.
const DigestScheme* find_digest(OSSL_LIB_CTX* libctx, const char* name) {
    EvpMdPtr md(EVP_MD_fetch(libctx, name, default_query));
    if (!md) {
        return nullptr;
    }
    for (const DigestScheme& digest : digest_schemes) {
        if (EVP_MD_is_a(md.get(), digest.name) == 1) {
            return &digest;
        }
    }
    return nullptr;
}

void* signature_newctx(void* provctx, const char* /*propq*/) {
    auto* context = new (std::nothrow) SignContext{};
    if (context != nullptr) {
        context->provider = static_cast<ProviderContext*>(provctx);
    }
    return context;
}

void signature_freectx(void* ctx) {
    delete as_context(ctx);
}

void* signature_dupctx(void* ctx) {
    try {
        return new SignContext(*as_context(ctx));
    } catch (const std::bad_alloc&) {
        return nullptr;
    }
}

std::optional<int> read_padding(const OSSL_PARAM& param) {
    if (param.data_type == OSSL_PARAM_UTF8_STRING) {
        const char* text = nullptr;
        if (OSSL_PARAM_get_utf8_string_ptr(&param, &text) != 1) {
            return std::nullopt;
        }
        const std::string_view name(text);
        if (name == OSSL_PKEY_RSA_PAD_MODE_PKCSV15) {
            return RSA_PKCS1_PADDING;
        }
        if (name == OSSL_PKEY_RSA_PAD_MODE_PSS) {
            return RSA_PKCS1_PSS_PADDING;
        }
        return std::nullopt;
    }
    int value = 0;
    if (OSSL_PARAM_get_int(&param, &value) != 1) {
        return std::nullopt;
    }
    return value;
}

// Reads the PSS salt length as OpenSSL 3.0 writes it: an integer, a decimal string, or one of
// the names "digest" (-1), "auto" (-2) and "max" (-3).
std::optional<int> read_salt_length(const OSSL_PARAM& param) {
    if (param.data_type != OSSL_PARAM_UTF8_STRING) {
        int value = 0;
        if (OSSL_PARAM_get_int(&param, &value) != 1) {
            return std::nullopt;
        }
        return value;
    }
    const char* text = nullptr;
    if (OSSL_PARAM_get_utf8_string_ptr(&param, &text) != 1) {
        return std::nullopt;
    }
    const std::string_view name(text);
    if (name == OSSL_PKEY_RSA_PSS_SALT_LEN_DIGEST) {
        return RSA_PSS_SALTLEN_DIGEST;
    }
    if (name == OSSL_PKEY_RSA_PSS_SALT_LEN_AUTO) {
        return RSA_PSS_SALTLEN_AUTO;
    }
    if (name == OSSL_PKEY_RSA_PSS_SALT_LEN_MAX) {
        return RSA_PSS_SALTLEN_MAX;
    }
    int value = 0;
    const auto [end, error] = std::from_chars(name.data(), name.data() + name.size(), value);
    if (error != std::errc{} || end != name.data() + name.size()) {
        return std::nullopt;
    }
    return value;
}

bool apply_padding(SignContext& context, const OSSL_PARAM& param) {
    const std::optional<int> padding = read_padding(param);
    const bool valid = padding == RSA_PKCS1_PADDING || padding == RSA_PKCS1_PSS_PADDING;
    if (context.key->type != KeyType::rsa || !valid) {
        raise_provider_error(ProviderReason::unsupported_padding,
                             "only RSA keys with PKCS#1 v1.5 or PSS padding are supported");
        return false;
    }
    context.padding = *padding;
    return true;
}

// Accepts only a salt as long as the digest: RFC 8446 section 4.2.3 requires it for
// rsa_pss_rsae_*, and the key process signs with it.
bool apply_salt_length(const SignContext& context, const OSSL_PARAM& param) {
    const std::optional<int> length = read_salt_length(param);
    const bool digest_length = length == RSA_PSS_SALTLEN_DIGEST ||
                               (context.digest != nullptr && length == context.digest->size);
    if (context.key->type != KeyType::rsa || !digest_length) {
        raise_provider_error(ProviderReason::unsupported_salt_length,
                             "only a PSS salt as long as the digest is supported");
        return false;
    }
    return true;
}

// Accepts an MGF1 digest only when it equals the signing digest, as rsa_pss_rsae_* requires.
bool apply_mgf1_digest(const SignContext& context, const OSSL_PARAM& param) {
    const char* name = nullptr;
    if (OSSL_PARAM_get_utf8_string_ptr(&param, &name) != 1 || context.digest == nullptr ||
        find_digest(context.provider->libctx, name) != context.digest) {
        raise_provider_error(ProviderReason::unsupported_digest,
                             "the MGF1 digest must be the signing digest");
        return false;
    }
    return true;
}

int signature_set_ctx_params(void* ctx, const OSSL_PARAM params[]) {
    SignContext* context = as_context(ctx);
    if (context == nullptr || context->key == nullptr) {
        return 0;
    }
    if (params == nullptr) {
        return 1;
    }
    const OSSL_PARAM* padding = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_PAD_MODE);
    if (padding != nullptr && !apply_padding(*context, *padding)) {
        return 0;
    }
    const OSSL_PARAM* salt = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_PSS_SALTLEN);
    if (salt != nullptr && !apply_salt_length(*context, *salt)) {
        return 0;
    }
    const OSSL_PARAM* mgf1 = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_MGF1_DIGEST);
    if (mgf1 != nullptr && !apply_mgf1_digest(*context, *mgf1)) {
        return 0;
    }
    return 1;
}

// libssl calls set_ctx_params only for the names listed here, so pad-mode and saltlen must be
// present even though it sends pad-mode as an integer.
const OSSL_PARAM settable_params[] = {
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, nullptr, 0),
    OSSL_PARAM_END,
};

const OSSL_PARAM* signature_settable_ctx_params(void* /*ctx*/, void* /*provctx*/) {
    return settable_params;
}

// Chooses the digest: none for Ed25519 (it hashes the message itself), otherwise one of the
// SHA-2 digests in digest_schemes, SHA-256 when the caller names none.
bool select_digest(SignContext& context, const char* mdname) {
    const bool named = mdname != nullptr && *mdname != '\0';
    if (context.key->type == KeyType::ed25519) {
        context.digest = nullptr;
        if (named) {
            raise_provider_error(ProviderReason::unsupported_digest, "Ed25519 takes no digest");
        }
        return !named;
    }
    context.digest = find_digest(context.provider->libctx, named ? mdname : "SHA2-256");
    if (context.digest == nullptr) {
        raise_provider_error(ProviderReason::unsupported_digest,
                             named ? mdname : "no default digest");
        return false;
    }
    return true;
}

int signature_digest_sign_init(void* ctx, const char* mdname, void* provkey,
                               const OSSL_PARAM params[]) {
    SignContext* context = as_context(ctx);
    const auto* key = static_cast<const RemoteKey*>(provkey);
    if (context == nullptr || key == nullptr || !key->public_key) {
        return 0;
    }
    if (!key->key_index) {
        raise_provider_error(ProviderReason::missing_key_index,
                             "the key has no key index and cannot sign");
        return 0;
    }
    context->key = key;
    context->padding = RSA_PKCS1_PADDING;
    context->message.clear();
    if (!select_digest(*context, mdname)) {
        return 0;
    }
    return signature_set_ctx_params(ctx, params);
}

int signature_digest_sign_update(void* ctx, const unsigned char* data, size_t length) {
    SignContext* context = as_context(ctx);
    if (context->message.size() + length > keyproto::max_request_payload) {
        raise_provider_error(ProviderReason::message_too_long,
                             "the message exceeds the key channel's request limit");
        return 0;
    }
    try {
        context->message.insert(context->message.end(), data, data + length);
    } catch (const std::bad_alloc&) {
        raise_provider_error(ProviderReason::internal_error, "out of memory");
        return 0;
    }
    return 1;
}

SignatureScheme scheme_for(const SignContext& context) {
    switch (context.key->type) {
        case KeyType::ed25519:
            return SignatureScheme::ed25519;
        case KeyType::ec:
            return context.digest->ecdsa;
        case KeyType::rsa:
            break;
    }
    return context.padding == RSA_PKCS1_PSS_PADDING ? context.digest->rsa_pss
                                                    : context.digest->rsa_pkcs1;
}

// Puts a key channel failure on the error queue with the reason that the handshake log shows.
void raise_key_channel_error(const Error& error, std::uint32_t key_index, std::uint16_t scheme) {
    ProviderReason reason = ProviderReason::key_operation_failed;
    switch (error.kind()) {
        case ErrorKind::closed:
            reason = ProviderReason::key_channel_closed;
            break;
        case ErrorKind::timeout:
            reason = ProviderReason::key_operation_timed_out;
            break;
        case ErrorKind::io:
        case ErrorKind::protocol:
        case ErrorKind::system:
            reason = ProviderReason::key_channel_failed;
            break;
        case ErrorKind::policy:
            reason = ProviderReason::key_operation_rejected;
            break;
        default:
            break;
    }
    const std::string detail = "key index " + std::to_string(key_index) + ", scheme " +
                               keyproto::scheme_name(scheme).value_or(std::to_string(scheme)) +
                               ": " + error.what();
    raise_provider_error(reason, detail.c_str());
}

// Sends message to the key process and copies the signature into signature. A null signature
// is a size query: it returns the key's maximum signature size without a request.
int sign_message(SignContext& context, unsigned char* signature, size_t* signature_length,
                 size_t signature_size, std::span<const std::uint8_t> message) {
    if (signature == nullptr) {
        *signature_length = static_cast<size_t>(EVP_PKEY_get_size(context.key->public_key.get()));
        return 1;
    }
    KeyClient* client = context.provider->key_client;
    if (client == nullptr) {
        raise_provider_error(ProviderReason::no_key_channel, "call use_key_client first");
        return 0;
    }
    const auto scheme = static_cast<std::uint16_t>(scheme_for(context));
    const std::uint32_t key_index = *context.key->key_index;
    std::vector<std::uint8_t> result;
    try {
        result = client->sign(key_index, scheme, message);
    } catch (const Error& error) {
        raise_key_channel_error(error, key_index, scheme);
        return 0;
    } catch (const std::exception& error) {
        raise_provider_error(ProviderReason::internal_error, error.what());
        return 0;
    }
    if (result.size() > signature_size) {
        raise_provider_error(ProviderReason::signature_too_long,
                             "the key process returned a signature longer than the buffer");
        return 0;
    }
    std::memcpy(signature, result.data(), result.size());
    *signature_length = result.size();
    context.provider->last_scheme = scheme;
    return 1;
}

int signature_digest_sign_final(void* ctx, unsigned char* signature, size_t* signature_length,
                                size_t signature_size) {
    SignContext* context = as_context(ctx);
    return sign_message(*context, signature, signature_length, signature_size, context->message);
}

int signature_digest_sign(void* ctx, unsigned char* signature, size_t* signature_length,
                          size_t signature_size, const unsigned char* tbs, size_t tbs_length) {
    SignContext* context = as_context(ctx);
    if (tbs_length > keyproto::max_request_payload) {
        raise_provider_error(ProviderReason::message_too_long,
                             "the message exceeds the key channel's request limit");
        return 0;
    }
    return sign_message(*context, signature, signature_length, signature_size,
                        std::span<const std::uint8_t>(tbs, tbs_length));
}

const OSSL_DISPATCH signature_functions[] = {
    {OSSL_FUNC_SIGNATURE_NEWCTX, dispatch_entry<OSSL_FUNC_signature_newctx_fn>(signature_newctx)},
    {OSSL_FUNC_SIGNATURE_FREECTX,
     dispatch_entry<OSSL_FUNC_signature_freectx_fn>(signature_freectx)},
    {OSSL_FUNC_SIGNATURE_DUPCTX, dispatch_entry<OSSL_FUNC_signature_dupctx_fn>(signature_dupctx)},
    {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT,
     dispatch_entry<OSSL_FUNC_signature_digest_sign_init_fn>(signature_digest_sign_init)},
    {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_UPDATE,
     dispatch_entry<OSSL_FUNC_signature_digest_sign_update_fn>(signature_digest_sign_update)},
    {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_FINAL,
     dispatch_entry<OSSL_FUNC_signature_digest_sign_final_fn>(signature_digest_sign_final)},
    {OSSL_FUNC_SIGNATURE_DIGEST_SIGN,
     dispatch_entry<OSSL_FUNC_signature_digest_sign_fn>(signature_digest_sign)},
    {OSSL_FUNC_SIGNATURE_SET_CTX_PARAMS,
     dispatch_entry<OSSL_FUNC_signature_set_ctx_params_fn>(signature_set_ctx_params)},
    {OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS,
     dispatch_entry<OSSL_FUNC_signature_settable_ctx_params_fn>(signature_settable_ctx_params)},
    {0, nullptr},
};

}  // namespace

// The names match the operation names that the key management returns for each key type.
const OSSL_ALGORITHM signature_algorithms[] = {
    {"RSA:rsaEncryption:1.2.840.113549.1.1.1", provider_query, signature_functions,
     "RSA signature in the key process"},
    {"ECDSA", provider_query, signature_functions, "ECDSA signature in the key process"},
    {"ED25519:1.3.101.112", provider_query, signature_functions,
     "Ed25519 signature in the key process"},
    {nullptr, nullptr, nullptr, nullptr},
};

}  // namespace cloister::ossl
