#include "keyprovider/latency_histogram.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

namespace cloister {
namespace {

// Raises target to value unless it is already higher.
void raise_to(std::atomic<std::uint64_t>& target, std::uint64_t value) noexcept {
    std::uint64_t current = target.load(std::memory_order_relaxed);
    while (current < value &&
           !target.compare_exchange_weak(current, value, std::memory_order_relaxed)) {
    }
}

}  // namespace

std::size_t LatencyHistogram::bucket_index(std::uint64_t microseconds) noexcept {
    if (microseconds < 2 * sub_buckets) {
        return static_cast<std::size_t>(microseconds);
    }
    if (microseconds >= overflow_threshold) {
        return overflow_bucket;
    }
    // microseconds lies in [2^exponent, 2^(exponent + 1)), with exponent >= sub_bucket_bits + 1.
    const auto exponent = static_cast<unsigned>(std::bit_width(microseconds)) - 1;
    const unsigned shift = exponent - sub_bucket_bits;
    const std::uint64_t sub_bucket = (microseconds >> shift) - sub_buckets;
    return sub_buckets + shift * sub_buckets + static_cast<std::size_t>(sub_bucket);
}

std::uint64_t LatencyHistogram::bucket_lowest(std::size_t index) noexcept {
    if (index < 2 * sub_buckets) {
        return index;
    }
    if (index >= overflow_bucket) {
        return overflow_threshold;
    }
    const std::size_t shift = (index - sub_buckets) / sub_buckets;
    const std::size_t sub_bucket = (index - sub_buckets) % sub_buckets;
    return static_cast<std::uint64_t>(sub_buckets + sub_bucket) << shift;
}

std::uint64_t LatencyHistogram::bucket_highest(std::size_t index) noexcept {
    if (index >= overflow_bucket) {
        return std::numeric_limits<std::uint64_t>::max();
    }
    return bucket_lowest(index + 1) - 1;
}

void LatencyHistogram::record(std::uint64_t microseconds) noexcept {
    buckets_[bucket_index(microseconds)].fetch_add(1, std::memory_order_relaxed);
    raise_to(max_, microseconds);
    raise_to(period_max_, microseconds);
}

HistogramSnapshot LatencyHistogram::snapshot() const noexcept {
    HistogramSnapshot copy;
    for (std::size_t i = 0; i < bucket_count; ++i) {
        copy.buckets[i] = buckets_[i].load(std::memory_order_relaxed);
        copy.count += copy.buckets[i];
    }
    copy.max = max_.load(std::memory_order_relaxed);
    return copy;
}

std::uint64_t LatencyHistogram::take_period_max() noexcept {
    return period_max_.exchange(0, std::memory_order_relaxed);
}

HistogramSnapshot HistogramSnapshot::since(const HistogramSnapshot& earlier) const noexcept {
    HistogramSnapshot difference;
    for (std::size_t i = 0; i < buckets.size(); ++i) {
        // Counts only grow, so a later snapshot is never below an earlier one.
        difference.buckets[i] = buckets[i] - std::min(buckets[i], earlier.buckets[i]);
        difference.count += difference.buckets[i];
    }
    difference.max = max;
    return difference;
}

std::optional<std::uint64_t> HistogramSnapshot::quantile(double q) const noexcept {
    if (count == 0) {
        return std::nullopt;
    }
    const double clamped = std::clamp(q, 0.0, 1.0);
    const auto rank = std::max<std::uint64_t>(
        1, static_cast<std::uint64_t>(std::ceil(clamped * static_cast<double>(count))));
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < buckets.size(); ++i) {
        seen += buckets[i];
        if (seen >= rank) {
            return std::min(LatencyHistogram::bucket_highest(i), max);
        }
    }
    return max;
}

}  // namespace cloister
