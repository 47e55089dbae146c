"""Workloads, rounds and medians for `fastsock bench`.

Order of work: for each round, for each case (workload x transport x conns x
size), every model once, in an order rotated per round and case, so slow
drift on the host (thermal, a neighbour's job) spreads over all models
instead of landing on one.  Each (case, model) reports the median of its
rounds.

A server stays up for the whole run (one per model, transport and mode);
the idle-memory workload gets a fresh server so its baseline is clean.
"""
import json
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field

from fastsock.bench import models as M
from fastsock.bench import native

WORKLOADS = ("pingpong", "stream", "churn", "sendfile", "idle", "http")
# The number each workload is judged by; idle memory is better when lower.
PRIMARY = {"pingpong": "rps", "stream": "mib_s", "churn": "rps",
           "sendfile": "mib_s", "idle": "kib_per_conn", "http": "rps"}
LOWER_IS_BETTER = {"kib_per_conn"}


@dataclass(frozen=True)
class Case:
    workload: str
    transport: str
    conns: int
    size: int
    pipeline: int = 1
    app: str = ""           # http: "aiohttp" or "asgi" (transport: tcp / tls)

    def label(self):
        if self.workload == "http":
            return f"http {self.app} {self.transport} {self.conns}c"
        if self.workload == "pingpong":
            p = f" p{self.pipeline}" if self.pipeline > 1 else ""
            return f"pingpong {self.transport} {self.conns}c x {fmt_size(self.size)}{p}"
        if self.workload == "sendfile":
            return f"sendfile {self.transport} {self.conns}c x {fmt_size(self.size)} file"
        if self.workload == "idle":
            return f"idle {self.transport} {self.conns} conns"
        return f"{self.workload} {self.transport} {self.conns}c x {fmt_size(self.size)}"


def fmt_size(n):
    for unit, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


@dataclass
class Config:
    models: list
    transports: list
    conns: list
    sizes: list
    duration: float = 0.5
    warmup: float = 0.2
    rounds: int = 3
    pipeline: int = 1
    workloads: list = field(default_factory=lambda: list(WORKLOADS))
    idle_conns: int = 10000
    stream_conns: int = 10
    stream_size: int = 65536
    churn_conns: int = 50
    sendfile_conns: int = 8
    sendfile_size: int = 8 << 20
    server_warmup: float = 1.0
    # http (fastsock/bench/http.py): wrk with http_conns connections against
    # each app, plain and TLS; gunicorn with `workers` workers when > 1.
    http_apps: list = field(default_factory=lambda: ["aiohttp", "asgi"])
    http_security: list = field(default_factory=lambda: ["tcp", "tls"])
    http_conns: int = 50
    workers: int = 1


def plan(cfg):
    cases = []
    for t in cfg.transports:
        if "pingpong" in cfg.workloads:
            cases += [Case("pingpong", t, c, s, cfg.pipeline)
                      for c in cfg.conns for s in cfg.sizes]
        if t == "udp":
            continue        # datagrams: ping-pong only (one in flight)
        if "stream" in cfg.workloads:
            cases.append(Case("stream", t, cfg.stream_conns, cfg.stream_size))
        if "churn" in cfg.workloads:
            cases.append(Case("churn", t, cfg.churn_conns, 64))
        if "sendfile" in cfg.workloads:
            cases.append(Case("sendfile", t, cfg.sendfile_conns, cfg.sendfile_size))
    if "http" in cfg.workloads:
        cases += [Case("http", sec, cfg.http_conns, 0, 1, app)
                  for app in cfg.http_apps for sec in cfg.http_security]
    if "idle" in cfg.workloads:
        # One transport is enough: per-connection memory is the loop's
        # bookkeeping plus the kernel socket, which is not in the RSS.
        streams = [t for t in cfg.transports if t != "udp"]
        if streams:
            cases.append(Case("idle", streams[0], cfg.idle_conns, 64))
    return cases


def max_idle_conns(wanted):
    """Idle connections both processes can hold: each end needs an fd."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(0, min(wanted, hard - 200))


class Bench:
    def __init__(self, cfg, on_step=None, on_note=None):
        self.cfg = cfg
        self.on_step = on_step or (lambda desc: None)
        self.on_note = on_note or (lambda text: None)
        self.server_cpu, self.gen_cpu = M.cpu_plan()
        self.workdir = tempfile.mkdtemp(prefix="fastsock-bench-")
        # (model, transport, mode) -> Server
        self.pool = M.ServerPool(self.on_note)
        self.runs = []             # every single measurement
        self.loadgen = None
        self.pattern_file = None
        self.http = None           # http.HttpBench, made on first use

    # ---- setup -----------------------------------------------------------

    def steps(self, cases, models):
        return sum(len(models) * (1 if c.workload == "idle" else self.cfg.rounds)
                   for c in cases)

    def prepare(self):
        """Build the load generator and pre-check models.  Returns the
        models that may run and {model: reason} for the others."""
        self.loadgen = native.build("loadgen")   # NativeUnavailable: caller
        ok, skipped = [], {}
        for m in self.cfg.models:
            reason = M.precheck(m)
            if reason:
                skipped[m] = reason
            else:
                ok.append(m)
        if self.gen_cpu is not None:
            os.sched_setaffinity(0, {self.gen_cpu})   # keep off the server CPU
        return ok, skipped

    @property
    def skipped(self):
        """(model, transport, mode) -> why its server could not start."""
        return self.pool.skipped

    def close(self):
        self.pool.close()
        if self.http is not None:
            self.http.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _pattern(self):
        if self.pattern_file is None:
            path = os.path.join(self.workdir, "sendfile.bin")
            subprocess.run([str(self.loadgen), "--mode", "pattern", "--size",
                            str(self.cfg.sendfile_size), "--file", path], check=True)
            self.pattern_file = path
        return self.pattern_file

    def server(self, model, transport, mode):
        def start():
            file = self._pattern() if mode == "sendfile" else None
            return M.Server(model, transport, self.workdir, self.server_cpu,
                            file).start()
        return self.pool.get((model, transport, mode),
                             f"{model} {transport} {mode}", start,
                             lambda s: self._warm(s, mode))

    def _warm(self, srv, mode):
        """Run load on a fresh server before its first measurement.  Measured
        here: a new stock asyncio server ran 6x slower (at full CPU) for most
        of its first second, then settled; a short per-run warm-up missed it."""
        lg_mode, size = ("recv", self.cfg.sendfile_size) if mode == "sendfile" else ("pingpong", 64)
        subprocess.run([str(self.loadgen), "--addr", srv.addr, "--mode", lg_mode,
                        "--conns", "50" if mode == "echo" else "4", "--size", str(size),
                        "--warmup", "0", "--duration", str(self.cfg.server_warmup)],
                       capture_output=True, preexec_fn=self._gen_setup(),
                       timeout=self.cfg.server_warmup + 60)

    # ---- one measurement -------------------------------------------------

    def _gen_setup(self):
        cpu = self.gen_cpu
        return (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None

    def measure(self, case, model, rnd):
        if case.workload == "http":
            if self.http is None:
                from fastsock.bench.http import HttpBench
                self.http = HttpBench(self.cfg, self.workdir, self.server_cpu,
                                      self.gen_cpu, self.on_note)
            return self.http.measure(case, model, rnd)
        mode = "sendfile" if case.workload == "sendfile" else "echo"
        rec = {"model": model, "workload": case.workload, "transport": case.transport,
               "conns": case.conns, "size": case.size, "pipeline": case.pipeline,
               "round": rnd}
        try:
            srv = self.server(model, case.transport, mode)
        except M.ModelSkipped as exc:
            rec["skipped"] = str(exc)
            return rec
        lg_mode = {"pingpong": "pingpong", "stream": "stream", "churn": "churn",
                   "sendfile": "recv"}[case.workload]
        cmd = [str(self.loadgen), "--addr", srv.addr, "--mode", lg_mode,
               "--conns", str(case.conns), "--size", str(case.size),
               "--pipeline", str(case.pipeline), "--warmup", str(self.cfg.warmup),
               "--duration", str(self.cfg.duration), "--server-pid", str(srv.pid)]
        busy0, srv0 = M.system_busy_seconds(), srv.cpu_seconds()
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        try:
            res = subprocess.run(cmd, capture_output=True, text=True,
                                 preexec_fn=self._gen_setup(),
                                 timeout=self.cfg.warmup + self.cfg.duration + 60)
        except subprocess.TimeoutExpired:
            rec["error"] = "load generator timed out"
            return rec
        wall = time.monotonic() - t0
        if not srv.alive():
            rec["error"] = f"server died: {srv.stderr_tail()}"
            return rec
        if res.returncode != 0:
            rec["error"] = f"load generator failed: {res.stderr.strip()[-300:]}"
            return rec
        rec.update(json.loads(res.stdout))
        # Whatever else ran on the machine meanwhile, in CPUs (1.0 = a
        # whole CPU): a busy neighbour makes every number here noisy.
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self1 = resource.getrusage(resource.RUSAGE_SELF)
        used = (srv.cpu_seconds() - srv0
                + (kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime)
                + (self1.ru_utime + self1.ru_stime - self0.ru_utime - self0.ru_stime))
        rec["foreign_cpu"] = round(max(0.0, (M.system_busy_seconds() - busy0 - used) / wall), 3)
        secs = rec.get("seconds") or 0
        if secs and rec.get("server_cpu_s") is not None:
            rec["server_util"] = round(rec["server_cpu_s"] / secs, 3)
            rec["client_util"] = round(rec["client_cpu_s"] / secs, 3)
            if rec.get("requests"):
                rec["cpu_us_per_req"] = rec["server_cpu_s"] / rec["requests"] * 1e6
            if rec.get("bytes"):
                rec["cpu_ms_per_gib"] = rec["server_cpu_s"] / rec["bytes"] * 1e3 * (1 << 30)
        if srv.note:
            rec["note"] = srv.note
        return rec

    def measure_idle(self, case, model):
        """RSS growth per idle connection, on a fresh server."""
        rec = {"model": model, "workload": "idle", "transport": case.transport,
               "conns": case.conns, "size": case.size, "pipeline": 1, "round": 0}
        n = max_idle_conns(case.conns)
        if n < case.conns:
            rec["note"] = f"RLIMIT_NOFILE allows only {n} connections"
        srv = None
        try:
            srv = M.Server(model, case.transport, self.workdir, self.server_cpu).start()
            # Warm up first, so code paths and allocator pools that any
            # first connection touches are in the baseline, not the delta.
            self._hold(srv, 64)
            time.sleep(0.2)
            base = srv.rss_kib()
            held, peak = self._hold(srv, n, measure=srv.rss_kib)
            rec.update(held)
            rec["rss_base_kib"] = base
            rec["rss_held_kib"] = peak
            if held.get("held"):
                rec["kib_per_conn"] = (peak - base) / held["held"]
        except M.ModelSkipped as exc:
            rec["skipped"] = str(exc)
        except Exception as exc:                  # report, keep going
            rec["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            if srv is not None:
                srv.stop()
        return rec

    def _hold(self, srv, n, measure=None):
        cmd = [str(self.loadgen), "--addr", srv.addr, "--mode", "hold",
               "--conns", str(n), "--size", "64"]
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             preexec_fn=self._gen_setup())
        try:
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"hold failed: {p.stderr.read()[-300:]}")
            result = json.loads(line)
            time.sleep(0.3)                      # let the server settle
            value = measure() if measure else None
        finally:
            p.stdin.close()
            p.wait(60)
            p.stdout.close()
            p.stderr.close()
        return (result, value) if measure else result

    # ---- the whole run ---------------------------------------------------

    def run(self, cases, models):
        for rnd in range(self.cfg.rounds):
            for ci, case in enumerate(cases):
                if case.workload == "idle" and rnd > 0:
                    continue
                k = (rnd + ci) % len(models)
                for model in models[k:] + models[:k]:
                    self.on_step(f"round {rnd + 1}/{self.cfg.rounds}: "
                                 f"{case.label()} on {model}")
                    try:
                        if case.workload == "idle":
                            rec = self.measure_idle(case, model)
                        else:
                            rec = self.measure(case, model, rnd)
                    except Exception as exc:      # never let one model end the run
                        rec = {"model": model, "workload": case.workload,
                               "transport": case.transport, "conns": case.conns,
                               "size": case.size, "pipeline": case.pipeline,
                               "app": case.app,
                               "round": rnd, "error": f"{type(exc).__name__}: {exc}"}
                    self.runs.append(rec)
        return summarize(cases, models, self.runs)


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(cases, models, runs):
    rows = []
    for case in cases:
        for model in models:
            rs = [r for r in runs if r["model"] == model and r["workload"] == case.workload
                  and r["transport"] == case.transport and r["conns"] == case.conns
                  and r["size"] == case.size and r["pipeline"] == case.pipeline
                  and r.get("app", "") == case.app]
            if not rs:
                continue
            row = {"model": model, **asdict(case)}
            good = [r for r in rs if "skipped" not in r and "error" not in r]
            if not good:
                row["skipped" if any("skipped" in r for r in rs) else "error"] = \
                    next(r.get("skipped") or r.get("error") for r in rs)
                rows.append(row)
                continue
            for key in ("rps", "mib_s", "p50_us", "p99_us", "p999_us", "mean_us",
                        "cpu_us_per_req", "cpu_ms_per_gib", "server_util",
                        "client_util", "foreign_cpu", "kib_per_conn",
                        "rss_base_kib", "rss_held_kib", "held"):
                v = _median([r.get(key) for r in good])
                if v is not None:
                    row[key] = round(v, 3)
            row["rounds"] = len(good)
            row["errors"] = sum(r.get("errors", 0) for r in good)
            # Wrong or missing bytes, as opposed to connections that failed.
            row["data_errors"] = sum(r.get("mismatched_bytes", 0) + r.get("surplus_bytes", 0)
                                     + r.get("short_files", 0) + r.get("unexpected_eof", 0)
                                     for r in good)
            firsts = [r.get("first_error") for r in good if r.get("first_error")]
            if firsts:
                row["first_error"] = firsts[0]
            failed = [r.get("error") for r in rs if "error" in r]
            if failed:
                row["failed_rounds"] = len(failed)
                row["failure"] = failed[0]
            if PRIMARY[case.workload] in ("rps", "mib_s"):
                per_round = [round(r.get(PRIMARY[case.workload]) or 0, 1) for r in good]
                row[PRIMARY[case.workload] + "_rounds"] = per_round
                # Other load only ever lowers throughput: the best round is
                # the least disturbed one (the median is what the table shows).
                row[PRIMARY[case.workload] + "_best"] = max(per_round)
            notes = {r["note"] for r in good if r.get("note")}
            if notes:
                row["note"] = "; ".join(sorted(notes))
            # The generator saturated its CPU while the server still idled:
            # the server could do more than this number says.
            if (row.get("client_util", 0) > 0.9 and row.get("server_util", 1) < 0.85
                    and case.workload != "idle"):
                row["generator_bound"] = True
            rows.append(row)
    add_ratios(rows)
    return rows


def add_ratios(rows):
    """vs_uvloop and vs_c: this model's primary metric over uvloop's and over
    the best C server's, for the same case (1.0 = equal, >1 = better, for
    idle memory too: uvloop's KiB / this model's KiB)."""
    groups = {}
    for r in rows:
        key = (r["workload"], r["transport"], r["conns"], r["size"], r["pipeline"],
               r.get("app", ""))
        groups.setdefault(key, []).append(r)
    for key, rs in groups.items():
        metric = PRIMARY[key[0]]
        lower = metric in LOWER_IS_BETTER
        val = {r["model"]: r.get(metric) for r in rs if r.get(metric)}
        c_vals = {m: v for m, v in val.items() if m in M.C_MODELS}
        c_best = (min if lower else max)(c_vals.items(), key=lambda kv: kv[1]) if c_vals else None
        for r in rs:
            v = r.get(metric)
            if not v:
                continue
            if "uvloop" in val:
                r["vs_uvloop"] = round(val["uvloop"] / v if lower else v / val["uvloop"], 3)
            if c_best:
                r["vs_c"] = round(c_best[1] / v if lower else v / c_best[1], 3)
                r["c_ref"] = c_best[0]
