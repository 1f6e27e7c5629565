#include "bench/inprocess/inprocess_keys.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <memory>

#include "core/error.h"
#include "core/key_protocol.h"
#include "keyprovider/memory_key_store.h"
#include "keyprovider/request_handler.h"

namespace cloister::bench {
namespace {

struct InProcessKeys {
    MemoryKeyStore store;
    RequestHandler handler;
    pid_t loaded_by;
    pid_t channel_owner;
    ChannelState channel;

    InProcessKeys(const Config& config)
        : store(config.keys),
          handler(store, make_handler_options(config.key_process, config.tls.rsa_key_exchange)),
          loaded_by(::getpid()),
          channel_owner(loaded_by) {
        channel.unlimited = true;
    }
};

std::unique_ptr<InProcessKeys>& keys() {
    static std::unique_ptr<InProcessKeys> instance;
    return instance;
}

}  // namespace

void load_in_process_keys(const Config& config) {
    for (const KeyConfig& key : config.keys) {
        if (key.in_token()) {
            throw Error(ErrorKind::config,
                        fmt::format("key '{}' is in a PKCS#11 token, which "
                                    "cloister-bench-inprocess-keys does not support; use a key "
                                    "file or the cloister executable",
                                    key.name));
        }
    }
    keys() = std::make_unique<InProcessKeys>(config);
    spdlog::warn(
        "BENCHMARK BUILD: cloister-bench-inprocess-keys signs inside every connection process, "
        "so each process that talks to the network holds all {} private keys. Never run it in "
        "production; use the cloister executable.",
        config.keys.size());
}

std::vector<std::uint8_t> serve_in_process(std::span<const std::uint8_t> datagram) {
    InProcessKeys* loaded = keys().get();
    if (loaded == nullptr) {
        throw Error(ErrorKind::protocol, "no in-process keys loaded");
    }
    // A forked connection process gets a channel of its own with the normal quota.
    const pid_t self = ::getpid();
    if (self != loaded->channel_owner) {
        loaded->channel_owner = self;
        loaded->channel = ChannelState{};
    }
    keyproto::Decoded<keyproto::Request> request = keyproto::decode_request(datagram);
    if (!request) {
        throw Error(ErrorKind::protocol, fmt::format("invalid key request: {}", request.error));
    }
    const HandlerResult result = loaded->handler.handle(*request.value, loaded->channel);
    return keyproto::encode(result.response);
}

}  // namespace cloister::bench
