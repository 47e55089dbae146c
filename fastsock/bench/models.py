"""The models `fastsock bench` compares, and their server processes.

A model is a server implementation: the Python echo protocol on one event
loop (epoll, uring: fastsock; asyncio: stock selector loop; uvloop), or a
plain C server (c-epoll, c-uring) as the limit.  Every server runs in its own
process, pinned to its own CPU, so the load generator never competes with it.
"""
import contextlib
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastsock.bench import native
from fastsock.bench.netcommon import raise_nofile

PY_MODELS = ("epoll", "uring", "asyncio", "uvloop")
# C server -> (program, arguments).  The c-uring-* variants force one of
# echo_uring's receive strategies, to measure it against the default that
# picks per connection; they run only when named in --models.
C_SERVERS = {
    "c-epoll": ("echo_epoll", []),
    "c-uring": ("echo_uring", []),
    "c-uring-single": ("echo_uring", ["--recv", "single"]),
    "c-uring-multishot": ("echo_uring", ["--recv", "multishot"]),
}
C_MODELS = tuple(C_SERVERS)
ALL_MODELS = PY_MODELS + ("c-epoll", "c-uring")      # the default run
KNOWN_MODELS = PY_MODELS + C_MODELS
SERVER_PY = Path(__file__).resolve().parent / "server.py"
# The directory holding the fastsock package, for the server's sys.path.
PKG_PARENT = str(Path(__file__).resolve().parent.parent.parent)


class ModelSkipped(Exception):
    """The model cannot run on this host; str() is the reason."""


class ServerPool:
    """The bench's running servers by key, started on first use, started
    again if one died, and the keys whose server could not start at all
    (ModelSkipped, with its reason) remembered as skipped."""

    def __init__(self, on_note):
        self.servers = {}
        self.skipped = {}          # key -> reason
        self.on_note = on_note

    def get(self, key, label, start, warm):
        """The live server for `key`: start() makes a started one, warm(s)
        runs once on each new one; `label` names it in notes."""
        if key in self.skipped:
            raise ModelSkipped(self.skipped[key])
        s = self.servers.get(key)
        if s is not None and s.alive():
            return s
        if s is not None:
            self.on_note(f"{label} server died ({s.stderr_tail()}); restarting")
            s.stop()
        try:
            # known to the pool before a SIGTERM/SIGHUP ends the bench
            with signals_deferred():
                s = start()
                self.servers[key] = s
        except ModelSkipped as exc:
            self.skipped[key] = str(exc)
            raise
        warm(s)
        return s

    def close(self):
        for s in self.servers.values():
            s.stop()
        self.servers.clear()


def precheck(model):
    """Reason the model cannot run, found without starting it; None if it
    looks runnable (starting it may still fail, and says why)."""
    if model == "uvloop":
        import importlib.util
        if importlib.util.find_spec("uvloop") is None:
            return "uvloop is not installed (pip install uvloop)"
    elif model in ("epoll", "uring"):
        try:
            import fastsock
            fastsock.new_event_loop               # noqa: B018
        except Exception as exc:                  # not built, half-built...
            return f"fastsock.new_event_loop is not importable: {exc}"
        try:
            info = fastsock.backends().get(model)
        except Exception as exc:
            return f"fastsock.backends() failed: {exc}"
        if info is not None and not info.available:
            return f"backend {model!r} unavailable: {info.reason}"
    elif model in C_MODELS:
        try:
            native.build(C_SERVERS[model][0])
        except native.NativeUnavailable as exc:
            return str(exc)
    elif model not in KNOWN_MODELS:
        return f"unknown model (known: {', '.join(KNOWN_MODELS)})"
    return None


ALLOWED_CPUS = sorted(os.sched_getaffinity(0))   # before the runner pins itself


def cpu_plan():
    """(server_cpu, loadgen_cpu), or (None, None) on a single CPU."""
    cpus = ALLOWED_CPUS
    if len(cpus) < 2:
        return None, None
    return cpus[-1], cpus[0]


def _child_setup(cpu):
    """cpu: one CPU number, a set of them, or None (anywhere)."""
    def setup():
        if cpu is not None:
            os.sched_setaffinity(0, cpu if isinstance(cpu, (set, frozenset))
                                 else {cpu})
        raise_nofile()
    return setup


class Server:
    """One server process: start(), .addr, .pid, rss_kib(), stop()."""

    _serial = 0     # unique socket paths: a server that closes must never
                    # unlink the path another live server listens on

    def __init__(self, model, transport, workdir, cpu, file=None):
        self.model, self.transport, self.cpu, self.file = model, transport, cpu, file
        self.workdir = Path(workdir)
        self.proc = None
        self.addr = None
        self.note = ""
        self._stderr = None

    def _command(self, addr):
        extra = ["--file", str(self.file)] if self.file else []
        if self.model in C_MODELS:
            prog, args = C_SERVERS[self.model]
            return [str(native.build(prog)), "--addr", addr, *args, *extra]
        return [sys.executable, str(SERVER_PY), self.model, "--addr", addr, *extra]

    def start(self, timeout=15.0):
        mode = "sendfile" if self.file else "echo"
        if self.transport == "unix":
            Server._serial += 1
            addr = f"unix:{self.workdir / f'{self.model}-{mode}-{Server._serial}.sock'}"
        elif self.transport == "udp":
            if self.model in C_MODELS:
                raise ModelSkipped("the C reference servers have no UDP mode")
            addr = "udp:127.0.0.1:0"
        else:
            addr = "tcp:127.0.0.1:0"
        try:
            cmd = self._command(addr)
        except native.NativeUnavailable as exc:
            raise ModelSkipped(str(exc)) from None
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (PKG_PARENT, env.get("PYTHONPATH")) if p)
        # stderr to a file, not a pipe: a chatty server must never block on
        # a full pipe in the middle of a measurement.
        self._stderr = tempfile.TemporaryFile(dir=self.workdir)
        try:
            with signals_deferred():
                self.proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=self._stderr, env=env,
                    preexec_fn=_child_setup(self.cpu), text=True)
            line = self._read_line(timeout)
        except BaseException:
            # Interrupted while it starts (a signal ends the bench): the
            # pool does not know this server yet, so stop it here.
            self.stop()
            raise
        if line.startswith("READY "):
            self.addr, _, self.note = line[6:].partition(" | ")
            return self
        self.stop()
        if line.startswith("SKIP "):
            raise ModelSkipped(line[5:])
        raise ModelSkipped(f"server did not start: {line or self.stderr_tail()}")

    def _read_line(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raise_deferred_signal()     # the caller stops this server
            r, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if r:
                return self.proc.stdout.readline().strip()
            if self.proc.poll() is not None:
                return self.proc.stdout.readline().strip()
        return f"no READY line within {timeout:.0f}s"

    def stderr_tail(self, lines=3):
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip().splitlines()
        # The last traceback says why it died; asyncio's "Task was destroyed"
        # chatter at exit does not.
        starts = [i for i, l in enumerate(text) if l.startswith("Traceback")]
        if starts:
            tb = text[starts[-1]:]
            exc = next((l for l in tb[1:] if not l.startswith(" ")), "")
            where = [l.strip() for l in tb if l.strip().startswith("File ")][-1:]
            return " | ".join(where + [exc])
        return " | ".join(text[-lines:])

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self):
        return proc_cpu_seconds(self.proc.pid)

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return None

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self.proc = None


# SIGTERM and SIGHUP end the bench by unwinding through its cleanup
# (exit_on_signal raises SystemExit), which stops every server it knows.
# One that arrived inside subprocess.Popen(), after the fork, or between a
# server's start and the pool's record of it, left a server that nothing
# knew (test_killed_bench_leaves_no_server_running, one run in three under
# load): there the signal waits until the server is known, or until the
# start waits for the server's READY line, whose caller stops it.
_deferring = 0
_deferred = None


def exit_on_signal(signum, _frame):
    """The bench's SIGTERM/SIGHUP handler (fastsock/bench/cli.py)."""
    global _deferred
    if _deferring:
        _deferred = signum
        return
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def signals_deferred():
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring:
        raise_deferred_signal()


def raise_deferred_signal():
    global _deferred
    if _deferred is not None:
        signum, _deferred = _deferred, None
        raise SystemExit(128 + signum)


def proc_cpu_seconds(pid):
    """utime + stime of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_busy_seconds():
    """CPU time spent by anything (all CPUs, not idle/iowait), for spotting
    other processes competing with the measurement."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")
