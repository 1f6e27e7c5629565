// Fuzz target for the config loader: each input is the text of a config file, given to
// parse_config.
//
// Besides crashes and sanitizer reports, the target aborts when parse_config throws anything
// but Error(config) with a message that starts with the file name. It also aborts when an
// accepted config breaks the promises of core/config.h: at least one listener, key and vhost,
// exactly one default vhost, TLS versions in order, and every certificate naming a key.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "core/config.h"
#include "core/error.h"

namespace {

constexpr const char* source_name = "fuzz.toml";

void require(bool condition, const char* property) {
    if (!condition) {
        std::fprintf(stderr, "config_fuzz: property failed: %s\n", property);
        std::abort();
    }
}

void check_vhosts(const cloister::Config& config) {
    std::size_t defaults = 0;
    for (const cloister::VhostConfig& vhost : config.vhosts) {
        defaults += vhost.is_default ? 1 : 0;
        require(!vhost.certificates.empty(), "every vhost has a certificate");
        for (const cloister::CertificateConfig& certificate : vhost.certificates) {
            require(certificate.key_index < config.keys.size(),
                    "every certificate names an existing key");
            require(config.keys[certificate.key_index].name == certificate.key_name,
                    "the key index matches the key name");
        }
    }
    require(defaults == 1, "exactly one vhost is the default");
}

void check_config(const cloister::Config& config) {
    require(!config.listeners.empty(), "a config has a listener");
    require(!config.keys.empty(), "a config has a key");
    require(!config.vhosts.empty(), "a config has a vhost");
    require(config.tls.min_version <= config.tls.max_version, "min-version <= max-version");
    require(config.limits.spare_children <= config.limits.max_connections,
            "spare-children <= max-connections");
    check_vhosts(config);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    try {
        check_config(cloister::parse_config(text, source_name));
    } catch (const cloister::Error& error) {
        require(error.kind() == cloister::ErrorKind::config, "errors are config errors");
        const std::string_view message(error.what());
        require(message.starts_with(std::string(source_name) + ":"),
                "error messages start with the file name");
    }
    return 0;
}
