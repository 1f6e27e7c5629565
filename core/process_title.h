// Names processes by role, so that `ps` shows "cloister: key" or "cloister: connection 42".
#pragma once

#include <string_view>

namespace cloister {

// Remembers the memory of argv and environ so that later titles can overwrite it. Call once
// from main before anything reads the environment.
void init_process_title(int argc, char** argv);

// Sets the title shown by `ps` (command line) and the short name in /proc/PID/comm.
void set_process_title(std::string_view title);

}  // namespace cloister
