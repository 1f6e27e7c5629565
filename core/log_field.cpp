#include "core/log_field.h"

#include <fmt/format.h>

namespace cloister {

std::string escape_log_text(std::string_view value, bool escape_spaces) {
    std::string escaped;
    escaped.reserve(value.size());
    for (const char c : value) {
        const auto byte = static_cast<unsigned char>(c);
        const bool unsafe = byte < 0x20 || byte == 0x7f || c == '"' || c == '\\' ||
                            (escape_spaces && (byte == 0x20 || byte > 0x7f));
        if (unsafe) {
            escaped += fmt::format("\\x{:02x}", byte);
        } else {
            escaped += c;
        }
    }
    return escaped;
}

std::string log_field(std::string_view value) {
    return escape_log_text(value.empty() ? std::string_view("-") : value, true);
}

}  // namespace cloister
