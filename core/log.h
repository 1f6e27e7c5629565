// Logging set-up. Every process logs with spdlog to standard error; the pattern carries the
// process role and, in connection processes, the connection id.
#pragma once

#include <spdlog/spdlog.h>

#include <cstdint>
#include <string_view>

#include "core/config.h"

namespace cloister {

// Configures the default spdlog logger for role ("supervisor", "key", "connection") at level.
void init_logging(std::string_view role, LogLevel level);

// Adds the connection id to every later line of this process.
void set_log_connection(std::uint64_t connection_id);

}  // namespace cloister
