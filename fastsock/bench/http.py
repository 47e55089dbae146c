"""The http workload of `fastsock bench`: wrk against real HTTP servers.

Two applications (fastsock/bench/httpapp.py): an aiohttp app, and a plain
ASGI app under uvicorn with httptools; each plain and over TLS (a
certificate made at run time with trustme), on the Python models (asyncio,
uvloop, epoll, uring).  The C models do not speak HTTP (skipped, with that
reason).  wrk runs pinned to the generator CPU, the server to the server CPU,
as for the other workloads; models are interleaved per round by the runner.

With --workers N > 1 the server is gunicorn with N workers of the model's
worker class (fastsock.workers.AiohttpWorker / UvicornWorker for epoll and
uring; aiohttp's GunicornWebWorker / GunicornUVLoopWebWorker and
uvicorn-worker's UvicornWorker for asyncio and uvloop), on every CPU but the
generator's when there are enough of them.
"""
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import time

from fastsock.bench import models as M

APPS = ("aiohttp", "asgi")
SECURITY = ("plain", "tls")
NOT_HTTP = "the C servers do not speak HTTP"
HTTPAPP = "fastsock.bench.httpapp"


def wrk_path():
    return shutil.which("wrk")


def wrk_missing():
    return ("wrk is not installed (apt-get install wrk; `make bench` "
            "installs it when run as root)")


class HttpServer(M.Server):
    """One HTTP server process (or a gunicorn master and its workers)."""

    def __init__(self, model, app, tls, workdir, cpus, workers=1, certs=None):
        super().__init__(model, "tcp", workdir, set(cpus) if cpus else None)
        self.app, self.tls = app, tls
        self.workers, self.certs = workers, certs

    def _command(self, addr):
        cmd = [sys.executable, "-m", HTTPAPP, self.app, self.model,
               "--addr", addr]
        if self.tls:
            cmd += ["--certfile", self.certs[0], "--keyfile", self.certs[1]]
        if self.workers > 1:
            cmd += ["--workers", str(self.workers)]
        return cmd

    def cpu_seconds(self):
        """The server's CPU time: gunicorn's master and its workers."""
        return sum(_cpu(p) for p in _tree(self.proc.pid))


def _cpu(pid):
    try:
        return M.proc_cpu_seconds(pid)
    except OSError:                      # exited meanwhile
        return 0.0


def _tree(pid):
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(p) for p in f.read().split()]
    except OSError:
        kids = []
    for kid in kids:
        pids += _tree(kid)
    return pids


def make_certs(workdir):
    """(certfile, keyfile) for 127.0.0.1/localhost, or a reason string."""
    try:
        import trustme
    except ImportError:
        return "trustme is not installed (pip install 'fastsock[bench]')"
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile = os.path.join(workdir, "server.pem")
    keyfile = os.path.join(workdir, "server.key")
    cert.private_key_pem.write_to_path(keyfile)
    cert.cert_chain_pems[0].write_to_path(certfile)
    for blob in cert.cert_chain_pems[1:]:
        with open(certfile, "ab") as f:
            f.write(blob.bytes())
    return certfile, keyfile


def server_cpus(gen_cpu, workers):
    """The CPUs the server may use: its own one for one worker; every CPU
    but the generator's for more (all of them when there are too few)."""
    cpus = M.ALLOWED_CPUS
    if gen_cpu is None:
        return set(cpus)
    if workers <= 1:
        return {cpus[-1]}
    rest = [c for c in cpus if c != gen_cpu]
    return set(rest if len(rest) >= workers else cpus)


_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def _us(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def parse_wrk(out):
    """wrk's text report -> numbers (rps, requests, latency percentiles in
    microseconds, errors)."""
    rec = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    if m:
        rec["requests"] = int(m.group(1))
        rec["seconds"] = _us(m.group(2) + m.group(3)) / 1e6
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        rec["rps"] = float(m.group(1))
    for pct, key in (("50", "p50_us"), ("99", "p99_us")):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        if m:
            rec[key] = _us(m.group(1))
    m = re.search(r"Latency\s+(\S+)", out)
    if m:
        rec["mean_us"] = _us(m.group(1))
    errors, first = 0, None
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                  r"timeout (\d+)", out)
    if m:
        errors += sum(int(v) for v in m.groups())
        first = m.group(0) if errors else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
        first = first or m.group(0)
    rec["errors"] = errors
    if first:
        rec["first_error"] = first
    return rec


class HttpBench:
    """Servers and measurements of the http workload, for runner.Bench."""

    def __init__(self, cfg, workdir, server_cpu, gen_cpu, on_note):
        self.cfg, self.workdir = cfg, workdir
        self.gen_cpu = gen_cpu
        self.cpus = server_cpus(gen_cpu, cfg.workers)
        self.pool = M.ServerPool(on_note)     # (model, app, tls) -> server
        self.certs = None

    def close(self):
        self.pool.close()

    def _gen_setup(self):
        cpu = self.gen_cpu
        return (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None

    def _wrk(self, url, seconds, conns):
        threads = 1 if self.gen_cpu is not None else max(1, len(M.ALLOWED_CPUS))
        cmd = [wrk_path(), f"-t{threads}", f"-c{conns}", f"-d{seconds}s",
               "--latency", "--timeout", "5s", url]
        return subprocess.run(cmd, capture_output=True, text=True,
                              preexec_fn=self._gen_setup(), timeout=seconds + 60)

    def server(self, model, app, tls):
        def start():
            if tls and self.certs is None:
                self.certs = make_certs(self.workdir)
            if tls and isinstance(self.certs, str):
                raise M.ModelSkipped(self.certs)    # why there are none
            return HttpServer(model, app, tls, self.workdir, self.cpus,
                              self.cfg.workers, self.certs).start()

        def warm(s):
            # A new server's first second is slow (see runner.Bench._warm).
            self._wrk(self._url(s), max(1, round(self.cfg.server_warmup)), 50)
        return self.pool.get((model, app, tls), f"{model} http {app}",
                             start, warm)

    @staticmethod
    def _url(srv):
        host, _, port = srv.addr[4:].rpartition(":")
        return f"{'https' if srv.tls else 'http'}://{host}:{port}/"

    def measure(self, case, model, rnd):
        app, tls = case.app, case.transport == "tls"
        rec = {"model": model, "workload": "http", "transport": case.transport,
               "conns": case.conns, "size": case.size, "pipeline": 1,
               "app": app, "round": rnd, "workers": self.cfg.workers}
        if model in M.C_MODELS:
            rec["skipped"] = NOT_HTTP
            return rec
        if wrk_path() is None:
            rec["skipped"] = wrk_missing()
            return rec
        try:
            srv = self.server(model, app, tls)
        except M.ModelSkipped as exc:
            rec["skipped"] = str(exc)
            return rec
        url = self._url(srv)
        if self.cfg.warmup > 0:
            self._wrk(url, max(1, round(self.cfg.warmup)), case.conns)
        seconds = max(1, round(self.cfg.duration))
        busy0, srv0 = M.system_busy_seconds(), srv.cpu_seconds()
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        res = self._wrk(url, seconds, case.conns)
        wall = time.monotonic() - t0
        srv_cpu = srv.cpu_seconds() - srv0
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if not srv.alive():
            rec["error"] = f"server died: {srv.stderr_tail()}"
            return rec
        if res.returncode != 0 or "Requests/sec" not in res.stdout:
            rec["error"] = f"wrk failed: {(res.stderr or res.stdout).strip()[-300:]}"
            return rec
        rec.update(parse_wrk(res.stdout))
        client_cpu = (kids1.ru_utime + kids1.ru_stime
                      - kids0.ru_utime - kids0.ru_stime)
        rec["server_cpu_s"] = srv_cpu
        rec["client_cpu_s"] = client_cpu
        rec["foreign_cpu"] = round(max(0.0, (M.system_busy_seconds() - busy0
                                             - srv_cpu - client_cpu) / wall), 3)
        secs = rec.get("seconds") or wall
        rec["server_util"] = round(srv_cpu / secs / max(1, self.cfg.workers), 3)
        rec["client_util"] = round(client_cpu / secs, 3)
        if rec.get("requests"):
            rec["cpu_us_per_req"] = srv_cpu / rec["requests"] * 1e6
        return rec
