"""Write flow control: buffer limits, pause_writing / resume_writing."""

import asyncio
import socket

import pytest

from helpers.data import payload, sha
from helpers.protocols import RecordingProtocol
from helpers.streams import (STREAM_KINDS, StreamPair, small_buffer_client,
                             small_buffer_listener)


@pytest.fixture(params=STREAM_KINDS)
def kind(request):
    return request.param


def pair(loop, kind, **kw):
    """A pair with small kernel buffers on TCP so the transport's own buffer
    fills quickly when the peer does not read."""
    if kind == "tcp":
        return StreamPair(loop, kind, server_sock=small_buffer_listener(),
                          client_sock=small_buffer_client(), **kw)
    return StreamPair(loop, kind, **kw)


def write_until_paused(proto, chunk, limit):
    """Write ``chunk`` repeatedly, synchronously (the loop does not run in
    between), until pause_writing is called; return the bytes written."""
    tr = proto.transport
    written = 0
    while "pause" not in proto.events:
        assert written < limit, "pause_writing was never called"
        tr.write(chunk)
        written += len(chunk)
    return written


def test_default_write_buffer_limits(loop, run, kind):
    async def main():
        async with StreamPair(loop, kind) as p:
            tr = p.client.transport
            assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            assert tr.get_write_buffer_size() == 0

    run(main())


def test_set_write_buffer_limits(loop, run, kind):
    async def main():
        async with StreamPair(loop, kind) as p:
            tr = p.client.transport
            tr.set_write_buffer_limits(high=1000)
            assert tr.get_write_buffer_limits() == (250, 1000)
            tr.set_write_buffer_limits(low=100)
            assert tr.get_write_buffer_limits() == (100, 400)
            tr.set_write_buffer_limits(high=50, low=10)
            assert tr.get_write_buffer_limits() == (10, 50)
            tr.set_write_buffer_limits(high=0)
            assert tr.get_write_buffer_limits() == (0, 0)
            with pytest.raises(ValueError):
                tr.set_write_buffer_limits(high=10, low=20)
            with pytest.raises(ValueError):
                tr.set_write_buffer_limits(high=-1)
            tr.set_write_buffer_limits()
            assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)

    run(main())


def test_pause_and_resume_writing(loop, run, kind):
    """pause_writing is called inside write() once the buffer goes over the
    high-water mark; resume_writing once it drains to the low-water mark;
    each exactly once; nothing is lost."""
    chunk = payload(64 * 1024, seed=5)
    high, low = 256 * 1024, 64 * 1024

    async def main():
        async with pair(loop, kind) as p:
            st = p.server_proto.transport
            st.pause_reading()
            tr = p.client.transport
            tr.set_write_buffer_limits(high=high, low=low)
            written = write_until_paused(p.client, chunk, 512 * 1024 * 1024)
            assert p.client.events.count("pause") == 1
            assert tr.get_write_buffer_size() > high
            # More writes while paused are buffered, no second pause.
            tr.write(chunk)
            written += len(chunk)
            assert p.client.events.count("pause") == 1
            resumed_sizes = []
            orig_resume = p.client.resume_writing

            def resume_writing():
                resumed_sizes.append(tr.get_write_buffer_size())
                orig_resume()

            p.client.resume_writing = resume_writing
            st.resume_reading()
            await p.client.resumed
            assert resumed_sizes and resumed_sizes[0] <= low
            got = await p.server_proto.wait_data(written)
            assert len(got) == written
            assert got == chunk * (written // len(chunk))
            assert p.client.events.count("resume") == 1
            ev = [e for e in p.client.events if e in ("pause", "resume")]
            assert ev == ["pause", "resume"]
            assert tr.get_write_buffer_size() == 0

    run(main(), timeout=40)


def test_pause_resume_cycles(loop, run, kind):
    """Several pause/resume cycles alternate strictly."""
    chunk = payload(32 * 1024, seed=6)

    async def main():
        async with pair(loop, kind) as p:
            st = p.server_proto.transport
            tr = p.client.transport
            tr.set_write_buffer_limits(high=128 * 1024, low=16 * 1024)
            total = 0
            for cycle in range(3):
                st.pause_reading()
                p.client.resumed = loop.create_future()
                before = p.client.events.count("pause")
                while p.client.events.count("pause") == before:
                    tr.write(chunk)
                    total += len(chunk)
                    assert total < 512 * 1024 * 1024
                st.resume_reading()
                await p.client.resumed
            await p.server_proto.wait_data(total)
            ev = [e for e in p.client.events if e in ("pause", "resume")]
            assert ev == ["pause", "resume"] * 3

    run(main(), timeout=40)


def test_lowering_limit_pauses_immediately(loop, run, kind):
    async def main():
        async with pair(loop, kind) as p:
            p.server_proto.transport.pause_reading()
            tr = p.client.transport
            tr.set_write_buffer_limits(high=64 * 1024 * 1024)
            big = b"q" * (4 * 1024 * 1024)
            tr.write(big)
            assert "pause" not in p.client.events
            assert tr.get_write_buffer_size() > 0
            tr.set_write_buffer_limits(high=1024)
            assert p.client.events.count("pause") == 1
            p.server_proto.transport.resume_reading()
            await p.client.resumed
            await p.server_proto.wait_data(len(big))

    run(main(), timeout=40)


def test_high_zero_pauses_on_any_backlog(loop, run, kind):
    async def main():
        async with pair(loop, kind) as p:
            p.server_proto.transport.pause_reading()
            tr = p.client.transport
            tr.set_write_buffer_limits(high=0)
            written = write_until_paused(p.client, b"w" * 8192,
                                         256 * 1024 * 1024)
            assert tr.get_write_buffer_size() > 0
            p.server_proto.transport.resume_reading()
            await p.client.resumed
            assert tr.get_write_buffer_size() == 0
            await p.server_proto.wait_data(written)

    run(main(), timeout=40)


def test_connection_lost_while_paused_no_resume(loop, run, kind):
    """Aborting a paused transport: connection_lost, and no resume_writing
    after it."""
    async def main():
        async with pair(loop, kind) as p:
            p.server_proto.transport.pause_reading()
            write_until_paused(p.client, b"a" * 65536, 512 * 1024 * 1024)
            p.client.transport.abort()
            await p.client.lost
            await asyncio.sleep(0.01)
            ev = p.client.events
            assert ev.index("lost") == len(ev) - 1
            assert "resume" not in ev

    run(main(), timeout=40)


def test_stream_writer_drain_waits_for_peer(loop, run, kind):
    data = payload(16 * 1024 * 1024, seed=9)

    async def main():
        reader_paused = asyncio.Event()
        release = asyncio.Event()
        received = bytearray()
        done = loop.create_future()

        async def handle(r, w):
            reader_paused.set()
            await release.wait()
            while True:
                chunk = await r.read(1 << 16)
                if not chunk:
                    break
                received.extend(chunk)
            w.close()
            await w.wait_closed()
            done.set_result(None)

        if kind == "tcp":
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            r, w = await asyncio.open_connection(
                *server.sockets[0].getsockname())
        else:
            from helpers.addresses import abstract_name
            name = abstract_name("drain")
            server = await asyncio.start_unix_server(handle, name)
            r, w = await asyncio.open_unix_connection(name)
        async with server:
            await reader_paused.wait()
            w.transport.set_write_buffer_limits(high=64 * 1024)
            w.write(data)
            drain = asyncio.ensure_future(w.drain())
            await asyncio.sleep(0.05)
            assert not drain.done()  # peer is not reading
            release.set()
            await drain
            w.write_eof()
            await done
            assert sha(bytes(received)) == sha(data)
            w.close()
            await w.wait_closed()
        await server.wait_closed()

    run(main(), timeout=40)


def test_write_buffer_limits_take_any_real_numbers(loop, run):
    """set_write_buffer_limits() takes the numbers asyncio takes (floats
    among them) and reports them as given."""
    from helpers.streams import StreamPair

    async def main():
        async with StreamPair(loop, "unix") as p:
            tr = p.client.transport
            tr.set_write_buffer_limits(high=1.5)
            assert tr.get_write_buffer_limits() == (0.0, 1.5)
            tr.set_write_buffer_limits(high=4096, low=1024)
            assert tr.get_write_buffer_limits() == (1024, 4096)
            with pytest.raises(ValueError):
                tr.set_write_buffer_limits(high=1.0, low=2.5)

    run(main())
