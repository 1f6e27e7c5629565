// Key management of the provider for RSA, EC and Ed25519 keys held in the key process.
//
// A key contains its public half in the default provider and the index of the private key on the
// key channel. There is no export function on purpose: libcrypto would otherwise copy the key
// into the default provider, whose signature then fails for lack of a private key. Without
// export, libcrypto imports foreign public keys into this key management to compare them, and
// signs with this provider's signature operation.
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/params.h>

#include <new>

#include "backends/openssl/provider.h"
#include "backends/openssl/provider_key.h"

namespace cloister::ossl {
namespace {

using EvpPkeyCtxPtr = Ptr<EVP_PKEY_CTX, EVP_PKEY_CTX_free>;

constexpr int public_selection =
    OSSL_KEYMGMT_SELECT_PUBLIC_KEY | OSSL_KEYMGMT_SELECT_ALL_PARAMETERS;

RemoteKey* as_key(void* keydata) {
    return static_cast<RemoteKey*>(keydata);
}

const RemoteKey* as_key(const void* keydata) {
    return static_cast<const RemoteKey*>(keydata);
}

template <KeyType Type>
void* key_new(void* provctx) {
    auto* key = new (std::nothrow) RemoteKey{};
    if (key != nullptr) {
        key->provider = static_cast<ProviderContext*>(provctx);
        key->type = Type;
    }
    return key;
}

void key_free(void* keydata) {
    delete as_key(keydata);
}

// Returns 1 when the key has every part in selection. The private part counts as present when
// the key has a key index, because the key process can then sign with it.
int key_has(const void* keydata, int selection) {
    const RemoteKey* key = as_key(keydata);
    if (key == nullptr) {
        return 0;
    }
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0 && !key->key_index) {
        return 0;
    }
    if ((selection & public_selection) != 0 && !key->public_key) {
        return 0;
    }
    return 1;
}

// Reads the optional key index parameter. Returns false after raising an error when it is
// present but not an unsigned integer.
bool read_key_index(const OSSL_PARAM params[], std::optional<std::uint32_t>& index) {
    const OSSL_PARAM* param = OSSL_PARAM_locate_const(params, key_index_param);
    if (param == nullptr) {
        return true;
    }
    unsigned int value = 0;
    if (OSSL_PARAM_get_uint(param, &value) != 1) {
        raise_provider_error(ProviderReason::invalid_key_parameter,
                             "cloister-key-index must be an unsigned integer");
        return false;
    }
    index = value;
    return true;
}

// Builds the public half (or only the domain parameters) in the default provider. The default
// key management ignores parameters it does not know, such as the key index.
EvpPkeyPtr import_public_half(const RemoteKey& key, int selection, const OSSL_PARAM params[]) {
    EvpPkeyCtxPtr context(
        EVP_PKEY_CTX_new_from_name(key.provider->libctx, key_type_name(key.type), default_query));
    if (!context || EVP_PKEY_fromdata_init(context.get()) != 1) {
        return nullptr;
    }
    const int part = (selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) != 0 ? EVP_PKEY_PUBLIC_KEY
                                                                       : EVP_PKEY_KEY_PARAMETERS;
    EVP_PKEY* result = nullptr;
    // EVP_PKEY_fromdata takes a non-const array but does not modify it.
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-const-cast)
    if (EVP_PKEY_fromdata(context.get(), &result, part, const_cast<OSSL_PARAM*>(params)) != 1) {
        return nullptr;
    }
    return EvpPkeyPtr(result);
}

// Imports public parts and the key index. A private selection without a key index is
// rejected, because this key management never contains private key material. Accepting such
// an import would let libcrypto route a foreign key's operations here.
int key_import(void* keydata, int selection, const OSSL_PARAM params[]) {
    RemoteKey* key = as_key(keydata);
    std::optional<std::uint32_t> index;
    if (key == nullptr || !read_key_index(params, index)) {
        return 0;
    }
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0 && !index) {
        raise_provider_error(ProviderReason::missing_key_index,
                             "a private key import needs cloister-key-index");
        return 0;
    }
    if ((selection & public_selection) != 0) {
        EvpPkeyPtr public_key = import_public_half(*key, selection, params);
        if (!public_key) {
            return 0;
        }
        key->public_key = std::move(public_key);
    }
    if (index) {
        key->key_index = index;
    }
    return 1;
}

// Compares the public parts that selection names. Private parts compare equal when both keys
// name the same key index.
int key_match(const void* keydata1, const void* keydata2, int selection) {
    const RemoteKey* first = as_key(keydata1);
    const RemoteKey* second = as_key(keydata2);
    if (first == nullptr || second == nullptr) {
        return 0;
    }
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0 &&
        (!first->key_index || first->key_index != second->key_index)) {
        return 0;
    }
    if ((selection & public_selection) == 0) {
        return 1;
    }
    if (!first->public_key || !second->public_key) {
        return 0;
    }
    if ((selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) != 0) {
        return EVP_PKEY_eq(first->public_key.get(), second->public_key.get()) == 1 ? 1 : 0;
    }
    return EVP_PKEY_parameters_eq(first->public_key.get(), second->public_key.get()) == 1 ? 1 : 0;
}

bool set_string_if_requested(OSSL_PARAM params[], const char* name, const char* value) {
    OSSL_PARAM* param = OSSL_PARAM_locate(params, name);
    return param == nullptr || OSSL_PARAM_set_utf8_string(param, value) == 1;
}

// Fills params from the public half in the default provider (bits, security-bits, max-size, group,
// point-format and the other public parameters). Only the digest rules are set here: RSA and
// ECDSA default to SHA-256, and Ed25519 takes no digest (an empty mandatory digest).
int key_get_params(void* keydata, OSSL_PARAM params[]) {
    const RemoteKey* key = as_key(keydata);
    if (key == nullptr || !key->public_key) {
        return 0;
    }
    if (EVP_PKEY_get_params(key->public_key.get(), params) != 1) {
        return 0;
    }
    if (key->type == KeyType::ed25519) {
        return set_string_if_requested(params, OSSL_PKEY_PARAM_MANDATORY_DIGEST, "") ? 1 : 0;
    }
    return set_string_if_requested(params, OSSL_PKEY_PARAM_DEFAULT_DIGEST, "SHA256") ? 1 : 0;
}

const OSSL_PARAM rsa_gettable[] = {
    OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, nullptr),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, nullptr),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, nullptr),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, nullptr, 0),
    OSSL_PARAM_END,
};

const OSSL_PARAM ec_gettable[] = {
    OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, nullptr),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, nullptr),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, nullptr),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, nullptr, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, nullptr, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, nullptr, 0),
    OSSL_PARAM_END,
};

const OSSL_PARAM ed25519_gettable[] = {
    OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, nullptr),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, nullptr),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, nullptr),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_MANDATORY_DIGEST, nullptr, 0),
    OSSL_PARAM_END,
};

template <KeyType Type>
const OSSL_PARAM* key_gettable_params(void* /*provctx*/) {
    switch (Type) {
        case KeyType::rsa:
            return rsa_gettable;
        case KeyType::ec:
            return ec_gettable;
        case KeyType::ed25519:
            return ed25519_gettable;
    }
    return nullptr;
}

const OSSL_PARAM rsa_importable[] = {
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, nullptr, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, nullptr, 0),
    OSSL_PARAM_uint(key_index_param, nullptr),
    OSSL_PARAM_END,
};

const OSSL_PARAM ec_importable[] = {
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, nullptr, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, nullptr, 0),
    OSSL_PARAM_uint(key_index_param, nullptr),
    OSSL_PARAM_END,
};

const OSSL_PARAM ed25519_importable[] = {
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, nullptr, 0),
    OSSL_PARAM_uint(key_index_param, nullptr),
    OSSL_PARAM_END,
};

template <KeyType Type>
const OSSL_PARAM* key_import_types(int /*selection*/) {
    switch (Type) {
        case KeyType::rsa:
            return rsa_importable;
        case KeyType::ec:
            return ec_importable;
        case KeyType::ed25519:
            return ed25519_importable;
    }
    return nullptr;
}

// Names the signature algorithm for an EC key "ECDSA": without it, libcrypto fetches an "EC"
// signature, finds none, and libssl reports "no suitable signature algorithm".
template <KeyType Type>
const char* key_query_operation_name(int operation_id) {
    if (operation_id != OSSL_OP_SIGNATURE) {
        return nullptr;
    }
    switch (Type) {
        case KeyType::rsa:
            return "RSA";
        case KeyType::ec:
            return "ECDSA";
        case KeyType::ed25519:
            return "ED25519";
    }
    return nullptr;
}

template <KeyType Type>
const OSSL_DISPATCH keymgmt_functions[] = {
    {OSSL_FUNC_KEYMGMT_NEW, dispatch_entry<OSSL_FUNC_keymgmt_new_fn>(key_new<Type>)},
    {OSSL_FUNC_KEYMGMT_FREE, dispatch_entry<OSSL_FUNC_keymgmt_free_fn>(key_free)},
    {OSSL_FUNC_KEYMGMT_HAS, dispatch_entry<OSSL_FUNC_keymgmt_has_fn>(key_has)},
    {OSSL_FUNC_KEYMGMT_IMPORT, dispatch_entry<OSSL_FUNC_keymgmt_import_fn>(key_import)},
    {OSSL_FUNC_KEYMGMT_IMPORT_TYPES,
     dispatch_entry<OSSL_FUNC_keymgmt_import_types_fn>(key_import_types<Type>)},
    {OSSL_FUNC_KEYMGMT_MATCH, dispatch_entry<OSSL_FUNC_keymgmt_match_fn>(key_match)},
    {OSSL_FUNC_KEYMGMT_GET_PARAMS, dispatch_entry<OSSL_FUNC_keymgmt_get_params_fn>(key_get_params)},
    {OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS,
     dispatch_entry<OSSL_FUNC_keymgmt_gettable_params_fn>(key_gettable_params<Type>)},
    {OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME,
     dispatch_entry<OSSL_FUNC_keymgmt_query_operation_name_fn>(key_query_operation_name<Type>)},
    {0, nullptr},
};

}  // namespace

const char* key_type_name(KeyType type) noexcept {
    switch (type) {
        case KeyType::rsa:
            return "RSA";
        case KeyType::ec:
            return "EC";
        case KeyType::ed25519:
            return "ED25519";
    }
    return "";
}

// The names repeat the default provider's aliases, so that libcrypto treats keys of both
// providers as the same key type when it compares them.
const OSSL_ALGORITHM keymgmt_algorithms[] = {
    {"RSA:rsaEncryption:1.2.840.113549.1.1.1", provider_query, keymgmt_functions<KeyType::rsa>,
     "RSA public key with a private key in the key process"},
    {"EC:id-ecPublicKey:1.2.840.10045.2.1", provider_query, keymgmt_functions<KeyType::ec>,
     "EC public key with a private key in the key process"},
    {"ED25519:1.3.101.112", provider_query, keymgmt_functions<KeyType::ed25519>,
     "Ed25519 public key with a private key in the key process"},
    {nullptr, nullptr, nullptr, nullptr},
};

}  // namespace cloister::ossl
