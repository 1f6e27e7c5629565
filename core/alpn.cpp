#include "core/alpn.h"

#include <fmt/format.h>

#include <algorithm>

namespace cloister {
namespace {

std::string escape_protocol(const std::string& protocol) {
    std::string text;
    for (const char c : protocol) {
        const auto byte = static_cast<unsigned char>(c);
        if (byte < 0x20 || byte > 0x7e || c == '"' || c == '\\') {
            text += fmt::format("\\x{:02x}", byte);
        } else {
            text += c;
        }
    }
    return text;
}

}  // namespace

AlpnSelection select_alpn(const std::vector<std::string>& vhost_protocols,
                          std::span<const std::string> offered, AlpnMismatch mismatch) {
    if (vhost_protocols.empty() || offered.empty()) {
        return {};
    }
    for (const std::string& protocol : vhost_protocols) {
        if (std::find(offered.begin(), offered.end(), protocol) != offered.end()) {
            return {protocol, false};
        }
    }
    return {{}, mismatch == AlpnMismatch::reject};
}

std::string describe_alpn(std::span<const std::string> protocols) {
    std::string text = "[";
    for (const std::string& protocol : protocols) {
        text += fmt::format("{}\"{}\"", text.size() > 1 ? ", " : "", escape_protocol(protocol));
    }
    return text + "]";
}

}  // namespace cloister
