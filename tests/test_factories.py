"""Zero-argument loop factories (for `asyncio.run(loop_factory=...)`,
asyncio.Runner and `uvicorn --loop module:attr`) and EventLoopPolicy's
deprecation on Python 3.14+."""

import asyncio
import importlib
import sys
import warnings

import pytest

fastsock = pytest.importorskip("fastsock")

FACTORIES = {"new_event_loop": None, "new_uring_loop": "uring",
             "new_epoll_loop": "epoll"}


def _available(backend):
    return backend is None or fastsock.backends()[backend].available


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_factory_by_name_runs_a_coroutine(name):
    backend = FACTORIES[name]
    if not _available(backend):
        pytest.skip(f"{backend}: {fastsock.backends()[backend].reason}")
    # What uvicorn does with "--loop fastsock:NAME": import the attribute,
    # call it with no arguments.
    module, _, attr = f"fastsock:{name}".partition(":")
    factory = getattr(importlib.import_module(module), attr)

    async def main():
        await asyncio.sleep(0)
        return asyncio.get_running_loop().backend

    with asyncio.Runner(loop_factory=factory) as runner:
        got = runner.run(main())
    expected = backend or next(b for b, info in fastsock.backends().items()
                               if info.available)
    assert got == expected


@pytest.mark.skipif(sys.version_info < (3, 12),
                    reason="asyncio.run(loop_factory=) is new in 3.12")
def test_asyncio_run_loop_factory():
    async def main():
        return type(asyncio.get_running_loop()).__module__

    got = asyncio.run(main(), loop_factory=fastsock.new_epoll_loop)
    assert got.startswith("fastsock")


def test_policy_does_not_warn_before_314(monkeypatch):
    monkeypatch.setattr(fastsock, "_POLICY_DEPRECATED", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy = fastsock.EventLoopPolicy("epoll")
    loop = policy.new_event_loop()
    try:
        assert loop.backend == "epoll"
    finally:
        loop.close()
    assert isinstance(policy, asyncio.AbstractEventLoopPolicy)
    assert type(policy).__name__ == "EventLoopPolicy"


def test_policy_warns_from_314(monkeypatch):
    monkeypatch.setattr(fastsock, "_POLICY_DEPRECATED", True)
    with pytest.warns(DeprecationWarning, match="loop_factory"):
        cls = fastsock.EventLoopPolicy
    assert cls is fastsock._event_loop_policy_class()


def test_policy_deprecation_follows_the_interpreter():
    assert fastsock._POLICY_DEPRECATED == (sys.version_info >= (3, 14))
