// A byte buffer for PINs that wipes its memory when it is freed.
#pragma once

#include <string.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace cloister::pkcs11 {

// Owns secret bytes (a PIN). The destructor, reset() and every move wipe the old storage with
// explicit_bzero, which the compiler may not remove. Appending may reallocate, so callers
// reserve() the final size first: the old block of a reallocation is not wiped.
class SecretBytes {
  public:
    SecretBytes() = default;
    explicit SecretBytes(std::span<const std::uint8_t> bytes)
        : bytes_(bytes.begin(), bytes.end()) {}
    SecretBytes(const SecretBytes& other) = default;
    SecretBytes& operator=(const SecretBytes& other) {
        if (this != &other) {
            wipe();
            bytes_ = other.bytes_;
        }
        return *this;
    }
    SecretBytes(SecretBytes&& other) noexcept : bytes_(std::move(other.bytes_)) { other.wipe(); }
    SecretBytes& operator=(SecretBytes&& other) noexcept {
        if (this != &other) {
            wipe();
            bytes_ = std::move(other.bytes_);
            other.wipe();
        }
        return *this;
    }
    ~SecretBytes() { wipe(); }

    void reserve(std::size_t size) { bytes_.reserve(size); }
    void push_back(std::uint8_t byte) { bytes_.push_back(byte); }
    void pop_back() {
        bytes_.back() = 0;
        bytes_.pop_back();
    }
    void reset() { wipe(); }

    [[nodiscard]] bool empty() const { return bytes_.empty(); }
    [[nodiscard]] std::size_t size() const { return bytes_.size(); }
    [[nodiscard]] std::uint8_t back() const { return bytes_.back(); }
    [[nodiscard]] std::span<const std::uint8_t> view() const { return bytes_; }
    [[nodiscard]] std::uint8_t* data() { return bytes_.data(); }

    friend bool operator==(const SecretBytes& a, const SecretBytes& b) {
        return a.bytes_ == b.bytes_;
    }

  private:
    void wipe() noexcept {
        if (!bytes_.empty()) {
            ::explicit_bzero(bytes_.data(), bytes_.size());
        }
        bytes_.clear();
    }

    std::vector<std::uint8_t> bytes_;
};

}  // namespace cloister::pkcs11
