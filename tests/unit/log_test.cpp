// Tests of the log line format and of process titles, each in a forked child so that the
// test process keeps its own logger, standard error and name.
#include "core/log.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <regex>
#include <string>

#include "core/process_title.h"

namespace cloister {
namespace {

// Runs body in a child whose standard error is a pipe, and returns what it wrote. The child
// exits 0 unless body returns false.
std::string run_in_child(const std::function<bool()>& body, int* exit_status = nullptr) {
    std::array<int, 2> fds{};
    EXPECT_EQ(pipe(fds.data()), 0);
    const pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], STDERR_FILENO);
        _exit(body() ? 0 : 1);
    }
    close(fds[1]);
    std::string output;
    std::array<char, 4096> buffer{};
    for (ssize_t received = 0; (received = read(fds[0], buffer.data(), buffer.size())) > 0;) {
        output.append(buffer.data(), static_cast<std::size_t>(received));
    }
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (exit_status != nullptr) {
        *exit_status = status;
    }
    return output;
}

constexpr const char* timestamp = R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})";

TEST(Logging, LineHasTimeLevelPidAndRole) {
    const std::string output = run_in_child([] {
        init_logging("supervisor", LogLevel::info);
        spdlog::info("listening on {}", "127.0.0.1:8443");
        spdlog::warn("careful");
        return true;
    });
    const std::regex info(std::string("^") + timestamp +
                          R"( info cloister\[\d+\] supervisor: listening on 127\.0\.0\.1:8443$)");
    const std::regex warning(std::string("^") + timestamp +
                             R"( warning cloister\[\d+\] supervisor: careful$)");
    std::istringstream lines(output);
    std::string first;
    std::string second;
    std::getline(lines, first);
    std::getline(lines, second);
    EXPECT_TRUE(std::regex_match(first, info)) << first;
    EXPECT_TRUE(std::regex_match(second, warning)) << second;
}

TEST(Logging, ConnectionIdReplacesRole) {
    const std::string output = run_in_child([] {
        init_logging("connection", LogLevel::info);
        set_log_connection(42);
        spdlog::info("connection closed: result=ok");
        return true;
    });
    EXPECT_TRUE(std::regex_search(output, std::regex(R"( info cloister\[\d+\] connection\[42\]: )"
                                                     R"(connection closed: result=ok\n$)")))
        << output;
}

TEST(Logging, LevelFiltersLines) {
    const std::string output = run_in_child([] {
        init_logging("key", LogLevel::warning);
        spdlog::debug("debug line");
        spdlog::info("info line");
        spdlog::error("error line");
        return true;
    });
    EXPECT_EQ(output.find("debug line"), std::string::npos);
    EXPECT_EQ(output.find("info line"), std::string::npos);
    EXPECT_NE(output.find(" error cloister["), std::string::npos) << output;
}

// Standard error is a pipe, not a terminal, so the level carries no colour codes.
TEST(Logging, NoColourWithoutTerminal) {
    const std::string output = run_in_child([] {
        init_logging("supervisor", LogLevel::info);
        spdlog::error("plain");
        return true;
    });
    EXPECT_EQ(output.find('\x1b'), std::string::npos) << output;
}

std::string read_file(const std::string& path) {
    std::ifstream file(path);
    std::string text;
    std::getline(file, text);
    return text;
}

TEST(ProcessTitle, OverwritesArgumentMemoryAndSetsName) {
    int status = -1;
    const std::string output = run_in_child(
        [] {
            // An argv block laid out as the kernel does: strings back to back.
            static std::array<char, 64> block{};
            const std::string original = std::string("/usr/sbin/cloister") + '\0' + "--config" +
                                         '\0' + "/etc/cloister/cloister.toml" + '\0';
            original.copy(block.data(), original.size());
            std::array<char*, 4> argv{block.data(), block.data() + 19, block.data() + 28, nullptr};
            setenv("CLOISTER_TITLE_TEST", "kept", 1);
            init_process_title(3, argv.data());
            set_process_title("connection 42 127.0.0.1:5555");
            const std::string title(block.data());
            const bool padded = block[title.size()] == '\0' && block[original.size() - 1] == '\0';
            fprintf(stderr, "title=%s\ncomm=%s\nargv1=%s\nenv=%s\npadded=%d\n", title.c_str(),
                    read_file("/proc/self/comm").c_str(), argv[1], getenv("CLOISTER_TITLE_TEST"),
                    padded ? 1 : 0);
            return true;
        },
        &status);
    EXPECT_EQ(status, 0);
    EXPECT_NE(output.find("title=cloister: connection 42 127.0.0.1:5555\n"), std::string::npos)
        << output;
    EXPECT_NE(output.find("comm=cloister-conn\n"), std::string::npos) << output;
    EXPECT_NE(output.find("argv1=--config\n"), std::string::npos) << output;
    EXPECT_NE(output.find("env=kept\n"), std::string::npos) << output;
    EXPECT_NE(output.find("padded=1\n"), std::string::npos) << output;
}

TEST(ProcessTitle, LongTitleIsCutToArgumentMemory) {
    const std::string output = run_in_child([] {
        static std::array<char, 16> block{};
        const std::string original = std::string("cloister") + '\0' + "-x" + '\0';
        original.copy(block.data(), original.size());
        std::array<char*, 3> argv{block.data(), block.data() + 9, nullptr};
        init_process_title(2, argv.data());
        set_process_title("cloister: supervisor");
        fprintf(stderr, "title=%s\ncomm=%s\n", block.data(), read_file("/proc/self/comm").c_str());
        return true;
    });
    // 12 bytes of argument memory hold 11 title bytes and the final NUL.
    EXPECT_NE(output.find("title=cloister: s\n"), std::string::npos) << output;
    EXPECT_NE(output.find("comm=cloister-super\n"), std::string::npos) << output;
}

}  // namespace
}  // namespace cloister
