"""fastsock under real servers, each started as a subprocess:

- uvicorn with each zero-argument factory (`--loop fastsock:new_event_loop`,
  `new_uring_loop`, `new_epoll_loop`) over TCP and over a Unix socket
  (a Python client, and curl --unix-socket);
- gunicorn with two workers of each fastsock worker class
  (fastsock.workers.AiohttpWorker, fastsock.workers.UvicornWorker) on one
  port with --reuse-port, on each backend (FASTSOCK_BACKEND): both worker
  processes answer, a graceful reload (HUP) and a stop (TERM) lose no
  request, and the logs hold no error.

Every answer says which process and which loop served it (GET /info of
fastsock.bench.httpapp), so a server that silently ran on another loop
fails the test.
"""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

fastsock = pytest.importorskip("fastsock")

ROOT = Path(__file__).resolve().parent.parent
# the loop class of each backend's I/O model
FASTSOCK_LOOP = {"epoll": "fastsock.eventloop.ReadinessLoop",
                 "uring": "fastsock.eventloop.CompletionLoop"}
FACTORIES = {"new_event_loop": "auto", "new_uring_loop": "uring",
             "new_epoll_loop": "epoll"}
LOG_ERRORS = ("Traceback", "[ERROR]", "[CRITICAL]", "ERROR:", "Exception in")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def need(*modules):
    import importlib.util
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed "
                    "(pip install -e '.[test]')")


def expected_backend(name):
    """The backend `name` resolves to here; skips when it cannot run."""
    backends = fastsock.backends()
    if name == "auto":
        return next(b for b, info in backends.items() if info.available)
    if not backends[name].available:
        pytest.skip(f"backend {name!r} unavailable: {backends[name].reason}")
    return name


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=10):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def connection(target, timeout=10):
    if isinstance(target, int):
        return http.client.HTTPConnection("127.0.0.1", target, timeout=timeout)
    return UnixHTTPConnection(target, timeout=timeout)


def get(target, path="/info", conn=None):
    """One GET; a new connection (closed after) unless `conn` is given."""
    own = conn is None
    conn = conn or connection(target)
    try:
        conn.request("GET", path, headers={} if not own else
                     {"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, (resp.status, body)
        return json.loads(body) if path.startswith(("/info", "/sleep")) else body
    finally:
        if own:
            conn.close()


class ServerProcess:
    """A server subprocess whose output goes to a log file."""

    def __init__(self, cmd, log_path, env=None):
        self.log_path = log_path
        env = {**os.environ, **(env or {})}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        # Its own session, so that kill() reaches the workers a server
        # forked too (a SIGKILLed gunicorn master leaves them running).
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=env, cwd=str(ROOT),
                start_new_session=True)

    def log(self):
        return Path(self.log_path).read_text(errors="replace")

    def wait_answering(self, target, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited ({self.proc.returncode}):\n"
                            f"{self.log()[-3000:]}")
            try:
                return get(target)
            except (OSError, http.client.HTTPException):
                time.sleep(0.1)
        pytest.fail(f"server did not answer within {timeout}s:\n"
                    f"{self.log()[-3000:]}")

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Send `sig`, wait; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"server did not stop within {timeout}s after "
                        f"{sig!r}:\n{self.log()[-3000:]}")

    def kill(self):
        """SIGKILL the server and whatever it forked."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def assert_clean_log(self):
        text = self.log()
        bad = [line for line in text.splitlines()
               if any(marker in line for marker in LOG_ERRORS)]
        assert not bad, "errors in the server log:\n" + text[-4000:]


def check_info(info, backend):
    assert info["loop"] == FASTSOCK_LOOP[backend], info
    assert info["backend"] == backend, info


# ---- uvicorn --loop fastsock:... -------------------------------------------

def start_uvicorn(factory, tmp_path, *, port=None, uds=None):
    need("uvicorn", "httptools")
    cmd = [sys.executable, "-m", "uvicorn", "fastsock.bench.httpapp:asgi_app",
           "--loop", f"fastsock:{factory}", "--http", "httptools",
           "--no-access-log"]
    cmd += ["--uds", uds] if uds else ["--host", "127.0.0.1", "--port", str(port)]
    return ServerProcess(cmd, tmp_path / "uvicorn.log")


def assert_uvicorn_stopped(srv):
    """SIGTERM: a graceful shutdown.  uvicorn re-raises the signal it
    caught once it has shut down, so the status is -SIGTERM (0 on older
    versions), as on stock asyncio."""
    assert srv.stop() in (0, -signal.SIGTERM)
    assert "Finished server process" in srv.log(), srv.log()[-3000:]


@pytest.mark.parametrize("transport", ["tcp", "unix"])
@pytest.mark.parametrize("factory", sorted(FACTORIES))
def test_uvicorn_loop_factory(factory, transport, tmp_path):
    backend = expected_backend(FACTORIES[factory])
    if transport == "tcp":
        target = free_port()
        srv = start_uvicorn(factory, tmp_path, port=target)
    else:
        target = str(tmp_path / "uvicorn.sock")
        srv = start_uvicorn(factory, tmp_path, uds=target)
    try:
        check_info(srv.wait_answering(target), backend)
        pids = {get(target)["pid"] for _ in range(20)}     # new connections
        assert pids == {srv.proc.pid}
        conn = connection(target)                          # one kept alive
        try:
            for _ in range(20):
                assert get(target, "/", conn=conn) == b"Hello, World!"
        finally:
            conn.close()
        assert_uvicorn_stopped(srv)
    finally:
        srv.kill()
    srv.assert_clean_log()


def test_uvicorn_unix_socket_with_curl(tmp_path):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    backend = expected_backend("auto")
    path = str(tmp_path / "curl.sock")
    srv = start_uvicorn("new_event_loop", tmp_path, uds=path)
    try:
        srv.wait_answering(path)
        out = subprocess.run(
            [curl, "-sS", "--fail", "--max-time", "10", "--unix-socket", path,
             "http://localhost/info", "http://localhost/"],
            capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        info_text, _, hello = out.stdout.partition("}")
        check_info(json.loads(info_text + "}"), backend)
        assert hello == "Hello, World!"
        assert_uvicorn_stopped(srv)
    finally:
        srv.kill()
    srv.assert_clean_log()


# ---- gunicorn workers --------------------------------------------------------

WORKERS = {
    "AiohttpWorker": ("fastsock.bench.httpapp:aiohttp_factory",
                      ("gunicorn", "aiohttp")),
    "UvicornWorker": ("fastsock.bench.httpapp:asgi_app",
                      ("gunicorn", "uvicorn_worker", "httptools")),
}


def _has_gunicorn_option(flag):
    from gunicorn.config import KNOWN_SETTINGS
    return any(flag in (setting.cli or ()) for setting in KNOWN_SETTINGS)


def start_gunicorn(worker, backend, port, tmp_path):
    app, modules = WORKERS[worker]
    need(*modules)
    cmd = [sys.executable, "-m", "gunicorn", app,
           "--worker-class", f"fastsock.workers.{worker}", "--workers", "2",
           "--bind", f"127.0.0.1:{port}", "--reuse-port",
           "--graceful-timeout", "10", "--log-level", "info",
           "--error-logfile", "-"]
    if _has_gunicorn_option("--no-control-socket"):
        cmd.append("--no-control-socket")    # else one fixed path for all
    return ServerProcess(cmd, tmp_path / "gunicorn.log",
                         env={"FASTSOCK_BACKEND": backend})


def pids_answering(port, want, timeout=20):
    """Worker pids seen answering /info, asking with bursts of concurrent
    new connections until `want` distinct pids answered (or time is up)."""
    seen = {}
    deadline = time.monotonic() + timeout
    lock = threading.Lock()

    def one():
        info = get(port)
        with lock:
            seen[info["pid"]] = info

    while len(seen) < want and time.monotonic() < deadline:
        threads = [threading.Thread(target=one) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
    return seen


# The server closed the connection before sending a byte of a response:
# RFC 9110 9.2.2 lets a client retry an idempotent request then, and HTTP
# clients do.  aiohttp's own gunicorn workers need it during a reload on
# stock asyncio and uvloop too (a connection accepted by a worker that is
# shutting down, its request not read yet, is closed: 1-4 per reload here).
NO_RESPONSE = (http.client.RemoteDisconnected, ConnectionResetError)


class Client(threading.Thread):
    """Requests one after another, each on a new connection, until told to
    stop.  A request whose connection was closed before any response is
    retried (at most 3 times: with --reuse-port, a worker that stops listening
    resets what waits in its own accept queue, and a retry can meet the next
    worker doing the same); a request that still fails is lost."""

    def __init__(self, port, path="/info"):
        super().__init__(daemon=True)
        self.port = port
        self.path = path
        self.stopping = threading.Event()
        self.answered = 0
        self.retried = 0
        self.pids = set()
        self.failures = []

    def one(self):
        for _ in range(3):
            try:
                return get(self.port, self.path)
            except NO_RESPONSE:
                self.retried += 1
        return get(self.port, self.path)

    def run(self):
        while not self.stopping.is_set():
            try:
                info = self.one()
            except Exception as exc:       # lost
                self.failures.append(repr(exc))
                continue
            self.answered += 1
            self.pids.add(info["pid"])


class InFlight:
    """`n` slow requests (GET /sleep) started now, each on its own
    connection; result() waits for all and returns their answers."""

    def __init__(self, port, n=4, ms=600):
        self.results = [None] * n
        self.threads = [threading.Thread(target=self._one, args=(port, i, ms))
                        for i in range(n)]
        for t in self.threads:
            t.start()

    def _one(self, port, i, ms):
        try:
            self.results[i] = get(port, f"/sleep?ms={ms}")
        except Exception as exc:
            self.results[i] = exc

    def result(self):
        for t in self.threads:
            t.join(30)
        return self.results


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie the arbiter has not reaped yet has exited too.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("backend", ["epoll", "uring"])
@pytest.mark.parametrize("worker", sorted(WORKERS))
def test_gunicorn_worker(worker, backend, tmp_path):
    backend = expected_backend(backend)
    port = free_port()
    srv = start_gunicorn(worker, backend, port, tmp_path)
    clients = []
    try:
        check_info(srv.wait_answering(port), backend)
        # Two worker processes, both answering, both on the backend asked for.
        first = pids_answering(port, 2)
        assert len(first) == 2, f"only {sorted(first)} answered"
        assert srv.proc.pid not in first
        for info in first.values():
            check_info(info, backend)

        # Graceful reload under load: new workers replace the old ones,
        # requests in flight in the old ones are answered, none is lost.
        clients = [Client(port) for _ in range(4)]
        for c in clients:
            c.start()
        slow = InFlight(port)
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            fresh = set().union(*(c.pids for c in clients)) - set(first)
            if len(fresh) >= 2 and all(gone(p) for p in first):
                break
            time.sleep(0.2)
        time.sleep(0.5)
        for c in clients:
            c.stopping.set()
        for c in clients:
            c.join(15)
        answers = slow.result()
        assert all(isinstance(a, dict) for a in answers), (
            f"requests in flight during the reload: {answers}\n"
            f"{srv.log()[-3000:]}")
        failures = [f for c in clients for f in c.failures]
        answered = sum(c.answered for c in clients)
        retried = sum(c.retried for c in clients)
        print(f"reload: {answered} answered, {retried} retried once, "
              f"{len(failures)} lost")
        assert not failures, (f"{len(failures)} of {answered + len(failures)} "
                              f"requests lost during the reload: "
                              f"{failures[:3]}\n{srv.log()[-3000:]}")
        fresh = set().union(*(c.pids for c in clients)) - set(first)
        assert len(fresh) >= 2, (f"new workers did not answer after HUP "
                                 f"(saw {fresh}):\n{srv.log()[-3000:]}")
        assert all(gone(p) for p in first), "old workers still running"
        second = pids_answering(port, 2)
        assert len(second) == 2, f"after the reload only {sorted(second)} answered"
        for info in second.values():
            check_info(info, backend)

        # Graceful stop: requests in flight are answered, then exit 0.
        slow = InFlight(port)
        time.sleep(0.3)
        assert srv.stop(signal.SIGTERM) == 0
        answers = slow.result()
        assert all(isinstance(a, dict) for a in answers), (
            f"requests in flight at SIGTERM: {answers}\n{srv.log()[-3000:]}")
    finally:
        for c in clients:
            c.stopping.set()
        srv.kill()
    log = srv.log()
    assert log.count("Booting worker") >= 4, log[-3000:]
    srv.assert_clean_log()


def test_worker_refuses_unknown_backend(monkeypatch):
    from fastsock import workers
    monkeypatch.setenv("FASTSOCK_BACKEND", "kqueue")
    with pytest.raises(ValueError, match="FASTSOCK_BACKEND"):
        workers.backend_from_env()
    monkeypatch.setenv("FASTSOCK_BACKEND", "")
    assert workers.backend_from_env() == "auto"
    monkeypatch.setenv("FASTSOCK_BACKEND", " Epoll ")
    assert workers.backend_from_env() == "epoll"


def test_gunicorn_stops_when_the_backend_cannot_boot(tmp_path):
    """An unknown backend fails the worker's boot: gunicorn exits with an
    error instead of respawning workers forever."""
    need("gunicorn", "aiohttp")
    port = free_port()
    srv = start_gunicorn("AiohttpWorker", "kqueue", port, tmp_path)
    try:
        rc = srv.proc.wait(60)
    finally:
        srv.kill()
    assert rc != 0
    assert "FASTSOCK_BACKEND" in srv.log()


# ---- a listening socket shared by processes ------------------------------------

SERVE_AND_STOP = """
import asyncio, socket, sys
fd, backend = int(sys.argv[1]), sys.argv[2]
sock = socket.socket(fileno=fd)

async def main():
    srv = await asyncio.get_running_loop().create_server(asyncio.Protocol,
                                                         sock=sock)
    await asyncio.sleep(0.1)
    srv.close()                  # what a gunicorn worker does when it stops
    await srv.wait_closed()

if backend == "asyncio":
    asyncio.run(main())
else:
    import fastsock
    fastsock.run(main(), backend=backend)
"""

@pytest.mark.parametrize("backend", ["asyncio", "epoll", "uring"])
def test_stopping_a_server_leaves_a_shared_listener_listening(backend):
    """gunicorn's model: the arbiter's listening socket is inherited by every
    worker; a worker that stops serving (reload, --max-requests, a crash)
    must leave it listening for the others."""
    if backend != "asyncio":
        expected_backend(backend)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(16)
        port = ls.getsockname()[1]
        res = subprocess.run([sys.executable, "-c", SERVE_AND_STOP,
                              str(ls.fileno()), backend],
                             pass_fds=[ls.fileno()], capture_output=True,
                             text=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert res.returncode == 0, res.stderr
        ls.settimeout(5)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            conn, _ = ls.accept()
            conn.close()
