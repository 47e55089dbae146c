# The contract between a driver (epoll or io_uring) and the objects it feeds.
#
# An Endpoint is one file descriptor as a driver sees it: a stream transport,
# a datagram transport, a listening server socket, a readiness watcher
# (add_reader/add_writer, pipes, pidfds) or a socket lent for one
# sock_sendfile(). Transports subclass Endpoint and never learn which driver
# feeds them: the driver calls the on_* methods, the transport calls the
# Driver methods.
#
# Sends are pushed: the owner hands the driver a Request that owns or pins
# the memory it sends (bytes, a zero-copy buffer, a file span, a datagram and
# its address); the driver reports back once, with on_sent(). A Request the
# kernel may still read or write is "in flight": the driver holds it until
# the kernel says it is done with it, whatever happens to its endpoint.
#
# Ownership: the Endpoint's creator owns the fd. Once it has called
# Driver.add(), it may close the fd only after Driver.release() has called
# back on_released(): by then no kernel operation refers to the fd or to
# memory inside the Endpoint.

from libc.stdint cimport uint32_t, uint64_t
from fastsock.system cimport iovec, msghdr, sockaddr, socklen_t, sockaddr_storage

cdef enum:
    KIND_STREAM = 1
    KIND_DATAGRAM = 2
    KIND_LISTENER = 3
    KIND_WATCHER = 4

cdef enum:
    # Endpoint.flags, kept by the driver
    EP_ADDED = 1 << 0
    EP_READING = 1 << 1        # the owner wants data (or connections)
    EP_RELEASING = 1 << 3      # release() called: no new operations
    EP_RELEASED = 1 << 4       # on_released() has run
    EP_DEFERRED = 1 << 5       # owed another read/accept round next iteration
    EP_WANT_IN = 1 << 6        # watcher: readable interest
    EP_WANT_OUT = 1 << 7       # watcher: writable interest
    EP_ZC_READY = 1 << 8       # epoll: SO_ZEROCOPY set on the socket
    EP_ABORTIVE = 1 << 9       # released by abort()/an error: the stream
                               # may be reset to end zero-copy sends at once
    EP_MULTISHOT_DGRAM = 1 << 10   # io_uring: UDP, read by multishot recvmsg
    EP_BULK = 1 << 11          # a stream read in bulk (recv_bytes)

cdef enum:
    # Request.op
    REQ_SEND = 1               # send(2) from one buffer
    REQ_SENDMSG = 2            # sendmsg(2): a datagram (to `name`), or a
                               # stream's gathered buffers
    REQ_RECV = 3               # recv(2) into one buffer
    REQ_RECVMSG = 4            # recvmsg(2) into one buffer, sender in name
    REQ_ACCEPT = 5             # accept4(2), peer in name
    REQ_CONNECT = 6            # connect(2) to name
    REQ_SEND_ZC = 7            # a stream's gathered buffers without a copy
                               # (MSG_ZEROCOPY / SENDMSG_ZC)
    REQ_SENDFILE = 8           # file_fd from file_offset, size bytes:
                               # sendfile(2), or splice through a pipe

    # buffers a gathered send carries at most
    SEND_IOV_MAX = 64


cdef enum:
    # A bulk stream (one whose reads fill whole buffers) is read into a new
    # bytes object of this size, which data_received() gets as it is. The
    # object stays under glibc's mmap threshold (128 KiB): a larger one is
    # mmap'd and unmapped again on every read, its pages faulted in each
    # time (measured: a tenth of the CPU time of a 64 KiB echo).
    BULK_READ_SIZE = 128 * 1024 - 256
    # A read of at least this much marks a stream as bulk.
    BULK_READ_MIN = 32 * 1024

# recv(2) from a stream socket into a new bytes object of up to `size`
# bytes: the bytes (shrunk in place to what came), or None with *res set to
# 0 (EOF) or -errno. The kernel's copy is the only one.
cdef bytes recv_bytes(int fd, Py_ssize_t size, Py_ssize_t *res)


cdef class Driver
cdef class Endpoint


cdef class Request:
    # One socket operation that carries its own memory: a send of a
    # transport's, or one sock_* call on a completion driver. The kernel may
    # read or write msg, iovs, name and the buffers they point into until the
    # driver reports the request done.
    cdef:
        readonly int fd
        readonly int op
        Endpoint ep                 # whose send it is, or None (sock_*)
        object callback             # sock_*: callback(request, res)
        Py_buffer view              # of buf: one buffer sent or received into
        bint has_view
        readonly object buf
        object refs                 # gathered sends: what iovs point into
        iovec iov
        iovec *iovs                 # iov, or a gathered send's own array
        msghdr msg
        sockaddr_storage name
        socklen_t namelen
        readonly Py_ssize_t size    # bytes to move
        readonly Py_ssize_t done    # bytes moved so far (a send's progress)
        int file_fd                 # REQ_SENDFILE
        long long file_offset
        int stage                   # driver-private: what the kernel is doing
        int notices_due             # zero-copy: notices the kernel still owes
        bint zc_copied              # zero-copy: the kernel copied anyway
        readonly int res
        bint cancelled

    @staticmethod
    cdef Request new(int op, int fd, object buf, bint writable)
    @staticmethod
    cdef Request gathered(Endpoint ep, int op, int count)
    @staticmethod
    cdef Request file_span(Endpoint ep, int file_fd, long long offset,
                           Py_ssize_t count)
    cdef int add_buffer(self, const char *buf, Py_ssize_t n,
                        object owner) except -1
    cdef int consume(self, Py_ssize_t n) except -1
    cdef int set_name(self, int family, object address) except -1


cdef class Endpoint:
    cdef:
        int fd
        int kind
        uint32_t flags
        Driver driver
        # driver-private
        uint32_t armed          # io_uring: operations in flight (ARM_* bits)
        uint32_t interest       # epoll: the events registered (EPOLLIN...)
        int inflight            # io_uring: operations whose last CQE is due
        int sends_inflight      # io_uring: datagram sends of this chain
        uint64_t key            # epoll: the name the kernel knows it by
        Request sending         # the stream send in progress
        object send_queue       # datagram sends not done yet, oldest first
        object zc               # epoll: zero-copy sends awaiting notices

    # Stream data. `buf` is valid only during the call: copy what you keep.
    cdef int on_data(self, const char *buf, Py_ssize_t n) except -1
    # Stream data already in a bytes object no one else holds: the callee
    # may keep it (on_data's copy is not needed).
    cdef int on_bytes(self, bytes data) except -1
    cdef int on_eof(self) except -1
    cdef int on_read_error(self, int err) except -1
    # Datagram read.
    cdef int on_datagram(self, const char *buf, Py_ssize_t n,
                         sockaddr *addr, socklen_t addrlen) except -1
    # A Request given to Driver.send() is done: res is req.done (every byte
    # sent; for a file, fewer when the file ended first) or -errno (then
    # req.done bytes went out). Not called once the endpoint is released.
    cdef int on_sent(self, Request req, Py_ssize_t res) except -1
    # The kernel released a zero-copy send; `copied`: it copied anyway, or
    # zero copy is not possible on this socket (stop asking for it).
    cdef int on_zc_report(self, bint copied) except -1
    # Listener: a new connection (the callee owns fd), or an accept error.
    cdef int on_accept(self, int fd) except -1
    cdef int on_accept_error(self, int err) except -1
    # Watchers: readiness (POLLIN/POLLOUT/... bits).
    cdef int on_ready(self, uint32_t revents) except -1
    # The driver has forgotten the fd and nothing in flight refers to it.
    cdef int on_released(self) except -1


cdef class Driver:
    cdef:
        readonly str name
        object loop             # the loop whose callbacks the events run
        object recorded_error   # first exception an on_* call let through
        readonly dict endpoints # fd -> Endpoint added: keeps them alive
        int reserve_fd          # spare fd given up to survive EMFILE
        # loop-wide counters (transports keep their own as well)
        readonly unsigned long long zc_sends, zc_bytes, zc_copied
        readonly unsigned long long sendfile_bytes
        bint closed

    # The calling thread starts running the loop. io_uring binds its ring to
    # the first such thread and refuses others (RuntimeError), before any
    # callback of the loop runs there.
    cdef int bind_thread(self) except -1
    # Wait for events up to timeout_ms (-1: no limit) and dispatch them.
    cdef int poll(self, long timeout_ms) except -1
    # Wake a poll() from any thread (thread-safe, async-signal-safe).
    cdef void wakeup(self) nogil
    cdef int close(self) except -1

    # Take the fd; attach() is the driver's part (epoll registers it with
    # the kernel; io_uring checks it and picks how to read it).
    cdef int add(self, Endpoint ep) except -1
    cdef int attach(self, Endpoint ep) except -1
    cdef int start_reading(self, Endpoint ep) except -1
    cdef int stop_reading(self, Endpoint ep) except -1
    # One send(2) now, from the caller's memory (both models: a write
    # reaches the kernel before write() returns): bytes sent, 0 if the
    # socket is full, -errno.
    cdef Py_ssize_t try_send(self, Endpoint ep, const char *buf, Py_ssize_t n)
    # Send `req` after the ones before it; on_sent() follows, perhaps at
    # once. `now`: the caller needs it in the kernel before returning (else
    # it may wait for the iteration's batch).
    cdef int send(self, Endpoint ep, Request req, bint now) except -1
    # Stop a stream send in progress (a cancelled sendfile): on_sent(req,
    # -ECANCELED) follows once the kernel no longer works on it.
    cdef int cancel_send(self, Endpoint ep, Request req) except -1
    # Readiness interest for watchers (POLLIN|POLLOUT).
    cdef int watch(self, Endpoint ep, uint32_t events) except -1
    # Forget the fd; on_released() follows once the kernel is done with it.
    # A listener's fd may be closed as soon as release() returns: no kernel
    # operation holds a listening socket open after that.
    cdef int release(self, Endpoint ep) except -1
    # Completion drivers also take sock_* operations as Requests, from
    # Python (sock_methods.py): def submit_request(req, callback, flags)
    # runs callback(req, res) once (res: bytes, an fd, 0 or -errno), and
    # def cancel_request(req) asks the kernel to stop it. The base class's
    # versions raise TypeError (a readiness driver has none).

    # What a driver does with a send (send() above is shared): a datagram
    # joined ep.send_queue; a stream's Request became ep.sending.
    cdef int datagram_queued(self, Endpoint ep) except -1
    cdef int start_stream_send(self, Endpoint ep, Request req,
                               bint now) except -1

    # Helpers for subclasses.
    cdef bint accept_emfile(self, Endpoint ep) except -1
    cdef int reset_stream(self, Endpoint ep) except -1
    cdef int record_error(self, object exc) except -1
    cdef int raise_recorded_error(self) except -1
