// Process creation as the supervisor does it for each connection process, without the TLS
// work: fork and reap a child that exits at once, the same child as PID 1 of a new PID
// namespace (fork_child), and the same again with the child switching to a uid taken from a
// UidPool. docs/benchmarks.md records the results. The namespace cases need root.
//
//   spawn_bench --benchmark_repetitions=10 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>
#include <grp.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <functional>
#include <optional>

#include "core/error.h"
#include "core/sandbox_spawn.h"
#include "core/seccomp_policy.h"
#include "core/uid_pool.h"

namespace cloister {
namespace {

// Ids far above any account of a usual host. The pool hands out every id once before it
// reuses one, as the supervisor's pool does.
constexpr UidRange bench_uids{3'900'000'000, 65'536};

// Reaps pid and returns true when it exited with status 0.
bool reaped_cleanly(pid_t pid) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            return false;
        }
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// Switches to uid and gid id with no supplementary groups, as drop_privileges does, and
// exits with 0 when every call succeeded.
[[noreturn]] void switch_and_exit(uid_t id) noexcept {
    const bool switched = ::setgroups(0, nullptr) == 0 && ::setresgid(id, id, id) == 0 &&
                          ::setresuid(id, id, id) == 0;
    ::_exit(switched ? 0 : 1);
}

// User plus system time of every reaped child of this process, in seconds.
double children_cpu_seconds() {
    rusage usage{};
    ::getrusage(RUSAGE_CHILDREN, &usage);
    const auto seconds = [](const timeval& time) {
        return static_cast<double>(time.tv_sec) + static_cast<double>(time.tv_usec) / 1e6;
    };
    return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// The work of a child before it exits. The child exits with 0 when the step returns true.
using ChildStep = std::function<bool()>;

void run_forks(benchmark::State& state, bool pid_namespace, std::optional<UidPool> pool,
               const ChildStep& step = {}) {
    if ((pid_namespace || pool) && ::geteuid() != 0) {
        state.SkipWithError("needs root: PID namespaces and setresuid");
        return;
    }
    const double children_before = children_cpu_seconds();
    for (auto _ : state) {
        uid_t id = 0;
        if (pool) {
            const std::optional<uid_t> taken = pool->take();
            if (!taken) {
                state.SkipWithError("no free uid in the pool");
                return;
            }
            id = *taken;
        }
        pid_t pid = 0;
        try {
            pid = fork_child(pid_namespace);
        } catch (const Error& error) {
            state.SkipWithError(error.what());
            return;
        }
        if (pid == 0) {
            if (pool) {
                switch_and_exit(id);
            }
            bool done = true;
            if (step) {
                try {
                    done = step();
                } catch (const Error&) {
                    done = false;
                }
            }
            ::_exit(done ? 0 : 1);
        }
        if (!reaped_cleanly(pid)) {
            state.SkipWithError("the child failed");
            return;
        }
        if (pool) {
            pool->give_back(id);
        }
    }
    // The reaped children's user and system time, which the CPU column leaves out.
    state.counters["child_cpu_us"] = benchmark::Counter(
        (children_cpu_seconds() - children_before) * 1e6 / static_cast<double>(state.iterations()));
}

void fork_wait(benchmark::State& state) {
    run_forks(state, false, std::nullopt);
}

void fork_wait_pid_namespace(benchmark::State& state) {
    run_forks(state, true, std::nullopt);
}

void fork_wait_pid_namespace_setuid(benchmark::State& state) {
    run_forks(state, true, UidPool(bench_uids));
}

// The connection filter built with libseccomp in each child, as before the supervisor
// compiled it once.
void fork_wait_seccomp_compiled_in_child(benchmark::State& state) {
    run_forks(state, false, std::nullopt, [] {
        install_seccomp(SeccompRole::connection, SeccompMode::enforce);
        return true;
    });
}

// The connection filter compiled once here and only installed by each child.
void fork_wait_seccomp_precompiled(benchmark::State& state) {
    const SeccompProgram program(SeccompRole::connection, SeccompMode::enforce);
    run_forks(state, false, std::nullopt, [&program] {
        program.install();
        return true;
    });
}

// A new IPC namespace per child (sandbox.ipc-namespace).
void fork_wait_ipc_namespace(benchmark::State& state) {
    if (::geteuid() != 0) {
        state.SkipWithError("needs root: unshare(CLONE_NEWIPC)");
        return;
    }
    run_forks(state, false, std::nullopt, [] { return ::unshare(CLONE_NEWIPC) == 0; });
}

BENCHMARK(fork_wait)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(fork_wait_pid_namespace)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(fork_wait_pid_namespace_setuid)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(fork_wait_seccomp_compiled_in_child)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(fork_wait_seccomp_precompiled)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(fork_wait_ipc_namespace)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace cloister

BENCHMARK_MAIN();
