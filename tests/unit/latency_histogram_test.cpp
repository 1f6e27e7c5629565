#include "keyprovider/latency_histogram.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <thread>
#include <vector>

namespace cloister {
namespace {

using Histogram = LatencyHistogram;

TEST(LatencyHistogram, EmptyHasNoQuantile) {
    const Histogram histogram;
    const HistogramSnapshot snapshot = histogram.snapshot();
    EXPECT_EQ(snapshot.count, 0U);
    EXPECT_EQ(snapshot.max, 0U);
    EXPECT_FALSE(snapshot.quantile(0.5).has_value());
}

TEST(LatencyHistogram, SmallValuesAreExact) {
    for (std::uint64_t value = 0; value < 16; ++value) {
        EXPECT_EQ(Histogram::bucket_index(value), value);
        EXPECT_EQ(Histogram::bucket_lowest(value), value);
        EXPECT_EQ(Histogram::bucket_highest(value), value);
    }
    Histogram histogram;
    for (const std::uint64_t value : {3U, 7U, 11U, 15U}) {
        histogram.record(value);
    }
    const HistogramSnapshot snapshot = histogram.snapshot();
    EXPECT_EQ(snapshot.quantile(0.25), 3U);
    EXPECT_EQ(snapshot.quantile(0.5), 7U);
    EXPECT_EQ(snapshot.quantile(0.75), 11U);
    EXPECT_EQ(snapshot.quantile(1.0), 15U);
}

TEST(LatencyHistogram, BucketEdges) {
    // Every bucket starts one above the previous bucket's highest value, so the buckets
    // cover every value below the overflow without a gap or an overlap.
    for (std::size_t index = 1; index < Histogram::bucket_count; ++index) {
        EXPECT_EQ(Histogram::bucket_lowest(index), Histogram::bucket_highest(index - 1) + 1)
            << "bucket " << index;
    }
    for (std::size_t index = 0; index < Histogram::overflow_bucket; ++index) {
        const std::uint64_t lowest = Histogram::bucket_lowest(index);
        const std::uint64_t highest = Histogram::bucket_highest(index);
        EXPECT_EQ(Histogram::bucket_index(lowest), index) << "lowest of bucket " << index;
        EXPECT_EQ(Histogram::bucket_index(highest), index) << "highest of bucket " << index;
        // The relative width stays within 1/8 of the lowest value.
        EXPECT_LE((highest - lowest + 1) * Histogram::sub_buckets,
                  std::max<std::uint64_t>(lowest, Histogram::sub_buckets))
            << "bucket " << index;
    }
    // Values from 16 on: 16 and 17 share a bucket of width 2, 32 to 35 one of width 4.
    EXPECT_EQ(Histogram::bucket_index(16), 16U);
    EXPECT_EQ(Histogram::bucket_index(17), 16U);
    EXPECT_EQ(Histogram::bucket_index(18), 17U);
    EXPECT_EQ(Histogram::bucket_lowest(Histogram::bucket_index(35)), 32U);
    EXPECT_EQ(Histogram::bucket_highest(Histogram::bucket_index(32)), 35U);
    EXPECT_EQ(Histogram::bucket_highest(Histogram::overflow_bucket - 1),
              Histogram::overflow_threshold - 1);
}

TEST(LatencyHistogram, QuantilesOfOneToHundred) {
    Histogram histogram;
    for (std::uint64_t value = 1; value <= 100; ++value) {
        histogram.record(value);
    }
    const HistogramSnapshot snapshot = histogram.snapshot();
    EXPECT_EQ(snapshot.count, 100U);
    EXPECT_EQ(snapshot.max, 100U);
    // The 50th value, 50, lies in the bucket 48 to 51.
    EXPECT_EQ(snapshot.quantile(0.50), 51U);
    // The 90th value, 90, lies in the bucket 88 to 95.
    EXPECT_EQ(snapshot.quantile(0.90), 95U);
    // The 99th value, 99, lies in the bucket 96 to 103, which the maximum 100 caps.
    EXPECT_EQ(snapshot.quantile(0.99), 100U);
    EXPECT_EQ(snapshot.quantile(0.01), 1U);
}

TEST(LatencyHistogram, QuantileWithinOneEighth) {
    // 1000 values of 1000 us and 10 values of 50000 us: p50 and p99 are 1000, p99.5 is 50000.
    Histogram histogram;
    for (int i = 0; i < 1000; ++i) {
        histogram.record(1000);
    }
    for (int i = 0; i < 10; ++i) {
        histogram.record(50'000);
    }
    const HistogramSnapshot snapshot = histogram.snapshot();
    for (const double q : {0.5, 0.9, 0.99}) {
        const auto value = snapshot.quantile(q);
        ASSERT_TRUE(value.has_value());
        EXPECT_GE(*value, 1000U) << q;
        EXPECT_LE(*value, 1000U + 1000U / 8) << q;
    }
    EXPECT_EQ(snapshot.quantile(0.995), 50'000U);
    EXPECT_EQ(snapshot.max, 50'000U);
}

TEST(LatencyHistogram, OverflowKeepsExactMax) {
    Histogram histogram;
    const std::uint64_t huge = Histogram::overflow_threshold * 5;
    histogram.record(10);
    histogram.record(huge);
    histogram.record(std::numeric_limits<std::uint64_t>::max());
    EXPECT_EQ(Histogram::bucket_index(huge), Histogram::overflow_bucket);
    EXPECT_EQ(Histogram::bucket_index(Histogram::overflow_threshold), Histogram::overflow_bucket);
    EXPECT_EQ(Histogram::bucket_index(Histogram::overflow_threshold - 1),
              Histogram::overflow_bucket - 1);
    const HistogramSnapshot snapshot = histogram.snapshot();
    EXPECT_EQ(snapshot.buckets[Histogram::overflow_bucket], 2U);
    EXPECT_EQ(snapshot.count, 3U);
    EXPECT_EQ(snapshot.max, std::numeric_limits<std::uint64_t>::max());
    EXPECT_EQ(snapshot.quantile(0.3), 10U);
    EXPECT_EQ(snapshot.quantile(0.5), std::numeric_limits<std::uint64_t>::max());
}

TEST(LatencyHistogram, SinceCountsOnlyNewValues) {
    Histogram histogram;
    histogram.record(5000);
    histogram.record(7000);
    const HistogramSnapshot first = histogram.snapshot();
    EXPECT_EQ(histogram.take_period_max(), 7000U);
    histogram.record(20);
    histogram.record(30);
    const HistogramSnapshot second = histogram.snapshot();
    HistogramSnapshot period = second.since(first);
    period.max = histogram.take_period_max();
    EXPECT_EQ(period.count, 2U);
    EXPECT_EQ(period.max, 30U);
    EXPECT_EQ(period.quantile(1.0), 30U);
    EXPECT_EQ(second.count, 4U);
    EXPECT_EQ(second.max, 7000U);
    EXPECT_EQ(histogram.take_period_max(), 0U);
}

TEST(LatencyHistogram, ConcurrentRecordingLosesNothing) {
    constexpr int threads = 4;
    constexpr int per_thread = 100'000;
    Histogram histogram;
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&histogram, t] {
            for (int i = 0; i < per_thread; ++i) {
                // Thread t records 1 + t, 1001 + t, ..., 99001 + t, so the threads share
                // buckets.
                histogram.record(static_cast<std::uint64_t>(1 + t + (i % 100) * 1000));
            }
        });
    }
    for (std::thread& worker : workers) {
        worker.join();
    }
    const HistogramSnapshot snapshot = histogram.snapshot();
    EXPECT_EQ(snapshot.count, static_cast<std::uint64_t>(threads) * per_thread);
    EXPECT_EQ(snapshot.max, static_cast<std::uint64_t>(threads + 99 * 1000));
    // Thread t recorded the value 1 + t once per 100 values, so the exact buckets of 1 to 4
    // hold per_thread / 100 values each.
    std::uint64_t lowest_four = 0;
    for (std::uint64_t value = 1; value <= 4; ++value) {
        lowest_four += snapshot.buckets[Histogram::bucket_index(value)];
    }
    EXPECT_EQ(lowest_four, static_cast<std::uint64_t>(threads) * per_thread / 100);
}

}  // namespace
}  // namespace cloister
