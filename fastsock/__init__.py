"""fastsock: epoll and io_uring asyncio event loops for Linux.

    import fastsock
    fastsock.run(main(), backend="uring")      # or "epoll", or "auto"
"""

import asyncio
import collections
import sys
import warnings

__all__ = ["new_event_loop", "new_uring_loop", "new_epoll_loop", "run",
           "EventLoopPolicy", "backends", "BackendInfo", "Loop"]
__version__ = "0.1.0"

BackendInfo = collections.namedtuple("BackendInfo", "available reason")
BackendInfo.__doc__ = "Whether a backend works on this host, and why not."

_BACKENDS = ("uring", "epoll")      # "auto" picks the first that works


def _driver_factory(name):
    if name == "epoll":
        from fastsock import epoll
        return epoll.new_driver
    if name == "uring":
        from fastsock import uring
        return uring.new_driver
    raise ValueError(f"unknown backend {name!r}; expected one of "
                     f"'auto', {', '.join(repr(b) for b in _BACKENDS)}")


def _availability(name, passing_errors_raise=False):
    # `passing_errors_raise`: a condition of this process that will pass
    # (out of fds: EMFILE) raises its OSError, as making any loop would,
    # instead of reading as "not available here".
    if name == "epoll":
        try:
            from fastsock import epoll      # noqa: F401
        except ImportError as exc:
            return BackendInfo(False, f"fastsock is not built: {exc}")
        return BackendInfo(True, "")
    try:
        from fastsock import uring
    except ImportError as exc:
        return BackendInfo(False, f"io_uring driver not built: {exc}")
    try:
        probe = uring.probe()
    except OSError as exc:
        if passing_errors_raise:
            raise
        return BackendInfo(False, f"{exc} (a passing condition of this "
                                  "process: asked again next time)")
    return BackendInfo(probe["available"], probe["reason"])


def backends():
    """Which backends work on this host: name -> BackendInfo(available,
    reason). `reason` says why a backend cannot be used ("" when it can)."""
    return {name: _availability(name) for name in _BACKENDS}


def _resolve(backend):
    if backend == "auto":
        reasons = []
        for name in _BACKENDS:
            info = _availability(name, passing_errors_raise=True)
            if info.available:
                return name
            reasons.append(f"{name}: {info.reason}")
        raise RuntimeError("no fastsock backend can run here ("
                           + "; ".join(reasons) + ")")
    if backend in _BACKENDS:
        info = _availability(backend, passing_errors_raise=True)
        if not info.available:
            raise RuntimeError(
                f"fastsock backend {backend!r} is not available: "
                f"{info.reason}")
        return backend
    _driver_factory(backend)     # raises ValueError for unknown names


def new_event_loop(backend="auto"):
    """A new asyncio event loop on `backend`: "epoll", "uring" or "auto"
    (io_uring where it works, else epoll).

    Raises ValueError for an unknown backend name, RuntimeError (naming the
    cause, as backends() gives it) when the backend cannot run on this
    host ("auto": when neither can), and OSError when the process is out of
    a resource the loop needs (EMFILE, ENOMEM, ...), as
    asyncio.new_event_loop() does.

    The loop may be made in one thread and run in another. An io_uring loop
    then belongs to the first thread that runs it (its ring is set up with
    IORING_SETUP_SINGLE_ISSUER): running it in any other thread raises
    RuntimeError; closing it works from any thread. The backend is this
    argument only: the FASTSOCK_BACKEND environment variable is read by
    fastsock.workers (gunicorn), not here."""
    from fastsock.eventloop import LOOP_CLASSES
    name = _resolve(backend)
    return LOOP_CLASSES[name](_driver_factory(name), name)


# --- zero-argument loop factories --------------------------------------
# For `asyncio.run(main(), loop_factory=...)`, `asyncio.Runner` and servers
# that take a factory by name: `uvicorn app:app --loop fastsock:new_uring_loop`
# (`fastsock:new_event_loop` is "auto").

def new_uring_loop():
    """A new io_uring event loop (RuntimeError, naming the cause, where
    io_uring cannot be used); it belongs to the first thread that runs it
    (see new_event_loop)."""
    return new_event_loop("uring")


def new_epoll_loop():
    """A new epoll event loop."""
    return new_event_loop("epoll")


def __getattr__(name):
    # The compiled modules load on first use, so `python -m fastsock` can
    # still explain itself (and bench the other models) without them.
    if name == "Loop":
        from fastsock.eventloop import Loop
        return Loop
    if name == "EventLoopPolicy":
        if _POLICY_DEPRECATED:
            warnings.warn(
                "fastsock.EventLoopPolicy is deprecated, as asyncio's event "
                "loop policies are since Python 3.14; use "
                "asyncio.run(main(), loop_factory=fastsock.new_event_loop) "
                "or fastsock.run(main())", DeprecationWarning, stacklevel=2)
        return _event_loop_policy_class()
    raise AttributeError(f"module 'fastsock' has no attribute {name!r}")


def run(main, *, backend="auto", debug=None):
    """Run the coroutine `main` on a new fastsock loop and return its
    result, as asyncio.run() does (the loop is closed afterwards, after
    cancelling what is left, shutting down async generators and the
    default executor). `backend` is "auto", "uring" or "epoll" (see
    new_event_loop, whose ValueError/RuntimeError/OSError it raises);
    `debug` as in asyncio.run(). RuntimeError when called from a running
    event loop."""
    if asyncio.events._get_running_loop() is not None:
        # Checked before a loop exists, as asyncio.run() does.
        raise RuntimeError(
            "fastsock.run() cannot be called from a running event loop")
    with asyncio.Runner(debug=debug,
                        loop_factory=lambda: new_event_loop(backend)) as r:
        return r.run(main)


# --- EventLoopPolicy -----------------------------------------------------
# asyncio deprecates policies from Python 3.14 (removal planned for 3.16):
# `fastsock.EventLoopPolicy` then warns as asyncio's own do.
_POLICY_DEPRECATED = sys.version_info >= (3, 14)
_policy_class = None


def _event_loop_policy_class():
    global _policy_class
    if _policy_class is None:
        with warnings.catch_warnings():
            # asyncio.DefaultEventLoopPolicy itself warns on 3.14+.
            warnings.simplefilter("ignore", DeprecationWarning)
            base = asyncio.DefaultEventLoopPolicy

        class EventLoopPolicy(base):
            """An event loop policy whose loops are fastsock loops on
            `backend`."""

            def __init__(self, backend="auto"):
                super().__init__()
                _resolve(backend)    # fail early on a bad or unavailable backend
                self._backend = backend

            def new_event_loop(self):
                return new_event_loop(self._backend)

        EventLoopPolicy.__module__ = __name__
        EventLoopPolicy.__qualname__ = "EventLoopPolicy"
        _policy_class = EventLoopPolicy
    return _policy_class
