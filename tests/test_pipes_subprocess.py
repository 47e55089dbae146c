"""connect_read_pipe / connect_write_pipe (pipe, FIFO, pty) and child
processes (subprocess_exec / subprocess_shell)."""

import asyncio
import errno
import os
import signal
import sys
import tty

import pytest

from helpers.data import payload, sha
from helpers.protocols import RecordingProtocol


# ---------------------------------------------------------------------------
# Read pipes
# ---------------------------------------------------------------------------

def test_read_pipe(loop, run):
    r, w = os.pipe()

    async def main():
        rfile = open(r, "rb", buffering=0)
        tr, proto = await loop.connect_read_pipe(RecordingProtocol, rfile)
        assert proto.events == ["made"]
        assert tr.get_extra_info("pipe") is rfile
        os.write(w, b"through ")
        os.write(w, b"the pipe")
        assert await proto.wait_data(16) == b"through the pipe"
        os.close(w)
        await proto.eof
        assert await proto.lost is None
        assert proto.collapsed() == ["made", "data", "eof", "lost"]
        assert rfile.closed  # the transport owns the pipe

    run(main())


def test_read_pipe_pause_resume(loop, run):
    r, w = os.pipe()

    async def main():
        tr, proto = await loop.connect_read_pipe(
            RecordingProtocol, open(r, "rb", buffering=0))
        try:
            assert tr.is_reading()
            tr.pause_reading()
            assert not tr.is_reading()
            os.write(w, b"held")
            await asyncio.sleep(0.05)
            assert bytes(proto.data) == b""
            tr.resume_reading()
            assert tr.is_reading()
            assert await proto.wait_data(4) == b"held"
        finally:
            os.close(w)
            tr.close()
            await proto.lost

    run(main())


def test_read_pipe_close_by_transport(loop, run):
    r, w = os.pipe()

    async def main():
        try:
            tr, proto = await loop.connect_read_pipe(
                RecordingProtocol, open(r, "rb", buffering=0))
            tr.close()
            assert tr.is_closing()
            assert await proto.lost is None
            # the writer now gets EPIPE
            with pytest.raises(BrokenPipeError):
                os.write(w, b"x")
        finally:
            os.close(w)

    prev = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        run(main())
    finally:
        signal.signal(signal.SIGPIPE, prev)


def test_read_pipe_rejects_regular_file(loop, run, tmp_path):
    p = tmp_path / "regular"
    p.write_bytes(b"data")

    async def main():
        with open(p, "rb") as f:
            with pytest.raises(ValueError):
                await loop.connect_read_pipe(asyncio.Protocol, f)
            with pytest.raises(ValueError):
                await loop.connect_write_pipe(asyncio.Protocol, f)

    run(main())


def test_read_fifo(loop, run, tmp_path):
    path = str(tmp_path / "fifo")
    os.mkfifo(path)

    async def main():
        rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        wfd = os.open(path, os.O_WRONLY)
        tr, proto = await loop.connect_read_pipe(
            RecordingProtocol, open(rfd, "rb", buffering=0))
        os.write(wfd, b"fifo data")
        assert await proto.wait_data(9) == b"fifo data"
        os.close(wfd)
        await proto.eof
        assert await proto.lost is None

    run(main())


def _raw_pty():
    master, slave = os.openpty()
    tty.setraw(slave)
    return master, slave


def test_read_pty(loop, run):
    """Reading the master of a pty; when the slave side closes Linux reports
    EIO, which asyncio turns into connection_lost(OSError(EIO))."""
    master, slave = _raw_pty()

    async def main():
        tr, proto = await loop.connect_read_pipe(
            RecordingProtocol, open(master, "rb", buffering=0))
        os.write(slave, b"from the slave")
        assert await proto.wait_data(14) == b"from the slave"
        os.close(slave)
        exc = await proto.lost
        assert isinstance(exc, OSError) and exc.errno == errno.EIO, exc
        assert "eof" not in proto.events

    run(main())


# ---------------------------------------------------------------------------
# Write pipes
# ---------------------------------------------------------------------------

def test_write_pipe(loop, run):
    r, w = os.pipe()

    async def main():
        wfile = open(w, "wb", buffering=0)
        tr, proto = await loop.connect_write_pipe(RecordingProtocol, wfile)
        try:
            assert tr.get_extra_info("pipe") is wfile
            assert tr.can_write_eof()
            tr.write(b"abc")
            tr.writelines([b"de", b"f"])
            got = b""
            while len(got) < 6:
                await asyncio.sleep(0)
                try:
                    got += os.read(r, 100)
                except BlockingIOError:
                    pass
            assert got == b"abcdef"
            tr.write_eof()
            assert await proto.lost is None
            assert os.read(r, 100) == b""  # EOF for the reader
            assert wfile.closed
        finally:
            os.close(r)

    os.set_blocking(r, False)
    run(main())


def test_write_pipe_large_with_flow_control(loop, run):
    """More than the pipe buffer: pause_writing, then resume as the reader
    drains; everything arrives."""
    data = payload(2 * 1024 * 1024, seed=31)
    r, w = os.pipe()

    async def main():
        tr, proto = await loop.connect_write_pipe(
            RecordingProtocol, open(w, "wb", buffering=0))
        rtr, rproto = await loop.connect_read_pipe(
            RecordingProtocol, open(r, "rb", buffering=0))
        rtr.pause_reading()
        tr.set_write_buffer_limits(high=64 * 1024)
        tr.write(data)
        assert "pause" in proto.events
        assert tr.get_write_buffer_size() > 0
        rtr.resume_reading()
        await proto.resumed
        tr.close()
        await rproto.eof
        assert sha(bytes(rproto.data)) == sha(data)
        assert await proto.lost is None
        assert await rproto.lost is None

    run(main(), timeout=30)


def test_write_pipe_reader_closes(loop, run):
    """The read end goes away with nothing buffered: connection_lost(None)
    (asyncio notices the closed reader by polling the write end)."""
    r, w = os.pipe()

    async def main():
        tr, proto = await loop.connect_write_pipe(
            RecordingProtocol, open(w, "wb", buffering=0))
        os.close(r)
        exc = await proto.lost
        assert exc is None or isinstance(exc, BrokenPipeError)
        tr.write(b"ignored")  # after connection loss: dropped silently

    run(main())


def test_write_pipe_abort(loop, run):
    r, w = os.pipe()

    async def main():
        try:
            tr, proto = await loop.connect_write_pipe(
                RecordingProtocol, open(w, "wb", buffering=0))
            tr.write(b"x" * (1024 * 1024))
            tr.abort()
            assert await proto.lost is None
            assert tr.is_closing()
        finally:
            os.close(r)

    run(main())


def test_write_fifo(loop, run, tmp_path):
    path = str(tmp_path / "wfifo")
    os.mkfifo(path)

    async def main():
        rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        wfd = os.open(path, os.O_WRONLY)
        try:
            tr, proto = await loop.connect_write_pipe(
                RecordingProtocol, open(wfd, "wb", buffering=0))
            tr.write(b"to fifo")
            tr.close()
            assert await proto.lost is None
            assert os.read(rfd, 100) == b"to fifo"
        finally:
            os.close(rfd)

    run(main())


def test_write_pty(loop, run):
    master, slave = _raw_pty()

    async def main():
        try:
            tr, proto = await loop.connect_write_pipe(
                RecordingProtocol, open(master, "wb", buffering=0))
            rtr, rproto = await loop.connect_read_pipe(
                RecordingProtocol, open(slave, "rb", buffering=0))
            tr.write(b"typed")
            assert await rproto.wait_data(5) == b"typed"
            rtr.close()
            await rproto.lost
            tr.close()
            await proto.lost
        finally:
            pass

    run(main())


# ---------------------------------------------------------------------------
# Subprocesses
# ---------------------------------------------------------------------------

PY = sys.executable


def test_subprocess_exec_stdout(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; sys.stdout.write('out'); "
                      "sys.stderr.write('err'); sys.exit(3)",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert (out, err) == (b"out", b"err")
        assert proc.returncode == 3
        assert await proc.wait() == 3

    run(main(), timeout=30)


def test_subprocess_exec_stdin(loop, run):
    data = payload(1024 * 1024, seed=41)

    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys, hashlib; "
                      "d = sys.stdin.buffer.read(); "
                      "sys.stdout.write(hashlib.sha256(d).hexdigest())",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate(data)
        assert out.decode() == sha(data)
        assert proc.returncode == 0

    run(main(), timeout=30)


def test_subprocess_shell(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_shell(
            "echo hello; echo world 1>&2; exit 7",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, err = await proc.communicate()
        assert out.split() == [b"hello", b"world"]
        assert err is None
        assert proc.returncode == 7

    run(main(), timeout=30)


def test_subprocess_kill_and_terminate(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import time; print('ready', flush=True); "
                      "time.sleep(3600)",
            stdout=asyncio.subprocess.PIPE)
        assert await proc.stdout.readline() == b"ready\n"
        assert proc.returncode is None
        proc.kill()
        assert await proc.wait() == -signal.SIGKILL
        proc2 = await asyncio.create_subprocess_exec(
            PY, "-c", "import time; time.sleep(3600)")
        proc2.terminate()
        assert await proc2.wait() == -signal.SIGTERM
        # A child inherits an ignored SIGINT (a test run started in the
        # background by a non-interactive shell has one): it takes the
        # default handling itself, and says so before the signal comes.
        proc3 = await asyncio.create_subprocess_exec(
            PY, "-c", "import signal, time; "
                      "signal.signal(signal.SIGINT, signal.default_int_handler); "
                      "print('ready', flush=True); time.sleep(3600)",
            stdout=asyncio.subprocess.PIPE)
        assert await proc3.stdout.readline() == b"ready\n"
        proc3.send_signal(signal.SIGINT)
        rc = await proc3.wait()
        assert rc in (-signal.SIGINT, 1, 130)

    run(main(), timeout=30)


def test_subprocess_exit_detected_while_pipes_open(loop, run):
    """The child exits but a grandchild keeps stdout open: process_exited
    comes at once (exit is watched independently of the pipes), while
    Process.wait() -- like asyncio's -- returns only once the pipes closed
    too."""
    class Proto(asyncio.SubprocessProtocol):
        def __init__(self):
            self.events = []
            self.exited = loop.create_future()
            self.stdout_lost = loop.create_future()

        def pipe_data_received(self, fd, data):
            pass

        def pipe_connection_lost(self, fd, exc):
            self.events.append(("pipe_lost", fd))
            if fd == 1:
                self.stdout_lost.set_result(None)

        def process_exited(self):
            self.events.append("exited")
            self.exited.set_result(None)

    async def main():
        tr, proto = await loop.subprocess_shell(
            Proto, "sleep 2 & exit 5", stdin=None, stderr=None)
        await proto.exited
        assert tr.get_returncode() == 5
        assert proto.events == ["exited"]  # stdout still held open
        await proto.stdout_lost
        assert proto.events == ["exited", ("pipe_lost", 1)]
        tr.close()

    run(main(), timeout=30)

    async def streams():
        proc = await asyncio.create_subprocess_shell(
            "sleep 1 & exit 6", stdout=asyncio.subprocess.PIPE)
        assert await proc.wait() == 6
        assert await proc.stdout.read() == b""

    run(streams(), timeout=30)


@pytest.mark.timeout(60)
def test_many_concurrent_children(loop, run):
    n = 30

    async def child(i):
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", f"import sys; print({i}); sys.exit({i % 7})",
            stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        return int(out), proc.returncode

    async def main():
        results = await asyncio.gather(*(child(i) for i in range(n)))
        assert results == [(i, i % 7) for i in range(n)]

    run(main(), timeout=55)


def test_subprocess_protocol_callbacks(loop, run):
    class Proto(asyncio.SubprocessProtocol):
        def __init__(self):
            self.events = []
            self.data = {1: b"", 2: b""}
            self.done = loop.create_future()

        def connection_made(self, transport):
            self.events.append("made")

        def pipe_data_received(self, fd, data):
            self.data[fd] += data

        def pipe_connection_lost(self, fd, exc):
            self.events.append(("pipe_lost", fd))

        def process_exited(self):
            self.events.append("exited")

        def connection_lost(self, exc):
            self.events.append("lost")
            self.done.set_result(exc)

    async def main():
        tr, proto = await loop.subprocess_exec(
            Proto, PY, "-c",
            "import sys; sys.stdout.write('o'); sys.stderr.write('e')",
            stdin=None)
        assert isinstance(tr, asyncio.SubprocessTransport)
        assert tr.get_pid() > 0
        assert await proto.done is None
        assert tr.get_returncode() == 0
        assert proto.data == {1: b"o", 2: b"e"}
        ev = proto.events
        assert ev[0] == "made" and ev[-1] == "lost"
        assert sorted(e for e in ev if isinstance(e, tuple)) == [
            ("pipe_lost", 1), ("pipe_lost", 2)]
        assert ev.count("exited") == 1
        assert tr.get_pipe_transport(1) is not None
        tr.close()

    run(main(), timeout=30)


def test_subprocess_argument_errors(loop, run):
    async def main():
        with pytest.raises(ValueError):
            await loop.subprocess_shell(asyncio.SubprocessProtocol,
                                        ["echo", "list"])
        with pytest.raises(ValueError):
            await loop.subprocess_exec(asyncio.SubprocessProtocol, PY,
                                       universal_newlines=True)
        with pytest.raises(ValueError):
            await loop.subprocess_exec(asyncio.SubprocessProtocol, PY,
                                       bufsize=1)
        with pytest.raises(ValueError):
            await loop.subprocess_exec(asyncio.SubprocessProtocol, PY,
                                       text=True)
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec(
                "/nonexistent/definitely-not-here")

    run(main(), timeout=30)


def test_subprocess_stdin_broken_pipe(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import os; os.close(0)",
            stdin=asyncio.subprocess.PIPE)
        await proc.wait()
        proc.stdin.write(b"x" * 1024 * 1024)
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            await proc.stdin.drain()
            await proc.stdin.drain()

    run(main(), timeout=30)
