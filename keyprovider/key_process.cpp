#include "keyprovider/key_process.h"

#include <spdlog/spdlog.h>

#include <memory>
#include <utility>

#include "core/error.h"
#include "keyprovider/key_server.h"
#include "keyprovider/memory_key_store.h"

namespace cloister {
namespace {

void log_loaded_keys(const Config& config, const KeyStore& store) {
    for (std::size_t i = 0; i < store.size(); ++i) {
        spdlog::info("loaded {} key '{}' (index {}) from {}", to_string(store.key_type(i)),
                     store.key_name(i), i, config.keys[i].file.string());
    }
}

}  // namespace

int run_key_process(const Config& config, Fd control) {
    return run_key_process(config, std::move(control), {});
}

int run_key_process(const Config& config, Fd control, const std::function<void()>& before_serving) {
    std::unique_ptr<MemoryKeyStore> store;
    try {
        store = std::make_unique<MemoryKeyStore>(config.keys);
    } catch (const Error& error) {
        spdlog::error("{}", error.what());
        return key_process_exit_key_load_failed;
    }
    log_loaded_keys(config, *store);

    try {
        KeyServer server(*store, config.key_process, std::move(control));
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
