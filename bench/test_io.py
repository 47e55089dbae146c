"""Socket I/O inside one loop: both ends of every connection live on the loop
being measured, over Unix sockets (no TCP stack noise)."""
import asyncio
import os
import socket
import tempfile

import pytest

N_WRITES = 10000
N_ECHO = 2000
N_STREAMS = 1000
N_ACCEPT = 200
MSG = b"x" * 64
SENDFILE_BYTES = 32 << 20


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class Sink(asyncio.Protocol):
    """Counts bytes; resolves `waiter` once `expect` bytes arrived."""

    def __init__(self, loop):
        self.loop = loop
        self.got = 0
        self.expect = None
        self.waiter = None

    def wait_for(self, total):
        self.expect = total
        self.waiter = self.loop.create_future()
        if self.got >= total:
            self.waiter.set_result(None)
        return self.waiter

    def data_received(self, data):
        self.got += len(data)
        if self.waiter and not self.waiter.done() and self.got >= self.expect:
            self.waiter.set_result(None)


class PingClient(asyncio.Protocol):
    def __init__(self, loop):
        self.loop = loop
        self.buf = 0
        self.waiter = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += len(data)
        if self.buf >= len(MSG):
            self.buf -= len(MSG)
            self.waiter.set_result(None)

    async def roundtrip(self):
        self.waiter = self.loop.create_future()
        self.transport.write(MSG)
        await self.waiter


@pytest.fixture
def sock_path():
    with tempfile.TemporaryDirectory(prefix="fsb-") as d:
        yield os.path.join(d, "s.sock")


def connected_pair(loop, reader_factory):
    """(writer transport, reader protocol) over a socketpair, both on loop."""
    a, b = socket.socketpair()

    async def setup():
        wt, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        _, rp = await loop.create_connection(reader_factory, sock=b)
        return wt, rp
    return loop.run_until_complete(setup())


def test_small_transport_write(loop, bench_loop):
    """N x 64-byte transport.write(), until the peer has read them all."""
    wt, sink = connected_pair(loop, lambda: Sink(loop))
    sent = [0]

    async def batch():
        for _ in range(N_WRITES):
            wt.write(MSG)
        sent[0] += N_WRITES * len(MSG)
        await sink.wait_for(sent[0])
    try:
        bench_loop(batch, N_WRITES)
    finally:
        wt.close()
        loop.run_until_complete(asyncio.sleep(0))


def test_echo_roundtrip(loop, bench_loop, sock_path):
    """Protocol echo server and client: N sequential 64-byte round trips."""
    async def setup():
        server = await loop.create_unix_server(Echo, sock_path)
        _, client = await loop.create_unix_connection(lambda: PingClient(loop), sock_path)
        return server, client
    server, client = loop.run_until_complete(setup())

    async def batch():
        for _ in range(N_ECHO):
            await client.roundtrip()
    try:
        bench_loop(batch, N_ECHO)
    finally:
        client.transport.close()
        server.close()
        loop.run_until_complete(server.wait_closed())


def test_streams_roundtrip(loop, bench_loop, sock_path):
    """asyncio streams (StreamReader/StreamWriter) echo: N round trips."""
    async def handle(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def setup():
        server = await asyncio.start_unix_server(handle, sock_path)
        reader, writer = await asyncio.open_unix_connection(sock_path)
        return server, reader, writer
    server, reader, writer = loop.run_until_complete(setup())

    async def batch():
        for _ in range(N_STREAMS):
            writer.write(MSG)
            await writer.drain()
            await reader.readexactly(len(MSG))
    try:
        bench_loop(batch, N_STREAMS)
    finally:
        writer.close()
        loop.run_until_complete(writer.wait_closed())
        server.close()
        loop.run_until_complete(server.wait_closed())


N_SOCK = 2000


def test_sock_methods_roundtrip(loop, bench_loop):
    """loop.sock_sendall + loop.sock_recv on a socket pair: N 64-byte round
    trips (readiness calls on epoll/asyncio/uvloop, completion operations on
    io_uring)."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)

    async def echo():
        while data := await loop.sock_recv(b, 65536):
            await loop.sock_sendall(b, data)

    async def batch():
        for _ in range(N_SOCK):
            await loop.sock_sendall(a, MSG)
            await loop.sock_recv(a, 65536)
    task = loop.create_task(echo())
    try:
        bench_loop(batch, N_SOCK)
    finally:
        a.close()
        loop.run_until_complete(task)
        b.close()


def test_sock_datagram_roundtrip(loop, bench_loop):
    """loop.sock_sendto + loop.sock_recvfrom over UDP: N round trips."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.setblocking(False)
        try:
            loop.run_until_complete(loop.sock_sendto(probe, b"", ("127.0.0.1", 9)))
        except NotImplementedError:
            pytest.skip(f"{type(loop).__module__} has no sock_sendto()")
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (a, b):
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
    addr_b = b.getsockname()

    async def echo():
        while True:
            data, addr = await loop.sock_recvfrom(b, 65536)
            if data == b"stop":
                return
            await loop.sock_sendto(b, data, addr)

    async def batch():
        for _ in range(N_SOCK):
            await loop.sock_sendto(a, MSG, addr_b)
            await loop.sock_recvfrom(a, 65536)
    task = loop.create_task(echo())
    try:
        bench_loop(batch, N_SOCK)
    finally:
        a.sendto(b"stop", addr_b)
        loop.run_until_complete(task)
        a.close()
        b.close()


def test_accept_rate(loop, bench_loop, sock_path):
    """N connect + accept + close, up to 50 at a time."""
    accepted = [0]

    class Counter(asyncio.Protocol):
        def connection_made(self, transport):
            accepted[0] += 1
            transport.close()

    server = loop.run_until_complete(
        loop.create_unix_server(Counter, sock_path, backlog=1024))

    async def one(sem):
        async with sem:
            t, _ = await loop.create_unix_connection(asyncio.Protocol, sock_path)
            t.close()

    async def batch():
        start = accepted[0]
        sem = asyncio.Semaphore(50)
        await asyncio.gather(*(one(sem) for _ in range(N_ACCEPT)))
        while accepted[0] - start < N_ACCEPT:
            await asyncio.sleep(0)
    try:
        bench_loop(batch, N_ACCEPT)
    finally:
        server.close()
        loop.run_until_complete(server.wait_closed())


def test_sendfile(loop, bench_loop, tmp_path):
    """loop.sendfile() of a 32 MiB file to a socket peer that counts bytes."""
    if type(loop).sendfile is asyncio.AbstractEventLoop.sendfile:
        pytest.skip(f"{type(loop).__module__} does not implement loop.sendfile()")
    path = tmp_path / "payload.bin"
    path.write_bytes(os.urandom(1 << 20) * (SENDFILE_BYTES >> 20))
    wt, sink = connected_pair(loop, lambda: Sink(loop))
    sent = [0]

    async def batch():
        with open(path, "rb") as f:
            n = await loop.sendfile(wt, f)
        assert n == SENDFILE_BYTES
        sent[0] += n
        await sink.wait_for(sent[0])
    try:
        bench_loop(batch, 1, rounds=5, bytes=SENDFILE_BYTES)
    finally:
        wt.close()
        loop.run_until_complete(asyncio.sleep(0))
