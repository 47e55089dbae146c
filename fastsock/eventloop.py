"""fastsock's asyncio event loop: the Cython core plus the asyncio surface.

`Loop` combines the Cython loop core (ready queue, timers, driver, fd
watchers; fastsock/loop.pyx) with asyncio.BaseEventLoop, whose high-level
orchestration (address resolution, happy eyeballs, Server objects, TLS over
asyncio's SSLProtocol, executors, async generators, exception handling) is the
reference behaviour. Everything that touches a socket or the kernel goes
through fastsock's own transports and driver.

Pipes and child processes use asyncio's own Unix pipe and subprocess
transports on top of the loop's readiness watchers; the child's exit is seen
through a pidfd in the driver, never through SIGCHLD.
"""

import collections
import errno
import functools
import io
import os
import signal
import socket
import stat
import warnings
import weakref

from asyncio import base_events, constants, exceptions, sslproto
from asyncio import unix_events

from fastsock import driver as _driver
from fastsock import loop as _core
from fastsock import transports as _transports

_Unix = unix_events._UnixSelectorEventLoop


class Loop(_core.CoreLoop, base_events.BaseEventLoop):
    """An asyncio event loop driven by `driver` ("epoll" or "uring")."""

    def __init__(self, driver_factory, backend):
        base_events.BaseEventLoop.__init__(self)
        self._set_driver(driver_factory(self))
        self._backend = backend
        self._signal_handlers = {}
        self._listeners = {}
        # Filled by asyncio's create_unix_server (borrowed below) from Python
        # 3.13 on (gh-111246): listening socket -> inode of its path, so that
        # closing the server unlinks the file it made. Stays empty before.
        self._unix_server_sockets = {}
        # sock_* on io_uring: what cancelled calls received, per socket
        self._sock_orphans = weakref.WeakKeyDictionary()
        # Python's signal machinery writes signal numbers to this pair.
        self._ssock, self._csock = socket.socketpair()
        self._ssock.setblocking(False)
        self._csock.setblocking(False)
        self._add_reader(self._ssock.fileno(), self._read_from_self)

    @property
    def backend(self):
        """The driver in use: "epoll" or "uring"."""
        return self._backend

    def zerocopy_stats(self):
        """Loop-wide counters: zero-copy sends and their bytes, sends the
        kernel copied anyway, bytes sent by loop.sendfile()/sock_sendfile()
        (transport.zerocopy_stats() has the same per transport)."""
        d = self.driver
        return {'zerocopy_sends': d.zc_sends, 'zerocopy_bytes': d.zc_bytes,
                'zerocopy_copied': d.zc_copied,
                'sendfile_bytes': d.sendfile_bytes}

    def __repr__(self):
        return (f'<{type(self).__name__} backend={self._backend} '
                f'running={self.is_running()} closed={self.is_closed()} '
                f'debug={self.get_debug()}>')

    def close(self):
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        import sys
        if not sys.is_finalizing():
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)
        elif self._signal_handlers:
            warnings.warn(f"Closing the loop {self!r} on interpreter "
                          f"shutdown stage, skipping signal handlers removal",
                          ResourceWarning, source=self)
            self._signal_handlers.clear()
        super().close()
        for sock in list(self._listeners):
            self._stop_serving(sock)
        self._close_driver()
        # Connections that cancelled sock_accept calls took from the kernel
        # and nobody claimed: the loop owns them, and closes them.
        for queue in list(self._sock_orphans.values()):
            for item, _ in queue:
                if isinstance(item, socket.socket):
                    item.close()
        self._sock_orphans.clear()
        self._ssock.close()
        self._csock.close()

    # -- self pipe for signals -------------------------------------------------

    def _read_from_self(self):
        while True:
            try:
                data = self._ssock.recv(4096)
                if not data:
                    break
                self._process_self_data(data)
            except InterruptedError:
                continue
            except BlockingIOError:
                break

    _process_self_data = _Unix._process_self_data
    add_signal_handler = _Unix.add_signal_handler
    remove_signal_handler = _Unix.remove_signal_handler
    _handle_signal = _Unix._handle_signal
    _check_signal = _Unix._check_signal

    # -- readiness watchers ------------------------------------------------------

    def _ensure_fd_no_transport(self, fd):
        fileno = fd
        if not isinstance(fileno, int):
            try:
                fileno = int(fileno.fileno())
            except (AttributeError, TypeError, ValueError):
                raise ValueError(f"Invalid file object: {fd!r}") from None
        owner = self.driver.endpoints.get(fileno)
        if (isinstance(owner, _transports.BaseTransport)
                and not owner.is_closing()):
            raise RuntimeError(
                f'File descriptor {fd!r} is used by transport {owner!r}')

    def add_reader(self, fd, callback, *args):
        self._ensure_fd_no_transport(fd)
        self._add_reader(fd, callback, *args)

    def remove_reader(self, fd):
        self._ensure_fd_no_transport(fd)
        return self._remove_reader(fd)

    def add_writer(self, fd, callback, *args):
        self._ensure_fd_no_transport(fd)
        self._add_writer(fd, callback, *args)

    def remove_writer(self, fd):
        self._ensure_fd_no_transport(fd)
        return self._remove_writer(fd)

    # -- transports ----------------------------------------------------------------

    def _make_socket_transport(self, sock, protocol, waiter=None, *,
                               extra=None, server=None):
        return _transports.make_stream_transport(self, sock, protocol, waiter,
                                                 extra, server)

    def _make_ssl_transport(
            self, rawsock, protocol, sslcontext, waiter=None,
            *, server_side=False, server_hostname=None,
            extra=None, server=None,
            ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
            ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT):
        ssl_protocol = sslproto.SSLProtocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout)
        _transports.make_stream_transport(self, rawsock, ssl_protocol,
                                          extra=extra, server=server)
        return ssl_protocol._app_transport

    def _make_datagram_transport(self, sock, protocol, address=None,
                                 waiter=None, extra=None):
        return _transports.make_datagram_transport(self, sock, protocol,
                                                   address, waiter, extra)

    def _start_serving(self, protocol_factory, sock, sslcontext=None,
                       server=None, backlog=100,
                       ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
                       ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT):
        self._check_closed()
        if sock in self._listeners:
            return
        self._listeners[sock] = _transports.start_listener(
            self, sock, protocol_factory, sslcontext, server,
            ssl_handshake_timeout, ssl_shutdown_timeout)

    def _stop_serving(self, sock):
        path = None
        if sock in self._unix_server_sockets:
            path = sock.getsockname()
        listener = self._listeners.pop(sock, None)
        if listener is not None:
            listener.stop()      # closes sock once the driver forgot it
        else:
            sock.close()
        if path is not None:
            # create_unix_server(cleanup_socket=True), Python 3.13+: remove
            # the socket file, unless another server has replaced it since.
            inode = self._unix_server_sockets.pop(sock)
            try:
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                base_events.logger.error(
                    'Unable to clean up listening UNIX socket %r: %r',
                    path, err)

    create_unix_connection = _Unix.create_unix_connection
    create_unix_server = _Unix.create_unix_server
    _make_read_pipe_transport = _Unix._make_read_pipe_transport
    _make_write_pipe_transport = _Unix._make_write_pipe_transport

    # -- child processes -------------------------------------------------------------

    async def _make_subprocess_transport(self, protocol, args, shell,
                                         stdin, stdout, stderr, bufsize,
                                         extra=None, **kwargs):
        waiter = self.create_future()
        transp = unix_events._UnixSubprocessTransport(
            self, protocol, args, shell, stdin, stdout, stderr, bufsize,
            waiter=waiter, extra=extra, **kwargs)
        self._watch_child(transp)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transp.close()
            await transp._wait()
            raise
        return transp

    def _watch_child(self, transp):
        # A pidfd becomes readable when the child exits: no SIGCHLD handler,
        # no thread, and the child stays a zombie (its pid reserved) until
        # we reap it.
        pid = transp.get_pid()
        pidfd = os.pidfd_open(pid)
        self._add_reader(pidfd, self._child_exited, pid, pidfd, transp)

    def _child_exited(self, pid, pidfd, transp):
        self._remove_reader(pidfd)
        os.close(pidfd)
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            # Somebody else reaped it; asyncio's watchers report 255 too.
            returncode = 255
            base_events.logger.warning(
                "child process pid %d exit status already read: "
                "will report returncode 255", pid)
        else:
            returncode = os.waitstatus_to_exitcode(status)
        transp._process_exited(returncode)

    # -- sockets -------------------------------------------------------------------
    #
    # On epoll the sock_* methods work as asyncio's do: try the call, and
    # if the kernel would block, retry whenever the fd is ready (_sock_io).
    # On io_uring they are completion operations (RECV, RECVMSG, SEND,
    # SENDMSG, ACCEPT, CONNECT requests, _sock_complete): the kernel does
    # the call when it can and reports the result.
    #
    # Cancellation is where the models differ: a cancelled readiness call
    # has read nothing, but a completion that raced its cancellation may
    # have read bytes (or accepted a connection) that nobody awaits any
    # more. Those are kept, per socket, and handed to the next sock_recv*
    # or sock_accept on that socket, so nothing is lost as long as the
    # socket is read through the loop. For the same reason the kernel
    # always receives into a buffer of the loop's (copied out on success):
    # a cancelled sock_recv_into never writes into the caller's buffer.

    def _check_sock(self, sock):
        base_events._check_ssl_socket(sock)
        if self._debug and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")

    @property
    def _completes_sock_ops(self):
        return self._backend == "uring"

    async def _sock_io(self, sock, want_write, op, try_now=True):
        # Readiness: try at once (unless the caller just did); if the kernel
        # would block, retry whenever the fd is ready until done. `op`
        # takes no arguments and looks the socket method up on each try, as
        # asyncio does (a test may swap it while we wait).
        if try_now:
            try:
                return op()
            except (BlockingIOError, InterruptedError):
                pass
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        fut = self.create_future()

        def ready():
            if fut.done():
                return
            try:
                result = op()
            except (BlockingIOError, InterruptedError):
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

        def done(_):
            # A later sock_* call on the same fd replaced (cancelled) our
            # handle: its watch is not ours to remove.
            if not handle.cancelled():
                if want_write:
                    self._remove_writer(fd)
                else:
                    self._remove_reader(fd)

        if want_write:
            handle = self._add_writer(fd, ready)
        else:
            handle = self._add_reader(fd, ready)
        fut.add_done_callback(done)
        return await fut

    async def _sock_complete(self, sock, req, flags=0):
        # Completion: hand `req` to the kernel, wait for its result (bytes
        # moved, an fd, 0) or raise its error.
        self._ensure_fd_no_transport(sock.fileno())
        fut = self.create_future()

        def done(req, res):
            if fut.done() or self.is_closed():
                self._keep_orphan(sock, req, res)   # nobody awaits it now
            else:
                if res < 0:
                    fut.set_exception(OSError(-res, os.strerror(-res)))
                else:
                    fut.set_result(res)

        self.driver.submit_request(req, done, flags)
        try:
            return await fut
        except exceptions.CancelledError:
            if not self.is_closed():
                self.driver.cancel_request(req)
            raise

    def _keep_orphan(self, sock, req, res):
        # A completion whose caller was cancelled meanwhile: keep what it
        # took from the kernel for the next call on this socket.
        if res < 0:
            return
        if self.is_closed():
            if req.op == _driver.ACCEPT:
                os.close(res)       # completed while the loop closed
            return
        if req.op == _driver.ACCEPT:
            conn = socket.socket(sock.family, sock.type, sock.proto, fileno=res)
            conn.setblocking(False)
            item = (conn, req.address())
        elif req.op == _driver.RECV and res > 0:
            item = (bytes(memoryview(req.buf)[:res]), None)
        elif req.op == _driver.RECVMSG:
            item = (bytes(memoryview(req.buf)[:res]), req.address())
        else:
            return          # sends and connects: what is done is done
        self._sock_orphans.setdefault(sock, collections.deque()).append(item)

    def _take_orphan(self, sock, n=None):
        # What a cancelled call received (see _keep_orphan), oldest first; a
        # stream chunk longer than n is split, a datagram is truncated as
        # recv() truncates it.
        queue = self._sock_orphans.get(sock)
        if not queue:
            return None
        data, addr = queue.popleft()
        if n is not None and len(data) > n:
            if sock.type == socket.SOCK_STREAM:
                queue.appendleft((data[n:], addr))
            data = data[:n]
        if not queue:
            del self._sock_orphans[sock]
        return data, addr

    async def _sock_receive(self, sock, op, nbytes):
        # RECV/RECVMSG into a buffer of the loop's: (data, address).
        if nbytes < 0:
            raise ValueError("negative buffersize in recv")
        if nbytes == 0 and sock.type == socket.SOCK_STREAM:
            return b"", None        # recv(2) returns at once; a RECV waits
        orphan = self._take_orphan(sock, nbytes)
        if orphan is not None:
            return orphan
        buf = _driver.receive_buffer(nbytes)
        req = _driver.new_request(op, sock.fileno(), buf, True)
        res = await self._sock_complete(sock, req)
        data = bytes(buf) if res == nbytes else bytes(memoryview(buf)[:res])
        return data, (req.address() if op == _driver.RECVMSG else None)

    @staticmethod
    def _writable_size(buf):
        # Checked before anything is read: a buffer the bytes cannot go into
        # must fail the call, not lose the data (socket.recv_into's errors).
        with memoryview(buf) as view:
            if view.readonly:
                raise TypeError("recv_into() argument 'buffer' must be "
                                "read-write bytes-like object, not "
                                f"{type(buf).__name__}")
            with view.cast('B') as flat:
                return flat.nbytes

    @staticmethod
    def _copy_into(buf, data):
        with memoryview(buf) as view, view.cast('B') as dest:
            dest[:len(data)] = data
        return len(data)

    async def _sock_send_request(self, sock, op, data, address=None):
        # SEND/SENDMSG: bytes sent. Datagram sockets send with MSG_DONTWAIT
        # and wait for writability themselves when full: the kernel's own
        # retry would resend an AF_UNIX datagram empty (see uring.pyx).
        dgram = sock.type != socket.SOCK_STREAM
        while True:
            req = _driver.new_request(op, sock.fileno(), data, False,
                                      sock.family, address)
            if req is None:
                return None     # a family only the socket object can spell
            try:
                return await self._sock_complete(
                    sock, req, socket.MSG_DONTWAIT if dgram else 0)
            except BlockingIOError:
                await self._sock_io(sock, True, lambda: None, try_now=False)

    async def sock_recv(self, sock, n):
        self._check_sock(sock)
        if self._completes_sock_ops:
            return (await self._sock_receive(sock, _driver.RECV, n))[0]
        return await self._sock_io(sock, False, lambda: sock.recv(n))

    async def sock_recv_into(self, sock, buf):
        self._check_sock(sock)
        if self._completes_sock_ops:
            nbytes = self._writable_size(buf)
            data, _ = await self._sock_receive(sock, _driver.RECV, nbytes)
            return self._copy_into(buf, data)
        return await self._sock_io(sock, False, lambda: sock.recv_into(buf))

    async def sock_recvfrom(self, sock, bufsize):
        self._check_sock(sock)
        if self._completes_sock_ops:
            return await self._sock_receive(sock, _driver.RECVMSG, bufsize)
        return await self._sock_io(sock, False,
                                   lambda: sock.recvfrom(bufsize))

    async def sock_recvfrom_into(self, sock, buf, nbytes=0):
        self._check_sock(sock)
        if not nbytes:
            nbytes = len(buf)
        if self._completes_sock_ops:
            if nbytes > self._writable_size(buf):
                raise ValueError("nbytes is greater than the length of "
                                 "the buffer")
            data, addr = await self._sock_receive(sock, _driver.RECVMSG,
                                                  nbytes)
            return self._copy_into(buf, data), addr
        return await self._sock_io(sock, False,
                                   lambda: sock.recvfrom_into(buf, nbytes))

    async def sock_sendto(self, sock, data, address):
        self._check_sock(sock)
        if self._completes_sock_ops:
            sent = await self._sock_send_request(sock, _driver.SENDMSG, data,
                                                 address)
            if sent is not None:
                return sent
        return await self._sock_io(sock, True,
                                   lambda: sock.sendto(data, address))

    async def sock_sendall(self, sock, data):
        self._check_sock(sock)
        view = memoryview(data).cast('B')
        total = len(view)
        sent = 0
        if self._completes_sock_ops:
            while sent < total:
                sent += await self._sock_send_request(sock, _driver.SEND,
                                                      view[sent:])
            return None

        def send_some():
            nonlocal sent
            while sent < total:
                sent += sock.send(view[sent:])
            return None

        await self._sock_io(sock, True, send_some)

    async def sock_accept(self, sock):
        self._check_sock(sock)
        if self._completes_sock_ops:
            orphan = self._take_orphan(sock)
            if orphan is not None:
                return orphan
            req = _driver.new_request(_driver.ACCEPT, sock.fileno())
            fd = await self._sock_complete(sock, req)
            conn = socket.socket(sock.family, sock.type, sock.proto, fileno=fd)
            conn.setblocking(False)
            return conn, req.address()

        def accept():
            conn, address = sock.accept()
            conn.setblocking(False)
            return conn, address

        return await self._sock_io(sock, False, accept)

    async def sock_connect(self, sock, address):
        self._check_sock(sock)
        if sock.family == socket.AF_INET or (
                base_events._HAS_IPv6 and sock.family == socket.AF_INET6):
            resolved = await self._ensure_resolved(
                address, family=sock.family, type=sock.type,
                proto=sock.proto, loop=self)
            _, _, _, _, address = resolved[0]
        if self._completes_sock_ops:
            req = _driver.new_request(_driver.CONNECT, sock.fileno(), None,
                                      False, sock.family, address)
            if req is not None:
                try:
                    await self._sock_complete(sock, req)
                except OSError as exc:
                    raise OSError(exc.errno,
                                  f'Connect call failed {address}') from None
                return
        try:
            sock.connect(address)
            return
        except (BlockingIOError, InterruptedError):
            pass

        def connected():
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err != 0:
                raise OSError(err, f'Connect call failed {address}')

        # SO_ERROR means something only once the socket is writable.
        await self._sock_io(sock, True, connected, try_now=False)

    # -- sendfile --------------------------------------------------------------------

    # Both go through the driver's SEND_FILE path: sendfile(2) on epoll,
    # splice through a pipe with io_uring operations on uring (no blocking
    # call on the loop thread). What cannot go natively (not a regular file,
    # no fileno) raises SendfileNotAvailableError, and asyncio's callers
    # fall back to reading and writing when fallback=True.

    @staticmethod
    def _native_file(file, offset):
        try:
            fileno = file.fileno()
        except (AttributeError, io.UnsupportedOperation) as err:
            raise exceptions.SendfileNotAvailableError("not a regular file")
        try:
            st = os.fstat(fileno)
        except OSError:
            raise exceptions.SendfileNotAvailableError("not a regular file")
        if not stat.S_ISREG(st.st_mode):
            raise exceptions.SendfileNotAvailableError("not a regular file")
        return fileno, st.st_size

    async def _sock_sendfile_native(self, sock, file, offset, count):
        fileno, fsize = self._native_file(file, offset)
        blocksize = count if count else fsize
        if not blocksize:
            return 0
        self._ensure_fd_no_transport(sock.fileno())
        job = _transports.send_file(self, sock.fileno(), fileno, offset,
                                    blocksize)
        try:
            return await job.done
        except OSError as exc:
            if job.sent == 0 and exc.errno in (
                    errno.EINVAL, errno.ENOTSOCK, errno.EOPNOTSUPP):
                raise exceptions.SendfileNotAvailableError(
                    f"sendfile is not available for {sock!r}: {exc}")
            raise
        finally:
            if job.sent > 0:
                file.seek(offset + job.sent)

    async def _sendfile_native(self, transp, file, offset, count):
        if not isinstance(transp, _transports.StreamTransport):
            raise exceptions.SendfileNotAvailableError(
                f"native sendfile is not supported for {transp!r}")
        self._check_sendfile_params(transp._sock, file, offset, count)
        fileno, fsize = self._native_file(file, offset)
        blocksize = count if count else fsize
        if not blocksize:
            return 0
        await transp._make_empty_waiter()      # what write() queued first
        job = None
        try:
            job = transp._sendfile(fileno, offset, blocksize)
            return await job.done
        finally:
            transp._reset_empty_waiter()
            if job is not None and job.sent > 0:
                file.seek(offset + job.sent)

    async def _sendfile_fallback(self, transp, file, offset, count):
        if not isinstance(transp, _transports.StreamTransport):
            return await super()._sendfile_fallback(transp, file, offset,
                                                    count)
        if offset:
            file.seek(offset)
        blocksize = min(count, 256 * 1024) if count else 256 * 1024
        buf = bytearray(blocksize)
        total_sent = 0
        proto = _SendfileProtocol(transp)
        try:
            while True:
                if count:
                    blocksize = min(count - total_sent, blocksize)
                    if blocksize <= 0:
                        return total_sent
                view = memoryview(buf)[:blocksize]
                read = await self.run_in_executor(None, file.readinto, view)
                if not read:
                    return total_sent
                await proto.drain()
                transp.write(view[:read])
                total_sent += read
        finally:
            if total_sent > 0 and hasattr(file, 'seek'):
                file.seek(offset + total_sent)
            await proto.restore()


class _SendfileProtocol(base_events._SendfileFallbackProtocol):
    """asyncio's fallback protocol, minus its _FlowControlMixin type check
    (fastsock transports implement the same flow control in Cython)."""

    def __init__(self, transp):
        self._transport = transp
        self._proto = transp.get_protocol()
        self._should_resume_reading = transp.is_reading()
        self._should_resume_writing = transp._protocol_paused
        transp.pause_reading()
        transp.set_protocol(self)
        if self._should_resume_writing:
            self._write_ready_fut = self._transport._loop.create_future()
        else:
            self._write_ready_fut = None
