#include "keyprovider/key_metrics.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/log_field.h"

namespace cloister {
namespace {

using keyproto::Status;

constexpr std::size_t operation_count = 2;

std::uint64_t to_microseconds(std::chrono::nanoseconds duration) noexcept {
    const auto microseconds = std::chrono::duration_cast<std::chrono::microseconds>(duration);
    return microseconds.count() < 0 ? 0 : static_cast<std::uint64_t>(microseconds.count());
}

std::string format_optional(std::optional<std::uint64_t> value) {
    return value ? std::to_string(*value) : std::string("-");
}

// Formats "PREFIXp50_us=N PREFIXp90_us=N PREFIXp99_us=N PREFIXmax_us=N", with "-" for each
// value of an empty snapshot.
std::string format_latency(const std::string& prefix, const HistogramSnapshot& snapshot) {
    const std::string max = snapshot.count == 0 ? "-" : std::to_string(snapshot.max);
    return fmt::format("{0}p50_us={1} {0}p90_us={2} {0}p99_us={3} {0}max_us={4}", prefix,
                       format_optional(snapshot.quantile(0.50)),
                       format_optional(snapshot.quantile(0.90)),
                       format_optional(snapshot.quantile(0.99)), max);
}

// Sets the period's maximum. It comes from take_period_max(), but a value recorded between
// that call and the snapshot is counted without raising it, so the lowest value of the
// highest counted bucket bounds it from below.
void set_period_max(HistogramSnapshot& period, std::uint64_t period_max) {
    std::uint64_t lowest = 0;
    for (std::size_t i = period.buckets.size(); i > 0; --i) {
        if (period.buckets[i - 1] != 0) {
            lowest = LatencyHistogram::bucket_lowest(i - 1);
            break;
        }
    }
    period.max = std::max(period_max, lowest);
}

}  // namespace

const char* to_string(KeyOperation operation) noexcept {
    return operation == KeyOperation::sign ? "sign" : "decrypt";
}

OperationOutcome outcome_of(Status status) noexcept {
    switch (status) {
        case Status::ok:
            return OperationOutcome::ok;
        case Status::unknown_key:
        case Status::unsupported_scheme:
        case Status::refused:
        case Status::quota_exceeded:
            return OperationOutcome::refused;
        default:
            return OperationOutcome::failed;
    }
}

void OperationMetrics::record(OperationOutcome outcome, const OperationTiming& timing) noexcept {
    if (outcome == OperationOutcome::refused) {
        refused_.fetch_add(1, std::memory_order_relaxed);
        return;
    }
    if (outcome == OperationOutcome::failed) {
        failed_.fetch_add(1, std::memory_order_relaxed);
    }
    request_.record(to_microseconds(timing.request));
    if (timing.token) {
        token_.record(to_microseconds(*timing.token));
    }
}

KeyMetrics::KeyMetrics(const KeyStore& store, bool rsa_decryption)
    : store_(store), series_(store.size() * operation_count), period_start_(Clock::now()) {
    for (std::size_t key = 0; key < store.size(); ++key) {
        for (const KeyOperation operation : {KeyOperation::sign, KeyOperation::decrypt}) {
            Series& series = series_[key * operation_count + static_cast<std::size_t>(operation)];
            series.key_index = key;
            series.operation = operation;
            const bool served = operation == KeyOperation::sign ||
                                (rsa_decryption && store.key_type(key) == KeyType::rsa);
            if (served) {
                series.metrics = std::make_unique<OperationMetrics>();
            }
        }
    }
}

OperationMetrics* KeyMetrics::find(std::size_t key_index, KeyOperation operation) const {
    const std::size_t index = key_index * operation_count + static_cast<std::size_t>(operation);
    return key_index < store_.size() ? series_[index].metrics.get() : nullptr;
}

void KeyMetrics::record(std::size_t key_index, KeyOperation operation, Status status,
                        const OperationTiming& timing) noexcept {
    if (OperationMetrics* metrics = find(key_index, operation)) {
        metrics->record(outcome_of(status), timing);
    }
}

std::vector<std::string> KeyMetrics::report(Clock::time_point now) {
    const std::lock_guard lock(report_mutex_);
    const auto period = std::chrono::duration_cast<std::chrono::milliseconds>(now - period_start_);
    period_start_ = now;
    std::vector<std::string> lines;
    for (Series& series : series_) {
        if (series.metrics) {
            lines.push_back(report_line(series, period));
        }
    }
    return lines;
}

std::string KeyMetrics::report_line(Series& series, std::chrono::milliseconds period) {
    OperationMetrics& metrics = *series.metrics;
    const std::uint64_t request_period_max = metrics.request_latency().take_period_max();
    const std::uint64_t token_period_max = metrics.token_latency().take_period_max();
    const HistogramSnapshot request = metrics.request_latency().snapshot();
    const HistogramSnapshot token = metrics.token_latency().snapshot();
    const std::uint64_t failed = metrics.failed();
    const std::uint64_t refused = metrics.refused();

    HistogramSnapshot request_period = request.since(series.reported_request);
    set_period_max(request_period, request_period_max);
    HistogramSnapshot token_period = token.since(series.reported_token);
    set_period_max(token_period, token_period_max);

    std::string line = fmt::format(
        "key operation stats: key={} operation={} period_ms={} count={} failed={} refused={} {} "
        "{} total_count={} total_failed={} total_refused={} {} {}",
        log_field(store_.key_name(series.key_index)), to_string(series.operation), period.count(),
        request_period.count, failed - series.reported_failed, refused - series.reported_refused,
        format_latency("", request_period), format_latency("token_", token_period), request.count,
        failed, refused, format_latency("total_", request), format_latency("total_token_", token));

    series.reported_request = request;
    series.reported_token = token;
    series.reported_failed = failed;
    series.reported_refused = refused;
    return line;
}

}  // namespace cloister
