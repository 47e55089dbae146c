"""TLS: ssl= on create_server/create_connection, start_tls, failures."""

import asyncio
import ssl

import pytest

from helpers.addresses import abstract_name
from helpers.certs import LOCALHOST_CERT, LOCALHOST_KEY
from helpers.data import payload, sha
from helpers.protocols import EchoProtocol, RecordingProtocol


@pytest.fixture(scope="module")
def certs():
    return LOCALHOST_CERT, LOCALHOST_KEY


@pytest.fixture
def server_ctx(certs):
    certfile, keyfile = certs
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


@pytest.fixture
def client_ctx(certs):
    certfile, _ = certs
    ctx = ssl.create_default_context(cafile=certfile)
    return ctx


async def close_server(server):
    server.close()
    await server.wait_closed()
    for _ in range(3):
        await asyncio.sleep(0)


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_tls_echo(loop, run, server_ctx, client_ctx, family):
    data = payload(1024 * 1024, seed=61)

    async def main():
        if family == "tcp":
            server = await loop.create_server(EchoProtocol, "127.0.0.1", 0,
                                              ssl=server_ctx)
            port = server.sockets[0].getsockname()[1]
            tr, proto = await loop.create_connection(
                RecordingProtocol, "127.0.0.1", port, ssl=client_ctx,
                server_hostname="localhost")
        else:
            name = abstract_name("tls")
            server = await loop.create_unix_server(EchoProtocol, name,
                                                   ssl=server_ctx)
            tr, proto = await loop.create_unix_connection(
                RecordingProtocol, name, ssl=client_ctx,
                server_hostname="localhost")
        try:
            sslobj = tr.get_extra_info("ssl_object")
            assert isinstance(sslobj, (ssl.SSLObject, ssl.SSLSocket))
            assert tr.get_extra_info("sslcontext") is client_ctx
            assert tr.get_extra_info("peercert")["subject"]
            assert tr.get_extra_info("cipher")
            assert tr.get_extra_info("socket") is not None
            tr.write(data)
            got = await proto.wait_data(len(data))
            assert sha(got) == sha(data)
            tr.close()
            assert await proto.lost is None
            assert proto.events[0] == "made"
        finally:
            await close_server(server)

    run(main(), timeout=30)


def test_tls_streams(loop, run, server_ctx, client_ctx):
    async def handle(r, w):
        w.write((await r.readline()).upper())
        await w.drain()
        w.close()
        await w.wait_closed()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0,
                                            ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        async with server:
            r, w = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx,
                server_hostname="localhost")
            w.write(b"secret\n")
            assert await r.read() == b"SECRET\n"
            w.close()
            await w.wait_closed()
        await server.wait_closed()
        await asyncio.sleep(0)

    run(main(), timeout=30)


def test_tls_verification_failure(loop, run, server_ctx):
    """The client does not trust the self-signed certificate."""
    async def main():
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0,
                                          ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                await loop.create_connection(
                    asyncio.Protocol, "127.0.0.1", port,
                    ssl=ssl.create_default_context(),
                    server_hostname="localhost")
        finally:
            await close_server(server)

    run(main(), timeout=30)


def test_tls_hostname_mismatch(loop, run, server_ctx, client_ctx):
    async def main():
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0,
                                          ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                await loop.create_connection(
                    asyncio.Protocol, "127.0.0.1", port, ssl=client_ctx,
                    server_hostname="wrong.example")
        finally:
            await close_server(server)

    run(main(), timeout=30)


def test_tls_handshake_timeout(loop, run, client_ctx):
    """A server that accepts but never speaks TLS: the client handshake
    times out with ssl_handshake_timeout."""
    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises((asyncio.TimeoutError, ConnectionAbortedError)):
                await loop.create_connection(
                    asyncio.Protocol, "127.0.0.1", port, ssl=client_ctx,
                    server_hostname="localhost", ssl_handshake_timeout=0.2)
        finally:
            await close_server(server)

    run(main(), timeout=30)


def test_start_tls_upgrade(loop, run, server_ctx, client_ctx):
    """Plain text first, then both sides upgrade the same connection."""
    async def main():
        server_done = loop.create_future()

        async def handle(r, w):
            try:
                assert await r.readline() == b"STARTTLS\n"
                w.write(b"OK\n")
                await w.drain()
                await w.start_tls(server_ctx)
                line = await r.readline()
                w.write(b"secure:" + line)
                await w.drain()
                w.close()
                await w.wait_closed()
                server_done.set_result(None)
            except BaseException as exc:  # pragma: no cover
                server_done.set_exception(exc)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"STARTTLS\n")
            assert await r.readline() == b"OK\n"
            await w.start_tls(client_ctx, server_hostname="localhost")
            assert w.get_extra_info("ssl_object") is not None
            w.write(b"hello\n")
            assert await r.read() == b"secure:hello\n"
            w.close()
            await w.wait_closed()
            await server_done
        await server.wait_closed()
        await asyncio.sleep(0)

    run(main(), timeout=30)


def test_loop_start_tls_protocol_level(loop, run, server_ctx, client_ctx):
    async def main():
        srv_tr_fut = loop.create_future()

        class Srv(RecordingProtocol):
            def connection_made(self, transport):
                super().connection_made(transport)
                srv_tr_fut.set_result((transport, self))

        server = await loop.create_server(Srv, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            tr, proto = await loop.create_connection(
                RecordingProtocol, "127.0.0.1", port)
            str_, sproto = await srv_tr_fut
            s_up = asyncio.ensure_future(loop.start_tls(
                str_, sproto, server_ctx, server_side=True))
            c_tls = await loop.start_tls(tr, proto, client_ctx,
                                         server_hostname="localhost")
            s_tls = await s_up
            assert c_tls.get_extra_info("ssl_object") is not None
            # The old transports are no longer usable for the protocol.
            c_tls.write(b"over tls")
            assert await sproto.wait_data(8) == b"over tls"
            s_tls.write(b"back")
            assert await proto.wait_data(4) == b"back"
            c_tls.close()
            await proto.lost
            s_tls.close()
            await sproto.lost
        finally:
            await close_server(server)

    run(main(), timeout=30)


def test_start_tls_bad_arguments(loop, run, client_ctx):
    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            tr, proto = await loop.create_connection(
                RecordingProtocol, "127.0.0.1", port)
            with pytest.raises(TypeError):
                await loop.start_tls(tr, proto, "not a context")
            tr.close()
            await proto.lost
        finally:
            await close_server(server)

    run(main(), timeout=30)


def test_tls_no_half_close(loop, run, server_ctx, client_ctx):
    async def main():
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0,
                                          ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            tr, proto = await loop.create_connection(
                RecordingProtocol, "127.0.0.1", port, ssl=client_ctx,
                server_hostname="localhost")
            assert tr.can_write_eof() is False
            tr.close()
            await proto.lost
        finally:
            await close_server(server)

    run(main(), timeout=30)


def test_tls_sendfile_falls_back(loop, run, server_ctx, client_ctx,
                                 tmp_path):
    data = payload(600_000, seed=62)
    f = tmp_path / "tls.bin"
    f.write_bytes(data)

    async def main():
        srv = loop.create_future()

        class Srv(RecordingProtocol):
            def connection_made(self, transport):
                super().connection_made(transport)
                srv.done() or srv.set_result(self)

        server = await loop.create_server(Srv, "127.0.0.1", 0,
                                          ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            tr, proto = await loop.create_connection(
                RecordingProtocol, "127.0.0.1", port, ssl=client_ctx,
                server_hostname="localhost")
            sproto = await srv
            with open(f, "rb") as fh:
                with pytest.raises(RuntimeError):
                    await loop.sendfile(tr, fh, fallback=False)
                assert await loop.sendfile(tr, fh) == len(data)
            got = await sproto.wait_data(len(data))
            assert sha(got) == sha(data)
            tr.close()
            await proto.lost
            await sproto.lost
        finally:
            await close_server(server)

    run(main(), timeout=30)
