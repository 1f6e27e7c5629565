// The OpenSSL library context of the stack, with the default provider and the "cloister"
// provider loaded in that order.
#pragma once

#include <openssl/crypto.h>
#include <openssl/provider.h>
#include <openssl/types.h>

#include "backends/openssl/ossl_ptr.h"
#include "backends/openssl/provider.h"

namespace cloister::ossl {

// Owns a library context of its own, so that the provider is invisible to every other OpenSSL
// user in the process (the key process code, and anything using the default context). The
// default provider is loaded first, so that fetches with an empty property query find its
// implementations, and the provider's key management never replaces the default one for
// ordinary keys or key exchange groups.
class LibraryContext {
  public:
    // Throws Error(crypto) when a provider cannot be loaded.
    LibraryContext();

    [[nodiscard]] OSSL_LIB_CTX* get() const { return libctx_.get(); }
    [[nodiscard]] ProviderContext& provider() const { return *provider_context_; }

  private:
    using LibCtxPtr = Ptr<OSSL_LIB_CTX, OSSL_LIB_CTX_free>;
    using ProviderPtr = Ptr<OSSL_PROVIDER, OSSL_PROVIDER_unload>;

    LibCtxPtr libctx_;
    ProviderPtr default_provider_;
    ProviderPtr key_provider_;
    ProviderContext* provider_context_ = nullptr;  // owned by key_provider_
};

}  // namespace cloister::ossl
