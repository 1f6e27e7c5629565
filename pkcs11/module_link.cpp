#include "pkcs11/module_link.h"

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <mutex>
#include <string_view>
#include <utility>

#include "core/error.h"
#include "pkcs11/signing.h"

namespace cloister::pkcs11 {
namespace {

using std::chrono::milliseconds;

// The first reopen attempt runs at once. After a failed attempt the next one waits
// first_retry_delay, doubling up to max_retry_delay: one attempt every 2 s is light for a
// network HSM and restores service within 2 s of the token's return.
constexpr milliseconds first_retry_delay{250};
constexpr milliseconds max_retry_delay{2'000};
// How long a reopen waits for the signatures in progress to finish, and how long a request
// waits for a reopen that another thread runs before it fails.
constexpr milliseconds drain_wait{200};

constexpr std::string_view test_message = "cloister: PKCS#11 key check";

struct PkeyDeleter {
    void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};

std::string scheme_list(std::span<const SignPlan> plans) {
    std::string text;
    for (const SignPlan& plan : plans) {
        text += text.empty() ? "" : ", ";
        text +=
            keyproto::scheme_name(static_cast<std::uint16_t>(plan.scheme->scheme)).value_or("?");
        text += plan.digest_input ? "" : fmt::format(" ({})", mechanism_name(plan.mechanism));
    }
    return text;
}

void log_allowed(const std::string& name, const MechanismSupport& support) {
    if (!support.allowed) {
        spdlog::info("key '{}' has no CKA_ALLOWED_MECHANISMS attribute: no restriction", name);
    } else if (support.allowed->empty()) {
        spdlog::info(
            "key '{}' has an empty CKA_ALLOWED_MECHANISMS list, which means no "
            "restriction",
            name);
    } else {
        spdlog::info("key '{}' allows only these mechanisms (CKA_ALLOWED_MECHANISMS): {}", name,
                     describe_mechanisms(*support.allowed));
    }
}

}  // namespace

void TokenLink::open(const Module& module, std::size_t count) {
    slot = find_token(module, uri);
    sessions = std::make_unique<SessionPool>(module.api(), slot.slot, count);
    const SessionPool::Lease lease = sessions->acquire();
    login = std::make_unique<Login>(module.api(), lease.handle());
    const CK_RV rv = login->log_in(pin);
    pin_rejected = is_pin_rejection(rv);
    if (rv != CKR_OK) {
        throw login_error(slot.label, rv);
    }
}

void TokenLink::close() noexcept {
    login.reset();
    sessions.reset();
}

ModuleLink::ModuleLink(const std::filesystem::path& path, std::size_t sessions_per_token)
    : module_(path), sessions_per_token_(std::max<std::size_t>(1, sessions_per_token)) {
    module_.initialize();
    spdlog::info("PKCS#11 module {} initialised: {}", path.string(), module_.describe());
}

ModuleLink::~ModuleLink() {
    keys_.clear();
    for (const std::unique_ptr<TokenLink>& token : tokens_) {
        token->close();
    }
}

const KeyLink& ModuleLink::add_key(const std::string& name, const Uri& uri, SecretBytes pin) {
    auto link = std::make_unique<KeyLink>();
    link->name = name;
    link->uri = uri;
    link->token = &token_for(uri, std::move(pin));
    const SessionPool::Lease lease = link->token->sessions->acquire();
    link->key = find_private_key(module_.api(), lease.handle(), uri, link->token->slot.label);
    if (link->key.public_key.empty()) {
        spdlog::info(
            "key '{}' ({}): the token contains no public key for it, so the certificate is "
            "checked with a test signature instead of a public key comparison",
            name, link->key.description);
    }
    probe_mechanisms(*link, lease.handle());
    check_test_signatures(*link, lease.handle());
    keys_.push_back(std::move(link));
    return *keys_.back();
}

TokenLink& ModuleLink::token_for(const Uri& uri, SecretBytes pin) {
    const TokenSlot slot = find_token(module_, uri);
    for (const std::unique_ptr<TokenLink>& token : tokens_) {
        if (token->slot.slot != slot.slot) {
            continue;
        }
        if (!(token->pin == pin)) {
            throw Error(ErrorKind::config,
                        fmt::format("another key on token '{}' gives a different PIN; every key "
                                    "on one token needs the same PIN",
                                    slot.label));
        }
        return *token;
    }
    auto token = std::make_unique<TokenLink>();
    token->uri = uri;
    token->pin = std::move(pin);
    token->open(module_, sessions_per_token_);
    spdlog::info("PKCS#11 token '{}' (serial {}, slot {}): logged in, {} sessions open",
                 token->slot.label, token->slot.serial, token->slot.slot, sessions_per_token_);
    tokens_.push_back(std::move(token));
    return *tokens_.back();
}

void ModuleLink::probe_mechanisms(KeyLink& link, CK_SESSION_HANDLE session) {
    MechanismSupport support;
    support.token = read_sign_mechanisms(module_.api(), link.token->slot.slot);
    support.allowed = read_allowed_mechanisms(module_.api(), session, link.key.handle);
    log_allowed(link.name, support);
    link.plans = plan_schemes(link.key.type, support);
    if (link.plans.empty()) {
        throw Error(ErrorKind::config,
                    fmt::format("the key cannot sign any TLS signature scheme: the token signs "
                                "with {}, and the key allows {}",
                                describe_mechanisms(support.token),
                                support.allowed && !support.allowed->empty()
                                    ? describe_mechanisms(*support.allowed)
                                    : std::string("every mechanism")));
    }
    spdlog::info("key '{}' ({}) signs {}", link.name, link.key.description,
                 scheme_list(link.plans));
    if (link.key.type == KeyType::rsa && !has_pss(link.plans)) {
        spdlog::warn(
            "key '{}': the token cannot sign RSA-PSS with it (CKM_RSA_PKCS_PSS is "
            "missing or not allowed), and TLS 1.3 requires RSA-PSS for RSA keys, so "
            "vhosts with this key serve TLS 1.2 only",
            link.name);
    }
}

// Signs a test message with every plan and verifies it with the public key. A wrong
// mechanism, a token that ignores the PSS parameters, or a public key object of another
// private key then stops the start instead of failing handshakes. A key without a public key
// on the token is only signed with here, because the supervisor verifies with the certificate.
void ModuleLink::check_test_signatures(const KeyLink& link, CK_SESSION_HANDLE session) {
    const unsigned char* in = link.key.public_key.data();
    const std::unique_ptr<EVP_PKEY, PkeyDeleter> public_key(
        d2i_PUBKEY(nullptr, &in, static_cast<long>(link.key.public_key.size())));
    ERR_clear_error();
    const std::span<const std::uint8_t> message(
        reinterpret_cast<const std::uint8_t*>(test_message.data()), test_message.size());
    for (const SignPlan& plan : link.plans) {
        const auto name =
            keyproto::scheme_name(static_cast<std::uint16_t>(plan.scheme->scheme)).value_or("?");
        const TokenSignature result =
            sign_on_token(module_.api(), session, link.key.handle, plan, message);
        if (result.rv != CKR_OK) {
            throw Error(
                ErrorKind::config,
                fmt::format("the test signature for {} with {} failed: {} returned {}", name,
                            mechanism_name(plan.mechanism), result.call, rv_name(result.rv)));
        }
        if (link.key.public_key.empty()) {
            continue;
        }
        if (!public_key ||
            !verify_signature(public_key.get(), *plan.scheme, message, result.signature)) {
            throw Error(ErrorKind::config,
                        fmt::format("the test signature for {} does not verify with the public "
                                    "key read from the token, so the private key and that "
                                    "public key do not belong together",
                                    name));
        }
    }
}

std::vector<std::uint8_t> ModuleLink::sign(const KeyLink& key, const SignPlan& plan,
                                           std::span<const std::uint8_t> message,
                                           std::optional<std::chrono::nanoseconds>& token_time) {
    ensure_open();
    const std::shared_lock lock(mutex_, std::try_to_lock);
    if (!lock.owns_lock() || broken_.load()) {
        throw_unavailable("its sessions are being reopened");
    }
    const SessionPool::Lease lease = key.token->sessions->acquire();
    // Timed after the session lease, so that waiting for a free session is not token time.
    const auto start = Clock::now();
    TokenSignature result =
        sign_on_token(module_.api(), lease.handle(), key.key.handle, plan, message);
    token_time = Clock::now() - start;
    if (result.rv == CKR_OK) {
        return std::move(result.signature);
    }
    if (needs_reopen(result.rv)) {
        mark_broken(key, result.call, result.rv);
    }
    throw Error(ErrorKind::crypto,
                fmt::format("{} with key '{}' on token '{}' failed: {}", result.call, key.name,
                            key.token->slot.label, rv_name(result.rv)));
}

void ModuleLink::mark_broken(const KeyLink& key, const char* call, CK_RV rv) {
    bool expected = false;
    if (broken_.compare_exchange_strong(expected, true)) {
        // Only this thread writes broken_since_ now, and a reopen reads it under the
        // exclusive lock, which waits for this thread's shared lock.
        broken_since_ = Clock::now();
        spdlog::error(
            "{} with key '{}' on PKCS#11 token '{}' failed: {}; the token's sessions "
            "are reopened before the next signature",
            call, key.name, key.token->slot.label, rv_name(rv));
    }
}

void ModuleLink::ensure_open() {
    if (!broken_.load()) {
        return;
    }
    std::unique_lock lock(mutex_, std::defer_lock);
    if (!lock.try_lock_for(drain_wait)) {
        throw_unavailable("another thread is reopening it");
    }
    if (!broken_.load()) {
        return;
    }
    if (pin_rejected_) {
        throw_unavailable(
            "the token rejected the PIN at the last login; correct the PIN and "
            "restart cloister");
    }
    const auto now = Clock::now();
    if (now < next_attempt_) {
        const auto wait = std::chrono::ceil<milliseconds>(next_attempt_ - now);
        throw_unavailable(fmt::format("the next reopen attempt is in {} ms", wait.count()));
    }
    reopen();
}

void ModuleLink::reopen() {
    ++attempts_;
    try {
        try {
            reopen_sessions();
        } catch (const Error& error) {
            if (pin_rejected_) {
                throw;
            }
            spdlog::info(
                "reopening the sessions of PKCS#11 module {} failed ({}); initialising "
                "the module again",
                module_.path().string(), error.what());
            reinitialize();
        }
        find_keys_again();
    } catch (const Error& error) {
        delay_ = delay_.count() == 0 ? first_retry_delay : std::min(2 * delay_, max_retry_delay);
        next_attempt_ = Clock::now() + delay_;
        spdlog::error("reopening PKCS#11 module {} failed (attempt {}): {}{}",
                      module_.path().string(), attempts_, error.what(),
                      pin_rejected_ ? "; no further attempts"
                                    : fmt::format("; next attempt in {} ms", delay_.count()));
        throw_unavailable(fmt::format("reopening it failed: {}", error.what()));
    }
    const auto outage = std::chrono::duration_cast<milliseconds>(Clock::now() - broken_since_);
    spdlog::info(
        "PKCS#11 module {} reopened after {} ms and {} attempts; {} requests failed "
        "meanwhile",
        module_.path().string(), outage.count(), attempts_, failed_while_broken_.load());
    attempts_ = 0;
    delay_ = milliseconds(0);
    failed_while_broken_ = 0;
    broken_ = false;
}

void ModuleLink::reopen_sessions() {
    for (const std::unique_ptr<TokenLink>& token : tokens_) {
        token->close();
    }
    for (const std::unique_ptr<TokenLink>& token : tokens_) {
        open_token(*token);
    }
}

void ModuleLink::reinitialize() {
    for (const std::unique_ptr<TokenLink>& token : tokens_) {
        token->close();
    }
    const CK_RV rv = module_.finalize();
    if (rv != CKR_OK) {
        spdlog::debug("C_Finalize of {} before reinitialising returned {}", module_.path().string(),
                      rv_name(rv));
    }
    module_.initialize();
    for (const std::unique_ptr<TokenLink>& token : tokens_) {
        open_token(*token);
    }
}

void ModuleLink::open_token(TokenLink& token) {
    try {
        token.open(module_, sessions_per_token_);
    } catch (const Error&) {
        pin_rejected_ = pin_rejected_ || token.pin_rejected;
        throw;
    }
}

// NOTE: each key keeps the mechanism plans probed when its key process started; a token whose
// mechanisms changed while it was away needs a reload (SIGHUP) or a restart of cloister.
void ModuleLink::find_keys_again() {
    for (const std::unique_ptr<KeyLink>& key : keys_) {
        const SessionPool::Lease lease = key->token->sessions->acquire();
        const TokenKey found =
            find_private_key(module_.api(), lease.handle(), key->uri, key->token->slot.label);
        // NOTE: for a key without a public key on the token both sides are empty, so this
        // comparison does not detect another object under the same URI after the reopen.
        if (found.public_key != key->key.public_key) {
            throw Error(ErrorKind::config,
                        fmt::format("key '{}': the object that {} selects after the reopen has "
                                    "another public key than at start; it is not used",
                                    key->name, key->uri.describe()));
        }
        key->key.handle = found.handle;
    }
}

void ModuleLink::throw_unavailable(const std::string& reason) {
    failed_while_broken_.fetch_add(1);
    throw Error(ErrorKind::crypto, fmt::format("the PKCS#11 token of module {} is unavailable: {}",
                                               module_.path().string(), reason));
}

}  // namespace cloister::pkcs11
