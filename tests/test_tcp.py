"""create_connection / create_server / connect_accepted_socket over TCP."""

import asyncio
import sys
import errno
import socket

import pytest

from helpers.addresses import HAS_IPV6
from helpers.protocols import (EchoProtocol, RecordingProtocol,
                               echo_factory_failing_first)

needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback")


async def echo_roundtrip(loop, host, port, msg=b"ping", **kw):
    tr, proto = await loop.create_connection(RecordingProtocol, host, port,
                                             **kw)
    try:
        tr.write(msg)
        return await proto.wait_data(len(msg)), tr.get_extra_info("peername")
    finally:
        tr.close()
        await proto.lost


async def close_server(server):
    server.close()
    await server.wait_closed()
    for _ in range(3):
        await asyncio.sleep(0)


@pytest.mark.parametrize("host", [
    "127.0.0.1",
    pytest.param("::1", marks=needs_ipv6),
])
def test_create_server_echo(loop, run, host):
    async def main():
        server = await loop.create_server(EchoProtocol, host, 0)
        try:
            assert isinstance(server, asyncio.AbstractServer)
            assert server.get_loop() is loop
            assert server.is_serving()
            socks = server.sockets
            assert len(socks) == 1
            port = socks[0].getsockname()[1]
            data, peer = await echo_roundtrip(loop, host, port)
            assert data == b"ping"
            assert peer[:2] == (host, port)
        finally:
            await close_server(server)
        assert not server.is_serving()

    run(main())


def test_create_server_multiple_hosts(loop, run):
    hosts = ["127.0.0.1", "::1"] if HAS_IPV6 else ["127.0.0.1", "127.0.0.2"]

    async def main():
        server = await loop.create_server(EchoProtocol, hosts, 0)
        try:
            socks = server.sockets
            assert len(socks) == 2
            bound = sorted(s.getsockname()[0] for s in socks)
            assert bound == sorted(hosts)
            for s in socks:
                host, port = s.getsockname()[:2]
                data, _ = await echo_roundtrip(loop, host, port, b"multi")
                assert data == b"multi"
        finally:
            await close_server(server)

    run(main())


@needs_ipv6
def test_create_server_dual_stack_host_none(loop, run):
    """host=None binds every address family (0.0.0.0 and ::); the IPv6
    socket is IPV6_V6ONLY so both can share a port."""
    probe = socket.socket(socket.AF_INET6)
    probe.bind(("::", 0))
    port = probe.getsockname()[1]
    probe.close()

    async def main():
        try:
            server = await loop.create_server(EchoProtocol, None, port)
        except OSError as exc:  # pragma: no cover - port raced away
            pytest.skip(f"port {port} taken meanwhile: {exc}")
        try:
            fams = sorted(s.family for s in server.sockets)
            assert fams == sorted([socket.AF_INET, socket.AF_INET6])
            for s in server.sockets:
                assert s.getsockname()[1] == port
                if s.family == socket.AF_INET6:
                    assert s.getsockopt(socket.IPPROTO_IPV6,
                                        socket.IPV6_V6ONLY) == 1
            for host in ("127.0.0.1", "::1"):
                data, _ = await echo_roundtrip(loop, host, port, b"dual")
                assert data == b"dual"
        finally:
            await close_server(server)

    run(main())


def test_create_server_reuse_port(loop, run):
    async def main():
        s1 = await loop.create_server(EchoProtocol, "127.0.0.1", 0,
                                      reuse_port=True)
        port = s1.sockets[0].getsockname()[1]
        try:
            assert s1.sockets[0].getsockopt(socket.SOL_SOCKET,
                                            socket.SO_REUSEPORT) != 0
            s2 = await loop.create_server(EchoProtocol, "127.0.0.1", port,
                                          reuse_port=True)
            try:
                assert s2.sockets[0].getsockname()[1] == port
                for _ in range(4):
                    data, _ = await echo_roundtrip(loop, "127.0.0.1", port)
                    assert data == b"ping"
            finally:
                await close_server(s2)
        finally:
            await close_server(s1)

    run(main())


def test_create_server_address_in_use(loop, run):
    async def main():
        s1 = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
        port = s1.sockets[0].getsockname()[1]
        try:
            with pytest.raises(OSError) as info:
                await loop.create_server(EchoProtocol, "127.0.0.1", port)
            assert info.value.errno == errno.EADDRINUSE
        finally:
            await close_server(s1)

    run(main())


def test_create_server_sets_reuse_address(loop, run):
    async def main():
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
        try:
            assert server.sockets[0].getsockopt(
                socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
        finally:
            await close_server(server)

    run(main())


def test_create_server_start_serving_false(loop, run):
    async def main():
        made = []
        server = await loop.create_server(
            lambda: made.append(1) or EchoProtocol(), "127.0.0.1", 0,
            start_serving=False)
        try:
            assert not server.is_serving()
            port = server.sockets[0].getsockname()[1]
            await server.start_serving()
            assert server.is_serving()
            await server.start_serving()  # idempotent
            data, _ = await echo_roundtrip(loop, "127.0.0.1", port)
            assert data == b"ping"
            assert made == [1]
        finally:
            await close_server(server)

    run(main())


def test_serve_forever_and_cancel(loop, run):
    async def main():
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0,
                                          start_serving=False)
        port = server.sockets[0].getsockname()[1]
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0)
        assert server.is_serving()
        data, _ = await echo_roundtrip(loop, "127.0.0.1", port)
        assert data == b"ping"
        with pytest.raises(RuntimeError):
            await server.serve_forever()  # already being awaited
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Cancelling serve_forever closes the server.
        assert not server.is_serving()
        await server.wait_closed()
        with pytest.raises(RuntimeError):
            await server.serve_forever()  # closed
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)

    run(main())


def test_server_close_keeps_existing_connections(loop, run):
    """Server.close() stops listening; accepted connections stay open."""
    async def main():
        protos = []

        def factory():
            p = EchoProtocol()
            protos.append(p)
            return p

        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, proto = await loop.create_connection(RecordingProtocol,
                                                 "127.0.0.1", port)
        closed = None
        try:
            tr.write(b"one")
            await proto.wait_data(3)
            server.close()
            assert not server.is_serving()
            server.close()  # idempotent
            closed = asyncio.ensure_future(server.wait_closed())
            await asyncio.sleep(0.05)
            if sys.version_info >= (3, 12, 1):
                # wait_closed() waits for the connections as well (gh-104344;
                # 3.11 returned once the listening sockets were closed).
                assert not closed.done()
            tr.write(b"two")
            assert await proto.wait_data(6) == b"onetwo"
            with pytest.raises(ConnectionRefusedError):
                await loop.create_connection(asyncio.Protocol,
                                             "127.0.0.1", port)
        finally:
            tr.close()
            await proto.lost
            if closed is not None:
                # the server side saw EOF and closed: the last connection
                await asyncio.wait_for(closed, 5)

    run(main())


def test_server_async_with(loop, run):
    async def main():
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
        async with server:
            assert server.is_serving()
        assert not server.is_serving()
        await server.wait_closed()

    run(main())


def test_create_server_with_sock(loop, run):
    async def main():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = await loop.create_server(EchoProtocol, sock=sock)
        try:
            data, _ = await echo_roundtrip(loop, "127.0.0.1", port)
            assert data == b"ping"
        finally:
            await close_server(server)
        # The server owned the socket and closed it.
        assert sock.fileno() == -1

    run(main())


def test_create_server_bad_arguments(loop, run):
    async def main():
        with pytest.raises(ValueError):
            await loop.create_server(EchoProtocol)  # neither host nor sock
        sock = socket.socket()
        try:
            with pytest.raises(ValueError):
                await loop.create_server(EchoProtocol, "127.0.0.1", 0,
                                         sock=sock)
            with pytest.raises(ValueError):
                await loop.create_server(EchoProtocol, "127.0.0.1", 0,
                                         ssl_handshake_timeout=1)
        finally:
            sock.close()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            with pytest.raises(ValueError):
                await loop.create_server(EchoProtocol, sock=udp)
        finally:
            udp.close()

    run(main())


def test_create_connection_refused(loop, run):
    tmp = socket.socket()
    tmp.bind(("127.0.0.1", 0))
    port = tmp.getsockname()[1]

    async def main():
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)

    try:
        run(main())
    finally:
        tmp.close()


def test_create_connection_bad_arguments(loop, run):
    async def main():
        with pytest.raises(ValueError):
            await loop.create_connection(asyncio.Protocol)
        sock = socket.socket()
        try:
            with pytest.raises(ValueError):
                await loop.create_connection(asyncio.Protocol, "127.0.0.1",
                                             80, sock=sock)
            with pytest.raises(ValueError):
                await loop.create_connection(asyncio.Protocol, "127.0.0.1",
                                             80, ssl_handshake_timeout=1)
            with pytest.raises(ValueError):
                await loop.create_connection(asyncio.Protocol, "127.0.0.1",
                                             80, server_hostname="x")
        finally:
            sock.close()
        with pytest.raises(socket.gaierror):
            await loop.create_connection(asyncio.Protocol,
                                         "no.such.host.invalid", 80)

    run(main())


def test_create_connection_local_addr(loop, run):
    async def main():
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        local_port = probe.getsockname()[1]
        probe.close()
        try:
            tr, proto = await loop.create_connection(
                RecordingProtocol, "127.0.0.1", port,
                local_addr=("127.0.0.1", local_port))
            try:
                assert tr.get_extra_info("sockname") == (
                    "127.0.0.1", local_port)
            finally:
                tr.close()
                await proto.lost
        finally:
            await close_server(server)

    run(main())


def test_create_connection_with_connected_sock(loop, run):
    async def main():
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            tr, proto = await loop.create_connection(RecordingProtocol,
                                                     sock=sock)
            assert tr.get_extra_info("socket").fileno() == sock.fileno()
            tr.write(b"via-sock")
            assert await proto.wait_data(8) == b"via-sock"
            tr.close()
            await proto.lost
            await asyncio.sleep(0)
            # The transport owned the socket and closed it.
            assert sock.fileno() == -1
        finally:
            sock.close()
            await close_server(server)

    run(main())


def test_create_connection_multiple_addresses_fallback(loop, run):
    """'localhost' may resolve to ::1 and 127.0.0.1; a server on only one
    family must still be reached."""
    async def main():
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            data, peer = await echo_roundtrip(loop, "localhost", port)
            assert data == b"ping"
            assert peer[0] == "127.0.0.1"
        finally:
            await close_server(server)

    run(main())


def test_create_connection_happy_eyeballs(loop, run):
    async def main():
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            data, _ = await echo_roundtrip(loop, "localhost", port,
                                           happy_eyeballs_delay=0.05)
            assert data == b"ping"
        finally:
            await close_server(server)

    run(main())


def test_connect_accepted_socket(loop, run):
    async def main():
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        lsock.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        try:
            accept = asyncio.ensure_future(loop.sock_accept(lsock))
            await loop.sock_connect(client, lsock.getsockname())
            conn, _ = await accept
            tr, proto = await loop.connect_accepted_socket(
                RecordingProtocol, conn)
            assert isinstance(proto, RecordingProtocol)
            await proto.made
            await loop.sock_sendall(client, b"hello")
            assert await proto.wait_data(5) == b"hello"
            tr.write(b"reply")
            got = b""
            while len(got) < 5:
                got += await loop.sock_recv(client, 100)
            assert got == b"reply"
            tr.close()
            await proto.lost
        finally:
            client.close()
            lsock.close()

    run(main())


def test_connect_accepted_socket_rejects_dgram(loop, run):
    async def main():
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            with pytest.raises(ValueError):
                await loop.connect_accepted_socket(asyncio.Protocol, udp)
        finally:
            udp.close()

    run(main())


@pytest.mark.allow_loop_errors
def test_protocol_factory_raises_server_survives(loop, run):
    factory = echo_factory_failing_first(RuntimeError, "factory failed")

    async def main():
        seen = []
        # asyncio reports a failed protocol factory only in debug mode.
        loop.set_debug(True)
        # Keep only the message: holding the exception would keep its
        # traceback, and with it the dropped connection, alive.
        loop.set_exception_handler(
            lambda lp, ctx: seen.append(ctx.get("message")))
        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            tr, proto = await loop.create_connection(RecordingProtocol,
                                                     "127.0.0.1", port)
            # The failed connection is dropped.  (Stock asyncio does not
            # close the accepted socket itself; it goes when the garbage
            # collector breaks the traceback cycle, hence gc.collect().)
            import gc
            for _ in range(500):
                if proto.lost.done():
                    break
                gc.collect()
                await asyncio.sleep(0.01)
            exc = await proto.lost
            assert exc is None or isinstance(exc, ConnectionResetError)
            data, _ = await echo_roundtrip(loop, "127.0.0.1", port)
            assert data == b"ping"
            assert seen, "the loop's exception handler was not told"
        finally:
            await close_server(server)

    run(main())


def test_streams_api(loop, run):
    async def handle(reader, writer):
        line = await reader.readline()
        writer.write(line.upper())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"hello streams\n")
            await w.drain()
            assert await r.read() == b"HELLO STREAMS\n"
            w.close()
            await w.wait_closed()
        await server.wait_closed()
        await asyncio.sleep(0)

    run(main())


def test_nodelay_on_every_tcp_stream(loop, run, request):
    """TCP_NODELAY is on for every TCP transport, also one made from a
    socket created with proto 0 (socket.socket(), uvicorn's worker
    sockets), which asyncio leaves with Nagle's algorithm on."""
    from helpers.loops import stock_asyncio_differs
    stock_asyncio_differs(request, reason=(
        "asyncio sets TCP_NODELAY only when sock.proto is IPPROTO_TCP"))

    async def main():
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)   # proto 0
        sock.setblocking(False)
        await loop.sock_connect(sock, addr)
        tr, proto = await loop.create_connection(RecordingProtocol, sock=sock)
        try:
            s = tr.get_extra_info("socket")
            assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            tr.close()
            await proto.lost
            server.close()
            await server.wait_closed()

    run(main())


def test_peername_of_a_client_that_reset_before_accept(loop, run):
    """A client that connects and resets before the server accepts it: in
    connection_made, get_extra_info('peername') is still the address
    accept() returned (getpeername() fails by then; the kernel keeps the
    address, SO_PEERNAME reads it)."""
    import struct
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    client = socket.socket()
    client.connect(listener.getsockname())
    client_addr = client.getsockname()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                      struct.pack("ii", 1, 0))
    client.close()                      # RST, still in the accept queue

    async def main():
        seen = loop.create_future()

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                if not seen.done():
                    seen.set_result(transport.get_extra_info("peername"))

        server = await loop.create_server(P, sock=listener)
        try:
            assert await asyncio.wait_for(seen, 5) == client_addr
        finally:
            server.close()
            await server.wait_closed()

    run(main())
