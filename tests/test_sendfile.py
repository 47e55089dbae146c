"""loop.sendfile() over transports and loop.sock_sendfile() over sockets."""

import asyncio
import socket

import pytest

from helpers.data import payload, sha
from helpers.protocols import RecordingProtocol
from helpers.streams import STREAM_KINDS, StreamPair

DATA = payload(3 * 1024 * 1024 + 123, seed=51)


@pytest.fixture(params=STREAM_KINDS)
def kind(request):
    return request.param


async def native_sendfile_or_xfail(loop, backend_name, coro):
    """Await a sendfile(..., fallback=False) call.  Stock asyncio always has
    the native path; a fastsock backend without it (allowed by the readiness
    loop issue, native zero copy has its own) xfails instead of failing."""
    try:
        return await coro
    except asyncio.SendfileNotAvailableError as exc:
        if backend_name == "asyncio":
            raise
        pytest.xfail(f"native sendfile not available: {exc}")


def _open_written(tmp_path, name, data):
    """`data` written to tmp_path/name, the file opened for reading."""
    p = tmp_path / name
    p.write_bytes(data)
    return open(p, "rb")


@pytest.fixture
def datafile(tmp_path):
    with _open_written(tmp_path, "data.bin", DATA) as f:
        yield f


@pytest.mark.parametrize("fallback", [True, False])
def test_sendfile_whole_file(loop, run, kind, datafile, fallback,
                             backend_name):
    async def main():
        async with StreamPair(loop, kind) as p:
            sent = await native_sendfile_or_xfail(
                loop, backend_name if not fallback else "asyncio",
                loop.sendfile(p.client.transport, datafile,
                              fallback=fallback))
            assert sent == len(DATA)
            assert datafile.tell() == len(DATA)
            p.client.transport.write(b"trailer")  # usable again afterwards
            got = await p.server_proto.wait_data(len(DATA) + 7)
            assert sha(got) == sha(DATA + b"trailer")

    run(main(), timeout=30)


def test_sendfile_offset_and_count(loop, run, kind, datafile):
    async def main():
        async with StreamPair(loop, kind) as p:
            sent = await loop.sendfile(p.client.transport, datafile,
                                       offset=1000, count=200_000)
            assert sent == 200_000
            assert datafile.tell() == 1000 + 200_000
            got = await p.server_proto.wait_data(200_000)
            assert got == DATA[1000:201_000]

    run(main(), timeout=30)


def test_sendfile_count_past_end(loop, run, kind, datafile):
    async def main():
        async with StreamPair(loop, kind) as p:
            start = len(DATA) - 500
            sent = await loop.sendfile(p.client.transport, datafile,
                                       offset=start, count=10_000)
            assert sent == 500
            assert datafile.tell() == len(DATA)
            assert await p.server_proto.wait_data(500) == DATA[start:]

    run(main(), timeout=30)


def test_sendfile_empty_file(loop, run, kind, tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")

    async def main():
        async with StreamPair(loop, kind) as p:
            with open(empty, "rb") as f:
                assert await loop.sendfile(p.client.transport, f) == 0
                assert f.tell() == 0

    run(main())


def test_sendfile_with_slow_reader(loop, run, kind, datafile):
    """The peer is paused for a while: sendfile waits, nothing is lost, and
    writes queued before sendfile go first."""
    async def main():
        async with StreamPair(loop, kind) as p:
            st = p.server_proto.transport
            st.pause_reading()
            p.client.transport.write(b"header")
            task = asyncio.ensure_future(
                loop.sendfile(p.client.transport, datafile))
            await asyncio.sleep(0.05)
            st.resume_reading()
            assert await task == len(DATA)
            got = await p.server_proto.wait_data(len(DATA) + 6)
            assert sha(got) == sha(b"header" + DATA)

    run(main(), timeout=30)


def test_sendfile_write_during_sendfile_rejected(loop, run, kind, datafile,
                                                backend_name):
    """During a native sendfile, write() raises RuntimeError (asyncio; the
    fallback path instead lets writes interleave)."""
    async def main():
        async with StreamPair(loop, kind) as p:
            # Small buffers, so the file cannot be sent while the peer does
            # not read (loopback TCP autotunes its send buffer to MiBs).
            p.client.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            p.server_proto.transport.pause_reading()
            task = asyncio.ensure_future(
                loop.sendfile(p.client.transport, datafile, fallback=False))
            await asyncio.sleep(0.05)
            if task.done() and task.exception() is not None:
                p.server_proto.transport.resume_reading()
                await native_sendfile_or_xfail(loop, backend_name, task)
            assert not task.done()
            with pytest.raises(RuntimeError):
                p.client.transport.write(b"x")
            p.server_proto.transport.resume_reading()
            assert await task == len(DATA)

    run(main(), timeout=30)


def test_sendfile_on_closing_transport(loop, run, kind, datafile):
    async def main():
        async with StreamPair(loop, kind) as p:
            p.client.transport.close()
            with pytest.raises(RuntimeError):
                await loop.sendfile(p.client.transport, datafile)

    run(main())


def test_sendfile_argument_errors(loop, run, kind, datafile, tmp_path,
                                  backend_name):
    """Argument checks (asyncio makes them on its native path)."""
    text = tmp_path / "text.txt"
    text.write_text("hello")

    async def main():
        async with StreamPair(loop, kind) as p:
            tr = p.client.transport
            await native_sendfile_or_xfail(
                loop, backend_name,
                loop.sendfile(tr, datafile, 0, 10, fallback=False))
            await p.server_proto.wait_data(10)
            with open(text) as tf:
                with pytest.raises(ValueError):
                    await loop.sendfile(tr, tf)
            with pytest.raises(ValueError):
                await loop.sendfile(tr, datafile, offset=-1)
            with pytest.raises(ValueError):
                await loop.sendfile(tr, datafile, count=0)
            with pytest.raises(TypeError):
                await loop.sendfile(tr, datafile, count="10")
            tr.close()
            with pytest.raises(RuntimeError):
                await loop.sendfile(tr, datafile)

    run(main())


def test_sendfile_on_datagram_transport_unsupported(loop, run, datafile):
    async def main():
        tr, proto = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        try:
            with pytest.raises(RuntimeError):
                await loop.sendfile(tr, datafile)
        finally:
            tr.close()
            await asyncio.sleep(0)

    run(main())


# ---------------------------------------------------------------------------
# sock_sendfile
# ---------------------------------------------------------------------------

def _nb_pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


async def _recv_exactly(loop, sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, 1 << 20)
        assert chunk, f"EOF after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


@pytest.mark.parametrize("fallback", [True, False])
def test_sock_sendfile(loop, run, datafile, fallback, backend_name):
    a, b = _nb_pair()

    async def main():
        with a, b:
            recv = asyncio.ensure_future(_recv_exactly(loop, b, len(DATA)))
            sent = await native_sendfile_or_xfail(
                loop, backend_name if not fallback else "asyncio",
                loop.sock_sendfile(a, datafile, fallback=fallback))
            assert sent == len(DATA)
            assert datafile.tell() == len(DATA)
            assert sha(await recv) == sha(DATA)

    run(main(), timeout=30)


def test_sock_sendfile_offset_count_tcp(loop, run, datafile):
    async def main():
        with socket.socket() as lsock, socket.socket() as cli:
            lsock.bind(("127.0.0.1", 0))
            lsock.listen(1)
            lsock.setblocking(False)
            cli.setblocking(False)
            acc = asyncio.ensure_future(loop.sock_accept(lsock))
            await loop.sock_connect(cli, lsock.getsockname())
            conn, _ = await acc
            with conn:
                recv = asyncio.ensure_future(
                    _recv_exactly(loop, conn, 1_000_000))
                sent = await loop.sock_sendfile(cli, datafile, 4096,
                                                1_000_000)
                assert sent == 1_000_000
                assert datafile.tell() == 4096 + 1_000_000
                assert await recv == DATA[4096:4096 + 1_000_000]

    run(main(), timeout=30)


def test_sock_sendfile_errors(loop, run, datafile, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("x")

    async def main():
        a, b = _nb_pair()
        with a, b:
            with open(text) as tf:
                with pytest.raises(ValueError):
                    await loop.sock_sendfile(a, tf)
            with pytest.raises(ValueError):
                await loop.sock_sendfile(a, datafile, -5)
            with pytest.raises(ValueError):
                await loop.sock_sendfile(a, datafile, 0, 0)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.setblocking(False)
        with udp:
            with pytest.raises(ValueError):
                await loop.sock_sendfile(udp, datafile)

    run(main())


BIG = payload(48 * 1024 * 1024, seed=52)


@pytest.fixture
def bigfile(tmp_path):
    with _open_written(tmp_path, "big.bin", BIG) as f:
        yield f


async def _read_slowly(loop, sock, until_marker, chunk=65536):
    # A reader that takes 64 KiB every few ms, up to the marker.
    got = bytearray()
    while not got.endswith(until_marker):
        data = await asyncio.wait_for(loop.sock_recv(sock, chunk), 10)
        if not data:
            break
        got += data
        await asyncio.sleep(0.002)
    return bytes(got)


def test_cancelled_sock_sendfile_stops_at_the_cancel(loop, run, bigfile,
                                                      backend_name):
    """Cancelling sock_sendfile() stops the transfer: what the peer gets
    after the file's prefix is what the caller sends next, and the socket is
    free for other uses at once."""
    a, b = socket.socketpair()
    for s in (a, b):
        s.setblocking(False)

    async def main():
        task = asyncio.ensure_future(loop.sock_sendfile(a, bigfile))
        reader = asyncio.ensure_future(_read_slowly(loop, b, b"MARKER"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await loop.sock_sendall(a, b"MARKER")
        got = await reader
        assert got.endswith(b"MARKER")
        body = got[:-len(b"MARKER")]
        assert len(body) < len(BIG)
        assert body == BIG[:len(body)]
        if backend_name != "asyncio":
            # fastsock moves the position past what was sent, as on every
            # other outcome; asyncio leaves it where it was on a cancel.
            assert bigfile.tell() == len(body)
        # The loop let go of the fd: a transport can be made from it.
        tr, proto = await loop.connect_accepted_socket(RecordingProtocol, a)
        tr.close()
        await proto.lost

    with b:
        run(main(), timeout=60)


def test_cancelled_sendfile_stops_at_the_cancel(loop, run, bigfile,
                                                backend_name):
    """loop.sendfile() over a transport, cancelled: the file stops there;
    a write after it follows the file's prefix on the stream."""
    async def main():
        async with StreamPair(loop, "unix") as p:
            st = p.server_proto.transport
            st.pause_reading()
            task = asyncio.ensure_future(
                loop.sendfile(p.client.transport, bigfile))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            p.client.transport.write(b"MARKER")
            st.resume_reading()
            while not p.server_proto.data.endswith(b"MARKER"):
                await asyncio.wait_for(
                    p.server_proto.wait_data(len(p.server_proto.data) + 1), 10)
            body = bytes(p.server_proto.data[:-len(b"MARKER")])
            assert len(body) < len(BIG)
            assert body == BIG[:len(body)]
            if backend_name != "asyncio":       # see the test above
                assert bigfile.tell() == len(body)

    run(main(), timeout=60)


class _MovedFile:
    """An in-memory file (no fileno(): the fallback path) whose position
    someone moved before the call."""

    def __init__(self, data):
        import io
        self.f = io.BytesIO(data)
        self.f.seek(1000)

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_sendfile_fallback_reads_from_offset_zero(loop, run, request):
    """offset=0 means the start of the file, wherever its position is
    (CPython 3.11-3.13 sent from the current position; gh-150107)."""
    from asyncio import base_events
    from helpers.loops import asyncio_source_has, stock_asyncio_differs
    stock_asyncio_differs(request, when=asyncio_source_has(
        base_events.BaseEventLoop._sock_sendfile_fallback, "if offset:"),
        reason="asyncio's sendfile fallbacks seek only for a true offset "
               "(gh-150107)")
    data = payload(5000, seed=53)

    async def main():
        async with StreamPair(loop, "unix") as p:
            sent = await loop.sendfile(p.client.transport, _MovedFile(data),
                                       offset=0)
            assert sent == len(data)
            assert await p.server_proto.wait_data(len(data)) == data
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)
            b.setblocking(False)
            sent = await loop.sock_sendfile(a, _MovedFile(data), offset=0)
            assert sent == len(data)
            got = b""
            while len(got) < len(data):
                got += await loop.sock_recv(b, 65536)
            assert got == data

    run(main())
