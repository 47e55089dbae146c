# One io_uring instance as the completion driver uses it: setup, submission,
# reaping, user_data tags, and provided-buffer rings. Nothing here knows what
# an operation means; the driver (uring.pyx) does.

from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from fastsock.liburing cimport io_uring, io_uring_sqe, io_uring_buf_ring

cdef enum:
    CQE_BATCH = 256         # CQEs copied out of the ring per reap round

# user_data of an SQE: the address of the object whose memory the operation
# uses (an Endpoint or a Request, 16-byte aligned) with the operation's tag
# in the low bits. The driver holds that object until the SQE's last CQE.
cdef enum:
    OP_WAKE = 0         # eventfd poll (no object)
    OP_RECV = 1         # Endpoint: stream/datagram read
    OP_ACCEPT = 3       # Endpoint: multishot accept
    OP_POLL = 4         # Endpoint: watcher poll
    OP_SEND_POLL = 5    # Endpoint: POLLOUT wait of a datagram chain
    OP_IGNORE = 6       # cancel requests (no object)
    OP_REQUEST = 10     # Request (driver.pxd)
    OP_MASK = 15


cdef inline uint64_t tag(void *obj, int op) except 0:
    if <uintptr_t>obj & OP_MASK:
        raise SystemError("object not 16-byte aligned")
    return <uint64_t><uintptr_t>obj | <uint64_t>op


cdef inline int tag_op(uint64_t user_data):
    return <int>(user_data & OP_MASK)


cdef inline void *tag_object(uint64_t user_data):
    return <void *><uintptr_t>(user_data & ~(<uint64_t>OP_MASK))


cdef class Ring:
    cdef:
        io_uring ring
        bint ok                     # set up and not torn down
        bint enabled                # an R_DISABLED ring enabled by its thread
        unsigned long issuer        # kernel tid that submits (SINGLE_ISSUER)
        readonly unsigned int setup_flags   # what the kernel accepted
        readonly unsigned long overflow_flushes
        # the last reap(): user_data, res and flags of each CQE
        uint64_t cqe_ud[CQE_BATCH]
        int cqe_res[CQE_BATCH]
        uint32_t cqe_flags[CQE_BATCH]

    @staticmethod
    cdef Ring new(unsigned int entries, unsigned int cq_entries)
    cdef bint supports(self, int opcode)
    cdef io_uring_sqe *get_sqe(self) except NULL
    cdef unsigned int sq_space(self)
    cdef bint on_issuer_thread(self)
    cdef int enable(self) except -1
    cdef int submit(self) except -1
    cdef int wait(self, long timeout_ms, bint signals=*) except -1
    cdef bint has_cqes(self)
    cdef unsigned int reap(self) except? 0
    cdef int exit(self) except -1


cdef class BufferRing:
    # A provided-buffer ring for the recvs of buffer group `group`: `count`
    # buffers of `size` bytes, of which only `target` are in the ring at a
    # time, the most recently used first (give_back).
    cdef:
        io_uring_buf_ring *br
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
    cdef BufferRing new(Ring ring, unsigned int count, unsigned int size,
                        int group)
    cdef char *buf(self, unsigned int bid)
    cdef int taken(self) except -1
    cdef int give_back(self, unsigned int bid) except -1
    cdef int ran_dry(self) except -1
    cdef int replenish(self) except -1
    cdef int strand(self) except -1
