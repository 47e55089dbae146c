# Included into transports.pyx (one module: the kinds call each other's
# cdef methods directly). Stream transports (TCP, Unix stream sockets): reading
# into Protocol or BufferedProtocol, the write buffer and its sends, zero
# copy, sendfile, half-close.

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


cdef class StreamTransport(BaseTransport):
    """A TCP or Unix stream socket's transport (asyncio.Transport, as
    isinstance() sees it): asyncio's methods and semantics, plus
    write_zerocopy(), set/get_zerocopy_threshold() and zerocopy_stats().
    Made by the loop (create_connection, create_server, ...), never
    directly."""

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
        self.tls = protocol if type(protocol) is TLSProtocol else None
        # looked up once, not per chunk
        self.data_received = (None if self.buffered
                              else getattr(protocol, "data_received", None))

    # -- reading ---------------------------------------------------------------

    cdef int on_data(self, const char *buf, Py_ssize_t n) except -1:
        if self.buffered:
            return self.feed_buffered(buf, n)
        return self.on_bytes(PyBytes_FromStringAndSize(buf, n))

    cdef int on_bytes(self, bytes data) except -1:
        if self.buffered:
            return self.feed_buffered(PyBytes_AS_STRING(data),
                                      PyBytes_GET_SIZE(data))
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
            if not self.buffered:
                # set_protocol() in buffer_updated() gave a Protocol: the
                # rest is its data_received()'s, as the next read would be.
                return self.on_bytes(PyBytes_FromStringAndSize(buf, n))
            if self.paused or self.closing:
                # Read before the protocol paused: delivered on resume.
                self.unfed = PyBytes_FromStringAndSize(buf, n)
                return 0
            if self.tls is not None:
                # fastsock's TLS takes all of it into its incoming BIO
                try:
                    self.tls.feed(buf, n)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self.fatal_error(
                        exc, 'Fatal error: protocol.buffer_updated() call '
                             'failed.')
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
        if self.unfed is not None:
            self.loop.soon(self._feed_unfed, (), None)
        else:
            self.read_start()

    def _feed_unfed(self):
        cdef bytes data = self.unfed
        self.unfed = None
        if data is not None and not self.closing:
            self.feed_buffered(PyBytes_AS_STRING(data), len(data))
        if self.unfed is None and self.is_reading():
            self.read_start()

    cdef int feed_leftover(self, object item, object addr) except -1:
        return self.on_bytes(item)

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
        """Send `data` (bytes, bytearray, memoryview or a bytes subclass),
        as asyncio's write(): what the socket takes at once goes to the
        kernel before this returns; the rest waits in the write buffer
        (get_write_buffer_size(), flow control by the high/low water
        marks). A bytearray or memoryview may be changed as soon as this
        returns (what was not sent is copied). bytes of at least the
        zero-copy threshold (64 KiB by default) are sent zero-copy on
        TCP and held until the kernel's notice. TypeError for other types;
        RuntimeError after write_eof() or during a sendfile; after the
        connection is lost the data is dropped (asyncio logs a warning
        after a few such writes)."""
        self.write_data(data)

    cdef int write_data(self, object data) except -1:
        # write(), callable from C (TLSProtocol hands its records here).
        cdef Py_buffer view
        cdef Py_ssize_t sent
        cdef bint is_bytes = type(data) is bytes
        if not is_bytes and not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f'data argument must be a bytes-like object, '
                            f'not {type(data).__name__!r}')
        if self.eof:
            raise RuntimeError('Cannot call write() after write_eof()')
        if self.empty_waiter is not None:
            raise RuntimeError('unable to write; sendfile is in progress')
        if not data:
            return 0
        if self.conn_lost:
            if self.conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning('socket.send() raised exception.')
            self.conn_lost += 1
            return 0
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
                return 0
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
                    return 0
            finally:
                PyBuffer_Release(&view)
        if sent < 0:
            return self.fatal_error(errno_error(-sent),
                                    'Fatal write error on socket transport')
        self.queue(data, sent)
        self.start_send(False)          # the socket is full: wait for room
        return self.maybe_pause_protocol()

    def writelines(self, list_of_data):
        """write() of the buffers joined, as asyncio's writelines()."""
        self.write_data(b''.join(list_of_data))

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

    cdef Py_ssize_t buffered_size(self):
        return self.wbuf_size

    cdef bint has_unsent(self):
        # a file segment is unsent but not buffered bytes
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
        # or copied), up to SEND_IOV_MAX buffers; no buffer is added once
        # SEND_BYTES_MAX bytes are gathered (one larger buffer goes whole).
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

    cdef int drop_unsent(self, object exc) except -1:
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
        """Half-close: shutdown(SHUT_WR) once the write buffer is sent; the
        peer reads EOF, reading goes on. OSError if shutdown(2) fails."""
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
        """bytes writes of at least `threshold` bytes (an int; default
        64 KiB) go out zero-copy on TCP (None: never). Mutable buffers are
        always copied by write(). Raises TypeError for a non-int,
        ValueError below 0, OverflowError above 2**63 - 1."""
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
        """The zero-copy threshold in bytes (int), or None when off."""
        return None if self.zc_threshold == NO_ZEROCOPY else self.zc_threshold

    def zerocopy_stats(self):
        """This transport's counters, as loop.zerocopy_stats() gives them
        for the loop (ints: requests and bytes), and 'zerocopy_enabled'
        (bool: whether writes on this socket still try zero copy; it turns
        off once the kernel reports a copy, e.g. over loopback)."""
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
