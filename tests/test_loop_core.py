"""Loop core: scheduling, run/stop/close, tasks, futures, threads, debug."""

import asyncio
import concurrent.futures
import contextvars
import threading
import time

import pytest


# ---------------------------------------------------------------------------
# call_soon / call_later / call_at
# ---------------------------------------------------------------------------

def test_call_soon_fifo_order_and_args(loop):
    order = []
    for i in range(50):
        loop.call_soon(order.append, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert order == list(range(50))


def test_call_soon_returns_cancellable_handle(loop):
    order = []
    h1 = loop.call_soon(order.append, 1)
    h2 = loop.call_soon(order.append, 2)
    loop.call_soon(order.append, 3)
    # Duck-typed: a C loop may use its own handle classes (uvloop does).
    assert callable(h1.cancel) and h1.cancelled() is False
    assert not h2.cancelled()
    h2.cancel()
    assert h2.cancelled()
    h2.cancel()  # idempotent
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert order == [1, 3]


def test_call_soon_rejects_coroutines_and_non_callables_in_debug(loop):
    # asyncio validates the callback only in debug mode.
    loop.set_debug(True)

    async def coro():
        pass

    with pytest.raises(TypeError):
        loop.call_soon(coro)
    with pytest.raises(TypeError):
        loop.call_soon(42)
    with pytest.raises(TypeError):
        loop.call_later(0.01, coro)
    with pytest.raises(TypeError):
        loop.call_at(loop.time(), coro)
    with pytest.raises(TypeError):
        loop.call_soon_threadsafe(coro)


def test_call_soon_context(loop):
    var = contextvars.ContextVar("var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in-ctx")
    seen = []
    loop.call_soon(lambda: seen.append(var.get()), context=ctx)
    loop.call_soon(lambda: seen.append(var.get()))
    loop.call_later(0, lambda: seen.append(var.get()), context=ctx)
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    assert seen == ["in-ctx", "default", "in-ctx"]


def test_call_soon_context_left_after_callback_error(loop):
    # A callback that raises still leaves its context: the same context
    # can run the next callback, and the error goes to the handler.
    var = contextvars.ContextVar("var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in-ctx")
    seen, errors = [], []
    loop.set_exception_handler(lambda lp, c: errors.append(c["exception"]))

    def boom():
        seen.append(var.get())
        var.set("changed")
        raise ValueError("boom")

    loop.call_soon(boom, context=ctx)
    loop.call_soon(lambda: seen.append(var.get()), context=ctx)
    loop.call_soon(lambda: seen.append(var.get()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["in-ctx", "changed", "default"]
    assert [type(e) for e in errors] == [ValueError]


def test_call_soon_context_already_entered(loop, caplog):
    # A loop run from inside a context cannot enter that context again
    # for a callback (as Context.run): RuntimeError, reported, and the
    # loop goes on. (3.12+ asyncio runs the exception handler in the
    # handle's context too, which fails the same way and is logged.)
    errors = []
    loop.set_exception_handler(lambda lp, c: errors.append(c["exception"]))
    ctx = contextvars.copy_context()
    ran = []

    def inside():
        loop.call_soon(ran.append, 1, context=ctx)
        loop.call_soon(ran.append, 2)
        loop.call_soon(loop.stop)
        loop.run_forever()
    ctx.run(inside)
    assert ran == [2]
    reported = [type(e) for e in errors] + [
        type(r.exc_info[1]) for r in caplog.records if r.exc_info]
    assert reported == [RuntimeError]
    assert "already entered" in str((errors or [caplog.records[0].exc_info[1]])[0])


def test_callbacks_scheduled_during_iteration_run_later(loop):
    """stop() runs the current batch; work scheduled by that batch waits for
    the next run (documented asyncio semantics)."""
    order = []

    def first():
        order.append("first")
        loop.stop()
        loop.call_soon(order.append, "third")

    loop.call_soon(first)
    loop.call_soon(order.append, "second")
    loop.run_forever()
    assert order == ["first", "second"]
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert order == ["first", "second", "third"]


def test_stop_before_run_forever_runs_one_iteration(loop):
    order = []
    loop.call_soon(order.append, 1)
    loop.stop()
    loop.run_forever()
    assert order == [1]
    assert not loop.is_running()


def test_call_later_ordering(loop):
    order = []
    delays = [0.05, 0.01, 0.03, 0.0, 0.02, 0.04]
    for d in delays:
        loop.call_later(d, order.append, d)
    loop.call_later(0.08, loop.stop)
    loop.run_forever()
    assert order == sorted(delays)


def test_call_later_negative_delay_runs(loop):
    fired = []
    loop.call_later(-5, fired.append, 1)
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    assert fired == [1]


def test_call_at_ordering_and_not_early(loop):
    now = loop.time()
    fired = []
    whens = [now + 0.03, now + 0.01, now + 0.02]
    for w in whens:
        loop.call_at(w, lambda w=w: fired.append((w, loop.time())))
    loop.call_at(now + 0.05, loop.stop)
    loop.run_forever()
    assert [w for w, _ in fired] == sorted(whens)
    for when, at in fired:
        # A timer must not run before its time (1 ms slack for clock
        # resolution/rounding).
        assert at >= when - 0.001, (when, at)


def test_timer_handle_cancel_and_when(loop):
    fired = []
    h = loop.call_later(0.01, fired.append, "cancelled")
    assert callable(h.cancel) and callable(h.when)
    assert h.when() == pytest.approx(loop.time() + 0.01, abs=0.5)
    h.cancel()
    assert h.cancelled()
    loop.call_later(0.03, loop.stop)
    loop.run_forever()
    assert fired == []


def test_cancel_many_timers(loop):
    fired = []
    handles = [loop.call_later(0.001 * (i % 10), fired.append, i)
               for i in range(1000)]
    for h in handles[::2]:
        h.cancel()
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert sorted(fired) == list(range(1, 1000, 2))


def test_timer_cancelled_by_earlier_callback(loop):
    fired = []
    h2 = loop.call_later(0.02, fired.append, 2)
    loop.call_later(0.01, lambda: (fired.append(1), h2.cancel()))
    loop.call_later(0.04, loop.stop)
    loop.run_forever()
    assert fired == [1]


def test_time_is_monotonic(loop):
    t0 = loop.time()
    assert isinstance(t0, float)
    samples = [loop.time() for _ in range(1000)]
    assert all(a <= b for a, b in zip(samples, samples[1:]))
    assert samples[0] >= t0
    start = loop.time()
    done = loop.create_future()
    loop.call_later(0.05, done.set_result, None)
    loop.run_until_complete(done)
    assert loop.time() - start >= 0.05 - 0.001


def test_sleep_in_coroutine(loop, run):
    async def main():
        t0 = loop.time()
        await asyncio.sleep(0.02)
        return loop.time() - t0

    assert run(main()) >= 0.02 - 0.001


# ---------------------------------------------------------------------------
# run_forever / run_until_complete / stop / close
# ---------------------------------------------------------------------------

def test_run_until_complete_returns_result(loop):
    async def main():
        await asyncio.sleep(0)
        return 42

    assert loop.run_until_complete(main()) == 42
    assert not loop.is_running()


def test_run_until_complete_propagates_exception(loop):
    class Boom(Exception):
        pass

    async def main():
        raise Boom("x")

    with pytest.raises(Boom):
        loop.run_until_complete(main())


def test_run_until_complete_future(loop):
    fut = loop.create_future()
    loop.call_soon(fut.set_result, "ok")
    assert loop.run_until_complete(fut) == "ok"


def test_run_until_complete_stopped_early(loop):
    fut = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError):
        loop.run_until_complete(fut)
    assert not fut.done()


def test_run_until_complete_future_of_other_loop(loop):
    other = asyncio.new_event_loop()
    try:
        fut = other.create_future()
        with pytest.raises(ValueError):
            loop.run_until_complete(fut)
    finally:
        other.close()


def test_is_running(loop):
    seen = []

    async def main():
        seen.append(loop.is_running())
        seen.append(asyncio.get_running_loop() is loop)
        seen.append(asyncio.get_event_loop() is loop)

    assert not loop.is_running()
    loop.run_until_complete(main())
    assert seen == [True, True, True]
    assert not loop.is_running()


def test_nested_run_raises(loop):
    errors = []

    async def main():
        coro = asyncio.sleep(0)
        try:
            loop.run_until_complete(coro)
        except RuntimeError as exc:
            errors.append(exc)
        finally:
            coro.close()
        try:
            loop.run_forever()
        except RuntimeError as exc:
            errors.append(exc)

    loop.run_until_complete(main())
    assert len(errors) == 2


def test_running_loop_cannot_be_closed(loop):
    errors = []

    def cb():
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(exc)
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert len(errors) == 1
    assert not loop.is_closed()


def test_closed_loop_raises(loop):
    assert not loop.is_closed()
    loop.close()
    assert loop.is_closed()
    loop.close()  # idempotent
    with pytest.raises(RuntimeError):
        loop.call_soon(lambda: None)
    with pytest.raises(RuntimeError):
        loop.call_later(1, lambda: None)
    with pytest.raises(RuntimeError):
        loop.call_at(loop.time() + 1, lambda: None)
    with pytest.raises(RuntimeError):
        loop.call_soon_threadsafe(lambda: None)
    with pytest.raises(RuntimeError):
        loop.run_forever()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        loop.run_until_complete(coro)
    coro.close()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        loop.create_task(coro)
    coro.close()
    with pytest.raises(RuntimeError):
        loop.run_in_executor(None, lambda: None)


def test_close_discards_pending_callbacks(loop):
    fired = []
    loop.call_soon(fired.append, 1)
    loop.call_later(0.001, fired.append, 2)
    loop.close()
    assert fired == []


def test_run_forever_restartable(loop):
    count = []
    for i in range(3):
        loop.call_soon(count.append, i)
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert count == [0, 1, 2]


def test_exception_in_callback_does_not_stop_loop(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    order = []

    def bad():
        raise ZeroDivisionError("boom")

    loop.call_soon(bad)
    loop.call_soon(order.append, "after")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert order == ["after"]
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], ZeroDivisionError)
    assert "message" in contexts[0]
    assert "handle" in contexts[0]


def test_keyboard_interrupt_in_callback_propagates(loop):
    def bad():
        raise KeyboardInterrupt

    loop.call_soon(bad)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert not loop.is_running()
    # The loop stays usable.
    loop.call_soon(loop.stop)
    loop.run_forever()


# ---------------------------------------------------------------------------
# call_soon_threadsafe
# ---------------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_loop_run_by_a_later_thread(loop, backend_name):
    """Made here, run in one thread, then in another. A selector loop runs
    in any thread; an io_uring loop belongs to the first thread that ran it
    (its ring's single issuer) and refuses the later one with RuntimeError
    before any callback runs there, even when glibc gives the later thread
    the first one's pthread_t."""
    first = threading.Thread(
        target=lambda: loop.run_until_complete(asyncio.sleep(0)))
    first.start()
    first.join(30)
    seen = {}

    def later():
        ran = []
        loop.call_soon(lambda: ran.append(threading.get_ident()))
        loop.call_soon(loop.stop)
        try:
            loop.run_forever()
        except RuntimeError as exc:
            seen["error"] = exc
        seen["ran"], seen["me"] = ran, threading.get_ident()

    th = threading.Thread(target=later)
    th.start()
    th.join(30)
    if backend_name == "uring":
        assert "another thread" in str(seen.get("error"))
        assert seen["ran"] == []
    else:
        assert "error" not in seen
        assert seen["ran"] == [seen["me"]]
    # Closing works from any thread (here, neither of the two that ran it;
    # the fixture's teardown would run the loop once more, here).
    loop.close()


def test_call_soon_threadsafe_wakes_blocked_loop(loop):
    """No timers, no I/O: only the thread-safe wakeup can end this run."""
    fut = loop.create_future()
    started = threading.Event()

    def worker():
        started.wait()
        time.sleep(0.05)  # let the loop block in its poll
        loop.call_soon_threadsafe(fut.set_result, threading.get_ident())

    t = threading.Thread(target=worker)
    t.start()
    loop.call_soon(started.set)
    try:
        ident = loop.run_until_complete(fut)
    finally:
        t.join()
    assert ident == t.ident


@pytest.mark.timeout(30)
def test_call_soon_threadsafe_many_threads(loop):
    n_threads, per_thread = 4, 500
    total = n_threads * per_thread
    got = []
    done = loop.create_future()

    def cb(x):
        got.append(x)
        if len(got) == total:
            done.set_result(None)

    def worker(k):
        for i in range(per_thread):
            loop.call_soon_threadsafe(cb, (k, i))

    threads = [threading.Thread(target=worker, args=(k,))
               for k in range(n_threads)]
    for t in threads:
        t.start()
    loop.run_until_complete(asyncio.wait_for(done, 20))
    for t in threads:
        t.join()
    assert len(got) == total
    for k in range(n_threads):
        mine = [i for kk, i in got if kk == k]
        assert mine == list(range(per_thread))  # per-thread FIFO


def test_call_soon_threadsafe_handle_cancel(loop):
    fired = []
    h = loop.call_soon_threadsafe(fired.append, 1)
    h.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert fired == []


def test_run_coroutine_threadsafe(loop):
    result = []

    async def coro(x):
        await asyncio.sleep(0)
        return x * 2

    def worker():
        f = asyncio.run_coroutine_threadsafe(coro(21), loop)
        result.append(f.result(timeout=10))
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=worker)
    t.start()
    loop.run_forever()
    t.join()
    assert result == [42]


# ---------------------------------------------------------------------------
# Futures and tasks
# ---------------------------------------------------------------------------

def test_create_future(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future) or asyncio.isfuture(fut)
    assert fut.get_loop() is loop
    assert not fut.done()
    loop.call_soon(fut.set_result, 5)
    assert loop.run_until_complete(fut) == 5


def test_create_task(loop):
    async def coro():
        await asyncio.sleep(0)
        return "done"

    task = loop.create_task(coro(), name="my-task")
    assert isinstance(task, asyncio.Task)
    assert task.get_name() == "my-task"
    assert task.get_loop() is loop
    assert loop.run_until_complete(task) == "done"


def test_create_task_rejects_non_coroutine(loop):
    with pytest.raises(TypeError):
        loop.create_task(lambda: None)


def test_create_task_on_a_closed_loop_raises(loop, new_loop):
    lp = new_loop()
    lp.close()

    async def coro():
        pass

    c = coro()
    with pytest.raises(RuntimeError, match="closed"):
        lp.create_task(c)
    c.close()


def test_create_task_source_traceback_ends_at_the_caller(loop):
    """In debug mode a task remembers where it was made: the caller's line,
    not the loop's create_task()."""
    async def coro():
        pass

    loop.set_debug(True)
    task = loop.create_task(coro())
    assert task._source_traceback[-1].name == \
        "test_create_task_source_traceback_ends_at_the_caller"
    loop.run_until_complete(task)


def test_handle_source_traceback_ends_at_the_caller(loop):
    """In debug mode a handle remembers where it was scheduled: the
    caller's line, with the caller's callers above it (asyncio drops its
    own frames; a C loop must not drop the caller's)."""
    loop.set_debug(True)

    def schedule():
        return [loop.call_soon(lambda: None),
                loop.call_soon_threadsafe(lambda: None),
                loop.call_later(60, lambda: None),
                loop.call_at(loop.time() + 60, lambda: None)]

    def outer():
        return schedule()

    handles = outer()
    for h in handles:
        names = [frame.name for frame in h._source_traceback[-2:]]
        assert names == ["outer", "schedule"], (h, names)
        h.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()


class _RunOnly:
    """A context as asyncio's Handle uses one: only run() is called."""

    def __init__(self):
        self.runs = 0

    def run(self, callback, *args):
        self.runs += 1
        return callback(*args)


def test_call_soon_context_with_only_a_run_method(loop):
    ctx = _RunOnly()
    seen = []

    async def coro():
        seen.append("task")

    loop.call_soon(seen.append, "handle", context=ctx)
    task = loop.create_task(coro(), context=ctx)
    loop.run_until_complete(task)
    assert seen == ["handle", "task"]
    assert ctx.runs >= 2


def test_create_future_and_get_debug(loop):
    """create_future() gives an asyncio.Future of this loop; get_debug()
    follows set_debug(), and a future made in debug mode remembers where."""
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is loop
    assert not fut.done()
    loop.call_soon(fut.set_result, 7)
    assert loop.run_until_complete(fut) == 7
    assert loop.get_debug() is False
    loop.set_debug(True)
    assert loop.get_debug() is True
    fut = loop.create_future()
    assert any(frame.name == "test_create_future_and_get_debug"
               for frame in fut._source_traceback)
    fut.cancel()
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_create_task_context(loop):
    var = contextvars.ContextVar("var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "custom")

    async def read():
        return var.get()

    assert loop.run_until_complete(loop.create_task(read(), context=ctx)) \
        == "custom"
    assert loop.run_until_complete(loop.create_task(read())) == "default"


def test_task_factory(loop):
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append((lp, kwargs))
        return asyncio.Task(coro, loop=lp, **kwargs)

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def coro():
        return 1

    assert loop.run_until_complete(loop.create_task(coro())) == 1
    ctx = contextvars.copy_context()
    assert loop.run_until_complete(loop.create_task(coro(), context=ctx)) == 1
    assert [c[0] for c in calls] == [loop, loop]
    assert calls[1][1].get("context") is ctx
    # asyncio.ensure_future and create_task go through the factory too.
    loop.run_until_complete(asyncio.ensure_future(coro(), loop=loop))
    assert len(calls) == 3
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    with pytest.raises(TypeError):
        loop.set_task_factory(42)


def test_task_cancel(loop):
    started = loop.create_future()

    async def sleeper():
        started.set_result(None)
        await asyncio.sleep(3600)

    async def main():
        t = loop.create_task(sleeper())
        await started
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        return t.cancelled()

    assert loop.run_until_complete(main()) is True


def test_gather_many_tasks(loop, run):
    async def work(i):
        for _ in range(3):
            await asyncio.sleep(0)
        return i

    async def main():
        return await asyncio.gather(*(work(i) for i in range(500)))

    assert run(main()) == list(range(500))


def test_asyncio_timeout_and_wait_for(loop, run):
    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(3600), 0.01)
        return True

    assert run(main())


# ---------------------------------------------------------------------------
# Exception handler API
# ---------------------------------------------------------------------------

def test_exception_handler_api(loop):
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None
    seen = []

    def handler(lp, ctx):
        seen.append((lp, ctx))

    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.call_exception_handler({"message": "hello", "extra": 1})
    assert len(seen) == 1
    assert seen[0][0] is loop
    assert seen[0][1]["message"] == "hello"
    assert seen[0][1]["extra"] == 1
    with pytest.raises(TypeError):
        loop.set_exception_handler("not callable")
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


def test_default_exception_handler_logs(loop, caplog):
    loop.set_exception_handler(None)
    with caplog.at_level("ERROR", logger="asyncio"):
        loop.call_exception_handler({
            "message": "something odd",
            "exception": ValueError("detail"),
        })
        loop.default_exception_handler({"message": "direct call"})
    text = caplog.text
    assert "something odd" in text
    assert "ValueError" in text
    assert "direct call" in text


def test_failing_exception_handler_is_logged(loop, caplog):
    def handler(lp, ctx):
        raise RuntimeError("handler broke")

    loop.set_exception_handler(handler)
    with caplog.at_level("ERROR", logger="asyncio"):
        loop.call_exception_handler({"message": "original"})
    # The error in the handler is logged, not raised.
    assert "handler broke" in caplog.text or "Unhandled error" in caplog.text


def test_unretrieved_task_exception_reported(loop):
    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(ctx))

    async def bad():
        raise ValueError("never retrieved")

    task = loop.create_task(bad())
    loop.run_until_complete(asyncio.wait([task]))
    del task
    import gc
    gc.collect()
    assert any(isinstance(c.get("exception"), ValueError) for c in seen)


# ---------------------------------------------------------------------------
# Debug mode
# ---------------------------------------------------------------------------

def test_debug_flag(loop):
    loop.set_debug(False)
    assert loop.get_debug() is False
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


@pytest.mark.timeout(20)
def test_debug_call_soon_from_wrong_thread_raises(loop):
    loop.set_debug(True)
    errors = []
    done = loop.create_future()

    def worker():
        try:
            loop.call_soon(lambda: None)
        except RuntimeError as exc:
            errors.append(exc)
        try:
            loop.call_later(0.01, lambda: None)
        except RuntimeError as exc:
            errors.append(exc)
        loop.call_soon_threadsafe(done.set_result, None)

    def start():
        threading.Thread(target=worker).start()

    loop.call_soon(start)
    loop.run_until_complete(done)
    assert len(errors) == 2


def test_no_debug_call_soon_from_other_thread_does_not_raise(loop):
    # Without debug mode asyncio does not check the thread (the call is still
    # unsafe, so the loop is not running while we do it).
    loop.set_debug(False)
    fired = []
    t = threading.Thread(target=lambda: loop.call_soon(fired.append, 1))
    t.start()
    t.join()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert fired == [1]


def test_debug_slow_callback_warning(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01

    def slow():
        time.sleep(0.05)

    with caplog.at_level("WARNING", logger="asyncio"):
        loop.call_soon(slow)
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert "Executing" in caplog.text and "took" in caplog.text


# ---------------------------------------------------------------------------
# Executor
# ---------------------------------------------------------------------------

def test_run_in_executor(loop, run):
    main_ident = threading.get_ident()

    def blocking(x):
        return x + 1, threading.get_ident()

    async def main():
        return await loop.run_in_executor(None, blocking, 1)

    value, ident = run(main())
    assert value == 2
    assert ident != main_ident


def test_run_in_executor_exception(loop, run):
    def blocking():
        raise KeyError("k")

    async def main():
        with pytest.raises(KeyError):
            await loop.run_in_executor(None, blocking)
        return True

    assert run(main())


def test_run_in_executor_rejects_coroutine_function_in_debug(loop):
    loop.set_debug(True)  # asyncio checks the callable only in debug mode

    async def coro():
        pass

    with pytest.raises(TypeError):
        loop.run_in_executor(None, coro)


def test_run_in_executor_explicit_executor(loop, run):
    with concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="explicit") as ex:
        async def main():
            return await loop.run_in_executor(
                ex, lambda: threading.current_thread().name)

        assert run(main()).startswith("explicit")


def test_set_default_executor(loop, run):
    ex = concurrent.futures.ThreadPoolExecutor(
        1, thread_name_prefix="default-ex")
    loop.set_default_executor(ex)

    async def main():
        return await loop.run_in_executor(
            None, lambda: threading.current_thread().name)

    assert run(main()).startswith("default-ex")
    with pytest.raises(TypeError):
        loop.set_default_executor(object())
    run(loop.shutdown_default_executor())
    # shut down: the executor no longer accepts work
    with pytest.raises(RuntimeError):
        ex.submit(lambda: None)


def test_shutdown_default_executor(loop, run):
    async def main():
        await loop.run_in_executor(None, time.sleep, 0.01)
        await loop.shutdown_default_executor()
        with pytest.raises(RuntimeError):
            loop.run_in_executor(None, lambda: None)
        return True

    assert run(main())


def test_shutdown_default_executor_without_executor(loop, run):
    run(loop.shutdown_default_executor())


def test_getaddrinfo_runs_in_executor_like_call(loop, run):
    import socket

    async def main():
        return await loop.getaddrinfo(
            "127.0.0.1", 80, family=socket.AF_INET, type=socket.SOCK_STREAM)

    infos = run(main())
    assert infos
    family, type_, proto, canon, addr = infos[0]
    assert family == socket.AF_INET
    assert type_ == socket.SOCK_STREAM
    assert addr == ("127.0.0.1", 80)


# ---------------------------------------------------------------------------
# Async generators
# ---------------------------------------------------------------------------

def test_shutdown_asyncgens(loop):
    finalized = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            finalized.append(True)

    async def main():
        g = agen()
        assert await g.__anext__() == 1
        return g  # keep it alive, suspended

    g = loop.run_until_complete(main())
    assert finalized == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert finalized == [True]
    del g


def test_asyncgen_finalized_by_gc(loop, run):
    finalized = loop.create_future()

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            finalized.set_result(True)

    async def main():
        g = agen()
        await g.__anext__()
        del g
        import gc
        gc.collect()
        return await finalized

    assert run(main()) is True


def test_asyncgen_after_shutdown_warns(loop):
    loop.run_until_complete(loop.shutdown_asyncgens())

    async def agen():
        yield 1

    async def main():
        g = agen()
        with pytest.warns(ResourceWarning):
            await g.__anext__()
        await g.aclose()

    loop.run_until_complete(main())
