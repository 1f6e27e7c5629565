// The connection-uids range: parsing, the order in which ids are handed out, and withheld ids.
#include "core/uid_pool.h"

#include <gtest/gtest.h>

#include <sstream>
#include <stdexcept>

namespace cloister {
namespace {

TEST(UidRangeParse, AcceptsFirstDashLast) {
    const auto range = parse_uid_range("2000000-2065535");
    ASSERT_TRUE(range.has_value());
    EXPECT_EQ(range->first, 2'000'000U);
    EXPECT_EQ(range->count, 65'536U);
    EXPECT_EQ(range->last(), 2'065'535U);
    EXPECT_EQ(range->to_string(), "2000000-2065535");
}

TEST(UidRangeParse, AcceptsSingleIdAndTopId) {
    const auto single = parse_uid_range("5-5");
    ASSERT_TRUE(single.has_value());
    EXPECT_EQ(single->count, 1U);
    const auto top = parse_uid_range("4294967290-4294967294");
    ASSERT_TRUE(top.has_value());
    EXPECT_EQ(top->count, 5U);
    EXPECT_EQ(top->last(), 4'294'967'294U);
}

TEST(UidRangeParse, RejectsMalformedText) {
    for (const char* text : {"", "-", "5", "5-", "-5", "7-5", "1-4294967295", "a-b", "+1-5", "1 -5",
                             "1-5 ", "1--5", "0x10-0x20", "1-99999999999999999999"}) {
        EXPECT_FALSE(parse_uid_range(text).has_value()) << text;
    }
}

TEST(UidRangeParse, AcceptsZeroForCallerToReject) {
    const auto range = parse_uid_range("0-9");
    ASSERT_TRUE(range.has_value());
    EXPECT_TRUE(range->contains(0));
}

TEST(UidRange, ContainsBounds) {
    const UidRange range{100, 10};
    EXPECT_FALSE(range.contains(99));
    EXPECT_TRUE(range.contains(100));
    EXPECT_TRUE(range.contains(109));
    EXPECT_FALSE(range.contains(110));
    EXPECT_FALSE(range.contains(100 + (std::uint64_t{1} << 32)));
}

TEST(SubordinateOverlap, FindsEntryOverlappingEitherEnd) {
    const UidRange range{2'000'000, 100};
    std::istringstream below("alice:1934465:65536\n");
    EXPECT_EQ(find_subordinate_overlap(range, below), "alice:1934465:65536");
    std::istringstream above("# delegated\n\nbob:2000099:10\n");
    EXPECT_EQ(find_subordinate_overlap(range, above), "bob:2000099:10");
    std::istringstream inside("1000:2000050:1\n");
    EXPECT_EQ(find_subordinate_overlap(range, inside), "1000:2000050:1");
    std::istringstream around("carol:100000:4294867295\n");
    EXPECT_EQ(find_subordinate_overlap(range, around), "carol:100000:4294867295");
}

TEST(SubordinateOverlap, IgnoresAdjacentAndMalformedEntries) {
    const UidRange range{2'000'000, 100};
    std::istringstream entries(
        "alice:1934464:65536\n"  // ends at 1999999
        "bob:2000100:65536\n"    // starts at 2000100
        "carol:2000000\n"
        "dave:x:5\n"
        "erin:2000000:0\n"
        "frank:2000000:-5\n");
    EXPECT_EQ(find_subordinate_overlap(range, entries), std::nullopt);
}

TEST(UidPool, HandsOutNeverUsedIdsFirst) {
    UidPool pool(UidRange{1000, 3});
    EXPECT_EQ(pool.take(), 1000U);
    pool.give_back(1000);
    EXPECT_EQ(pool.take(), 1001U);
    EXPECT_EQ(pool.take(), 1002U);
    EXPECT_EQ(pool.take(), 1000U);
    EXPECT_EQ(pool.take(), std::nullopt);
}

TEST(UidPool, ReusesInOrderOfReturn) {
    UidPool pool(UidRange{10, 3});
    const auto a = pool.take();
    const auto b = pool.take();
    const auto c = pool.take();
    pool.give_back(*c);
    pool.give_back(*a);
    pool.give_back(*b);
    EXPECT_EQ(pool.take(), c);
    EXPECT_EQ(pool.take(), a);
    EXPECT_EQ(pool.take(), b);
}

TEST(UidPool, CountsFreeAndHeld) {
    UidPool pool(UidRange{2'000'000, 65'536});
    EXPECT_EQ(pool.free_count(), 65'536U);
    const auto id = pool.take();
    EXPECT_EQ(pool.free_count(), 65'535U);
    EXPECT_EQ(pool.held_count(), 1U);
    pool.give_back(*id);
    EXPECT_EQ(pool.free_count(), 65'536U);
    EXPECT_EQ(pool.held_count(), 0U);
}

TEST(UidPool, ExhaustedUntilIdReturns) {
    UidPool pool(UidRange{50, 2});
    const auto first = pool.take();
    const auto second = pool.take();
    ASSERT_TRUE(first.has_value());
    ASSERT_TRUE(second.has_value());
    EXPECT_EQ(pool.free_count(), 0U);
    EXPECT_FALSE(pool.take().has_value());
    pool.give_back(*second);
    EXPECT_EQ(pool.take(), second);
}

TEST(UidPool, GiveBackRejectsIdNotHeld) {
    UidPool pool(UidRange{50, 2});
    EXPECT_THROW(pool.give_back(50), std::logic_error);
    const auto id = pool.take();
    pool.give_back(*id);
    EXPECT_THROW(pool.give_back(*id), std::logic_error);
    EXPECT_EQ(pool.free_count(), 2U);
}

TEST(UidPool, WithheldIdStaysOutUntilReleased) {
    UidPool pool(UidRange{70, 1});
    const auto id = pool.take();
    pool.withhold(*id);
    EXPECT_EQ(pool.held_count(), 0U);
    EXPECT_EQ(pool.withheld().count(*id), 1U);
    EXPECT_EQ(pool.free_count(), 0U);
    EXPECT_FALSE(pool.take().has_value());
    pool.release_withheld(*id);
    EXPECT_TRUE(pool.withheld().empty());
    EXPECT_EQ(pool.take(), id);
}

TEST(UidPool, WithholdAndReleaseRejectWrongState) {
    UidPool pool(UidRange{70, 2});
    EXPECT_THROW(pool.withhold(70), std::logic_error);
    EXPECT_THROW(pool.release_withheld(70), std::logic_error);
    const auto id = pool.take();
    EXPECT_THROW(pool.release_withheld(*id), std::logic_error);
}

}  // namespace
}  // namespace cloister
