// Process creation as the supervisor does it for each connection process, without the TLS
// work: fork and reap a child that exits at once, the same child as PID 1 of a new PID
// namespace (fork_child), and the same again with the child switching to a uid taken from a
// UidPool. Further cases add one set-up step of a connection process each (seccomp, IPC
// namespace, mapping the TLS libraries' code ahead of use). docs/benchmarks.md records the results.
// The namespace cases need root.
//
//   spawn_bench --benchmark_repetitions=10 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>
#include <grp.h>
#include <link.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <optional>
#include <span>
#include <string_view>

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

// The way a child maps the code and read-only data of loaded objects ahead of use.
enum class Prefault {
    // madvise(MADV_POPULATE_READ) on each segment (Linux 5.14 and later).
    populate,
    // A read of one byte per 64 KiB, so that each read fault maps a whole fault-around
    // window (fault_around_bytes in debugfs, 64 KiB by default). Pages missing from the page
    // cache stay unmapped.
    read_stride,
};

struct PrefaultRequest {
    std::span<const std::string_view> objects;
    Prefault method = Prefault::populate;
    std::size_t segments = 0;
    bool failed = false;
};

bool is_selected(const char* file_name, std::span<const std::string_view> objects) {
    const std::string_view name = file_name == nullptr ? std::string_view() : file_name;
    for (const std::string_view object : objects) {
        if (name.find(object) != std::string_view::npos) {
            return true;
        }
    }
    return false;
}

// Maps the segments without write permission of one selected object. Returns non-zero,
// which ends dl_iterate_phdr, after a failed madvise.
int prefault_object(dl_phdr_info* info, std::size_t, void* data) {
    auto& request = *static_cast<PrefaultRequest*>(data);
    if (!is_selected(info->dlpi_name, request.objects)) {
        return 0;
    }
    const auto page_size = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    constexpr std::uintptr_t stride = 64 * 1024;
    for (ElfW(Half) i = 0; i < info->dlpi_phnum; ++i) {
        const ElfW(Phdr)& header = info->dlpi_phdr[i];
        if (header.p_type != PT_LOAD || (header.p_flags & PF_W) != 0 || header.p_memsz == 0) {
            continue;
        }
        const std::uintptr_t start = (info->dlpi_addr + header.p_vaddr) & ~(page_size - 1);
        const std::uintptr_t end = info->dlpi_addr + header.p_vaddr + header.p_memsz;
        if (request.method == Prefault::populate) {
            if (::madvise(reinterpret_cast<void*>(start), end - start, MADV_POPULATE_READ) != 0) {
                request.failed = true;
                return 1;
            }
        } else {
            for (std::uintptr_t address = start; address < end; address += stride) {
                benchmark::DoNotOptimize(*reinterpret_cast<const volatile unsigned char*>(address));
            }
            benchmark::DoNotOptimize(*reinterpret_cast<const volatile unsigned char*>(end - 1));
        }
        ++request.segments;
    }
    return 0;
}

// Runs forks whose child maps the code and read-only data of objects ahead of use.
void run_forks_prefaulting(benchmark::State& state, std::span<const std::string_view> objects,
                           Prefault method) {
    // Keeps libssl and libcrypto loaded even when the linker drops libraries that the
    // program calls nothing in.
    benchmark::DoNotOptimize(OpenSSL_version_num());
    benchmark::DoNotOptimize(TLS_server_method());
    run_forks(state, false, std::nullopt, [objects, method] {
        PrefaultRequest request{objects, method};
        ::dl_iterate_phdr(prefault_object, &request);
        return !request.failed && request.segments > 0;
    });
}

constexpr std::array<std::string_view, 2> tls_libraries{"libssl.so", "libcrypto.so"};

// libssl and libcrypto with MADV_POPULATE_READ.
void fork_wait_populate_tls_libraries(benchmark::State& state) {
    run_forks_prefaulting(state, tls_libraries, Prefault::populate);
}

// The same with libc and libstdc++ as well.
void fork_wait_populate_tls_and_c_libraries(benchmark::State& state) {
    constexpr std::array<std::string_view, 4> objects{"libssl.so", "libcrypto.so", "libc.so",
                                                      "libstdc++.so"};
    run_forks_prefaulting(state, objects, Prefault::populate);
}

// libssl and libcrypto with one read per 64 KiB.
void fork_wait_read_stride_tls_libraries(benchmark::State& state) {
    run_forks_prefaulting(state, tls_libraries, Prefault::read_stride);
}

BENCHMARK(fork_wait)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(fork_wait_pid_namespace)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(fork_wait_pid_namespace_setuid)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(fork_wait_seccomp_compiled_in_child)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(fork_wait_seccomp_precompiled)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(fork_wait_ipc_namespace)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(fork_wait_populate_tls_libraries)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(fork_wait_populate_tls_and_c_libraries)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(fork_wait_read_stride_tls_libraries)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace cloister

BENCHMARK_MAIN();
