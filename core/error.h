// The error type shared by every layer of cloister.
#pragma once

#include <stdexcept>
#include <string>

namespace cloister {

// Error categories, which decide what the caller does next.
enum class ErrorKind {
    config,    // invalid configuration: fix the file, the process cannot start
    io,        // a read or write failed on a socket or file
    closed,    // the peer closed the connection
    timeout,   // a deadline passed
    protocol,  // the peer sent bytes that break the protocol (TLS or the key channel)
    crypto,    // a cryptographic library call failed
    system,    // a system call failed; error_number() contains the reason
    policy,    // a request was refused on purpose
};

// Returns the lowercase name of kind, for log lines.
const char* to_string(ErrorKind kind) noexcept;

// The one exception type thrown by cloister code. Each process's main maps kind() to an
// exit status and a log line.
class Error : public std::runtime_error {
public:
    Error(ErrorKind kind, const std::string& message, int error_number = 0)
        : std::runtime_error(message), kind_(kind), errno_(error_number) {}

    [[nodiscard]] ErrorKind kind() const noexcept { return kind_; }
    // The errno value for ErrorKind::system errors, otherwise 0.
    [[nodiscard]] int error_number() const noexcept { return errno_; }

private:
    ErrorKind kind_;
    int errno_;
};

// Throws ErrorKind::system with "what: strerror(errno)", reading errno at the call.
[[noreturn]] void throw_system_error(const std::string& what);

}  // namespace cloister
