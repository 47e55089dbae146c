# Included into transports.pyx (one module: the kinds call each other's
# cdef methods directly). Datagram transports (UDP, Unix datagram sockets).

# Python 3.13 sends zero-length datagrams (RFC 868 and the like need them;
# gh-113812) and counts 8 bytes of header per queued datagram in the write
# buffer size, so a flood of empty ones still reaches the high-water mark
# (3.13.0 forgot to take them off again: gh-135444; fastsock takes them off).
cdef bint SENDS_EMPTY_DATAGRAMS = sys.version_info >= (3, 13)
cdef Py_ssize_t DATAGRAM_OVERHEAD = 8 if sys.version_info >= (3, 13) else 0


class AsyncioDatagramTransport(transports.Transport,
                               transports.DatagramTransport):
    """What isinstance() sees of a fastsock DatagramTransport (its
    __class__): an asyncio.DatagramTransport, and an asyncio.Transport as
    asyncio's own datagram transports are."""
    __slots__ = ()


cdef class DatagramTransport(BaseTransport):
    """A UDP or Unix datagram socket's transport (asyncio.DatagramTransport,
    as isinstance() sees it): asyncio's methods and semantics. Made by
    loop.create_datagram_endpoint(), never directly."""

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

    cdef Py_ssize_t buffered_size(self):
        return self.dbuf_size

    cdef int drop_unsent(self, object exc) except -1:
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
        """Send one datagram (bytes-like) to `addr` (None: the connected
        peer), as asyncio's sendto(): sent at once when the socket takes
        it, else queued in order (get_write_buffer_size() counts queued
        bytes and headers). TypeError for a non bytes-like `data`,
        ValueError for an `addr` that differs from the connected peer's;
        a send the kernel refuses goes to error_received()."""
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
