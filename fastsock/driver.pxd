# The contract between a driver (epoll or io_uring) and the objects it feeds.
#
# An Endpoint is one file descriptor as a driver sees it: a stream transport,
# a datagram transport, a listening server socket or a readiness watcher
# (add_reader/add_writer, pipes, pidfds). Transports subclass Endpoint and
# never learn which driver feeds them: the driver calls the on_* methods
# below, the transport calls the Driver methods.
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
    # iovecs a single gathered send may carry
    SEND_IOV_MAX = 16

cdef enum:
    # Endpoint.flags, kept by the driver
    EP_ADDED = 1 << 0
    EP_READING = 1 << 1        # the owner wants data (or connections)
    EP_SENDING = 1 << 2        # a backlog is being flushed
    EP_RELEASING = 1 << 3      # release() called: no new operations
    EP_RELEASED = 1 << 4       # on_released() has run
    EP_PENDING = 1 << 5        # queued for another read/accept round
    EP_WANT_IN = 1 << 6        # watcher: readable interest
    EP_WANT_OUT = 1 << 7       # watcher/datagram: writable interest
    EP_ZC_READY = 1 << 8       # epoll: SO_ZEROCOPY set on the socket
    EP_ABORTIVE = 1 << 9       # released by abort()/an error: the stream
                               # may be reset to end zero-copy sends at once
    EP_MULTISHOT_DGRAM = 1 << 10   # io_uring: UDP, read by multishot recvmsg

cdef enum:
    # Endpoint.send_mode, set by prepare_send()
    SEND_BYTES = 0             # send_msg/send_iov: an ordinary send
    SEND_ZEROCOPY = 1          # send_msg/send_iov without a copy; send_refs
                               # holds the objects until the kernel's notice
    SEND_FILE = 2              # file_fd/file_offset/file_count: sendfile(2)
                               # on epoll, splice through a pipe on io_uring


cdef enum:
    # Request.op
    REQ_SEND = 1               # send(2) from buf
    REQ_SENDMSG = 2            # sendmsg(2) of buf to name (a datagram)
    REQ_RECV = 3               # recv(2) into buf
    REQ_RECVMSG = 4            # recvmsg(2) into buf, sender in name
    REQ_ACCEPT = 5             # accept4(2), peer in name
    REQ_CONNECT = 6            # connect(2) to name


cdef class Driver
cdef class Endpoint


cdef class Request:
    # One socket operation that carries its own memory: a datagram a
    # transport sends, or one sock_* call on io_uring. The kernel may read or
    # write msg, iov, name and the buffer `view` points into until the
    # operation completes; a driver that hands it to the kernel holds a
    # reference to the Request until then.
    cdef:
        readonly int fd
        readonly int op
        Endpoint ep                 # the datagram transport, or None
        object callback             # sock_* calls: callback(request, res)
        Py_buffer view              # of buf: what is sent or received into
        bint has_view
        readonly object buf
        msghdr msg
        iovec iov
        sockaddr_storage name
        socklen_t namelen
        readonly Py_ssize_t size
        readonly int res
        bint cancelled

    @staticmethod
    cdef Request new(int op, int fd, object buf, bint writable)
    cdef int set_name(self, int family, object address) except -1


cdef class Endpoint:
    cdef:
        int fd
        int kind
        uint32_t flags
        uint32_t armed          # driver's private record of what is armed
        uint64_t key            # epoll: the name the kernel knows it by
        int inflight            # io_uring: operations whose CQE is due
        Driver driver
        # Memory a gathered send points at. It lives in the Endpoint so that
        # it stays valid while an io_uring SENDMSG is in flight.
        msghdr send_msg
        iovec send_iov[SEND_IOV_MAX]
        int send_mode
        object send_refs
        int file_fd
        long long file_offset
        size_t file_count
        # Zero-copy sends the kernel has not released yet (driver-owned):
        # epoll keeps (seq, refs) pairs until the error queue reports them.
        object zc_hold
        unsigned int zc_seq
        int zc_pending              # zero-copy sends whose notice is due
        # counters a user can read (kept by the driver)
        unsigned long long zc_sends
        unsigned long long zc_bytes
        unsigned long long zc_copied
        unsigned long long sendfile_bytes
        # Datagram sends (Requests) not finished yet, oldest first; the
        # driver's. io_uring: how many of them are in the kernel.
        object send_queue
        int sends_inflight

    # Stream data. `buf` is valid only during the call: copy what you keep.
    cdef int on_data(self, const char *buf, Py_ssize_t n) except -1
    cdef int on_eof(self) except -1
    cdef int on_read_error(self, int err) except -1
    # Datagram read.
    cdef int on_datagram(self, const char *buf, Py_ssize_t n,
                         sockaddr *addr, socklen_t addrlen) except -1
    # Stream backlog: set send_mode and fill send_msg/send_iov (or the file_*
    # fields) with what to send next; return the number of iovecs (1 for a
    # file; 0: nothing left). The memory must stay valid until on_sent() or
    # on_send_error(); in SEND_ZEROCOPY mode the driver keeps send_refs
    # alive until the kernel's notification.
    cdef int prepare_send(self) except -1
    # n bytes of what prepare_send() described went out (0 for a file: it
    # ended early).
    cdef int on_sent(self, Py_ssize_t n) except -1
    cdef int on_send_error(self, int err) except -1
    # The kernel released a zero-copy send; `copied`: it copied anyway, or
    # zero copy is not possible on this socket (stop asking for it).
    cdef int on_zc_report(self, bint copied) except -1
    # Datagrams: a Request given to Driver.send_datagram() is done: sent
    # (err 0) or refused (errno). Not called once the endpoint is released.
    cdef int on_datagram_sent(self, Request req, int err) except -1
    # Listener: a new connection (the callee owns fd), or an accept error.
    cdef int on_accept(self, int fd) except -1
    cdef int on_accept_error(self, int err) except -1
    # Watchers and datagram backlogs: readiness (POLLIN/POLLOUT/... bits).
    cdef int on_ready(self, uint32_t revents) except -1
    # The driver has forgotten the fd and nothing in flight refers to it.
    cdef int on_released(self) except -1


cdef class Driver:
    cdef:
        readonly str name
        object loop             # the loop whose callbacks the events run
        object pending_exc      # first exception raised by an on_* call
        readonly dict endpoints # fd -> Endpoint added: keeps them alive
        int reserve_fd          # spare fd given up to survive EMFILE
        # loop-wide counters (each Endpoint keeps its own as well)
        readonly unsigned long long zc_sends, zc_bytes, zc_copied
        readonly unsigned long long sendfile_bytes
        bint closed

    # Wait for events up to timeout_ms (-1: no limit) and dispatch them.
    cdef int poll(self, long timeout_ms) except -1
    # Wake a poll() from any thread (thread-safe, async-signal-safe).
    cdef void wakeup(self) nogil
    cdef int close(self) except -1

    cdef int add(self, Endpoint ep) except -1
    cdef int register(self, Endpoint ep) except -1     # add()'s kernel part
    cdef int start_reading(self, Endpoint ep) except -1
    cdef int stop_reading(self, Endpoint ep) except -1
    # Send at once if the kernel takes it: bytes sent, 0 if it would block,
    # -errno on error. Only while no backlog is being flushed.
    cdef Py_ssize_t send_now(self, Endpoint ep, const char *buf, Py_ssize_t n)
    # The endpoint has a backlog: send it (prepare_send/on_sent) until empty.
    cdef int flush(self, Endpoint ep) except -1
    # Readiness interest for watchers and datagram backlogs (POLLIN|POLLOUT).
    cdef int watch(self, Endpoint ep, uint32_t events) except -1
    # Send a datagram (REQ_SENDMSG, or REQ_SEND on a connected socket) after
    # those queued before it; on_datagram_sent() follows, perhaps at once.
    cdef int send_datagram(self, Endpoint ep, Request req) except -1
    # Forget the fd; on_released() follows once the kernel is done with it.
    cdef int release(self, Endpoint ep) except -1

    # Helpers for subclasses.
    cdef bint accept_emfile(self, Endpoint ep) except -1
    cdef int reset_stream(self, Endpoint ep) except -1
    cdef int dispatch_error(self, object exc) except -1
    cdef int check_pending(self) except -1
