#include "backends/openssl/library_context.h"

#include <string>

#include "backends/openssl/openssl_errors.h"
#include "core/error.h"

namespace cloister::ossl {
namespace {

[[noreturn]] void throw_load_error(const std::string& what) {
    throw Error(ErrorKind::crypto, what + ": " + take_openssl_errors());
}

}  // namespace

LibraryContext::LibraryContext() : libctx_(OSSL_LIB_CTX_new()) {
    if (!libctx_) {
        throw_load_error("cannot create an OpenSSL library context");
    }
    default_provider_.reset(OSSL_PROVIDER_load(libctx_.get(), "default"));
    if (!default_provider_) {
        throw_load_error("cannot load the OpenSSL default provider");
    }
    if (OSSL_PROVIDER_add_builtin(libctx_.get(), provider_name, provider_init) != 1) {
        throw_load_error("cannot register the cloister provider");
    }
    key_provider_.reset(OSSL_PROVIDER_load(libctx_.get(), provider_name));
    if (!key_provider_) {
        throw_load_error("cannot load the cloister provider");
    }
    provider_context_ =
        static_cast<ProviderContext*>(OSSL_PROVIDER_get0_provider_ctx(key_provider_.get()));
    provider_context_->libctx = libctx_.get();
}

}  // namespace cloister::ossl
