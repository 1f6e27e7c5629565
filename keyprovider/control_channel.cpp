#include "keyprovider/control_channel.h"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace cloister {
namespace {

// Room for a few descriptors, so that a message with more than one can be seen and its
// descriptors closed instead of being left to MSG_CTRUNC.
constexpr std::size_t control_buffer_descriptors = 8;

void collect_descriptors(msghdr& header, std::vector<Fd>& out) {
    for (cmsghdr* item = CMSG_FIRSTHDR(&header); item != nullptr;
         item = CMSG_NXTHDR(&header, item)) {
        if (item->cmsg_level != SOL_SOCKET || item->cmsg_type != SCM_RIGHTS) {
            continue;
        }
        const std::size_t count = (item->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const unsigned char* data = CMSG_DATA(item);
        for (std::size_t i = 0; i < count; ++i) {
            int fd = -1;
            std::memcpy(&fd, data + i * sizeof(int), sizeof(int));
            out.emplace_back(fd);
        }
    }
}

}  // namespace

ControlMessage receive_control_message(int control_fd) {
    ControlMessage message;
    iovec vector{message.bytes.data(), message.bytes.size()};
    alignas(cmsghdr) std::array<unsigned char, CMSG_SPACE(sizeof(int) * control_buffer_descriptors)>
        control{};
    msghdr header{};
    header.msg_iov = &vector;
    header.msg_iovlen = 1;
    header.msg_control = control.data();
    header.msg_controllen = control.size();

    ssize_t received = -1;
    do {
        received = ::recvmsg(control_fd, &header, MSG_CMSG_CLOEXEC | MSG_DONTWAIT | MSG_TRUNC);
    } while (received < 0 && errno == EINTR);
    if (received < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        return message;
    }
    if (received < 0) {
        throw_system_error("recvmsg on the control channel");
    }

    collect_descriptors(header, message.descriptors);
    message.descriptors_truncated = (header.msg_flags & MSG_CTRUNC) != 0;
    message.size = static_cast<std::size_t>(received);
    // A SOCK_SEQPACKET read of 0 bytes is the end of the stream.
    message.kind =
        received == 0 ? ControlMessage::Kind::end_of_stream : ControlMessage::Kind::datagram;
    return message;
}

bool is_seqpacket_socket(int fd) {
    int type = 0;
    socklen_t length = sizeof(type);
    return ::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) == 0 && type == SOCK_SEQPACKET;
}

}  // namespace cloister
