"""fastsock's asyncio event loop: the Cython core plus the asyncio surface.

`Loop` combines the Cython loop core (ready queue, timers, driver, fd
watchers; fastsock/loop.pyx) with asyncio.BaseEventLoop, whose high-level
orchestration (address resolution, happy eyeballs, Server objects, executors,
async generators, exception handling) is the reference behaviour; TLS is
fastsock's own protocol with asyncio's SSLProtocol semantics
(endpoints/tls.pxi). Everything that touches a socket or the kernel goes
through fastsock's own transports and driver.

Pipes and child processes use asyncio's own Unix pipe and subprocess
transports on top of the loop's readiness watchers; the child's exit is seen
through a pidfd in the driver, never through SIGCHLD.
"""

import errno
import io
import os
import socket
import ssl
import stat
import sys
import warnings

import asyncio
from asyncio import base_events, constants, exceptions
from asyncio import unix_events

from fastsock import loop as _core
from fastsock import transports as _transports
from fastsock.sock_methods import (CompletionSockMethods,
                                   ReadinessSockMethods)

_Unix = unix_events._UnixSelectorEventLoop


class Loop(_core.CoreLoop, base_events.BaseEventLoop):
    """An asyncio event loop on a fastsock driver; made by
    fastsock.new_event_loop(), as the subclass for the driver's I/O model
    (its sock_* methods, see sock_methods.py)."""

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
        self._init_sock_methods()
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
        """Loop-wide counters since the loop was made, a dict of ints:
        'zerocopy_sends' (zero-copy send requests: MSG_ZEROCOPY sendmsg
        calls on epoll, SENDMSG_ZC SQEs on io_uring), 'zerocopy_bytes'
        (bytes those carried), 'zerocopy_copied' (of those requests, how
        many the kernel reported it copied anyway, SO_EE_CODE_ZEROCOPY_COPIED
        / IORING_NOTIF_USAGE_ZC_COPIED), 'sendfile_bytes' (bytes sent by
        loop.sendfile() and loop.sock_sendfile()).
        transport.zerocopy_stats() gives the same per transport."""
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
        # What cancelled sock_* calls left and nobody claimed (connections
        # among them) is the loop's to close.
        self._close_sock_methods()
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
        """Call callback(*args) whenever `fd` (an int or an object with
        fileno()) is readable, level-triggered, as asyncio's add_reader();
        replaces an earlier reader of the fd. RuntimeError if a transport
        of this loop uses the fd, ValueError for a negative or invalid fd,
        OSError for an fd that cannot be watched (EBADF for a closed one,
        EPERM for a regular file)."""
        self._ensure_fd_no_transport(fd)
        self._add_reader(fd, callback, *args)

    def remove_reader(self, fd):
        """Stop watching `fd` for reading: True if a reader was removed.
        RuntimeError if a transport of this loop uses the fd."""
        self._ensure_fd_no_transport(fd)
        return self._remove_reader(fd)

    def add_writer(self, fd, callback, *args):
        """As add_reader(), for writability."""
        self._ensure_fd_no_transport(fd)
        self._add_writer(fd, callback, *args)

    def remove_writer(self, fd):
        """As remove_reader(), for writability."""
        self._ensure_fd_no_transport(fd)
        return self._remove_writer(fd)

    # -- transports ----------------------------------------------------------------

    # A socket that sock_* calls used may have leftovers (bytes, datagrams,
    # connections their cancelled calls took): the transport made from it
    # delivers them before it reads (sock_methods.py).

    def _make_socket_transport(self, sock, protocol, waiter=None, *,
                               extra=None, server=None):
        tr = _transports.make_stream_transport(self, sock, protocol, waiter,
                                               extra, server)
        tr._adopt_leftovers(self._leftovers_for_transport(sock))
        return tr

    def _make_ssl_transport(
            self, rawsock, protocol, sslcontext, waiter=None,
            *, server_side=False, server_hostname=None,
            extra=None, server=None,
            ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
            ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT):
        ssl_protocol = _transports.TLSProtocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout)
        tr = _transports.make_stream_transport(self, rawsock, ssl_protocol,
                                               extra=extra, server=server)
        tr._adopt_leftovers(self._leftovers_for_transport(rawsock))
        return ssl_protocol._app_transport

    async def start_tls(self, transport, protocol, sslcontext, *,
                        server_side=False, server_hostname=None,
                        ssl_handshake_timeout=None,
                        ssl_shutdown_timeout=None):
        """Upgrade `transport` to TLS (asyncio's start_tls(): same
        arguments, TypeError for a context that is not an ssl.SSLContext or
        a transport that cannot carry TLS); returns the new transport,
        which `protocol` uses from then on, once the handshake is done. On
        failure or cancellation the old transport is closed."""
        if not isinstance(sslcontext, ssl.SSLContext):
            raise TypeError(
                f'sslcontext is expected to be an instance of ssl.SSLContext, '
                f'got {sslcontext!r}')
        if not getattr(transport, '_start_tls_compatible', False):
            raise TypeError(
                f'transport {transport!r} is not supported by start_tls()')
        waiter = self.create_future()
        tls = _transports.TLSProtocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname,
            call_connection_made=False,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout)
        # Nothing reaches the TLS protocol before its connection_made().
        transport.pause_reading()
        transport.set_protocol(tls)
        made = self.call_soon(tls.connection_made, transport)
        resumed = self.call_soon(transport.resume_reading)
        try:
            await waiter
        except BaseException:
            transport.close()
            made.cancel()
            resumed.cancel()
            raise
        return tls._app_transport

    def _make_datagram_transport(self, sock, protocol, address=None,
                                 waiter=None, extra=None):
        tr = _transports.make_datagram_transport(self, sock, protocol,
                                                 address, waiter, extra)
        tr._adopt_leftovers(self._leftovers_for_transport(sock))
        return tr

    def _start_serving(self, protocol_factory, sock, sslcontext=None,
                       server=None, backlog=100,
                       ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
                       ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT):
        self._check_closed()
        if sock in self._listeners:
            return
        self._listeners[sock] = _transports.start_listener(
            self, sock, protocol_factory, sslcontext, server,
            ssl_handshake_timeout, ssl_shutdown_timeout,
            self._leftovers_for_transport(sock))

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
        sender = _transports.send_file(self, sock.fileno(), fileno, offset,
                                       blocksize)
        seg = sender.seg
        try:
            # shielded: a cancel must not cancel `done`, which says when the
            # kernel has stopped
            return await asyncio.shield(seg.done)
        except exceptions.CancelledError:
            # Stop the transfer, and give the socket back only once the
            # kernel no longer works on it: nothing of the file may follow
            # what the caller sends next, and the fd is free again.
            sender.cancel()
            await _outlast_cancellation(seg.done)
            raise
        except OSError as exc:
            if seg.sent == 0 and exc.errno in (
                    errno.EINVAL, errno.ENOTSOCK, errno.EOPNOTSUPP):
                raise exceptions.SendfileNotAvailableError(
                    f"sendfile is not available for {sock!r}: {exc}")
            raise
        finally:
            if seg.sent > 0:
                file.seek(offset + seg.sent)

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
        seg = None
        try:
            seg = transp._sendfile(fileno, offset, blocksize)
            return await asyncio.shield(seg.done)   # (see above)
        except exceptions.CancelledError:
            if seg is not None:
                # Stop at the cancel, as asyncio does; what follows on the
                # stream starts where the file stopped.
                transp._cancel_sendfile(seg)
                await _outlast_cancellation(seg.done)
            raise
        finally:
            transp._reset_empty_waiter()
            if seg is not None and seg.sent > 0:
                file.seek(offset + seg.sent)

    async def _sock_sendfile_fallback(self, sock, file, offset, count):
        # asyncio's, except that the file is read from `offset` even when it
        # is 0 (CPython 3.11-3.13 seek only for a true offset, so a moved
        # file position was sent from; gh-150107).
        if hasattr(file, 'seek'):
            file.seek(offset)
        return await super()._sock_sendfile_fallback(sock, file, offset,
                                                     count)

    async def _sendfile_fallback(self, transp, file, offset, count):
        if not isinstance(transp, _transports.StreamTransport):
            return await super()._sendfile_fallback(transp, file, offset,
                                                    count)
        if hasattr(file, 'seek'):
            file.seek(offset)       # also for 0 (gh-150107)
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


async def _outlast_cancellation(fut):
    # Wait for `fut` to complete even if the awaiting task is cancelled
    # again meanwhile (it already is being cancelled).
    while not fut.done():
        try:
            await asyncio.wait((fut,))
        except exceptions.CancelledError:
            pass


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


class ReadinessLoop(ReadinessSockMethods, Loop):
    """A Loop on a readiness driver (epoll)."""


class CompletionLoop(CompletionSockMethods, Loop):
    """A Loop on a completion driver (io_uring)."""


LOOP_CLASSES = {"epoll": ReadinessLoop, "uring": CompletionLoop}
