"""`fastsock bench`: arguments, progress display, output files."""
import argparse
import signal
import time

from fastsock.bench import models as M
from fastsock.bench import native, report
from fastsock.bench.runner import WORKLOADS, Bench, Config, plan

# Default run: a few minutes.  --quick: under a minute.  Options given
# explicitly always win over both.
DEFAULTS = dict(models=",".join(M.ALL_MODELS), transport="unix,tcp",
                conns="1,50,500", sizes="64,16384", duration=0.5, warmup=0.2,
                rounds=3, pipeline=1, workloads=",".join(WORKLOADS),
                idle_conns=10000)
QUICK = dict(transport="unix", conns="50", sizes="64", duration=0.3, warmup=0.1,
             rounds=1, idle_conns=1000)
# wrk measures whole seconds: the http workload rounds --duration and
# --warmup to at least 1 s.


def add_arguments(p):
    p.add_argument("--models", help=f"comma list of {','.join(M.KNOWN_MODELS)} "
                   f"(default: {','.join(M.ALL_MODELS)})")
    p.add_argument("--transport", help="comma list of tcp, unix, udp "
                   f"(default {DEFAULTS['transport']})")
    p.add_argument("--conns", help="ping-pong connection counts (default "
                   f"{DEFAULTS['conns']}; the other workloads have fixed "
                   "ones: stream 10, churn 50, sendfile 8, http 50)")
    p.add_argument("--sizes", help="ping-pong message sizes in bytes (default "
                   f"{DEFAULTS['sizes']})")
    p.add_argument("--duration", type=float, help="timed window per measurement, "
                   f"seconds (default {DEFAULTS['duration']})")
    p.add_argument("--warmup", type=float, help="untimed warm-up before each "
                   f"window, seconds (default {DEFAULTS['warmup']})")
    p.add_argument("--rounds", type=int, help="rounds; medians are reported "
                   f"(default {DEFAULTS['rounds']})")
    p.add_argument("--pipeline", type=int, help="ping-pong messages in flight "
                   "per connection (default 1)")
    p.add_argument("--workloads", help=f"comma list of {','.join(WORKLOADS)} "
                   "(default: all)")
    p.add_argument("--idle-conns", type=int, help="connections for the idle "
                   f"memory workload (default {DEFAULTS['idle_conns']})")
    p.add_argument("--workers", type=int, default=1, help="http: gunicorn "
                   "with N workers of each model's worker class (default 1: "
                   "one server process, no gunicorn)")
    p.add_argument("--json", metavar="FILE", help="write results as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="write a PNG plot")
    p.add_argument("--quick", action="store_true", help="a short run (< 1 min): "
                   "unix only, 50 conns x 64 B, one round")
    p.add_argument("--plain", action="store_true", help="no rich output")


def _ints(text, what):
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"fastsock bench: --{what} takes comma-separated integers")
    if not vals or min(vals) < 1:
        raise SystemExit(f"fastsock bench: --{what} needs positive integers")
    return vals


def resolve(args):
    opts = dict(DEFAULTS)
    if args.quick:
        opts.update(QUICK)
    for k in DEFAULTS:
        v = getattr(args, k, None)
        if v is not None:
            opts[k] = v
    models = [m.strip() for m in opts["models"].split(",") if m.strip()]
    unknown = [m for m in models if m not in M.KNOWN_MODELS]
    if unknown:
        raise SystemExit(f"fastsock bench: unknown model(s) {', '.join(unknown)}; "
                         f"known: {', '.join(M.KNOWN_MODELS)}")
    transports = [t.strip() for t in opts["transport"].split(",") if t.strip()]
    if not transports or any(t not in ("tcp", "unix", "udp") for t in transports):
        raise SystemExit("fastsock bench: --transport is a comma list of "
                         "tcp, unix, udp")
    if "udp" in transports and (opts["pipeline"] or 1) != 1:
        raise SystemExit("fastsock bench: udp runs with --pipeline 1 (a lost "
                         "datagram is never resent)")
    workloads = [w.strip() for w in opts["workloads"].split(",") if w.strip()]
    if any(w not in WORKLOADS for w in workloads):
        raise SystemExit(f"fastsock bench: --workloads from {','.join(WORKLOADS)}")
    cfg = Config(models=models, transports=transports,
                 conns=_ints(opts["conns"], "conns"), sizes=_ints(opts["sizes"], "sizes"),
                 duration=opts["duration"], warmup=opts["warmup"],
                 rounds=max(1, opts["rounds"]), pipeline=max(1, opts["pipeline"]),
                 workloads=workloads, idle_conns=opts["idle_conns"])
    if args.quick:
        cfg.sendfile_size = 4 << 20
        cfg.server_warmup = 0.5
        cfg.http_security = ["tcp"]
    if args.workers < 1:
        raise SystemExit("fastsock bench: --workers needs a positive integer")
    cfg.workers = args.workers
    return cfg


def run(args):
    cfg = resolve(args)
    console = None
    if not args.plain:
        try:
            from rich.console import Console
            console = Console()
            if not console.is_terminal:
                console = Console(width=150)   # logs and pipes: no wrapping
        except ImportError:
            pass
    say = console.print if console else print
    bench = Bench(cfg)
    # A Ctrl-C reaches the servers too (one process group), a SIGTERM or
    # SIGHUP sent to the bench alone does not: unwind through bench.close()
    # then, or the servers outlive the bench.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, M.exit_on_signal)
    try:
        try:
            models, skipped = bench.prepare()
        except native.NativeUnavailable as exc:
            say(f"fastsock bench: the load generator is a C program and cannot "
                f"be built here: {exc}")
            return 2
        for m, why in skipped.items():
            say(f"skipping {m}: {why}")
        if not models:
            say("fastsock bench: no model can run here")
            return 2
        cases = plan(cfg)
        host = report.host_info(bench.server_cpu, bench.gen_cpu)
        if bench.server_cpu is None:
            say("only one CPU: server and load generator share it; "
                "numbers mean less")
        else:
            say(f"server on CPU {bench.server_cpu}, load generator on CPU "
                f"{bench.gen_cpu}")
        t0 = time.monotonic()
        rows = _run_with_progress(bench, cases, models, console)
        elapsed = time.monotonic() - t0
        # Models that failed to start on every case are skipped, with reason.
        for (m, _t, _mode), why in bench.skipped.items():
            if not any(r["model"] == m and "skipped" not in r and "error" not in r
                       for r in rows):
                skipped.setdefault(m, why)
        shown = [r for r in rows if r["model"] not in skipped]
        report.print_table(shown, console)
        lines = report.verdict(shown, skipped)
        say("")
        for line in lines:
            say(line if console is None else f"- {line}", markup=False) \
                if console else say(f"- {line}")
        say(f"\n({len(bench.runs)} measurements in {elapsed:.0f} s)")
        config = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
        if args.json:
            report.write_json(args.json, host, config, shown, skipped, lines, bench.runs)
            say(f"wrote {args.json}")
        if args.plot:
            err = report.plot(args.plot, shown, host)
            say(err or f"wrote {args.plot}")
        return 0
    finally:
        bench.close()


def _run_with_progress(bench, cases, models, console):
    total = bench.steps(cases, models)
    if console is None:
        done = [0]

        def step(desc):
            done[0] += 1
            print(f"[{done[0]}/{total}] {desc}", flush=True)
        bench.on_step = step
        bench.on_note = lambda text: print(f"note: {text}", flush=True)
        return bench.run(cases, models)
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress,
                               TextColumn, TimeRemainingColumn)
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as prog:
        task = prog.add_task("starting", total=total)
        first = [True]

        def step(desc):
            if not first[0]:
                prog.advance(task)
            first[0] = False
            prog.update(task, description=desc)
        bench.on_step = step
        bench.on_note = lambda text: prog.console.print(f"note: {text}", markup=False)
        rows = bench.run(cases, models)
        prog.advance(task)
    return rows
