"""The loops under test, running a coroutine on one, and marking tests
where stock asyncio (the reference) behaves otherwise than they check."""

import asyncio
import inspect
import sys

import pytest

BACKENDS = ["asyncio", "epoll", "uring"]


def run_coro(loop, coro, timeout=10.0):
    """Run ``coro`` on ``loop`` and fail with TimeoutError after ``timeout``."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def stock_asyncio_differs(request, reason, since=None, before=None,
                          when=None):
    """Mark the running test as expected to fail on stock asyncio on the
    Pythons where CPython behaves otherwise than the test checks: from
    `since` on (CPython changed it; fastsock keeps it), `before` a version
    (CPython had a bug, fixed then; fastsock follows the fix), both (a
    regression in a range of releases), on every version when neither is
    given (fastsock keeps what asyncio loses), or as `when` says (a fix
    read off the installed asyncio itself).
    `reason` names the change. Strict: once the reference agrees, the mark
    must go."""
    if request.node.callspec.params.get("loop") != "asyncio":
        return
    if when is None:
        when = ((since is None or sys.version_info >= since)
                and (before is None or sys.version_info < before))
    if when:
        request.node.add_marker(pytest.mark.xfail(reason=reason, strict=True))


def asyncio_source_has(func, text):
    """Whether the installed asyncio's `func` contains `text`: tells a
    CPython bug still present from one fixed in a later patch release."""
    return text in inspect.getsource(func)
