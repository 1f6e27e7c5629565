#include "backends/openssl/openssl_errors.h"

#include <openssl/err.h>

#include <array>

namespace cloister::ossl {

std::string take_openssl_errors() {
    std::string text;
    const char* data = nullptr;
    int flags = 0;
    while (const unsigned long code = ERR_get_error_all(nullptr, nullptr, nullptr, &data, &flags)) {
        std::array<char, 256> buffer{};
        ERR_error_string_n(code, buffer.data(), buffer.size());
        if (!text.empty()) {
            text += "; ";
        }
        text += buffer.data();
        if ((flags & ERR_TXT_STRING) != 0 && data != nullptr && *data != '\0') {
            text += std::string(" (") + data + ")";
        }
    }
    return text.empty() ? "no OpenSSL error" : text;
}

}  // namespace cloister::ossl
