// The built-in OpenSSL provider "cloister": key management, signature and RSA decryption
// operations for keys whose private half lives in the key process. docs/openssl-provider.md
// explains the rules.
#pragma once

#include <openssl/core.h>
#include <openssl/types.h>

#include <cstdint>

namespace cloister {
class KeyClient;
}

namespace cloister::ossl {

inline constexpr const char* provider_name = "cloister";
// Property query that fetches this provider's implementations.
inline constexpr const char* provider_query = "provider=cloister";
// Property query that fetches the default provider's implementations.
inline constexpr const char* default_query = "provider=default";
// OSSL_PARAM (unsigned int) that carries the key index on the key channel into an import.
inline constexpr const char* key_index_param = "cloister-key-index";

// State of one loaded instance of the provider, reached through
// OSSL_PROVIDER_get0_provider_ctx. Each process has its own copy after fork.
struct ProviderContext {
    // Library context of the provider. Public halves of keys are built there with the
    // default provider. The owner of the libctx sets it right after loading the provider.
    OSSL_LIB_CTX* libctx = nullptr;
    // Key channel of this process. It is null until TlsStack::use_key_client, and signing
    // fails until then.
    KeyClient* key_client = nullptr;
    // TLS SignatureScheme code point of the last signature the key process returned, 0 if
    // none since the last reset.
    std::uint16_t last_scheme = 0;
};

// OSSL_provider_init_fn, for OSSL_PROVIDER_add_builtin.
int provider_init(const OSSL_CORE_HANDLE* handle, const OSSL_DISPATCH* in,
                  const OSSL_DISPATCH** out, void** provctx);

// Algorithm tables, terminated by an entry with null names.
extern const OSSL_ALGORITHM keymgmt_algorithms[];
extern const OSSL_ALGORITHM signature_algorithms[];
extern const OSSL_ALGORITHM asym_cipher_algorithms[];

// Converts a provider function to a dispatch table entry. Fn is the OSSL_FUNC_*_fn type that
// the function id expects, so a function with the wrong signature does not compile.
template <typename Fn>
void (*dispatch_entry(Fn* function))() {
    return reinterpret_cast<void (*)()>(function);
}

// Reasons of the errors this provider puts on the OpenSSL error queue.
enum class ProviderReason : int {
    no_key_channel = 1,
    key_channel_closed,
    key_channel_failed,
    key_operation_timed_out,
    key_operation_rejected,
    key_operation_failed,
    missing_key_index,
    invalid_key_parameter,
    unsupported_digest,
    unsupported_padding,
    unsupported_salt_length,
    message_too_long,
    signature_too_long,
    internal_error,
    missing_client_version,
};

// Adds an error with reason and detail (shown after the reason text) to the error queue, so
// that the TLS connection's error log names the real cause.
void raise_provider_error(ProviderReason reason, const char* detail);

}  // namespace cloister::ossl
