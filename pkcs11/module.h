// A PKCS#11 module (a shared library) loaded into the key process.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "pkcs11/cryptoki.h"

namespace cloister::pkcs11 {

// Owns the dlopen handle and the function list of one module. The key process loads each
// module once, after the fork that created it, so no other process maps the library or shares
// its state (a module's sessions and login do not carry over into a forked child).
class Module {
  public:
    // Loads the library and calls C_GetFunctionList once. Some modules (p11-kit-client.so)
    // return a new, uninitialised instance from every C_GetFunctionList call, so the same
    // list is kept for the life of the object. Throws Error(config) naming the path and the
    // dlopen error.
    explicit Module(std::filesystem::path path);
    Module(const Module&) = delete;
    Module& operator=(const Module&) = delete;
    Module(Module&&) = delete;
    Module& operator=(Module&&) = delete;
    // Calls C_Finalize when initialised. The library stays mapped until the process ends:
    // modules may leave threads or atexit handlers behind, so dlclose is not safe.
    ~Module();

    // C_Initialize with CKF_OS_LOCKING_OK, so that worker threads may call the module at once
    // on different sessions. Throws Error(crypto) with the return code.
    void initialize();
    // C_Finalize, when initialised. Returns its code (CKR_OK when there was nothing to do).
    CK_RV finalize() noexcept;

    [[nodiscard]] const CK_FUNCTION_LIST& api() const { return *api_; }
    [[nodiscard]] const std::filesystem::path& path() const { return path_; }
    // "SoftHSM 2.6 (SoftHSM)": the library description, version and manufacturer of
    // C_GetInfo, for log lines. Requires an initialised module.
    [[nodiscard]] std::string describe() const;

  private:
    std::filesystem::path path_;
    void* handle_ = nullptr;
    CK_FUNCTION_LIST* api_ = nullptr;
    bool initialized_ = false;
};

}  // namespace cloister::pkcs11
