"""Low-level loop.sock_* methods, add_reader/add_writer, name resolution."""

import asyncio
import errno
import os
import socket

import pytest

from helpers.addresses import HAS_IPV6
from helpers.data import payload, sha


def _tcp_listener(family=socket.AF_INET, host="127.0.0.1"):
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.bind((host, 0))
    srv.listen(128)
    srv.setblocking(False)
    return srv


def _nb_socketpair(type=socket.SOCK_STREAM):
    a, b = socket.socketpair(socket.AF_UNIX, type)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


# ---------------------------------------------------------------------------
# sock_accept / sock_connect / sock_recv / sock_sendall
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("family,host", [
    (socket.AF_INET, "127.0.0.1"),
    pytest.param(socket.AF_INET6, "::1", marks=pytest.mark.skipif(
        not HAS_IPV6, reason="no IPv6 loopback")),
])
def test_sock_accept_connect_roundtrip(loop, run, family, host):
    async def main():
        with _tcp_listener(family, host) as srv, \
                socket.socket(family, socket.SOCK_STREAM) as cli:
            cli.setblocking(False)
            accept = asyncio.ensure_future(loop.sock_accept(srv))
            await loop.sock_connect(cli, srv.getsockname()[:2])
            conn, addr = await accept
            with conn:
                assert conn.gettimeout() == 0  # accepted sockets are non-blocking
                assert addr[:2] == cli.getsockname()[:2]
                await loop.sock_sendall(cli, b"ping")
                assert await loop.sock_recv(conn, 100) == b"ping"
                await loop.sock_sendall(conn, b"pong")
                assert await loop.sock_recv(cli, 100) == b"pong"
                conn.shutdown(socket.SHUT_WR)
                assert await loop.sock_recv(cli, 100) == b""  # EOF

    run(main())


def test_sock_connect_resolves_hostname(loop, run):
    async def main():
        with _tcp_listener() as srv, socket.socket() as cli:
            cli.setblocking(False)
            port = srv.getsockname()[1]
            accept = asyncio.ensure_future(loop.sock_accept(srv))
            await loop.sock_connect(cli, ("localhost", port))
            conn, _ = await accept
            conn.close()

    run(main())


def test_sock_connect_refused(loop, run):
    with socket.socket() as tmp:
        tmp.bind(("127.0.0.1", 0))
        port = tmp.getsockname()[1]  # bound, not listening: refuses

        async def main():
            with socket.socket() as cli:
                cli.setblocking(False)
                with pytest.raises(ConnectionRefusedError):
                    await loop.sock_connect(cli, ("127.0.0.1", port))

        run(main())


def test_sock_recv_waits_for_data(loop, run):
    a, b = _nb_socketpair()

    async def main():
        with a, b:
            fut = asyncio.ensure_future(loop.sock_recv(a, 10))
            await asyncio.sleep(0)
            assert not fut.done()
            loop.call_soon(b.send, b"late")
            assert await fut == b"late"

    run(main())


def test_sock_recv_into(loop, run):
    a, b = _nb_socketpair()

    async def main():
        with a, b:
            buf = bytearray(16)
            fut = asyncio.ensure_future(loop.sock_recv_into(a, buf))
            await asyncio.sleep(0)
            b.send(b"hello")
            n = await fut
            assert n == 5
            assert bytes(buf[:5]) == b"hello"
            # memoryview slice target
            b.send(b"abc")
            view = memoryview(buf)[8:]
            n = await loop.sock_recv_into(a, view)
            assert n == 3
            assert bytes(buf[8:11]) == b"abc"

    run(main())


def test_sock_recv_cancel_then_recv_again(loop, run):
    """A cancelled receive must not swallow data meant for the next one."""
    a, b = _nb_socketpair()

    async def main():
        with a, b:
            fut = asyncio.ensure_future(loop.sock_recv(a, 100))
            await asyncio.sleep(0)
            fut.cancel()
            with pytest.raises(asyncio.CancelledError):
                await fut
            b.send(b"after-cancel")
            assert await loop.sock_recv(a, 100) == b"after-cancel"

    run(main())


def test_sock_sendall_large_payload(loop, run):
    """A payload many times the socket buffer goes out whole."""
    data = payload(8 * 1024 * 1024, seed=1)
    a, b = _nb_socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)

    async def reader():
        chunks = []
        total = 0
        while total < len(data):
            chunk = await loop.sock_recv(b, 65536)
            assert chunk, "unexpected EOF"
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)

    async def main():
        with a, b:
            r = asyncio.ensure_future(reader())
            result = await loop.sock_sendall(a, data)
            assert result is None
            got = await r
            assert sha(got) == sha(data)

    run(main(), timeout=30)


def test_sock_sendall_memoryview_and_bytearray(loop, run):
    a, b = _nb_socketpair()

    async def main():
        with a, b:
            await loop.sock_sendall(a, bytearray(b"abc"))
            await loop.sock_sendall(a, memoryview(b"xxdefxx")[2:5])
            got = b""
            while len(got) < 6:
                got += await loop.sock_recv(b, 100)
            assert got == b"abcdef"

    run(main())


def test_sock_recv_on_reset_peer(loop, run):
    async def main():
        with _tcp_listener() as srv, socket.socket() as cli:
            cli.setblocking(False)
            accept = asyncio.ensure_future(loop.sock_accept(srv))
            await loop.sock_connect(cli, srv.getsockname())
            conn, _ = await accept
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                            b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()  # RST
            with pytest.raises(ConnectionResetError):
                await loop.sock_recv(cli, 100)

    run(main())


def test_sock_sendall_to_closed_peer_raises(loop, run):
    async def main():
        with _tcp_listener() as srv, socket.socket() as cli:
            cli.setblocking(False)
            accept = asyncio.ensure_future(loop.sock_accept(srv))
            await loop.sock_connect(cli, srv.getsockname())
            conn, _ = await accept
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                            b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                for _ in range(100):
                    await loop.sock_sendall(cli, b"x" * 65536)

    run(main())


# ---------------------------------------------------------------------------
# Datagram sock_* methods
# ---------------------------------------------------------------------------

def test_sock_recvfrom_and_sendto(loop, run):
    async def main():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
            a.bind(("127.0.0.1", 0))
            b.bind(("127.0.0.1", 0))
            a.setblocking(False)
            b.setblocking(False)
            fut = asyncio.ensure_future(loop.sock_recvfrom(b, 100))
            await asyncio.sleep(0)
            n = await loop.sock_sendto(a, b"dgram", b.getsockname())
            assert n == 5
            data, addr = await fut
            assert data == b"dgram"
            assert addr == a.getsockname()
            # Datagram boundaries are kept and bufsize truncates.
            await loop.sock_sendto(a, b"0123456789", b.getsockname())
            data, _ = await loop.sock_recvfrom(b, 4)
            assert data == b"0123"

    run(main())


def test_sock_recvfrom_into(loop, run):
    async def main():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
            a.bind(("127.0.0.1", 0))
            b.bind(("127.0.0.1", 0))
            a.setblocking(False)
            b.setblocking(False)
            buf = bytearray(64)
            fut = asyncio.ensure_future(loop.sock_recvfrom_into(b, buf))
            await asyncio.sleep(0)
            await loop.sock_sendto(a, b"into", b.getsockname())
            n, addr = await fut
            assert n == 4
            assert bytes(buf[:4]) == b"into"
            assert addr == a.getsockname()
            # nbytes limits how much is written
            await loop.sock_sendto(a, b"abcdefgh", b.getsockname())
            buf2 = bytearray(64)
            n, _ = await loop.sock_recvfrom_into(b, buf2, 3)
            assert n == 3
            assert bytes(buf2[:4]) == b"abc\x00"

    run(main())


def test_sock_unix_dgram(loop, run):
    a, b = _nb_socketpair(socket.SOCK_DGRAM)

    async def main():
        with a, b:
            fut = asyncio.ensure_future(loop.sock_recv(b, 100))
            await asyncio.sleep(0)
            await loop.sock_sendall(a, b"unix-dgram")
            assert await fut == b"unix-dgram"

    run(main())


# ---------------------------------------------------------------------------
# Blocking sockets are rejected in debug mode
# ---------------------------------------------------------------------------

def test_blocking_socket_rejected_in_debug(loop, run):
    loop.set_debug(True)
    a, b = socket.socketpair()  # blocking

    async def main():
        with a, b:
            with pytest.raises(ValueError):
                await loop.sock_recv(a, 10)
            with pytest.raises(ValueError):
                await loop.sock_recv_into(a, bytearray(10))
            with pytest.raises(ValueError):
                await loop.sock_sendall(a, b"x")
            with pytest.raises(ValueError):
                await loop.sock_connect(a, "whatever")
            with pytest.raises(ValueError):
                await loop.sock_accept(a)

    run(main())


@pytest.mark.parametrize("call", ["sock_recv", "sock_sendall", "sock_accept"])
def test_not_a_socket(loop, run, call):
    """An fd number where a socket belongs: asyncio fails with
    AttributeError when it uses the object (as a method of it)."""
    args = {"sock_recv": (10,), "sock_sendall": (b"x",), "sock_accept": ()}
    with pytest.raises(AttributeError):
        run(getattr(loop, call)(3, *args[call]))


def test_ssl_socket_rejected(loop, run):
    import ssl
    ctx = ssl.create_default_context()
    sock = socket.socket()
    ssock = ctx.wrap_socket(sock, do_handshake_on_connect=False,
                            server_hostname="x")
    ssock.setblocking(False)

    async def main():
        with ssock:
            with pytest.raises(TypeError):
                await loop.sock_recv(ssock, 10)
            with pytest.raises(TypeError):
                await loop.sock_sendall(ssock, b"x")

    run(main())


# ---------------------------------------------------------------------------
# add_reader / add_writer
# ---------------------------------------------------------------------------

def test_add_reader_and_remove(loop, run):
    a, b = _nb_socketpair()

    async def main():
        with a, b:
            got = loop.create_future()

            def on_readable(arg):
                got.set_result((arg, a.recv(100)))
                loop.remove_reader(a.fileno())

            assert loop.remove_reader(a.fileno()) is False
            loop.add_reader(a.fileno(), on_readable, "arg")
            b.send(b"r")
            assert await got == ("arg", b"r")
            assert loop.remove_reader(a.fileno()) is False

    run(main())


def test_add_reader_accepts_file_objects(loop, run):
    a, b = _nb_socketpair()

    async def main():
        with a, b:
            got = loop.create_future()
            loop.add_reader(a, lambda: got.set_result(a.recv(10)))
            b.send(b"obj")
            assert await got == b"obj"
            assert loop.remove_reader(a) is True

    run(main())


def test_add_reader_replaces_callback(loop, run):
    a, b = _nb_socketpair()

    async def main():
        with a, b:
            got = loop.create_future()
            loop.add_reader(a.fileno(), lambda: got.set_result("old"))
            loop.add_reader(a.fileno(), lambda: got.set_result("new"))
            b.send(b"x")
            assert await got == "new"
            assert loop.remove_reader(a.fileno()) is True

    run(main())


def test_add_reader_level_triggered(loop, run):
    """A reader that does not consume data is called again (level
    triggered, like the selector loop)."""
    a, b = _nb_socketpair()

    async def main():
        with a, b:
            calls = []
            done = loop.create_future()

            def on_readable():
                calls.append(1)
                if len(calls) == 3:
                    loop.remove_reader(a.fileno())
                    done.set_result(None)

            loop.add_reader(a.fileno(), on_readable)
            b.send(b"x")
            await done
            assert a.recv(10) == b"x"

    run(main())


def test_add_writer_and_remove(loop, run):
    a, b = _nb_socketpair()

    async def main():
        with a, b:
            fired = loop.create_future()

            def on_writable():
                loop.remove_writer(a.fileno())
                fired.set_result(True)

            assert loop.remove_writer(a.fileno()) is False
            loop.add_writer(a.fileno(), on_writable)
            assert await fired
            assert loop.remove_writer(a.fileno()) is False

    run(main())


def test_add_writer_fires_when_buffer_drains(loop, run):
    a, b = _nb_socketpair()

    async def main():
        with a, b:
            # Fill a's send buffer.
            try:
                while True:
                    a.send(b"x" * 65536)
            except BlockingIOError:
                pass
            fired = loop.create_future()

            def on_writable():
                loop.remove_writer(a.fileno())
                fired.set_result(True)

            loop.add_writer(a.fileno(), on_writable)
            await asyncio.sleep(0.05)
            assert not fired.done()
            # Drain the peer.
            try:
                while True:
                    b.recv(1 << 20)
            except BlockingIOError:
                pass
            assert await fired

    run(main())


def test_reader_and_writer_on_same_fd(loop, run):
    a, b = _nb_socketpair()

    async def main():
        with a, b:
            r = loop.create_future()
            w = loop.create_future()
            loop.add_reader(a.fileno(), lambda: r.done() or r.set_result(1))
            loop.add_writer(a.fileno(), lambda: w.done() or w.set_result(1))
            b.send(b"x")
            await asyncio.gather(r, w)
            assert loop.remove_writer(a.fileno()) is True
            assert loop.remove_reader(a.fileno()) is True

    run(main())


def test_add_reader_invalid_fd(loop):
    with pytest.raises(ValueError):
        loop.add_reader("not a file", lambda: None)
    with pytest.raises(ValueError):
        loop.add_reader(-1, lambda: None)
    with pytest.raises(ValueError):
        loop.add_writer(object(), lambda: None)


@pytest.mark.parametrize("what", ["closed", "never-opened", "regular-file"])
def test_add_reader_refuses_what_cannot_be_watched(loop, what, tmp_path):
    """A closed or never-opened fd fails with EBADF, a regular file with
    EPERM, at once (as epoll_ctl() tells a selector loop); nothing is left
    watching."""
    if what == "regular-file":
        f = open(tmp_path / "plain", "wb")
        fd, want = f.fileno(), errno.EPERM
    else:
        a, b = _nb_socketpair()
        fd = a.fileno()
        if what == "never-opened":
            fd = max(fd, b.fileno()) + 100
        a.close()
        b.close()
        f, want = None, errno.EBADF
    try:
        for add in (loop.add_reader, loop.add_writer):
            with pytest.raises(OSError) as info:
                add(fd, lambda: None)
            assert info.value.errno == want
        assert loop.remove_reader(fd) is False
        assert loop.remove_writer(fd) is False
    finally:
        if f is not None:
            f.close()


_FD_CLOSED_BEFORE_REMOVE_READER = r'''
import asyncio, os, socket, sys
import fastsock

backend = sys.argv[1]
loop = (asyncio.new_event_loop() if backend == "asyncio"
        else fastsock.new_event_loop(backend))
a, b = socket.socketpair()
a.setblocking(False)
fd = a.fileno()
other = os.dup(fd)                  # the open file outlives fd
called = []
loop.add_reader(fd, lambda: called.append(1))
a.close()                           # closed first ...
loop.remove_reader(fd)              # ... removed after: the ordering slip
b.send(b"x")
for _ in range(5):
    # Each iteration may free what the last one released; refill freed
    # memory with objects of a transport's size in between.
    loop.run_until_complete(asyncio.sleep(0.01))
    churn = [bytes(range(256)) * (i % 3 + 1) for i in range(3000)]
assert not called, "a removed callback ran"
loop.close()
os.close(other)
b.close()
print("ok")
'''


def test_fd_closed_before_remove_reader_is_harmless(backend_name):
    """add_reader(fd); the file has a second descriptor; fd is closed and
    only then remove_reader(fd): the kernel may still report the file, and
    the loop must neither crash nor run the removed callback."""
    import subprocess
    import sys
    proc = subprocess.run(
        [sys.executable, "-c", _FD_CLOSED_BEFORE_REMOVE_READER, backend_name],
        capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONFAULTHANDLER="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"


def test_add_reader_on_closed_loop(loop):
    a, b = _nb_socketpair()
    with a, b:
        loop.close()
        with pytest.raises(RuntimeError):
            loop.add_reader(a.fileno(), lambda: None)
        with pytest.raises(RuntimeError):
            loop.add_writer(a.fileno(), lambda: None)


def test_add_reader_on_transport_fd_rejected(loop, run):
    async def main():
        a, b = socket.socketpair()
        with b:
            tr, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
            try:
                fd = tr.get_extra_info("socket").fileno()
                with pytest.raises(RuntimeError):
                    loop.add_reader(fd, lambda: None)
                with pytest.raises(RuntimeError):
                    loop.add_writer(fd, lambda: None)
                with pytest.raises(RuntimeError):
                    loop.remove_reader(fd)
            finally:
                tr.close()
                await asyncio.sleep(0)

    run(main())


def test_reader_on_pipe(loop, run):
    r, w = os.pipe()
    os.set_blocking(r, False)

    async def main():
        try:
            got = loop.create_future()

            def on_readable():
                loop.remove_reader(r)
                got.set_result(os.read(r, 100))

            loop.add_reader(r, on_readable)
            os.write(w, b"pipe")
            assert await got == b"pipe"
        finally:
            os.close(r)
            os.close(w)

    run(main())


# ---------------------------------------------------------------------------
# getaddrinfo / getnameinfo
# ---------------------------------------------------------------------------

def test_getaddrinfo(loop, run):
    async def main():
        infos = await loop.getaddrinfo("127.0.0.1", 8080,
                                       type=socket.SOCK_STREAM)
        assert (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                ("127.0.0.1", 8080)) in infos
        infos = await loop.getaddrinfo("localhost", "80",
                                       family=socket.AF_INET,
                                       proto=socket.IPPROTO_UDP)
        assert infos
        assert all(i[0] == socket.AF_INET for i in infos)
        assert all(i[4][1] == 80 for i in infos)
        infos = await loop.getaddrinfo(None, 0, flags=socket.AI_PASSIVE,
                                       family=socket.AF_INET,
                                       type=socket.SOCK_STREAM)
        assert infos[0][4] == ("0.0.0.0", 0)

    run(main())


def test_getaddrinfo_error(loop, run):
    async def main():
        with pytest.raises(socket.gaierror):
            await loop.getaddrinfo("no.such.host.invalid", 80)
        with pytest.raises(socket.gaierror):
            await loop.getaddrinfo("not-an-ip", 80,
                                   flags=socket.AI_NUMERICHOST)

    run(main())


def test_getnameinfo(loop, run):
    async def main():
        host, port = await loop.getnameinfo(
            ("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
        assert (host, port) == ("127.0.0.1", "80")
        host, port = await loop.getnameinfo(("127.0.0.1", 80))
        assert isinstance(host, str) and isinstance(port, str)

    run(main())


def test_readiness_driver_takes_no_completion_requests():
    # sock_* on epoll wait for readiness (ReadinessSockMethods); a Request
    # handed to the epoll driver is refused with a clear error, not lost.
    import fastsock
    from fastsock import driver
    loop = fastsock.new_event_loop("epoll")
    a, b = socket.socketpair()
    try:
        req = driver.new_request(driver.RECV, a.fileno(),
                                 driver.receive_buffer(16), True)
        with pytest.raises(TypeError, match="readiness driver"):
            loop.driver.submit_request(req, lambda req, res: None)
        with pytest.raises(TypeError, match="readiness driver"):
            loop.driver.cancel_request(req)
    finally:
        a.close()
        b.close()
        loop.close()
