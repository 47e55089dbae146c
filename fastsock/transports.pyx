# cython: language_level=3
"""Stream, datagram and listening-socket transports.

One class per kind, shared by both drivers: these classes receive events
through the Endpoint contract (driver.pxd) and never learn which driver
feeds them. Their behaviour follows asyncio's selector transports (the
reference for every message, exception and callback order here).
"""

import collections
import logging
import math
import os
import socket
import sys
import warnings

from asyncio import constants, futures, protocols, transports, trsock
from asyncio import base_events

from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release,
                             PyBUF_SIMPLE, PyBUF_WRITABLE)
from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_GET_SIZE,
                            PyBytes_FromStringAndSize)
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy, strlen

from fastsock.driver cimport *
from fastsock.system cimport *
from fastsock.loop cimport CoreLoop
from fastsock.sockaddr cimport sockaddr_to_py, local_address, peer_address

logger = logging.getLogger('asyncio')

cdef object BufferedProtocol = protocols.BufferedProtocol
cdef object TransportSocket = trsock.TransportSocket
cdef object set_result_unless_cancelled = futures._set_result_unless_cancelled


# asyncio.Server counts the connections it serves, to tell wait_closed()
# when the last one is gone. Python 3.13 keeps the transports themselves in a
# weak set instead, for Server.close_clients()/abort_clients() (gh-113538), so
# _attach()/_detach() take the transport there and nothing before.
cdef bint SERVER_KEEPS_TRANSPORTS = sys.version_info >= (3, 13)


cdef server_attach(object server, object transport):
    if SERVER_KEEPS_TRANSPORTS:
        server._attach(transport)
    else:
        server._attach()


cdef server_detach(object server, object transport):
    if SERVER_KEEPS_TRANSPORTS:
        server._detach(transport)
    else:
        server._detach()


# Python 3.13 sends zero-length datagrams (RFC 868 and the like need them;
# gh-113812) and counts 8 bytes of header per queued datagram in the write
# buffer size, so a flood of empty ones still reaches the high-water mark
# (3.13.0 forgot to take them off again: gh-135444; fastsock takes them off).
cdef bint SENDS_EMPTY_DATAGRAMS = sys.version_info >= (3, 13)
cdef Py_ssize_t DATAGRAM_OVERHEAD = 8 if sys.version_info >= (3, 13) else 0


cdef object errno_error(int err):
    # OSError(errno, ...) picks the subclass asyncio raises
    # (ConnectionResetError, BrokenPipeError, ...).
    return OSError(err, os.strerror(err))


cdef class BaseTransport(Endpoint):

    cdef int setup(self, CoreLoop loop, object sock, object protocol,
                   object extra, object server) except -1:
        # `sock` may be None for a connection the loop accepted: then the
        # caller set fd, family, stype and proto, and the socket object is
        # made only if someone asks for it (the_socket()).
        self.loop = loop
        if sock is not None:
            self.sock = sock
            self.fd = sock.fileno()
            self.family = sock.family
            self.stype = sock.type
            self.proto = sock.proto
        self.extra = None if extra is None else dict(extra)
        self.high_water = 64 * 1024
        self.low_water = 16 * 1024
        self.set_protocol(protocol)
        # Either both the server and the driver know this transport, or
        # neither does: a failure here leaves the socket to the caller.
        if server is not None:
            server_attach(server, self)
        try:
            loop.driver.add(self)
        except BaseException:
            if server is not None:
                server_detach(server, self)
            raise
        self.server = server
        return 0

    cdef int start(self, object waiter) except -1:
        self.loop.soon(self.protocol.connection_made, (self,), None)
        # Only start reading once connection_made() has been called.
        self.loop.soon(self._start_reading, (True,), None)
        if waiter is not None:
            # Only wake the waiter once connection_made() has been called.
            self.loop.soon(set_result_unless_cancelled, (waiter, None), None)
        return 0

    def _start_reading(self, bint wait):
        # asyncio's first read comes from the poll after the one that
        # follows connection_made(): by then the task awaiting the waiter
        # has resumed (create_connection() returned). A driver reads as
        # soon as it is asked, so ask one iteration later.
        if wait:
            self.loop.soon(self._start_reading, (False,), None)
        elif self.is_reading():
            self.read_start()

    cdef int read_start(self) except -1:
        # Begin or resume reading. What cancelled sock_* calls left on the
        # socket (sock_methods.Leftovers) comes first, in order, and the
        # driver reads only once every cancelled request is in.
        cdef object lo = self.leftovers
        if lo is None:
            return self.loop.driver.start_reading(self)
        while lo.items and self.is_reading():
            item, addr = lo.items.popleft()
            self.feed_leftover(item, addr)
        if not self.is_reading():
            return 0                    # resume_reading() comes back here
        if lo.unsettled:
            lo.on_settled = self._leftovers_settled
            return 0
        self.leftovers = None
        return self.loop.driver.start_reading(self)

    def _leftovers_settled(self):
        if self.leftovers is not None and self.is_reading():
            self.read_start()

    def _adopt_leftovers(self, leftovers):
        # Set by the loop right after it made this transport from a socket
        # that sock_* calls used (before reading starts).
        self.leftovers = leftovers

    cdef int feed_leftover(self, object item, object addr) except -1:
        raise NotImplementedError  # each transport kind overrides it

    # -- asyncio.BaseTransport ------------------------------------------------

    def get_extra_info(self, name, default=None):
        """asyncio's extra info: 'socket' (a TransportSocket), 'sockname',
        'peername', and what the transport was made with (SSL adds its own
        above this one). The addresses are read on first use, or before
        the fd closes, so they stay right afterwards."""
        if self.extra is None or name == 'socket':
            self.fill_extra(name == 'socket')
        return self.extra.get(name, default)

    cdef int fill_extra(self, bint with_socket) except -1:
        # Most servers never ask: an idle connection keeps no dict, no
        # addresses, no socket object until someone does.
        if self.extra is None:
            self.extra = {}
        if 'sockname' not in self.extra and self.fd >= 0:
            self.extra['sockname'] = local_address(self.fd)
        if 'peername' not in self.extra and self.fd >= 0:
            self.extra['peername'] = peer_address(self.fd, self.family)
        if with_socket and 'socket' not in self.extra:
            self.extra['socket'] = TransportSocket(self.the_socket())
        return 0

    cdef object the_socket(self):
        # The socket object, made on first use for a connection the loop
        # accepted; it is the transport's, and closes the fd in the end.
        if self.sock is None:
            if self.fd >= 0:
                self.sock = socket.socket(
                    self.family, self.stype | socket.SOCK_NONBLOCK,
                    self.proto, self.fd)
            else:
                # Asked after the fd closed: a closed socket, as asyncio
                # would give for a transport that is done.
                self.sock = socket.socket(self.family, self.stype,
                                          self.proto)
                self.sock.close()
        return self.sock

    def __del__(self):
        # Collected with its fd open (its loop closed with the transport
        # still open): warn as asyncio's transports do, and close it.
        if self.fd >= 0 and self.flags & EP_ADDED:
            warnings.warn(f"unclosed transport {self!r}", ResourceWarning,
                          source=self)
            self.close_fd()

    cdef int close_fd(self) except -1:
        # The driver has forgotten the fd: now it may be closed, once.
        if self.sock is not None:
            self.sock.close()
        elif self.fd >= 0:
            close(self.fd)
        self.fd = -1
        return 0

    def is_closing(self):
        return self.closing

    def set_protocol(self, protocol):
        self.protocol = protocol

    def get_protocol(self):
        return self.protocol

    @property
    def _loop(self):
        return self.loop

    @property
    def _sock(self):
        return self.the_socket()

    @property
    def _protocol_paused(self):
        return self.protocol_paused

    def is_reading(self):
        return not self.paused and not self.closing

    def pause_reading(self):
        if not self.is_reading():
            return
        self.paused = True
        self.loop.driver.stop_reading(self)
        if self.loop.debug:
            logger.debug("%r pauses reading", self)

    def resume_reading(self):
        if self.closing or not self.paused:
            return
        self.paused = False
        self.read_start()
        if self.loop.debug:
            logger.debug("%r resumes reading", self)

    def close(self):
        if self.closing:
            return
        self.closing = True
        self.loop.driver.stop_reading(self)
        if not self.has_backlog():
            self.conn_lost += 1
            self.begin_release(None)

    def abort(self):
        self.force_close(None)

    def _force_close(self, exc):
        # asyncio's SSLProtocol calls this on a failed handshake or shutdown
        # timeout, as selector transports have it.
        self.force_close(exc)

    def __repr__(self):
        info = [type(self).__name__]
        if self.fd < 0:
            info.append('closed')
        elif self.closing:
            info.append('closing')
        info.append(f'fd={self.fd}')
        if self.loop is not None and not self.loop.closed:
            info.append('read=' + ('polling' if self.is_reading() else 'idle'))
            info.append(f'write=<bufsize={self.backlog()}>')
        return '<{}>'.format(' '.join(info))

    # -- flow control (asyncio.transports._FlowControlMixin) ------------------

    def get_write_buffer_size(self):
        return self.backlog()

    def get_write_buffer_limits(self):
        if self.limits is not None:
            return self.limits
        return (self.low_water, self.high_water)

    def set_write_buffer_limits(self, high=None, low=None):
        """Flow control marks in bytes (asyncio's): pause_writing() once the
        write buffer is above `high`, resume_writing() once it is at `low`
        or below. high defaults to 64 KiB (4 * low when only low is given),
        low to high // 4. Any real numbers are taken, as asyncio takes them;
        ValueError unless high >= low >= 0."""
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(
                f'high ({high!r}) must be >= low ({low!r}) must be >= 0')
        # The buffer size is a whole number of bytes: comparing it with the
        # floor of a mark gives the same answer as with the mark.
        self.high_water = math.floor(high)
        self.low_water = math.floor(low)
        self.limits = (None if type(high) is int and type(low) is int
                       else (low, high))
        self.maybe_pause_protocol()

    cdef int maybe_pause_protocol(self) except -1:
        if self.backlog() <= self.high_water or self.protocol_paused:
            return 0
        self.protocol_paused = True
        try:
            self.protocol.pause_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.loop.call_exception_handler({
                'message': 'protocol.pause_writing() failed',
                'exception': exc,
                'transport': self,
                'protocol': self.protocol,
            })
        return 0

    cdef int maybe_resume_protocol(self) except -1:
        if self.protocol_paused and self.backlog() <= self.low_water:
            self.protocol_paused = False
            try:
                self.protocol.resume_writing()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self.loop.call_exception_handler({
                    'message': 'protocol.resume_writing() failed',
                    'exception': exc,
                    'transport': self,
                    'protocol': self.protocol,
                })
        return 0

    # -- lifecycle -------------------------------------------------------------

    cdef Py_ssize_t backlog(self):
        return 0

    cdef bint has_backlog(self):
        return self.backlog() != 0

    cdef int drop_backlog(self, object exc) except -1:
        return 0

    cdef int callback_failed(self, object exc, str callback) except -1:
        # A protocol callback that asyncio calls from a loop callback (so a
        # failure is reported and the transport stays open) raised.
        self.loop.call_exception_handler({
            'message': f'Exception in protocol.{callback}()',
            'exception': exc,
            'transport': self,
            'protocol': self.protocol,
        })
        return 0

    cdef int fatal_error(self, object exc, str message) except -1:
        if isinstance(exc, OSError):
            if self.loop.debug:
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self.loop.call_exception_handler({
                'message': message,
                'exception': exc,
                'transport': self,
                'protocol': self.protocol,
            })
        return self.force_close(exc)

    cdef int force_close(self, object exc) except -1:
        if self.conn_lost:
            return 0
        self.drop_backlog(exc)
        if not self.closing:
            self.closing = True
            self.loop.driver.stop_reading(self)
        self.conn_lost += 1
        self.flags |= EP_ABORTIVE
        return self.begin_release(exc)

    cdef int begin_release(self, object exc) except -1:
        # The driver forgets the fd first (io_uring: after cancelling what is
        # in flight); connection_lost follows from on_released(). The
        # addresses are read while the fd is open: get_extra_info() gives
        # them after the connection is gone, as asyncio's does.
        self.fill_extra(False)
        self.lost_exc = exc
        return self.loop.driver.release(self)

    cdef int on_released(self) except -1:
        if self.loop.closed:
            # Released while its loop closes (zero-copy notices came late):
            # no callbacks run any more, but the fd is ours to close.
            self.close_fd()
            return 0
        self.loop.soon(self._call_connection_lost, (self.lost_exc,), None)
        self.lost_exc = None
        return 0

    def _call_connection_lost(self, exc):
        try:
            self.protocol.connection_lost(exc)
        finally:
            self.close_fd()
            self.protocol = None
            server = self.server
            if server is not None:
                self.server = None
                server_detach(server, self)


# Writes of immutable bytes at least this large go out without a copy
# (MSG_ZEROCOPY / SEND_ZC) until the kernel says it copied anyway. Below it,
# pinning pages and reading notifications cost more than copying: see the
# zero-copy benchmark in the README.
DEFAULT_ZEROCOPY_THRESHOLD = 64 * 1024
cdef Py_ssize_t NO_ZEROCOPY = -1


cdef class FileSegment:

    def __init__(self, *args, **kwargs):
        raise TypeError("made by loop.sendfile()")


cdef class PinnedBuffer:

    def __init__(self, *args, **kwargs):
        raise TypeError("made by transport.write_zerocopy()")

    @staticmethod
    cdef PinnedBuffer new(CoreLoop loop, object data, object done):
        cdef PinnedBuffer self = PinnedBuffer.__new__(PinnedBuffer)
        PyObject_GetBuffer(data, &self.view, PyBUF_SIMPLE)
        self.has_view = True
        self.loop = loop
        self.done = done
        return self

    def __dealloc__(self):
        # The last reference is gone: neither the transport nor the kernel
        # (a zero-copy send's hold) uses the memory any more.
        if self.has_view:
            PyBuffer_Release(&self.view)
            self.has_view = False
        done = self.done
        if done is None or done.done() or self.loop is None or self.loop.closed:
            return
        if self.sent_all:
            self.loop.soon(set_result_unless_cancelled, (done, None), None)
        else:
            self.loop.soon(_fail_unless_cancelled, (done, ConnectionError(
                'the transport closed before the buffer was sent')), None)


def _fail_unless_cancelled(fut, exc):
    if not fut.cancelled():
        fut.set_exception(exc)


# isinstance(t, asyncio.Transport) must hold for fastsock's transports:
# CPython's tests assert it, and libraries check transports that way. A
# Cython class cannot derive from asyncio's pure-Python transport classes
# (their __slots__ give them an instance layout of their own), so each
# transport class names, as its instances' __class__, a Python subclass of
# the asyncio class it implements. isinstance() consults __class__ when the
# type itself does not match (the mechanism unittest.mock's spec objects
# use); type(t) still gives the Cython class, and nothing on the hot path
# looks at either.
class AsyncioStreamTransport(transports.Transport):
    """What isinstance() sees of a fastsock StreamTransport (its
    __class__): an asyncio.Transport."""
    __slots__ = ()


class AsyncioDatagramTransport(transports.Transport,
                               transports.DatagramTransport):
    """What isinstance() sees of a fastsock DatagramTransport (its
    __class__): an asyncio.DatagramTransport, and an asyncio.Transport as
    asyncio's own datagram transports are."""
    __slots__ = ()


cdef class StreamTransport(BaseTransport):

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    @property
    def __class__(self):
        return AsyncioStreamTransport

    @staticmethod
    cdef StreamTransport new(CoreLoop loop, object sock, object protocol,
                             object waiter, object extra, object server):
        cdef StreamTransport self = StreamTransport.__new__(StreamTransport)
        self.kind = KIND_STREAM
        self.setup(loop, sock, protocol, extra, server)
        self.prepare()
        self.start(waiter)
        return self

    @staticmethod
    cdef StreamTransport accepted(CoreLoop loop, int fd, int family,
                                  int stype, int proto, object protocol,
                                  object server):
        # A connection the loop accepted: no socket object until asked for.
        cdef StreamTransport self = StreamTransport.__new__(StreamTransport)
        self.kind = KIND_STREAM
        self.fd = fd
        self.family = family
        self.stype = stype
        self.proto = proto
        self.setup(loop, None, protocol, None, server)
        self.prepare()
        self.start(None)
        return self

    cdef int prepare(self) except -1:
        cdef int one = 1
        self.zc_threshold = DEFAULT_ZEROCOPY_THRESHOLD
        self.zc_enabled = self.family == AF_INET or self.family == AF_INET6
        if self.zc_enabled and self.stype == SOCK_STREAM:
            # Every TCP stream sends small writes at once. asyncio sets
            # TCP_NODELAY only when the socket's proto is IPPROTO_TCP; a
            # socket made with proto 0 (socket.socket(), uvicorn's --workers
            # sockets) is the same TCP socket, and without it a response
            # written in two parts waits for the peer's delayed ACK (40 ms).
            # uvloop sets it on every TCP stream too.
            setsockopt(self.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
        return 0

    def set_protocol(self, protocol):
        self.buffered = isinstance(protocol, BufferedProtocol)
        self.protocol = protocol
        # looked up once, not per chunk
        self.data_received = (None if self.buffered
                              else getattr(protocol, "data_received", None))

    # -- reading ---------------------------------------------------------------

    cdef int on_data(self, const char *buf, Py_ssize_t n) except -1:
        if self.buffered:
            return self.feed_buffered(buf, n)
        data = PyBytes_FromStringAndSize(buf, n)
        try:
            self.data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.fatal_error(
                exc, 'Fatal error: protocol.data_received() call failed.')
        return 0

    cdef int feed_buffered(self, const char *buf, Py_ssize_t n) except -1:
        cdef Py_buffer view
        cdef Py_ssize_t k
        while n > 0:
            if self.paused or self.closing:
                # Read before the protocol paused: delivered on resume.
                self.stash = PyBytes_FromStringAndSize(buf, n)
                return 0
            try:
                target = self.protocol.get_buffer(-1)
                PyObject_GetBuffer(target, &view, PyBUF_WRITABLE)
                try:
                    if view.len == 0:
                        raise RuntimeError('get_buffer() returned an empty buffer')
                    k = min(n, view.len)
                    memcpy(view.buf, buf, k)
                finally:
                    PyBuffer_Release(&view)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self.fatal_error(
                    exc, 'Fatal error: protocol.get_buffer() call failed.')
                return 0
            try:
                self.protocol.buffer_updated(k)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self.fatal_error(
                    exc, 'Fatal error: protocol.buffer_updated() call failed.')
                return 0
            buf += k
            n -= k
        return 0

    def resume_reading(self):
        if self.closing or not self.paused:
            return
        self.paused = False
        if self.stash is not None:
            self.loop.soon(self._deliver_stash, (), None)
        else:
            self.read_start()

    def _deliver_stash(self):
        cdef bytes data = self.stash
        self.stash = None
        if data is not None and not self.closing:
            self.feed_buffered(PyBytes_AS_STRING(data), len(data))
        if self.stash is None and self.is_reading():
            self.read_start()

    cdef int feed_leftover(self, object item, object addr) except -1:
        return self.on_data(PyBytes_AS_STRING(item), PyBytes_GET_SIZE(item))

    cdef int on_eof(self) except -1:
        if self.loop.debug:
            logger.debug("%r received EOF", self)
        try:
            keep_open = self.protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.fatal_error(
                exc, 'Fatal error: protocol.eof_received() call failed.')
            return 0
        if keep_open:
            # The protocol may still write; there is nothing more to read.
            self.loop.driver.stop_reading(self)
        else:
            self.close()
        return 0

    cdef int on_read_error(self, int err) except -1:
        return self.fatal_error(errno_error(err),
                                'Fatal read error on socket transport')

    # -- writing ---------------------------------------------------------------
    #
    # The write buffer (wbuf) holds what the kernel has not taken: bytes,
    # PinnedBuffers (write_zerocopy) and FileSegments (loop.sendfile). A
    # write to an idle stream goes to the kernel at once (try_send), as
    # asyncio's does; what the socket does not take goes to the driver as
    # one send Request at a time (start_send), gathered from the head of
    # the buffer, and the driver reports it done (on_sent).

    def write(self, data):
        cdef Py_buffer view
        cdef Py_ssize_t sent
        cdef bint is_bytes = type(data) is bytes
        if not is_bytes and not isinstance(data, (bytearray, memoryview)):
            raise TypeError(f'data argument must be a bytes-like object, '
                            f'not {type(data).__name__!r}')
        if self.eof:
            raise RuntimeError('Cannot call write() after write_eof()')
        if self.empty_waiter is not None:
            raise RuntimeError('unable to write; sendfile is in progress')
        if not data:
            return
        if self.conn_lost:
            if self.conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning('socket.send() raised exception.')
            self.conn_lost += 1
            return
        if self.wbuf or self.zc_eligible(data):
            # Queued behind what waits (keep order), or zero-copy: the
            # driver sends it.
            self.queue(data, 0)
            if self.sending is None:
                self.start_send(True)
            return self.maybe_pause_protocol()
        # The common case: nothing queued, so the kernel takes it now.
        if is_bytes:
            sent = self.loop.driver.try_send(self, PyBytes_AS_STRING(data),
                                             PyBytes_GET_SIZE(data))
            if sent == PyBytes_GET_SIZE(data):
                return
        else:
            try:
                PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            except BufferError:
                data = memoryview(data).tobytes()     # not contiguous
                PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                sent = self.loop.driver.try_send(self, <const char *>view.buf,
                                                 view.len)
                if sent == view.len:
                    return
            finally:
                PyBuffer_Release(&view)
        if sent < 0:
            return self.fatal_error(errno_error(-sent),
                                    'Fatal write error on socket transport')
        self.queue(data, sent)
        self.start_send(False)          # the socket is full: wait for room
        self.maybe_pause_protocol()

    def writelines(self, list_of_data):
        self.write(b''.join(list_of_data))

    cdef int queue(self, object data, Py_ssize_t skip) except -1:
        # The caller may reuse a mutable buffer once write() returns, so only
        # bytes are kept as they are; `skip` bytes of it are already sent.
        if type(data) is not bytes:
            data = memoryview(data).tobytes()
        if not self.wbuf:
            self.wbuf_offset = skip
            if self.wbuf is None:
                self.wbuf = []
        self.wbuf.append(data)
        self.wbuf_size += PyBytes_GET_SIZE(data) - skip
        return 0

    cdef Py_ssize_t backlog(self):
        return self.wbuf_size

    cdef bint has_backlog(self):
        # a file segment counts as a backlog but not as buffered bytes
        return bool(self.wbuf)

    cdef bint zc_eligible(self, object entry):
        if not self.zc_enabled:
            return False
        if type(entry) is bytes:
            return (self.zc_threshold != NO_ZEROCOPY
                    and PyBytes_GET_SIZE(entry) >= self.zc_threshold)
        return type(entry) is PinnedBuffer

    cdef int start_send(self, bint now) except -1:
        # One send Request from the head of the write buffer: a file
        # segment alone, or a run of entries that share a mode (zero-copy
        # or copied), up to SEND_IOV_MAX buffers and SEND_BYTES_MAX bytes.
        # The Request holds what its iovecs point into until the kernel is
        # done with it, whatever becomes of this transport.
        cdef Py_ssize_t idx = self.wbuf_start
        cdef Py_ssize_t end = len(self.wbuf)
        cdef Py_ssize_t offset = self.wbuf_offset
        cdef Py_ssize_t total = 0
        cdef int count = 0
        cdef FileSegment seg
        cdef PinnedBuffer pinned
        cdef Request req
        cdef bint zc
        if idx == end:
            return 0
        entry = self.wbuf[idx]
        if type(entry) is FileSegment:
            seg = <FileSegment>entry
            req = Request.file_span(self, seg.fd, seg.offset, seg.remaining)
            seg.request = req
            return self.loop.driver.send(self, req, now)
        zc = self.zc_eligible(entry)
        while (idx + count < end and count < SEND_IOV_MAX
               and total < SEND_BYTES_MAX):
            entry = self.wbuf[idx + count]
            if type(entry) is FileSegment or self.zc_eligible(entry) != zc:
                break
            if type(entry) is bytes:
                total += PyBytes_GET_SIZE(entry) - offset
            else:
                total += (<PinnedBuffer>entry).view.len - offset
            offset = 0
            count += 1
        req = Request.gathered(self, REQ_SEND_ZC if zc else REQ_SENDMSG,
                               count)
        offset = self.wbuf_offset
        for idx in range(self.wbuf_start, self.wbuf_start + count):
            entry = self.wbuf[idx]
            if type(entry) is bytes:
                req.add_buffer(PyBytes_AS_STRING(entry) + offset,
                               PyBytes_GET_SIZE(entry) - offset, entry)
            else:
                pinned = <PinnedBuffer>entry
                req.add_buffer(<char *>pinned.view.buf + offset,
                               pinned.view.len - offset, entry)
            offset = 0
        return self.loop.driver.send(self, req, now)

    cdef int on_sent(self, Request req, Py_ssize_t res) except -1:
        cdef Driver driver = self.loop.driver
        cdef FileSegment seg
        if req.op == REQ_SENDFILE:
            # What went out counts, whatever ended the transfer.
            self.sendfile_bytes += req.done
            driver.sendfile_bytes += req.done
            seg = self.wbuf[self.wbuf_start]
            seg.offset += req.done
            seg.sent += req.done
            seg.remaining -= req.done
            seg.request = None
            if res >= 0 or res == -ECANCELED:     # done, short, cancelled
                return self.file_sent(seg)
        if res < 0:
            return self.on_send_error(<int>-res)
        if req.op == REQ_SEND_ZC:
            self.zc_sends += 1
            self.zc_bytes += res
            driver.zc_sends += 1
            driver.zc_bytes += res
        return self.advance(res)

    cdef int advance(self, Py_ssize_t n) except -1:
        # n bytes from the head of the write buffer went out.
        cdef Py_ssize_t left
        self.wbuf_size -= n
        while n > 0:
            entry = self.wbuf[self.wbuf_start]
            if type(entry) is bytes:
                left = PyBytes_GET_SIZE(entry) - self.wbuf_offset
            else:
                left = (<PinnedBuffer>entry).view.len - self.wbuf_offset
            if n < left:
                self.wbuf_offset += n
                break
            n -= left
            if type(entry) is PinnedBuffer:
                (<PinnedBuffer>entry).sent_all = True
            self.wbuf[self.wbuf_start] = None
            self.wbuf_start += 1
            self.wbuf_offset = 0
        return self.after_sent()

    cdef int after_sent(self) except -1:
        if self.wbuf_start == len(self.wbuf):
            self.wbuf = None            # an idle stream keeps no list
            self.wbuf_start = 0
        elif self.wbuf_start > 64 and self.wbuf_start * 2 > len(self.wbuf):
            del self.wbuf[:self.wbuf_start]
            self.wbuf_start = 0
        self.maybe_resume_protocol()    # may write more
        if self.conn_lost:
            return 0
        if self.wbuf:
            if self.sending is None:
                self.start_send(True)
        else:
            self.drained()
        return 0

    cdef int file_sent(self, FileSegment seg) except -1:
        # Done, the file ended before `count` bytes, or cancelled.
        self.wbuf[self.wbuf_start] = None
        self.wbuf_start += 1
        if not seg.done.done():
            seg.done.set_result(seg.sent)
        return self.after_sent()

    def _cancel_sendfile(self, FileSegment seg):
        # loop.sendfile() was cancelled: stop sending the file. A segment
        # the driver is sending ends with on_sent(-ECANCELED), once the
        # kernel no longer works on it; `done` resolves then.
        if seg.request is not None:
            self.loop.driver.cancel_send(self, seg.request)
        elif not seg.done.done():
            seg.done.set_result(seg.sent)

    cdef int fail_files(self, object exc) except -1:
        cdef FileSegment seg
        cdef Py_ssize_t n
        for entry in self.wbuf or ():
            if type(entry) is FileSegment:
                seg = <FileSegment>entry
                if seg.request is not None:
                    # Failed while the driver sent it: what the kernel took
                    # so far counts (the file position says so).
                    n = seg.request.done
                    seg.offset += n
                    seg.sent += n
                    seg.remaining -= n
                    seg.request = None
                if not seg.done.done():
                    seg.done.set_exception(exc)
        return 0

    cdef int on_zc_report(self, bint copied) except -1:
        if copied:
            # Loopback and some devices always copy; then zero copy only
            # adds the cost of pinning and notifications.
            self.zc_copied += 1
            self.loop.driver.zc_copied += 1
            self.zc_enabled = False
        return 0

    cdef int drained(self) except -1:
        # The write buffer is empty.
        if self.empty_waiter is not None and not self.empty_waiter.done():
            self.empty_waiter.set_result(None)
        if self.closing:
            if not self.conn_lost:
                self.conn_lost += 1
                self.begin_release(None)
        elif self.eof:
            shutdown(self.fd, SHUT_WR)  # (a failure: the peer is gone)
        return 0

    cdef int on_send_error(self, int err) except -1:
        exc = errno_error(err)
        self.fail_files(exc)
        self.fatal_error(exc, 'Fatal write error on socket transport')
        if self.empty_waiter is not None and not self.empty_waiter.done():
            self.empty_waiter.set_exception(exc)
        return 0

    cdef int drop_backlog(self, object exc) except -1:
        # A send in flight holds its own memory (the driver keeps its
        # Request until the kernel is done): the buffer can go at once.
        # File transfers waiting on it fail with what ended the stream.
        if self.wbuf:
            self.fail_files(exc if exc is not None
                            else ConnectionError('Connection lost'))
        self.wbuf = None
        self.wbuf_size = self.wbuf_start = self.wbuf_offset = 0
        return 0

    def can_write_eof(self):
        return True

    def write_eof(self):
        if self.closing or self.eof:
            return
        self.eof = True
        if not self.wbuf and shutdown(self.fd, SHUT_WR) < 0:
            raise errno_error(errno)

    # -- zero copy -------------------------------------------------------------

    def write_zerocopy(self, data):
        """Send `data` (any contiguous buffer) without copying it when the
        socket allows. Returns a future resolved (None) once the kernel has
        released the buffer: do not change the buffer before then. Where
        zero copy is not possible the data is sent by copy and the future
        resolves once it is sent. The future fails with ConnectionError if
        the transport closes before the buffer was sent (again only once
        the kernel let go of it). Raises RuntimeError after write_eof() or
        while a sendfile is in progress, BufferError for a non-contiguous
        buffer."""
        if self.eof:
            raise RuntimeError('Cannot call write() after write_eof()')
        if self.empty_waiter is not None:
            raise RuntimeError('unable to write; sendfile is in progress')
        done = self.loop.create_future()
        if self.conn_lost:
            done.set_exception(ConnectionError('Connection lost'))
            return done
        pinned = PinnedBuffer.new(self.loop, data, done)
        if pinned.view.len == 0:
            pinned.sent_all = True
            return done
        if not self.wbuf:
            self.wbuf_offset = 0
            self.wbuf = []
        self.wbuf.append(pinned)
        self.wbuf_size += pinned.view.len
        if self.sending is None:
            self.start_send(True)
        self.maybe_pause_protocol()
        return done

    def set_zerocopy_threshold(self, threshold):
        """bytes writes of at least `threshold` bytes go out zero-copy
        (None: never). Mutable buffers are always copied by write().
        Raises TypeError for a non-int, ValueError below 0."""
        if threshold is None:
            self.zc_threshold = NO_ZEROCOPY
        elif not isinstance(threshold, int):
            raise TypeError(f"threshold must be an int or None, "
                            f"not {type(threshold).__name__}")
        elif threshold < 0:
            raise ValueError("threshold must be >= 0 or None")
        else:
            self.zc_threshold = threshold

    def get_zerocopy_threshold(self):
        return None if self.zc_threshold == NO_ZEROCOPY else self.zc_threshold

    def zerocopy_stats(self):
        """This transport's counters: 'zerocopy_sends' (zero-copy send
        requests) and 'zerocopy_bytes' (their bytes), 'zerocopy_copied'
        (those the kernel copied anyway), 'sendfile_bytes' (bytes sent by
        loop.sendfile()), and 'zerocopy_enabled' (whether this socket still
        uses zero copy)."""
        return {
            'zerocopy_sends': self.zc_sends,
            'zerocopy_bytes': self.zc_bytes,
            'zerocopy_copied': self.zc_copied,
            'sendfile_bytes': self.sendfile_bytes,
            'zerocopy_enabled': bool(self.zc_enabled),
        }

    def _sendfile(self, file_fd, offset, count):
        # loop.sendfile(): the write buffer is empty (the caller waited)
        # and write() refuses while the empty waiter is set.
        cdef FileSegment seg = FileSegment.__new__(FileSegment)
        seg.fd = file_fd
        seg.offset = offset
        seg.remaining = count
        seg.done = self.loop.create_future()
        if self.conn_lost:
            seg.done.set_exception(ConnectionError('Connection lost'))
            return seg
        if self.wbuf is None:
            self.wbuf = []
        self.wbuf.append(seg)
        if self.sending is None:
            self.start_send(True)
        return seg

    # -- sendfile support (asyncio's protocol for loop.sendfile) ---------------

    def _make_empty_waiter(self):
        if self.empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        self.empty_waiter = self.loop.create_future()
        if not self.wbuf:
            self.empty_waiter.set_result(None)
        return self.empty_waiter

    def _reset_empty_waiter(self):
        self.empty_waiter = None


cdef class DatagramTransport(BaseTransport):

    @property
    def __class__(self):
        return AsyncioDatagramTransport

    @staticmethod
    cdef DatagramTransport new(CoreLoop loop, object sock, object protocol,
                               object address, object waiter, object extra):
        cdef DatagramTransport self = DatagramTransport.__new__(DatagramTransport)
        self.kind = KIND_DATAGRAM
        self.address = address
        self.family = sock.family
        self.setup(loop, sock, protocol, extra, None)
        self.connected = bool(self.get_extra_info('peername'))
        self.start(waiter)
        return self

    cdef Py_ssize_t backlog(self):
        return self.dbuf_size

    cdef int drop_backlog(self, object exc) except -1:
        # The driver drops its queue on release(); nothing is reported.
        self.dbuf_size = 0
        return 0

    cdef int on_datagram(self, const char *buf, Py_ssize_t n,
                         sockaddr *addr, socklen_t addrlen) except -1:
        if self.conn_lost:
            return 0
        return self.feed_leftover(PyBytes_FromStringAndSize(buf, n),
                                  sockaddr_to_py(addr, addrlen))

    cdef int feed_leftover(self, object data, object addr) except -1:
        # A datagram, from the driver or left by a cancelled sock_recvfrom.
        try:
            self.protocol.datagram_received(data, addr)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            # One bad datagram must not take the endpoint down: reported,
            # and reading goes on (as asyncio's reader callback has it).
            self.callback_failed(exc, 'datagram_received')
        return 0

    cdef int on_read_error(self, int err) except -1:
        return self.report_error(errno_error(err))

    cdef int report_error(self, object exc) except -1:
        # error_received() runs in the driver's dispatch: whatever it raises
        # is reported, as asyncio's reader and writer callbacks have it.
        try:
            self.protocol.error_received(exc)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as cb_exc:
            self.callback_failed(cb_exc, 'error_received')
        return 0

    def sendto(self, data, addr=None):
        cdef Request req
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f'data argument must be a bytes-like object, '
                            f'not {type(data).__name__!r}')
        if not data and not SENDS_EMPTY_DATAGRAMS:
            return
        if self.address:
            if addr not in (None, self.address):
                raise ValueError(
                    f'Invalid address: must be None or {self.address}')
            addr = self.address
        if self.conn_lost:
            if self.conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning('socket.send() raised exception.')
            self.conn_lost += 1
            return
        # What the driver keeps must not change under it: bytes as they are,
        # anything else copied (asyncio copies what it has to queue).
        if type(data) is not bytes:
            data = bytes(data)
        req = Request.new(REQ_SENDMSG, self.fd, data, False)
        req.ep = self
        if not self.connected:
            try:
                if not req.set_name(self.family, addr):
                    self.send_through_socket(data, addr)
                    return
            except OSError as exc:
                self.protocol.error_received(exc)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self.fatal_error(exc, 'Fatal write error on datagram transport')
                return
        self.dbuf_size += req.size + DATAGRAM_OVERHEAD
        self.loop.driver.send(self, req, True)
        self.maybe_pause_protocol()

    cdef int send_through_socket(self, object data, object addr) except -1:
        # A family sockaddr.pyx does not spell (AF_PACKET, AF_NETLINK, ...):
        # the socket object sends it; a full buffer is reported, not queued.
        try:
            self.sock.sendto(data, addr)
        except OSError as exc:
            self.protocol.error_received(exc)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.fatal_error(exc, 'Fatal write error on datagram transport')
        return 0

    cdef int on_sent(self, Request req, Py_ssize_t res) except -1:
        self.dbuf_size -= req.size + DATAGRAM_OVERHEAD
        if res < 0:
            self.report_error(errno_error(<int>-res))
        self.maybe_resume_protocol()
        if self.dbuf_size == 0 and self.closing and not self.conn_lost:
            self.conn_lost += 1
            self.begin_release(None)
        return 0


cdef class FileSender(Endpoint):
    """loop.sock_sendfile(): a user's socket lent to the driver for one
    file transfer (it does not own the fd); the result future resolves
    once the driver has forgotten the fd."""

    cdef int on_sent(self, Request req, Py_ssize_t res) except -1:
        self.loop.driver.sendfile_bytes += req.done
        self.seg.sent = req.done
        self.seg.offset += req.done
        self.seg.remaining -= req.done
        if res < 0 and res != -ECANCELED:
            self.error = errno_error(<int>-res)
        self.seg.request = None
        return self.loop.driver.release(self)

    cdef int on_released(self) except -1:
        if self.seg.done.done() or self.loop.closed:
            return 0
        if self.error is not None:
            self.seg.done.set_exception(self.error)
        else:
            self.seg.done.set_result(self.seg.sent)
        return 0

    def cancel(self):
        # Stop the transfer; `done` resolves (bytes sent) once the kernel
        # no longer works on it and the fd is the caller's again.
        if self.seg.request is not None:
            self.loop.driver.cancel_send(self, self.seg.request)


def send_file(CoreLoop loop, int sock_fd, int file_fd, long long offset,
              Py_ssize_t count):
    """Send `count` bytes of file_fd from `offset` to the socket sock_fd
    (not owned: the caller keeps it). Returns the FileSender: its `seg.done`
    future gives the bytes sent (fewer if the file ends first) once the
    loop no longer uses the socket; its cancel() stops the transfer."""
    cdef FileSender sender = FileSender.__new__(FileSender)
    cdef FileSegment seg = FileSegment.__new__(FileSegment)
    cdef Request req
    seg.fd = file_fd
    seg.offset = offset
    seg.remaining = count
    seg.done = loop.create_future()
    sender.fd = sock_fd
    sender.kind = KIND_STREAM
    sender.loop = loop
    sender.seg = seg
    loop.driver.add(sender)
    req = Request.file_span(sender, file_fd, offset, count)
    seg.request = req
    loop.driver.send(sender, req, True)
    return sender


cdef class Listener(Endpoint):
    """A listening socket: accepted connections become StreamTransports."""

    @staticmethod
    def start(CoreLoop loop, sock, protocol_factory, sslcontext, server,
              ssl_handshake_timeout, ssl_shutdown_timeout, leftovers):
        cdef Listener self = Listener.__new__(Listener)
        self.kind = KIND_LISTENER
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.family = sock.family
        self.type = sock.type
        self.proto = sock.proto
        self.protocol_factory = protocol_factory
        self.sslcontext = sslcontext
        self.server = server
        self.ssl_handshake_timeout = ssl_handshake_timeout
        self.ssl_shutdown_timeout = ssl_shutdown_timeout
        self.leftovers = leftovers
        loop.driver.add(self)
        self._accept_start()
        return self

    def _accept_start(self):
        # Connections that cancelled sock_accept calls took (Leftovers,
        # sock_methods.py) are served first; accepting starts once every
        # cancelled request is in.
        lo = self.leftovers
        if lo is not None:
            while lo.items and not self.flags & EP_RELEASING:
                conn, _ = lo.items.popleft()
                self.on_accept(conn.detach())
            if lo.unsettled and not self.flags & EP_RELEASING:
                lo.on_settled = self._accept_start
                return
            self.leftovers = None
        self.loop.driver.start_reading(self)

    def stop(self):
        # Server.close() promises refused connections at once, as closing a
        # selector loop's socket gives: once release() returns no kernel
        # operation holds a listening socket (driver.pxd), so our fd is
        # closed now. Never shutdown(): the socket may be shared with other
        # processes (gunicorn's workers) that go on listening.
        self.loop.driver.release(self)
        self.sock.close()

    cdef int on_accept(self, int fd) except -1:
        cdef object conn = None
        protocol = None
        try:
            protocol = self.protocol_factory()
            if self.sslcontext is not None:
                # Family, type and proto given: the socket object asks the
                # kernel nothing; SOCK_NONBLOCK: the fd is nonblocking.
                conn = socket.socket(self.family,
                                     self.type | socket.SOCK_NONBLOCK,
                                     self.proto, fd)
                self.loop._make_ssl_transport(
                    conn, protocol, self.sslcontext, None,
                    server_side=True, server=self.server,
                    ssl_handshake_timeout=self.ssl_handshake_timeout,
                    ssl_shutdown_timeout=self.ssl_shutdown_timeout)
            else:
                StreamTransport.accepted(self.loop, fd, self.family,
                                         self.type, self.proto, protocol,
                                         self.server)
        except (SystemExit, KeyboardInterrupt):
            if conn is not None:
                conn.close()
            else:
                close(fd)
            raise
        except BaseException as exc:
            # No transport took the fd: it is still ours to close.
            if conn is not None:
                conn.close()
            else:
                close(fd)
            # asyncio reports this only in debug mode, which is how a
            # server that drops every connection can stay silent; the
            # connection is dropped either way, the reason is always told.
            context = {
                'message': 'Error on transport creation for incoming '
                           'connection',
                'exception': exc,
            }
            if protocol is not None:
                context['protocol'] = protocol
            self.loop.call_exception_handler(context)
        return 0

    cdef int on_accept_error(self, int err) except -1:
        exc = errno_error(err)
        if err in (EMFILE, ENFILE, ENOBUFS, ENOMEM):
            message = 'socket.accept() out of system resource'
        else:
            message = 'Error accepting a connection'
        self.loop.call_exception_handler({
            'message': message,
            'exception': exc,
            'socket': TransportSocket(self.sock),
        })
        return 0

    cdef int on_released(self) except -1:
        self.sock.close()           # (closed by stop() already, usually)
        return 0


def make_stream_transport(CoreLoop loop, sock, protocol, waiter=None,
                          extra=None, server=None):
    return StreamTransport.new(loop, sock, protocol, waiter, extra, server)


def make_datagram_transport(CoreLoop loop, sock, protocol, address=None,
                            waiter=None, extra=None):
    return DatagramTransport.new(loop, sock, protocol, address, waiter, extra)


def start_listener(CoreLoop loop, sock, protocol_factory, sslcontext, server,
                   ssl_handshake_timeout, ssl_shutdown_timeout,
                   leftovers=None):
    return Listener.start(loop, sock, protocol_factory, sslcontext, server,
                          ssl_handshake_timeout, ssl_shutdown_timeout,
                          leftovers)
