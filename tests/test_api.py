"""fastsock's public API: new_event_loop, run, EventLoopPolicy, backends(),
and the io_uring -> epoll fallback under a seccomp filter.

These tests are not parametrized over loops; they skip while fastsock is
not importable."""

import asyncio
import json
import os
import subprocess
import sys
import textwrap

import pytest

from helpers.loops import run_coro


@pytest.fixture
def fastsock():
    try:
        import fastsock as mod
    except ImportError as exc:
        pytest.skip(f"fastsock cannot be imported: {exc!r}")
    if not hasattr(mod, "new_event_loop"):
        pytest.skip("fastsock is not built")
    return mod


def test_backends_report(fastsock):
    b = fastsock.backends()
    assert set(b) >= {"epoll", "uring"}
    for name, info in b.items():
        assert isinstance(info.available, bool)
        if not info.available:
            assert info.reason, f"{name} unavailable without a reason"
    assert b["epoll"].available, b["epoll"].reason


@pytest.mark.parametrize("backend", ["epoll", "uring", "auto"])
def test_new_event_loop(fastsock, backend):
    if backend == "uring" and not fastsock.backends()["uring"].available:
        with pytest.raises(Exception) as info:
            fastsock.new_event_loop(backend="uring")
        assert str(info.value), "the error must name the cause"
        return
    loop = fastsock.new_event_loop(backend=backend)
    try:
        assert isinstance(loop, asyncio.AbstractEventLoop)
        if backend == "auto":
            expected = ("uring" if fastsock.backends()["uring"].available
                        else "epoll")
            assert loop.backend == expected
        else:
            assert loop.backend == backend

        async def main():
            await asyncio.sleep(0)
            return asyncio.get_running_loop()

        assert run_coro(loop, main()) is loop
    finally:
        loop.close()


def test_new_event_loop_default_is_auto(fastsock):
    loop = fastsock.new_event_loop()
    try:
        assert loop.backend in ("epoll", "uring")
    finally:
        loop.close()


def test_unknown_backend_rejected(fastsock):
    with pytest.raises(ValueError):
        fastsock.new_event_loop(backend="kqueue")
    with pytest.raises(ValueError):
        fastsock.EventLoopPolicy(backend="nope")


def test_auto_with_no_backend_names_every_cause(fastsock, monkeypatch):
    monkeypatch.setattr(fastsock, "_availability", lambda name, **_: (
        fastsock.BackendInfo(False, f"{name} is switched off")))
    with pytest.raises(RuntimeError) as err:
        fastsock.new_event_loop("auto")
    assert "uring is switched off" in str(err.value)
    assert "epoll is switched off" in str(err.value)


@pytest.mark.parametrize("backend", ["epoll", "auto"])
def test_run(fastsock, backend):
    async def main(x):
        loop = asyncio.get_running_loop()
        assert loop.backend in ("epoll", "uring")
        await asyncio.sleep(0.001)
        return x + 1, loop.get_debug()

    assert fastsock.run(main(1), backend=backend) == (2, False)
    assert fastsock.run(main(1), backend=backend, debug=True) == (2, True)


def test_run_propagates_and_cleans_up(fastsock):
    finalized = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            finalized.append(1)

    async def main():
        g = agen()
        await g.__anext__()
        asyncio.get_running_loop().create_task(asyncio.sleep(3600))
        raise KeyError("x")

    with pytest.raises(KeyError):
        fastsock.run(main(), backend="epoll")
    assert finalized == [1]  # shutdown_asyncgens ran


def test_run_rejects_nested(fastsock):
    async def inner():
        return 1

    async def main():
        coro = inner()
        try:
            with pytest.raises(RuntimeError):
                fastsock.run(coro, backend="epoll")
        finally:
            coro.close()

    fastsock.run(main(), backend="epoll")


def test_event_loop_policy(fastsock):
    old = asyncio.get_event_loop_policy()
    try:
        asyncio.set_event_loop_policy(fastsock.EventLoopPolicy(
            backend="epoll"))
        loop = asyncio.new_event_loop()
        try:
            assert loop.backend == "epoll"
        finally:
            loop.close()

        async def main():
            return asyncio.get_running_loop().backend

        assert asyncio.run(main()) == "epoll"
    finally:
        asyncio.set_event_loop_policy(old)


def test_asyncio_runner_loop_factory(fastsock):
    async def main():
        return asyncio.get_running_loop().backend

    with asyncio.Runner(
            loop_factory=lambda: fastsock.new_event_loop(backend="epoll")) \
            as runner:
        assert runner.run(main()) == "epoll"


# ---------------------------------------------------------------------------
# io_uring unavailable (seccomp, as Docker's default profile does)
# ---------------------------------------------------------------------------

SECCOMP_PRELUDE = textwrap.dedent(r"""
    import ctypes, errno, os, platform, struct, sys
    libc = ctypes.CDLL(None, use_errno=True)
    NR_IO_URING_SETUP = 425  # same number on x86_64 and aarch64
    EPERM = errno.EPERM
    def stmt(code, k):
        return struct.pack("HBBI", code, 0, 0, k)
    def jump(code, k, jt, jf):
        return struct.pack("HBBI", code, jt, jf, k)
    prog = b"".join([
        stmt(0x20, 0),                                   # ld [nr]
        jump(0x15, NR_IO_URING_SETUP, 0, 1),             # jeq 425
        stmt(0x06, 0x00050000 | EPERM),                  # ret ERRNO(EPERM)
        stmt(0x06, 0x7fff0000),                          # ret ALLOW
    ])
    buf = ctypes.create_string_buffer(prog)
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
    assert libc.prctl(38, 1, 0, 0, 0) == 0, "PR_SET_NO_NEW_PRIVS"
    rc = libc.prctl(22, 2, ctypes.byref(fprog), 0, 0)
    assert rc == 0, ("PR_SET_SECCOMP", ctypes.get_errno())
    libc.syscall.restype = ctypes.c_long
    params = ctypes.create_string_buffer(120)
    r = libc.syscall(NR_IO_URING_SETUP, 4, params)
    assert r == -1 and ctypes.get_errno() == EPERM, (r, ctypes.get_errno())
""")


def _run_child(body):
    code = SECCOMP_PRELUDE + textwrap.dedent(body)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [p for p in sys.path if p] + [env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=60, env=env)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_seccomp_filter_blocks_io_uring_setup():
    """Checks the harness itself: the filter makes io_uring_setup EPERM."""
    r = _run_child('print("filtered")')
    assert r.returncode == 0, r.stderr
    assert "filtered" in r.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_auto_falls_back_to_epoll_under_seccomp(fastsock):
    r = _run_child(r"""
        import asyncio, json
        import fastsock
        b = fastsock.backends()
        out = {"uring_available": b["uring"].available,
               "uring_reason": str(b["uring"].reason),
               "epoll_available": b["epoll"].available}
        loop = fastsock.new_event_loop(backend="auto")
        out["auto_backend"] = loop.backend
        async def main():
            await asyncio.sleep(0)
            return 7
        out["auto_runs"] = loop.run_until_complete(main())
        loop.close()
        try:
            fastsock.new_event_loop(backend="uring").close()
            out["uring_error"] = None
        except Exception as exc:
            out["uring_error"] = f"{type(exc).__name__}: {exc}"
        async def probe():
            return asyncio.get_running_loop().backend
        out["run_backend"] = fastsock.run(probe(), backend="auto")
        print(json.dumps(out))
    """)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["epoll_available"] is True
    assert out["uring_available"] is False
    assert "EPERM" in out["uring_reason"] or "ermission" in \
        out["uring_reason"] or "seccomp" in out["uring_reason"].lower(), out
    assert out["auto_backend"] == "epoll"
    assert out["auto_runs"] == 7
    assert out["run_backend"] == "epoll"
    assert out["uring_error"], "backend='uring' must fail under seccomp"
    assert ("EPERM" in out["uring_error"] or "ermission" in out["uring_error"]
            or "seccomp" in out["uring_error"].lower()), out["uring_error"]


_OUT_OF_FDS_THEN_BACK = r"""
import errno, json, os, resource, sys
import fastsock
backend = sys.argv[1]
out = {}
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
# Leave no free descriptor: making a loop fails with EMFILE, as asyncio's
# new_event_loop() does.
highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
spare = []
resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
try:
    while True:
        spare.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
try:
    fastsock.new_event_loop(backend).close()
    out["first"] = "made"
except OSError as exc:
    out["first"] = errno.errorcode.get(exc.errno, str(exc.errno))
except Exception as exc:
    out["first"] = f"{type(exc).__name__}: {exc}"
for fd in spare:
    os.close(fd)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
# The condition passed: a loop on the same backend works now.
loop = fastsock.new_event_loop(backend)
out["second"] = loop.backend
loop.close()
out["uring_available"] = fastsock.backends()["uring"].available
print(json.dumps(out))
"""


@pytest.mark.parametrize("backend", ["uring", "epoll", "auto"])
def test_out_of_descriptors_is_not_remembered(fastsock, backend):
    """A loop made while the process is out of fds fails with
    OSError(EMFILE); once fds are free again the next one works, on the
    backend asked for (a passing condition is no property of the host)."""
    if backend != "epoll" and not fastsock.backends()["uring"].available:
        pytest.skip("io_uring is not available here")
    r = subprocess.run([sys.executable, "-c", _OUT_OF_FDS_THEN_BACK, backend],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["first"] in ("EMFILE", "ENFILE"), out
    assert out["second"] == ("uring" if backend == "auto" else backend), out
    assert out["uring_available"] is True, out


_UNCLOSED_AT_EXIT = r"""
import sys
import fastsock
loop = fastsock.new_event_loop(sys.argv[1])   # never closed: kept to the end
"""


@pytest.mark.parametrize("backend", ["epoll", "uring"])
def test_loop_left_unclosed_at_interpreter_exit(fastsock, backend):
    """A loop garbage-collected unclosed at interpreter shutdown warns
    (ResourceWarning, as asyncio's do) and nothing else: no exception from
    close() while modules are torn down."""
    if backend == "uring" and not fastsock.backends()["uring"].available:
        pytest.skip("io_uring is not available here")
    r = subprocess.run([sys.executable, "-X", "dev", "-c", _UNCLOSED_AT_EXIT,
                        backend], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert "Error" not in r.stderr.replace("ResourceWarning", ""), r.stderr
