"""Check `fastsock bench` numbers against an independent load generator.

    python bench/crosscheck.py [--models a,b] [--transport tcp,unix]
                               [--conns 1,50] [--duration 2] [--reps 3]

Starts the same servers `fastsock bench` uses (same pinning: server on one
CPU, clients on another) and measures each ping-pong case with both clients,
alternating them, `reps` times: fastsock's loadgen (epoll, pipelined state
machine, per-message timestamps) and bench/independent_client.c (poll(2), no
shared code).  Prints the medians and whether they agree within 25%.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))      # run from a source checkout

from fastsock.bench import models as M    # noqa: E402
from fastsock.bench import native         # noqa: E402
TOLERANCE = 0.25


def build_independent(workdir):
    cc = native.find_compiler()
    if cc is None:
        sys.exit("crosscheck: no C compiler")
    out = Path(workdir) / "independent_client"
    subprocess.run([*cc, "-O2", "-o", str(out), str(HERE / "independent_client.c")],
                   check=True)
    return out


def pinned(cpu):
    return (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", default=",".join(M.ALL_MODELS))
    p.add_argument("--transport", default="tcp,unix")
    p.add_argument("--conns", default="1,50")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--duration", type=float, default=2.0)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    server_cpu, gen_cpu = M.cpu_plan()
    loadgen = native.build("loadgen")
    failures = 0
    with tempfile.TemporaryDirectory(prefix="fastsock-xcheck-") as wd:
        indep = build_independent(wd)
        print(f"{'model':8} {'tr':4} {'conns':>5}  {'loadgen':>10} {'independent':>11}  diff")
        for model in args.models.split(","):
            why = M.precheck(model)
            if why:
                print(f"{model:8} skipped: {why}")
                continue
            for transport in args.transport.split(","):
                try:
                    srv = M.Server(model, transport, wd, server_cpu).start()
                except M.ModelSkipped as exc:
                    print(f"{model:8} {transport:4} skipped: {exc}")
                    continue
                try:
                    # A new server is slow for up to a second (stock asyncio
                    # ran 6x slower at first): warm it before either client.
                    subprocess.run([str(loadgen), "--addr", srv.addr, "--conns", "50",
                                    "--size", str(args.size), "--warmup", "0",
                                    "--duration", "1.5"], capture_output=True,
                                   check=True, preexec_fn=pinned(gen_cpu))
                    for conns in [int(c) for c in args.conns.split(",")]:
                        ours, theirs = [], []
                        for _ in range(args.reps):
                            r = subprocess.run(
                                [str(loadgen), "--addr", srv.addr, "--conns", str(conns),
                                 "--size", str(args.size), "--warmup", "0.3",
                                 "--duration", str(args.duration)],
                                capture_output=True, text=True, check=True,
                                preexec_fn=pinned(gen_cpu))
                            d = json.loads(r.stdout)
                            assert d["errors"] == 0, d["first_error"]
                            ours.append(d["rps"])
                            r = subprocess.run(
                                [str(indep), srv.addr, str(conns), str(args.size),
                                 str(args.duration)],
                                capture_output=True, text=True, check=True,
                                preexec_fn=pinned(gen_cpu))
                            d = json.loads(r.stdout)
                            assert d["errors"] == 0, "independent client saw bad echoes"
                            theirs.append(d["rps"])
                        a, b = statistics.median(ours), statistics.median(theirs)
                        diff = (a - b) / b
                        ok = abs(diff) <= TOLERANCE
                        failures += not ok
                        print(f"{model:8} {transport:4} {conns:5}  {a:10.0f} {b:11.0f}  "
                              f"{diff:+.1%} {'ok' if ok else 'DISAGREE'}", flush=True)
                finally:
                    srv.stop()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
