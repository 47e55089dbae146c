#!/usr/bin/env python3
"""Run CPython's own asyncio tests against a fastsock loop.

    PYTHONPATH=. python3 tests/cpython_suite/run_cpython_asyncio.py \
        [--backend epoll|uring] [-v] [-k SUBSTRING] [--module test_events] \
        [--no-skip] [--timeout SECONDS]

The loop-level test mixins of the installed interpreter's test.test_asyncio
(the same tests that CPython runs on its selector loops) are subclassed with
loop factories that return fastsock loops, and a fastsock event loop policy
is installed for the tests that call asyncio.new_event_loop(). Tests that
reach into asyncio's private internals are in SKIPS with the reason.

Exit status: 0 if every test that ran passed. Where it cannot run (the
interpreter ships without its test package, as Debian's does unless
libpython3.X-testsuite is installed, or the backend is unavailable here) it
says so and exits 0. `make test` runs it on both backends.
"""

import argparse
import asyncio
import faulthandler
import importlib
import importlib.util
import signal
import sys
import time
import unittest

# module -> test method name -> why it cannot apply to a loop that has no
# selector. Only tests that reach into asyncio's private internals belong
# here; a behaviour difference is a fastsock bug, not a skip.
_SELECTOR_KEY = "asserts on loop._selector.get_key(), a selector internal"
SKIPS = {
    "test_events": {
        "test_timeout_rounding":
            "replaces loop._run_once (fastsock's loop runs its iteration in "
            "Cython) and reads loop._selector",
    },
    "test_unix_events": {
        "test_close_on_finalizing":
            "mocks asyncio.unix_events.sys, which fastsock's close() does "
            "not read",
        "test_sock_sendfile_not_available":
            "mocks asyncio.unix_events.os; fastsock's native sendfile is its "
            "driver's, not os.sendfile()",
        "test_sock_sendfile_cancel1": _SELECTOR_KEY,
        "test_sock_sendfile_cancel2": _SELECTOR_KEY,
        "test_sock_sendfile_blocking_error": _SELECTOR_KEY,
        "test_sock_sendfile_os_error_first_call": _SELECTOR_KEY,
        "test_sock_sendfile_os_error_next_call": _SELECTOR_KEY,
        "test_sock_sendfile_exception": _SELECTOR_KEY,
    },
}

# Tests that do not apply to a completion loop, as CPython itself skips them
# for its own completion loop (ProactorEventLoop).
COMPLETION_SKIPS = {
    "test_sock_lowlevel": {
        "test_sendto_blocking":
            "patches sock.sendto() to raise BlockingIOError; sock_sendto on "
            "io_uring is a SENDMSG operation and never calls sock.sendto() "
            "(CPython skips it on ProactorEventLoop for the same reason)",
    },
}


class TestTimeout(Exception):
    """Raised by SIGALRM in a test that runs too long: an Exception, so the
    test fails and the suite goes on."""


class TimeLimit:
    """Mixin: one time limit per test. The alarm repeats every 2 s once it
    fired, in case a loop callback swallowed the first one."""

    time_limit = 60.0

    def run(self, result=None):
        def expired(signum, frame):
            signal.setitimer(signal.ITIMER_REAL, 2.0)
            raise TestTimeout(f"test ran longer than {self.time_limit} s")

        old = signal.signal(signal.SIGALRM, expired)
        signal.setitimer(signal.ITIMER_REAL, self.time_limit)
        # Backstop for a wait that never runs Python signal handlers (a
        # driver stuck in the kernel): dump every thread's stack and exit.
        faulthandler.dump_traceback_later(self.time_limit + 30, exit=True)
        try:
            return super().run(result)
        finally:
            faulthandler.cancel_dump_traceback_later()
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


class LikeUvloop:
    """Mixin: fastsock's transports and handles are Cython classes with
    asyncio's API that cannot subclass asyncio's pure Python classes (uvloop
    has the same limit). isinstance() checks against those asyncio classes
    accept the fastsock equivalents, so the rest of each test still runs."""

    def assertIsInstance(self, obj, cls, msg=None):
        from fastsock import handles, transports
        equivalents = {
            asyncio.BaseTransport: transports.BaseTransport,
            asyncio.ReadTransport: transports.BaseTransport,
            asyncio.WriteTransport: transports.BaseTransport,
            asyncio.Transport: transports.BaseTransport,
            asyncio.DatagramTransport: transports.DatagramTransport,
            asyncio.Handle: handles.Handle,
            asyncio.TimerHandle: handles.TimerHandle,
        }
        if isinstance(cls, type) and isinstance(obj, equivalents.get(cls, ())):
            return
        super().assertIsInstance(obj, cls, msg)


def build_cases(backend):
    """(module name, [TestCase classes]) for each CPython test module."""
    import fastsock
    from test.test_asyncio import utils as test_utils

    def new_loop(*args, **kwargs):
        return fastsock.new_event_loop(backend)

    def mod(name):
        return importlib.import_module(f"test.test_asyncio.{name}")

    def case(modname, name, *bases, **attrs):
        attrs.setdefault("__module__", f"cpython_asyncio.{modname}")
        attrs.setdefault("__qualname__", name)
        return type(name, (TimeLimit, LikeUvloop, *bases), attrs)

    def make_loop_in_setup(base):
        # Test classes that build asyncio.SelectorEventLoop() in setUp.
        def setUp(self):
            test_utils.TestCase.setUp(self)
            self.loop = new_loop()
            self.set_event_loop(self.loop)
        return setUp

    cases = {}

    m = mod("test_events")
    cases["test_events"] = [case(
        "test_events", "FastsockEventLoopTests",
        m.EventLoopTestsMixin, m.SubprocessTestsMixin, test_utils.TestCase,
        create_event_loop=lambda self: new_loop())]

    m = mod("test_sock_lowlevel")
    cases["test_sock_lowlevel"] = [case(
        "test_sock_lowlevel", "FastsockSockTests",
        m.BaseSockTestsMixin, test_utils.TestCase,
        create_event_loop=lambda self: new_loop())]

    m = mod("test_sendfile")
    cases["test_sendfile"] = [case(
        "test_sendfile", "FastsockSendfileTests",
        m.SendfileTestsBase, test_utils.TestCase,
        create_event_loop=lambda self: new_loop())]

    m = mod("test_buffered_proto")
    cases["test_buffered_proto"] = [case(
        "test_buffered_proto", "FastsockBufferedProtocolTests",
        m.BaseTestBufferedProtocol, unittest.TestCase,
        new_loop=lambda self: new_loop())]

    m = mod("test_server")
    cases["test_server"] = [case(
        "test_server", "FastsockStartServerTests",
        m.SelectorStartServerTests,
        new_loop=lambda self: new_loop())]

    m = mod("test_subprocess")

    def subprocess_setup(self):
        test_utils.TestCase.setUp(self)
        self.loop = new_loop()
        self.set_event_loop(self.loop)

    # No child watcher: fastsock watches children with pidfds.
    cases["test_subprocess"] = [case(
        "test_subprocess", "FastsockSubprocessTests",
        m.SubprocessMixin, test_utils.TestCase, setUp=subprocess_setup)]

    m = mod("test_unix_events")
    cases["test_unix_events"] = [
        case("test_unix_events", "FastsockSignalTests",
             m.SelectorEventLoopSignalTests,
             setUp=make_loop_in_setup(m.SelectorEventLoopSignalTests)),
        case("test_unix_events", "FastsockUnixSocketTests",
             m.SelectorEventLoopUnixSocketTests,
             setUp=make_loop_in_setup(m.SelectorEventLoopUnixSocketTests)),
        # These two create their loops with asyncio.new_event_loop().
        case("test_unix_events", "FastsockUnixSockSendfileTests",
             m.SelectorEventLoopUnixSockSendfileTests),
        case("test_unix_events", "FastsockFunctionalTests",
             m.TestFunctional),
    ]
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="epoll",
                    help="fastsock backend: epoll (default) or uring")
    ap.add_argument("--module", action="append",
                    help="only this test module (repeatable)")
    ap.add_argument("-k", action="append", default=[],
                    help="only tests whose id contains this (repeatable)")
    ap.add_argument("--no-skip", action="store_true",
                    help="also run the tests in the skip list")
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="time limit per test in seconds (default 60)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()

    import fastsock
    if importlib.util.find_spec("test.test_asyncio") is None:
        print("SKIP CPython's asyncio tests: this interpreter has no test "
              "package (Debian/Ubuntu: apt-get install "
              f"libpython3.{sys.version_info[1]}-testsuite)")
        return 0
    info = fastsock.backends().get(args.backend)
    if info is not None and not info.available:
        print(f"SKIP CPython's asyncio tests on {args.backend}: {info.reason}")
        return 0
    asyncio.set_event_loop_policy(fastsock.EventLoopPolicy(args.backend))
    TimeLimit.time_limit = args.timeout

    loader = unittest.TestLoader()
    per_module = {}
    for modname, classes in build_cases(args.backend).items():
        if args.module and modname not in args.module:
            continue
        msuite = unittest.TestSuite()
        for cls in classes:
            if not args.no_skip:
                skips = dict(SKIPS.get(modname, {}))
                if args.backend == "uring":
                    skips.update(COMPLETION_SKIPS.get(modname, {}))
                for name, why in skips.items():
                    if hasattr(cls, name):
                        setattr(cls, name, unittest.skip(
                            f"fastsock: {why}")(getattr(cls, name)))
            for test in loader.loadTestsFromTestCase(cls):
                if not args.k or any(k in test.id() for k in args.k):
                    msuite.addTest(test)
        per_module[modname] = msuite

    runner = unittest.TextTestRunner(verbosity=2 if args.verbose else 1,
                                     stream=sys.stdout)
    counts = {}
    failed_ids = []
    t0 = time.monotonic()
    for modname, msuite in per_module.items():
        print(f"== {modname} ({msuite.countTestCases()} tests, "
              f"backend={args.backend})", flush=True)
        result = runner.run(msuite)
        # A test can fail twice (in its body and in tearDown): count it once.
        bad = {t.id() for t, _ in result.failures + result.errors}
        bad |= {t.id() for t in result.unexpectedSuccesses}
        counts[modname] = (result.testsRun - len(bad) - len(result.skipped),
                           len(bad), len(result.skipped))
        failed_ids.extend(sorted(bad))

    print(f"\n== summary: backend={args.backend}, "
          f"{time.monotonic() - t0:.0f} s")
    print(f"{'module':<22}{'passed':>8}{'failed':>8}{'skipped':>9}")
    totals = [0, 0, 0]
    for modname, c in counts.items():
        print(f"{modname:<22}{c[0]:>8}{c[1]:>8}{c[2]:>9}")
        totals = [a + b for a, b in zip(totals, c)]
    print(f"{'total':<22}{totals[0]:>8}{totals[1]:>8}{totals[2]:>9}")
    for test_id in failed_ids:
        print(f"FAILED {test_id}")
    return 1 if totals[1] else 0


if __name__ == "__main__":
    sys.exit(main())
