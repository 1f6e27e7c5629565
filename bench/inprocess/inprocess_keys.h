// Benchmark-only: the key process's request handler inside the connection process.
//
// Only the executable cloister-bench-inprocess-keys (CMake option CLOISTER_BENCH_INPROCESS_KEYS)
// contains this code. It defeats cloister's key isolation on purpose: every connection
// process holds every private key, so the benchmark can measure what the separate key
// process costs. The cloister executable never links it.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/config.h"

namespace cloister::bench {

// Loads every [[key]] of config into this process's memory, with the same request handler
// options as the key process, and logs a warning that keys are no longer isolated. Call it
// in the supervisor before it forks, so every connection process inherits the keys. Throws
// Error(config) for a key in a PKCS#11 token, which this build does not support.
void load_in_process_keys(const Config& config);

// Serves one encoded key-channel request with the loaded keys and returns the encoded
// response, as the key process would send it. The channel state (operation quota) is per
// process: the process that loaded the keys gets no quota, like the supervisor's start-up
// check channel, and every forked process starts with a fresh count. Throws Error(protocol)
// when no keys were loaded.
std::vector<std::uint8_t> serve_in_process(std::span<const std::uint8_t> datagram);

}  // namespace cloister::bench
