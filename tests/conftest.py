"""Shared fixtures for the behaviour suite.

Every loop-level test takes the ``loop`` fixture, which is parametrized over
stock asyncio (the reference) and the fastsock backends.  If stock asyncio
fails a test, the test is wrong.
"""

import asyncio
import gc
import os
import sys
import time

import pytest

from helpers.loops import BACKENDS, run_coro


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "allow_loop_errors: the test expects the loop's exception handler to "
        "be called; do not fail it for that")


# ---------------------------------------------------------------------------
# Loop creation
# ---------------------------------------------------------------------------

def _fastsock_or_skip():
    try:
        import fastsock
    except ImportError as exc:
        pytest.skip(f"fastsock cannot be imported: {exc!r}")
    if not hasattr(fastsock, "backends") or not hasattr(
            fastsock, "new_event_loop"):
        # An empty source directory imports as a namespace package.
        pytest.skip("fastsock is not built (no backends()/new_event_loop())")
    return fastsock


def make_loop(name):
    """Return a new, not yet current, event loop for ``name``."""
    if name == "asyncio":
        return asyncio.new_event_loop()
    fastsock = _fastsock_or_skip()
    info = fastsock.backends().get(name)
    if info is None:
        reason = "backend not listed by fastsock.backends()"
        available = False
    else:
        available = bool(info.available)
        reason = getattr(info, "reason", None)
    if not available:
        msg = f"fastsock backend {name!r} unavailable: {reason}"
        if name == "epoll" and sys.platform.startswith("linux"):
            pytest.fail(msg + " (epoll must always be available on Linux)")
        pytest.skip(msg)
    loop = fastsock.new_event_loop(backend=name)
    assert isinstance(loop, asyncio.AbstractEventLoop)
    assert loop.backend == name
    return loop


def finalize_loop(loop):
    """Cancel leftovers, shut down asyncgens and the executor, close."""
    try:
        if loop.is_closed() or loop.is_running():
            return
        try:
            tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in tasks:
                t.cancel()
            if tasks:
                loop.run_until_complete(asyncio.wait_for(
                    asyncio.gather(*tasks, return_exceptions=True), 10))
            loop.run_until_complete(
                asyncio.wait_for(loop.shutdown_asyncgens(), 10))
            loop.run_until_complete(
                asyncio.wait_for(loop.shutdown_default_executor(), 10))
        finally:
            loop.close()
    finally:
        asyncio.set_event_loop(None)


class ErrorRecorder:
    """Exception handler installed by the fixture: records every call."""

    def __init__(self):
        self.contexts = []

    def __call__(self, loop, context):
        self.contexts.append(context)


@pytest.fixture(params=BACKENDS)
def loop(request, fd_leak_check):
    """A fresh event loop, set as current, torn down after the test.

    An exception handler that records calls is installed: a test fails if the
    loop reported an unexpected error (a callback raising, a transport fatal
    error) unless it is marked ``allow_loop_errors`` or replaced the handler.
    """
    lp = make_loop(request.param)
    asyncio.set_event_loop(lp)
    recorder = ErrorRecorder()
    lp.set_exception_handler(recorder)
    try:
        yield lp
    finally:
        still_ours = (not lp.is_closed()
                      and lp.get_exception_handler() is recorder)
        finalize_loop(lp)
        gc.collect()
        if (still_ours and recorder.contexts
                and request.node.get_closest_marker("allow_loop_errors")
                is None):
            msgs = "\n".join(
                f"  {c.get('message')!r}: {c.get('exception')!r}"
                for c in recorder.contexts)
            pytest.fail("event loop reported unexpected errors:\n" + msgs)


@pytest.fixture
def backend_name(loop, request):
    """'asyncio', 'epoll' or 'uring': the param of the current loop."""
    return request.node.callspec.params["loop"]


@pytest.fixture
def run(loop):
    """run(coro, timeout=10): run a coroutine on the fixture loop."""
    def _run(coro, timeout=10.0):
        return run_coro(loop, coro, timeout)
    return _run


@pytest.fixture
def new_loop(fd_leak_check, request):
    """Factory for extra loops of the same kind; all are closed at teardown."""
    made = []

    def factory():
        name = request.node.callspec.params.get("loop", "asyncio")
        lp = make_loop(name)
        made.append(lp)
        return lp

    yield factory
    for lp in made:
        if not lp.is_closed() and not lp.is_running():
            lp.close()


# ---------------------------------------------------------------------------
# File descriptor leak check
# ---------------------------------------------------------------------------

def _open_fds():
    """Map fd -> readlink target, for fds that are still open after listing
    (the directory fd used by the listing itself is dropped)."""
    result = {}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            result[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
    return result


# fds reported as leaked by an earlier test: when they are finally closed
# (the failing test's traceback released), that is not the next test's fault.
_reported_leaks = {}


@pytest.fixture(autouse=True)
def fd_leak_check(request):
    if not os.path.isdir("/proc/self/fd"):
        yield
        return
    gc.collect()
    before = _open_fds()
    yield
    deadline = time.monotonic() + 2.0
    while True:
        gc.collect()
        after = _open_fds()
        leaked = {fd: t for fd, t in after.items()
                  if fd not in before or before[fd] != t}
        if not leaked or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    problems = []
    if leaked:
        _reported_leaks.update(leaked)
        desc = ", ".join(f"{fd} -> {t}" for fd, t in sorted(leaked.items()))
        problems.append(f"test leaked file descriptors: {desc}")
    # An fd that was open before and is gone now was closed by someone who
    # did not own it: the double-close bug class.
    gone = {fd: t for fd, t in before.items()
            if fd not in after and _reported_leaks.get(fd) != t}
    if gone:
        desc = ", ".join(f"{fd} -> {t}" for fd, t in sorted(gone.items()))
        problems.append(f"test closed file descriptors it did not open: {desc}")
    if problems:
        pytest.fail("; ".join(problems))
