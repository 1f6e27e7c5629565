#include "pkcs11/pin.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "core/error.h"
#include "core/fd.h"

namespace cloister::pkcs11 {
namespace {

[[noreturn]] void fail(const std::filesystem::path& path, const std::string& problem) {
    throw Error(ErrorKind::config, fmt::format("PIN file {}: {}", path.string(), problem));
}

// Checks the opened file itself (fstat), so a rename between check and read changes nothing.
void check_file(const std::filesystem::path& path, int fd) {
    struct stat status {};
    if (::fstat(fd, &status) != 0) {
        fail(path, fmt::format("fstat failed: {}", std::strerror(errno)));
    }
    if (!S_ISREG(status.st_mode)) {
        fail(path, "not a regular file");
    }
    const unsigned permissions = status.st_mode & 07777U;
    if ((permissions & 077U) != 0) {
        fail(path, fmt::format("group or others have access (mode {:04o}); run chmod 600 {}",
                               permissions, path.string()));
    }
}

}  // namespace

SecretBytes read_pin_file(const std::filesystem::path& path) {
    // O_NONBLOCK: a FIFO in place of the file must fail the regular-file check, not block.
    const Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
    if (!fd) {
        fail(path, fmt::format("cannot open: {}", std::strerror(errno)));
    }
    check_file(path, fd.get());

    SecretBytes pin;
    pin.reserve(max_pin_file_size + 1);
    std::array<std::uint8_t, max_pin_file_size + 1> buffer{};
    std::size_t total = 0;
    while (total < buffer.size()) {
        const ssize_t count = ::read(fd.get(), buffer.data() + total, buffer.size() - total);
        if (count < 0 && errno == EINTR) {
            continue;
        }
        if (count < 0) {
            ::explicit_bzero(buffer.data(), buffer.size());
            fail(path, fmt::format("read failed: {}", std::strerror(errno)));
        }
        if (count == 0) {
            break;
        }
        total += static_cast<std::size_t>(count);
    }
    for (std::size_t i = 0; i < total; ++i) {
        pin.push_back(buffer[i]);
    }
    ::explicit_bzero(buffer.data(), buffer.size());
    if (total > max_pin_file_size) {
        fail(path, fmt::format("longer than {} bytes; expected only the PIN", max_pin_file_size));
    }
    if (!pin.empty() && pin.back() == '\n') {
        pin.pop_back();
    }
    if (pin.empty()) {
        fail(path, "the PIN is empty");
    }
    return pin;
}

}  // namespace cloister::pkcs11
