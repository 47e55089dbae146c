from fastsock.driver cimport Driver, Endpoint, Request
from fastsock.system cimport epoll_event

cdef enum:
    EPOLL_MAX_EVENTS = 256

cdef class EpollDriver(Driver):
    cdef:
        int epfd
        int wakefd              # eventfd that call_soon_threadsafe writes
        list graveyard          # released during a batch: freed after it
        list pending            # endpoints owed another read/accept round
        set zc_waiting          # released, zero-copy notices still due
        char *rbuf
        Py_ssize_t rbuf_size
        epoll_event events[EPOLL_MAX_EVENTS]

    @staticmethod
    cdef EpollDriver new(object loop)

    cdef int ctl(self, int op, Endpoint ep, unsigned int events) except -1
    cdef int register(self, Endpoint ep) except -1
    cdef int set_out(self, Endpoint ep, bint on) except -1
    cdef int handle(self, Endpoint ep, unsigned int ev) except -1
    cdef int read_stream(self, Endpoint ep, bint drain) except -1
    cdef int read_datagrams(self, Endpoint ep) except -1
    cdef int accept_all(self, Endpoint ep) except -1
    cdef int run_pending(self) except -1
    cdef Py_ssize_t send_zerocopy(self, Endpoint ep) except -2
    cdef int read_zc_notices(self, Endpoint ep) except -1
    cdef int release_zc(self, Endpoint ep, unsigned int lo, unsigned int hi, bint copied) except -1
    cdef int finish_release(self, Endpoint ep) except -1
    cdef int defer(self, Endpoint ep) except -1
    cdef int flush_datagrams(self, Endpoint ep) except -1
