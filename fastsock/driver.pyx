# cython: language_level=3
"""The driver contract: see driver.pxd."""

import collections

from cpython.bytearray cimport PyByteArray_FromStringAndSize
from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_GET_SIZE,
                             PyBytes_FromStringAndSize)
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release,
                             PyBUF_SIMPLE, PyBUF_WRITABLE)
from libc.stdlib cimport malloc, free
from libc.string cimport memset
from fastsock.sockaddr cimport sockaddr_to_py, py_to_sockaddr
from fastsock.driver cimport EP_ADDED, EP_RELEASING, KIND_DATAGRAM
from fastsock.system cimport (send, recv, connect, accept4, close, open, errno,
                              EAGAIN, EINTR, MSG_NOSIGNAL, MSG_DONTWAIT,
                              AF_UNSPEC, SOCK_CLOEXEC, SOCK_NONBLOCK,
                              O_RDONLY, O_CLOEXEC)


cdef class Request:
    """One socket operation with its own memory (see driver.pxd)."""

    def __init__(self, *args, **kwargs):
        raise TypeError("Request objects are made by the loop")

    @staticmethod
    cdef Request new(int op, int fd, object buf, bint writable):
        cdef Request self = Request.__new__(Request)
        self.op = op
        self.fd = fd
        if buf is not None:
            # The export pins the object's memory (a bytearray cannot be
            # resized under the kernel) until the Request lets go.
            PyObject_GetBuffer(buf, &self.view,
                               PyBUF_WRITABLE if writable else PyBUF_SIMPLE)
            self.has_view = True
            self.buf = buf
            self.size = self.view.len
            self.iov.iov_base = self.view.buf
            self.iov.iov_len = <size_t>self.view.len
        self.iovs = &self.iov
        self.msg.msg_iov = &self.iov
        self.msg.msg_iovlen = 1
        if op == REQ_RECVMSG or op == REQ_ACCEPT:
            self.namelen = sizeof(self.name)
            self.msg.msg_name = &self.name
            self.msg.msg_namelen = self.namelen
        return self

    @staticmethod
    cdef Request gathered(Endpoint ep, int op, int count):
        # A stream send of up to `count` buffers, added with add_buffer().
        cdef Request self = Request.__new__(Request)
        self.op = op
        self.fd = ep.fd
        self.ep = ep
        self.refs = []
        if count <= 1:
            self.iovs = &self.iov
        else:
            self.iovs = <iovec *>malloc(count * sizeof(iovec))
            if self.iovs == NULL:
                raise MemoryError()
        self.msg.msg_iov = self.iovs
        self.msg.msg_iovlen = 0
        return self

    @staticmethod
    cdef Request file_span(Endpoint ep, int file_fd, long long offset,
                           Py_ssize_t count):
        cdef Request self = Request.__new__(Request)
        self.op = REQ_SENDFILE
        self.fd = ep.fd
        self.ep = ep
        self.iovs = &self.iov
        self.file_fd = file_fd
        self.file_offset = offset
        self.size = count
        return self

    cdef int add_buffer(self, const char *buf, Py_ssize_t n,
                        object owner) except -1:
        # `owner` keeps buf alive (bytes, or an exported buffer's holder)
        # for as long as this Request lives.
        cdef size_t i = self.msg.msg_iovlen
        self.iovs[i].iov_base = <void *>buf
        self.iovs[i].iov_len = <size_t>n
        self.msg.msg_iovlen = i + 1
        self.size += n
        self.refs.append(owner)
        return 0

    cdef int consume(self, Py_ssize_t n) except -1:
        # n more bytes went out: a partial send goes on from there.
        cdef iovec *iov
        self.done += n
        if self.op == REQ_SENDFILE:
            self.file_offset += n
            return 0
        while n > 0 and self.msg.msg_iovlen > 0:
            iov = self.msg.msg_iov
            if <size_t>n < iov.iov_len:
                iov.iov_base = <char *>iov.iov_base + n
                iov.iov_len -= n
                return 0
            n -= iov.iov_len
            self.msg.msg_iov += 1
            self.msg.msg_iovlen -= 1
        return 0

    cdef int set_name(self, int family, object address) except -1:
        # 0: a family sockaddr.pyx does not spell (use the socket object).
        if not py_to_sockaddr(family, address, &self.name, &self.namelen):
            return 0
        self.msg.msg_name = &self.name
        self.msg.msg_namelen = self.namelen
        return 1

    def address(self):
        """The peer's address a RECVMSG or ACCEPT filled in."""
        if self.op == REQ_RECVMSG:
            return sockaddr_to_py(<sockaddr *>&self.name, self.msg.msg_namelen)
        return sockaddr_to_py(<sockaddr *>&self.name, self.namelen)

    def release_buffer(self):
        # Once the kernel is done with it: the caller's object is free again.
        if self.has_view:
            self.has_view = False
            PyBuffer_Release(&self.view)

    def __dealloc__(self):
        if self.has_view:
            PyBuffer_Release(&self.view)
        if self.iovs != NULL and self.iovs != &self.iov:
            free(self.iovs)


# For the loop's sock_* methods on io_uring.
SEND, SENDMSG, RECV, RECVMSG, ACCEPT, CONNECT = (
    REQ_SEND, REQ_SENDMSG, REQ_RECV, REQ_RECVMSG, REQ_ACCEPT, REQ_CONNECT)


def new_request(int op, int fd, buf=None, bint writable=False, int family=0,
                address=None):
    """A Request for a sock_* call; None if `address` is of a family that
    only the socket object can spell. Address errors raise as the socket
    module's do."""
    if not REQ_SEND <= op <= REQ_CONNECT:
        raise ValueError(f"unknown request {op}")
    cdef Request req = Request.new(op, fd, buf, writable)
    if address is not None and not req.set_name(family, address):
        return None
    return req


def receive_buffer(Py_ssize_t n):
    """A bytearray of n bytes for the kernel to fill (not zeroed first)."""
    if n < 0:
        raise ValueError("negative buffer size")
    return PyByteArray_FromStringAndSize(NULL, n)


cdef extern from *:
    """
    /* Takes the only reference to a bytes object; returns it shrunk to n
       bytes (realloc shrinks in place: nothing is copied), or NULL with an
       exception set. */
    static PyObject *fs_bytes_shrink(PyObject *b, Py_ssize_t n)
    {
        if (n < PyBytes_GET_SIZE(b) && _PyBytes_Resize(&b, n) < 0)
            return NULL;
        return b;
    }
    """
    object fs_bytes_shrink(PyObject *b, Py_ssize_t n)


cdef bytes recv_bytes(int fd, Py_ssize_t size, Py_ssize_t *res):
    # As socket.recv() does it (CPython's sock_recv), without the socket.
    cdef bytes data = PyBytes_FromStringAndSize(NULL, size)
    cdef PyObject *raw
    cdef Py_ssize_t n
    while True:
        n = recv(fd, PyBytes_AS_STRING(data), <size_t>size, 0)
        if n >= 0 or errno != EINTR:
            break
    if n <= 0:
        res[0] = -errno if n < 0 else 0
        return None
    res[0] = n
    if n == size:
        return data
    raw = <PyObject *>data
    Py_INCREF(data)
    data = None                 # raw holds the only reference now
    return fs_bytes_shrink(raw, n)


cdef class Endpoint:
    """Base for everything a driver feeds; the defaults ignore events."""

    def __init__(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} objects are made by the loop")

    cdef int on_data(self, const char *buf, Py_ssize_t n) except -1:
        return 0

    cdef int on_bytes(self, bytes data) except -1:
        return self.on_data(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))

    cdef int on_eof(self) except -1:
        return 0

    cdef int on_read_error(self, int err) except -1:
        return 0

    cdef int on_datagram(self, const char *buf, Py_ssize_t n,
                         sockaddr *addr, socklen_t addrlen) except -1:
        return 0

    cdef int on_sent(self, Request req, Py_ssize_t res) except -1:
        return 0

    cdef int on_zc_report(self, bint copied) except -1:
        return 0

    cdef int on_accept(self, int fd) except -1:
        return 0

    cdef int on_accept_error(self, int err) except -1:
        return 0

    cdef int on_ready(self, uint32_t revents) except -1:
        return 0

    cdef int on_released(self) except -1:
        return 0


cdef class Driver:
    """Interface of the drivers; the shared pieces live here."""

    def __init__(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} objects are made by the loop")

    cdef int bind_thread(self) except -1:
        return 0                    # a readiness driver runs in any thread

    cdef int poll(self, long timeout_ms) except -1:
        raise NotImplementedError  # abstract: every driver overrides it

    cdef void wakeup(self) nogil:
        pass

    cdef int close(self) except -1:
        self.closed = True
        return 0

    cdef int add(self, Endpoint ep) except -1:
        # One owner per fd: the loop never feeds two endpoints from one fd.
        if ep.flags & EP_ADDED:
            return 0
        if ep.fd in self.endpoints:
            raise RuntimeError(f"fd {ep.fd} is already used by the loop")
        self.attach(ep)
        self.endpoints[ep.fd] = ep
        ep.driver = self
        ep.flags |= EP_ADDED
        return 0

    cdef int attach(self, Endpoint ep) except -1:
        raise NotImplementedError  # abstract

    cdef int start_reading(self, Endpoint ep) except -1:
        raise NotImplementedError  # abstract

    cdef int stop_reading(self, Endpoint ep) except -1:
        raise NotImplementedError  # abstract

    cdef Py_ssize_t try_send(self, Endpoint ep, const char *buf, Py_ssize_t n):
        cdef Py_ssize_t sent
        while True:
            sent = send(ep.fd, buf, <size_t>n, MSG_NOSIGNAL | MSG_DONTWAIT)
            if sent >= 0:
                return sent
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                return 0
            return -errno

    cdef int send(self, Endpoint ep, Request req, bint now) except -1:
        # The order is the same on both models: datagrams queue per
        # endpoint, a stream has one send Request at a time (its transport
        # gathers the next one when on_sent() comes).
        if ep.flags & EP_RELEASING:
            return 0
        if ep.kind == KIND_DATAGRAM:
            if ep.send_queue is None:
                ep.send_queue = collections.deque()
            ep.send_queue.append(req)
            return self.datagram_queued(ep)
        if ep.sending is not None:
            raise RuntimeError("a stream has one send request at a time")
        ep.sending = req
        return self.start_stream_send(ep, req, now)

    cdef int datagram_queued(self, Endpoint ep) except -1:
        raise NotImplementedError  # abstract

    cdef int start_stream_send(self, Endpoint ep, Request req,
                               bint now) except -1:
        raise NotImplementedError  # abstract

    cdef int cancel_send(self, Endpoint ep, Request req) except -1:
        raise NotImplementedError  # abstract

    cdef int watch(self, Endpoint ep, uint32_t events) except -1:
        raise NotImplementedError  # abstract

    cdef int release(self, Endpoint ep) except -1:
        raise NotImplementedError  # abstract

    cdef bint accept_emfile(self, Endpoint ep) except -1:
        # Out of fds: the pending connection would wait in the backlog, and
        # the next readiness (edge) or multishot accept would fail again at
        # once. Give up the spare fd, accept the connection and drop it,
        # take the spare back. True if a connection was dropped.
        cdef int fd = -1
        if self.reserve_fd >= 0:
            close(self.reserve_fd)
            fd = accept4(ep.fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK)
            if fd >= 0:
                close(fd)
            self.reserve_fd = open(b"/dev/null", O_RDONLY | O_CLOEXEC)
        return fd >= 0

    def _retry_accept(self, Endpoint ep):
        # EMFILE and not even the spare fd helped: the driver stopped
        # accepting and retries a second later (as asyncio does).
        if not ep.flags & EP_RELEASING and not self.closed:
            self.start_reading(ep)

    cdef int reset_stream(self, Endpoint ep) except -1:
        # An aborted stream with zero-copy sends the peer never acked: the
        # kernel would keep the pages until it gives up retransmitting.
        # connect(AF_UNSPEC) disconnects the TCP socket without closing the
        # fd: the write queue is purged, and the notices come at once.
        cdef sockaddr addr
        memset(&addr, 0, sizeof(addr))
        addr.sa_family = AF_UNSPEC
        connect(ep.fd, &addr, sizeof(addr))
        return 0

    cdef int record_error(self, object exc) except -1:
        # An on_* call let an exception through (only BaseExceptions that
        # transports do not handle themselves, e.g. KeyboardInterrupt). The
        # driver finishes its batch so no event is lost; poll() raises it
        # at the end (raise_recorded_error()).
        if self.recorded_error is None:
            self.recorded_error = exc
        return 0

    cdef int raise_recorded_error(self) except -1:
        exc = self.recorded_error
        if exc is not None:
            self.recorded_error = None
            raise exc
        return 0

    # -- completion requests (sock_methods.CompletionSockMethods) -------------

    def submit_request(self, Request req not None, callback, int flags=0):
        """Start `req` in the kernel; callback(req, res) runs once, from the
        loop, with res as the syscall returns it (bytes moved, an fd, 0) or
        -errno (-ECANCELED once cancelled). `flags`: MSG_* for sends
        (receives always pass 0). Completion drivers only: a readiness driver has no
        kernel operation to submit, and raises TypeError."""
        raise TypeError(f"the {self.name} driver is a readiness driver: "
                        "sock_* operations wait for readiness instead")

    def cancel_request(self, Request req not None):
        """Ask the kernel to stop `req`; its callback still runs once (with
        -ECANCELED, or what completed first). Completion drivers only."""
        raise TypeError(f"the {self.name} driver is a readiness driver: "
                        "it has no requests to cancel")
