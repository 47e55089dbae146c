from libc.stdint cimport uint32_t, uint64_t
from fastsock.driver cimport Driver, Endpoint, Request
from fastsock.liburing cimport io_uring_sqe
from fastsock.ring cimport Ring, BufferRing

cdef class SplicePipe:
    # sendfile on io_uring: file -> pipe -> socket, two splices.
    cdef:
        int rfd
        int wfd
        Py_ssize_t size
        Py_ssize_t filled           # bytes in the pipe, not yet sent


cdef class UringDriver(Driver):
    cdef:
        readonly Ring ring
        bint has_send_zc            # IORING_OP_SENDMSG_ZC is there
        dict pipes                  # Endpoint -> SplicePipe
        int wakefd
        int check_epfd              # add_reader()'s check (see attach)
        # provided buffers shared by every stream recv of this loop, and
        # (made on first use) by every UDP recvmsg
        BufferRing rbufs
        BufferRing dbufs
        unsigned int buf_count
        unsigned int buf_size
        dict parked                 # Endpoint -> [bytes, (bytes, name), None
                                    # (EOF)] read while the owner was not
        list deferred               # endpoints with parked data to deliver
        dict rx                     # Endpoint -> Request: the msghdr and
                                    # buffer it reads into, for a datagram
                                    # socket
        # What the kernel may still touch is held here until it is done:
        # released endpoints whose CQEs are due (endpoints that are not
        # released are in `endpoints`), and every Request in flight.
        set releasing
        set requests
        readonly dict counters

    @staticmethod
    cdef UringDriver new(object loop, unsigned int entries,
                         unsigned int cq_entries, unsigned int buf_count,
                         unsigned int buf_size)

    cdef int check_watchable(self, int fd) except -1
    cdef io_uring_sqe *op_sqe(self, Endpoint ep, int op) except NULL
    cdef io_uring_sqe *request_sqe(self, Request req, int stage) except NULL
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
    cdef int bulk_read(self, Endpoint ep, bint drain) except -1
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
    cdef SplicePipe pipe_for(self, Endpoint ep)
    cdef int park(self, Endpoint ep, object chunk) except -1
    cdef int deliver_parked(self, Endpoint ep) except -1
