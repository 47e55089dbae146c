"""Instructions per HTTP request, counted by callgrind: the http workload's
servers compared by the user-space work each request costs them.

    python bench/http_instructions.py [--models uvloop,epoll,uring]
        [--app aiohttp|asgi] [--plain] [--requests 2000,10000]

wrk's requests per second move by a few per cent from round to round on a
shared host; callgrind's instruction counts (Ir) per request repeat within
about half a per cent. For each model the server
(`python -m fastsock.bench.httpapp`) runs under `valgrind --tool=callgrind`,
answers two requests alone, then wrk (one thread, 50 connections, a Lua
script that stops it after exactly N answers) sends N requests; the server
is stopped and its total Ir read. Two runs, N1 and N2 requests:
(Ir(N2) - Ir(N1)) / (N2 - N1) is the cost of one request without the
start-up. Kernel work is not counted (callgrind sees user space only): use
`fastsock bench` for the whole cost.

Why two requests first: CPython shares one attribute layout among a class's
instances and stops adding names to it after about 30 instances; under
callgrind's slowdown the first burst of 50 requests can make 50 response
writers (aiohttp's StreamWriter) before any of them sets its late
attributes, and every later writer then carries its own dict, a few
thousand Ir per request that depend on start-up timing, not on the loop.

Needs valgrind and wrk (apt-get install valgrind wrk). Takes about a minute
per model.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import ssl
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CERTS = ROOT / "tests" / "certs"

STOP_AFTER = """
local n = tonumber(os.getenv("NREQ"))
local count = 0
response = function(status, headers, body)
  count = count + 1
  if count >= n then wrk.thread:stop() end
end
"""


def fetch(url):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(url, context=ctx, timeout=60) as r:
        return r.read()


def count_ir(model, app, tls, nreq, workdir, cpus):
    out = Path(workdir) / f"callgrind.{model}.{nreq}"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
           sys.executable, "-m", "fastsock.bench.httpapp", app, model,
           "--addr", "tcp:127.0.0.1:0"]
    if tls:
        cmd += ["--certfile", str(CERTS / "localhost.pem"),
                "--keyfile", str(CERTS / "localhost.key")]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    srv = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=env, cwd=workdir,
                           preexec_fn=lambda: os.sched_setaffinity(0, {cpus[0]}))
    try:
        line = srv.stdout.readline()
        if not line.startswith("READY "):
            raise SystemExit(f"{model}: server did not start: {line.strip()} "
                             f"{srv.stderr.read()[-500:]}")
        host, _, port = line.split()[1][4:].rpartition(":")
        url = f"{'https' if tls else 'http'}://{host}:{port}/"
        fetch(url)
        fetch(url)
        script = Path(workdir) / "stop_after.lua"
        script.write_text(STOP_AFTER)
        res = subprocess.run(
            ["wrk", "-t1", "-c50", f"-d{nreq // 800 + 8}", "--timeout", "20",
             "-s", str(script), url],
            capture_output=True, text=True, env=dict(os.environ, NREQ=str(nreq)),
            preexec_fn=lambda: os.sched_setaffinity(0, {cpus[-1]}))
        done = re.search(r"(\d+) requests in", res.stdout)
        if not done or int(done.group(1)) != nreq:
            raise SystemExit(f"{model}: wrk answered {done and done.group(1)} "
                             f"of {nreq}: {res.stdout[-300:]}{res.stderr[-300:]}")
        srv.send_signal(signal.SIGTERM)
        # valgrind delivers the signal when the thread next leaves the
        # kernel; a loop asleep in io_uring_enter(2) needs a request to
        # wake it (one more in every run: it cancels out).
        try:
            srv.wait(5)
        except subprocess.TimeoutExpired:
            try:
                fetch(url)
            except OSError:
                pass
            srv.wait(60)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    text = out.read_text(errors="replace")
    m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    if not m:
        raise SystemExit(f"{model}: no callgrind totals in {out}")
    return int(m.group(1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="uvloop,epoll,uring,asyncio")
    p.add_argument("--app", default="aiohttp", choices=("aiohttp", "asgi"))
    p.add_argument("--plain", action="store_true", help="no TLS")
    p.add_argument("--requests", default="2000,10000",
                   help="N1,N2 (default 2000,10000)")
    args = p.parse_args(argv)
    for tool in ("valgrind", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install {tool})")
    n1, n2 = (int(x) for x in args.requests.split(","))
    cpus = sorted(os.sched_getaffinity(0))
    tls = not args.plain
    print(f"{args.app} {'TLS' if tls else 'plain'}: user-space instructions "
          f"(callgrind Ir) per request, from runs of {n1} and {n2} requests")
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for model in args.models.split(","):
            t0 = time.monotonic()
            a = count_ir(model, args.app, tls, n1, workdir, cpus)
            b = count_ir(model, args.app, tls, n2, workdir, cpus)
            results[model] = (b - a) / (n2 - n1)
            print(f"  {model:8s} {results[model]:10,.0f} Ir/request"
                  f"  ({time.monotonic() - t0:.0f} s)", flush=True)
    if "uvloop" in results:
        base = results["uvloop"]
        print("  vs uvloop: " + ", ".join(
            f"{m} {v / base:.3f}x" for m, v in results.items() if m != "uvloop"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
