// SoftHSM signing under the key_pkcs11 filter: a forked child loads the module and logs in,
// installs the filter, then signs. Built when p11-kit's PKCS#11 header is installed; skipped
// at run time without softhsm2-util, pkcs11-tool or the SoftHSM module.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <p11-kit/pkcs11.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/seccomp_policy.h"
#include "tests/security/child.h"

namespace cloister {
namespace {

using testing::describe_status;
using testing::exited_zero;
using testing::killed_by_sigsys;

constexpr const char* softhsm_module = "/usr/lib/softhsm/libsofthsm2.so";
constexpr const char* user_pin = "1234";

// A SoftHSM token with one P-256 key pair, in a temporary directory.
class SoftHsmToken : public ::testing::Test {
  protected:
    void SetUp() override {
        if (!std::filesystem::exists(softhsm_module) ||
            std::system("command -v softhsm2-util pkcs11-tool >/dev/null") != 0) {
            GTEST_SKIP() << "softhsm2 or pkcs11-tool (opensc) is not installed";
        }
        std::string pattern = std::filesystem::temp_directory_path() / "cloister-hsm-XXXXXX";
        ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
        dir_ = pattern;
        std::filesystem::create_directory(dir_ / "tokens");
        std::ofstream(dir_ / "softhsm2.conf")
            << "directories.tokendir = " << (dir_ / "tokens").string()
            << "\nobjectstore.backend = file\nlog.level = ERROR\n";
        ::setenv("SOFTHSM2_CONF", (dir_ / "softhsm2.conf").c_str(), 1);
        ASSERT_EQ(run("softhsm2-util --init-token --free --label sandbox --pin " +
                      std::string(user_pin) + " --so-pin 123456"),
                  0);
        ASSERT_EQ(run("pkcs11-tool --module " + std::string(softhsm_module) +
                      " --token-label sandbox --login --pin " + user_pin +
                      " --keypairgen --key-type EC:prime256v1 --label key --id 01"),
                  0);
    }
    void TearDown() override {
        ::unsetenv("SOFTHSM2_CONF");
        if (!dir_.empty()) {
            std::error_code ignored;
            std::filesystem::remove_all(dir_, ignored);
        }
    }
    static int run(const std::string& command) {
        return std::system((command + " >/dev/null 2>&1").c_str());
    }

    std::filesystem::path dir_;
};

// A logged-in SoftHSM session and its private key, or the exit code (50 to 54) of the step
// that failed.
struct Session {
    CK_FUNCTION_LIST_PTR functions = nullptr;
    CK_SESSION_HANDLE handle = 0;
    CK_OBJECT_HANDLE key = 0;
    int error = 0;
};

// Loads SoftHSM, logs in and finds the private key.
Session open_session() {
    Session session;
    void* module = ::dlopen(softhsm_module, RTLD_NOW);
    if (module == nullptr) {
        return {.error = 50};
    }
    auto* get_list = reinterpret_cast<CK_C_GetFunctionList>(::dlsym(module, "C_GetFunctionList"));
    if (get_list == nullptr || get_list(&session.functions) != CKR_OK ||
        session.functions->C_Initialize(nullptr) != CKR_OK) {
        return {.error = 51};
    }

    std::array<CK_SLOT_ID, 4> slots{};
    CK_ULONG slot_count = slots.size();
    if (session.functions->C_GetSlotList(CK_TRUE, slots.data(), &slot_count) != CKR_OK ||
        slot_count == 0 ||
        session.functions->C_OpenSession(slots[0], CKF_SERIAL_SESSION, nullptr, nullptr,
                                         &session.handle) != CKR_OK) {
        return {.error = 52};
    }

    std::string pin = user_pin;
    if (session.functions->C_Login(session.handle, CKU_USER,
                                   reinterpret_cast<CK_UTF8CHAR_PTR>(pin.data()),
                                   pin.size()) != CKR_OK) {
        return {.error = 53};
    }

    CK_OBJECT_CLASS key_class = CKO_PRIVATE_KEY;
    std::array<CK_ATTRIBUTE, 1> query{{{CKA_CLASS, &key_class, sizeof(key_class)}}};
    CK_ULONG found = 0;
    if (session.functions->C_FindObjectsInit(session.handle, query.data(), query.size()) !=
            CKR_OK ||
        session.functions->C_FindObjects(session.handle, &session.key, 1, &found) != CKR_OK ||
        found != 1) {
        return {.error = 54};
    }
    session.functions->C_FindObjectsFinal(session.handle);
    return session;
}

// The child: log in, install the filter of role, sign a SHA-256-sized digest twice.
int sign_under_filter(SeccompRole role) {
    Session session = open_session();
    if (session.error != 0) {
        return session.error;
    }
    install_seccomp(role, SeccompMode::enforce);
    for (int i = 0; i < 2; ++i) {
        CK_MECHANISM mechanism{CKM_ECDSA, nullptr, 0};
        std::array<CK_BYTE, 32> digest{1, 2, 3};
        std::array<CK_BYTE, 128> signature{};
        CK_ULONG signature_size = signature.size();
        if (session.functions->C_SignInit(session.handle, &mechanism, session.key) != CKR_OK ||
            session.functions->C_Sign(session.handle, digest.data(), digest.size(),
                                      signature.data(), &signature_size) != CKR_OK ||
            signature_size != 64) {
            return 60;
        }
    }
    return 0;
}

TEST_F(SoftHsmToken, SignsUnderKeyPkcs11Filter) {
    const int status =
        testing::run_in_child([] { return sign_under_filter(SeccompRole::key_pkcs11); });
    EXPECT_TRUE(exited_zero(status)) << describe_status(status);
}

TEST_F(SoftHsmToken, KeyMemoryFilterKillsSoftHsmSign) {
    // SoftHSM rereads its token files in C_SignInit, which the memory-key filter forbids.
    const int status =
        testing::run_in_child([] { return sign_under_filter(SeccompRole::key_memory); });
    EXPECT_TRUE(killed_by_sigsys(status)) << describe_status(status);
}

}  // namespace
}  // namespace cloister
