#include "keyprovider/key_metrics.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <regex>
#include <string>
#include <vector>

namespace cloister {
namespace {

using keyproto::Status;
using std::chrono::microseconds;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// A store with an RSA key, whose name contains a space, and an EC key. It never signs.
class NamedKeys final : public KeyStore {
  public:
    [[nodiscard]] std::size_t size() const override { return names_.size(); }
    [[nodiscard]] const std::string& key_name(std::size_t index) const override {
        return names_.at(index);
    }
    [[nodiscard]] KeyType key_type(std::size_t index) const override {
        return index == 0 ? KeyType::rsa : KeyType::ec;
    }
    [[nodiscard]] std::vector<std::uint8_t> public_key(std::size_t /*index*/) const override {
        return {};
    }
    [[nodiscard]] std::vector<std::uint8_t> sign(
        std::size_t /*index*/, keyproto::SignatureScheme /*scheme*/,
        std::span<const std::uint8_t> /*message*/) const override {
        return {};
    }

  private:
    std::vector<std::string> names_{"www rsa", "api-ec"};
};

OperationTiming timing(std::int64_t request_us, std::optional<std::int64_t> token_us = {}) {
    OperationTiming result;
    result.request = microseconds(request_us);
    if (token_us) {
        result.token = microseconds(*token_us);
    }
    return result;
}

std::map<std::string, std::string> fields(const std::string& line) {
    std::map<std::string, std::string> parsed;
    const std::regex field(R"((\w+)=(\S+))");
    for (auto it = std::sregex_iterator(line.begin(), line.end(), field);
         it != std::sregex_iterator(); ++it) {
        parsed[(*it)[1]] = (*it)[2];
    }
    return parsed;
}

TEST(KeyMetrics, LinePerKeyAndOperation) {
    const NamedKeys store;
    KeyMetrics metrics(store, true);
    const std::vector<std::string> lines = metrics.report();
    // Sign for both keys, decrypt only for the RSA key.
    ASSERT_EQ(lines.size(), 3U);
    EXPECT_THAT(lines[0], StartsWith("key operation stats: key=www\\x20rsa operation=sign "));
    EXPECT_THAT(lines[1], StartsWith("key operation stats: key=www\\x20rsa operation=decrypt "));
    EXPECT_THAT(lines[2], StartsWith("key operation stats: key=api-ec operation=sign "));
    EXPECT_THAT(lines[2], HasSubstr(" count=0 failed=0 refused=0 p50_us=- p90_us=- p99_us=- "
                                    "max_us=- token_p50_us=- "));
}

TEST(KeyMetrics, NoDecryptWithoutRsaKeyExchange) {
    const NamedKeys store;
    KeyMetrics metrics(store, false);
    EXPECT_EQ(metrics.report().size(), 2U);
    EXPECT_EQ(metrics.find(0, KeyOperation::decrypt), nullptr);
    EXPECT_NE(metrics.find(0, KeyOperation::sign), nullptr);
    EXPECT_EQ(metrics.find(2, KeyOperation::sign), nullptr);
}

TEST(KeyMetrics, CountsOutcomesAndQuantiles) {
    const NamedKeys store;
    KeyMetrics metrics(store, false);
    for (int i = 1; i <= 10; ++i) {
        metrics.record(1, KeyOperation::sign, Status::ok, timing(i * 100, i * 50));
    }
    metrics.record(1, KeyOperation::sign, Status::failed, timing(2000, 1900));
    metrics.record(1, KeyOperation::sign, Status::quota_exceeded, timing(3));
    metrics.record(1, KeyOperation::sign, Status::refused, timing(4));
    // An unknown key index and an operation without metrics are ignored.
    metrics.record(7, KeyOperation::sign, Status::ok, timing(100));
    metrics.record(1, KeyOperation::decrypt, Status::ok, timing(100));

    const auto start = KeyMetrics::Clock::now();
    const std::vector<std::string> lines = metrics.report(start);
    ASSERT_EQ(lines.size(), 2U);
    auto ec = fields(lines[1]);
    EXPECT_EQ(ec["count"], "11");
    EXPECT_EQ(ec["failed"], "1");
    EXPECT_EQ(ec["refused"], "2");
    // 11 values 100, 200, ..., 1000, 2000: the 6th is 600 (bucket 576 to 639), the 10th is
    // 1000 (bucket 960 to 1023) and the 11th is 2000.
    EXPECT_EQ(ec["p50_us"], "639");
    EXPECT_EQ(ec["p90_us"], "1023");
    EXPECT_EQ(ec["p99_us"], "2000");
    EXPECT_EQ(ec["max_us"], "2000");
    EXPECT_EQ(ec["token_max_us"], "1900");
    EXPECT_EQ(ec["total_count"], "11");
    EXPECT_EQ(ec["total_refused"], "2");
    EXPECT_EQ(ec["total_max_us"], "2000");
    EXPECT_EQ(fields(lines[0])["count"], "0");

    // The next period starts empty; the totals stay.
    metrics.record(1, KeyOperation::sign, Status::ok, timing(40));
    const std::vector<std::string> next = metrics.report(start + std::chrono::milliseconds(1500));
    ec = fields(next[1]);
    EXPECT_EQ(ec["period_ms"], "1500");
    EXPECT_EQ(ec["count"], "1");
    EXPECT_EQ(ec["failed"], "0");
    EXPECT_EQ(ec["refused"], "0");
    EXPECT_EQ(ec["p50_us"], "40");
    EXPECT_EQ(ec["max_us"], "40");
    EXPECT_EQ(ec["token_p50_us"], "-");
    EXPECT_EQ(ec["total_count"], "12");
    EXPECT_EQ(ec["total_failed"], "1");
    EXPECT_EQ(ec["total_max_us"], "2000");
    EXPECT_EQ(ec["total_token_max_us"], "1900");
}

TEST(KeyMetrics, OutcomeOfEachStatus) {
    EXPECT_EQ(outcome_of(Status::ok), OperationOutcome::ok);
    for (const Status status : {Status::unknown_key, Status::unsupported_scheme, Status::refused,
                                Status::quota_exceeded}) {
        EXPECT_EQ(outcome_of(status), OperationOutcome::refused) << keyproto::to_string(status);
    }
    EXPECT_EQ(outcome_of(Status::failed), OperationOutcome::failed);
}

}  // namespace
}  // namespace cloister
