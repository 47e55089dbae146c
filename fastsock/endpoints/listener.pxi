# Included into transports.pyx (one module: the kinds call each other's
# cdef methods directly). Listening sockets: accepted connections become stream
# transports.

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
                waiter = None
                if self.loop.debug:
                    # asyncio (debug mode) reports a failed handshake as it
                    # reports a failed transport creation, below
                    waiter = self.loop.create_future()
                transport = self.loop._make_ssl_transport(
                    conn, protocol, self.sslcontext, waiter,
                    server_side=True, server=self.server,
                    ssl_handshake_timeout=self.ssl_handshake_timeout,
                    ssl_shutdown_timeout=self.ssl_shutdown_timeout)
                if waiter is not None:
                    waiter.add_done_callback(functools.partial(
                        report_failed_handshake, self.loop, protocol,
                        transport))
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


def report_failed_handshake(loop, protocol, transport, waiter):
    if waiter.cancelled() or waiter.exception() is None:
        return
    loop.call_exception_handler({
        'message': 'Error on transport creation for incoming connection',
        'exception': waiter.exception(),
        'protocol': protocol,
        'transport': transport,
    })
