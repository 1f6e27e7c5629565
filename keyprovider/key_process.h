// The key process, which keeps the private keys and serves key channels.
#pragma once

#include <functional>

#include "core/config.h"
#include "core/fd.h"

namespace cloister {

// Exit status of the key process when a key failed to load (the message is logged first).
inline constexpr int key_process_exit_key_load_failed = 2;

// Loads every key in config.keys, then serves the control channel (which hands over new key
// channels) and each key channel until the control channel closes. Returns the exit status:
// 0 after the control channel closed or SIGTERM arrived, 1 when serving failed, and
// key_process_exit_key_load_failed when a key failed to load. Logs with the spdlog default
// logger, which the caller sets up. SIGTERM and SIGUSR1 (log the stats line) stay
// blocked in the calling thread after the function returns.
int run_key_process(const Config& config, Fd control);

// Same as above, and calls before_serving once, after the keys are loaded and the epoll,
// signalfd and eventfd descriptors exist, but before any worker thread starts: the place to
// drop privileges, chroot and install the seccomp policy. The workers then need only thread
// creation and the serving calls. An Error thrown by before_serving is logged, and the
// function returns 1 without serving.
int run_key_process(const Config& config, Fd control, const std::function<void()>& before_serving);

}  // namespace cloister
