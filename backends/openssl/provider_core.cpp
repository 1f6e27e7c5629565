// Provider entry point, operation query and error strings.
#include <openssl/core_dispatch.h>
#include <openssl/err.h>

#include <array>
#include <new>

#include "backends/openssl/provider.h"

namespace cloister::ossl {
namespace {

struct ReasonText {
    ProviderReason reason;
    const char* text;
};

constexpr std::array<ReasonText, 15> reason_texts{{
    {ProviderReason::no_key_channel, "no key channel in this process"},
    {ProviderReason::key_channel_closed, "key channel closed"},
    {ProviderReason::key_channel_failed, "key channel failed"},
    {ProviderReason::key_operation_timed_out, "key operation timed out"},
    {ProviderReason::key_operation_rejected, "key operation rejected"},
    {ProviderReason::key_operation_failed, "key operation failed"},
    {ProviderReason::missing_key_index, "missing key index"},
    {ProviderReason::invalid_key_parameter, "invalid key parameter"},
    {ProviderReason::unsupported_digest, "unsupported digest"},
    {ProviderReason::unsupported_padding, "unsupported padding mode"},
    {ProviderReason::unsupported_salt_length, "unsupported salt length"},
    {ProviderReason::message_too_long, "message too long"},
    {ProviderReason::signature_too_long, "signature too long"},
    {ProviderReason::internal_error, "internal error"},
    {ProviderReason::missing_client_version, "missing TLS client version"},
}};

// Library name, every reason, and the terminating entry.
using StringTable = std::array<ERR_STRING_DATA, reason_texts.size() + 2>;

// Allocates an error library code and loads its strings, so that messages read
// "cloister key provider::key channel closed:<detail>".
int register_error_library() {
    static StringTable table{};
    const int library = ERR_get_next_error_library();
    table[0] = {ERR_PACK(library, 0, 0), "cloister key provider"};
    for (std::size_t i = 0; i < reason_texts.size(); ++i) {
        const auto reason = static_cast<int>(reason_texts[i].reason);
        table[i + 1] = {ERR_PACK(library, 0, reason), reason_texts[i].text};
    }
    table.back() = {0, nullptr};
    ERR_load_strings_const(table.data());
    return library;
}

int error_library() {
    static const int library = register_error_library();
    return library;
}

const OSSL_ALGORITHM* query_operation(void* /*provctx*/, int operation_id, int* no_cache) {
    *no_cache = 0;
    switch (operation_id) {
        case OSSL_OP_KEYMGMT:
            return keymgmt_algorithms;
        case OSSL_OP_SIGNATURE:
            return signature_algorithms;
        case OSSL_OP_ASYM_CIPHER:
            return asym_cipher_algorithms;
        default:
            return nullptr;
    }
}

void teardown(void* provctx) {
    delete static_cast<ProviderContext*>(provctx);
}

const OSSL_DISPATCH provider_functions[] = {
    {OSSL_FUNC_PROVIDER_TEARDOWN, dispatch_entry<OSSL_FUNC_provider_teardown_fn>(teardown)},
    {OSSL_FUNC_PROVIDER_QUERY_OPERATION,
     dispatch_entry<OSSL_FUNC_provider_query_operation_fn>(query_operation)},
    {0, nullptr},
};

}  // namespace

void raise_provider_error(ProviderReason reason, const char* detail) {
    ERR_raise_data(error_library(), static_cast<int>(reason), "%s", detail);
}

int provider_init(const OSSL_CORE_HANDLE* /*handle*/, const OSSL_DISPATCH* /*in*/,
                  const OSSL_DISPATCH** out, void** provctx) {
    auto* context = new (std::nothrow) ProviderContext{};
    if (context == nullptr) {
        return 0;
    }
    error_library();
    *out = provider_functions;
    *provctx = context;
    return 1;
}

}  // namespace cloister::ossl
