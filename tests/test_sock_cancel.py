"""sock_* methods under cancellation: a cancelled call takes nothing with it.

With readiness (asyncio, epoll) a cancelled sock_recv has read nothing. On
io_uring the operation may complete in the kernel while its task is being
cancelled; what it received (or accepted) must reach the next call on that
socket, and the caller's buffer must not change after a cancel. Every test
here sets up that race: the data is already there when the operation
starts, and the task is cancelled before the loop collects the result.
"""

import asyncio
import gc
import socket
import warnings

import pytest

from helpers.loops import run_coro, stock_asyncio_differs
from helpers.protocols import EchoProtocol, RecordingProtocol


def _pair(type=socket.SOCK_STREAM):
    a, b = socket.socketpair(socket.AF_UNIX, type)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def _listener(backlog=8):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(backlog)
    srv.setblocking(False)
    return srv


async def _accept_then_cancel(loop, srv, clients):
    """A sock_accept cancelled just after a client connected (appended to
    `clients`): (the accepted (conn, addr), or None if the cancel won)."""
    res, _ = await _completed_then_cancelled(
        loop, loop.sock_accept(srv),
        lambda: clients.append(socket.create_connection(srv.getsockname())))
    return res


async def _start_then_cancel(loop, coro, after_cancel=None):
    """Start `coro` (its first step runs), cancel it before the loop polls
    again, then call after_cancel() if given (what it waits for arrives
    before the kernel has seen the cancel): (result or None, cancelled?)."""
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(0)
    task.cancel()
    if after_cancel is not None:
        after_cancel()
    try:
        return await task, False
    except asyncio.CancelledError:
        return None, True


def _raced(loop, cancelled):
    # On io_uring the operation was under way in the kernel when it was
    # cancelled (the race these tests are about did happen); readiness
    # loops completed it in its first step.
    if getattr(loop, "backend", None) == "uring":
        assert cancelled


@pytest.mark.parametrize("first,then", [(5, 100), (100, 3)],
                         ids=["short-first-read", "orphan-split-in-smaller-reads"])
def test_cancelled_sock_recv_loses_nothing(loop, run, first, then):
    a, b = _pair()

    async def main():
        b.send(b"hello world")
        got, cancelled = await _start_then_cancel(loop,
                                                  loop.sock_recv(a, first))
        _raced(loop, cancelled)
        got = got or b""
        while len(got) < 11:
            got += await loop.sock_recv(a, then)
        assert got == b"hello world"

    with a, b:
        run(main())


def test_cancelled_sock_recv_into_leaves_buffer_alone(loop, run):
    a, b = _pair()

    async def main():
        buf = bytearray(b"." * 16)
        b.send(b"payload")
        n, cancelled = await _start_then_cancel(
            loop, loop.sock_recv_into(a, buf))
        _raced(loop, cancelled)
        await asyncio.sleep(0.01)
        if cancelled:
            assert buf == bytearray(b"." * 16)
            n = await loop.sock_recv_into(a, buf)
        assert buf[:n] == b"payload"

    with a, b:
        run(main())


def test_cancelled_sock_recvfrom_keeps_datagram(loop, run):
    a, b = _pair(socket.SOCK_DGRAM)

    async def main():
        b.send(b"one")
        b.send(b"two")
        got, cancelled = await _start_then_cancel(
            loop, loop.sock_recvfrom(a, 100))
        _raced(loop, cancelled)
        datagrams = [got[0]] if got else []
        while len(datagrams) < 2:
            data, _ = await loop.sock_recvfrom(a, 100)
            datagrams.append(data)
        assert datagrams == [b"one", b"two"]

    with a, b:
        run(main())


def test_cancelled_sock_accept_keeps_connection(loop, run):
    srv = _listener()
    cli = socket.create_connection(srv.getsockname())

    async def main():
        res, cancelled = await _start_then_cancel(loop, loop.sock_accept(srv))
        _raced(loop, cancelled)
        if res is None:
            res = await loop.sock_accept(srv)
        conn, addr = res
        with conn:
            assert addr == cli.getsockname()
            assert conn.gettimeout() == 0
            cli.sendall(b"ping")
            assert await loop.sock_recv(conn, 10) == b"ping"

    with srv, cli:
        run(main())


async def _completed_then_cancelled(loop, coro, deliver):
    """Start `coro`; once it waits, `deliver()` what it waits for and cancel
    its task after the loop's next poll (a timer due in the same iteration):
    the result is there when the cancellation comes."""
    task = asyncio.ensure_future(coro)
    for _ in range(3):
        await asyncio.sleep(0)
    deliver()
    loop.call_later(0, task.cancel)
    try:
        return await task, False
    except asyncio.CancelledError:
        return None, True


_ASYNCIO_DROPS = (
    "asyncio drops what its reader callback received when the awaiting task "
    "is cancelled in the same iteration; fastsock keeps it for the socket's "
    "next user")


def test_completed_then_cancelled_sock_recv_loses_nothing(loop, run,
                                                          request):
    stock_asyncio_differs(request, reason=_ASYNCIO_DROPS)
    a, b = _pair()

    async def main():
        got, _ = await _completed_then_cancelled(
            loop, loop.sock_recv(a, 100), lambda: b.send(b"hello"))
        got = got or b""
        b.send(b" world")
        while len(got) < 11:
            got += await asyncio.wait_for(loop.sock_recv(a, 100), 2)
        assert got == b"hello world"

    with a, b:
        run(main())


def test_completed_then_cancelled_sock_accept_keeps_connection(loop, run,
                                                               request):
    stock_asyncio_differs(request, reason=_ASYNCIO_DROPS)
    srv = _listener()
    clients = []

    async def main():
        res = await _accept_then_cancel(loop, srv, clients)
        if res is None:
            res = await asyncio.wait_for(loop.sock_accept(srv), 2)
        conn, addr = res
        with conn:
            assert addr == clients[0].getsockname()

    with srv:
        try:
            run(main())
        finally:
            for c in clients:
                c.close()


def test_next_sock_recv_waits_for_a_cancelled_one(loop, run):
    """Cancelled while waiting; the bytes arrive before the kernel has seen
    the cancel, and the next sock_recv starts at once: it gets them (on
    io_uring the cancelled RECV may take them; the next call must not
    overtake it with a RECV of its own)."""
    async def main():
        for i in range(20):
            a, b = _pair()
            with a, b:
                _, cancelled = await _start_then_cancel(
                    loop, loop.sock_recv(a, 100),
                    lambda: b.send(b"round-%d" % i))
                assert cancelled
                got = await asyncio.wait_for(loop.sock_recv(a, 100), 2)
                assert got == b"round-%d" % i

    run(main(), timeout=30)


def test_wait_for_timeouts_racing_the_data_lose_nothing(loop, run):
    """The everyday pattern: sock_recv under a timeout while the peer's
    bytes arrive right at the deadline, round after round; every byte comes
    out of some later call, in order."""
    a, b = _pair()
    rounds = 40

    async def main():
        got = b""
        for i in range(rounds):
            msg = b"<%d>" % i
            loop.call_later(0.002, b.send, msg)
            try:
                got += await asyncio.wait_for(loop.sock_recv(a, 100), 0.002)
            except asyncio.TimeoutError:
                pass
        want = b"".join(b"<%d>" % i for i in range(rounds))
        while len(got) < len(want):
            got += await asyncio.wait_for(loop.sock_recv(a, 100), 2)
        assert got == want

    with a, b:
        run(main(), timeout=30)


@pytest.mark.parametrize("order", ["completed-first", "cancelled-first"])
def test_stream_transport_gets_what_sock_recv_left(loop, run, request, order):
    """A socket whose sock_recv was cancelled in a race, then handed to
    create_connection(sock=): the protocol gets every byte, in order,
    including those the cancelled call took."""
    if order == "completed-first":
        stock_asyncio_differs(request, reason=_ASYNCIO_DROPS)

    async def one_round(i):
        a, b = _pair()
        with b:
            if order == "completed-first":
                await _completed_then_cancelled(
                    loop, loop.sock_recv(a, 100),
                    lambda: b.send(b"hello-%d;" % i))
            else:
                # cancelled while the kernel may still complete it: the
                # bytes arrive before the cancel reaches the kernel
                _, cancelled = await _start_then_cancel(
                    loop, loop.sock_recv(a, 100),
                    lambda: b.send(b"hello-%d;" % i))
                assert cancelled
            tr, proto = await loop.create_connection(RecordingProtocol, sock=a)
            try:
                b.send(b"world")
                want = b"hello-%d;world" % i
                got = await asyncio.wait_for(proto.wait_data(len(want)), 2)
                assert got == want
            finally:
                tr.close()
                await proto.lost

    async def main():
        for i in range(10):
            await one_round(i)

    run(main(), timeout=30)


def test_server_gets_what_sock_accept_left(loop, run, request):
    """A listening socket whose sock_accept was cancelled after the kernel
    accepted a connection, then served with create_server(sock=): that
    connection is served too."""
    stock_asyncio_differs(request, reason=_ASYNCIO_DROPS)
    srv = _listener()
    clients = []

    async def main():
        res = await _accept_then_cancel(loop, srv, clients)
        assert res is None
        server = await loop.create_server(EchoProtocol, sock=srv)
        try:
            c = clients[0]
            c.setblocking(False)
            await loop.sock_sendall(c, b"ping")
            assert await asyncio.wait_for(loop.sock_recv(c, 10), 5) == b"ping"
        finally:
            server.close()
            for c in clients:
                c.close()
            await server.wait_closed()

    run(main())


def test_datagram_transport_gets_what_sock_recvfrom_left(loop, run, request):
    stock_asyncio_differs(request, reason=_ASYNCIO_DROPS)
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    a.setblocking(False)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.bind(("127.0.0.1", 0))

    class Proto(asyncio.DatagramProtocol):
        def __init__(self):
            self.got = []
            self.two = loop.create_future()

        def datagram_received(self, data, addr):
            self.got.append((data, addr))
            if len(self.got) == 2:
                self.two.set_result(None)

    async def main():
        res, _ = await _completed_then_cancelled(
            loop, loop.sock_recvfrom(a, 100),
            lambda: b.sendto(b"first", a.getsockname()))
        assert res is None
        tr, proto = await loop.create_datagram_endpoint(Proto, sock=a)
        try:
            b.sendto(b"second", a.getsockname())
            await asyncio.wait_for(proto.two, 2)
            assert proto.got == [(b"first", b.getsockname()),
                                 (b"second", b.getsockname())]
        finally:
            tr.close()

    with b:
        run(main())


def test_sock_methods_on_uring_are_completion_operations(loop, run):
    if getattr(loop, "backend", None) != "uring":
        pytest.skip("io_uring only")
    a, b = _pair()
    srv = _listener(1)
    c = socket.socket()
    c.setblocking(False)

    async def main():
        before = loop.driver.stats()["sock_requests"]
        await loop.sock_sendall(a, b"x")
        assert await loop.sock_recv(b, 1) == b"x"
        await loop.sock_connect(c, srv.getsockname())
        conn, _ = await loop.sock_accept(srv)
        conn.close()
        # sendall, recv, connect, accept: four kernel operations
        assert loop.driver.stats()["sock_requests"] - before == 4

    with a, b, srv, c:
        run(main())


def test_loop_close_with_sock_recv_in_flight(loop):
    """Closing the loop cancels a pending sock_recv in the kernel: the bytes
    that come afterwards are still the socket's."""
    a, b = _pair()
    with a, b:
        task = loop.create_task(loop.sock_recv(a, 10))
        run_coro(loop, asyncio.sleep(0.01))
        assert not task.done()
        loop.close()
        b.send(b"after")
        a.settimeout(2)
        assert a.recv(10) == b"after"
        del task
        gc.collect()


def test_unclaimed_accepted_connection_closed_with_the_loop(loop, run):
    """A connection a cancelled sock_accept took from the kernel, never
    claimed by another sock_accept, is closed by the loop when it closes
    (not left to the garbage collector's "unclosed socket" warning)."""
    srv = _listener()
    cli = socket.create_connection(srv.getsockname())

    async def main():
        res, cancelled = await _start_then_cancel(loop, loop.sock_accept(srv))
        _raced(loop, cancelled)
        if res is not None:
            res[0].close()

    with srv, cli:
        run(main())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loop.close()
            gc.collect()
        assert not [w for w in caught if w.category is ResourceWarning]


def test_bad_receive_arguments_fail_before_reading(loop, run):
    """Arguments socket.recv*() refuses fail the call and read nothing."""
    a, b = _pair()

    async def main():
        b.send(b"kept")
        with pytest.raises(ValueError):
            await loop.sock_recv(a, -1)
        with pytest.raises(TypeError):
            await loop.sock_recv_into(a, b"read-only")
        with pytest.raises(ValueError):
            await loop.sock_recvfrom_into(a, bytearray(2), 10)
        assert await loop.sock_recv(a, 100) == b"kept"
        assert await _recv_zero(a) == b""

    async def _recv_zero(sock):
        return await loop.sock_recv(sock, 0)

    with a, b:
        run(main())


def test_cancelled_sock_sendall_buffer_outlives_the_kernel_send(loop, run):
    """A sock_sendall cancelled while its send waits in the kernel: the
    caller's buffer is dropped at once and its memory reused, yet whatever
    the peer gets after the filler is an exact prefix of the payload (on
    io_uring the Request keeps the buffer until its CQE)."""
    a, b = _pair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    payload = bytes(range(256)) * 4096          # 1 MiB

    async def main():
        filler = 0
        while True:
            try:
                filler += a.send(b" " * 4096)
            except BlockingIOError:
                break
        task = asyncio.ensure_future(loop.sock_sendall(a, bytearray(payload)))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        del task
        gc.collect()
        churn = [bytearray(b"\xff" * len(payload)) for _ in range(8)]
        got = bytearray()
        while True:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(b, 1 << 20), 0.2)
            except asyncio.TimeoutError:
                break
            got += chunk
        del churn
        assert got[:filler] == b" " * filler
        rest = bytes(got[filler:])
        assert rest == payload[:len(rest)]

    with a, b:
        run(main())


def test_request_misuse_is_refused():
    """The Request helpers behind sock_* refuse bad input with a clear
    exception instead of handing the kernel something it cannot use."""
    from fastsock import driver
    with pytest.raises(ValueError):
        driver.new_request(99, 0)
    with pytest.raises(ValueError):
        driver.receive_buffer(-1)
    with pytest.raises(BufferError):
        driver.new_request(driver.RECV, 0, b"read-only", True)
    with pytest.raises(TypeError):
        driver.Request()


# Run in a child process: a completion that touches freed memory crashes it.
# PYTHONMALLOC=debug fills freed memory with a poison pattern, so such a
# mistake crashes on every Python, not only where the allocator happens to
# reuse the block at once (3.12's did).
_CANCEL_EVERY_REQUEST = r'''
import asyncio, gc, socket, sys
import fastsock

def pair(kind=socket.SOCK_STREAM):
    a, b = socket.socketpair(socket.AF_UNIX, kind)
    a.setblocking(False); b.setblocking(False)
    return a, b

async def started_then_cancelled(coro, before_cancel=None):
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(0)              # submitted to the kernel
    if before_cancel is not None:
        before_cancel()                 # the kernel may complete it now
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    del task
    churn = [bytearray(4096) for _ in range(256)]   # reuse freed blocks
    for _ in range(5):
        await asyncio.sleep(0.002)      # the -ECANCELED CQEs arrive
    del churn

async def main(loop):
    a, b = pair()
    d1, d2 = pair(socket.SOCK_DGRAM)
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(4)
    srv.setblocking(False)
    full, sink = pair()
    full.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    while True:
        try:
            full.send(b"x" * 4096)
        except BlockingIOError:
            break
    for order in ("cancel-first", "completion-first"):
        go = (lambda: b.send(b"data")) if order == "completion-first" else None
        await started_then_cancelled(loop.sock_recv(a, 100), go)
        await started_then_cancelled(loop.sock_recv_into(a, bytearray(100)), go)
        dgo = (lambda: d2.send(b"dgram")) if order == "completion-first" else None
        await started_then_cancelled(loop.sock_recvfrom(d1, 100), dgo)
        await started_then_cancelled(loop.sock_recvfrom_into(d1, bytearray(100)), dgo)
        cgo = ((lambda: socket.create_connection(srv.getsockname()).close())
               if order == "completion-first" else None)
        await started_then_cancelled(loop.sock_accept(srv), cgo)
        await started_then_cancelled(loop.sock_sendall(full, bytearray(1 << 20)))
        c = socket.socket(); c.setblocking(False)
        await started_then_cancelled(loop.sock_connect(c, srv.getsockname()))
        c.close()
    # ... and a loop closed with requests still in the kernel
    global pending
    pending = [loop.create_task(loop.sock_recv(a, 10)),
               loop.create_task(loop.sock_accept(srv)),
               loop.create_task(loop.sock_sendall(full, bytearray(1 << 20)))]
    await asyncio.sleep(0.01)
    return [a, b, d1, d2, srv, full, sink]

# Collect cycles at nearly every allocation: a cancelled caller's request
# is often kept only by a cycle (its coroutine's frame, through the
# CancelledError's traceback) once the driver lets go of it.
gc.set_threshold(1, 1, 1)
async def dropped_requests(loop):
    # The driver contract underneath sock_* on io_uring: a request the
    # caller cancelled and let go of entirely is held only by the driver
    # until its CQE arrives, and that CQE's handler runs on live memory.
    from fastsock import driver
    results = []
    a, b = pair()
    d1, d2 = pair(socket.SOCK_DGRAM)
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(4)
    srv.setblocking(False)
    full, sink = pair()
    while True:
        try:
            full.send(b"x" * 65536)
        except BlockingIOError:
            break
    c = socket.socket(); c.setblocking(False)
    requests = [
        driver.new_request(driver.RECV, a.fileno(), bytearray(64), True),
        driver.new_request(driver.RECVMSG, d1.fileno(), bytearray(64), True),
        driver.new_request(driver.ACCEPT, srv.fileno()),
        driver.new_request(driver.SEND, full.fileno(), bytearray(1 << 20)),
        driver.new_request(driver.SENDMSG, full.fileno(), bytearray(1 << 20)),
        driver.new_request(driver.CONNECT, c.fileno(), None, False,
                           socket.AF_INET, srv.getsockname()),
    ]
    for req in requests:
        loop.driver.submit_request(req, lambda req, res: results.append(res))
        loop.driver.cancel_request(req)
    del req, requests
    churn = [bytearray(4096) for _ in range(256)]
    while len(results) < 6:
        await asyncio.sleep(0.002)
    del churn
    for s in (a, b, d1, d2, srv, full, sink, c):
        s.close()

backend = sys.argv[1]
loop = asyncio.new_event_loop() if backend == "asyncio" else \
    fastsock.new_event_loop(backend)
if backend == "uring":
    loop.run_until_complete(dropped_requests(loop))
socks = loop.run_until_complete(main(loop))
loop.close()
del pending
gc.collect()
for s in socks:
    s.close()
print("ok")
'''


@pytest.mark.parametrize("backend", ["asyncio", "epoll", "uring"])
def test_completions_after_cancel_touch_only_live_memory(backend):
    """Every sock_* request type, cancelled before and after the kernel
    completed it, and left in flight when the loop closes: its completion
    runs on memory it still holds (a child under PYTHONMALLOC=debug)."""
    import os
    import subprocess
    import sys
    if backend != "asyncio":
        pytest.importorskip("fastsock")
    env = dict(os.environ, PYTHONMALLOC="debug", PYTHONFAULTHANDLER="1")
    proc = subprocess.run([sys.executable, "-c", _CANCEL_EVERY_REQUEST,
                           backend], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"
