// Process creation as the supervisor does it for each connection process, without the TLS
// work: fork and reap a child that exits at once, the same child as PID 1 of a new PID
// namespace (fork_child), and the same again with the child switching to a uid taken from a
// UidPool. docs/benchmarks.md records the results. The namespace cases need root.
//
//   spawn_bench --benchmark_repetitions=10 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>
#include <grp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <optional>

#include "core/error.h"
#include "core/sandbox_spawn.h"
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

void run_forks(benchmark::State& state, bool pid_namespace, std::optional<UidPool> pool) {
    if ((pid_namespace || pool) && ::geteuid() != 0) {
        state.SkipWithError("needs root: PID namespaces and setresuid");
        return;
    }
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
            ::_exit(0);
        }
        if (!reaped_cleanly(pid)) {
            state.SkipWithError("the child failed");
            return;
        }
        if (pool) {
            pool->give_back(id);
        }
    }
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

BENCHMARK(fork_wait)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(fork_wait_pid_namespace)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(fork_wait_pid_namespace_setuid)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace cloister

BENCHMARK_MAIN();
