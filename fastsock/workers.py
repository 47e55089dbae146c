"""gunicorn worker classes that run their application on a fastsock loop.

    gunicorn app:make_app -k fastsock.workers.AiohttpWorker -w 2 --reuse-port
    gunicorn app:asgi_app -k fastsock.workers.UvicornWorker -w 2 --reuse-port

The backend comes from the environment variable FASTSOCK_BACKEND: "uring",
"epoll" or "auto" (the default when it is unset or empty: io_uring where it
works, else epoll).  A backend that cannot run here stops the worker at boot
with the reason, and gunicorn stops too rather than respawn it forever.

- AiohttpWorker is aiohttp's own GunicornWebWorker on a fastsock loop
  (install with `pip install fastsock[gunicorn]`).
- UvicornWorker is the uvicorn-worker package's UvicornWorker with
  `loop="fastsock:new_<backend>_loop"` (`pip install fastsock[uvicorn]`).

Each worker process makes its own loop after the fork: nothing of an event
loop (an epoll fd, a ring) is shared between gunicorn's processes.
"""
import asyncio
import os

import fastsock

__all__ = ["AiohttpWorker", "UvicornWorker", "backend_from_env"]

ENV = "FASTSOCK_BACKEND"

# The zero-argument factories, by backend: what uvicorn's `--loop` takes.
LOOP_FACTORIES = {"auto": "fastsock:new_event_loop",
                  "uring": "fastsock:new_uring_loop",
                  "epoll": "fastsock:new_epoll_loop"}


def backend_from_env(environ=None):
    """The backend named by FASTSOCK_BACKEND ("auto" when unset or empty).
    ValueError for a name fastsock does not know."""
    value = (os.environ if environ is None else environ).get(ENV, "")
    value = value.strip().lower() or "auto"
    if value not in LOOP_FACTORIES:
        raise ValueError(f"{ENV}={value!r}: expected one of "
                         f"{', '.join(LOOP_FACTORIES)}")
    return value


def _missing(extra, exc):
    return ImportError(f"{exc}; fastsock's gunicorn workers need it: "
                       f"pip install 'fastsock[{extra}]'")


def __getattr__(name):
    # Each worker class imports its server stack only when asked for, so
    # `fastsock.workers.UvicornWorker` works without aiohttp and the other
    # way round.
    if name == "AiohttpWorker":
        cls = _aiohttp_worker()
    elif name == "UvicornWorker":
        cls = _uvicorn_worker()
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = cls
    return cls


def _aiohttp_worker():
    try:
        from aiohttp.worker import GunicornWebWorker
        from gunicorn.workers.base import Worker
    except ImportError as exc:
        raise _missing("gunicorn", exc) from None

    class AiohttpWorker(GunicornWebWorker):
        """aiohttp's gunicorn worker (aiohttp.GunicornWebWorker) on a
        fastsock loop; the backend comes from FASTSOCK_BACKEND."""

        def init_process(self):
            # As aiohttp's workers do: a new loop after the fork.  No event
            # loop policy is involved (asyncio deprecates them from 3.14).
            backend = backend_from_env()
            self.loop = fastsock.new_event_loop(backend)
            asyncio.set_event_loop(self.loop)
            # GunicornWebWorker.init_process would make a stock loop; what
            # it does after that is Worker.init_process.
            Worker.init_process(self)

    AiohttpWorker.__module__ = __name__
    return AiohttpWorker


def _uvicorn_worker():
    try:
        from uvicorn_worker import UvicornWorker as Base
    except ImportError as exc:
        raise _missing("uvicorn", exc) from None

    class UvicornWorker(Base):
        """uvicorn-worker's UvicornWorker (ASGI applications) on a fastsock
        loop; the backend comes from FASTSOCK_BACKEND."""

        CONFIG_KWARGS = {**Base.CONFIG_KWARGS, "loop": LOOP_FACTORIES["auto"]}

        def __init__(self, *args, **kwargs):
            # uvicorn's Config is made here (gunicorn builds each worker
            # object just before forking it), with the factory by name.
            self.CONFIG_KWARGS = {**type(self).CONFIG_KWARGS,
                                  "loop": LOOP_FACTORIES[backend_from_env()]}
            super().__init__(*args, **kwargs)

        def init_process(self):
            # A backend that cannot run here fails the boot (gunicorn then
            # stops with "Worker failed to boot") instead of failing in
            # run(), which gunicorn would answer by respawning forever.
            fastsock._resolve(backend_from_env())
            super().init_process()

    UvicornWorker.__module__ = __name__
    return UvicornWorker
