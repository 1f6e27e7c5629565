#include "pkcs11/module.h"

#include <dlfcn.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <utility>

#include "core/error.h"

namespace cloister::pkcs11 {

Module::Module(std::filesystem::path path) : path_(std::move(path)) {
    // RTLD_LOCAL keeps the module's symbols (some modules link their own OpenSSL) out of the
    // global namespace.
    handle_ = ::dlopen(path_.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle_ == nullptr) {
        const char* reason = ::dlerror();
        throw Error(ErrorKind::config,
                    fmt::format("cannot load the PKCS#11 module {}: {}", path_.string(),
                                reason != nullptr ? reason : "unknown dlopen error"));
    }
    auto* get_function_list =
        reinterpret_cast<CK_C_GetFunctionList>(::dlsym(handle_, "C_GetFunctionList"));
    if (get_function_list == nullptr) {
        throw Error(ErrorKind::config, fmt::format("{} is not a PKCS#11 module: it has no "
                                                   "C_GetFunctionList",
                                                   path_.string()));
    }
    const CK_RV rv = get_function_list(&api_);
    if (rv != CKR_OK || api_ == nullptr) {
        throw Error(ErrorKind::config,
                    fmt::format("C_GetFunctionList of {} failed: {}", path_.string(), rv_name(rv)));
    }
}

Module::~Module() {
    const CK_RV rv = finalize();
    if (rv != CKR_OK) {
        spdlog::warn("C_Finalize of PKCS#11 module {} failed: {}", path_.string(), rv_name(rv));
    }
}

void Module::initialize() {
    CK_C_INITIALIZE_ARGS args{};
    args.flags = CKF_OS_LOCKING_OK;
    const CK_RV rv = api_->C_Initialize(&args);
    if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
        throw Error(ErrorKind::crypto, fmt::format("C_Initialize of PKCS#11 module {} failed: {}",
                                                   path_.string(), rv_name(rv)));
    }
    initialized_ = true;
}

CK_RV Module::finalize() noexcept {
    if (!initialized_) {
        return CKR_OK;
    }
    initialized_ = false;
    return api_->C_Finalize(nullptr);
}

std::string Module::describe() const {
    CK_INFO info{};
    if (api_->C_GetInfo(&info) != CKR_OK) {
        return path_.string();
    }
    return fmt::format("{} {}.{} ({})", padded_text(info.libraryDescription),
                       info.libraryVersion.major, info.libraryVersion.minor,
                       padded_text(info.manufacturerID));
}

}  // namespace cloister::pkcs11
