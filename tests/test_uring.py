"""What only the completion (io_uring) path has: availability and the
fallback under seccomp, CQ overflow, buffer ring exhaustion, re-armed
multishots, cancellation of in-flight operations, and the rule that memory
the kernel reads stays alive until its completion arrives."""

import asyncio
import functools
import gc
import os
import resource
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from helpers.data import payload, sha
from helpers.loops import run_coro

fastsock = pytest.importorskip("fastsock")
if not fastsock.backends()["uring"].available:
    pytest.skip("io_uring unavailable: " + fastsock.backends()["uring"].reason,
                allow_module_level=True)

from fastsock import uring                      # noqa: E402
from fastsock.eventloop import CompletionLoop   # noqa: E402


@pytest.fixture
def make_uring_loop():
    loops = []

    def make(**driver_options):
        loop = CompletionLoop(
            functools.partial(uring.new_driver, **driver_options), "uring")
        loops.append(loop)
        return loop

    yield make
    for loop in loops:
        if not loop.is_closed():
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def echo_clients(loop, path, nconns, message, rounds=1):
    """nconns clients, each sends `message` `rounds` times and reads it back."""
    async def one(i):
        r, w = await asyncio.open_unix_connection(path)
        try:
            for _ in range(rounds):
                w.write(message)
                got = await r.readexactly(len(message))
                assert got == message
        finally:
            w.close()
            await w.wait_closed()
    await asyncio.gather(*(one(i) for i in range(nconns)))


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return soft, hard


def test_probe_reports_features():
    info = uring.probe()
    assert info["available"] and info["reason"] == ""
    assert "RECV_MULTISHOT" in info["opcodes"]
    assert info["liburing_version"].startswith("2.")


SECCOMP_CHILD = textwrap.dedent(r'''
    import ctypes, struct, json, sys
    libc = ctypes.CDLL(None, use_errno=True)
    # BPF: if syscall nr == io_uring_setup (425): return ERRNO(EPERM), else
    # allow -- what a container's default seccomp profile does.
    def stmt(code, k): return struct.pack("HBBI", code, 0, 0, k)
    def jump(code, k, jt, jf): return struct.pack("HBBI", code, jt, jf, k)
    prog = (stmt(0x20, 0) + jump(0x15, 425, 0, 1)
            + stmt(0x06, 0x00050000 | 1) + stmt(0x06, 0x7fff0000))
    buf = ctypes.create_string_buffer(prog)
    fprog = struct.pack("HxxxxxxQ", 4, ctypes.addressof(buf))
    fbuf = ctypes.create_string_buffer(fprog)
    assert libc.prctl(38, 1, 0, 0, 0) == 0            # NO_NEW_PRIVS
    # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
    assert libc.prctl(22, 2, ctypes.c_void_p(ctypes.addressof(fbuf)), 0, 0) == 0
    import asyncio, fastsock
    info = fastsock.backends()["uring"]
    loop = fastsock.new_event_loop("auto")
    backend = loop.backend
    async def main():
        return await asyncio.sleep(0, "ran")
    ran = loop.run_until_complete(main())
    loop.close()
    try:
        fastsock.new_event_loop("uring")
        error = None
    except RuntimeError as exc:
        error = str(exc)
    print(json.dumps({"available": info.available, "reason": info.reason,
                      "auto": backend, "ran": ran, "error": error}))
''')


def test_auto_falls_back_to_epoll_under_seccomp():
    import json
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(fastsock.__file__)),
         env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", SECCOMP_CHILD], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["available"] is False
    assert "EPERM" in result["reason"] and "seccomp" in result["reason"]
    assert result["auto"] == "epoll"
    assert result["ran"] == "ran"
    assert result["error"] and "EPERM" in result["error"]


def test_cq_overflow_with_many_connections(make_uring_loop, tmp_path):
    # A CQ far smaller than the number of connections that complete at once:
    # the kernel keeps the surplus CQEs (FEAT_NODROP) and ends multishots it
    # could not post to; the driver must flush them and re-arm.
    nconns = 600
    raise_nofile(4 * nconns + 200)
    loop = make_uring_loop(entries=8, cq_entries=16)
    path = str(tmp_path / "s")

    async def main():
        server = await loop.create_unix_server(Echo, path, backlog=nconns)
        await echo_clients(loop, path, nconns, b"x" * 100, rounds=3)
        server.close()
        await server.wait_closed()

    run_coro(loop, main(), timeout=60)
    # The kernel ends a multishot whose CQE it could not post (its last CQE
    # lacks IORING_CQE_F_MORE): each such one was re-armed, and every echo
    # above still arrived intact.
    assert loop.driver.stats()["multishot_rearms"] > 0, loop.driver.stats()


def test_buffer_ring_exhaustion_loses_nothing(make_uring_loop, tmp_path):
    # Two 1 KiB buffers for the whole loop: recv runs dry (ENOBUFS) all the
    # time; every multishot must be re-armed and every byte delivered.
    loop = make_uring_loop(buf_count=2, buf_size=1024)
    path = str(tmp_path / "s")
    data = payload(3 * 1024 * 1024, seed=1)

    async def main():
        server = await loop.create_unix_server(Echo, path)

        async def one(i):
            r, w = await asyncio.open_unix_connection(path)
            w.write(data)
            got = await r.readexactly(len(data))
            w.close()
            await w.wait_closed()
            return sha(got)

        digests = await asyncio.gather(*(one(i) for i in range(8)))
        server.close()
        await server.wait_closed()
        return digests

    digests = run_coro(loop, main(), timeout=60)
    assert set(digests) == {sha(data)}
    assert loop.driver.stats()["enobufs"] > 0


def test_temporary_bytes_stay_alive_while_in_flight(make_uring_loop):
    # The peer reads slowly, so the backlog goes out as SENDMSG SQEs over a
    # long time; the transport gets the only reference to each chunk. If a
    # chunk were freed before its CQE, the kernel would send reused memory.
    loop = make_uring_loop()
    chunks = [payload(256 * 1024, seed=i) for i in range(16)]
    want = sha(b"".join(chunks))
    a, b = socket.socketpair()

    async def main():
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        for i in range(16):
            transport.write(payload(256 * 1024, seed=i))   # temporary
            gc.collect()
            # churn the allocator so freed memory would be reused
            junk = [bytes(256 * 1024) for _ in range(4)]
            del junk
        received = bytearray()
        b.setblocking(False)
        while len(received) < 16 * 256 * 1024:
            await asyncio.sleep(0.001)
            try:
                received += b.recv(64 * 1024)
            except BlockingIOError:
                pass
        transport.close()
        return sha(bytes(received))

    try:
        assert run_coro(loop, main(), timeout=60) == want
    finally:
        b.close()


@pytest.mark.parametrize("how", ["abort", "close"])
def test_close_cancels_in_flight_operations(make_uring_loop, how):
    # A send waiting for buffer space (the peer never reads) and a multishot
    # recv are in flight: abort must cancel them and report connection_lost
    # only after their CQEs; close waits for the backlog, so we abort after.
    loop = make_uring_loop()
    a, b = socket.socketpair()
    lost = loop.create_future()

    class P(asyncio.Protocol):
        def connection_lost(self, exc):
            lost.set_result(exc)

    async def main():
        transport, _ = await loop.connect_accepted_socket(P, a)
        transport.write(payload(8 * 1024 * 1024))
        await asyncio.sleep(0.05)
        assert transport.get_write_buffer_size() > 0
        if how == "close":
            transport.close()
            await asyncio.sleep(0.05)
            assert not lost.done()       # still flushing to a peer not reading
        transport.abort()
        return await lost

    try:
        assert run_coro(loop, main()) is None
        assert a.fileno() == -1
    finally:
        b.close()


def test_pause_resume_under_stream_keeps_order(make_uring_loop):
    # Pausing cancels the multishot recv; CQEs already on their way are
    # parked and delivered first on resume.
    loop = make_uring_loop(buf_size=4096)
    data = payload(4 * 1024 * 1024, seed=7)
    a, b = socket.socketpair()

    class Pauser(asyncio.Protocol):
        def __init__(self):
            self.buf = bytearray()
            self.done = loop.create_future()

        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, chunk):
            self.buf += chunk
            self.transport.pause_reading()
            loop.call_soon(self.transport.resume_reading)

        def eof_received(self):
            self.done.set_result(bytes(self.buf))

    def feed():
        b.sendall(data)
        b.shutdown(socket.SHUT_WR)

    async def main():
        transport, proto = await loop.connect_accepted_socket(Pauser, a)
        t = threading.Thread(target=feed)
        t.start()
        got = await proto.done
        t.join()
        transport.close()
        return got

    try:
        got = run_coro(loop, main(), timeout=60)
        assert sha(got) == sha(data)
        assert loop.driver.stats()["recv_cancels"] > 0
    finally:
        b.close()


def test_loop_close_with_open_transports(make_uring_loop, tmp_path):
    # Transports left open, multishots and a send in flight: close() cancels
    # them and waits for their CQEs; nothing crashes, the sockets stay owned
    # by their transports (and are closed when those are collected).
    loop = make_uring_loop()
    path = str(tmp_path / "s")
    keep = []

    async def main():
        server = await loop.create_unix_server(Echo, path)
        r, w = await asyncio.open_unix_connection(path)
        w.write(b"ping")
        await r.readexactly(4)
        keep.append((server, r, w))
        other_a, other_b = socket.socketpair()
        t, _ = await loop.connect_accepted_socket(asyncio.Protocol, other_a)
        t.write(payload(8 * 1024 * 1024))    # stays in flight
        keep.append((t, other_b))

    run_coro(loop, main())
    loop.close()
    # With the loop gone, closing the sockets is all that is left.
    for item in keep:
        for obj in item:
            sock = getattr(obj, "get_extra_info", None)
            if isinstance(obj, socket.socket):
                obj.close()
            elif isinstance(obj, asyncio.StreamWriter):
                obj.transport.get_extra_info("socket")
    keep.clear()
    gc.collect()


def test_loop_runs_in_the_thread_that_first_runs_it(make_uring_loop):
    # SINGLE_ISSUER rings are created disabled and enabled by the thread
    # that first runs the loop, which may differ from the creating thread.
    loop = make_uring_loop()
    result = []

    def runner():
        async def main():
            a, b = socket.socketpair()
            with a, b:
                t, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
                t.write(b"hello")
                await asyncio.sleep(0.01)
                result.append(b.recv(5))
                t.close()
                await asyncio.sleep(0)
        loop.run_until_complete(main())

    th = threading.Thread(target=runner)
    th.start()
    th.join(30)
    assert result == [b"hello"]
    # The ring now takes submissions from that thread only: running the loop
    # elsewhere is a clear error, closing it from here is fine.
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError, match="another thread"):
        loop.run_forever()
    loop.close()


def test_a_later_thread_with_the_same_pthread_id_is_refused(make_uring_loop):
    # glibc gives an exited thread's pthread_t (and stack) to the next thread
    # it makes: that thread is still not the ring's issuer for the kernel.
    # It gets the RuntimeError, not the kernel's EEXIST, before any of the
    # loop's callbacks runs there, and closing the loop from it works.
    loop = make_uring_loop()
    first = []

    def run_first():
        first.append(threading.get_ident())
        loop.run_until_complete(asyncio.sleep(0))

    th = threading.Thread(target=run_first)
    th.start()
    th.join(30)
    outcome = {}

    def run_later():
        outcome["same_id"] = threading.get_ident() == first[0]
        ran_here = []
        loop.call_soon(ran_here.append, True)
        loop.call_soon(loop.stop)
        try:
            loop.run_forever()
        except BaseException as exc:
            outcome["error"] = exc
        outcome["ran_here"] = ran_here
        loop.close()
        outcome["closed"] = loop.is_closed()

    # glibc reuses the id at once here (checked: outcome["same_id"]); where
    # it does not, this still checks the refusal.
    th = threading.Thread(target=run_later)
    th.start()
    th.join(30)
    assert isinstance(outcome["error"], RuntimeError), outcome["error"]
    assert "another thread" in str(outcome["error"])
    assert outcome["ran_here"] == []
    assert outcome["closed"]
