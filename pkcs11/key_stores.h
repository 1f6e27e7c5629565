// Building the key process's key store from the [[key]] tables: keys in files, keys in PKCS#11
// tokens, or both side by side.
#pragma once

#include <cstddef>
#include <memory>

#include "core/config.h"
#include "keyprovider/key_store.h"

namespace cloister::pkcs11 {

// Returns a store that serves config.keys with the same indexes: a MemoryKeyStore for keys
// with a file, a Pkcs11KeyStore for keys with a uri, and a store that dispatches by index
// when the config has both. Each token gets one session per worker thread of the key process
// (config.key_process.workers, or one per CPU when 0). Call it in the key process only: it
// loads the PKCS#11 modules. Throws Error(config) for the first key that fails to load.
std::unique_ptr<KeyStore> make_key_store(const Config& config);

// The number of worker threads the key process runs for configured (0: one per CPU).
std::size_t worker_threads(unsigned configured);

}  // namespace cloister::pkcs11
