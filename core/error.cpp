#include "core/error.h"

#include <cerrno>
#include <cstring>

namespace cloister {

const char* to_string(ErrorKind kind) noexcept {
    switch (kind) {
        case ErrorKind::config:
            return "config";
        case ErrorKind::io:
            return "io";
        case ErrorKind::closed:
            return "closed";
        case ErrorKind::timeout:
            return "timeout";
        case ErrorKind::protocol:
            return "protocol";
        case ErrorKind::crypto:
            return "crypto";
        case ErrorKind::system:
            return "system";
        case ErrorKind::policy:
            return "policy";
    }
    return "unknown";
}

void throw_system_error(const std::string& what) {
    const int saved = errno;
    throw Error(ErrorKind::system, what + ": " + std::strerror(saved), saved);
}

}  // namespace cloister
