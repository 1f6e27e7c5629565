// Text of the OpenSSL error queue, for exceptions and log lines.
#pragma once

#include <string>

namespace cloister::ossl {

// Returns the errors on this thread's OpenSSL error queue, oldest first, as
// "error:0A000086:SSL routines::certificate verify failed (detail); ...", and clears the
// queue. Returns "no OpenSSL error" when the queue is empty.
std::string take_openssl_errors();

}  // namespace cloister::ossl
