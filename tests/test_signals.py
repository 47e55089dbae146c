"""add_signal_handler / remove_signal_handler with real signals."""

import asyncio
import os
import signal
import threading
import time

import pytest


@pytest.fixture(autouse=True)
def restore_signals():
    saved = {s: signal.getsignal(s)
             for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT,
                       signal.SIGHUP)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def test_signal_handler_called(loop):
    got = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR1, lambda a, b: got.set_result((a, b)),
                            "x", 2)
    try:
        loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        assert loop.run_until_complete(asyncio.wait_for(got, 10)) == ("x", 2)
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1) is True


def test_signal_delivered_before_loop_runs(loop):
    got = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR1, got.set_result, "early")
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert loop.run_until_complete(asyncio.wait_for(got, 10)) == "early"
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)


@pytest.mark.timeout(20)
def test_signal_wakes_blocked_loop(loop):
    """No timers, no I/O: the signal itself must wake the loop."""
    got = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR2, got.set_result, "woke")
    ready = threading.Event()

    def sender():
        ready.wait()
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGUSR2)

    t = threading.Thread(target=sender)
    t.start()
    loop.call_soon(ready.set)
    try:
        assert loop.run_until_complete(got) == "woke"
    finally:
        t.join()
        loop.remove_signal_handler(signal.SIGUSR2)


def test_signal_handler_runs_in_loop_context(loop):
    seen = []
    got = loop.create_future()

    def handler():
        seen.append(threading.get_ident())
        seen.append(asyncio.get_running_loop() is loop)
        got.set_result(None)

    loop.add_signal_handler(signal.SIGUSR1, handler)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        loop.run_until_complete(asyncio.wait_for(got, 10))
        assert seen == [threading.get_ident(), True]
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)


def test_many_signals_coalesce_but_handler_runs(loop):
    count = []
    done = loop.create_future()

    def handler():
        count.append(1)
        if not done.done():
            done.set_result(None)

    loop.add_signal_handler(signal.SIGUSR1, handler)
    try:
        for _ in range(5):
            os.kill(os.getpid(), signal.SIGUSR1)
        loop.run_until_complete(asyncio.wait_for(done, 10))
        assert 1 <= len(count) <= 5
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)


def test_replace_signal_handler(loop):
    got = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR1, got.set_result, "old")
    loop.add_signal_handler(signal.SIGUSR1, got.set_result, "new")
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert loop.run_until_complete(asyncio.wait_for(got, 10)) == "new"
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)


def test_remove_signal_handler_restores_default(loop):
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    assert loop.remove_signal_handler(signal.SIGUSR2) is False
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    assert loop.remove_signal_handler(signal.SIGINT) is True
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_close_removes_signal_handlers(loop):
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL


def test_invalid_signals(loop):
    with pytest.raises(RuntimeError):
        loop.add_signal_handler(signal.SIGKILL, lambda: None)
    with pytest.raises(RuntimeError):
        loop.add_signal_handler(signal.SIGSTOP, lambda: None)
    with pytest.raises(ValueError):
        loop.add_signal_handler(0, lambda: None)
    with pytest.raises(ValueError):
        loop.add_signal_handler(signal.NSIG, lambda: None)
    with pytest.raises(ValueError):
        loop.add_signal_handler(-1, lambda: None)
    with pytest.raises(TypeError):
        loop.add_signal_handler("SIGUSR1", lambda: None)
    with pytest.raises(ValueError):
        loop.remove_signal_handler(signal.NSIG + 10)
    # remove of an uncatchable signal with no handler: just False
    assert loop.remove_signal_handler(signal.SIGKILL) is False


def test_coroutine_handler_rejected(loop):
    async def coro():
        pass

    with pytest.raises(TypeError):
        loop.add_signal_handler(signal.SIGUSR1, coro)
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_signal_handler_on_closed_loop(loop):
    loop.close()
    with pytest.raises(RuntimeError):
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)


def test_signal_handler_from_non_main_thread(loop, new_loop):
    """Only the main thread may install signal handlers (RuntimeError)."""
    errors = []

    def worker():
        lp = new_loop()
        try:
            lp.add_signal_handler(signal.SIGUSR1, lambda: None)
        except RuntimeError as exc:
            errors.append(exc)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)
        finally:
            lp.close()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError), errors


def test_signal_handler_exception_goes_to_exception_handler(loop):
    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(
        type(ctx.get("exception"))))
    done = loop.create_future()

    def bad():
        loop.call_soon(done.set_result, None)
        raise ZeroDivisionError

    loop.add_signal_handler(signal.SIGUSR1, bad)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        loop.run_until_complete(asyncio.wait_for(done, 10))
        assert seen == [ZeroDivisionError]
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)


def test_sigchld_handler_coexists_with_subprocess(loop, run):
    import sys
    got = []
    loop.add_signal_handler(signal.SIGCHLD, got.append, 1)

    async def main():
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "")
        assert await proc.wait() == 0

    try:
        run(main(), timeout=30)
    finally:
        loop.remove_signal_handler(signal.SIGCHLD)
