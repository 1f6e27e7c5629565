// Reading a token's user PIN from a file.
#pragma once

#include <filesystem>

#include "pkcs11/secret.h"

namespace cloister::pkcs11 {

// The largest PIN file accepted. PKCS#11 tokens report PIN lengths in CK_TOKEN_INFO, and
// none known allows more than 255 bytes.
inline constexpr std::size_t max_pin_file_size = 256;

// Reads the PIN from path. The file must be a regular file that neither its group nor others
// may read, write or execute (mode 0600 or 0400), at most max_pin_file_size bytes. At most
// one trailing LF is removed; every other byte, including CR and non-ASCII bytes, belongs to
// the PIN. Throws Error(config) naming the file and the fix; the message never contains PIN
// bytes.
SecretBytes read_pin_file(const std::filesystem::path& path);

}  // namespace cloister::pkcs11
