// Each sandbox step in a forked child, checked from inside: the user switch cannot be undone,
// the chroot hides the host, the limits stop a fork, and the whole plan traps a forbidden call.
// Tests that switch users or chroot need root and are skipped otherwise.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <string_view>

#include "core/error.h"
#include "core/sandbox.h"
#include "tests/security/child.h"

namespace cloister {
namespace {

using testing::describe_status;
using testing::exited_zero;
using testing::killed_by_sigsys;
using testing::run_in_child;

// uid and gid 65534 ("nobody" on Debian) and 1 ("daemon"): unprivileged and present on every
// Debian system.
const SandboxUser nobody{65534, 65534, "nobody"};
const SandboxUser daemon_user{1, 1, "daemon"};

bool running_as_root() {
    return ::geteuid() == 0;
}

// A fresh directory under the system temporary directory, removed at the end of the test.
class TempDirectory {
  public:
    TempDirectory() {
        std::string pattern = (std::filesystem::temp_directory_path() / "cloister-root-XXXXXX");
        if (::mkdtemp(pattern.data()) != nullptr) {
            path_ = pattern;
        }
    }
    TempDirectory(const TempDirectory&) = delete;
    TempDirectory& operator=(const TempDirectory&) = delete;
    ~TempDirectory() {
        std::error_code ignored;
        std::filesystem::remove_all(path_, ignored);
    }
    [[nodiscard]] const std::filesystem::path& path() const { return path_; }

  private:
    std::filesystem::path path_;
};

// Returns the message of the Error that body throws, or "" when it throws none.
template <typename Body>
std::string config_error_of(Body body) {
    try {
        body();
    } catch (const Error& error) {
        EXPECT_EQ(error.kind(), ErrorKind::config) << error.what();
        return error.what();
    }
    return "";
}

TEST(LookupUser, FindsRoot) {
    const SandboxUser root = lookup_user("root");
    EXPECT_EQ(root.uid, 0U);
    EXPECT_EQ(root.gid, 0U);
    EXPECT_EQ(root.name, "root");
}

TEST(LookupUser, MissingUserIsConfigError) {
    const std::string message = config_error_of([] { lookup_user("cloister-no-such-user"); });
    EXPECT_NE(message.find("'cloister-no-such-user' not found"), std::string::npos) << message;
}

TEST(CheckUsers, AcceptsDistinctUnprivilegedUsers) {
    EXPECT_NO_THROW(check_users(nobody, daemon_user));
}

TEST(CheckUsers, RejectsRootUid) {
    const std::string message = config_error_of([] {
        check_users(SandboxUser{0, 65534, "root"}, daemon_user);
    });
    EXPECT_NE(message.find("network user 'root'"), std::string::npos) << message;
}

TEST(CheckUsers, RejectsRootGroup) {
    const std::string message = config_error_of([] {
        check_users(nobody, SandboxUser{1000, 0, "wheel"});
    });
    EXPECT_NE(message.find("key user 'wheel'"), std::string::npos) << message;
}

TEST(CheckUsers, RejectsSameUid) {
    const std::string message = config_error_of([] {
        check_users(nobody, SandboxUser{65534, 1, "nobody2"});
    });
    EXPECT_NE(message.find("same uid"), std::string::npos) << message;
    EXPECT_NE(message.find("'nobody2'"), std::string::npos) << message;
}

class EmptyRoot : public ::testing::Test {
  protected:
    void SetUp() override {
        if (!running_as_root()) {
            GTEST_SKIP() << "needs root to own the directory";
        }
        ASSERT_FALSE(dir_.path().empty());
        ASSERT_EQ(::chmod(dir_.path().c_str(), 0755), 0);
    }
    std::string check() {
        const std::array users{nobody, daemon_user};
        return config_error_of([&] { check_empty_root(dir_.path(), users); });
    }
    TempDirectory dir_;
};

TEST_F(EmptyRoot, AcceptsEmptyRootOwnedDirectory) {
    EXPECT_EQ(check(), "");
}

TEST_F(EmptyRoot, RejectsFileInside) {
    std::ofstream(dir_.path() / "leftover") << "x";
    EXPECT_NE(check().find("not empty (leftover)"), std::string::npos);
}

TEST_F(EmptyRoot, RejectsWorldWritable) {
    ASSERT_EQ(::chmod(dir_.path().c_str(), 0757), 0);
    EXPECT_NE(check().find("writable by others"), std::string::npos);
}

TEST_F(EmptyRoot, RejectsGroupWritableByUserGroup) {
    ASSERT_EQ(::chown(dir_.path().c_str(), 0, daemon_user.gid), 0);
    ASSERT_EQ(::chmod(dir_.path().c_str(), 0775), 0);
    EXPECT_NE(check().find("group-writable by the group of user 'daemon'"), std::string::npos);
}

TEST_F(EmptyRoot, AcceptsGroupWritableByOtherGroup) {
    ASSERT_EQ(::chmod(dir_.path().c_str(), 0775), 0);
    EXPECT_EQ(check(), "");
}

TEST_F(EmptyRoot, RejectsOwnerOtherThanRoot) {
    ASSERT_EQ(::chown(dir_.path().c_str(), nobody.uid, 0), 0);
    EXPECT_NE(check().find("owned by uid 65534, not root"), std::string::npos);
}

TEST_F(EmptyRoot, RejectsMissingDirectory) {
    const std::array users{nobody};
    const std::string message =
        config_error_of([&] { check_empty_root(dir_.path() / "missing", users); });
    EXPECT_NE(message.find("is not usable"), std::string::npos) << message;
}

TEST_F(EmptyRoot, RejectsRegularFile) {
    std::ofstream(dir_.path() / "file") << "x";
    const std::array users{nobody};
    const std::string message =
        config_error_of([&] { check_empty_root(dir_.path() / "file", users); });
    EXPECT_NE(message.find("is not a directory"), std::string::npos) << message;
}

TEST(DropPrivileges, CannotRegainRoot) {
    if (!running_as_root()) {
        GTEST_SKIP() << "needs root to switch users";
    }
    const int status = run_in_child([] {
        drop_privileges(nobody);
        uid_t real = 0;
        uid_t effective = 0;
        uid_t saved = 0;
        ::getresuid(&real, &effective, &saved);
        if (real != 65534 || effective != 65534 || saved != 65534 || ::getgid() != 65534) {
            return 1;
        }
        if (::getgroups(0, nullptr) != 0) {
            return 2;
        }
        return ::setuid(0) == -1 && errno == EPERM ? 0 : 3;
    });
    EXPECT_TRUE(exited_zero(status)) << describe_status(status);
}

TEST(EnterChroot, HidesHostFiles) {
    if (!running_as_root()) {
        GTEST_SKIP() << "needs root to chroot";
    }
    const TempDirectory root;
    ASSERT_EQ(::chmod(root.path().c_str(), 0755), 0);
    const int status = run_in_child([&] {
        enter_chroot(root.path());
        if (::open("/etc/passwd", O_RDONLY | O_CLOEXEC) != -1 || errno != ENOENT) {
            return 1;
        }
        std::array<char, 64> cwd{};
        return ::getcwd(cwd.data(), cwd.size()) != nullptr && std::string(cwd.data()) == "/" ? 0
                                                                                             : 2;
    });
    EXPECT_TRUE(exited_zero(status)) << describe_status(status);
}

TEST(ResourceLimits, ConnectionLimitsStopFork) {
    if (!running_as_root()) {
        GTEST_SKIP() << "RLIMIT_NPROC is only enforced after switching to a user";
    }
    const int status = run_in_child([] {
        set_resource_limits(connection_process_limits());
        drop_privileges(nobody);
        const pid_t pid = ::fork();
        if (pid == 0) {
            ::_exit(0);
        }
        return pid == -1 && errno == EAGAIN ? 0 : 1;
    });
    EXPECT_TRUE(exited_zero(status)) << describe_status(status);
}

TEST(ResourceLimits, SetsHardLimits) {
    const int status = run_in_child([] {
        set_resource_limits(connection_process_limits());
        rlimit files{};
        rlimit core{};
        ::getrlimit(RLIMIT_NOFILE, &files);
        ::getrlimit(RLIMIT_CORE, &core);
        return files.rlim_cur == 64 && files.rlim_max == 64 && core.rlim_max == 0 ? 0 : 1;
    });
    EXPECT_TRUE(exited_zero(status)) << describe_status(status);
}

TEST(NoDump, ClearsDumpableFlag) {
    const int status = run_in_child([] {
        set_no_dump();
        return ::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0 ? 0 : 1;
    });
    EXPECT_TRUE(exited_zero(status)) << describe_status(status);
}

TEST(NoNewPrivs, SetsFlag) {
    const int status = run_in_child([] {
        set_no_new_privs();
        return ::prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1 ? 0 : 1;
    });
    EXPECT_TRUE(exited_zero(status)) << describe_status(status);
}

std::string namespace_id(const char* name) {
    std::array<char, 64> target{};
    const std::string link = std::string("/proc/self/ns/") + name;
    const ssize_t size = ::readlink(link.c_str(), target.data(), target.size() - 1);
    return size > 0 ? std::string(target.data(), static_cast<std::size_t>(size)) : "";
}

TEST(EnterNamespaces, EntersOrReportsEachNamespace) {
    const std::string host_ipc = namespace_id("ipc");
    const std::string host_net = namespace_id("net");
    const int status = run_in_child([&] {
        const NamespaceResult result = enter_namespaces({.ipc = true, .network = true});
        const std::size_t entered = (result.ipc ? 1U : 0U) + (result.network ? 1U : 0U);
        if (entered + result.unsupported.size() != 2) {
            return 1;
        }
        if ((namespace_id("ipc") != host_ipc) != result.ipc) {
            return 2;
        }
        return (namespace_id("net") != host_net) == result.network ? 0 : 3;
    });
    EXPECT_TRUE(exited_zero(status)) << describe_status(status);
}

// The connection plan without the filter, so that the child can still inspect itself.
SandboxPlan connection_plan(const std::filesystem::path& root) {
    SandboxPlan plan;
    plan.namespaces.ipc = true;
    plan.root = root;
    plan.limits = connection_process_limits();
    plan.user = nobody;
    return plan;
}

TEST(ApplySandbox, ConfinesUserRootAndDumpable) {
    if (!running_as_root()) {
        GTEST_SKIP() << "needs root to chroot and switch users";
    }
    const TempDirectory root;
    ASSERT_EQ(::chmod(root.path().c_str(), 0755), 0);
    const SandboxPlan plan = connection_plan(root.path());
    testing::use_stderr_logger();
    const int status = run_in_child([&] {
        apply_sandbox(plan);
        if (::getuid() != nobody.uid || ::getgid() != nobody.gid) {
            return 1;
        }
        if (::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0 ||
            ::prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1) {
            return 2;
        }
        return ::access("/etc/passwd", F_OK) == -1 && errno == ENOENT ? 0 : 3;
    });
    EXPECT_TRUE(exited_zero(status)) << describe_status(status);
}

TEST(ApplySandbox, FullPlanTrapsOpen) {
    if (!running_as_root()) {
        GTEST_SKIP() << "needs root to chroot and switch users";
    }
    const TempDirectory root;
    ASSERT_EQ(::chmod(root.path().c_str(), 0755), 0);
    SandboxPlan plan = connection_plan(root.path());
    plan.seccomp = SeccompRole::connection;
    std::array<int, 2> pipe_fds{};
    ASSERT_EQ(::pipe2(pipe_fds.data(), O_CLOEXEC), 0);
    testing::use_stderr_logger();
    const int status = run_in_child([&] {
        apply_sandbox(plan);
        // Proves the child got past apply_sandbox before it tries the forbidden call.
        if (::write(pipe_fds[1], "applied", 7) != 7) {
            return 1;
        }
        ::open("/", O_RDONLY | O_CLOEXEC);
        return 0;
    });
    ::close(pipe_fds[1]);
    std::array<char, 16> buffer{};
    const ssize_t size = ::read(pipe_fds[0], buffer.data(), buffer.size());
    ::close(pipe_fds[0]);
    EXPECT_EQ(std::string(buffer.data(), static_cast<std::size_t>(std::max<ssize_t>(size, 0))),
              "applied");
    EXPECT_TRUE(killed_by_sigsys(status)) << describe_status(status);
}

// Runs body in a child after it installs a filter compiled in this process, as the
// supervisor's forked connection processes do.
int run_with_precompiled_filter(SeccompRole role, const std::function<int()>& body) {
    SandboxPlan plan;
    plan.seccomp = role;
    precompile_seccomp(plan);
    testing::use_stderr_logger();
    return run_in_child([&] {
        apply_sandbox(plan);
        return body();
    });
}

TEST(PrecompiledSeccomp, TrapsOpen) {
    const int status = run_with_precompiled_filter(SeccompRole::connection, [] {
        ::open("/", O_RDONLY | O_CLOEXEC);
        return 0;
    });
    EXPECT_TRUE(killed_by_sigsys(status)) << describe_status(status);
}

TEST(PrecompiledSeccomp, AllowsPlainIo) {
    const int status = run_with_precompiled_filter(
        SeccompRole::connection, [] { return ::write(STDERR_FILENO, "", 0) == 0 ? 0 : 1; });
    EXPECT_TRUE(exited_zero(status)) << describe_status(status);
}

// The tgkill check names the installing child, not the process that compiled the filter:
// abort() in the child signals itself, and a signal to the compiling process traps.
TEST(PrecompiledSeccomp, TgkillCheckNamesTheChild) {
    const int aborted = run_with_precompiled_filter(SeccompRole::connection, [] {
        std::abort();
        return 0;
    });
    ASSERT_TRUE(WIFSIGNALED(aborted)) << describe_status(aborted);
    EXPECT_EQ(WTERMSIG(aborted), SIGABRT) << describe_status(aborted);
    const pid_t compiler = ::getpid();
    const int trapped = run_with_precompiled_filter(SeccompRole::connection, [compiler] {
        ::syscall(SYS_tgkill, compiler, compiler, 0);
        return 0;
    });
    EXPECT_TRUE(killed_by_sigsys(trapped)) << describe_status(trapped);
}

TEST(PrecompiledSeccomp, KeyMemoryFilterTrapsSocket) {
    const int status = run_with_precompiled_filter(SeccompRole::key_memory, [] {
        ::socket(AF_INET, SOCK_STREAM, 0);
        return 0;
    });
    EXPECT_TRUE(killed_by_sigsys(status)) << describe_status(status);
}

TEST(PrecompiledSeccomp, RejectsProgramOfAnotherMode) {
    SandboxPlan plan;
    plan.seccomp = SeccompRole::connection;
    precompile_seccomp(plan);
    plan.seccomp_mode = SeccompMode::log;
    testing::use_stderr_logger();
    const int status = run_in_child([&] {
        try {
            apply_sandbox(plan);
        } catch (const Error& error) {
            return std::string_view(error.what()).find("precompiled") != std::string_view::npos ? 0
                                                                                                : 2;
        }
        return 1;
    });
    EXPECT_TRUE(exited_zero(status)) << describe_status(status);
}

}  // namespace
}  // namespace cloister
