#include "pkcs11/cryptoki.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <utility>

#include "core/error.h"

namespace cloister::pkcs11 {
namespace {

#define CLOISTER_NAMED(code)                     \
    std::pair<unsigned long, std::string_view> { \
        code, #code                              \
    }

// The return codes a key store meets, named as in p11-kit's pkcs11.h.
constexpr std::array rv_names{
    CLOISTER_NAMED(CKR_OK),
    CLOISTER_NAMED(CKR_HOST_MEMORY),
    CLOISTER_NAMED(CKR_SLOT_ID_INVALID),
    CLOISTER_NAMED(CKR_GENERAL_ERROR),
    CLOISTER_NAMED(CKR_FUNCTION_FAILED),
    CLOISTER_NAMED(CKR_ARGUMENTS_BAD),
    CLOISTER_NAMED(CKR_CANT_LOCK),
    CLOISTER_NAMED(CKR_ATTRIBUTE_SENSITIVE),
    CLOISTER_NAMED(CKR_ATTRIBUTE_TYPE_INVALID),
    CLOISTER_NAMED(CKR_DATA_INVALID),
    CLOISTER_NAMED(CKR_DATA_LEN_RANGE),
    CLOISTER_NAMED(CKR_DEVICE_ERROR),
    CLOISTER_NAMED(CKR_DEVICE_MEMORY),
    CLOISTER_NAMED(CKR_DEVICE_REMOVED),
    CLOISTER_NAMED(CKR_FUNCTION_CANCELED),
    CLOISTER_NAMED(CKR_FUNCTION_NOT_SUPPORTED),
    CLOISTER_NAMED(CKR_KEY_HANDLE_INVALID),
    CLOISTER_NAMED(CKR_KEY_SIZE_RANGE),
    CLOISTER_NAMED(CKR_KEY_TYPE_INCONSISTENT),
    CLOISTER_NAMED(CKR_KEY_FUNCTION_NOT_PERMITTED),
    CLOISTER_NAMED(CKR_MECHANISM_INVALID),
    CLOISTER_NAMED(CKR_MECHANISM_PARAM_INVALID),
    CLOISTER_NAMED(CKR_OBJECT_HANDLE_INVALID),
    CLOISTER_NAMED(CKR_OPERATION_ACTIVE),
    CLOISTER_NAMED(CKR_OPERATION_NOT_INITIALIZED),
    CLOISTER_NAMED(CKR_PIN_INCORRECT),
    CLOISTER_NAMED(CKR_PIN_INVALID),
    CLOISTER_NAMED(CKR_PIN_LEN_RANGE),
    CLOISTER_NAMED(CKR_PIN_EXPIRED),
    CLOISTER_NAMED(CKR_PIN_LOCKED),
    CLOISTER_NAMED(CKR_SESSION_CLOSED),
    CLOISTER_NAMED(CKR_SESSION_COUNT),
    CLOISTER_NAMED(CKR_SESSION_HANDLE_INVALID),
    CLOISTER_NAMED(CKR_SESSION_PARALLEL_NOT_SUPPORTED),
    CLOISTER_NAMED(CKR_TOKEN_NOT_PRESENT),
    CLOISTER_NAMED(CKR_TOKEN_NOT_RECOGNIZED),
    CLOISTER_NAMED(CKR_USER_ALREADY_LOGGED_IN),
    CLOISTER_NAMED(CKR_USER_NOT_LOGGED_IN),
    CLOISTER_NAMED(CKR_USER_PIN_NOT_INITIALIZED),
    CLOISTER_NAMED(CKR_USER_TYPE_INVALID),
    CLOISTER_NAMED(CKR_USER_ANOTHER_ALREADY_LOGGED_IN),
    CLOISTER_NAMED(CKR_USER_TOO_MANY_TYPES),
    CLOISTER_NAMED(CKR_BUFFER_TOO_SMALL),
    CLOISTER_NAMED(CKR_CRYPTOKI_NOT_INITIALIZED),
    CLOISTER_NAMED(CKR_CRYPTOKI_ALREADY_INITIALIZED),
};

constexpr std::array mechanism_names{
    CLOISTER_NAMED(CKM_RSA_PKCS),
    CLOISTER_NAMED(CKM_RSA_X_509),
    CLOISTER_NAMED(CKM_RSA_PKCS_PSS),
    CLOISTER_NAMED(CKM_SHA1_RSA_PKCS),
    CLOISTER_NAMED(CKM_SHA256_RSA_PKCS),
    CLOISTER_NAMED(CKM_SHA384_RSA_PKCS),
    CLOISTER_NAMED(CKM_SHA512_RSA_PKCS),
    CLOISTER_NAMED(CKM_SHA1_RSA_PKCS_PSS),
    CLOISTER_NAMED(CKM_SHA256_RSA_PKCS_PSS),
    CLOISTER_NAMED(CKM_SHA384_RSA_PKCS_PSS),
    CLOISTER_NAMED(CKM_SHA512_RSA_PKCS_PSS),
    CLOISTER_NAMED(CKM_ECDSA),
    CLOISTER_NAMED(CKM_ECDSA_SHA1),
    CLOISTER_NAMED(CKM_ECDSA_SHA256),
    CLOISTER_NAMED(CKM_ECDSA_SHA384),
    CLOISTER_NAMED(CKM_ECDSA_SHA512),
    CLOISTER_NAMED(CKM_EDDSA),
};

#undef CLOISTER_NAMED

template <std::size_t N>
std::string find_name(const std::array<std::pair<unsigned long, std::string_view>, N>& names,
                      unsigned long code, std::string_view prefix) {
    const auto* found = std::find_if(names.begin(), names.end(),
                                     [code](const auto& entry) { return entry.first == code; });
    if (found == names.end()) {
        return fmt::format("{} 0x{:08x}", prefix, code);
    }
    return std::string(found->second);
}

}  // namespace

std::string rv_name(CK_RV rv) {
    return find_name(rv_names, rv, "CKR");
}

std::string mechanism_name(CK_MECHANISM_TYPE mechanism) {
    return find_name(mechanism_names, mechanism, "CKM");
}

void check_rv(CK_RV rv, std::string_view operation) {
    if (rv != CKR_OK) {
        throw Error(ErrorKind::crypto, fmt::format("{} failed: {}", operation, rv_name(rv)));
    }
}

bool needs_reopen(CK_RV rv) {
    switch (rv) {
        case CKR_USER_NOT_LOGGED_IN:
        case CKR_SESSION_HANDLE_INVALID:
        case CKR_SESSION_CLOSED:
        case CKR_DEVICE_REMOVED:
        case CKR_TOKEN_NOT_PRESENT:
        case CKR_DEVICE_ERROR:
        case CKR_CRYPTOKI_NOT_INITIALIZED:
        case CKR_OBJECT_HANDLE_INVALID:
        case CKR_KEY_HANDLE_INVALID:
            return true;
        default:
            return false;
    }
}

std::string padded_text(const unsigned char* field, std::size_t size) {
    std::string text(reinterpret_cast<const char*>(field), size);
    const std::size_t end = text.find_last_not_of(' ');
    text.resize(end == std::string::npos ? 0 : end + 1);
    return text;
}

AttributeValue read_attribute(const CK_FUNCTION_LIST& api, CK_SESSION_HANDLE session,
                              CK_OBJECT_HANDLE object, CK_ATTRIBUTE_TYPE type) {
    CK_ATTRIBUTE attribute{type, nullptr, 0};
    CK_RV rv = api.C_GetAttributeValue(session, object, &attribute, 1);
    if (rv != CKR_OK || attribute.ulValueLen == CK_UNAVAILABLE_INFORMATION) {
        return {rv, std::nullopt};
    }
    std::vector<std::uint8_t> bytes(attribute.ulValueLen);
    attribute.pValue = bytes.data();
    rv = api.C_GetAttributeValue(session, object, &attribute, 1);
    if (rv != CKR_OK) {
        return {rv, std::nullopt};
    }
    bytes.resize(attribute.ulValueLen);
    return {rv, std::move(bytes)};
}

}  // namespace cloister::pkcs11
