// A range of user ids for connection processes ([sandbox] connection-uids), and the pool that
// hands each live connection process an id of its own.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <istream>
#include <optional>
#include <set>
#include <string>
#include <string_view>

namespace cloister {

// The ids first to first + count - 1. Each id serves as both uid and gid.
struct UidRange {
    uid_t first = 0;
    std::uint64_t count = 0;

    [[nodiscard]] uid_t last() const { return static_cast<uid_t>(first + count - 1); }
    [[nodiscard]] bool contains(std::uint64_t id) const {
        return id >= first && id - first < count;
    }
    // "FIRST-LAST", the form parse_uid_range reads.
    [[nodiscard]] std::string to_string() const;
};

// The highest id a range may contain: (uid_t)-1 means "no change" to setresuid and chown.
inline constexpr std::uint64_t max_range_id = 4'294'967'294;

// Parses "FIRST-LAST": two decimal ids with FIRST <= LAST <= max_range_id, both included.
// Returns nullopt for any other text. Accepts 0, which the caller rejects where root matters.
std::optional<UidRange> parse_uid_range(std::string_view text);

// The first entry of a subordinate id file (/etc/subuid or /etc/subgid, lines
// "OWNER:FIRST:COUNT") whose ids overlap range, as its text, or nullopt. A user namespace of
// OWNER maps its ids onto those host ids, so its processes may run as them. Skips empty lines,
// lines starting with '#' and lines that are not three fields with decimal FIRST and COUNT.
std::optional<std::string> find_subordinate_overlap(const UidRange& range, std::istream& entries);

// The free and held ids of one range. A connection process holds its id from its fork until
// the supervisor has reaped it. The pool only records which ids are free, held or withheld.
class UidPool {
  public:
    explicit UidPool(UidRange range);

    // Takes the id that has been free longest: ids never handed out first, in ascending
    // order, then returned ids in the order of their return. Returns nullopt when every id is
    // held or withheld.
    std::optional<uid_t> take();

    // Returns id, which take() handed out, to the free ids. Throws std::logic_error when id is
    // not held.
    void give_back(uid_t id);

    // Keeps id, which take() handed out, out of the free ids until release_withheld(id).
    // Throws std::logic_error when id is not held.
    void withhold(uid_t id);

    // Moves a withheld id to the free ids. Throws std::logic_error when id is not withheld.
    void release_withheld(uid_t id);

    [[nodiscard]] const UidRange& range() const { return range_; }
    [[nodiscard]] const std::set<uid_t>& withheld() const { return withheld_; }
    [[nodiscard]] std::uint64_t held_count() const { return held_.size(); }
    [[nodiscard]] std::uint64_t free_count() const;

  private:
    void remove_held(uid_t id, const char* action);

    UidRange range_;
    std::uint64_t never_used_ = 0;  // ids range_.first + never_used_ onward were never handed out
    std::deque<uid_t> returned_;    // free ids that were handed out before, oldest return first
    std::set<uid_t> held_;
    std::set<uid_t> withheld_;
};

}  // namespace cloister
