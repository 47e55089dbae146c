from libc.stdint cimport uint32_t
from fastsock.driver cimport Driver, Endpoint
from fastsock.handles cimport Handle, TimerHandle


cdef class Watcher(Endpoint):
    # add_reader/add_writer on one fd: the callbacks run as handles.
    cdef:
        CoreLoop loop
        Handle reader
        Handle writer

    @staticmethod
    cdef Watcher new(CoreLoop loop, int fd)
    cdef int update(self) except -1


cdef class CoreLoop:
    cdef:
        readonly Driver driver
        list ready
        list io_ready               # watcher callbacks of the current poll
        list timers                 # heap of TimerHandle
        int timers_cancelled
        bint closed
        bint stopping
        bint debug
        bint polling                # blocked in the driver: wake on threadsafe
        object thread_id
        double clock_resolution
        dict watchers               # fd -> Watcher
        bytearray tls_buffer        # what the loop's TLS connections decrypt
        object tls_view             # into (memoryview; transports.pyx)
        object __weakref__

    cdef double now(self)
    cdef int check_open(self) except -1
    cdef Handle soon(self, object callback, tuple args, object context)
    cdef int run_once(self) except -1
    cdef int run_handles(self, list todo) except -1
    cdef int purge_cancelled_timers(self) except -1
    cdef long poll_timeout(self)
    cdef Handle add_watch(self, int fd, bint writer, object callback,
                          tuple args)
    cdef bint remove_watch(self, int fd, bint writer) except -1
