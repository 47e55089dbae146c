"""Stream transport semantics, on TCP and Unix sockets."""

import asyncio
import os
import socket

import pytest

from helpers.data import payload, sha
from helpers.loops import stock_asyncio_differs
from helpers.protocols import RecordingProtocol
from helpers.streams import STREAM_KINDS, StreamPair


@pytest.fixture(params=STREAM_KINDS)
def kind(request):
    return request.param


# ---------------------------------------------------------------------------
# Basic I/O and callback order
# ---------------------------------------------------------------------------

def test_write_and_receive(loop, run, kind):
    async def main():
        async with StreamPair(loop, kind) as p:
            p.client.transport.write(b"hello ")
            p.client.transport.write(bytearray(b"world"))
            p.client.transport.write(memoryview(b"!!!"))
            got = await p.server_proto.wait_data(14)
            assert got == b"hello world!!!"
            p.server_proto.transport.write(b"back")
            assert await p.client.wait_data(4) == b"back"

    run(main())


def test_writelines(loop, run, kind):
    async def main():
        async with StreamPair(loop, kind) as p:
            p.client.transport.writelines(
                [b"a", bytearray(b"bc"), memoryview(b"def")])
            p.client.transport.writelines(iter([b"g", b"h"]))
            assert await p.server_proto.wait_data(8) == b"abcdefgh"

    run(main())


def test_write_empty_is_noop(loop, run, kind):
    async def main():
        async with StreamPair(loop, kind) as p:
            p.client.transport.write(b"")
            p.client.transport.write(b"x")
            assert await p.server_proto.wait_data(1) == b"x"
            assert p.client.transport.get_write_buffer_size() == 0

    run(main())


def test_write_rejects_non_bytes(loop, run, kind):
    async def main():
        async with StreamPair(loop, kind) as p:
            with pytest.raises(TypeError):
                p.client.transport.write("text")
            with pytest.raises(TypeError):
                p.client.transport.write(12)

    run(main())


def test_write_takes_bytes_subclasses(loop, run, kind):
    class Tagged(bytes):
        pass

    async def main():
        async with StreamPair(loop, kind) as p:
            p.client.transport.write(Tagged(b"tagged"))
            p.client.transport.writelines([Tagged(b"-"), b"more"])
            assert await p.server_proto.wait_data(11) == b"tagged-more"

    run(main())


def test_mutable_buffer_may_be_reused_after_write(loop, run, kind, request):
    """asyncio semantics: write() copies what it cannot send at once."""
    stock_asyncio_differs(request, since=(3, 12), reason=(
        "CPython 3.12's selector transport keeps a reference to a bytearray "
        "it could not send at once instead of a copy (gh-91166, zero-copy "
        "writes with sendmsg)"))
    async def main():
        async with StreamPair(loop, kind) as p:
            p.server_proto.transport.pause_reading()
            buf = bytearray(b"A" * (4 * 1024 * 1024))
            p.client.transport.write(buf)
            buf[:] = b"B" * len(buf)
            p.client.transport.write(b"end")
            p.server_proto.transport.resume_reading()
            got = await p.server_proto.wait_data(len(buf) + 3)
            assert got == b"A" * len(buf) + b"end"

    run(main(), timeout=30)


def test_callback_order_client_closes(loop, run, kind):
    async def main():
        async with StreamPair(loop, kind) as p:
            p.client.transport.write(b"data")
            await p.server_proto.wait_data(4)
            p.client.transport.close()
            assert await p.client.lost is None
            assert await p.server_proto.lost is None
            # Server: made, data, eof (returned falsy so transport closed),
            # lost -- each exactly once, in this order.
            assert p.server_proto.collapsed() == ["made", "data", "eof", "lost"]
            assert p.client.events == ["made", "lost"]

    run(main())


def test_callback_order_server_closes(loop, run, kind):
    async def main():
        async with StreamPair(loop, kind) as p:
            p.server_proto.transport.write(b"bye")
            p.server_proto.transport.close()
            assert await p.client.lost is None
            assert p.client.collapsed() == ["made", "data", "eof", "lost"]
            assert bytes(p.client.data) == b"bye"
            assert p.client.transport.is_closing()

    run(main())


def test_connection_made_before_any_data(loop, run, kind):
    """Data sent by the peer immediately must not arrive before
    connection_made."""
    async def main():
        def on_made(proto, transport):
            transport.write(b"greeting")

        async with StreamPair(
                loop, kind,
                server_factory=lambda: RecordingProtocol(on_made=on_made)) \
                as p:
            await p.client.wait_data(8)
            assert p.client.events[0] == "made"
            assert bytes(p.client.data) == b"greeting"

    run(main())


# ---------------------------------------------------------------------------
# Half close
# ---------------------------------------------------------------------------

def test_write_eof_half_close(loop, run, kind):
    """Client sends, then write_eof; the server sees EOF, keeps its side open
    (eof_received returns True) and still replies; the client receives the
    reply after its own EOF."""
    async def main():
        async with StreamPair(
                loop, kind,
                server_factory=lambda: RecordingProtocol(eof_keep_open=True)) \
                as p:
            ct = p.client.transport
            assert ct.can_write_eof()
            ct.write(b"request")
            ct.write_eof()
            assert not ct.is_closing()
            await p.server_proto.eof
            assert bytes(p.server_proto.data) == b"request"
            st = p.server_proto.transport
            assert not st.is_closing()
            st.write(b"response")
            st.close()
            assert await p.client.lost is None
            assert bytes(p.client.data) == b"response"
            assert p.client.collapsed() == ["made", "data", "eof", "lost"]
            assert await p.server_proto.lost is None
            assert p.server_proto.collapsed() == [
                "made", "data", "eof", "lost"]

    run(main())


def test_write_eof_flushes_buffered_data_first(loop, run, kind):
    data = payload(4 * 1024 * 1024, seed=7)

    async def main():
        async with StreamPair(
                loop, kind,
                server_factory=lambda: RecordingProtocol(eof_keep_open=True)) \
                as p:
            p.server_proto.transport.pause_reading()
            p.client.transport.write(data)
            p.client.transport.write_eof()
            p.server_proto.transport.resume_reading()
            await p.server_proto.eof
            assert sha(bytes(p.server_proto.data)) == sha(data)

    run(main(), timeout=30)


def test_write_after_write_eof_raises(loop, run, kind):
    async def main():
        async with StreamPair(loop, kind) as p:
            ct = p.client.transport
            ct.write_eof()
            with pytest.raises(RuntimeError):
                ct.write(b"late")
            ct.write_eof()  # second call is a no-op
            await p.server_proto.eof

    run(main())


def test_eof_received_falsy_closes_transport(loop, run, kind):
    async def main():
        async with StreamPair(loop, kind) as p:
            p.client.transport.write_eof()
            await p.server_proto.eof
            assert await p.server_proto.lost is None
            # The server closed its side in response: the client gets EOF.
            await p.client.eof
            assert await p.client.lost is None

    run(main())


# ---------------------------------------------------------------------------
# close / abort
# ---------------------------------------------------------------------------

def test_close_flushes_pending_data(loop, run, kind):
    data = payload(8 * 1024 * 1024, seed=3)

    async def main():
        async with StreamPair(loop, kind) as p:
            st = p.server_proto.transport
            st.pause_reading()
            ct = p.client.transport
            ct.write(data)
            assert ct.get_write_buffer_size() > 0
            ct.close()
            assert ct.is_closing()
            await asyncio.sleep(0.05)
            # Still flushing: connection_lost waits for the buffer to drain.
            assert not p.client.lost.done()
            st.resume_reading()
            assert await p.client.lost is None
            await p.server_proto.eof
            assert sha(bytes(p.server_proto.data)) == sha(data)
            assert p.client.events.count("lost") == 1

    run(main(), timeout=30)


def test_close_twice_and_write_after_close(loop, run, kind):
    async def main():
        async with StreamPair(loop, kind) as p:
            ct = p.client.transport
            ct.close()
            ct.close()  # no-op
            ct.write(b"ignored")  # asyncio: silently dropped, no exception
            ct.write_eof()  # no-op after close
            assert await p.client.lost is None
            ct.write(b"ignored too")
            assert p.client.events == ["made", "lost"]
            await p.server_proto.eof
            assert bytes(p.server_proto.data) == b""

    run(main())


def test_abort_discards_buffer(loop, run, kind):
    data = b"z" * (64 * 1024 * 1024)

    async def main():
        async with StreamPair(loop, kind) as p:
            st = p.server_proto.transport
            st.pause_reading()
            ct = p.client.transport
            ct.write(data)
            assert ct.get_write_buffer_size() > 0
            ct.abort()
            assert ct.is_closing()
            assert await p.client.lost is None
            assert p.client.events.count("lost") == 1
            st.resume_reading()
            exc = await p.server_proto.lost
            assert exc is None or isinstance(exc, ConnectionResetError)
            # Not everything arrived: the buffer was dropped.
            assert len(p.server_proto.data) < len(data)
            ct.abort()  # idempotent

    run(main(), timeout=30)


def test_connection_lost_called_once_on_close_then_abort(loop, run, kind):
    async def main():
        async with StreamPair(loop, kind) as p:
            ct = p.client.transport
            ct.close()
            ct.abort()
            await p.client.lost
            await asyncio.sleep(0.01)
            assert p.client.events.count("lost") == 1

    run(main())


def test_peer_reset_gives_connection_reset_error(loop, run):
    """TCP only: the peer closes with SO_LINGER 0 (RST)."""
    async def main():
        async with StreamPair(loop, "tcp") as p:
            sock = p.server_proto.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                            b"\x01\x00\x00\x00\x00\x00\x00\x00")
            p.server_proto.transport.abort()
            exc = await p.client.lost
            assert isinstance(exc, ConnectionResetError), exc
            assert p.client.events == ["made", "lost"]

    run(main())


# ---------------------------------------------------------------------------
# pause_reading / resume_reading
# ---------------------------------------------------------------------------

def test_pause_resume_reading(loop, run, kind):
    async def main():
        async with StreamPair(loop, kind) as p:
            st = p.server_proto.transport
            assert st.is_reading()
            st.pause_reading()
            assert not st.is_reading()
            st.pause_reading()  # idempotent
            assert not st.is_reading()
            p.client.transport.write(b"while paused")
            await asyncio.sleep(0.1)
            assert bytes(p.server_proto.data) == b""
            st.resume_reading()
            assert st.is_reading()
            st.resume_reading()  # idempotent
            assert await p.server_proto.wait_data(12) == b"while paused"

    run(main())


def test_pause_reading_holds_back_eof(loop, run, kind):
    async def main():
        async with StreamPair(loop, kind) as p:
            st = p.server_proto.transport
            st.pause_reading()
            p.client.transport.write(b"x")
            p.client.transport.write_eof()
            await asyncio.sleep(0.1)
            assert p.server_proto.events == ["made"]
            st.resume_reading()
            await p.server_proto.eof
            assert p.server_proto.collapsed()[:3] == ["made", "data", "eof"]

    run(main())


def test_is_reading_false_after_close(loop, run, kind):
    async def main():
        async with StreamPair(loop, kind) as p:
            ct = p.client.transport
            ct.close()
            assert not ct.is_reading()
            ct.pause_reading()  # no error on a closing transport
            ct.resume_reading()
            await p.client.lost

    run(main())


# ---------------------------------------------------------------------------
# get_extra_info, protocol accessors
# ---------------------------------------------------------------------------

def test_get_extra_info_tcp(loop, run):
    async def main():
        async with StreamPair(loop, "tcp") as p:
            ct = p.client.transport
            st = p.server_proto.transport
            csock = ct.get_extra_info("socket")
            ssock = st.get_extra_info("socket")
            assert csock.family == socket.AF_INET
            assert csock.type == socket.SOCK_STREAM
            assert ct.get_extra_info("peername") == p.address
            assert ct.get_extra_info("sockname") == csock.getsockname()
            assert st.get_extra_info("peername") == ct.get_extra_info(
                "sockname")
            assert st.get_extra_info("sockname") == p.address
            assert ssock.getpeername() == csock.getsockname()
            assert ct.get_extra_info("no-such-key") is None
            assert ct.get_extra_info("no-such-key", "dflt") == "dflt"
            assert ct.get_extra_info("sslcontext") is None
            # TCP_NODELAY is set on TCP transports, like asyncio does.
            assert csock.getsockopt(socket.IPPROTO_TCP,
                                    socket.TCP_NODELAY) != 0
            assert ssock.getsockopt(socket.IPPROTO_TCP,
                                    socket.TCP_NODELAY) != 0

    run(main())


def test_get_extra_info_unix(loop, run):
    async def main():
        async with StreamPair(loop, "unix") as p:
            ct = p.client.transport
            st = p.server_proto.transport
            assert ct.get_extra_info("socket").family == socket.AF_UNIX
            name = p.address.encode()
            assert ct.get_extra_info("peername") in (p.address, name)
            assert st.get_extra_info("sockname") in (p.address, name)
            assert ct.get_extra_info("missing", 5) == 5

    run(main())


def test_get_set_protocol(loop, run, kind):
    async def main():
        async with StreamPair(loop, kind) as p:
            st = p.server_proto.transport
            assert st.get_protocol() is p.server_proto
            replacement = RecordingProtocol()
            st.set_protocol(replacement)
            assert st.get_protocol() is replacement
            p.client.transport.write(b"to-new")
            assert await replacement.wait_data(6) == b"to-new"
            assert bytes(p.server_proto.data) == b""
            st.set_protocol(p.server_proto)

    run(main())


# ---------------------------------------------------------------------------
# BufferedProtocol
# ---------------------------------------------------------------------------

class SmallBufferedProtocol(asyncio.BufferedProtocol):
    def __init__(self, bufsize=7):
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray(bufsize)
        self.received = bytearray()
        self.events = []
        self.hints = []
        self.lost = self.loop.create_future()
        self.eof = self.loop.create_future()
        self.transport = None

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport

    def get_buffer(self, sizehint):
        self.hints.append(sizehint)
        if self.events[-1] != "get_buffer":
            self.events.append("get_buffer")
        return self.buf

    def buffer_updated(self, nbytes):
        assert 0 < nbytes <= len(self.buf)
        self.received += self.buf[:nbytes]
        self.events.append("updated")

    def eof_received(self):
        self.events.append("eof")
        self.eof.set_result(None)

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)


def test_buffered_protocol_small_buffer(loop, run, kind):
    data = payload(256 * 1024, seed=11)

    async def main():
        async with StreamPair(loop, kind,
                              server_factory=SmallBufferedProtocol) as p:
            p.client.transport.write(data)
            p.client.transport.write_eof()
            await p.server_proto.eof
            assert sha(bytes(p.server_proto.received)) == sha(data)
            ev = p.server_proto.events
            assert ev[0] == "made"
            assert ev[-1] in ("eof", "lost")
            # every buffer_updated is preceded by a get_buffer
            for a, b in zip(ev, ev[1:]):
                if b == "updated":
                    assert a in ("get_buffer", "updated")
            assert all(isinstance(h, int) for h in p.server_proto.hints)
            assert await p.server_proto.lost is None

    run(main(), timeout=30)


def test_set_protocol_in_buffer_updated_to_a_plain_protocol(loop, run, kind):
    """A BufferedProtocol that hands the stream to a Protocol in its first
    buffer_updated(): the rest of what was read goes to data_received()
    (found when bulk reads made one read span many small buffers)."""
    data = payload(200_000, seed=12)

    async def main():
        received = bytearray()

        class Follower(RecordingProtocol):
            def connection_lost(self, exc):
                super().connection_lost(exc)
                if not leader.lost.done():      # for StreamPair's teardown
                    leader.lost.set_result(exc)

        class Leader(SmallBufferedProtocol):
            def buffer_updated(self, nbytes):
                received.extend(self.buf[:nbytes])
                self.transport.set_protocol(follower)

        follower = Follower()

        async with StreamPair(loop, kind,
                              server_factory=lambda: Leader(4096)) as p:
            leader = p.server_proto
            p.client.transport.write(data)
            p.client.transport.write_eof()
            await follower.eof
            assert sha(bytes(received + follower.data)) == sha(data)
            assert follower.events[-1] == "eof"

    run(main(), timeout=30)


def test_buffered_protocol_memoryview_buffer(loop, run, kind):
    class MVProto(SmallBufferedProtocol):
        def get_buffer(self, sizehint):
            return memoryview(self.buf)[2:5]

        def buffer_updated(self, nbytes):
            assert 0 < nbytes <= 3
            self.received += self.buf[2:2 + nbytes]

    async def main():
        async with StreamPair(loop, kind, server_factory=MVProto) as p:
            p.client.transport.write(b"0123456789")
            p.client.transport.write_eof()
            await p.server_proto.eof
            assert bytes(p.server_proto.received) == b"0123456789"

    run(main())


@pytest.mark.allow_loop_errors
def test_buffered_protocol_empty_buffer_is_fatal(loop, run, kind):
    class EmptyProto(SmallBufferedProtocol):
        def get_buffer(self, sizehint):
            return bytearray()

    async def main():
        async with StreamPair(loop, kind, server_factory=EmptyProto) as p:
            p.client.transport.write(b"x")
            exc = await p.server_proto.lost
            assert isinstance(exc, RuntimeError)

    run(main())


@pytest.mark.allow_loop_errors
def test_buffered_protocol_get_buffer_raises(loop, run, kind):
    class Boom(Exception):
        pass

    class RaisingProto(SmallBufferedProtocol):
        def get_buffer(self, sizehint):
            raise Boom()

    async def main():
        async with StreamPair(loop, kind, server_factory=RaisingProto) as p:
            p.client.transport.write(b"x")
            exc = await p.server_proto.lost
            assert isinstance(exc, Boom)

    run(main())


@pytest.mark.allow_loop_errors
def test_data_received_raises_closes_transport(loop, run, kind):
    class Boom(Exception):
        pass

    class RaisingProto(RecordingProtocol):
        def data_received(self, data):
            raise Boom()

    seen = []

    async def main():
        loop.set_exception_handler(lambda lp, ctx: seen.append(ctx))
        async with StreamPair(loop, kind, server_factory=RaisingProto) as p:
            p.client.transport.write(b"x")
            exc = await p.server_proto.lost
            assert isinstance(exc, Boom)
            await p.client.lost
        assert any(isinstance(c.get("exception"), Boom) for c in seen)

    run(main())


# ---------------------------------------------------------------------------
# Large transfers and many connections
# ---------------------------------------------------------------------------

def test_large_transfer_both_ways(loop, run, kind):
    up = payload(6 * 1024 * 1024, seed=21)
    down = payload(5 * 1024 * 1024 + 17, seed=22)

    async def main():
        async with StreamPair(
                loop, kind,
                server_factory=lambda: RecordingProtocol(eof_keep_open=True)) \
                as p:
            ct, st = p.client.transport, p.server_proto.transport
            for i in range(0, len(up), 100_000):
                ct.write(up[i:i + 100_000])
            st.write(down)
            ct.write_eof()
            st.write_eof()
            await asyncio.gather(p.server_proto.eof, p.client.eof)
            assert sha(bytes(p.server_proto.data)) == sha(up)
            assert sha(bytes(p.client.data)) == sha(down)

    run(main(), timeout=50)


@pytest.mark.timeout(60)
def test_many_concurrent_connections(loop, run, kind):
    from helpers.addresses import abstract_name
    n = 200

    async def handle(reader, writer):
        data = await reader.read()
        writer.write(data[::-1])
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def client(i, address):
        if kind == "tcp":
            r, w = await asyncio.open_connection(*address)
        else:
            r, w = await asyncio.open_unix_connection(address)
        msg = b"client-%d-" % i * 50
        w.write(msg)
        w.write_eof()
        got = await r.read()
        w.close()
        await w.wait_closed()
        assert got == msg[::-1]
        return i

    async def main():
        if kind == "tcp":
            server = await asyncio.start_server(handle, "127.0.0.1", 0,
                                                backlog=n)
            address = server.sockets[0].getsockname()
        else:
            address = abstract_name("many")
            server = await asyncio.start_unix_server(handle, address,
                                                     backlog=n)
        async with server:
            done = await asyncio.gather(*(client(i, address)
                                          for i in range(n)))
            assert sorted(done) == list(range(n))
        await server.wait_closed()
        for _ in range(5):
            await asyncio.sleep(0)

    run(main(), timeout=50)


def test_transports_are_asyncio_transports(loop, run, kind):
    """isinstance() against asyncio's transport classes holds for stream
    transports on both ends (as for asyncio's own), and nothing else of
    the kind is claimed."""
    async def main():
        async with StreamPair(loop, kind) as p:
            for tr in (p.client.transport, p.server_proto.transport):
                for cls in (asyncio.BaseTransport, asyncio.ReadTransport,
                            asyncio.WriteTransport, asyncio.Transport):
                    assert isinstance(tr, cls), (tr, cls)
                assert not isinstance(tr, asyncio.DatagramTransport)
                assert not isinstance(tr, asyncio.SubprocessTransport)
                assert issubclass(tr.__class__, asyncio.Transport)

    run(main())


def test_write_reaches_the_kernel_before_it_returns(loop, run, kind):
    """A write to an idle stream is handed to the kernel before write()
    returns (asyncio's selector transports send at once): a callback that
    writes and then blocks until a thread on the other end has read the
    bytes completes, and the write buffer is empty right after."""
    import threading

    async def main():
        async with StreamPair(loop, kind) as p:
            peer_sock = p.server_proto.transport.get_extra_info("socket")
            p.server_proto.transport.pause_reading()
            received = threading.Event()
            fd = os.dup(peer_sock.fileno())

            def peer():
                with socket.socket(fileno=fd) as s:
                    s.settimeout(5)
                    got = b""
                    while len(got) < 5:
                        chunk = s.recv(5 - len(got))
                        if not chunk:
                            break
                        got += chunk
                    if got == b"hello":
                        received.set()

            t = threading.Thread(target=peer)
            t.start()
            results = {}

            def write_then_wait():
                tr = p.client.transport
                tr.write(b"hello")
                results["buffered"] = tr.get_write_buffer_size()
                # blocks the loop: only the kernel can deliver the bytes
                results["received"] = received.wait(5)

            loop.call_soon(write_then_wait)
            await asyncio.sleep(0.01)
            t.join()
            assert results == {"buffered": 0, "received": True}

    run(main())
