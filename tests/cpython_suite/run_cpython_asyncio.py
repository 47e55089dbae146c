#!/usr/bin/env python3
"""Run CPython's own asyncio tests against a fastsock loop.

    python3 tests/cpython_suite/run_cpython_asyncio.py \
        [--backend epoll|uring] [-v] [-k SUBSTRING] [--module test_events] \
        [--no-skip] [--timeout SECONDS]

The loop-level test mixins of the running interpreter's test.test_asyncio
(the same tests that CPython runs on its selector loops) are subclassed with
loop factories that return fastsock loops, and a fastsock event loop policy
is installed for the tests that call asyncio.new_event_loop(). Tests that
reach into asyncio's private selector internals are in SKIPS, each with the
reason; nothing else is skipped or patched.

Each test module runs in a child process, one test at a time. A test that
runs past its time limit gets a TestTimeout exception (SIGALRM) and fails;
one that does not end even then (the exception swallowed by a callback, a
wait that never runs Python code) has every thread's stack dumped, is
reported as failed with that dump, and its child is killed; a test that
crashes its child is reported with the child's last words. Either way the
run goes on with the next test in a new child.

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
import json
import os
import selectors
import signal
import subprocess
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

# How long past its time limit (at most) a test may go on after its
# TestTimeout before the parent gives up on it and kills the child.
GRACE = 10.0


class TestTimeout(Exception):
    """Raised by SIGALRM in a test that runs too long."""


class TimeLimit:
    """Mixin: one time limit per test (a SIGALRM raising TestTimeout). The
    alarm repeats every 2 s once it fired, in case a loop callback swallowed
    the first one; the parent process is the backstop."""

    time_limit = 60.0

    def run(self, result=None):
        def expired(signum, frame):
            signal.setitimer(signal.ITIMER_REAL, 2.0)
            raise TestTimeout(f"test ran longer than {self.time_limit} s")

        old = signal.signal(signal.SIGALRM, expired)
        signal.setitimer(signal.ITIMER_REAL, self.time_limit)
        try:
            return super().run(result)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


class SelfTest(unittest.TestCase):
    """--self-test: a test that swallows its TestTimeout, between two that
    pass; the runner must report the middle one and run the last one."""

    def test_1_passes(self):
        pass

    def test_2_swallows_its_timeout(self):
        while True:
            try:
                time.sleep(0.05)
            except BaseException:       # what a careless callback does
                pass

    def test_3_passes(self):
        pass


def build_cases(backend, self_test=False):
    """{module name: [TestCase classes]} for each CPython test module."""
    if self_test:
        return {"self_test": [type("SelfTest", (TimeLimit, SelfTest), {
            "__module__": "cpython_asyncio.self_test"})]}

    import fastsock
    from test.test_asyncio import utils as test_utils

    def new_loop(*args, **kwargs):
        return fastsock.new_event_loop(backend)

    def mod(name):
        return importlib.import_module(f"test.test_asyncio.{name}")

    def case(modname, name, *bases, **attrs):
        attrs.setdefault("__module__", f"cpython_asyncio.{modname}")
        attrs.setdefault("__qualname__", name)
        return type(name, (TimeLimit, *bases), attrs)

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

    # TLS: CPython's TLS tests (test_ssl.py came with the SSLProtocol that
    # asyncio took from uvloop) through the loop's create_connection,
    # create_server and start_tls, which run fastsock's TLS protocol.
    # TestSSL makes its loops with asyncio.new_event_loop() (the policy).
    # SslProtoHandshakeTests drive asyncio.sslproto.SSLProtocol itself, on
    # a fastsock loop.
    m = mod("test_ssl")
    cases["test_ssl"] = [case("test_ssl", "FastsockTestSSL", m.TestSSL)]

    m = mod("test_sslproto")
    cases["test_sslproto"] = [
        case("test_sslproto", "FastsockSslProtoHandshakeTests",
             m.SslProtoHandshakeTests),
        case("test_sslproto", "FastsockStartTLSTests",
             m.BaseStartTLS, unittest.TestCase,
             new_loop=lambda self: new_loop()),
    ]

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


def load_tests(args):
    """{module name: [test, ...]} in run order, skips applied."""
    loader = unittest.TestLoader()
    out = {}
    for modname, classes in build_cases(args.backend, args.self_test).items():
        if args.module and modname not in args.module:
            continue
        tests = []
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
                    tests.append(test)
        out[modname] = tests
    return out


def setup_process(args):
    """What both the parent and a child need before loading tests."""
    if not args.self_test:
        import fastsock
        asyncio.set_event_loop_policy(fastsock.EventLoopPolicy(args.backend))
    TimeLimit.time_limit = args.timeout


# -- child: run the given tests, report each on the event pipe --------------

class _Recorder(unittest.TextTestResult):
    """A text result that also sends each outcome to the parent."""

    def __init__(self, events, *a, **kw):
        super().__init__(*a, **kw)
        self.events = events

    def _send(self, **msg):
        self.events.write(json.dumps(msg) + "\n")
        self.events.flush()

    def startTest(self, test):
        self._send(event="start", id=test.id())
        super().startTest(test)

    def stopTest(self, test):
        super().stopTest(test)
        bad = [err for t, err in self.errors + self.failures if t is test]
        bad += ["unexpected success" for t in self.unexpectedSuccesses
                if t is test]
        skipped = [why for t, why in self.skipped if t is test]
        status = "failed" if bad else "skipped" if skipped else "passed"
        self._send(event="end", id=test.id(), status=status,
                   detail="\n".join(bad or skipped))


def run_child(args):
    setup_process(args)
    wanted = json.loads(sys.stdin.read())
    events = os.fdopen(args.events_fd, "w")
    # The parent asks for this dump when a test does not end.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    tests = [t for ts in load_tests(args).values() for t in ts]
    by_id = {t.id(): t for t in tests}
    suite = unittest.TestSuite(by_id[i] for i in wanted)
    runner = unittest.TextTestRunner(
        verbosity=2 if args.verbose else 1, stream=sys.stdout,
        resultclass=lambda *a, **kw: _Recorder(events, *a, **kw))
    runner.run(suite)
    return 0


# -- parent: one child per module, restarted after a hang or crash -----------

def run_module(args, ids):
    """Run `ids` in children; returns {id: (status, detail)}."""
    outcomes = {}
    remaining = list(ids)
    deadline = args.timeout + min(GRACE, args.timeout)
    while remaining:
        rfd, wfd = os.pipe()
        cmd = [sys.executable, os.path.abspath(__file__), "--child",
               "--events-fd", str(wfd), "--backend", args.backend,
               "--timeout", str(args.timeout)]
        cmd += ["--self-test"] if args.self_test else []
        cmd += ["-v"] if args.verbose else []
        child = subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                 stderr=subprocess.PIPE, pass_fds=(wfd,))
        os.close(wfd)
        child.stdin.write(json.dumps(remaining).encode())
        child.stdin.close()
        current, started, buf, errtail = None, 0.0, b"", b""
        sel = selectors.DefaultSelector()
        sel.register(rfd, selectors.EVENT_READ, "events")
        sel.register(child.stderr, selectors.EVENT_READ, "stderr")
        hung = False
        while sel.get_map():
            if (current is not None and
                    time.monotonic() - started > deadline):
                hung = True
                child.send_signal(signal.SIGUSR1)     # stacks to stderr
                time.sleep(1.0)
                child.kill()
            for key, _ in sel.select(timeout=1.0):
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fd)
                    continue
                if key.data == "stderr":
                    sys.stderr.buffer.write(data)
                    sys.stderr.flush()
                    errtail = (errtail + data)[-20000:]
                    continue
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    msg = json.loads(line)
                    if msg["event"] == "start":
                        current, started = msg["id"], time.monotonic()
                        errtail = b""
                    else:
                        outcomes[msg["id"]] = (msg["status"], msg["detail"])
                        remaining.remove(msg["id"])
                        current = None
        os.close(rfd)
        child.wait()
        if current is not None:
            # It never ended: hung (killed by us) or crashed the child.
            why = (f"hung: still running {deadline:.0f} s after "
                   f"its start, killed; every thread's stack at that point:"
                   if hung else
                   f"crashed the test process (exit status "
                   f"{child.returncode}); its last output:")
            outcomes[current] = ("failed", why + "\n" +
                                 errtail.decode(errors="replace"))
            remaining.remove(current)
            print(f"\nFAIL (runner): {current}: {why.split(':')[0]}",
                  flush=True)
        elif remaining:
            outcomes.update({i: ("failed", "the test process exited "
                                 f"({child.returncode}) before running it")
                             for i in remaining})
            remaining = []
    return outcomes


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
    ap.add_argument("--self-test", action="store_true",
                    help="run the runner's own hang check instead")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--events-fd", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        return run_child(args)
    if not args.self_test:
        import fastsock
        if importlib.util.find_spec("test.test_asyncio") is None:
            print("SKIP CPython's asyncio tests: this interpreter has no test "
                  "package (Debian/Ubuntu: apt-get install "
                  f"libpython3.{sys.version_info[1]}-testsuite)")
            return 0
        info = fastsock.backends().get(args.backend)
        if info is not None and not info.available:
            print(f"SKIP CPython's asyncio tests on {args.backend}: "
                  f"{info.reason}")
            return 0
    setup_process(args)

    counts = {}
    failed = []
    t0 = time.monotonic()
    for modname, tests in load_tests(args).items():
        ids = [t.id() for t in tests]
        print(f"== {modname} ({len(ids)} tests, backend={args.backend}, "
              f"Python {sys.version.split()[0]})", flush=True)
        outcomes = run_module(args, ids)
        c = [0, 0, 0]
        for i in ids:
            status, detail = outcomes[i]
            c[("passed", "failed", "skipped").index(status)] += 1
            if status == "failed":
                failed.append((i, detail))
        counts[modname] = c

    print(f"\n== summary: backend={args.backend}, "
          f"{time.monotonic() - t0:.0f} s")
    print(f"{'module':<22}{'passed':>8}{'failed':>8}{'skipped':>9}")
    totals = [0, 0, 0]
    for modname, c in counts.items():
        print(f"{modname:<22}{c[0]:>8}{c[1]:>8}{c[2]:>9}")
        totals = [a + b for a, b in zip(totals, c)]
    print(f"{'total':<22}{totals[0]:>8}{totals[1]:>8}{totals[2]:>9}")
    for test_id, detail in failed:
        print(f"FAILED {test_id}")
    for test_id, detail in failed:
        print(f"\n---- {test_id}\n{detail.rstrip()}")
    return 1 if totals[1] else 0


if __name__ == "__main__":
    sys.exit(main())
