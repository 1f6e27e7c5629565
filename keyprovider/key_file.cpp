#include "keyprovider/key_file.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/decoder.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <sys/stat.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "core/fd.h"
#include "keyprovider/evp_signature.h"

namespace cloister {
namespace {

// A PEM RSA-4096 key is about 3.3 KB. The cap only stops a wrong path (a log, a device)
// from being read into memory.
constexpr std::size_t max_key_file_size = std::size_t{1024} * 1024;
constexpr std::size_t max_passphrase_file_size = 4096;
constexpr int min_rsa_bits = 2048;
constexpr int max_rsa_bits = 4096;

// Bytes of a key file or passphrase. The size is fixed at construction so that the vector
// never reallocates and leaves an uncleansed copy behind. The destructor cleanses it.
class SecretBuffer {
  public:
    explicit SecretBuffer(std::size_t size) : bytes_(size) {}
    SecretBuffer(const SecretBuffer&) = delete;
    SecretBuffer& operator=(const SecretBuffer&) = delete;
    SecretBuffer(SecretBuffer&&) = default;
    SecretBuffer& operator=(SecretBuffer&&) = delete;
    ~SecretBuffer() { OPENSSL_cleanse(bytes_.data(), bytes_.size()); }

    [[nodiscard]] unsigned char* data() { return bytes_.data(); }
    [[nodiscard]] const unsigned char* data() const { return bytes_.data(); }
    // Bytes in use, at most the size given at construction.
    [[nodiscard]] std::size_t size() const { return used_; }
    void set_size(std::size_t used) { used_ = used; }
    [[nodiscard]] std::size_t capacity() const { return bytes_.size(); }

  private:
    std::vector<unsigned char> bytes_;
    std::size_t used_ = 0;
};

struct DecoderCtxDeleter {
    void operator()(OSSL_DECODER_CTX* ctx) const { OSSL_DECODER_CTX_free(ctx); }
};
using DecoderCtxPtr = std::unique_ptr<OSSL_DECODER_CTX, DecoderCtxDeleter>;

// Reads a whole regular file of at most max_size bytes. description names the file in
// messages.
SecretBuffer read_secret_file(const std::filesystem::path& path, std::size_t max_size,
                              const std::string& description) {
    // O_NONBLOCK: opening a FIFO without a writer returns at once, so that the regular-file
    // check below rejects it instead of the open blocking the key process.
    const Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
    if (!fd) {
        throw Error(ErrorKind::config,
                    fmt::format("failed to open {}: {}", description, std::strerror(errno)));
    }
    struct stat info {};
    if (::fstat(fd.get(), &info) != 0 || !S_ISREG(info.st_mode)) {
        throw Error(ErrorKind::config, fmt::format("{} is not a regular file", description));
    }
    const auto file_size = static_cast<std::size_t>(info.st_size);
    if (file_size > max_size) {
        throw Error(ErrorKind::config, fmt::format("{} has {} bytes, more than the maximum of {}",
                                                   description, file_size, max_size));
    }

    SecretBuffer buffer(file_size);
    std::size_t used = 0;
    while (used < buffer.capacity()) {
        const ssize_t count = ::read(fd.get(), buffer.data() + used, buffer.capacity() - used);
        if (count < 0 && errno == EINTR) {
            continue;
        }
        if (count < 0) {
            throw Error(ErrorKind::config,
                        fmt::format("failed to read {}: {}", description, std::strerror(errno)));
        }
        if (count == 0) {
            break;  // the file shrank after fstat
        }
        used += static_cast<std::size_t>(count);
    }
    buffer.set_size(used);
    return buffer;
}

SecretBuffer read_passphrase(const std::filesystem::path& path) {
    const std::string description = fmt::format("passphrase file {}", path.string());
    SecretBuffer passphrase = read_secret_file(path, max_passphrase_file_size, description);
    std::size_t size = passphrase.size();
    if (size > 0 && passphrase.data()[size - 1] == '\n') {
        --size;
    }
    if (size == 0) {
        throw Error(ErrorKind::config, fmt::format("{} is empty", description));
    }
    passphrase.set_size(size);
    return passphrase;
}

// The passphrase callback's state: what it supplies and whether a decoder asked for it.
struct PassphraseRequest {
    const SecretBuffer* passphrase = nullptr;  // nullptr: no passphrase-file configured
    bool requested = false;
    bool too_long = false;
};

// OSSL_PASSPHRASE_CALLBACK. A decoder calls it only for an encrypted key, so a failed decode
// after a call means a wrong passphrase or a damaged file. OpenSSL's error reason alone is
// not enough: a wrong passphrase passes the CBC padding check roughly once in 256 tries and
// then fails with a generic "unsupported".
int supply_passphrase(char* out, std::size_t out_size, std::size_t* out_length,
                      const OSSL_PARAM* /*params*/, void* argument) {
    auto* request = static_cast<PassphraseRequest*>(argument);
    request->requested = true;
    if (request->passphrase == nullptr) {
        return 0;
    }
    if (request->passphrase->size() > out_size) {
        request->too_long = true;
        return 0;
    }
    std::memcpy(out, request->passphrase->data(), request->passphrase->size());
    *out_length = request->passphrase->size();
    return 1;
}

std::string describe_decode_failure(const PassphraseRequest& request) {
    ERR_clear_error();
    if (!request.requested) {
        return "no private key found: expected PEM or DER, traditional or PKCS#8";
    }
    if (request.passphrase == nullptr) {
        return "the key is encrypted, so passphrase-file must be set";
    }
    if (request.too_long) {
        return "the passphrase is longer than OpenSSL accepts";
    }
    return "decryption failed: the passphrase is wrong or the file is damaged";
}

EvpPkeyPtr decode_private_key(const SecretBuffer& file, const SecretBuffer* passphrase) {
    EVP_PKEY* key = nullptr;
    // NULL input type and structure: try PEM and DER, PKCS#8 and the traditional forms.
    const DecoderCtxPtr ctx(OSSL_DECODER_CTX_new_for_pkey(&key, nullptr, nullptr, nullptr,
                                                          EVP_PKEY_KEYPAIR, nullptr, nullptr));
    if (!ctx) {
        throw Error(ErrorKind::crypto,
                    "OSSL_DECODER_CTX_new_for_pkey failed: " + take_openssl_errors());
    }
    PassphraseRequest request;
    request.passphrase = passphrase;
    if (OSSL_DECODER_CTX_set_passphrase_cb(ctx.get(), supply_passphrase, &request) != 1) {
        throw Error(ErrorKind::crypto,
                    "OSSL_DECODER_CTX_set_passphrase_cb failed: " + take_openssl_errors());
    }
    const unsigned char* data = file.data();
    std::size_t length = file.size();
    if (OSSL_DECODER_from_data(ctx.get(), &data, &length) != 1 || key == nullptr) {
        throw Error(ErrorKind::config, describe_decode_failure(request));
    }
    ERR_clear_error();  // decoders that did not match leave entries behind
    return EvpPkeyPtr(key);
}

KeyType check_ec_curve(EVP_PKEY* key) {
    std::array<char, 80> group{};
    std::size_t length = 0;
    if (EVP_PKEY_get_group_name(key, group.data(), group.size(), &length) != 1) {
        ERR_clear_error();
        throw Error(ErrorKind::config,
                    "EC key with explicit curve parameters is not supported; use a named curve "
                    "(P-256 or P-384)");
    }
    const std::string_view name(group.data(), length);
    int nid = OBJ_sn2nid(group.data());
    if (nid == NID_undef) {
        nid = EC_curve_nist2nid(group.data());
    }
    if (nid != NID_X9_62_prime256v1 && nid != NID_secp384r1) {
        throw Error(ErrorKind::config,
                    fmt::format("EC curve {} is not supported; use P-256 or P-384", name));
    }
    return KeyType::ec;
}

KeyType check_key(EVP_PKEY* key) {
    if (EVP_PKEY_is_a(key, "RSA") == 1) {
        const int bits = EVP_PKEY_get_bits(key);
        if (bits < min_rsa_bits || bits > max_rsa_bits) {
            throw Error(ErrorKind::config,
                        fmt::format("RSA key of {} bits is not supported; use {} to {} bits", bits,
                                    min_rsa_bits, max_rsa_bits));
        }
        return KeyType::rsa;
    }
    if (EVP_PKEY_is_a(key, "EC") == 1) {
        return check_ec_curve(key);
    }
    if (EVP_PKEY_is_a(key, "ED25519") == 1) {
        return KeyType::ed25519;
    }
    const char* name = EVP_PKEY_get0_type_name(key);
    throw Error(ErrorKind::config,
                fmt::format("key type {} is not supported; use RSA, EC (P-256 or P-384) or "
                            "Ed25519",
                            name != nullptr ? name : "unknown"));
}

// Signs and verifies a fixed message, so that a key whose private half does not match its
// public half fails at start-up instead of in a handshake.
void self_test(EVP_PKEY* key, KeyType type) {
    constexpr std::string_view text = "cloister key self-test";
    const std::span message(reinterpret_cast<const std::uint8_t*>(text.data()), text.size());
    keyproto::SignatureScheme scheme = keyproto::SignatureScheme::rsa_pss_rsae_sha256;
    if (type == KeyType::ec) {
        scheme = keyproto::SignatureScheme::ecdsa_secp256r1_sha256;
    } else if (type == KeyType::ed25519) {
        scheme = keyproto::SignatureScheme::ed25519;
    }
    const auto params = find_scheme(static_cast<std::uint16_t>(scheme));
    const std::vector<std::uint8_t> signature = sign_message(key, *params, message);
    if (!verify_message(key, *params, message, signature)) {
        throw Error(ErrorKind::config,
                    "self-test failed: a signature does not verify with the key's public half");
    }
}

}  // namespace

LoadedKey load_private_key(const KeyConfig& config) {
    try {
        std::optional<SecretBuffer> passphrase;
        if (config.passphrase_file) {
            passphrase.emplace(read_passphrase(*config.passphrase_file));
        }
        const SecretBuffer file = read_secret_file(config.file, max_key_file_size, "key file");
        LoadedKey loaded;
        loaded.key = decode_private_key(file, passphrase ? &*passphrase : nullptr);
        loaded.type = check_key(loaded.key.get());
        self_test(loaded.key.get(), loaded.type);
        return loaded;
    } catch (const Error& error) {
        throw Error(ErrorKind::config, fmt::format("key '{}' ({}): {}", config.name,
                                                   config.file.string(), error.what()));
    }
}

}  // namespace cloister
