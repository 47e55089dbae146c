# liburing 2.3 declarations (only what fastsock uses). Declarations only.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from fastsock.system cimport msghdr, sockaddr, socklen_t


cdef extern from "<linux/time_types.h>" nogil:
    struct __kernel_timespec:
        long long tv_sec
        long long tv_nsec


cdef extern from "<liburing.h>" nogil:
    enum:
        IORING_SETUP_CQSIZE
        IORING_SETUP_SUBMIT_ALL
        IORING_SETUP_COOP_TASKRUN
        IORING_SETUP_TASKRUN_FLAG
        IORING_SETUP_SINGLE_ISSUER
        IORING_SETUP_DEFER_TASKRUN
        IORING_SETUP_R_DISABLED

        IORING_FEAT_NODROP
        IORING_FEAT_EXT_ARG
        IORING_FEAT_FAST_POLL

        IORING_CQE_F_BUFFER
        IORING_CQE_F_MORE
        IORING_CQE_F_NOTIF
        IORING_CQE_BUFFER_SHIFT

        IOSQE_BUFFER_SELECT
        IOSQE_IO_LINK
        IOSQE_CQE_SKIP_SUCCESS

        IORING_ASYNC_CANCEL_ALL
        IORING_ASYNC_CANCEL_FD

        IORING_OP_POLL_ADD
        IORING_OP_POLL_REMOVE
        IORING_OP_SENDMSG
        IORING_OP_RECVMSG
        IORING_OP_ACCEPT
        IORING_OP_ASYNC_CANCEL
        IORING_OP_CONNECT
        IORING_OP_SEND
        IORING_OP_RECV
        IORING_OP_SPLICE
        IORING_OP_SHUTDOWN
        IORING_OP_SEND_ZC
        IORING_OP_SENDMSG_ZC
        IORING_OP_LAST

    struct io_uring_sqe:
        uint8_t opcode
        uint8_t flags
        uint16_t ioprio
        uint16_t buf_group
        uint64_t user_data

    struct io_uring_cqe:
        uint64_t user_data
        int32_t res
        uint32_t flags

    struct io_sqring_offsets:
        pass

    struct io_uring_params:
        uint32_t sq_entries
        uint32_t cq_entries
        uint32_t flags
        uint32_t features

    struct io_uring:
        unsigned flags
        int ring_fd
        unsigned features

    struct io_uring_probe:
        pass

    struct io_uring_buf_ring:
        pass

    struct io_uring_buf_reg:
        uint64_t ring_addr
        uint32_t ring_entries
        uint16_t bgid

    int io_uring_queue_init_params(unsigned entries, io_uring *ring,
                                   io_uring_params *p)
    void io_uring_queue_exit(io_uring *ring)
    int io_uring_enable_rings(io_uring *ring)
    io_uring_probe *io_uring_get_probe_ring(io_uring *ring)
    void io_uring_free_probe(io_uring_probe *probe)
    int io_uring_opcode_supported(const io_uring_probe *p, int op)

    io_uring_sqe *io_uring_get_sqe(io_uring *ring)
    int io_uring_submit(io_uring *ring)
    int io_uring_submit_and_wait(io_uring *ring, unsigned wait_nr)
    int io_uring_submit_and_wait_timeout(io_uring *ring,
                                         io_uring_cqe **cqe_ptr,
                                         unsigned wait_nr,
                                         __kernel_timespec *ts,
                                         void *sigmask)
    int io_uring_submit_and_get_events(io_uring *ring)
    int io_uring_get_events(io_uring *ring)
    unsigned io_uring_peek_batch_cqe(io_uring *ring, io_uring_cqe **cqes,
                                     unsigned count)
    void io_uring_cq_advance(io_uring *ring, unsigned nr)
    unsigned io_uring_cq_ready(const io_uring *ring)
    bint io_uring_cq_has_overflow(const io_uring *ring)
    unsigned io_uring_sq_ready(const io_uring *ring)

    int io_uring_register_buf_ring(io_uring *ring, io_uring_buf_reg *reg,
                                   unsigned int flags)
    int io_uring_unregister_buf_ring(io_uring *ring, int bgid)
    void io_uring_buf_ring_init(io_uring_buf_ring *br)
    void io_uring_buf_ring_add(io_uring_buf_ring *br, void *addr,
                               unsigned int len, unsigned short bid,
                               int mask, int buf_offset)
    void io_uring_buf_ring_advance(io_uring_buf_ring *br, int count)
    int io_uring_buf_ring_mask(uint32_t ring_entries)

    void io_uring_sqe_set_data64(io_uring_sqe *sqe, uint64_t data)
    void io_uring_sqe_set_flags(io_uring_sqe *sqe, unsigned flags)
    void io_uring_prep_nop(io_uring_sqe *sqe)
    unsigned io_uring_sq_space_left(const io_uring *ring)
    struct io_uring_recvmsg_out:
        unsigned int namelen
        unsigned int controllen
        unsigned int payloadlen
        unsigned int flags
    void io_uring_prep_recvmsg_multishot(io_uring_sqe *sqe, int fd,
                                         msghdr *msg, unsigned flags)
    io_uring_recvmsg_out *io_uring_recvmsg_validate(void *buf, int buf_len,
                                                    msghdr *msgh)
    void *io_uring_recvmsg_name(io_uring_recvmsg_out *o)
    void *io_uring_recvmsg_payload(io_uring_recvmsg_out *o, msghdr *msgh)
    unsigned int io_uring_recvmsg_payload_length(io_uring_recvmsg_out *o,
                                                 int buf_len, msghdr *msgh)
    void io_uring_prep_recv(io_uring_sqe *sqe, int fd, void *buf, size_t len,
                            int flags)
    void io_uring_prep_send(io_uring_sqe *sqe, int fd, const void *buf,
                            size_t len, int flags)
    void io_uring_prep_accept(io_uring_sqe *sqe, int fd, sockaddr *addr,
                              socklen_t *addrlen, int flags)
    void io_uring_prep_connect(io_uring_sqe *sqe, int fd, const sockaddr *addr,
                               socklen_t addrlen)
    void io_uring_prep_recv_multishot(io_uring_sqe *sqe, int fd, void *buf,
                                      size_t len, int flags)
    void io_uring_prep_recvmsg(io_uring_sqe *sqe, int fd, msghdr *msg,
                               unsigned flags)
    void io_uring_prep_sendmsg(io_uring_sqe *sqe, int fd, const msghdr *msg,
                               unsigned flags)
    void io_uring_prep_multishot_accept(io_uring_sqe *sqe, int fd,
                                        sockaddr *addr, socklen_t *addrlen,
                                        int flags)
    void io_uring_prep_poll_add(io_uring_sqe *sqe, int fd, unsigned mask)
    void io_uring_prep_poll_multishot(io_uring_sqe *sqe, int fd,
                                      unsigned mask)
    void io_uring_prep_poll_remove(io_uring_sqe *sqe, uint64_t user_data)
    void io_uring_prep_cancel_fd(io_uring_sqe *sqe, int fd, unsigned flags)
    void io_uring_prep_cancel64(io_uring_sqe *sqe, uint64_t user_data,
                                int flags)
    void io_uring_prep_splice(io_uring_sqe *sqe, int fd_in, int64_t off_in,
                              int fd_out, int64_t off_out, unsigned nbytes,
                              unsigned splice_flags)
    void io_uring_prep_read(io_uring_sqe *sqe, int fd, void *buf,
                            unsigned nbytes, uint64_t offset)
