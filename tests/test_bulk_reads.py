"""Streams that carry bulk data.

Both drivers change how they read a stream by what it carries: small reads
go through a shared buffer (io_uring: a multishot recv from the loop's
provided-buffer ring; epoll: one hot buffer) and are copied out, while a
bulk stream is read straight into the bytes object data_received() gets
(io_uring: a multishot poll, then recv(2)). These tests move streams between
the two and check every byte, the order of callbacks and EOF, on stock
asyncio too.
"""

import asyncio
import socket

import pytest

from helpers.data import payload, sha
from helpers.protocols import RecordingProtocol
from helpers.streams import STREAM_KINDS, StreamPair

BULK = 64 * 1024


@pytest.fixture(params=STREAM_KINDS)
def kind(request):
    return request.param


class ChunkKeeper(RecordingProtocol):
    """Keeps each data_received() object as it came: a buffer that the
    loop (or the kernel) wrote into again after handing it on would show
    in the join at the end."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.chunks = []

    def data_received(self, data):
        self.chunks.append(data)
        super().data_received(data)


class SlowReader(ChunkKeeper):
    """Reads like asyncio's StreamReader: pauses once more than `limit`
    bytes wait, and a consumer in a later iteration takes them and
    resumes."""

    def __init__(self, limit=128 * 1024, **kwargs):
        super().__init__(**kwargs)
        self.limit = limit
        self.waiting = 0
        self.pauses = 0

    def data_received(self, data):
        super().data_received(data)
        self.waiting += len(data)
        if self.waiting > self.limit and self.transport.is_reading():
            self.transport.pause_reading()
            self.pauses += 1
            self.loop.call_soon(self.consume)

    def consume(self):
        self.waiting = 0
        if not self.transport.is_closing():
            self.transport.resume_reading()


def loop_backend(loop):
    return getattr(loop, "backend", "asyncio")


def bulk_switches(loop):
    stats = getattr(getattr(loop, "driver", None), "stats", None)
    return stats()["bulk_switches"] if stats is not None else None


def test_bulk_small_bulk_keeps_every_byte(loop, run, kind):
    """Bulk, then small messages one at a time (the stream goes back to the
    shared buffer), then bulk again: every byte in order, each chunk a
    bytes object of its own."""
    first = payload(3 * 1024 * 1024, seed=31)
    smalls = [payload(7 + i % 50, seed=100 + i) for i in range(40)]
    last = payload(3 * 1024 * 1024 + 5, seed=32)
    expected = first + b"".join(smalls) + last

    async def main():
        async with StreamPair(loop, kind, server_factory=ChunkKeeper) as p:
            ct, srv = p.client.transport, p.server_proto
            for i in range(0, len(first), BULK):
                ct.write(first[i:i + BULK])
            total = len(first)
            await srv.wait_data(total)
            for m in smalls:
                ct.write(m)
                total += len(m)
                await srv.wait_data(total)
            ct.write(last)
            ct.write_eof()
            await srv.eof
            assert all(type(c) is bytes and c for c in srv.chunks)
            assert sha(b"".join(srv.chunks)) == sha(expected)
            assert srv.collapsed() == ["made", "data", "eof"]
            if loop_backend(loop) == "uring":
                # Both bulk stretches were read as bulk.
                assert bulk_switches(loop) >= 2

    run(main(), timeout=40)


def test_eof_behind_bulk_data_reaches_a_pausing_reader(loop, run, kind):
    """The FIN arrives while the reader is paused with bulk data still
    queued in the socket: it is delivered after the last byte."""
    data = payload(8 * 1024 * 1024, seed=33)

    async def main():
        async with StreamPair(loop, kind, server_factory=SlowReader) as p:
            ct, srv = p.client.transport, p.server_proto
            ct.write(data)
            ct.write_eof()
            await srv.eof
            assert srv.pauses > 0
            assert sha(b"".join(srv.chunks)) == sha(data)
            assert srv.collapsed() == ["made", "data", "eof"]
            if loop_backend(loop) == "uring":
                assert bulk_switches(loop) >= 1     # paused while bulk

    run(main(), timeout=40)


class BufferedKeeper(asyncio.BufferedProtocol):
    def __init__(self):
        self.loop = asyncio.get_event_loop()
        self.buf = bytearray(BULK)
        self.received = bytearray()
        self.transport = None
        self.eof = self.loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.received += self.buf[:nbytes]

    def eof_received(self):
        self.eof.set_result(None)

    def connection_lost(self, exc):
        pass


def test_buffered_protocol_reads_a_bulk_stream(loop, run, kind):
    data = payload(6 * 1024 * 1024 + 3, seed=34)

    async def main():
        async with StreamPair(loop, kind, server_factory=BufferedKeeper) as p:
            p.client.transport.write(data)
            p.client.transport.write_eof()
            await p.server_proto.eof
            assert sha(bytes(p.server_proto.received)) == sha(data)

    run(main(), timeout=40)


class CloseAfter(RecordingProtocol):
    def __init__(self, after, **kwargs):
        super().__init__(**kwargs)
        self.after = after

    def data_received(self, data):
        super().data_received(data)
        if len(self.data) >= self.after and not self.transport.is_closing():
            self.transport.close()


def test_close_from_data_received_while_bulk(loop, run, kind):
    """A bulk stream closed from data_received while its peer still sends:
    connection_lost once, nothing more delivered, the fd released."""

    async def main():
        async with StreamPair(loop, kind,
                              server_factory=lambda: CloseAfter(BULK * 8)) \
                as p:
            ct, srv = p.client.transport, p.server_proto
            chunk = payload(BULK, seed=35)
            while not srv.lost.done():
                if ct.is_closing():
                    break
                ct.write(chunk)
                await asyncio.sleep(0)
            assert await srv.lost is None
            got = len(srv.data)
            await asyncio.sleep(0.05)
            assert len(srv.data) == got
            assert srv.events.count("lost") == 1
            assert "eof" not in srv.events

    run(main(), timeout=40)


class PausesInBursts(RecordingProtocol):
    """Paused from the start; once resumed, pauses after its first chunk
    (resumed in the next iteration) and after every third (resumed 50 ms
    later)."""

    def connection_made(self, transport):
        super().connection_made(transport)
        transport.pause_reading()
        self.chunks = 0

    def data_received(self, data):
        super().data_received(data)
        self.chunks += 1
        if self.chunks == 1:
            self.transport.pause_reading()
            self.loop.call_soon(self.transport.resume_reading)
        elif self.chunks % 3 == 0:
            self.transport.pause_reading()
            self.loop.call_later(0.05, self.transport.resume_reading)


def connected_pair(kind):
    if kind == "unix":
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    return a, b


def test_data_after_a_switch_to_bulk_among_pauses(loop, run, kind):
    """A burst read in one batch switches the stream to bulk while the
    protocol pauses and resumes; what arrives while the rest of the burst
    is still held back is read too (io_uring lost it once: the poll that
    reads a bulk stream reported it while the protocol was paused, and
    nothing read it afterwards)."""
    sizes = {"unix": (256 * 1024, 50_000), "tcp": (512 * 1024, 200_000)}
    first, second = (payload(n, seed=36 + i)
                     for i, n in enumerate(sizes[kind]))

    async def main():
        peer, sock = connected_pair(kind)
        with peer:
            # The whole first part waits in the socket before reading starts.
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            tr, proto = await loop.create_connection(PausesInBursts,
                                                     sock=sock)
            try:
                peer.sendall(first)
                await asyncio.sleep(0.05)
                tr.resume_reading()
                await asyncio.sleep(0.02)
                peer.sendall(second)
                got = await asyncio.wait_for(
                    proto.wait_data(len(first) + len(second)), 10)
                assert sha(got) == sha(first + second)
            finally:
                tr.close()
                await proto.lost

    run(main(), timeout=30)
