// The layers the running daemon applies: deciding them from the config and the host, the plan
// of each role, children as PID 1 of their own PID namespace, and the SIGSYS report. Tests that
// switch users, chroot or enter namespaces need root and are skipped otherwise.
#include "core/sandbox_layers.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>

#include "core/config.h"
#include "core/error.h"
#include "core/fd.h"
#include "core/sandbox_sigsys.h"
#include "core/sandbox_spawn.h"
#include "core/seccomp_policy.h"
#include "tests/security/child.h"

namespace cloister {
namespace {

namespace fs = std::filesystem;

bool running_as_root() {
    return ::geteuid() == 0;
}

// A fresh directory, mode 0755, removed at the end of the test.
class TempDirectory {
  public:
    TempDirectory() {
        std::string pattern = (fs::temp_directory_path() / "cloister-layers-XXXXXX").string();
        if (::mkdtemp(pattern.data()) != nullptr && ::chmod(pattern.c_str(), 0755) == 0) {
            path_ = pattern;
        }
    }
    TempDirectory(const TempDirectory&) = delete;
    TempDirectory& operator=(const TempDirectory&) = delete;
    ~TempDirectory() {
        std::error_code ignored;
        fs::remove_all(path_, ignored);
    }
    [[nodiscard]] const fs::path& path() const { return path_; }

  private:
    fs::path path_;
};

// A config whose users exist on every Debian system.
Config make_config(const fs::path& root) {
    Config config;
    KeyConfig key;
    key.name = "k";
    key.file = "/nonexistent/k.pem";
    config.keys.push_back(key);
    VhostConfig vhost;
    vhost.name = "www";
    vhost.backend = SocketAddress::parse("127.0.0.1:8080");
    config.vhosts.push_back(vhost);
    config.sandbox.network_user = "nobody";
    config.sandbox.key_user = "daemon";
    config.sandbox.root_directory = root;
    return config;
}

std::string config_error_of(const Config& config, SandboxChecks checks) {
    try {
        static_cast<void>(decide_sandbox_layers(config, checks));
    } catch (const Error& error) {
        EXPECT_EQ(error.kind(), ErrorKind::config);
        return error.what();
    }
    return "";
}

// Reads everything from fd until end of file.
std::string read_all(int fd) {
    std::string text;
    std::array<char, 512> buffer{};
    for (ssize_t count = 0; (count = ::read(fd, buffer.data(), buffer.size())) > 0;) {
        text.append(buffer.data(), static_cast<std::size_t>(count));
    }
    return text;
}

int wait_status(pid_t pid) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return status;
}

std::pair<Fd, Fd> make_pipe() {
    std::array<int, 2> fds{};
    if (::pipe2(fds.data(), O_CLOEXEC) != 0) {
        throw_system_error("pipe2");
    }
    return {Fd(fds[0]), Fd(fds[1])};
}

// ---- deciding the layers ---------------------------------------------------------------

// The numbered check of the unprivileged run that failed, or 0 when all hold.
int check_unprivileged_layers(const SandboxLayers& layers) {
    const std::array<bool, 9> holds{
        !layers.network_user,
        !layers.key_user,
        !layers.root,
        !layers.pid_namespace,
        layers.seccomp.has_value(),
        layers.seccomp == SeccompMode::enforce,
        !layers.inactive.empty() &&
            layers.inactive.front().find("user switch and chroot") != std::string::npos,
        // Without a key user of its own, RLIMIT_NPROC would count the supervisor too.
        !key_sandbox_plan(layers, 2).limits.processes,
        connection_sandbox_plan(layers).limits.processes == rlim_t{0},
    };
    for (std::size_t i = 0; i < holds.size(); ++i) {
        if (!holds[i]) {
            return static_cast<int>(i) + 1;
        }
    }
    return 0;
}

// Run as root, the check runs in a child that first becomes the user nobody (65534).
TEST(SandboxLayers, UnprivilegedRunKeepsUsersAndChrootOff) {
    const TempDirectory root;
    const Config config = make_config(root.path());
    const int status = testing::run_in_child([&config] {
        const gid_t nobody = 65534;
        if (running_as_root() &&
            (::setgroups(0, nullptr) != 0 || ::setresgid(nobody, nobody, nobody) != 0 ||
             ::setresuid(nobody, nobody, nobody) != 0)) {
            return 100;
        }
        return check_unprivileged_layers(decide_sandbox_layers(config, {}));
    });
    ASSERT_TRUE(WIFEXITED(status)) << testing::describe_status(status);
    EXPECT_EQ(WEXITSTATUS(status), 0) << "check number that failed (100: dropping root failed)";
}

TEST(SandboxLayers, RootRunFindsUsersAndRoot) {
    if (!running_as_root()) {
        GTEST_SKIP() << "needs root";
    }
    const TempDirectory root;
    const SandboxLayers layers = decide_sandbox_layers(make_config(root.path()), {});
    ASSERT_TRUE(layers.network_user);
    ASSERT_TRUE(layers.key_user);
    EXPECT_EQ(layers.network_user->uid, 65534U);
    EXPECT_EQ(layers.key_user->uid, 1U);
    EXPECT_EQ(layers.root, root.path());
    EXPECT_TRUE(layers.connection_chroot);
    EXPECT_TRUE(layers.key_chroot);
    EXPECT_EQ(layers.key_role, SeccompRole::key_memory);
    EXPECT_TRUE(layers.ipc_namespace);
    EXPECT_TRUE(layers.network_namespace);
    EXPECT_TRUE(layers.inactive.empty());
}

TEST(SandboxLayers, MissingUserNamesUseradd) {
    if (!running_as_root()) {
        GTEST_SKIP() << "users are looked up only as root";
    }
    const TempDirectory root;
    Config config = make_config(root.path());
    config.sandbox.network_user = "cloister-no-such-user";
    const std::string message = config_error_of(config, {});
    EXPECT_NE(message.find("sandbox.network-user: user 'cloister-no-such-user' not found"),
              std::string::npos)
        << message;
    EXPECT_NE(message.find("useradd --system --no-create-home --shell /usr/sbin/nologin "
                           "cloister-no-such-user"),
              std::string::npos)
        << message;
}

TEST(SandboxLayers, RootUserRejected) {
    if (!running_as_root()) {
        GTEST_SKIP() << "users are looked up only as root";
    }
    const TempDirectory root;
    Config config = make_config(root.path());
    config.sandbox.key_user = "root";
    const std::string message = config_error_of(config, {});
    EXPECT_NE(message.find("key user 'root' (uid 0, gid 0) is root"), std::string::npos) << message;
}

TEST(SandboxLayers, MissingRootDirectoryCreated) {
    if (!running_as_root()) {
        GTEST_SKIP() << "creates a directory owned by root";
    }
    const TempDirectory parent;
    const fs::path root = parent.path() / "a" / "empty";
    const SandboxLayers layers =
        decide_sandbox_layers(make_config(root), SandboxChecks{.create_root = true});
    struct stat status {};
    ASSERT_EQ(::stat(root.c_str(), &status), 0);
    EXPECT_EQ(status.st_mode & 07777, 0755U);
    EXPECT_EQ(status.st_uid, 0U);
    EXPECT_EQ(layers.root, root);
}

TEST(SandboxLayers, MissingRootDirectoryKeptWhenOnlyChecking) {
    if (!running_as_root()) {
        GTEST_SKIP() << "the root directory is used only as root";
    }
    const TempDirectory parent;
    const fs::path root = parent.path() / "empty";
    static_cast<void>(decide_sandbox_layers(make_config(root), {}));
    EXPECT_FALSE(fs::exists(root));
}

TEST(SandboxLayers, WritableRootDirectoryRejected) {
    if (!running_as_root()) {
        GTEST_SKIP() << "the root directory is checked only as root";
    }
    const TempDirectory root;
    ASSERT_EQ(::chmod(root.path().c_str(), 0777), 0);
    const std::string message = config_error_of(make_config(root.path()), {});
    EXPECT_NE(message.find("sandbox.root-directory: chroot directory"), std::string::npos)
        << message;
    EXPECT_NE(message.find("is writable by others"), std::string::npos) << message;
}

TEST(SandboxLayers, UnixBackendKeepsConnectionChroot) {
    if (!running_as_root()) {
        GTEST_SKIP() << "the chroot is decided only as root";
    }
    const TempDirectory root;
    Config config = make_config(root.path());
    config.vhosts.front().backend = SocketAddress::parse("unix:/run/app.sock");
    const SandboxLayers layers = decide_sandbox_layers(config, {});
    EXPECT_TRUE(layers.connection_chroot);
    EXPECT_TRUE(layers.key_chroot);
    EXPECT_EQ(connection_sandbox_plan(layers).root, root.path());
    EXPECT_TRUE(layers.inactive.empty());
}

TEST(SandboxLayers, NoConnectionNetworkSelectsFilterAndNamespace) {
    if (!running_as_root()) {
        GTEST_SKIP() << "connection-network = \"none\" needs root";
    }
    const TempDirectory root;
    Config config = make_config(root.path());
    config.sandbox.connection_network = ConnectionNetwork::none;
    SandboxLayers layers = decide_sandbox_layers(config, {});
    EXPECT_TRUE(layers.connection_network_none);
    layers.connection_network_fd = 7;
    const SandboxPlan plan = connection_sandbox_plan(layers);
    ASSERT_TRUE(plan.seccomp);
    EXPECT_EQ(*plan.seccomp, SeccompRole::connection_no_network);
    EXPECT_EQ(plan.namespaces.join_network, 7);
    config.sandbox.connection_network = ConnectionNetwork::host;
    const SandboxPlan host = connection_sandbox_plan(decide_sandbox_layers(config, {}));
    EXPECT_EQ(*host.seccomp, SeccompRole::connection);
    EXPECT_EQ(host.namespaces.join_network, -1);
}

TEST(SandboxLayers, TokenKeyGetsPkcs11Filter) {
    const TempDirectory root;
    Config config = make_config(root.path());
    config.keys.front().file.clear();
    config.keys.front().uri = "pkcs11:token=t;object=k";
    const SandboxLayers layers = decide_sandbox_layers(config, {});
    EXPECT_TRUE(uses_pkcs11_keys(config));
    EXPECT_EQ(layers.key_role, SeccompRole::key_pkcs11);
    EXPECT_FALSE(layers.key_chroot);
    EXPECT_FALSE(layers.network_namespace);
    const SandboxPlan plan = key_sandbox_plan(layers, 2);
    ASSERT_TRUE(plan.seccomp);
    EXPECT_EQ(*plan.seccomp, SeccompRole::key_pkcs11);
    EXPECT_FALSE(plan.root);
    EXPECT_FALSE(plan.namespaces.network);
}

TEST(SandboxLayers, SeccompSettingSelectsMode) {
    const TempDirectory root;
    Config config = make_config(root.path());
    config.sandbox.seccomp = SeccompSetting::log;
    const SandboxLayers logged = decide_sandbox_layers(config, {});
    ASSERT_TRUE(logged.seccomp);
    EXPECT_EQ(*logged.seccomp, SeccompMode::log);
    EXPECT_EQ(connection_sandbox_plan(logged).seccomp_mode, SeccompMode::log);
    config.sandbox.seccomp = SeccompSetting::off;
    const SandboxLayers off = decide_sandbox_layers(config, {});
    EXPECT_FALSE(off.seccomp);
    EXPECT_FALSE(connection_sandbox_plan(off).seccomp);
    EXPECT_FALSE(key_sandbox_plan(off, 2).seccomp);
}

TEST(SandboxLayers, NamespacesOffInConfig) {
    const TempDirectory root;
    Config config = make_config(root.path());
    config.sandbox.namespaces = false;
    const SandboxLayers layers = decide_sandbox_layers(config, {.test_namespaces = true});
    EXPECT_FALSE(layers.pid_namespace);
    EXPECT_FALSE(layers.ipc_namespace);
    EXPECT_FALSE(layers.network_namespace);
}

// ---- connection uids --------------------------------------------------------------------

// Runs body in a forked child (testing::start_child) and returns the text it returned, or
// the message of the Error it threw.
std::string text_from_child(const std::function<std::string()>& body) {
    auto [read_end, write_end] = make_pipe();
    const pid_t pid = testing::start_child([&body, &read_end, &write_end] {
        read_end.reset();
        std::string text;
        try {
            text = body();
        } catch (const Error& error) {
            text = error.what();
        }
        return ::write(write_end.get(), text.data(), text.size()) < 0 ? 1 : 0;
    });
    write_end.reset();
    std::string text = read_all(read_end.get());
    testing::wait_child(pid);
    return text;
}

// A range of count ids that no account of this host uses, starting at 3,000,000.
UidRange free_range(std::uint64_t count) {
    return UidRange{3'000'000, count};
}

TEST(SandboxLayers, FreeUidRangeAccepted) {
    if (!running_as_root()) {
        GTEST_SKIP() << "connection uids need root";
    }
    const TempDirectory root;
    Config config = make_config(root.path());
    config.sandbox.connection_uids = free_range(16);
    const SandboxLayers layers = decide_sandbox_layers(config, {.test_namespaces = true});
    ASSERT_TRUE(layers.connection_uids);
    EXPECT_EQ(layers.connection_uids->first, 3'000'000U);
    EXPECT_EQ(layers.connection_uids->count, 16U);
}

TEST(SandboxLayers, UidRangeOverNetworkUserRejected) {
    if (!running_as_root()) {
        GTEST_SKIP() << "connection uids need root";
    }
    const TempDirectory root;
    Config config = make_config(root.path());
    config.sandbox.connection_uids = UidRange{65'530, 10};
    const std::string message = config_error_of(config, {});
    EXPECT_NE(message.find("sandbox.connection-uids: the range 65530-65539 contains the ids of "
                           "network-user 'nobody' (uid 65534"),
              std::string::npos)
        << message;
}

TEST(SandboxLayers, UidRangeOverGroupRejected) {
    if (!running_as_root()) {
        GTEST_SKIP() << "connection uids need root";
    }
    // A group whose gid no user has as uid or gid, so only the group database reports it.
    std::set<std::uint64_t> user_ids;
    ::setpwent();
    while (const passwd* user = ::getpwent()) {
        user_ids.insert(user->pw_uid);
        user_ids.insert(user->pw_gid);
    }
    ::endpwent();
    std::optional<std::pair<std::string, gid_t>> lone_group;
    ::setgrent();
    while (const group* entry = ::getgrent()) {
        if (user_ids.count(entry->gr_gid) == 0 && entry->gr_gid != 0) {
            lone_group.emplace(entry->gr_name, entry->gr_gid);
            break;
        }
    }
    ::endgrent();
    if (!lone_group) {
        GTEST_SKIP() << "every group of this host shares its id with a user";
    }
    const TempDirectory root;
    Config config = make_config(root.path());
    config.sandbox.connection_uids = UidRange{lone_group->second, 1};
    const std::string message = config_error_of(config, {});
    EXPECT_NE(message.find(fmt::format("contains the ids of group '{}' (gid {}) in the user "
                                       "database",
                                       lone_group->first, lone_group->second)),
              std::string::npos)
        << message;
}

TEST(SandboxLayers, UidRangeNeedsNamespaces) {
    if (!running_as_root()) {
        GTEST_SKIP() << "connection uids need root";
    }
    const TempDirectory root;
    Config config = make_config(root.path());
    config.sandbox.connection_uids = free_range(16);
    config.sandbox.namespaces = false;
    const std::string message = config_error_of(config, {});
    EXPECT_NE(message.find("the range 3000000-3000015 needs PID namespaces"), std::string::npos)
        << message;
    EXPECT_NE(message.find("namespaces = false in [sandbox]; set namespaces = true"),
              std::string::npos)
        << message;
}

TEST(SandboxLayers, UidRangeNeedsEnforcedSeccomp) {
    if (!running_as_root()) {
        GTEST_SKIP() << "connection uids need root";
    }
    const TempDirectory root;
    for (const SeccompSetting setting : {SeccompSetting::log, SeccompSetting::off}) {
        Config config = make_config(root.path());
        config.sandbox.connection_uids = free_range(16);
        config.sandbox.seccomp = setting;
        const std::string message = config_error_of(config, {});
        EXPECT_NE(message.find("the range 3000000-3000015 needs seccomp = \"enforce\""),
                  std::string::npos)
            << message;
    }
}

// As root, a forked child switches to nobody first, so the test runs either way.
TEST(SandboxLayers, UidRangeNeedsRoot) {
    const TempDirectory root;
    Config config = make_config(root.path());
    config.sandbox.connection_uids = free_range(16);
    const std::string message = text_from_child([&config]() -> std::string {
        if (running_as_root() &&
            (::setresgid(65534, 65534, 65534) != 0 || ::setresuid(65534, 65534, 65534) != 0)) {
            return "switching to nobody failed";
        }
        static_cast<void>(decide_sandbox_layers(config, {}));
        return "accepted";
    });
    EXPECT_NE(message.find("sandbox.connection-uids: the range 3000000-3000015 needs cloister to "
                           "run as root"),
              std::string::npos)
        << message;
}

// ---- the plans -------------------------------------------------------------------------

TEST(SandboxPlans, ConnectionUidPerChild) {
    if (!running_as_root()) {
        GTEST_SKIP() << "users are decided only as root";
    }
    const TempDirectory root;
    Config config = make_config(root.path());
    config.sandbox.connection_uids = free_range(16);
    const SandboxLayers layers = decide_sandbox_layers(config, {});
    const SandboxPlan shared = connection_sandbox_plan(layers);
    SandboxPlan first = shared;
    SandboxPlan second = shared;
    assign_connection_uid(first, 3'000'000);
    assign_connection_uid(second, 3'000'001);
    ASSERT_TRUE(first.user);
    ASSERT_TRUE(second.user);
    EXPECT_EQ(first.user->uid, 3'000'000U);
    EXPECT_EQ(first.user->gid, 3'000'000U);
    EXPECT_EQ(second.user->uid, 3'000'001U);
    EXPECT_EQ(second.user->gid, 3'000'001U);
    ASSERT_TRUE(shared.user);
    EXPECT_EQ(shared.user->name, "nobody");
    // The per-process limits stay those of every connection process.
    EXPECT_EQ(first.limits.processes, rlim_t{0});
    EXPECT_EQ(first.limits.open_files, shared.limits.open_files);
}

// A child that applies a plan with a range uid runs as that uid and gid, with no supplementary
// group, and cannot fork: RLIMIT_NPROC 0 applies to its own uid.
TEST(SandboxPlans, RangeUidAppliedInChild) {
    if (!running_as_root()) {
        GTEST_SKIP() << "switching users needs root";
    }
    SandboxPlan plan;
    plan.limits = connection_process_limits();
    assign_connection_uid(plan, 3'000'123);
    const std::string report = text_from_child([&plan] {
        apply_sandbox(plan);
        std::array<gid_t, 4> groups{};
        const int group_count = ::getgroups(static_cast<int>(groups.size()), groups.data());
        const pid_t grandchild = ::fork();
        if (grandchild == 0) {
            ::_exit(0);
        }
        return fmt::format("{} {} {} {}", ::getuid(), ::getgid(), group_count,
                           grandchild < 0 ? errno : 0);
    });
    EXPECT_EQ(report, fmt::format("3000123 3000123 0 {}", EAGAIN));
}

TEST(SandboxPlans, ConnectionAndKeyRoles) {
    if (!running_as_root()) {
        GTEST_SKIP() << "users and chroot are decided only as root";
    }
    const TempDirectory root;
    const SandboxLayers layers = decide_sandbox_layers(make_config(root.path()), {});
    const SandboxPlan connection = connection_sandbox_plan(layers);
    ASSERT_TRUE(connection.user);
    EXPECT_EQ(connection.user->name, "nobody");
    EXPECT_EQ(connection.root, root.path());
    EXPECT_TRUE(connection.namespaces.ipc);
    EXPECT_FALSE(connection.namespaces.network);
    EXPECT_EQ(connection.limits.processes, rlim_t{0});
    ASSERT_TRUE(connection.seccomp);
    EXPECT_EQ(*connection.seccomp, SeccompRole::connection);

    const SandboxPlan key = key_sandbox_plan(layers, 3);
    ASSERT_TRUE(key.user);
    EXPECT_EQ(key.user->name, "daemon");
    EXPECT_EQ(key.root, root.path());
    EXPECT_TRUE(key.namespaces.network);
    EXPECT_EQ(key.limits.processes, rlim_t{max_key_processes * 5});
    ASSERT_TRUE(key.seccomp);
    EXPECT_EQ(*key.seccomp, SeccompRole::key_memory);
}

TEST(SandboxPlans, WorkerCountFollowsConfig) {
    KeyProcessConfig config;
    config.workers = 3;
    EXPECT_EQ(key_process_workers(config), 3U);
    config.workers = 0;
    EXPECT_GE(key_process_workers(config), 1U);
}

// ---- children in a PID namespace -------------------------------------------------------

TEST(SandboxSpawn, ChildStartsAsPidOne) {
    if (!running_as_root()) {
        GTEST_SKIP() << "a new PID namespace needs CAP_SYS_ADMIN";
    }
    for (const bool pid_namespace : {true, false}) {
        auto [read_end, write_end] = make_pipe();
        // Standard error of both sides goes to a pipe during the fork: fork_child logs
        // nothing when all goes well.
        testing::use_stderr_logger();
        auto [log_read, log_write] = make_pipe();
        const Fd saved_stderr(::dup(STDERR_FILENO));
        ::dup2(log_write.get(), STDERR_FILENO);
        const pid_t pid = fork_child(pid_namespace);
        if (pid == 0) {
            const std::string text = std::to_string(::getpid());
            static_cast<void>(::write(write_end.get(), text.data(), text.size()));
            ::_exit(0);
        }
        ::dup2(saved_stderr.get(), STDERR_FILENO);
        log_write.reset();
        ASSERT_GT(pid, 0);
        write_end.reset();
        const std::string child_pid = read_all(read_end.get());
        EXPECT_EQ(wait_status(pid), 0);
        EXPECT_EQ(read_all(log_read.get()), "");
        if (pid_namespace) {
            EXPECT_EQ(child_pid, "1");
        } else {
            // The switch was undone: the next child is in the test's own namespace.
            EXPECT_EQ(child_pid, std::to_string(pid));
        }
    }
}

TEST(SandboxSpawn, ProbeFindsEveryNamespaceAsRoot) {
    if (!running_as_root()) {
        GTEST_SKIP() << "namespaces need CAP_SYS_ADMIN";
    }
    const NamespaceSupport support = probe_namespaces();
    EXPECT_TRUE(support.pid);
    EXPECT_TRUE(support.ipc);
    EXPECT_TRUE(support.network);
    EXPECT_TRUE(support.unsupported.empty());
}

TEST(SandboxSpawn, StopSignalEndsPidOne) {
    if (!running_as_root()) {
        GTEST_SKIP() << "a new PID namespace needs CAP_SYS_ADMIN";
    }
    for (const bool handled : {false, true}) {
        const pid_t pid = fork_child(true);
        if (pid == 0) {
            if (handled) {
                exit_on_stop_signals();
            }
            ::pause();
            ::_exit(0);
        }
        ASSERT_GT(pid, 0);
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        ::kill(pid, SIGTERM);
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        int status = 0;
        const pid_t reaped = ::waitpid(pid, &status, WNOHANG);
        if (handled) {
            ASSERT_EQ(reaped, pid) << "SIGTERM did not end PID 1 with a handler";
            ASSERT_TRUE(WIFEXITED(status));
            EXPECT_EQ(WEXITSTATUS(status), stop_signal_exit_status(SIGTERM));
        } else {
            // Without the handler the kernel discards SIGTERM for PID 1 of a namespace.
            EXPECT_EQ(reaped, 0);
            ::kill(pid, SIGKILL);
            wait_status(pid);
        }
    }
}

// ---- SIGSYS report ---------------------------------------------------------------------

TEST(SigsysReport, NamesCallAndEndsProcess) {
    const bool pid_namespace = running_as_root();
    auto [read_end, write_end] = make_pipe();
    const pid_t pid = fork_child(pid_namespace);
    if (pid == 0) {
        ::dup2(write_end.get(), STDERR_FILENO);
        set_sigsys_report_label("test 7");
        install_seccomp(SeccompRole::connection, SeccompMode::enforce);
        ::syscall(SYS_getuid);
        ::_exit(0);
    }
    ASSERT_GT(pid, 0);
    write_end.reset();
    const std::string output = read_all(read_end.get());
    const int status = wait_status(pid);
    EXPECT_EQ(output,
              "cloister: test 7: killed by seccomp: system call 102 (getuid) is not in the "
              "connection filter\n");
    ASSERT_TRUE(WIFSIGNALED(status)) << status;
    EXPECT_EQ(WTERMSIG(status), SIGSYS);
}

}  // namespace
}  // namespace cloister
