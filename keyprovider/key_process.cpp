#include "keyprovider/key_process.h"

#include <openssl/rand.h>
#include <spdlog/spdlog.h>

#include <memory>
#include <string>
#include <utility>

#include "core/error.h"
#include "keyprovider/key_server.h"
#include "pkcs11/key_stores.h"
#include "pkcs11/uri.h"

namespace cloister {
namespace {

// Where a key came from, for the log: its file, or its URI without the query (which may hold
// a PIN).
std::string key_origin(const KeyConfig& key) {
    if (!key.in_token()) {
        return key.file.string();
    }
    return pkcs11::parse_uri(key.uri).describe();
}

void log_loaded_keys(const Config& config, const KeyStore& store) {
    for (std::size_t i = 0; i < store.size(); ++i) {
        spdlog::info("loaded {} key '{}' (index {}) from {}", to_string(store.key_type(i)),
                     store.key_name(i), i, key_origin(config.keys[i]));
    }
}

}  // namespace

int run_key_process(const Config& config, Fd control) {
    return run_key_process(config, std::move(control), {});
}

int run_key_process(const Config& config, Fd control, const std::function<void()>& before_serving) {
    // The process may inherit the supervisor's random generator state. As PID 1 of a PID
    // namespace its pid can equal the supervisor's, when the supervisor is PID 1 of a
    // container, and OpenSSL's getpid() check then misses the fork. A reseed here keeps
    // ECDSA nonces and RSA blinding values its own.
    if (RAND_poll() != 1) {
        spdlog::error("key process failed: reseeding the random generator (RAND_poll) failed");
        return 1;
    }
    // Keys in PKCS#11 tokens load here, in the key process after its fork, so that no other
    // process loads a module.
    std::unique_ptr<KeyStore> store;
    try {
        store = pkcs11::make_key_store(config);
    } catch (const Error& error) {
        spdlog::error("{}", error.what());
        return key_process_exit_key_load_failed;
    }
    log_loaded_keys(config, *store);

    try {
        KeyServer server(*store, config.key_process, std::move(control),
                         config.tls.rsa_key_exchange);
        if (before_serving) {
            before_serving();
        }
        return server.run();
    } catch (const Error& error) {
        spdlog::error("key process failed: {}", error.what());
        return 1;
    }
}

}  // namespace cloister
