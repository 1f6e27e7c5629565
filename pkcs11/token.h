// A token in a slot: finding it by URI, its sessions and its login.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "pkcs11/cryptoki.h"
#include "pkcs11/module.h"
#include "pkcs11/secret.h"
#include "pkcs11/uri.h"

namespace cloister::pkcs11 {

// The slot of the token a URI selected.
struct TokenSlot {
    CK_SLOT_ID slot = 0;
    std::string label;   // CK_TOKEN_INFO label, trailing blanks removed
    std::string serial;  // CK_TOKEN_INFO serialNumber
};

// Finds the one slot whose token matches the token, slot and library attributes of uri.
// Throws Error(config) when none or several match, listing the tokens present with their
// label, serial, model and slot id.
TokenSlot find_token(const Module& module, const Uri& uri);

// A fixed set of open sessions on one slot, each used by one thread at a time. The pool is
// as large as the number of threads that sign, so acquire() waits only when the caller sizes
// it wrongly.
class SessionPool {
  public:
    // Opens count read-only serial sessions (C_OpenSession). Throws Error(crypto).
    SessionPool(const CK_FUNCTION_LIST& api, CK_SLOT_ID slot, std::size_t count);
    SessionPool(const SessionPool&) = delete;
    SessionPool& operator=(const SessionPool&) = delete;
    SessionPool(SessionPool&&) = delete;
    SessionPool& operator=(SessionPool&&) = delete;
    // Closes every session (C_CloseSession); the return codes are ignored, because the
    // sessions may be gone already.
    ~SessionPool();

    // A session taken from the pool; the destructor gives it back.
    class Lease {
      public:
        Lease(SessionPool& pool, CK_SESSION_HANDLE handle) : pool_(&pool), handle_(handle) {}
        Lease(const Lease&) = delete;
        Lease& operator=(const Lease&) = delete;
        Lease(Lease&& other) noexcept : pool_(other.pool_), handle_(other.handle_) {
            other.pool_ = nullptr;
        }
        Lease& operator=(Lease&&) = delete;
        ~Lease() {
            if (pool_ != nullptr) {
                pool_->give_back(handle_);
            }
        }
        [[nodiscard]] CK_SESSION_HANDLE handle() const { return handle_; }

      private:
        SessionPool* pool_;
        CK_SESSION_HANDLE handle_;
    };

    // Takes a free session, waiting for one when all are in use.
    Lease acquire();

  private:
    void give_back(CK_SESSION_HANDLE handle);

    const CK_FUNCTION_LIST& api_;
    std::vector<CK_SESSION_HANDLE> all_;
    std::mutex mutex_;
    std::condition_variable returned_;
    std::vector<CK_SESSION_HANDLE> free_;  // guarded by mutex_
};

// The user login of this process on one token; the destructor logs out (C_Logout). PKCS#11
// keeps one login state per application and token, so every
// session of the pool is logged in while the session given here stays open.
class Login {
  public:
    Login(const CK_FUNCTION_LIST& api, CK_SESSION_HANDLE session) : api_(api), session_(session) {}
    Login(const Login&) = delete;
    Login& operator=(const Login&) = delete;
    Login(Login&&) = delete;
    Login& operator=(Login&&) = delete;
    ~Login();

    // C_Login as CKU_USER with pin. Returns the code, with CKR_USER_ALREADY_LOGGED_IN mapped
    // to CKR_OK. Nothing here retries: a token locks its PIN after a few wrong attempts.
    [[nodiscard]] CK_RV log_in(const SecretBytes& pin);

  private:
    const CK_FUNCTION_LIST& api_;
    CK_SESSION_HANDLE session_;
    bool logged_in_ = false;
};

// Returns the error for a failed login to token_name: Error(config) for a rejected PIN (see
// is_pin_rejection), Error(crypto) otherwise. The message never contains the PIN.
Error login_error(const std::string& token_name, CK_RV rv);

// True for the C_Login codes that mean the token rejected the PIN itself:
// CKR_PIN_INCORRECT, CKR_PIN_LOCKED, CKR_PIN_EXPIRED, CKR_PIN_INVALID, CKR_PIN_LEN_RANGE.
bool is_pin_rejection(CK_RV rv);

}  // namespace cloister::pkcs11
