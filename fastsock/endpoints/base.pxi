# Included into transports.pyx (one module: the kinds call each other's
# cdef methods directly). What every transport shares: lifecycle (open ->
# closing -> released), write-buffer flow control (high/low water), error
# reporting, extra info.

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
        if not self.has_unsent():
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
            info.append(f'write=<bufsize={self.buffered_size()}>')
        return '<{}>'.format(' '.join(info))

    # -- flow control (asyncio.transports._FlowControlMixin) ------------------

    def get_write_buffer_size(self):
        return self.buffered_size()

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
        if self.buffered_size() <= self.high_water or self.protocol_paused:
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
        if self.protocol_paused and self.buffered_size() <= self.low_water:
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

    cdef Py_ssize_t buffered_size(self):
        return 0

    cdef bint has_unsent(self):
        return self.buffered_size() != 0

    cdef int drop_unsent(self, object exc) except -1:
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
        self.drop_unsent(exc)
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
            # drop every reference to the protocol (a stream also keeps its
            # data_received and TLS protocol): the user's protocol often
            # holds this transport, and the cycle would outlive the
            # connection until the next garbage collection
            self.set_protocol(None)
            server = self.server
            if server is not None:
                self.server = None
                server_detach(server, self)
