"""Zero-copy paths: MSG_ZEROCOPY (epoll), SENDMSG_ZC (io_uring), the
explicit write_zerocopy() API, native sendfile, and the counters. The rule
under test: memory the kernel reads stays alive (and unchanged) until the
kernel says it is done, on every path; nothing is lost or corrupted."""

import asyncio
import gc
import hashlib
import os
import socket

import pytest

from helpers.data import payload, sha
from helpers.loops import stock_asyncio_differs
from helpers.streams import StreamPair

MiB = 1024 * 1024


@pytest.fixture(params=["tcp", "unix"])
def kind(request):
    return request.param


@pytest.fixture
def fastsock_loop(loop, backend_name):
    if backend_name == "asyncio":
        pytest.skip("fastsock's zero-copy API")
    return loop


async def drain_slowly(proto, n, pause=0.002):
    """Read like a slow peer: resume reading in short bursts."""
    tr = proto.transport
    while len(proto.data) < n:
        tr.resume_reading()
        await asyncio.sleep(pause)
        tr.pause_reading()
        await asyncio.sleep(pause)
    tr.resume_reading()
    return bytes(proto.data[:n])


def test_temporary_bytes_integrity(loop, run, kind):
    """Large temporary bytes objects written and dropped at once, the peer
    slow: every byte arrives as written (also on stock asyncio)."""
    sizes = [MiB, 3 * MiB, 256 * 1024, 2 * MiB + 17, 64 * 1024, 5 * MiB]
    want = hashlib.sha256()
    for i, n in enumerate(sizes):
        want.update(payload(n, seed=i))
    total = sum(sizes)

    async def main():
        async with StreamPair(loop, kind) as p:
            p.server_proto.transport.pause_reading()
            tr = p.client.transport
            for i, n in enumerate(sizes):
                tr.write(payload(n, seed=i))     # the only reference
                gc.collect()
                junk = [os.urandom(n) for _ in range(2)]   # reuse memory
                del junk
            got = await drain_slowly(p.server_proto, total)
            assert hashlib.sha256(got).hexdigest() == want.hexdigest()
            return tr

    run(main(), timeout=60)


def test_bytearray_overwritten_after_write(loop, run, kind, request):
    """asyncio semantics: the caller may reuse a bytearray once write()
    returns, however large it is."""
    stock_asyncio_differs(request, since=(3, 12), reason=(
        "CPython 3.12's selector transport keeps a reference to a bytearray "
        "it could not send at once instead of a copy (gh-91166, zero-copy "
        "writes with sendmsg)"))
    buf = bytearray(payload(4 * MiB, seed=3))
    want = sha(bytes(buf))

    async def main():
        async with StreamPair(loop, kind) as p:
            p.server_proto.transport.pause_reading()
            p.client.transport.write(buf)
            buf[:] = b"\xff" * len(buf)            # reuse at once
            got = await drain_slowly(p.server_proto, 4 * MiB)
            assert sha(got) == want

    run(main(), timeout=60)


def test_zerocopy_used_then_dropped_on_loopback(fastsock_loop, run, kind):
    """Large bytes go zero-copy on TCP until the kernel reports it copied
    (loopback always does); AF_UNIX never tries. Counters say so."""
    loop = fastsock_loop

    async def main():
        async with StreamPair(loop, kind) as p:
            tr = p.client.transport
            for i in range(4):
                tr.write(payload(MiB, seed=i))
            await p.server_proto.wait_data(4 * MiB)
            await asyncio.sleep(0.05)          # notices come after the acks
            return tr.zerocopy_stats()

    stats = run(main(), timeout=30)
    totals = loop.zerocopy_stats()
    assert totals["zerocopy_sends"] == stats["zerocopy_sends"]
    assert totals["zerocopy_copied"] == stats["zerocopy_copied"]
    if kind == "tcp":
        assert stats["zerocopy_sends"] >= 1
        assert stats["zerocopy_copied"] >= 1
        assert stats["zerocopy_enabled"] is False
    else:
        assert stats["zerocopy_sends"] == 0
        assert stats["zerocopy_enabled"] is False


def test_zerocopy_threshold_setting(fastsock_loop, run):
    loop = fastsock_loop

    async def main():
        async with StreamPair(loop, "tcp") as p:
            tr = p.client.transport
            assert tr.get_zerocopy_threshold() == 64 * 1024
            tr.set_zerocopy_threshold(None)
            assert tr.get_zerocopy_threshold() is None
            tr.write(payload(2 * MiB))
            await p.server_proto.wait_data(2 * MiB)
            with pytest.raises(ValueError):
                tr.set_zerocopy_threshold(-1)
            return tr.zerocopy_stats()

    assert run(main())["zerocopy_sends"] == 0


def test_write_zerocopy_future(fastsock_loop, run, kind):
    """write_zerocopy(): the future resolves once the kernel has released
    the buffer; only then may the caller change it."""
    loop = fastsock_loop
    buf = bytearray(payload(3 * MiB, seed=9))
    want = sha(bytes(buf))

    async def main():
        async with StreamPair(loop, kind) as p:
            p.server_proto.transport.pause_reading()
            done = p.client.transport.write_zerocopy(buf)
            assert isinstance(done, asyncio.Future)
            got_task = asyncio.ensure_future(
                drain_slowly(p.server_proto, len(buf)))
            await asyncio.wait_for(done, 30)
            buf[:] = bytes(len(buf))           # now it may change
            assert sha(await got_task) == want
            # empty buffers resolve at once
            assert await p.client.transport.write_zerocopy(b"") is None

    run(main(), timeout=60)


@pytest.mark.parametrize("how", ["abort", "close"])
def test_close_with_zerocopy_in_flight(fastsock_loop, run, how):
    """The peer does not read; zero-copy sends are in flight. abort() ends
    them (the stream is reset) and connection_lost follows; close() waits
    for the data to go, then the same. Nothing crashes, nothing leaks."""
    loop = fastsock_loop

    async def main():
        async with StreamPair(loop, "tcp") as p:
            st = p.server_proto.transport
            st.pause_reading()
            tr = p.client.transport
            tr.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
            pinned = bytearray(payload(2 * MiB, seed=5))
            done = tr.write_zerocopy(pinned)
            for i in range(4):
                tr.write(payload(MiB, seed=i))
            await asyncio.sleep(0.05)
            if how == "abort":
                tr.abort()
                assert await asyncio.wait_for(p.client.lost, 10) is None
                # never fully sent: the future fails, but only once the
                # kernel let go of the buffer
                with pytest.raises(ConnectionError):
                    await asyncio.wait_for(done, 10)
            else:
                tr.close()
                got = await drain_slowly(p.server_proto, 6 * MiB)
                assert sha(got[:2 * MiB]) == sha(payload(2 * MiB, seed=5))
                assert await asyncio.wait_for(p.client.lost, 10) is None
                await asyncio.wait_for(done, 10)

    run(main(), timeout=60)


def test_loop_closed_with_notices_outstanding(backend_name, new_loop):
    """The loop closes while zero-copy sends wait for a peer that does not
    read: nothing crashes, the kernel's pages stay valid, the sockets are
    closed once their transports go."""
    if backend_name == "asyncio":
        pytest.skip("fastsock's zero-copy API")
    loop = new_loop()
    holder = {}

    async def main():
        srv_ready = loop.create_future()

        class Server(asyncio.Protocol):
            def connection_made(self, transport):
                transport.pause_reading()
                holder["server"] = transport
                srv_ready.set_result(None)

        server = await loop.create_server(Server, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        tr, _ = await loop.create_connection(asyncio.Protocol, *addr)
        await srv_ready
        holder["done"] = tr.write_zerocopy(bytearray(8 * MiB))
        tr.write(payload(4 * MiB))
        await asyncio.sleep(0.05)
        holder["client"] = tr
        server.close()

    loop.run_until_complete(main())
    loop.close()
    for name in ("client", "server"):
        sock = holder[name].get_extra_info("socket")
        # the transport still owns its socket; once it goes, so does the fd
        assert sock.fileno() >= 0
    holder.clear()
    gc.collect()


def test_sendfile_counts_and_large_offsets(fastsock_loop, run, tmp_path, kind):
    """loop.sendfile() goes natively (sendfile(2) / splice) and is counted;
    offsets past 2 GiB work (a sparse file)."""
    loop = fastsock_loop
    path = tmp_path / "sparse.bin"
    tail = payload(MiB, seed=11)
    with open(path, "wb") as f:
        f.truncate(2 * 1024 * MiB + 512 * 1024)
        f.seek(2 * 1024 * MiB - 512 * 1024)
        f.write(tail)

    async def main():
        async with StreamPair(loop, kind) as p:
            tr = p.client.transport
            with open(path, "rb") as f:
                offset = 2 * 1024 * MiB - 512 * 1024
                sent = await loop.sendfile(tr, f, offset, MiB, fallback=False)
                assert sent == MiB
                assert f.tell() == offset + MiB
            got = await p.server_proto.wait_data(MiB)
            assert sha(got) == sha(tail)
            return tr.zerocopy_stats()

    assert run(main(), timeout=60)["sendfile_bytes"] == MiB
    assert loop.zerocopy_stats()["sendfile_bytes"] == MiB


@pytest.mark.timeout(180)
def test_sendfile_more_than_one_call_moves(loop, run, tmp_path):
    """A file over 0x7ffff000 bytes: sendfile(2) moves at most that much per
    call, the transfer goes on until everything is there."""
    path = tmp_path / "big.bin"
    size = 0x7ffff000 + 3 * MiB
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(size - 5)
        f.write(b"tail!")

    async def main():
        a, b = socket.socketpair()
        b.setblocking(False)
        with a, b:
            received = 0
            last = b""

            async def reader():
                nonlocal received, last
                while received < size:
                    chunk = await loop.sock_recv(b, 4 * MiB)
                    if not chunk:
                        break
                    received += len(chunk)
                    last = (last + chunk)[-5:]

            task = asyncio.ensure_future(reader())
            with open(path, "rb") as f:
                a.setblocking(False)
                sent = await loop.sock_sendfile(a, f)
            await task
            return sent, received, last

    sent, received, last = run(main(), timeout=170)
    assert sent == received == size
    assert last == b"tail!"


def test_sendfile_peer_closes_midway(loop, run, tmp_path):
    """The peer goes away during a transfer: a ConnectionError, no hang."""
    path = tmp_path / "f.bin"
    path.write_bytes(payload(32 * MiB))

    async def main():
        async with StreamPair(loop, "tcp") as p:
            tr = p.client.transport
            tr.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 128 * 1024)
            p.server_proto.transport.pause_reading()
            with open(path, "rb") as f:
                task = asyncio.ensure_future(loop.sendfile(tr, f))
                await asyncio.sleep(0.05)
                p.server_proto.transport.abort()
                with pytest.raises(ConnectionError):
                    await asyncio.wait_for(task, 10)

    run(main(), timeout=30)


@pytest.mark.parametrize("how", ["abort", "peer-reset"])
def test_large_write_in_flight_does_not_hold_the_connection(loop, run, how):
    """8 MiB of bytes (zero-copy on TCP) queued to a peer that reads 64 KiB
    every 10 ms; then abort(), or the peer resets the connection (SO_LINGER
    0, as a killed process does): connection_lost comes promptly, whatever
    order the kernel reports the zero-copy sends in, or if it never does."""
    import struct
    import threading
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    stop = threading.Event()

    def read_slowly(peer):
        peer.settimeout(0.5)
        while not stop.is_set():
            try:
                if not peer.recv(65536):
                    return
            except socket.timeout:
                continue
            except OSError:
                return
            stop.wait(0.01)

    async def main():
        lost = loop.create_future()

        class Client(asyncio.Protocol):
            def connection_lost(self, exc):
                lost.set_result(exc)

        tr, _ = await loop.create_connection(Client,
                                             *listener.getsockname())
        peer, _ = listener.accept()
        reader = threading.Thread(target=read_slowly, args=(peer,))
        reader.start()
        try:
            tr.write(payload(8 * MiB, seed=9))
            await asyncio.sleep(0.1)
            if how == "abort":
                tr.abort()
            else:
                stop.set()
                reader.join()
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                struct.pack("ii", 1, 0))
                peer.close()
            exc = await asyncio.wait_for(lost, 5)
            assert exc is None or isinstance(exc, ConnectionError)
        finally:
            stop.set()
            reader.join()
            peer.close()

    with listener:
        run(main(), timeout=30)
