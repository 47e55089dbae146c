# TLS over a stream transport: TLSProtocol (the stream's protocol, holding
# the TLS state machine) and TLSTransport (what the application protocol
# sees). Included by transports.pyx.
#
# Behaviour is asyncio's SSLProtocol (Lib/asyncio/sslproto.py, 3.11+): the
# same states, callbacks and their order, exceptions, log messages, flow
# control marks and timeouts; CPython's test_ssl.py and test_sslproto.py
# run against it on both drivers (tests/cpython_suite). What differs is the
# cost: asyncio's is pure Python and takes a dozen Python calls per record;
# here a received record goes from the stream's read buffer into the
# incoming BIO without a get_buffer() round trip (StreamTransport.tls), is
# decrypted into the loop's one decrypt buffer, and reaches data_received()
# as one bytes object; a write() is one SSL_write and one stream write.
#
# The TLS engine is the ssl module's (OpenSSL through SSLObject on two
# MemoryBIOs); when the context's sslobject_class is ssl.SSLObject itself,
# its C object is called directly (SSLObject's methods are Python wrappers
# around it), otherwise the subclass's methods are honoured.
#
#   UNWRAPPED -> HANDSHAKE -> WRAPPED -> FLUSHING -> SHUTDOWN
#   (UNWRAPPED from any state: handshake failure, abort, connection lost)

cdef enum TLSState:
    TLS_UNWRAPPED
    TLS_HANDSHAKE
    TLS_WRAPPED
    TLS_FLUSHING
    TLS_SHUTDOWN

cdef tuple TLS_STATE_NAMES = ('UNWRAPPED', 'DO_HANDSHAKE', 'WRAPPED',
                              'FLUSHING', 'SHUTDOWN')

# The application protocol's life, as asyncio tracks it:
#   INIT -connection_made-> CONNECTED [-eof_received-> EOF] -connection_lost-> LOST
cdef enum AppState:
    APP_INIT
    APP_CONNECTED
    APP_EOF
    APP_LOST

cdef object SSLObject = ssl.SSLObject
cdef object SSLError = ssl.SSLError
cdef object CertificateError = ssl.CertificateError
# SSL_read/SSL_write/SSL_do_handshake/SSL_shutdown need more input (or hit a
# syscall error on the memory BIO, which is the same here)
cdef tuple TLS_AGAIN = (ssl.SSLWantReadError, ssl.SSLSyscallError)
cdef object CancelledError = exceptions.CancelledError
cdef object add_flowcontrol_defaults = sslproto.add_flowcontrol_defaults
cdef object create_transport_context = sslproto._create_transport_context

cdef enum:
    # The buffer get_buffer() hands the stream for ciphertext (asyncio's
    # SSLProtocol.max_size).
    TLS_READ_MAX = 256 * 1024
    # The decrypt buffer of a data_received() protocol: a TLS record
    # carries at most 16 KiB of plaintext, so a few records fit per pass.
    TLS_PLAIN_BUF = 64 * 1024


# What isinstance() sees (as for the stream transports, stream.pxi); the
# names are asyncio's term, which code and CPython's tests look for in them.
class AsyncioSSLProtocol(protocols.BufferedProtocol):
    """What isinstance() sees of a fastsock TLSProtocol (its __class__):
    an asyncio.BufferedProtocol."""
    __slots__ = ()


class AsyncioSSLTransport(transports._FlowControlMixin, transports.Transport):
    """What isinstance() sees of a fastsock TLSTransport (its __class__):
    an asyncio.Transport with write flow control (asyncio's sendfile
    fallback checks for _FlowControlMixin, as _SSLProtocolTransport is)."""
    __slots__ = ()


cdef class TLSProtocol:
    """The protocol of a stream that carries TLS (asyncio's SSLProtocol,
    as the loop makes it for create_connection(ssl=...), create_server(
    ssl=...) and start_tls()). Arguments as asyncio's SSLProtocol:
    `sslcontext` None means ssl.create_default_context() (client side only,
    else ValueError); the timeouts are in seconds, > 0 (ValueError), None
    for asyncio's defaults (60 s handshake, 30 s shutdown). The
    application's transport (a TLSTransport) is `_app_transport`, as on
    asyncio's."""

    @property
    def __class__(self):
        return AsyncioSSLProtocol

    def __init__(self, CoreLoop loop, app_protocol, sslcontext, waiter,
                 server_side=False, server_hostname=None,
                 call_connection_made=True,
                 ssl_handshake_timeout=None, ssl_shutdown_timeout=None):
        if ssl_handshake_timeout is None:
            ssl_handshake_timeout = constants.SSL_HANDSHAKE_TIMEOUT
        elif ssl_handshake_timeout <= 0:
            raise ValueError(
                f"ssl_handshake_timeout should be a positive number, "
                f"got {ssl_handshake_timeout}")
        if ssl_shutdown_timeout is None:
            ssl_shutdown_timeout = constants.SSL_SHUTDOWN_TIMEOUT
        elif ssl_shutdown_timeout <= 0:
            raise ValueError(
                f"ssl_shutdown_timeout should be a positive number, "
                f"got {ssl_shutdown_timeout}")
        if not sslcontext:
            sslcontext = create_transport_context(server_side,
                                                  server_hostname)
        self.loop = loop
        self.waiter = waiter
        self.handshake_timeout = ssl_handshake_timeout
        self.shutdown_timeout = ssl_shutdown_timeout
        self.server_side = bool(server_side)
        self.server_hostname = (server_hostname
                                if server_hostname and not server_side
                                else None)
        self.extra = {'sslcontext': sslcontext}
        self.backlog = collections.deque()
        self.backlog_size = 0
        self.state = TLS_UNWRAPPED
        self.app_state = APP_INIT if call_connection_made else APP_CONNECTED
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj = sslcontext.wrap_bio(
            self.incoming, self.outgoing, server_side=self.server_side,
            server_hostname=self.server_hostname)
        self.engine = (self.sslobj._sslobj if type(self.sslobj) is SSLObject
                       else self.sslobj)
        self.set_read_limits(None, None)
        self.set_write_limits(None, None)
        self.set_app_protocol(app_protocol)
        self.app_transport = TLSTransport.__new__(TLSTransport)
        self.app_transport.loop = loop
        self.app_transport.tls = self

    @property
    def _app_transport(self):
        return self.app_transport

    def __repr__(self):
        return (f'<TLSProtocol {TLS_STATE_NAMES[self.state]} '
                f'{"server" if self.server_side else "client"}>')

    cdef int set_app_protocol(self, object protocol) except -1:
        self.app_protocol = protocol
        self.app_buffered = isinstance(protocol, BufferedProtocol)
        if self.app_buffered:
            self.app_get_buffer = protocol.get_buffer
            self.app_buffer_updated = protocol.buffer_updated
            self.app_data_received = None
        else:
            self.app_get_buffer = self.app_buffer_updated = None
            self.app_data_received = getattr(protocol, 'data_received', None)
        return 0

    cdef int set_write_limits(self, object high, object low) except -1:
        # asyncio's defaults and checks; any real numbers. The sizes
        # compared with them are whole bytes: size >= high is size >=
        # ceil(high), size <= low is size <= floor(low).
        high, low = add_flowcontrol_defaults(
            high, low, constants.FLOW_CONTROL_HIGH_WATER_SSL_WRITE)
        self.out_limits = (low, high)
        self.out_high, self.out_low = math.ceil(high), math.floor(low)
        return 0

    cdef int set_read_limits(self, object high, object low) except -1:
        high, low = add_flowcontrol_defaults(
            high, low, constants.FLOW_CONTROL_HIGH_WATER_SSL_READ)
        self.in_limits = (low, high)
        self.in_high, self.in_low = math.ceil(high), math.floor(low)
        return 0

    cdef bint stream_closing(self) except -1:
        # The stream may be failing before its connection_lost() comes (a
        # reset found by a send inside write())
        cdef object t = self.transport
        if t is None:
            return False
        if type(t) is StreamTransport:
            return (<StreamTransport>t).closing
        return t.is_closing()

    cdef int check_thread(self) except -1:
        # Two threads in one OpenSSL connection corrupt its memory (SSL_write
        # runs without the GIL): what enters the engine from a thread other
        # than the running loop's is refused.
        thread_id = self.loop.thread_id
        if thread_id is not None and PyThread_get_thread_ident() != thread_id:
            raise RuntimeError(
                'Non-thread-safe operation invoked on an event loop other '
                'than the current one')
        return 0

    cdef int wake_waiter(self, object exc) except -1:
        waiter, self.waiter = self.waiter, None
        if waiter is None or waiter.cancelled():
            return 0
        if exc is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(exc)
        return 0

    cdef object extra_info(self, name, default):
        if name in self.extra:
            return self.extra[name]
        if self.transport is not None:
            return self.transport.get_extra_info(name, default)
        return default

    # -- the stream's protocol -------------------------------------------------

    def connection_made(self, transport):
        """The stream is up: the handshake starts."""
        self.transport = transport
        if self.loop.debug:
            logger.debug("%r starts SSL handshake", self)
            self.handshake_start = self.loop.time()
        self.state = TLS_HANDSHAKE
        self.handshake_timer = self.loop.call_later(
            self.handshake_timeout, self._check_handshake_timeout)
        self.do_handshake()

    def connection_lost(self, exc):
        """The stream is gone: the application's connection_lost() comes
        next (unless the handshake never finished), with `exc`."""
        self.backlog.clear()
        self.backlog_size = 0
        self.outgoing.read()
        self.conn_lost += 1
        if self.app_transport is not None:
            self.app_transport.closed = True
        if (self.state != TLS_HANDSHAKE and
                (self.app_state == APP_CONNECTED or
                 self.app_state == APP_EOF)):
            self.app_state = APP_LOST
            self.loop.call_soon(self.app_protocol.connection_lost, exc)
        self.state = TLS_UNWRAPPED
        self.transport = None
        self.app_transport = None
        self.app_protocol = None
        self.app_get_buffer = self.app_buffer_updated = None
        self.app_data_received = None
        self.wake_waiter(exc)
        self.cancel_timers()

    cdef int cancel_timers(self) except -1:
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        if self.shutdown_timer is not None:
            self.shutdown_timer.cancel()
            self.shutdown_timer = None
        return 0

    def get_buffer(self, n):
        """asyncio.BufferedProtocol: where the stream puts ciphertext (a
        stream of fastsock's calls feed() instead, and this buffer is never
        made)."""
        if self.recv_view is None:
            self.recv_view = memoryview(bytearray(TLS_READ_MAX))
        return self.recv_view

    def buffer_updated(self, nbytes):
        """asyncio.BufferedProtocol: `nbytes` of ciphertext arrived."""
        self.incoming.write(self.get_buffer(-1)[:nbytes])
        self.advance()

    def data_received(self, data):
        """Ciphertext from a transport that does not use get_buffer()."""
        self.incoming.write(data)
        self.advance()

    cdef int feed(self, const char *buf, Py_ssize_t n) except -1:
        # StreamTransport's path: its read buffer straight into the BIO
        # (MemoryBIO.write copies before it returns).
        self.incoming.write(PyMemoryView_FromMemory(<char *>buf, n,
                                                    PyBUF_READ))
        return self.advance()

    cdef int advance(self) except -1:
        # New ciphertext: move the state machine on.
        if self.state == TLS_WRAPPED:
            self.do_read()
        elif self.state == TLS_HANDSHAKE:
            self.do_handshake()
        elif self.state == TLS_FLUSHING:
            self.do_flush()
        elif self.state == TLS_SHUTDOWN:
            self.do_shutdown()
        return 0

    def eof_received(self):
        """The peer closed its side of the stream (no close_notify may have
        come): during the handshake that is ConnectionResetError; else
        what was read is delivered, the application's eof_received() runs
        and the stream closes. True keeps the stream open while the
        application has reading paused (the rest is delivered on resume)."""
        self.eof = True
        try:
            if self.loop.debug:
                logger.debug("%r received EOF", self)
            if self.state == TLS_HANDSHAKE:
                self.handshake_done(ConnectionResetError())
            elif self.state == TLS_WRAPPED:
                self.state = TLS_FLUSHING
                if self.app_reading_paused:
                    return True
                self.do_flush()
            elif self.state == TLS_FLUSHING:
                self.do_write()
                self.state = TLS_SHUTDOWN
                self.do_shutdown()
            elif self.state == TLS_SHUTDOWN:
                self.do_shutdown()
        except Exception:
            self.transport.close()
            raise

    def pause_writing(self):
        """The stream's write buffer is above its high-water mark: hold the
        ciphertext in the outgoing BIO (counted by the application's
        get_write_buffer_size())."""
        self.stream_writing_paused = True

    def resume_writing(self):
        """The stream's write buffer drained: pass the held ciphertext on.
        (A resume_writing() without a pause is harmless: start_tls()
        hands this protocol a stream whose previous protocol may have been
        paused.)"""
        self.stream_writing_paused = False
        self.process_outgoing()

    # -- handshake ---------------------------------------------------------------

    def _check_handshake_timeout(self):
        self.handshake_timer = None
        if self.state == TLS_HANDSHAKE:
            self.fatal_error(ConnectionAbortedError(
                f"SSL handshake is taking longer than "
                f"{self.handshake_timeout} seconds: "
                f"aborting the connection"), 'Fatal error on transport')

    cdef int do_handshake(self) except -1:
        try:
            self.engine.do_handshake()
        except TLS_AGAIN:
            self.process_outgoing()
        except SSLError as exc:
            self.handshake_done(exc)
        else:
            self.handshake_done(None)
        return 0

    cdef int handshake_done(self, object exc) except -1:
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        try:
            if exc is not None:
                raise exc
            self.state = TLS_WRAPPED
            peercert = self.sslobj.getpeercert()
        except Exception as e:
            self.state = TLS_UNWRAPPED
            self.fatal_error(e, 'SSL handshake failed on verifying the '
                                'certificate'
                             if isinstance(e, CertificateError)
                             else 'SSL handshake failed')
            self.wake_waiter(e)
            return 0
        if self.loop.debug:
            logger.debug("%r: SSL handshake took %.1f ms", self,
                         (self.loop.time() - self.handshake_start) * 1e3)
        self.extra.update(peercert=peercert, cipher=self.sslobj.cipher(),
                          compression=self.sslobj.compression(),
                          ssl_object=self.sslobj)
        if self.app_state == APP_INIT:
            self.app_state = APP_CONNECTED
            self.app_protocol.connection_made(self.app_transport)
        self.wake_waiter(None)
        # records that came with the last handshake message, and writes
        # made before it finished
        self.do_read()
        return 0

    # -- shutdown ---------------------------------------------------------------

    cdef int start_shutdown(self) except -1:
        # The application closed (or the peer sent close_notify): flush
        # what the application wrote, send close_notify, wait for the
        # peer's, then close the stream; at most shutdown_timeout seconds.
        if (self.state == TLS_FLUSHING or self.state == TLS_SHUTDOWN or
                self.state == TLS_UNWRAPPED):
            return 0
        if self.app_transport is not None:
            self.app_transport.closed = True
        if self.state == TLS_HANDSHAKE:
            return self.abort(None)
        self.state = TLS_FLUSHING
        self.shutdown_timer = self.loop.call_later(
            self.shutdown_timeout, self._check_shutdown_timeout)
        return self.do_flush()

    def _check_shutdown_timeout(self):
        self.shutdown_timer = None
        if self.state == TLS_FLUSHING or self.state == TLS_SHUTDOWN:
            self.transport._force_close(TimeoutError('SSL shutdown timed out'))

    cdef int do_flush(self) except -1:
        self.do_read()
        self.state = TLS_SHUTDOWN
        return self.do_shutdown()

    cdef int do_shutdown(self) except -1:
        try:
            if not self.eof:
                if self.engine is self.sslobj:
                    self.sslobj.unwrap()
                else:
                    self.engine.shutdown()      # what SSLObject.unwrap() calls
        except TLS_AGAIN:
            self.process_outgoing()
        except SSLError as exc:
            self.shutdown_done(exc)
        else:
            self.process_outgoing()
            self.call_eof_received()
            self.shutdown_done(None)
        return 0

    cdef int shutdown_done(self, object exc) except -1:
        if self.shutdown_timer is not None:
            self.shutdown_timer.cancel()
            self.shutdown_timer = None
        if exc is not None:
            return self.fatal_error(exc, 'Fatal error on transport')
        self.loop.call_soon(self.transport.close)
        return 0

    cdef int abort(self, object exc) except -1:
        self.state = TLS_UNWRAPPED
        if self.transport is not None:
            self.transport._force_close(exc)
        return 0

    # -- application data out ----------------------------------------------------

    cdef int write_appdata(self, object data) except -1:
        # One buffer (bytes-like, not empty) from TLSTransport.write().
        cdef Py_ssize_t count, size
        if (self.state == TLS_WRAPPED and not self.backlog):
            if type(data) is memoryview and (data.itemsize != 1 or
                                             data.ndim != 1):
                data = bytes(data)      # len() must count bytes
            # The common case: encrypt now, hand the records to the stream.
            size = len(data)
            try:
                count = self.engine.write(data)
            except TLS_AGAIN:
                count = 0
            except Exception as exc:
                return self.fatal_error(exc, 'Fatal error on SSL protocol')
            try:
                if count < size:
                    # The rest waits as bytes (a bytearray may change once
                    # write() returns); do_write() goes on until the engine
                    # takes no more.
                    self.backlog.append(bytes(data[count:]))
                    self.backlog_size += size - count
                    self.do_write()
                else:
                    self.process_outgoing()
            except Exception as exc:
                self.fatal_error(exc, 'Fatal error on SSL protocol')
            return 0
        return self.write_appdata_list((data,))

    cdef int write_appdata_list(self, object list_of_data) except -1:
        if (self.state == TLS_FLUSHING or self.state == TLS_SHUTDOWN or
                self.state == TLS_UNWRAPPED):
            if self.conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning('SSL connection is closed')
            self.conn_lost += 1
            return 0
        try:
            for data in list_of_data:
                if type(data) is not bytes:
                    data = bytes(data)      # as above; TypeError is fatal
                self.backlog.append(data)
                self.backlog_size += len(data)
            if self.state == TLS_WRAPPED:
                self.do_write()
        except Exception as exc:
            self.fatal_error(exc, 'Fatal error on SSL protocol')
        return 0

    cdef int do_write(self) except -1:
        # Encrypt the backlog (writes made during the handshake, or that
        # SSL_write could not take during a renegotiation).
        cdef Py_ssize_t count, size
        try:
            while self.backlog:
                data = self.backlog[0]
                size = len(data)
                count = self.engine.write(data)
                if count < size:
                    self.backlog[0] = data[count:]
                    self.backlog_size -= count
                else:
                    self.backlog.popleft()
                    self.backlog_size -= size
        except TLS_AGAIN:
            pass
        return self.process_outgoing()

    cdef int process_outgoing(self) except -1:
        # Records the TLS engine made (handshake, application data,
        # close_notify) go to the stream unless it asked us to wait.
        if not self.stream_writing_paused and self.outgoing.pending:
            if type(self.transport) is StreamTransport:
                (<StreamTransport>self.transport).write_data(
                    self.outgoing.read())
            else:
                self.transport.write(self.outgoing.read())
        return self.control_app_writing()

    cdef Py_ssize_t write_buffer_size(self) except -1:
        return self.outgoing.pending + self.backlog_size

    cdef int control_app_writing(self) except -1:
        cdef Py_ssize_t size = self.write_buffer_size()
        if size >= self.out_high and not self.app_writing_paused:
            self.app_writing_paused = True
            try:
                self.app_protocol.pause_writing()
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:
                self.loop.call_exception_handler({
                    'message': 'protocol.pause_writing() failed',
                    'exception': exc,
                    'transport': self.app_transport,
                    'protocol': self,
                })
        elif size <= self.out_low and self.app_writing_paused:
            self.app_writing_paused = False
            try:
                self.app_protocol.resume_writing()
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:
                self.loop.call_exception_handler({
                    'message': 'protocol.resume_writing() failed',
                    'exception': exc,
                    'transport': self.app_transport,
                    'protocol': self,
                })
        return 0

    # -- application data in -----------------------------------------------------

    cdef int do_read(self) except -1:
        if self.state != TLS_WRAPPED and self.state != TLS_FLUSHING:
            return 0
        try:
            if not self.app_reading_paused:
                if self.app_buffered:
                    self.read_into_protocol()
                else:
                    self.read_copied()
                if self.backlog:
                    self.do_write()
                else:
                    self.process_outgoing()
            self.control_stream_reading()
        except Exception as exc:
            self.fatal_error(exc, 'Fatal error on SSL protocol')
        return 0

    cdef bint more_to_read(self) except -1:
        # Whether another SSL_read could return something (data, a
        # close_notify, a post-handshake message): asking costs an
        # SSLWantReadError (made and raised) when it cannot.
        return self.incoming.pending > 0 or self.engine.pending() > 0

    cdef int read_copied(self) except -1:
        # Decrypt what the BIO holds and hand it to data_received() as one
        # bytes object. The decrypt buffer is the loop's, shared by its TLS
        # connections: no application code runs between a decrypt and the
        # copy out of it, and a loop runs in one thread.
        cdef Py_ssize_t count, offset = 0
        cdef bint eof = False
        cdef list parts = None
        if self.loop.tls_buffer is None:
            self.loop.tls_buffer = bytearray(TLS_PLAIN_BUF)
            self.loop.tls_view = memoryview(self.loop.tls_buffer)
        cdef bytearray plain = self.loop.tls_buffer
        view = self.loop.tls_view
        try:
            while True:
                count = self.engine.read(TLS_PLAIN_BUF - offset,
                                         view[offset:] if offset else view)
                if count == 0:
                    eof = True          # close_notify
                    break
                offset += count
                if offset == TLS_PLAIN_BUF:
                    if parts is None:
                        parts = []
                    parts.append(PyBytes_FromStringAndSize(
                        PyByteArray_AS_STRING(plain), offset))
                    offset = 0
                if not self.more_to_read():
                    break
        except TLS_AGAIN:
            pass
        if offset or parts is not None:
            data = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(plain),
                                             offset)
            if parts is not None:
                if offset:
                    parts.append(data)
                data = b''.join(parts)
            self.app_data_received(data)
        if eof:
            self.call_eof_received()
            self.start_shutdown()
        return 0

    cdef int read_into_protocol(self) except -1:
        # A BufferedProtocol: decrypt into its get_buffer(); a full buffer
        # asks for another pass on the next loop iteration.
        cdef Py_ssize_t count = 1, offset = 0, wants
        buf = self.app_get_buffer(self.incoming.pending)
        view = memoryview(buf)
        wants = len(view)
        try:
            count = self.engine.read(wants, view)
            if count > 0:
                offset = count
                while offset < wants:
                    count = self.engine.read(wants - offset, view[offset:])
                    if count > 0:
                        offset += count
                    else:
                        break
                else:
                    self.loop.call_soon(self._do_read)
        except TLS_AGAIN:
            pass
        if offset > 0:
            self.app_buffer_updated(offset)
        if not count:
            self.call_eof_received()
            self.start_shutdown()
        return 0

    def _do_read(self):
        self.do_read()

    cdef int call_eof_received(self) except -1:
        try:
            if self.app_state == APP_CONNECTED:
                self.app_state = APP_EOF
                keep_open = self.app_protocol.eof_received()
                if keep_open:
                    logger.warning('returning true from eof_received() '
                                   'has no effect when using ssl')
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            self.fatal_error(exc, 'Error calling eof_received()')
        return 0

    # -- read flow control -------------------------------------------------------

    cdef int control_stream_reading(self) except -1:
        # Ciphertext waiting in the incoming BIO (the application paused)
        # past the read high-water mark pauses the stream.
        cdef Py_ssize_t size = self.incoming.pending
        if size >= self.in_high and not self.stream_reading_paused:
            self.stream_reading_paused = True
            self.transport.pause_reading()
        elif size <= self.in_low and self.stream_reading_paused:
            self.stream_reading_paused = False
            self.transport.resume_reading()
        return 0

    cdef int resume_app_reading(self) except -1:
        if self.app_reading_paused:
            self.app_reading_paused = False
            self.loop.call_soon(self._resume)
        return 0

    def _resume(self):
        if self.state == TLS_WRAPPED:
            self.do_read()
        elif self.state == TLS_FLUSHING:
            self.do_flush()
        elif self.state == TLS_SHUTDOWN:
            self.do_shutdown()

    # -- errors ----------------------------------------------------------------

    cdef int fatal_error(self, object exc, str message) except -1:
        if self.transport is not None:
            self.transport._force_close(exc)
        if isinstance(exc, OSError):
            if self.loop.debug:
                logger.debug("%r: %s", self, message, exc_info=True)
        elif not isinstance(exc, CancelledError):
            self.loop.call_exception_handler({
                'message': message,
                'exception': exc,
                'transport': self.transport,
                'protocol': self,
            })
        return 0


cdef class TLSTransport:
    """The application's transport of a TLS connection (asyncio's
    _SSLProtocolTransport, an asyncio.Transport as isinstance() sees it).
    write() encrypts at once when the handshake is done and hands the
    records to the stream; get_write_buffer_size() counts what is not yet
    encrypted plus the records the stream has not taken (bytes). Half-close
    is not available over TLS (write_eof(): NotImplementedError, as
    asyncio). get_extra_info() adds 'sslcontext', 'ssl_object', 'peercert',
    'cipher' and 'compression' to the stream's."""

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.FALLBACK

    @property
    def __class__(self):
        return AsyncioSSLTransport

    def __init__(self):
        raise TypeError('TLSTransport is made by the loop')

    def __repr__(self):
        state = ('closed' if self.closed else
                 TLS_STATE_NAMES[self.tls.state].lower())
        return f'<TLSTransport {state}>'

    # A second close() lets go of the TLS protocol, as asyncio's does: an
    # application protocol that keeps its transport (most do) must not
    # keep the SSL context and engine alive with it (CPython's
    # test_create_connection_memory_leak). The transport then answers as
    # a closed one, where asyncio's raises AttributeError.

    @property
    def _loop(self):
        return self.loop

    @property
    def _ssl_protocol(self):
        return self.tls

    @property
    def _closed(self):
        return self.closed

    def get_extra_info(self, name, default=None):
        if self.tls is None:
            return default
        return self.tls.extra_info(name, default)

    def set_protocol(self, protocol):
        if self.tls is not None:
            self.tls.set_app_protocol(protocol)

    def get_protocol(self):
        return self.tls.app_protocol if self.tls is not None else None

    def is_closing(self):
        """True once close() or abort() was called, the connection is
        lost, or the stream under it is closing (a write that found a
        reset): StreamWriter.drain() then yields, and connection_lost()
        runs, where a writer looping on write() and drain() would spin."""
        return self.closed or (self.tls is not None and
                               self.tls.stream_closing())

    def close(self):
        """Flush what was written, send close_notify, wait for the peer's
        (at most ssl_shutdown_timeout), then close the stream; the
        protocol's connection_lost(None) follows. Reading stops."""
        if not self.closed:
            self.tls.check_thread()
            self.closed = True
            self.tls.start_shutdown()
        else:
            self.tls = None

    def __del__(self):
        # Only a transport the application was given can be left unclosed
        # by it: not one whose handshake never finished (asyncio is silent
        # there too).
        if (not self.closed and self.tls is not None
                and 'ssl_object' in self.tls.extra):
            warnings.warn(f"unclosed transport {self!r}", ResourceWarning,
                          source=self)
            self.closed = True

    def is_reading(self):
        return self.tls is not None and not self.tls.app_reading_paused

    def pause_reading(self):
        """No data_received() until resume_reading(); ciphertext keeps
        arriving until the read high-water mark pauses the stream."""
        if self.tls is not None:
            self.tls.app_reading_paused = True

    def resume_reading(self):
        if self.tls is not None:
            self.tls.resume_app_reading()

    def set_write_buffer_limits(self, high=None, low=None):
        """As asyncio's: bytes (any real numbers); high defaults to 512 KiB,
        low to high // 4; ValueError unless high >= low >= 0.
        pause_writing() comes when get_write_buffer_size() reaches high,
        resume_writing() when it is back at low or below."""
        if self.tls is not None:
            self.tls.set_write_limits(high, low)
            self.tls.control_app_writing()
        else:
            add_flowcontrol_defaults(      # the same checks
                high, low, constants.FLOW_CONTROL_HIGH_WATER_SSL_WRITE)

    def get_write_buffer_limits(self):
        if self.tls is None:
            return add_flowcontrol_defaults(
                None, None, constants.FLOW_CONTROL_HIGH_WATER_SSL_WRITE)[::-1]
        return self.tls.out_limits

    def get_write_buffer_size(self):
        return self.tls.write_buffer_size() if self.tls is not None else 0

    def set_read_buffer_limits(self, high=None, low=None):
        """Marks for the ciphertext held while the application has reading
        paused (bytes; high defaults to 256 KiB, low to high / 4): above
        high the stream pauses reading."""
        if self.tls is not None:
            self.tls.set_read_limits(high, low)
            self.tls.control_stream_reading()
        else:
            add_flowcontrol_defaults(      # the same checks
                high, low, constants.FLOW_CONTROL_HIGH_WATER_SSL_READ)

    def get_read_buffer_limits(self):
        if self.tls is None:
            return add_flowcontrol_defaults(
                None, None, constants.FLOW_CONTROL_HIGH_WATER_SSL_READ)[::-1]
        return self.tls.in_limits

    def get_read_buffer_size(self):
        return self.tls.incoming.pending if self.tls is not None else 0

    @property
    def _protocol_paused(self):
        # asyncio's sendfile fallback reads it
        return self.tls is not None and self.tls.app_writing_paused

    def write(self, data):
        """Encrypt and send `data` (bytes, bytearray or memoryview; a
        mutable buffer may be changed once this returns: what waits is
        copied). Once the handshake is done the records go to the stream
        before this returns. TypeError for other types; RuntimeError from
        a thread other than the running loop's; dropped (with a warning
        after a few) once the connection is closing or lost."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data: expecting a bytes-like instance, "
                            f"got {type(data).__name__}")
        if data and self.tls is not None:
            self.tls.check_thread()
            self.tls.write_appdata(data)

    def writelines(self, list_of_data):
        """write() of each buffer in turn (any iterable)."""
        if self.tls is not None:
            self.tls.check_thread()
            self.tls.write_appdata_list(list_of_data)

    def write_eof(self):
        """TLS has no half-close here: NotImplementedError (as asyncio)."""
        raise NotImplementedError

    def can_write_eof(self):
        return False

    def abort(self):
        """Close now: what was not sent is dropped; connection_lost(None)
        follows."""
        self._force_close(None)

    def _force_close(self, exc):
        self.closed = True
        if self.tls is not None:
            self.tls.abort(exc)

    def _test__append_write_backlog(self, data):
        # CPython's test_ssl.py fills the backlog through this hook.
        self.tls.backlog.append(data)
        self.tls.backlog_size += len(data)

