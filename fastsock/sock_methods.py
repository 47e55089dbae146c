"""The loop's sock_* methods, once per I/O model.

Readiness (epoll) works as asyncio's selector loop does: try the call, and if
the kernel would block, retry whenever the fd is ready. Completion (io_uring)
hands the kernel a request (RECV, RECVMSG, SEND, SENDMSG, ACCEPT, CONNECT,
see driver.pxd) and waits for its result. The loop class picks one model when
it is made (eventloop.py).

Cancellation is where care is needed. A call can produce a result for a
caller who has gone: on both models the result may already be set when the
awaiting task is cancelled in the same iteration, and on io_uring a request
that raced its cancellation may still complete in the kernel afterwards.
Whatever such a call received (bytes, a datagram, an accepted connection) is
kept per socket as a leftover, and whatever uses the socket next gets it
first: the next sock_recv*/sock_accept on it, or a transport made from it
(which waits for cancelled requests still in the kernel before it reads).
For the same reason the kernel always receives into a buffer of the loop's,
copied out on success: a cancelled sock_recv_into never writes into the
caller's buffer.
"""

import collections
import os
import socket
import weakref

from asyncio import base_events, exceptions

from fastsock import driver as _driver


class Leftovers:
    """What cancelled sock_* calls took from one socket, oldest first:
    (bytes, None) from a stream, (bytes, address) datagrams, (socket,
    address) accepted connections. `unsettled` counts cancelled requests
    still in the kernel, which may add more; `on_settled` (a callable, set
    by a transport waiting for them) runs once they are all in."""

    __slots__ = ("items", "unsettled", "on_settled", "waiters")

    def __init__(self):
        self.items = collections.deque()
        self.unsettled = 0
        self.on_settled = None
        self.waiters = []

    def settle_one(self, loop):
        self.unsettled -= 1
        if self.unsettled:
            return
        for fut in self.waiters:
            if not fut.done():
                fut.set_result(None)
        self.waiters.clear()
        if self.on_settled is not None:
            callback, self.on_settled = self.on_settled, None
            loop.call_soon(callback)

    def close(self):
        # The loop closes: connections nobody claimed are the loop's.
        for item, _ in self.items:
            if isinstance(item, socket.socket):
                item.close()
        self.items.clear()


class SockMethods:
    """What both models share: argument checks and the leftovers."""

    def _init_sock_methods(self):
        self._leftovers = weakref.WeakKeyDictionary()

    def _close_sock_methods(self):
        for lo in list(self._leftovers.values()):
            lo.close()
        self._leftovers.clear()

    def _check_sock(self, sock):
        base_events._check_ssl_socket(sock)
        if self._debug and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")

    def _leftovers_get(self, sock):
        # Not a socket (asyncio's calls fail on it with AttributeError when
        # they use it; so do these): it has no leftovers.
        try:
            return self._leftovers.get(sock)
        except TypeError:               # cannot be weakly referenced
            return None

    def _leftovers_of(self, sock):
        lo = self._leftovers.get(sock)
        if lo is None:
            lo = self._leftovers[sock] = Leftovers()
        return lo

    def _keep_leftover(self, sock, lo, item):
        if self.is_closed():
            if isinstance(item[0], socket.socket):
                item[0].close()
            return
        lo.items.append(item)

    async def _settled(self, sock):
        # Cancelled requests on this socket may still complete in the
        # kernel: a new call waits for them so it never overtakes what they
        # received.
        lo = self._leftovers_get(sock)
        while lo is not None and lo.unsettled:
            fut = self.create_future()
            lo.waiters.append(fut)
            await fut

    def _take_leftover(self, sock, n=None):
        """The oldest leftover (item, address), or None. A stream chunk
        longer than n is split; a datagram is truncated as recv() would."""
        lo = self._leftovers_get(sock)
        if lo is None or not lo.items:
            return None
        data, addr = lo.items.popleft()
        if n is not None and len(data) > n:
            if sock.type == socket.SOCK_STREAM:
                lo.items.appendleft((data[n:], addr))
            data = data[:n]
        if not lo.items and not lo.unsettled:
            del self._leftovers[sock]
        return data, addr

    def _leftovers_for_transport(self, sock):
        """Hand a new transport what cancelled calls left on `sock` (its
        Leftovers record, or None when there is nothing and nothing due)."""
        lo = self._leftovers.pop(sock, None)
        if lo is None or (not lo.items and not lo.unsettled):
            return None
        return lo

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

    async def _resolve_for(self, sock, address):
        if sock.family == socket.AF_INET or (
                base_events._HAS_IPv6 and sock.family == socket.AF_INET6):
            resolved = await self._ensure_resolved(
                address, family=sock.family, type=sock.type,
                proto=sock.proto, loop=self)
            _, _, _, _, address = resolved[0]
        return address


class ReadinessSockMethods(SockMethods):
    """sock_* on a readiness driver: try, then wait for readiness."""

    async def _sock_io(self, sock, want_write, op, try_now=True, as_leftover=None):
        # Try at once (unless the caller just did); if the kernel would
        # block, retry whenever the fd is ready until done. `op` takes no
        # arguments and looks the socket method up on each try, as asyncio
        # does (a test may swap it while we wait). `as_leftover(result)` turns a
        # result whose caller was cancelled meanwhile into a leftover.
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
        try:
            return await fut
        except exceptions.CancelledError:
            # The result may have been set in the iteration that cancelled
            # the task: it was taken from the kernel, keep it.
            if (as_leftover is not None and fut.done() and not fut.cancelled()
                    and fut.exception() is None):
                self._keep_leftover(sock, self._leftovers_of(sock),
                                    as_leftover(fut.result()))
            raise

    async def sock_recv(self, sock, n):
        self._check_sock(sock)
        left = self._take_leftover(sock, n)
        if left is not None:
            return left[0]
        return await self._sock_io(sock, False, lambda: sock.recv(n),
                                   as_leftover=lambda data: (data, None))

    async def sock_recv_into(self, sock, buf):
        self._check_sock(sock)
        left = self._take_leftover(sock, self._writable_size(buf))
        if left is not None:
            return self._copy_into(buf, left[0])
        return await self._sock_io(
            sock, False, lambda: sock.recv_into(buf),
            as_leftover=lambda n: (bytes(memoryview(buf).cast('B')[:n]), None))

    async def sock_recvfrom(self, sock, bufsize):
        self._check_sock(sock)
        left = self._take_leftover(sock, bufsize)
        if left is not None:
            return left
        return await self._sock_io(sock, False,
                                   lambda: sock.recvfrom(bufsize),
                                   as_leftover=lambda res: res)

    async def sock_recvfrom_into(self, sock, buf, nbytes=0):
        self._check_sock(sock)
        if not nbytes:
            nbytes = len(buf)
        left = self._take_leftover(sock, nbytes)
        if left is not None:
            return self._copy_into(buf, left[0]), left[1]
        return await self._sock_io(
            sock, False, lambda: sock.recvfrom_into(buf, nbytes),
            as_leftover=lambda res: (bytes(memoryview(buf).cast('B')[:res[0]]),
                              res[1]))

    async def sock_sendto(self, sock, data, address):
        self._check_sock(sock)
        return await self._sock_io(sock, True,
                                   lambda: sock.sendto(data, address))

    async def sock_sendall(self, sock, data):
        self._check_sock(sock)
        view = memoryview(data).cast('B')
        total = len(view)
        sent = 0

        def send_some():
            nonlocal sent
            while sent < total:
                sent += sock.send(view[sent:])
            return None

        await self._sock_io(sock, True, send_some)

    async def sock_accept(self, sock):
        self._check_sock(sock)
        left = self._take_leftover(sock)
        if left is not None:
            return left

        def accept():
            conn, address = sock.accept()
            conn.setblocking(False)
            return conn, address

        return await self._sock_io(sock, False, accept, as_leftover=lambda res: res)

    async def sock_connect(self, sock, address):
        self._check_sock(sock)
        address = await self._resolve_for(sock, address)
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


class CompletionSockMethods(ReadinessSockMethods):
    """sock_* on a completion driver: each call is a kernel request. (The
    readiness methods remain for what a request cannot express: families
    only the socket object spells, a full datagram socket.)"""

    async def _sock_complete(self, sock, req, flags=0):
        # Hand `req` to the kernel, wait for its result (bytes moved, an fd,
        # 0) or raise its error.
        self._ensure_fd_no_transport(sock.fileno())
        fut = self.create_future()
        lo = None               # set once the cancelled caller is counted
        completed = False

        def done(req, res):
            nonlocal completed
            completed = True
            if self.is_closed():
                # Nobody can be told any more: an accepted fd is closed.
                self._keep_result(sock, None, req, res)
            elif not fut.done():
                if res < 0:
                    fut.set_exception(OSError(-res, os.strerror(-res)))
                else:
                    fut.set_result(res)
            else:
                # The caller was cancelled while the kernel still had it.
                self._keep_result(sock, lo or self._leftovers_of(sock),
                                  req, res)
                if lo is not None:
                    lo.settle_one(self)

        self.driver.submit_request(req, done, flags)
        try:
            return await fut
        except exceptions.CancelledError:
            if fut.cancelled():
                if not completed:
                    # Still in the kernel, where it may complete before the
                    # cancel does: done() keeps what it brings, and the
                    # socket's next user waits for it.
                    lo = self._leftovers_of(sock)
                    lo.unsettled += 1
                    if not self.is_closed():
                        self.driver.cancel_request(req)
            elif fut.exception() is None:
                # Completed in the iteration that cancelled the task.
                self._keep_result(sock, self._leftovers_of(sock), req,
                                  fut.result())
            raise

    def _keep_result(self, sock, lo, req, res):
        if res < 0:
            return
        if req.op == _driver.ACCEPT:
            if lo is None:
                os.close(res)       # completed while the loop closed
                return
            conn = socket.socket(sock.family, sock.type, sock.proto,
                                 fileno=res)
            conn.setblocking(False)
            item = (conn, req.address())
        elif req.op == _driver.RECV and res > 0:
            item = (bytes(memoryview(req.buf)[:res]), None)
        elif req.op == _driver.RECVMSG:
            item = (bytes(memoryview(req.buf)[:res]), req.address())
        else:
            return          # sends and connects: what is done is done
        if lo is not None:
            self._keep_leftover(sock, lo, item)

    async def _sock_receive(self, sock, op, nbytes):
        # RECV/RECVMSG into a buffer of the loop's: (data, address).
        if nbytes < 0:
            raise ValueError("negative buffersize in recv")
        if nbytes == 0 and sock.type == socket.SOCK_STREAM:
            return b"", None        # recv(2) returns at once; a RECV waits
        await self._settled(sock)
        left = self._take_leftover(sock, nbytes)
        if left is not None:
            return left
        buf = _driver.receive_buffer(nbytes)
        req = _driver.new_request(op, sock.fileno(), buf, True)
        res = await self._sock_complete(sock, req)
        data = bytes(buf) if res == nbytes else bytes(memoryview(buf)[:res])
        return data, (req.address() if op == _driver.RECVMSG else None)

    async def _sock_send_request(self, sock, op, data, address=None):
        # SEND/SENDMSG: bytes sent, or None for a family only the socket
        # object can spell. Datagram sockets send with MSG_DONTWAIT and wait
        # for writability themselves when full: the kernel's own retry
        # would resend an AF_UNIX datagram empty (see uring.pyx).
        dgram = sock.type != socket.SOCK_STREAM
        while True:
            req = _driver.new_request(op, sock.fileno(), data, False,
                                      sock.family, address)
            if req is None:
                return None
            try:
                return await self._sock_complete(
                    sock, req, socket.MSG_DONTWAIT if dgram else 0)
            except BlockingIOError:
                await self._sock_io(sock, True, lambda: None, try_now=False)

    async def sock_recv(self, sock, n):
        self._check_sock(sock)
        return (await self._sock_receive(sock, _driver.RECV, n))[0]

    async def sock_recv_into(self, sock, buf):
        self._check_sock(sock)
        nbytes = self._writable_size(buf)
        data, _ = await self._sock_receive(sock, _driver.RECV, nbytes)
        return self._copy_into(buf, data)

    async def sock_recvfrom(self, sock, bufsize):
        self._check_sock(sock)
        return await self._sock_receive(sock, _driver.RECVMSG, bufsize)

    async def sock_recvfrom_into(self, sock, buf, nbytes=0):
        self._check_sock(sock)
        if not nbytes:
            nbytes = len(buf)
        if nbytes > self._writable_size(buf):
            raise ValueError("nbytes is greater than the length of the "
                             "buffer")
        data, addr = await self._sock_receive(sock, _driver.RECVMSG, nbytes)
        return self._copy_into(buf, data), addr

    async def sock_sendto(self, sock, data, address):
        self._check_sock(sock)
        if address is None:
            # sendto() needs an address: the socket module raises its own
            # TypeError (before sending anything).
            sock.sendto(data, address)
        sent = await self._sock_send_request(sock, _driver.SENDMSG, data,
                                             address)
        if sent is not None:
            return sent
        return await super().sock_sendto(sock, data, address)

    async def sock_sendall(self, sock, data):
        self._check_sock(sock)
        view = memoryview(data).cast('B')
        total = len(view)
        sent = 0
        while sent < total:
            sent += await self._sock_send_request(sock, _driver.SEND,
                                                  view[sent:])

    async def sock_accept(self, sock):
        self._check_sock(sock)
        await self._settled(sock)
        left = self._take_leftover(sock)
        if left is not None:
            return left
        req = _driver.new_request(_driver.ACCEPT, sock.fileno())
        fd = await self._sock_complete(sock, req)
        conn = socket.socket(sock.family, sock.type, sock.proto, fileno=fd)
        conn.setblocking(False)
        return conn, req.address()

    async def sock_connect(self, sock, address):
        self._check_sock(sock)
        address = await self._resolve_for(sock, address)
        req = _driver.new_request(_driver.CONNECT, sock.fileno(), None,
                                  False, sock.family, address)
        if req is None:
            return await super().sock_connect(sock, address)
        try:
            await self._sock_complete(sock, req)
        except OSError as exc:
            raise OSError(exc.errno,
                          f'Connect call failed {address}') from None
