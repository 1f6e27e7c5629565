#include "pkcs11/token.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <utility>

#include "core/error.h"

namespace cloister::pkcs11 {
namespace {

struct SlotDescription {
    CK_SLOT_ID id = 0;
    CK_SLOT_INFO slot{};
    CK_TOKEN_INFO token{};
};

bool matches(const std::optional<std::string>& expected, const std::string& actual) {
    return !expected || *expected == actual;
}

bool token_matches(const Uri& uri, const SlotDescription& found) {
    return matches(uri.token, padded_text(found.token.label)) &&
           matches(uri.manufacturer, padded_text(found.token.manufacturerID)) &&
           matches(uri.model, padded_text(found.token.model)) &&
           matches(uri.serial, padded_text(found.token.serialNumber)) &&
           matches(uri.slot_description, padded_text(found.slot.slotDescription)) &&
           matches(uri.slot_manufacturer, padded_text(found.slot.manufacturerID)) &&
           (!uri.slot_id || *uri.slot_id == found.id);
}

// Returns the reason the module does not match the library attributes of uri, or "".
std::string library_mismatch(const Module& module, const Uri& uri) {
    CK_INFO info{};
    check_rv(module.api().C_GetInfo(&info), "C_GetInfo");
    const std::pair<unsigned, unsigned> version{info.libraryVersion.major,
                                                info.libraryVersion.minor};
    if (!matches(uri.library_manufacturer, padded_text(info.manufacturerID)) ||
        !matches(uri.library_description, padded_text(info.libraryDescription)) ||
        (uri.library_version && *uri.library_version != version)) {
        return fmt::format(
            "the module {} is \"{}\" {}.{} by \"{}\", which the library "
            "attributes of the URI exclude",
            module.path().string(), padded_text(info.libraryDescription), version.first,
            version.second, padded_text(info.manufacturerID));
    }
    return {};
}

// Describes every initialised token, each as "'label' (serial S, model M, slot N)".
std::string list_tokens(const std::vector<SlotDescription>& slots) {
    std::string text;
    for (const SlotDescription& found : slots) {
        text += text.empty() ? "" : ", ";
        text += fmt::format("'{}' (serial {}, model {}, slot {})", padded_text(found.token.label),
                            padded_text(found.token.serialNumber), padded_text(found.token.model),
                            found.id);
    }
    return text.empty() ? "none" : text;
}

std::vector<SlotDescription> describe_slots(const CK_FUNCTION_LIST& api) {
    CK_ULONG count = 0;
    check_rv(api.C_GetSlotList(CK_TRUE, nullptr, &count), "C_GetSlotList");
    std::vector<CK_SLOT_ID> ids(count);
    check_rv(api.C_GetSlotList(CK_TRUE, ids.data(), &count), "C_GetSlotList");
    ids.resize(count);

    std::vector<SlotDescription> slots;
    for (const CK_SLOT_ID id : ids) {
        SlotDescription found;
        found.id = id;
        if (api.C_GetSlotInfo(id, &found.slot) != CKR_OK ||
            api.C_GetTokenInfo(id, &found.token) != CKR_OK) {
            continue;  // the token went away between the calls
        }
        // An uninitialised token (SoftHSM's free slot) has no key and no label.
        if ((found.token.flags & CKF_TOKEN_INITIALIZED) != 0) {
            slots.push_back(found);
        }
    }
    return slots;
}

}  // namespace

TokenSlot find_token(const Module& module, const Uri& uri) {
    if (const std::string mismatch = library_mismatch(module, uri); !mismatch.empty()) {
        throw Error(ErrorKind::config, mismatch);
    }
    const std::vector<SlotDescription> slots = describe_slots(module.api());
    std::vector<const SlotDescription*> chosen;
    for (const SlotDescription& found : slots) {
        if (token_matches(uri, found)) {
            chosen.push_back(&found);
        }
    }
    if (chosen.size() != 1) {
        throw Error(ErrorKind::config,
                    fmt::format("{} tokens of module {} match {}; expected one. Tokens present: "
                                "{}",
                                chosen.empty() ? "no" : std::to_string(chosen.size()),
                                module.path().string(), uri.describe(), list_tokens(slots)));
    }
    const SlotDescription& found = *chosen.front();
    return {found.id, padded_text(found.token.label), padded_text(found.token.serialNumber)};
}

SessionPool::SessionPool(const CK_FUNCTION_LIST& api, CK_SLOT_ID slot, std::size_t count)
    : api_(api) {
    all_.reserve(count);
    for (std::size_t i = 0; i < count; ++i) {
        CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
        const CK_RV rv = api_.C_OpenSession(slot, CKF_SERIAL_SESSION, nullptr, nullptr, &session);
        if (rv != CKR_OK) {
            for (const CK_SESSION_HANDLE opened : all_) {
                api_.C_CloseSession(opened);
            }
            check_rv(rv, fmt::format("C_OpenSession (session {} of {})", i + 1, count));
        }
        all_.push_back(session);
    }
    free_ = all_;
}

SessionPool::~SessionPool() {
    for (const CK_SESSION_HANDLE session : all_) {
        api_.C_CloseSession(session);
    }
}

SessionPool::Lease SessionPool::acquire() {
    std::unique_lock lock(mutex_);
    returned_.wait(lock, [this] { return !free_.empty(); });
    const CK_SESSION_HANDLE session = free_.back();
    free_.pop_back();
    return Lease(*this, session);
}

void SessionPool::give_back(CK_SESSION_HANDLE handle) {
    {
        const std::lock_guard lock(mutex_);
        free_.push_back(handle);
    }
    returned_.notify_one();
}

bool is_pin_rejection(CK_RV rv) {
    return rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LOCKED || rv == CKR_PIN_EXPIRED ||
           rv == CKR_PIN_INVALID || rv == CKR_PIN_LEN_RANGE;
}

CK_RV Login::log_in(const SecretBytes& pin) {
    // C_Login takes a non-const pointer, but the module only reads the PIN through it.
    auto* pin_bytes = const_cast<CK_UTF8CHAR*>(pin.view().data());
    CK_RV rv = api_.C_Login(session_, CKU_USER, pin_bytes, pin.size());
    if (rv == CKR_USER_ALREADY_LOGGED_IN) {
        rv = CKR_OK;
    }
    logged_in_ = rv == CKR_OK;
    return rv;
}

Login::~Login() {
    if (!logged_in_) {
        return;
    }
    const CK_RV rv = api_.C_Logout(session_);
    if (rv != CKR_OK && !needs_reopen(rv)) {
        spdlog::debug("C_Logout failed: {}", rv_name(rv));
    }
}

Error login_error(const std::string& token_name, CK_RV rv) {
    if (is_pin_rejection(rv)) {
        return Error(ErrorKind::config,
                     fmt::format("login to token '{}' failed: {}: the token rejected the PIN. "
                                 "cloister does not retry a rejected PIN, because tokens lock "
                                 "it after a few wrong attempts; correct the PIN and restart",
                                 token_name, rv_name(rv)));
    }
    return Error(ErrorKind::crypto,
                 fmt::format("C_Login to token '{}' failed: {}", token_name, rv_name(rv)));
}

}  // namespace cloister::pkcs11
