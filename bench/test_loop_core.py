"""Loop core without I/O: callbacks, timers, futures."""
import asyncio

N_CALLS = 20000
N_TIMERS = 5000
N_FUTURES = 5000


def test_call_soon_throughput(loop, bench_loop):
    async def batch():
        done = loop.create_future()
        left = [N_CALLS]

        def cb():
            left[0] -= 1
            if not left[0]:
                done.set_result(None)
        for _ in range(N_CALLS):
            loop.call_soon(cb)
        await done
    bench_loop(batch, N_CALLS)


def test_timers(loop, bench_loop):
    """Timer heap: schedule N timers (all due at once, in shuffled order so
    the heap does real work), cancel every fourth, run the rest."""
    order = [(i * 7919) % N_TIMERS for i in range(N_TIMERS)]

    async def batch():
        done = loop.create_future()
        expected = N_TIMERS - len(range(0, N_TIMERS, 4))
        fired = [0]

        def cb():
            fired[0] += 1
            if fired[0] == expected:
                done.set_result(None)
        now = loop.time()
        handles = [loop.call_at(now - 1.0 + k * 1e-7, cb) for k in order]
        for h in handles[::4]:
            h.cancel()
        await done
    bench_loop(batch, N_TIMERS)


def test_future_resolution(loop, bench_loop):
    """create_future + set_result from a callback + await, in a task."""
    async def batch():
        for i in range(N_FUTURES):
            fut = loop.create_future()
            loop.call_soon(fut.set_result, i)
            await fut
    bench_loop(batch, N_FUTURES)


def test_task_switch(loop, bench_loop):
    """asyncio.sleep(0) between two tasks: the cost of one task step."""
    async def worker(n):
        for _ in range(n):
            await asyncio.sleep(0)

    async def batch():
        await asyncio.gather(worker(N_FUTURES // 2), worker(N_FUTURES // 2))
    bench_loop(batch, N_FUTURES)
