// The process title overwrites the memory that contains argv and, right after it, the
// environment strings, because /proc/PID/cmdline (what `ps` prints) reads that memory.
// init_process_title first copies the environment and the arguments elsewhere so that
// getenv() and argv stay valid once the original bytes are overwritten.
#include "core/process_title.h"

#include <sys/prctl.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <string>

namespace cloister {
namespace {

constexpr std::string_view title_prefix = "cloister: ";

// The writable argv and environment memory of this process. Process-wide by nature: there is
// one command line per process.
struct TitleArea {
    char* begin = nullptr;
    std::size_t size = 0;
};

TitleArea title_area;  // NOLINT(cppcoreguidelines-avoid-non-const-global-variables)

// Returns one past the end of the run of strings in list that starts at end and is laid out
// back to back in memory, as the kernel lays out argv and the environment.
char* extend_over(char** list, char* end) {
    for (char** entry = list; entry != nullptr && *entry != nullptr; ++entry) {
        if (*entry != end) {
            break;
        }
        end = *entry + std::strlen(*entry) + 1;
    }
    return end;
}

// Copies every environment string and the environ array to the heap. The copies are never
// freed because environ must stay valid until the process exits.
void move_environment() {
    std::size_t count = 0;
    while (environ != nullptr && environ[count] != nullptr) {
        ++count;
    }
    auto** copy = new char*[count + 1];  // NOLINT(cppcoreguidelines-owning-memory)
    for (std::size_t i = 0; i < count; ++i) {
        copy[i] = strdup(environ[i]);
    }
    copy[count] = nullptr;
    environ = copy;
}

// Returns the short name for /proc/PID/comm (at most 15 bytes) from the role word that starts
// the title.
const char* short_name(std::string_view title) {
    if (title.starts_with("supervisor")) {
        return "cloister-super";
    }
    if (title.starts_with("key")) {
        return "cloister-key";
    }
    if (title.starts_with("connection")) {
        return "cloister-conn";
    }
    return "cloister";
}

}  // namespace

void init_process_title(int argc, char** argv) {
    if (argc <= 0 || argv == nullptr || argv[0] == nullptr) {
        return;
    }
    char* begin = argv[0];
    char* end = extend_over(argv, begin);
    end = extend_over(environ, end);
    move_environment();
    for (int i = 0; i < argc; ++i) {
        argv[i] = strdup(argv[i]);
    }
    title_area = TitleArea{begin, static_cast<std::size_t>(end - begin)};
}

// Accepts "key" or "cloister: key" alike and shows "cloister: key". A title longer than the
// original command line and environment is cut.
void set_process_title(std::string_view title) {
    if (title.starts_with(title_prefix)) {
        title.remove_prefix(title_prefix.size());
    }
    prctl(PR_SET_NAME, short_name(title), 0, 0, 0);
    if (title_area.begin == nullptr || title_area.size < 2) {
        return;
    }
    const std::string text = std::string(title_prefix) + std::string(title);
    const std::size_t length = std::min(text.size(), title_area.size - 1);
    std::memcpy(title_area.begin, text.data(), length);
    // NUL padding makes the kernel and ps end the command line right after the title.
    std::memset(title_area.begin + length, 0, title_area.size - length);
}

}  // namespace cloister
