from libc.stdint cimport uint32_t, uint64_t
from fastsock.driver cimport Driver, Endpoint, Request
from fastsock.liburing cimport io_uring, io_uring_sqe, io_uring_buf_ring

cdef enum:
    CQE_BATCH = 256


cdef class BufferRing:
    # A provided-buffer ring registered by hand (liburing 2.3 has no
    # io_uring_setup_buf_ring): `count` buffers of `size` bytes the kernel
    # picks from for recvs of buffer group `group`. Only `target` of them
    # are in the ring at a time, the most recently used first (give_back).
    cdef:
        io_uring_buf_ring *br
        size_t br_bytes
        char *bufs
        unsigned int count
        unsigned int size
        int mask
        int group
        unsigned int *free         # buffers not in the ring, a LIFO stack
        unsigned int nfree
        unsigned int in_ring       # buffers the kernel may pick now
        unsigned int target        # how many to keep there (grows on ENOBUFS)

    @staticmethod
    cdef BufferRing new(io_uring *ring, unsigned int count, unsigned int size,
                        int group)
    cdef char *buf(self, unsigned int bid)
    cdef int taken(self) except -1
    cdef int give_back(self, unsigned int bid) except -1
    cdef int ran_dry(self) except -1
    cdef int replenish(self) except -1
    cdef int strand(self) except -1


cdef class SplicePipe:
    # sendfile on io_uring: file -> pipe -> socket, two splices.
    cdef:
        int rfd
        int wfd
        Py_ssize_t size
        Py_ssize_t pending          # bytes in the pipe, not yet sent


cdef class UringDriver(Driver):
    cdef:
        io_uring ring
        bint ring_ok
        bint enabled                # R_DISABLED ring enabled by its thread
        bint has_send_zc            # IORING_OP_SENDMSG_ZC is there
        dict pipes                  # Endpoint -> SplicePipe
        unsigned long issuer        # pthread that submits (SINGLE_ISSUER)
        readonly unsigned int setup_flags
        int wakefd
        int check_epfd              # add_reader()'s check (see attach)
        # provided buffers shared by every stream recv of this loop, and
        # (made on first use) by every UDP recvmsg
        BufferRing rbufs
        BufferRing dbufs
        BufferRing bulkbufs         # made on first use (recv_done)
        unsigned int buf_count
        unsigned int buf_size
        dict stash                  # Endpoint -> [bytes, (bytes, name), None
                                    # (EOF)] read while the owner was not
        list deferred               # endpoints with stash to deliver
        dict rx                     # Endpoint -> Request: the msghdr and
                                    # buffer it reads into, for a datagram
                                    # socket or a bulk stream
        # What the kernel may still touch is held here until it is done:
        # released endpoints whose CQEs are due (endpoints that are not
        # released are in `endpoints`), and every Request in flight.
        set releasing
        set requests
        readonly dict counters
        uint64_t cqe_ud[CQE_BATCH]
        int cqe_res[CQE_BATCH]
        uint32_t cqe_flags[CQE_BATCH]

    @staticmethod
    cdef UringDriver new(object loop, unsigned int entries,
                         unsigned int cq_entries, unsigned int buf_count,
                         unsigned int buf_size)

    cdef int setup_ring(self, unsigned int entries,
                        unsigned int cq_entries) except -1
    cdef int check_watchable(self, int fd) except -1
    cdef io_uring_sqe *get_sqe(self) except NULL
    cdef io_uring_sqe *op_sqe(self, Endpoint ep, int op) except NULL
    cdef io_uring_sqe *request_sqe(self, Request req, int stage) except NULL
    cdef int submit(self) except -1
    cdef int enable(self) except -1
    cdef bint on_issuer_thread(self)
    cdef int reap(self) except -1
    cdef int complete(self, uint64_t ud, int res, uint32_t flags) except -1
    cdef int finish_op(self, Endpoint ep) except -1
    cdef int forget(self, Endpoint ep) except -1
    cdef int drop_all(self) except -1
    cdef int arm_wake(self) except -1
    cdef int arm_recv(self, Endpoint ep) except -1
    cdef int arm_accept(self, Endpoint ep) except -1
    cdef int arm_poll(self, Endpoint ep) except -1
    cdef int cancel_op(self, Endpoint ep, int op) except -1
    cdef int prep_cancel_fd(self, Endpoint ep) except -1
    cdef int wait_some(self, long timeout_ms) except -1
    cdef int defer(self, Endpoint ep) except -1
    cdef int run_deferred(self, list todo) except -1
    cdef free_ring(self)
    cdef int recv_done(self, Endpoint ep, int res, uint32_t flags) except -1
    cdef int recvmsg_done(self, Endpoint ep, int res) except -1
    cdef int recvmsg_multishot_done(self, Endpoint ep, int res,
                                    uint32_t flags) except -1
    cdef int accept_done(self, Endpoint ep, int res, uint32_t flags) except -1
    cdef int poll_done(self, Endpoint ep, int res) except -1
    cdef int request_done(self, Request req, int res, uint32_t flags) except -1
    cdef int send_step(self, Endpoint ep, Request req) except -1
    cdef int send_done(self, Request req, int res, uint32_t flags) except -1
    cdef int finish_send(self, Endpoint ep, Request req, Py_ssize_t res) except -1
    cdef int submit_datagrams(self, Endpoint ep) except -1
    cdef int datagram_done(self, Request req, int res) except -1
    cdef int sock_request_done(self, Request req, int res) except -1
    cdef BufferRing datagram_buffers(self)
    cdef BufferRing bulk_buffers(self)
    cdef SplicePipe pipe_for(self, Endpoint ep)
    cdef int keep(self, Endpoint ep, object chunk) except -1
    cdef int deliver_stash(self, Endpoint ep) except -1
