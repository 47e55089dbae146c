"""create_unix_server / create_unix_connection: paths and abstract names."""

import asyncio
import errno
import os
import pathlib
import socket
import sys
import stat

import pytest

from helpers.addresses import abstract_name
from helpers.protocols import EchoProtocol, RecordingProtocol


async def unix_roundtrip(loop, path, msg=b"ping"):
    tr, proto = await loop.create_unix_connection(RecordingProtocol, path)
    try:
        tr.write(msg)
        return await proto.wait_data(len(msg))
    finally:
        tr.close()
        await proto.lost


async def close_server(server):
    server.close()
    await server.wait_closed()
    for _ in range(3):
        await asyncio.sleep(0)


@pytest.fixture
def sock_path(tmp_path):
    # Keep it short: sun_path holds 107 bytes.
    p = tmp_path / "s.sock"
    if len(str(p)) > 100:  # pragma: no cover
        pytest.skip("tmp path too long for a Unix socket")
    return str(p)


@pytest.mark.parametrize("as_pathlib", [False, True], ids=["str", "pathlib"])
def test_unix_server_path(loop, run, sock_path, as_pathlib):
    path = pathlib.Path(sock_path) if as_pathlib else sock_path

    async def main():
        server = await loop.create_unix_server(EchoProtocol, path)
        try:
            assert stat.S_ISSOCK(os.stat(sock_path).st_mode)
            assert server.is_serving()
            (s,) = server.sockets
            assert s.family == socket.AF_UNIX
            assert s.getsockname() == sock_path
            assert await unix_roundtrip(loop, path) == b"ping"
        finally:
            await close_server(server)

    run(main())


def test_unix_server_socket_file_on_close(loop, run, sock_path):
    """From Python 3.13, closing the server removes the file it bound
    (create_unix_server(cleanup_socket=True), the default, gh-111246), but
    not a file another server has bound since; before 3.13 it stays."""
    cleans_up = sys.version_info >= (3, 13)

    async def main():
        server = await loop.create_unix_server(EchoProtocol, sock_path)
        await close_server(server)
        assert os.path.exists(sock_path) != cleans_up
        if not cleans_up:
            return
        server = await loop.create_unix_server(EchoProtocol, sock_path,
                                               cleanup_socket=False)
        await close_server(server)
        assert os.path.exists(sock_path)
        # A second server took the path over: the first one leaves it.
        first = await loop.create_unix_server(EchoProtocol, sock_path)
        second = await loop.create_unix_server(EchoProtocol, sock_path)
        await close_server(first)
        assert await unix_roundtrip(loop, sock_path) == b"ping"
        await close_server(second)
        assert not os.path.exists(sock_path)

    run(main())


def test_unix_server_replaces_stale_socket_file(loop, run, sock_path):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(sock_path)
    stale.close()  # the file stays behind, nobody listens
    assert stat.S_ISSOCK(os.stat(sock_path).st_mode)

    async def main():
        with pytest.raises(ConnectionRefusedError):
            await loop.create_unix_connection(asyncio.Protocol, sock_path)
        server = await loop.create_unix_server(EchoProtocol, sock_path)
        try:
            assert await unix_roundtrip(loop, sock_path) == b"ping"
        finally:
            await close_server(server)

    run(main())


def test_unix_server_refuses_to_replace_regular_file(loop, run, sock_path):
    with open(sock_path, "w") as f:
        f.write("not a socket")

    async def main():
        with pytest.raises(OSError) as info:
            await loop.create_unix_server(EchoProtocol, sock_path)
        assert info.value.errno == errno.EADDRINUSE
        with open(sock_path) as f:
            assert f.read() == "not a socket"

    run(main())


def test_unix_server_path_in_use_by_live_server(loop, run, sock_path):
    async def main():
        server = await loop.create_unix_server(EchoProtocol, sock_path)
        try:
            # asyncio removes a socket file before binding, even one that a
            # live server listens on; the new server then owns the path.
            server2 = await loop.create_unix_server(EchoProtocol, sock_path)
            try:
                assert await unix_roundtrip(loop, sock_path) == b"ping"
            finally:
                await close_server(server2)
        finally:
            await close_server(server)

    run(main())


def test_unix_abstract_name(loop, run):
    name = abstract_name("srv")

    async def main():
        server = await loop.create_unix_server(EchoProtocol, name)
        try:
            (s,) = server.sockets
            assert s.getsockname() == name.encode()  # abstract names: bytes
            assert not os.path.exists(name[1:])
            assert await unix_roundtrip(loop, name) == b"ping"
            # bytes form of the same name works too
            assert await unix_roundtrip(loop, name.encode(), b"b") == b"b"
        finally:
            await close_server(server)

    run(main())


def test_unix_abstract_name_in_use(loop, run):
    name = abstract_name("dup")

    async def main():
        server = await loop.create_unix_server(EchoProtocol, name)
        try:
            with pytest.raises(OSError) as info:
                await loop.create_unix_server(EchoProtocol, name)
            assert info.value.errno == errno.EADDRINUSE
        finally:
            await close_server(server)

    run(main())


def test_unix_connection_errors(loop, run, sock_path):
    async def main():
        with pytest.raises(FileNotFoundError):
            await loop.create_unix_connection(asyncio.Protocol, sock_path)
        with pytest.raises(ConnectionRefusedError):
            await loop.create_unix_connection(asyncio.Protocol,
                                              abstract_name("nobody"))
        with pytest.raises(ValueError):
            await loop.create_unix_connection(asyncio.Protocol)  # no path
        s = socket.socket(socket.AF_UNIX)
        try:
            with pytest.raises(ValueError):
                await loop.create_unix_connection(asyncio.Protocol,
                                                  sock_path, sock=s)
        finally:
            s.close()
        tcp = socket.socket()
        try:
            with pytest.raises(ValueError):
                await loop.create_unix_connection(asyncio.Protocol, sock=tcp)
            with pytest.raises(ValueError):
                await loop.create_unix_server(asyncio.Protocol, sock=tcp)
        finally:
            tcp.close()
        with pytest.raises(OSError):
            await loop.create_unix_server(asyncio.Protocol, "/x" * 100)

    run(main())


def test_unix_server_with_sock_and_connection_with_sock(loop, run):
    name = abstract_name("socks")

    async def main():
        lsock = socket.socket(socket.AF_UNIX)
        lsock.bind(name)
        server = await loop.create_unix_server(EchoProtocol, sock=lsock)
        try:
            csock = socket.socket(socket.AF_UNIX)
            csock.setblocking(False)
            await loop.sock_connect(csock, name)
            tr, proto = await loop.create_unix_connection(
                RecordingProtocol, sock=csock)
            tr.write(b"sock")
            assert await proto.wait_data(4) == b"sock"
            tr.close()
            await proto.lost
            await asyncio.sleep(0)
            assert csock.fileno() == -1  # owned and closed by the transport
        finally:
            await close_server(server)
        assert lsock.fileno() == -1

    run(main())


def test_unix_start_serving_false(loop, run):
    name = abstract_name("lazy")

    async def main():
        server = await loop.create_unix_server(EchoProtocol, name,
                                               start_serving=False)
        try:
            assert not server.is_serving()
            await server.start_serving()
            assert server.is_serving()
            assert await unix_roundtrip(loop, name) == b"ping"
        finally:
            await close_server(server)

    run(main())


def test_unix_serve_forever(loop, run):
    name = abstract_name("forever")

    async def main():
        server = await loop.create_unix_server(EchoProtocol, name)
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0)
        assert await unix_roundtrip(loop, name) == b"ping"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not server.is_serving()
        await server.wait_closed()

    run(main())


def test_unix_extra_info(loop, run, sock_path):
    async def main():
        srv_protos = []
        first = loop.create_future()

        def factory():
            p = RecordingProtocol()
            srv_protos.append(p)
            first.done() or first.set_result(p)
            return p

        server = await loop.create_unix_server(factory, sock_path)
        try:
            tr, proto = await loop.create_unix_connection(
                RecordingProtocol, sock_path)
            try:
                assert tr.get_extra_info("peername") == sock_path
                # An unbound client socket has an empty name.
                assert tr.get_extra_info("sockname") in ("", b"")
                await (await first).made
                st = srv_protos[0].transport
                assert st.get_extra_info("sockname") == sock_path
                assert st.get_extra_info("peername") in ("", b"")
                assert st.get_extra_info("socket").family == socket.AF_UNIX
            finally:
                tr.close()
                await proto.lost
                srv_protos[0].transport.close()
                await srv_protos[0].lost
        finally:
            await close_server(server)

    run(main())


def test_unix_streams_api(loop, run, sock_path):
    async def handle(reader, writer):
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_unix_server(handle, sock_path)
        async with server:
            r, w = await asyncio.open_unix_connection(sock_path)
            w.write(b"unix\n")
            assert await r.read() == b"UNIX\n"
            w.close()
            await w.wait_closed()
        await server.wait_closed()
        await asyncio.sleep(0)

    run(main())
