#include "core/uid_pool.h"

#include <fmt/format.h>

#include <charconv>
#include <stdexcept>

namespace cloister {
namespace {

// Parses a whole decimal number without sign, or returns nullopt.
std::optional<std::uint64_t> parse_id(std::string_view text) {
    std::uint64_t value = 0;
    const char* end = text.data() + text.size();
    const auto [stop, error] = std::from_chars(text.data(), end, value);
    if (text.empty() || error != std::errc() || stop != end) {
        return std::nullopt;
    }
    return value;
}

}  // namespace

std::string UidRange::to_string() const {
    return fmt::format("{}-{}", first, last());
}

std::optional<UidRange> parse_uid_range(std::string_view text) {
    const std::size_t dash = text.find('-');
    if (dash == std::string_view::npos) {
        return std::nullopt;
    }
    const auto first = parse_id(text.substr(0, dash));
    const auto last = parse_id(text.substr(dash + 1));
    if (!first || !last || *first > *last || *last > max_range_id) {
        return std::nullopt;
    }
    return UidRange{static_cast<uid_t>(*first), *last - *first + 1};
}

std::optional<std::string> find_subordinate_overlap(const UidRange& range, std::istream& entries) {
    std::string line;
    while (std::getline(entries, line)) {
        if (line.empty() || line.starts_with('#')) {
            continue;
        }
        const std::string_view text(line);
        const std::size_t first_colon = text.find(':');
        const std::size_t second_colon = text.find(':', first_colon + 1);
        if (first_colon == std::string_view::npos || second_colon == std::string_view::npos) {
            continue;
        }
        const auto first = parse_id(text.substr(first_colon + 1, second_colon - first_colon - 1));
        const auto count = parse_id(text.substr(second_colon + 1));
        if (!first || !count || *count == 0) {
            continue;
        }
        // Written without first + count, which may exceed 64 bits for a malformed entry.
        const bool overlaps =
            *first >= range.first ? range.contains(*first) : range.first - *first < *count;
        if (overlaps) {
            return line;
        }
    }
    return std::nullopt;
}

UidPool::UidPool(UidRange range) : range_(range) {}

std::optional<uid_t> UidPool::take() {
    uid_t id = 0;
    if (never_used_ < range_.count) {
        id = static_cast<uid_t>(range_.first + never_used_);
        ++never_used_;
    } else if (!returned_.empty()) {
        id = returned_.front();
        returned_.pop_front();
    } else {
        return std::nullopt;
    }
    held_.insert(id);
    return id;
}

void UidPool::remove_held(uid_t id, const char* action) {
    if (held_.erase(id) == 0) {
        throw std::logic_error(
            fmt::format("{} uid {}, which the pool has not handed out", action, id));
    }
}

void UidPool::give_back(uid_t id) {
    remove_held(id, "giving back");
    returned_.push_back(id);
}

void UidPool::withhold(uid_t id) {
    remove_held(id, "withholding");
    withheld_.insert(id);
}

void UidPool::release_withheld(uid_t id) {
    if (withheld_.erase(id) == 0) {
        throw std::logic_error(fmt::format("releasing uid {}, which is not withheld", id));
    }
    returned_.push_back(id);
}

std::uint64_t UidPool::free_count() const {
    return range_.count - never_used_ + returned_.size();
}

}  // namespace cloister
