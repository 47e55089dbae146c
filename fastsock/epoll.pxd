from libc.stdint cimport uint32_t, uint64_t
from fastsock.driver cimport Driver, Endpoint, Request
from fastsock.system cimport epoll_event

cdef enum:
    EPOLL_MAX_EVENTS = 256


cdef class ZeroCopyState:
    # One socket's MSG_ZEROCOPY sends (epoll): the kernel numbers each
    # successful sendmsg() and reports ranges of numbers on the error queue
    # once it no longer reads their pages; until then their Requests stay.
    cdef:
        unsigned int next_seq
        object in_flight            # deque of (seq, Request), oldest first


cdef class EpollDriver(Driver):
    cdef:
        int epfd
        int wakefd              # eventfd that call_soon_threadsafe writes
        # The kernel knows an endpoint by a key (slot | generation << 32),
        # never by its address: see attach().
        list slots              # slot -> registered Endpoint, or None
        list free_slots
        uint32_t generation
        list deferred           # endpoints owed a read/accept round
        list rearm              # one-shot watchers to re-arm before waiting
        set awaiting_notices          # released, zero-copy notices still due
        char *rbuf
        Py_ssize_t rbuf_size
        epoll_event events[EPOLL_MAX_EVENTS]

    @staticmethod
    cdef EpollDriver new(object loop)

    cdef int ctl(self, int op, Endpoint ep, unsigned int events) except -1
    cdef Endpoint lookup(self, uint64_t key)
    cdef int unregister(self, Endpoint ep) except -1
    cdef int set_out(self, Endpoint ep, bint on) except -1
    cdef int defer(self, Endpoint ep) except -1
    cdef int handle(self, Endpoint ep, unsigned int ev) except -1
    cdef int read_stream(self, Endpoint ep, bint drain) except -1
    cdef int read_datagrams(self, Endpoint ep) except -1
    cdef int accept_all(self, Endpoint ep) except -1
    cdef int run_deferred(self, list todo) except -1
    cdef int push(self, Endpoint ep) except -1
    cdef Py_ssize_t send_some(self, Endpoint ep, Request req) except -2
    cdef Py_ssize_t send_zerocopy(self, Endpoint ep, Request req) except -2
    cdef int finish_send(self, Endpoint ep, Request req, Py_ssize_t res) except -1
    cdef int push_datagrams(self, Endpoint ep) except -1
    cdef int read_zc_notices(self, Endpoint ep) except -1
    cdef int release_zc(self, Endpoint ep, unsigned int lo, unsigned int hi,
                        bint copied) except -1
    cdef int finish_release(self, Endpoint ep) except -1
