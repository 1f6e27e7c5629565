// The PKCS#11 (Cryptoki) types, return codes and attribute reads that the key store uses.
//
// The types come from p11-kit's pkcs11.h (version 2.40 of the standard), which uses the
// standard names (CK_ATTRIBUTE::pValue ...) unless CRYPTOKI_GNU is defined.
#pragma once

#include <p11-kit/pkcs11.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace cloister::pkcs11 {

// Returns the name of rv ("CKR_PIN_INCORRECT"), or "CKR 0x000000a0" for a code not listed.
std::string rv_name(CK_RV rv);

// Returns the name of a mechanism ("CKM_RSA_PKCS_PSS"), or "CKM 0x..." for one not listed.
std::string mechanism_name(CK_MECHANISM_TYPE mechanism);

// Throws Error(crypto) "OPERATION failed: CKR_NAME" unless rv is CKR_OK.
void check_rv(CK_RV rv, std::string_view operation);

// True for the return codes after which the session, the login or the module's connection to
// the token is gone, so that the key store must reopen before it can sign again:
// CKR_USER_NOT_LOGGED_IN, CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED, CKR_DEVICE_REMOVED
// and CKR_TOKEN_NOT_PRESENT. Also CKR_DEVICE_ERROR, CKR_CRYPTOKI_NOT_INITIALIZED,
// CKR_OBJECT_HANDLE_INVALID and CKR_KEY_HANDLE_INVALID, which a remote module returns while
// its server restarts (p11-kit-client.so returned CKR_DEVICE_ERROR in the tests).
bool needs_reopen(CK_RV rv);

// Returns a blank-padded CK_TOKEN_INFO or CK_SLOT_INFO field without its trailing blanks.
std::string padded_text(const unsigned char* field, std::size_t size);

template <std::size_t N>
std::string padded_text(const unsigned char (&field)[N]) {
    return padded_text(field, N);
}

// The value of one attribute of an object: the bytes, or nullopt when the object does not
// have it (CKR_ATTRIBUTE_TYPE_INVALID) or keeps it secret (CKR_ATTRIBUTE_SENSITIVE).
struct AttributeValue {
    CK_RV rv = CKR_OK;
    std::optional<std::vector<std::uint8_t>> bytes;
};

// Reads one attribute with the two-call pattern of C_GetAttributeValue (length, then value).
AttributeValue read_attribute(const CK_FUNCTION_LIST& api, CK_SESSION_HANDLE session,
                              CK_OBJECT_HANDLE object, CK_ATTRIBUTE_TYPE type);

// Reads a fixed-size attribute (CK_ULONG, CK_BBOOL). Returns nullopt when the object does not
// have it; throws Error(crypto) for other failures.
template <typename T>
std::optional<T> read_scalar(const CK_FUNCTION_LIST& api, CK_SESSION_HANDLE session,
                             CK_OBJECT_HANDLE object, CK_ATTRIBUTE_TYPE type) {
    T value{};
    CK_ATTRIBUTE attribute{type, &value, sizeof(value)};
    const CK_RV rv = api.C_GetAttributeValue(session, object, &attribute, 1);
    if (rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_SENSITIVE) {
        return std::nullopt;
    }
    check_rv(rv, "C_GetAttributeValue");
    if (attribute.ulValueLen != sizeof(value)) {
        return std::nullopt;
    }
    return value;
}

}  // namespace cloister::pkcs11
