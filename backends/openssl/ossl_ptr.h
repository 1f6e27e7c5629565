// Owning pointers for OpenSSL handles.
#pragma once

#include <memory>

namespace cloister::ossl {

// A std::unique_ptr deleter that calls the OpenSSL free function Free.
template <auto Free>
struct Deleter {
    template <typename T>
    void operator()(T* handle) const noexcept {
        Free(handle);
    }
};

// Declare each alias next to the code that introduces the type, for example
// `using X509Ptr = ossl::Ptr<X509, X509_free>;`.
template <typename T, auto Free>
using Ptr = std::unique_ptr<T, Deleter<Free>>;

}  // namespace cloister::ossl
