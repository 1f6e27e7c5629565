#include "core/log.h"

#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include <memory>
#include <string>
#include <utility>

namespace cloister {
namespace {

spdlog::level::level_enum to_spdlog_level(LogLevel level) {
    switch (level) {
        case LogLevel::debug:
            return spdlog::level::debug;
        case LogLevel::info:
            return spdlog::level::info;
        case LogLevel::warning:
            return spdlog::level::warn;
        case LogLevel::error:
            return spdlog::level::err;
    }
    return spdlog::level::info;
}

// Builds the spdlog pattern for label ("supervisor" or "connection[42]"). %P is the process
// id, read at each line, so a forked child shows its own.
std::string make_pattern(std::string_view label) {
    return fmt::format("%Y-%m-%dT%H:%M:%S.%e %^%l%$ cloister[%P] {}: %v", label);
}

}  // namespace

void init_logging(std::string_view role, LogLevel level) {
    // A new logger object replaces the default one, so a forked child can call this again
    // without touching the registry entry of its parent.
    auto sink =
        std::make_shared<spdlog::sinks::stderr_color_sink_mt>(spdlog::color_mode::automatic);
    auto logger = std::make_shared<spdlog::logger>(std::string(role), std::move(sink));
    logger->set_pattern(make_pattern(role));
    logger->set_level(to_spdlog_level(level));
    // Children often end with _exit(), so every line that matters is written at once.
    logger->flush_on(spdlog::level::info);
    spdlog::set_default_logger(std::move(logger));
}

void set_log_connection(std::uint64_t connection_id) {
    spdlog::default_logger()->set_pattern(
        make_pattern(fmt::format("connection[{}]", connection_id)));
}

}  // namespace cloister
