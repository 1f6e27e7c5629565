// A fixed-size, lock-free histogram of operation durations in microseconds.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>

namespace cloister {

// Bucket counts copied out of a LatencyHistogram, for quantiles and for the difference between
// two reports.
struct HistogramSnapshot;

// Durations in microseconds, in log-scale buckets. The values 0 to 15 get one bucket each.
// Every range from 2^e to 2^(e+1) - 1 above is split into 8 buckets of equal width, so a
// bucket is at most 1/8 as wide as its lowest value. Values of 2^27 us (about 134 s) and more
// share one overflow bucket. record() allocates nothing and takes no lock, so worker threads
// record into one histogram at once.
class LatencyHistogram {
  public:
    static constexpr unsigned sub_bucket_bits = 3;
    static constexpr std::size_t sub_buckets = std::size_t{1} << sub_bucket_bits;
    // The first value of the overflow bucket is 2^overflow_exponent us.
    static constexpr unsigned overflow_exponent = 27;
    static constexpr std::uint64_t overflow_threshold = std::uint64_t{1} << overflow_exponent;
    // One bucket per value below 2 * sub_buckets, sub_buckets per power of two up to the
    // overflow, and the overflow bucket.
    static constexpr std::size_t overflow_bucket =
        sub_buckets + (overflow_exponent - sub_bucket_bits) * sub_buckets;
    static constexpr std::size_t bucket_count = overflow_bucket + 1;

    static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

    // Returns the index of the bucket that counts microseconds.
    [[nodiscard]] static std::size_t bucket_index(std::uint64_t microseconds) noexcept;
    // Returns the lowest and the highest value that bucket index counts. The overflow bucket's
    // highest value is UINT64_MAX.
    [[nodiscard]] static std::uint64_t bucket_lowest(std::size_t index) noexcept;
    [[nodiscard]] static std::uint64_t bucket_highest(std::size_t index) noexcept;

    void record(std::uint64_t microseconds) noexcept;

    // Copies the counts since construction. Recording may go on meanwhile, so a snapshot
    // taken during recording can miss the newest values but never counts one twice.
    [[nodiscard]] HistogramSnapshot snapshot() const noexcept;

    // Returns the maximum recorded since the previous call (or since construction) and starts
    // a new period. Zero when nothing was recorded.
    std::uint64_t take_period_max() noexcept;

  private:
    std::array<std::atomic<std::uint64_t>, bucket_count> buckets_{};
    std::atomic<std::uint64_t> max_{0};
    std::atomic<std::uint64_t> period_max_{0};
};

struct HistogramSnapshot {
    std::array<std::uint64_t, LatencyHistogram::bucket_count> buckets{};
    std::uint64_t count = 0;
    std::uint64_t max = 0;  // the exact maximum, in microseconds

    // Returns the counts recorded after earlier was taken, with max left at this snapshot's
    // max (the caller sets the period's maximum).
    [[nodiscard]] HistogramSnapshot since(const HistogramSnapshot& earlier) const noexcept;

    // Returns the value at quantile q (0 < q <= 1): the highest value of the bucket that
    // contains the ceil(q * count)-th smallest recorded value, but at most max. That is at
    // least the true quantile and at most 1/8 above it, or exact below 16 us. nullopt when
    // count is 0.
    [[nodiscard]] std::optional<std::uint64_t> quantile(double q) const noexcept;
};

}  // namespace cloister
