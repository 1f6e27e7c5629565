#include "backends/botan/random.h"

#include <botan/hmac_drbg.h>
#include <botan/mac.h>
#include <sys/random.h>

#include <cerrno>
#include <exception>
#include <string>

#include "core/error.h"

namespace cloister::botan {

void KernelRandom::randomize(std::uint8_t output[], std::size_t length) {
    std::size_t filled = 0;
    while (filled < length) {
        const ssize_t count = getrandom(output + filled, length - filled, 0);
        if (count < 0 && errno == EINTR) {
            continue;
        }
        if (count < 0) {
            throw_system_error("getrandom failed");
        }
        filled += static_cast<std::size_t>(count);
    }
}

std::unique_ptr<Botan::RandomNumberGenerator> make_process_random(
    Botan::RandomNumberGenerator& source) {
    try {
        auto generator = std::make_unique<Botan::HMAC_DRBG>(
            Botan::MessageAuthenticationCode::create_or_throw("HMAC(SHA-384)"), source);
        // Seeds now rather than at the first request, so that a failing source shows here.
        generator->reseed_from_rng(source);
        return generator;
    } catch (const Error&) {
        throw;
    } catch (const std::exception& error) {
        throw Error(ErrorKind::crypto,
                    std::string("cannot create the random generator: ") + error.what());
    }
}

}  // namespace cloister::botan
