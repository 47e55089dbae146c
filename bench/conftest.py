"""pytest-benchmark suites: `pytest bench --benchmark-only`.

Every benchmark takes the `loop` fixture, parametrized over the fastsock
backends (epoll, uring) and the comparisons (stock asyncio, uvloop).  A loop
that cannot run here is skipped with the reason, never failed: speed suites
do not judge behaviour (tests/ does that).

Each benchmark times a batch of N operations run inside the loop and records
N in extra_info["ops"], so ops/s = ops / mean; I/O benchmarks also record
MiB/s where it means something.
"""
import asyncio
import gc

import pytest

LOOPS = ["epoll", "uring", "asyncio", "uvloop"]


def make_loop(name):
    if name == "asyncio":
        return asyncio.SelectorEventLoop()
    if name == "uvloop":
        uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed")
        return uvloop.new_event_loop()
    try:
        import fastsock
        new_event_loop = fastsock.new_event_loop
    except (ImportError, AttributeError) as exc:
        pytest.skip(f"fastsock.new_event_loop is not importable: {exc}")
    info = fastsock.backends().get(name)
    if info is not None and not info.available:
        pytest.skip(f"fastsock backend {name!r} unavailable: {info.reason}")
    loop = new_event_loop(backend=name)
    if getattr(loop, "backend", name) != name:
        loop.close()
        pytest.skip(f"asked for backend {name!r}, got {loop.backend!r}")
    return loop


@pytest.fixture(params=LOOPS)
def loop(request):
    lp = make_loop(request.param)
    asyncio.set_event_loop(lp)
    yield lp
    try:
        pending = [t for t in asyncio.all_tasks(lp) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            lp.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        lp.run_until_complete(lp.shutdown_asyncgens())
    finally:
        lp.close()
        asyncio.set_event_loop(None)
        gc.collect()


@pytest.fixture
def bench_loop(benchmark, loop):
    """run(factory, ops, rounds): time loop.run_until_complete(factory())."""
    def run(factory, ops, rounds=10, **extra):
        benchmark.extra_info["ops"] = ops
        benchmark.extra_info.update(extra)
        result = benchmark.pedantic(lambda: loop.run_until_complete(factory()),
                                    rounds=rounds, iterations=1, warmup_rounds=1)
        stats = benchmark.stats.stats if benchmark.stats else None
        if stats is not None and stats.mean:
            benchmark.extra_info["ops_per_s"] = round(ops / stats.mean)
            if "bytes" in extra:
                benchmark.extra_info["mib_s"] = round(extra["bytes"] / stats.mean / (1 << 20), 1)
        return result
    return run


def pytest_collection_modifyitems(items):
    # One table per benchmark, with the four loops side by side.
    for item in items:
        if "benchmark" in getattr(item, "fixturenames", ()) or \
                "bench_loop" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.benchmark(group=item.originalname))
