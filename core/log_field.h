// Escaping for values in key=value log lines, which log shippers split at spaces.
#pragma once

#include <string>
#include <string_view>

namespace cloister {

// Escapes control bytes, quotes and backslashes as \xHH, so that a value cannot forge log
// fields or lines. A value field (escape_spaces) also escapes spaces and bytes above 0x7e; a
// free-text reason keeps them.
std::string escape_log_text(std::string_view value, bool escape_spaces);

// Formats one key=value field value: "-" when empty, escaped with escape_spaces otherwise.
std::string log_field(std::string_view value);

}  // namespace cloister
