// The key process's serving loop: one epoll set with EPOLLONESHOT registrations, shared by a
// pool of worker threads, so a channel is served by one thread at a time while different
// channels sign in parallel.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>

#include "core/config.h"
#include "core/fd.h"
#include "core/key_protocol.h"
#include "keyprovider/control_channel.h"
#include "keyprovider/key_metrics.h"
#include "keyprovider/key_store.h"
#include "keyprovider/request_handler.h"

namespace cloister {

// Counters of the key process, updated by every worker thread.
class KeyProcessStats {
  public:
    void count_channel() { channels_.fetch_add(1, std::memory_order_relaxed); }
    void count_response(keyproto::MessageType type, keyproto::Status status);

    [[nodiscard]] std::uint64_t channels() const { return channels_.load(); }
    [[nodiscard]] std::uint64_t signatures() const { return signatures_.load(); }
    [[nodiscard]] std::uint64_t decryptions() const { return decryptions_.load(); }
    [[nodiscard]] std::uint64_t responses(keyproto::Status status) const;
    // Responses with unknown_key, unsupported_scheme, refused or quota_exceeded. Status failed
    // is an error, not a refusal, and is not included.
    [[nodiscard]] std::uint64_t refused() const;

    // Returns "key process stats: channels=N signatures=N refused=N malformed=N
    // decryptions=N".
    [[nodiscard]] std::string summary() const;

  private:
    static constexpr std::size_t status_count = 8;  // Status::ok to Status::public_key_unknown

    std::atomic<std::uint64_t> channels_{0};
    std::atomic<std::uint64_t> signatures_{0};
    std::atomic<std::uint64_t> decryptions_{0};
    std::array<std::atomic<std::uint64_t>, status_count> by_status_{};
};

class KeyServer {
  public:
    // Blocks SIGTERM and SIGUSR1 in the calling thread (they stay blocked after the
    // server is gone, because a pending one would otherwise take its default action) and
    // receives them through a signalfd. Creates and arms the timerfd of
    // config.stats_interval here, before any sandbox, so that serving needs only read() on it.
    // store must outlive the server. rsa_decryption serves decrypt requests
    // ([tls] rsa-key-exchange). Throws Error(system) when a descriptor cannot be created.
    KeyServer(const KeyStore& store, const KeyProcessConfig& config, Fd control,
              bool rsa_decryption = false);
    KeyServer(const KeyServer&) = delete;
    KeyServer& operator=(const KeyServer&) = delete;
    KeyServer(KeyServer&&) = delete;
    KeyServer& operator=(KeyServer&&) = delete;
    ~KeyServer();

    // Serves until the control channel reaches end of stream or SIGTERM arrives
    // (status 0), or a worker fails (status 1). Logs the stats lines before it returns.
    int run();

    [[nodiscard]] const KeyProcessStats& stats() const { return stats_; }

  private:
    // One epoll registration. epoll_event::data.fd contains its descriptor number.
    struct Source {
        Fd fd;
        ChannelState state;  // channels only
    };

    void add(const Source& source, std::uint32_t events);
    void rearm(const Source& source);
    void stop(int status);

    void work();
    void dispatch(int fd);
    Source* find_channel(int fd);
    void serve_control();
    void serve_signal();
    void serve_timer();
    void serve_channel(Source& channel);
    // Logs one key operation stats line per key and operation, then the stats summary.
    void report_stats();

    void attach(ControlMessage& message);
    void register_channel(std::uint64_t connection_id, bool unlimited, Fd fd);
    void close_channel(Source& channel);
    void reject_malformed(Source& channel, std::span<const std::uint8_t> datagram,
                          const std::string& reason);
    void record(const Source& channel, const keyproto::Request& request,
                const HandlerResult& result);
    // Records the latency of a private-key request whose response was sent (or failed to
    // send), measured from arrival, the moment its datagram was read.
    void measure(const keyproto::Request& request, const HandlerResult& result,
                 KeyMetrics::Clock::time_point arrival);
    static bool send_response(const Source& channel, const keyproto::Response& response);

    const KeyStore& store_;
    RequestHandler handler_;
    unsigned worker_count_;
    KeyProcessStats stats_;
    KeyMetrics metrics_;
    // Keeps the lines of one report together when the timer and SIGUSR1 fire at once.
    std::mutex report_mutex_;

    Fd epoll_;
    Source control_;
    Source signals_;
    Source wake_;   // an eventfd that stays readable once stop() wrote to it
    Source timer_;  // a periodic timerfd for the stats lines, or none when they are off

    // Guards channels_. Every epoll_ctl on a channel also runs under it, so whatever one
    // worker did to a channel happens before the next worker takes the channel's event.
    std::mutex channels_mutex_;
    std::unordered_map<int, std::unique_ptr<Source>> channels_;  // by descriptor number

    std::atomic<bool> stopping_{false};
    std::atomic<int> exit_status_{-1};
};

}  // namespace cloister
