// The pure decisions of a configuration reload (SIGHUP): which settings need a restart, and
// which listening sockets stay, open or close. The supervisor applies them.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "core/config.h"

namespace cloister {

// Returns one message per setting that differs between current and next and that only a
// restart applies, such as
//   `[sandbox] seccomp changed from "enforce" to "log" (file:line:column); a restart
//   applies it, a reload keeps "enforce"`, where the location is that of the [sandbox] table.
// The [sandbox] table is decided once at start: its users and root directory are checked and
// created by the supervisor, and its namespaces were probed then. Every other setting
// reloads. Empty when next can replace current.
std::vector<std::string> restart_only_changes(const Config& current, const Config& next);

// The listeners of a reload, from the bound addresses of the current listeners and the
// addresses the new configuration requests (both formatted by format_address).
struct ListenerDiff {
    // One entry per wanted address, in order: the index of the current listener that keeps
    // serving it, or none when a new socket must be bound.
    std::vector<std::optional<std::size_t>> reuse;
    // The indices of current listeners that no wanted address names; they close.
    std::vector<std::size_t> removed;
};

ListenerDiff diff_listeners(const std::vector<std::string>& current,
                            const std::vector<std::string>& wanted);

// Explains why wanted[index], a new address of diff, failed to bind with EADDRINUSE when one of
// cloister's own current listeners already listens on it: the same address, or the same port and
// family where one of the two is the wildcard ("0.0.0.0", "[::]"). Linux rejects such a bind while
// the other socket listens, even with SO_REUSEADDR. The message names the listener and the fix.
// None when no current listener overlaps, so another program holds the address.
std::optional<std::string> own_listener_conflict(const std::vector<std::string>& current,
                                                 const std::vector<std::string>& wanted,
                                                 const ListenerDiff& diff, std::size_t index);

}  // namespace cloister
