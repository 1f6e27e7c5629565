// The key process's end of the control channel: attach messages that each carry one key
// channel descriptor in SCM_RIGHTS.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "core/fd.h"
#include "core/key_protocol.h"

namespace cloister {

struct ControlMessage {
    enum class Kind {
        datagram,       // a message arrived, described by the fields below
        end_of_stream,  // the supervisor closed the control channel
        would_block,    // nothing to read yet
    };

    Kind kind = Kind::would_block;
    // The first bytes of the datagram: one more than a valid attach message, so that size
    // can show a longer one.
    std::array<std::uint8_t, keyproto::attach_size + 1> bytes{};
    // The datagram's real length (recvmsg with MSG_TRUNC), which may exceed bytes.size().
    std::size_t size = 0;
    // MSG_CTRUNC: the kernel dropped descriptors that did not fit the control buffer.
    bool descriptors_truncated = false;
    // Descriptors received in SCM_RIGHTS, close-on-exec, and closed with the message.
    std::vector<Fd> descriptors;

    [[nodiscard]] std::span<const std::uint8_t> data() const {
        return {bytes.data(), std::min(size, bytes.size())};
    }
};

// Receives one message without blocking. Throws Error(system) when recvmsg fails.
ControlMessage receive_control_message(int control_fd);

// Returns true when fd is a SOCK_SEQPACKET socket.
bool is_seqpacket_socket(int fd);

}  // namespace cloister
