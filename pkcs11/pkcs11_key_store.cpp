#include "pkcs11/pkcs11_key_store.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/error.h"
#include "pkcs11/pin.h"
#include "pkcs11/uri.h"

namespace cloister::pkcs11 {
namespace {

// The PIN is in this process's memory from now on. The sandbox applies the same two settings
// later; doing it here also covers a crash during loading and a start without the sandbox.
void disable_core_dumps() {
    const rlimit no_core{0, 0};
    if (::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 || ::setrlimit(RLIMIT_CORE, &no_core) != 0) {
        throw_system_error("disabling core dumps before reading a PKCS#11 PIN");
    }
}

// The URI without its query, for messages; the text as written may contain a PIN.
std::string describe_uri(const std::string& text) {
    try {
        return parse_uri(text).describe();
    } catch (const Error&) {
        return "an invalid PKCS#11 URI";
    }
}

SecretBytes take_pin(const KeyConfig& config, Uri& uri) {
    if (config.pin_file) {
        return read_pin_file(*config.pin_file);
    }
    if (!uri.pin_value) {
        throw Error(ErrorKind::config,
                    "no PIN: expected pin-file, or pin-value or pin-source in "
                    "the URI query");
    }
    spdlog::warn(
        "key '{}': the PIN is a pin-value in the config file, which every cloister "
        "process reads; a pin-file with mode 0600 keeps it in the key process alone",
        config.name);
    SecretBytes pin = std::move(*uri.pin_value);
    uri.pin_value.reset();
    return pin;
}

}  // namespace

Pkcs11KeyStore::Pkcs11KeyStore(const std::vector<KeyConfig>& keys, std::size_t sessions_per_token)
    : sessions_per_token_(sessions_per_token) {
    disable_core_dumps();
    keys_.reserve(keys.size());
    for (const KeyConfig& config : keys) {
        try {
            add(config);
        } catch (const Error& error) {
            throw Error(ErrorKind::config, fmt::format("key '{}' ({}): {}", config.name,
                                                       describe_uri(config.uri), error.what()));
        }
    }
}

Pkcs11KeyStore::~Pkcs11KeyStore() {
    keys_.clear();
    // Each module logs out, closes its sessions and calls C_Finalize.
    modules_.clear();
}

void Pkcs11KeyStore::add(const KeyConfig& config) {
    Uri uri = parse_uri(config.uri);
    SecretBytes pin = take_pin(config, uri);
    ModuleLink& module = module_for(config.module);
    const KeyLink& key = module.add_key(config.name, uri, std::move(pin));
    keys_.push_back({&module, &key});
}

ModuleLink& Pkcs11KeyStore::module_for(const std::filesystem::path& path) {
    for (const std::unique_ptr<ModuleLink>& module : modules_) {
        if (module->module().path() == path) {
            return *module;
        }
    }
    modules_.push_back(std::make_unique<ModuleLink>(path, sessions_per_token_));
    return *modules_.back();
}

const Pkcs11KeyStore::Entry& Pkcs11KeyStore::entry(std::size_t index) const {
    if (index >= keys_.size()) {
        throw Error(ErrorKind::policy, fmt::format("no key has index {}", index));
    }
    return keys_[index];
}

const std::string& Pkcs11KeyStore::key_name(std::size_t index) const {
    return entry(index).key->name;
}

KeyType Pkcs11KeyStore::key_type(std::size_t index) const {
    return entry(index).key->key.type;
}

std::vector<std::uint8_t> Pkcs11KeyStore::public_key(std::size_t index) const {
    return entry(index).key->key.public_key;
}

std::vector<std::uint8_t> Pkcs11KeyStore::sign(std::size_t index, keyproto::SignatureScheme scheme,
                                               std::span<const std::uint8_t> message) const {
    std::optional<std::chrono::nanoseconds> token_time;
    return sign_timed(index, scheme, message, token_time);
}

std::vector<std::uint8_t> Pkcs11KeyStore::sign_timed(
    std::size_t index, keyproto::SignatureScheme scheme, std::span<const std::uint8_t> message,
    std::optional<std::chrono::nanoseconds>& token_time) const {
    const Entry& found = entry(index);
    const std::vector<SignPlan>& plans = found.key->plans;
    const auto plan = std::find_if(plans.begin(), plans.end(), [scheme](const SignPlan& candidate) {
        return candidate.scheme->scheme == scheme;
    });
    if (plan == plans.end()) {
        throw Error(ErrorKind::policy,
                    fmt::format("key '{}' cannot sign scheme 0x{:04x}: its token does not offer "
                                "or allow the mechanism",
                                found.key->name, static_cast<std::uint16_t>(scheme)));
    }
    return found.module->sign(*found.key, *plan, message, token_time);
}

std::vector<std::uint16_t> Pkcs11KeyStore::supported_schemes(std::size_t index) const {
    std::vector<std::uint16_t> schemes;
    for (const SignPlan& plan : entry(index).key->plans) {
        schemes.push_back(static_cast<std::uint16_t>(plan.scheme->scheme));
    }
    return schemes;
}

}  // namespace cloister::pkcs11
