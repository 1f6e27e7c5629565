// Runs sandbox_canary for each forbidden call: the real filter must kill it with SIGSYS, and
// without the filter the same call must return.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <string>
#include <vector>

#include "tests/security/child.h"

namespace cloister {
namespace {

using testing::describe_status;
using testing::exited_zero;
using testing::killed_by_sigsys;

struct CanaryRun {
    int status = -1;
    std::string output;
};

std::string read_all(int fd) {
    std::string output;
    std::array<char, 512> buffer{};
    ssize_t size = 0;
    while ((size = ::read(fd, buffer.data(), buffer.size())) > 0) {
        output.append(buffer.data(), static_cast<std::size_t>(size));
    }
    return output;
}

// Runs the canary with args and collects its standard output and wait status.
CanaryRun run_canary(std::vector<std::string> args) {
    std::array<int, 2> pipe_fds{};
    if (::pipe2(pipe_fds.data(), O_CLOEXEC) != 0) {
        return {};
    }
    args.insert(args.begin(), CLOISTER_CANARY);
    std::vector<char*> argv;
    for (std::string& arg : args) {
        argv.push_back(arg.data());
    }
    argv.push_back(nullptr);
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::dup2(pipe_fds[1], STDOUT_FILENO);
        ::execv(argv[0], argv.data());
        ::_exit(127);
    }
    ::close(pipe_fds[1]);
    CanaryRun run;
    run.output = read_all(pipe_fds[0]);
    ::close(pipe_fds[0]);
    if (pid < 0 || ::waitpid(pid, &run.status, 0) < 0) {
        run.status = -1;
    }
    return run;
}

struct AttackCase {
    const char* role;
    const char* attack;
};

void PrintTo(const AttackCase& test_case, std::ostream* out) {
    *out << test_case.role << " " << test_case.attack;
}

class CanaryAttack : public ::testing::TestWithParam<AttackCase> {};

TEST_P(CanaryAttack, KilledBySigsysUnderFilter) {
    const auto run = run_canary({GetParam().role, GetParam().attack});
    EXPECT_TRUE(killed_by_sigsys(run.status)) << describe_status(run.status);
    EXPECT_EQ(run.output, "");
}

TEST_P(CanaryAttack, SurvivesWithoutFilter) {
    const auto run = run_canary({GetParam().role, GetParam().attack, "--no-sandbox"});
    EXPECT_TRUE(exited_zero(run.status)) << describe_status(run.status);
    EXPECT_EQ(run.output.rfind("survived", 0), 0U) << run.output;
}

std::string case_name(const ::testing::TestParamInfo<AttackCase>& info) {
    std::string name = std::string(info.param.role) + "_" + info.param.attack;
    for (char& c : name) {
        if (c == '-') {
            c = '_';
        }
    }
    return name;
}

INSTANTIATE_TEST_SUITE_P(
    Connection, CanaryAttack,
    ::testing::Values(AttackCase{"connection", "open"}, AttackCase{"connection", "socket-netlink"},
                      AttackCase{"connection", "socket-udp"}, AttackCase{"connection", "execve"},
                      AttackCase{"connection", "ptrace"}, AttackCase{"connection", "fork"},
                      AttackCase{"connection", "process-vm-readv"},
                      AttackCase{"connection", "mmap-exec"},
                      AttackCase{"connection", "socket-unix"}),
    case_name);

INSTANTIATE_TEST_SUITE_P(ConnectionNoNetwork, CanaryAttack,
                         ::testing::Values(AttackCase{"connection-no-network", "socket-inet"},
                                           AttackCase{"connection-no-network", "socket-unix"},
                                           AttackCase{"connection-no-network", "connect"},
                                           AttackCase{"connection-no-network", "open"},
                                           AttackCase{"connection-no-network", "execve"},
                                           AttackCase{"connection-no-network", "fork"}),
                         case_name);

INSTANTIATE_TEST_SUITE_P(
    KeyMemory, CanaryAttack,
    ::testing::Values(AttackCase{"key-memory", "open"}, AttackCase{"key-memory", "socket-inet"},
                      AttackCase{"key-memory", "socket-netlink"},
                      AttackCase{"key-memory", "execve"}, AttackCase{"key-memory", "ptrace"},
                      AttackCase{"key-memory", "fork"}, AttackCase{"key-memory", "mmap-exec"}),
    case_name);

INSTANTIATE_TEST_SUITE_P(KeyPkcs11, CanaryAttack,
                         ::testing::Values(AttackCase{"key-pkcs11", "open-write"},
                                           AttackCase{"key-pkcs11", "socket-netlink"},
                                           AttackCase{"key-pkcs11", "socket-udp"},
                                           AttackCase{"key-pkcs11", "execve"},
                                           AttackCase{"key-pkcs11", "ptrace"},
                                           AttackCase{"key-pkcs11", "fork"}),
                         case_name);

TEST(Canary, ConnectionFilterAllowsTcpSocket) {
    const auto run = run_canary({"connection", "socket-inet"});
    EXPECT_TRUE(exited_zero(run.status)) << describe_status(run.status);
    EXPECT_EQ(run.output.rfind("survived (result", 0), 0U) << run.output;
}

TEST(Canary, ConnectionFilterAllowsConnect) {
    const auto run = run_canary({"connection", "connect"});
    EXPECT_TRUE(exited_zero(run.status)) << describe_status(run.status);
    EXPECT_EQ(run.output, "survived (Bad file descriptor)\n");
}

TEST(Canary, KeyPkcs11FilterAllowsReadOnlyOpen) {
    const auto run = run_canary({"key-pkcs11", "open"});
    EXPECT_TRUE(exited_zero(run.status)) << describe_status(run.status);
    EXPECT_EQ(run.output.rfind("survived (result", 0), 0U) << run.output;
}

TEST(Canary, LogModeAllowsForbiddenOpen) {
    const auto run = run_canary({"connection", "open", "--log-mode"});
    EXPECT_TRUE(exited_zero(run.status)) << describe_status(run.status);
    EXPECT_EQ(run.output.rfind("survived (result", 0), 0U) << run.output;
}

TEST(Canary, X32SyscallKilledEvenInLogMode) {
    const auto enforced = run_canary({"connection", "x32-syscall"});
    EXPECT_TRUE(killed_by_sigsys(enforced.status)) << describe_status(enforced.status);
    const auto logged = run_canary({"connection", "x32-syscall", "--log-mode"});
    EXPECT_TRUE(killed_by_sigsys(logged.status)) << describe_status(logged.status);
}

TEST(Canary, RejectsUnknownAttack) {
    const auto run = run_canary({"connection", "no-such-attack"});
    ASSERT_TRUE(WIFEXITED(run.status)) << describe_status(run.status);
    EXPECT_EQ(WEXITSTATUS(run.status), 2);
}

}  // namespace
}  // namespace cloister
