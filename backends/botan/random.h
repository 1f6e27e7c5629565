// Random generators for the Botan stack.
#pragma once

#include <botan/rng.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace cloister::botan {

// Reads the kernel's generator with getrandom(2) on every call. It keeps no state that fork()
// could duplicate and no file descriptor, so it works in an empty chroot and under the
// connection seccomp filter, which allows getrandom.
class KernelRandom final : public Botan::RandomNumberGenerator {
  public:
    // Throws Error(system) when getrandom fails.
    void randomize(std::uint8_t output[], std::size_t length) override;
    [[nodiscard]] bool accepts_input() const override { return false; }
    void add_entropy(const std::uint8_t /*input*/[], std::size_t /*length*/) override {}
    [[nodiscard]] std::string name() const override { return "getrandom"; }
    void clear() override {}
    [[nodiscard]] bool is_seeded() const override { return true; }
};

// Returns a new HMAC_DRBG (SHA-384) seeded from source. Botan's stateful generators also
// reseed from source when they see a new process id. Throws Error(crypto) or Error(system).
std::unique_ptr<Botan::RandomNumberGenerator> make_process_random(
    Botan::RandomNumberGenerator& source);

}  // namespace cloister::botan
