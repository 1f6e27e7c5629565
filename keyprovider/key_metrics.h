// Latency histograms and outcome counts of the key process's private-key operations, per key
// and operation, and the log lines that report them.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/key_protocol.h"
#include "keyprovider/key_store.h"
#include "keyprovider/latency_histogram.h"

namespace cloister {

enum class KeyOperation { sign, decrypt };

const char* to_string(KeyOperation operation) noexcept;

// The outcome of a private-key request, for the counts.
enum class OperationOutcome {
    ok,       // served
    refused,  // rejected by a check before the key was used (policy, scheme, quota)
    failed,   // the key store or token failed
};

// Maps a response status to its outcome. Statuses that a private-key request never gets
// (public_key_unknown) count as failed.
OperationOutcome outcome_of(keyproto::Status status) noexcept;

// Measurements of one private-key operation.
struct OperationTiming {
    // From the moment a worker thread read the request until its response is ready to send.
    std::chrono::nanoseconds request{0};
    // The token's signing calls alone, for a key in a PKCS#11 token that reached its token.
    std::optional<std::chrono::nanoseconds> token;
};

// Counts of one key and operation, recorded by every worker thread without a lock or an
// allocation. Operations that reached the key (served or failed) go into the histograms.
// Refused requests are only counted, because no key was used.
class OperationMetrics {
  public:
    void record(OperationOutcome outcome, const OperationTiming& timing) noexcept;

    LatencyHistogram& request_latency() { return request_; }
    LatencyHistogram& token_latency() { return token_; }
    [[nodiscard]] std::uint64_t failed() const { return failed_.load(); }
    [[nodiscard]] std::uint64_t refused() const { return refused_.load(); }

  private:
    LatencyHistogram request_;
    LatencyHistogram token_;
    std::atomic<std::uint64_t> failed_{0};
    std::atomic<std::uint64_t> refused_{0};
};

// The metrics of every key in a store. Sign metrics exist for every key, decrypt metrics for
// RSA keys when decryption is served.
class KeyMetrics {
  public:
    using Clock = std::chrono::steady_clock;

    // store must outlive the metrics. Allocates everything that record() uses.
    KeyMetrics(const KeyStore& store, bool rsa_decryption);

    // Records one private-key request for key_index. A key_index outside the store (which gets
    // unknown_key) or an operation without metrics is not recorded.
    void record(std::size_t key_index, KeyOperation operation, keyproto::Status status,
                const OperationTiming& timing) noexcept;

    // Returns one line per key and operation with the counts and quantiles since the previous
    // report (or since construction) and since construction, and starts a new period. now is
    // the end of the period. Safe to call from several threads, and each call starts a period.
    std::vector<std::string> report(Clock::time_point now = Clock::now());

    // Returns the metrics of a key and operation, or nullptr when they do not exist.
    [[nodiscard]] OperationMetrics* find(std::size_t key_index, KeyOperation operation) const;

  private:
    struct Series {
        std::size_t key_index = 0;
        KeyOperation operation = KeyOperation::sign;
        std::unique_ptr<OperationMetrics> metrics;  // nullptr when the key lacks the operation
        // The previous report's state, guarded by report_mutex_.
        HistogramSnapshot reported_request;
        HistogramSnapshot reported_token;
        std::uint64_t reported_failed = 0;
        std::uint64_t reported_refused = 0;
    };

    std::string report_line(Series& series, std::chrono::milliseconds period);

    const KeyStore& store_;
    // Two per key, at 2 * key_index + operation.
    std::vector<Series> series_;
    std::mutex report_mutex_;
    Clock::time_point period_start_;
};

}  // namespace cloister
