"""Load-shaped behaviour tests (never timed): thousands of connections,
bursts that outrun any receive-buffer pool, closing with operations in
flight.  On io_uring these reach CQ overflow, provided-buffer exhaustion
(ENOBUFS) and multishot re-arming; every backend must simply lose nothing."""

import asyncio
import resource

import pytest

from helpers.addresses import abstract_name
from helpers.data import payload
from helpers.protocols import EchoProtocol, RecordingProtocol


def _need_fds(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        if hard == resource.RLIM_INFINITY or hard >= n:
            resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))
            return soft
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {n}")
    return None


@pytest.mark.timeout(120)
def test_thousands_of_connections_at_once(loop, run):
    """2000 clients connect, then all send at the same moment and wait for
    their echo: far more completions than one CQ round holds."""
    n = 2000
    old = _need_fds(2 * n + 200)

    async def main():
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0,
                                          backlog=4096)
        port = server.sockets[0].getsockname()[1]
        conns = []
        try:
            for i in range(0, n, 200):
                conns += await asyncio.gather(*(
                    loop.create_connection(RecordingProtocol, "127.0.0.1",
                                           port)
                    for _ in range(min(200, n - i))))
            msgs = [b"conn-%05d|" % i * 4 for i in range(n)]
            for (tr, _), m in zip(conns, msgs):
                tr.write(m)
            got = await asyncio.gather(*(p.wait_data(len(m))
                                         for (_, p), m in zip(conns, msgs)))
            assert got == msgs
        finally:
            for tr, _ in conns:
                tr.close()
            await asyncio.gather(*(p.lost for _, p in conns))
            server.close()
            await server.wait_closed()
            for _ in range(5):
                await asyncio.sleep(0)

    try:
        run(main(), timeout=110)
    finally:
        if old is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE,
                               (old, resource.getrlimit(
                                   resource.RLIMIT_NOFILE)[1]))


@pytest.mark.timeout(120)
def test_burst_on_many_connections(loop, run):
    """300 connections each receive 256 KiB while the server protocol is
    slow to start reading: any shared receive-buffer pool runs dry and must
    recover without losing or reordering a byte."""
    n, size = 300, 256 * 1024
    blobs = [payload(size, seed=i) for i in range(8)]

    async def main():
        name = abstract_name("burst")
        protos = []
        all_made = loop.create_future()

        def factory():
            p = RecordingProtocol()
            protos.append(p)
            if len(protos) == n:
                all_made.set_result(None)
            return p

        server = await loop.create_unix_server(factory, name, backlog=1024)
        clients = []
        try:
            clients = await asyncio.gather(*(
                loop.create_unix_connection(RecordingProtocol, name)
                for _ in range(n)))
            await all_made
            await asyncio.gather(*(p.made for p in protos))
            for p in protos:
                p.transport.pause_reading()
            for i, (tr, _) in enumerate(clients):
                tr.write(blobs[i % 8])
            await asyncio.sleep(0.05)
            for p in protos:
                p.transport.resume_reading()
            results = await asyncio.gather(*(p.wait_data(size)
                                             for p in protos))
            expected = sorted(blobs[i % 8] for i in range(n))
            assert sorted(results) == expected
        finally:
            for tr, _ in clients:
                tr.abort()
            for p in protos:
                if p.transport is not None:
                    p.transport.abort()
            await asyncio.gather(*(p.lost for _, p in clients),
                                 *(p.lost for p in protos if p.transport))
            server.close()
            await server.wait_closed()
            for _ in range(5):
                await asyncio.sleep(0)

    run(main(), timeout=110)


@pytest.mark.timeout(60)
def test_close_and_abort_with_io_in_flight(loop, run):
    """Connections closed or aborted while both directions are busy: each
    gets connection_lost exactly once, nothing crashes, no fd leaks."""
    n = 100
    chunk = b"f" * (128 * 1024)

    async def main():
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conns = await asyncio.gather(*(
            loop.create_connection(RecordingProtocol, "127.0.0.1", port)
            for _ in range(n)))
        try:
            for tr, _ in conns:
                for _ in range(8):
                    tr.write(chunk)
            await asyncio.sleep(0)
            for i, (tr, _) in enumerate(conns):
                if i % 3 == 0:
                    tr.abort()
                elif i % 3 == 1:
                    tr.close()
                # else: left to the server side / teardown
            lost = await asyncio.gather(*(p.lost for _, p in conns[:]
                                          if p.transport.is_closing()))
            for exc in lost:
                assert exc is None or isinstance(exc, ConnectionError)
        finally:
            for tr, p in conns:
                if not p.lost.done():
                    tr.abort()
            await asyncio.gather(*(p.lost for _, p in conns))
            for _, p in conns:
                assert p.events.count("lost") == 1
                assert p.events[-1] == "lost"
            server.close()
            await server.wait_closed()
            for _ in range(10):
                await asyncio.sleep(0)

    run(main(), timeout=50)


def test_many_pending_sock_recv_cancelled(loop, run):
    """Pending receive operations cancelled en masse, sockets then closed:
    no stray completion may touch them afterwards."""
    import socket

    async def main():
        pairs = [socket.socketpair() for _ in range(100)]
        for a, b in pairs:
            a.setblocking(False)
            b.setblocking(False)
        futs = [asyncio.ensure_future(loop.sock_recv(a, 100))
                for a, _ in pairs]
        await asyncio.sleep(0)
        for f in futs:
            f.cancel()
        await asyncio.gather(*futs, return_exceptions=True)
        for a, b in pairs:
            b.send(b"late")
            a.close()
            b.close()
        for _ in range(10):
            await asyncio.sleep(0)
        # Reuse the same fd numbers for fresh sockets: they must work.
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        with a, b:
            b.send(b"fresh")
            assert await loop.sock_recv(a, 100) == b"fresh"

    run(main())
