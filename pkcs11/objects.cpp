#include "pkcs11/objects.h"

#include <fmt/format.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>

#include <algorithm>
#include <array>
#include <memory>
#include <optional>
#include <utility>

#include "core/error.h"

namespace cloister::pkcs11 {
namespace {

// Private keys listed at most in a "not found" message.
constexpr std::size_t max_listed_objects = 64;
// RSA sizes the key store accepts, as for keys in memory.
constexpr int min_rsa_bits = 2048;
constexpr int max_rsa_bits = 4096;
constexpr std::size_t ed25519_key_size = 32;

struct PkeyDeleter {
    void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
struct PkeyCtxDeleter {
    void operator()(EVP_PKEY_CTX* context) const { EVP_PKEY_CTX_free(context); }
};
struct ParamBuildDeleter {
    void operator()(OSSL_PARAM_BLD* builder) const { OSSL_PARAM_BLD_free(builder); }
};
struct ParamDeleter {
    void operator()(OSSL_PARAM* params) const { OSSL_PARAM_free(params); }
};
struct BignumDeleter {
    void operator()(BIGNUM* number) const { BN_free(number); }
};
struct ObjectDeleter {
    void operator()(ASN1_OBJECT* object) const { ASN1_OBJECT_free(object); }
};
struct OctetStringDeleter {
    void operator()(ASN1_OCTET_STRING* string) const { ASN1_OCTET_STRING_free(string); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDeleter>;
using Bytes = std::vector<std::uint8_t>;

[[noreturn]] void fail(const std::string& problem) {
    throw Error(ErrorKind::config, problem);
}

std::string last_openssl_error() {
    const unsigned long code = ERR_get_error();
    ERR_clear_error();
    if (code == 0) {
        return "no OpenSSL error recorded";
    }
    std::array<char, 256> buffer{};
    ERR_error_string_n(code, buffer.data(), buffer.size());
    return buffer.data();
}

// Runs C_FindObjectsInit, C_FindObjects and C_FindObjectsFinal for query. Returns at most
// limit handles.
std::vector<CK_OBJECT_HANDLE> find_objects(const CK_FUNCTION_LIST& api, CK_SESSION_HANDLE session,
                                           std::vector<CK_ATTRIBUTE>& query, std::size_t limit) {
    check_rv(api.C_FindObjectsInit(session, query.data(), query.size()), "C_FindObjectsInit");
    std::vector<CK_OBJECT_HANDLE> found(limit);
    CK_ULONG count = 0;
    const CK_RV rv = api.C_FindObjects(session, found.data(), found.size(), &count);
    const CK_RV final_rv = api.C_FindObjectsFinal(session);
    check_rv(rv, "C_FindObjects");
    check_rv(final_rv, "C_FindObjectsFinal");
    found.resize(count);
    return found;
}

std::string read_label(const CK_FUNCTION_LIST& api, CK_SESSION_HANDLE session,
                       CK_OBJECT_HANDLE object) {
    const AttributeValue value = read_attribute(api, session, object, CKA_LABEL);
    return value.bytes ? std::string(value.bytes->begin(), value.bytes->end()) : std::string();
}

Bytes read_id(const CK_FUNCTION_LIST& api, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object) {
    return read_attribute(api, session, object, CKA_ID).bytes.value_or(Bytes{});
}

Bytes require_attribute(const CK_FUNCTION_LIST& api, CK_SESSION_HANDLE session,
                        CK_OBJECT_HANDLE object, CK_ATTRIBUTE_TYPE type, const char* name) {
    AttributeValue value = read_attribute(api, session, object, type);
    if (!value.bytes || value.bytes->empty()) {
        fail(fmt::format("cannot read {} ({})", name, rv_name(value.rv)));
    }
    return std::move(*value.bytes);
}

// "'web key/1' (id %01)", as an object appears in messages and in URIs.
std::string describe_object(const std::string& label, const Bytes& id) {
    return fmt::format("object={} (id={})", label.empty() ? "(no label)" : label,
                       id.empty() ? "(none)" : format_id(id));
}

// Lists the objects sorted by label and id, because tokens return them in any order.
std::string list_private_keys(const CK_FUNCTION_LIST& api, CK_SESSION_HANDLE session,
                              const std::vector<CK_OBJECT_HANDLE>& handles) {
    if (handles.empty()) {
        return "none";
    }
    std::vector<std::pair<std::string, Bytes>> objects;
    for (const CK_OBJECT_HANDLE handle : handles) {
        objects.emplace_back(read_label(api, session, handle), read_id(api, session, handle));
    }
    std::sort(objects.begin(), objects.end());
    std::string text;
    for (const auto& [label, id] : objects) {
        text += text.empty() ? "" : ", ";
        text += describe_object(label, id);
    }
    return text;
}

std::vector<CK_OBJECT_HANDLE> find_matching(const CK_FUNCTION_LIST& api, CK_SESSION_HANDLE session,
                                            const Uri& uri, std::size_t limit) {
    CK_OBJECT_CLASS key_class = CKO_PRIVATE_KEY;
    std::vector<CK_ATTRIBUTE> query{{CKA_CLASS, &key_class, sizeof(key_class)}};
    std::string label = uri.object.value_or("");
    Bytes id = uri.id.value_or(Bytes{});
    if (uri.object) {
        query.push_back({CKA_LABEL, label.data(), label.size()});
    }
    if (uri.id) {
        query.push_back({CKA_ID, id.data(), id.size()});
    }
    return find_objects(api, session, query, limit);
}

PkeyPtr rsa_public_key(const CK_FUNCTION_LIST& api, CK_SESSION_HANDLE session,
                       CK_OBJECT_HANDLE key) {
    const Bytes modulus = require_attribute(api, session, key, CKA_MODULUS, "CKA_MODULUS");
    const Bytes exponent =
        require_attribute(api, session, key, CKA_PUBLIC_EXPONENT, "CKA_PUBLIC_EXPONENT");
    const std::unique_ptr<BIGNUM, BignumDeleter> n(
        BN_bin2bn(modulus.data(), static_cast<int>(modulus.size()), nullptr));
    const std::unique_ptr<BIGNUM, BignumDeleter> e(
        BN_bin2bn(exponent.data(), static_cast<int>(exponent.size()), nullptr));
    const std::unique_ptr<OSSL_PARAM_BLD, ParamBuildDeleter> builder(OSSL_PARAM_BLD_new());
    if (!n || !e || !builder ||
        OSSL_PARAM_BLD_push_BN(builder.get(), OSSL_PKEY_PARAM_RSA_N, n.get()) != 1 ||
        OSSL_PARAM_BLD_push_BN(builder.get(), OSSL_PKEY_PARAM_RSA_E, e.get()) != 1) {
        fail("building the RSA public key failed: " + last_openssl_error());
    }
    const std::unique_ptr<OSSL_PARAM, ParamDeleter> params(OSSL_PARAM_BLD_to_param(builder.get()));
    const std::unique_ptr<EVP_PKEY_CTX, PkeyCtxDeleter> context(
        EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr));
    EVP_PKEY* result = nullptr;
    if (!params || !context || EVP_PKEY_fromdata_init(context.get()) != 1 ||
        EVP_PKEY_fromdata(context.get(), &result, EVP_PKEY_PUBLIC_KEY, params.get()) != 1) {
        fail("building the RSA public key failed: " + last_openssl_error());
    }
    return PkeyPtr(result);
}

// The curve of CKA_EC_PARAMS: a named-curve OID (RFC 5480), or for Edwards keys the
// PrintableString "edwards25519" that pkcs11-tool writes (OpenSC 0.23). Returns the
// OpenSSL NID, or NID_undef.
int curve_of(const Bytes& parameters) {
    constexpr std::string_view edwards_name = "edwards25519";
    if (parameters.size() == edwards_name.size() + 2 && parameters[0] == V_ASN1_PRINTABLESTRING &&
        std::equal(edwards_name.begin(), edwards_name.end(), parameters.begin() + 2)) {
        return NID_ED25519;
    }
    const unsigned char* in = parameters.data();
    const std::unique_ptr<ASN1_OBJECT, ObjectDeleter> object(
        d2i_ASN1_OBJECT(nullptr, &in, static_cast<long>(parameters.size())));
    ERR_clear_error();
    return object ? OBJ_obj2nid(object.get()) : NID_undef;
}

// CKA_EC_POINT is a DER OCTET STRING around the point (as pkcs11-tool writes it), but some
// tokens store the bare point (SoftHSM 2.6 for imported Ed25519 keys). raw_size is the size of
// a bare point on the curve.
Bytes unwrap_point(const Bytes& stored, std::size_t raw_size) {
    if (stored.size() == raw_size) {
        return stored;
    }
    const unsigned char* in = stored.data();
    const std::unique_ptr<ASN1_OCTET_STRING, OctetStringDeleter> string(
        d2i_ASN1_OCTET_STRING(nullptr, &in, static_cast<long>(stored.size())));
    ERR_clear_error();
    if (!string || in != stored.data() + stored.size() ||
        static_cast<std::size_t>(ASN1_STRING_length(string.get())) != raw_size) {
        fail(
            fmt::format("CKA_EC_POINT of {} bytes is neither a point nor an OCTET STRING "
                        "around one",
                        stored.size()));
    }
    const unsigned char* point = ASN1_STRING_get0_data(string.get());
    return {point, point + raw_size};
}

// The public key object that belongs to a private key: same CKA_ID, or the same label when
// the private key has no id. Returns nullopt when the token has none.
std::optional<CK_OBJECT_HANDLE> find_public_object(const CK_FUNCTION_LIST& api,
                                                   CK_SESSION_HANDLE session, const TokenKey& key) {
    CK_OBJECT_CLASS key_class = CKO_PUBLIC_KEY;
    std::string label = key.label;
    Bytes id = key.id;
    std::vector<CK_ATTRIBUTE> query{{CKA_CLASS, &key_class, sizeof(key_class)}};
    if (!id.empty()) {
        query.push_back({CKA_ID, id.data(), id.size()});
    } else {
        query.push_back({CKA_LABEL, label.data(), label.size()});
    }
    const std::vector<CK_OBJECT_HANDLE> found = find_objects(api, session, query, 2);
    if (found.size() > 1) {
        fail(
            "several public key objects have the id and label of this private key; "
            "expected at most one. Give the public key the id of its private key only");
    }
    if (found.empty()) {
        return std::nullopt;
    }
    return found.front();
}

PkeyPtr ec_public_key(int nid, const Bytes& point) {
    const char* group = OBJ_nid2sn(nid);
    const std::unique_ptr<OSSL_PARAM_BLD, ParamBuildDeleter> builder(OSSL_PARAM_BLD_new());
    if (!builder ||
        OSSL_PARAM_BLD_push_utf8_string(builder.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, 0) != 1 ||
        OSSL_PARAM_BLD_push_octet_string(builder.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(),
                                         point.size()) != 1) {
        fail("building the EC public key failed: " + last_openssl_error());
    }
    const std::unique_ptr<OSSL_PARAM, ParamDeleter> params(OSSL_PARAM_BLD_to_param(builder.get()));
    const std::unique_ptr<EVP_PKEY_CTX, PkeyCtxDeleter> context(
        EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
    EVP_PKEY* result = nullptr;
    if (!params || !context || EVP_PKEY_fromdata_init(context.get()) != 1 ||
        EVP_PKEY_fromdata(context.get(), &result, EVP_PKEY_PUBLIC_KEY, params.get()) != 1) {
        fail("the token's EC public point is invalid: " + last_openssl_error());
    }
    return PkeyPtr(result);
}

// Returns a null key when the token has no public key object for key, because an EC or Ed25519
// private key object does not carry its public point.
PkeyPtr curve_public_key(const CK_FUNCTION_LIST& api, CK_SESSION_HANDLE session, TokenKey& key) {
    const Bytes parameters =
        require_attribute(api, session, key.handle, CKA_EC_PARAMS, "CKA_EC_PARAMS");
    const int nid = curve_of(parameters);
    const bool edwards = key.type == KeyType::ed25519;
    if (edwards ? nid != NID_ED25519 : nid != NID_X9_62_prime256v1 && nid != NID_secp384r1) {
        fail(edwards ? "the Edwards curve is not Ed25519"
                     : fmt::format("the curve {} is not P-256 or P-384",
                                   nid == NID_undef ? "(unknown)" : OBJ_nid2sn(nid)));
    }
    key.description = edwards ? "Ed25519" : nid == NID_secp384r1 ? "EC P-384" : "EC P-256";
    const std::optional<CK_OBJECT_HANDLE> public_object = find_public_object(api, session, key);
    if (!public_object) {
        return nullptr;
    }
    const Bytes stored =
        require_attribute(api, session, *public_object, CKA_EC_POINT, "CKA_EC_POINT");
    if (edwards) {
        const Bytes point = unwrap_point(stored, ed25519_key_size);
        PkeyPtr result(
            EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, point.data(), point.size()));
        if (!result) {
            fail("the token's Ed25519 public key is invalid: " + last_openssl_error());
        }
        return result;
    }
    const std::size_t field_bytes = nid == NID_secp384r1 ? 48 : 32;
    return ec_public_key(nid, unwrap_point(stored, 1 + 2 * field_bytes));
}

// Uses CKA_PUBLIC_KEY_INFO when the token stores it, else the key material. Returns a null
// key for an EC or Ed25519 key whose public key the token does not hold.
PkeyPtr read_public_key(const CK_FUNCTION_LIST& api, CK_SESSION_HANDLE session, TokenKey& key) {
    const AttributeValue info = read_attribute(api, session, key.handle, CKA_PUBLIC_KEY_INFO);
    if (info.bytes && !info.bytes->empty()) {
        const unsigned char* in = info.bytes->data();
        PkeyPtr parsed(d2i_PUBKEY(nullptr, &in, static_cast<long>(info.bytes->size())));
        ERR_clear_error();
        if (parsed) {
            return parsed;
        }
    }
    if (key.type == KeyType::rsa) {
        return rsa_public_key(api, session, key.handle);
    }
    return curve_public_key(api, session, key);
}

void check_rsa_size(EVP_PKEY* public_key, TokenKey& key) {
    const int bits = EVP_PKEY_get_bits(public_key);
    if (bits < min_rsa_bits || bits > max_rsa_bits) {
        fail(fmt::format("the RSA key has {} bits; expected {} to {}", bits, min_rsa_bits,
                         max_rsa_bits));
    }
    key.description = fmt::format("RSA {}-bit", bits);
}

KeyType read_key_type(const CK_FUNCTION_LIST& api, CK_SESSION_HANDLE session,
                      CK_OBJECT_HANDLE handle) {
    const auto type = read_scalar<CK_KEY_TYPE>(api, session, handle, CKA_KEY_TYPE);
    if (type == CKK_RSA) {
        return KeyType::rsa;
    }
    if (type == CKK_EC) {
        return KeyType::ec;
    }
    if (type == CKK_EC_EDWARDS) {
        return KeyType::ed25519;
    }
    fail(fmt::format("the key type {} is not RSA, EC or EC_EDWARDS",
                     type ? fmt::format("0x{:x}", *type) : std::string("(unreadable)")));
}

void describe_key(const CK_FUNCTION_LIST& api, CK_SESSION_HANDLE session, TokenKey& key) {
    key.type = read_key_type(api, session, key.handle);
    if (read_scalar<CK_BBOOL>(api, session, key.handle, CKA_SIGN).value_or(CK_FALSE) != CK_TRUE) {
        fail("the key has CKA_SIGN false, so the token rejects signing with it");
    }
    // Such a key needs a CKU_CONTEXT_SPECIFIC login before every signature, which a server
    // cannot give without a person entering the PIN each time.
    if (read_scalar<CK_BBOOL>(api, session, key.handle, CKA_ALWAYS_AUTHENTICATE)
            .value_or(CK_FALSE) == CK_TRUE) {
        fail(
            "the key has CKA_ALWAYS_AUTHENTICATE true, so every signature would need its own "
            "login; use a key without it");
    }
    const PkeyPtr public_key = read_public_key(api, session, key);
    if (!public_key) {
        key.public_key.clear();
        return;
    }
    if (key.type == KeyType::rsa) {
        check_rsa_size(public_key.get(), key);
    }
    const int length = i2d_PUBKEY(public_key.get(), nullptr);
    key.public_key.resize(length > 0 ? static_cast<std::size_t>(length) : 0);
    unsigned char* out = key.public_key.data();
    if (length <= 0 || i2d_PUBKEY(public_key.get(), &out) != length) {
        fail("encoding the public key failed: " + last_openssl_error());
    }
}

}  // namespace

TokenKey find_private_key(const CK_FUNCTION_LIST& api, CK_SESSION_HANDLE session, const Uri& uri,
                          const std::string& token_name) {
    const std::vector<CK_OBJECT_HANDLE> matches = find_matching(api, session, uri, 8);
    if (matches.empty()) {
        const std::vector<CK_OBJECT_HANDLE> all =
            find_matching(api, session, Uri{}, max_listed_objects);
        fail(fmt::format("no private key on token '{}' matches {}; the private keys there: {}",
                         token_name, uri.describe(), list_private_keys(api, session, all)));
    }
    if (matches.size() > 1) {
        fail(fmt::format(
            "{} private keys on token '{}' match {}, so the reference is "
            "ambiguous: {}. Add id= or object= to select one",
            matches.size(), token_name, uri.describe(), list_private_keys(api, session, matches)));
    }
    TokenKey key;
    key.handle = matches.front();
    key.label = read_label(api, session, key.handle);
    key.id = read_id(api, session, key.handle);
    try {
        describe_key(api, session, key);
    } catch (const Error& error) {
        fail(fmt::format("{} on token '{}': {}", describe_object(key.label, key.id), token_name,
                         error.what()));
    }
    return key;
}

}  // namespace cloister::pkcs11
