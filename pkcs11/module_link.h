// The key store's connection to one PKCS#11 module: its tokens, their keys, and reopening
// them after the module lost its sessions.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <vector>

#include "pkcs11/mechanisms.h"
#include "pkcs11/module.h"
#include "pkcs11/objects.h"
#include "pkcs11/secret.h"
#include "pkcs11/token.h"
#include "pkcs11/uri.h"

namespace cloister::pkcs11 {

// One token with its PIN, slot, sessions and login.
struct TokenLink {
    Uri uri;          // the URI of the first key on it; its token attributes select the slot
    SecretBytes pin;  // kept for the login after a reopen
    TokenSlot slot;
    std::unique_ptr<SessionPool> sessions;
    std::unique_ptr<Login> login;  // destroyed before sessions: C_Logout needs a session
    bool pin_rejected = false;     // the last login failed because of the PIN itself

    // Finds the slot again, opens count sessions and logs in. Throws Error.
    void open(const Module& module, std::size_t count);
    // Logs out and closes the sessions, ignoring errors.
    void close() noexcept;
};

// One private key on a token, and the mechanism that signs each scheme it serves.
struct KeyLink {
    std::string name;  // the [[key]] name
    Uri uri;
    TokenLink* token = nullptr;
    TokenKey key;  // the handle changes when the token is reopened
    std::vector<SignPlan> plans;
};

// Holds one module and every token key that uses it. Signing is safe from several threads.
// After a signature fails with a code for which needs_reopen() is true, the module is marked
// broken: the next request reopens the sessions (or, when that fails, finalises and
// initialises the module again), logs in, finds each key again by its URI and checks that its
// public key is unchanged. Requests that arrive while a reopen runs, or before the next
// attempt is due, fail at once. Failed attempts back off from 250 ms to 2 s. A PIN that the
// token rejects during a reopen stops all further attempts.
class ModuleLink {
  public:
    // Loads and initialises the module at path. Each token gets sessions_per_token sessions.
    ModuleLink(const std::filesystem::path& path, std::size_t sessions_per_token);
    ModuleLink(const ModuleLink&) = delete;
    ModuleLink& operator=(const ModuleLink&) = delete;
    ModuleLink(ModuleLink&&) = delete;
    ModuleLink& operator=(ModuleLink&&) = delete;
    // Logs out, closes the sessions, then finalises the module.
    ~ModuleLink();

    // Finds the token of uri (logging in with pin when it is new), finds the key, reads what
    // it may sign with, and checks each mechanism with a test signature verified against the
    // public key. Call before any sign(). Throws Error(config) with the reason.
    const KeyLink& add_key(const std::string& name, const Uri& uri, SecretBytes pin);

    // Signs message with key as plan prescribes, and sets token_time to the duration of the
    // token's signing calls once they ran. Throws Error(crypto) when the token fails or is
    // being reopened.
    [[nodiscard]] std::vector<std::uint8_t> sign(
        const KeyLink& key, const SignPlan& plan, std::span<const std::uint8_t> message,
        std::optional<std::chrono::nanoseconds>& token_time);

    [[nodiscard]] const Module& module() const { return module_; }

  private:
    using Clock = std::chrono::steady_clock;

    TokenLink& token_for(const Uri& uri, SecretBytes pin);
    void probe_mechanisms(KeyLink& link, CK_SESSION_HANDLE session);
    void check_test_signatures(const KeyLink& link, CK_SESSION_HANDLE session);

    void ensure_open();
    void mark_broken(const KeyLink& key, const char* call, CK_RV rv);
    void reopen();
    void reopen_sessions();
    void reinitialize();
    void open_token(TokenLink& token);
    void find_keys_again();
    // Counts the failed request and throws Error(crypto) naming the module and the reason.
    [[noreturn]] void throw_unavailable(const std::string& reason);

    Module module_;
    std::size_t sessions_per_token_;
    std::vector<std::unique_ptr<TokenLink>> tokens_;
    std::vector<std::unique_ptr<KeyLink>> keys_;

    // Shared by signing threads, exclusive while reopening.
    std::shared_timed_mutex mutex_;
    std::atomic<bool> broken_{false};
    std::atomic<std::uint64_t> failed_while_broken_{0};
    // Guarded by an exclusive lock on mutex_.
    bool pin_rejected_ = false;
    unsigned attempts_ = 0;
    std::chrono::milliseconds delay_{0};
    Clock::time_point next_attempt_;
    Clock::time_point broken_since_;
};

}  // namespace cloister::pkcs11
