"""`fastsock bench`, the main job, run as a user runs it: a short run that
must produce checked numbers, bad arguments, and a bench killed midway.

Speed is never asserted here (benchmarks decide that); what is asserted is
that every model answered, every byte was checked, and nothing is left
running."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

BENCH = [sys.executable, "-m", "fastsock", "bench", "--plain"]


def _bench(*args, timeout=120):
    return subprocess.run(BENCH + list(args), capture_output=True, text=True,
                          timeout=timeout)


def _children(pid):
    """Every live descendant of pid (from /proc)."""
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except FileNotFoundError:
            continue
        out.update(kids)
        todo.extend(kids)
    return out


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_quick_run_checks_every_byte(tmp_path):
    out = tmp_path / "r.json"
    r = _bench("--quick", "--models", "epoll,uring,asyncio,c-epoll",
               "--workloads", "pingpong,churn", "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(out.read_text())
    assert not data["skipped"], data["skipped"]
    seen = {(row["model"], row["workload"]) for row in data["results"]}
    assert seen == {(m, w) for m in ("epoll", "uring", "asyncio", "c-epoll")
                    for w in ("pingpong", "churn")}
    for row in data["results"]:
        assert row["rps"] > 0, row
        assert row["errors"] == 0 and row["data_errors"] == 0, row
    for run in data["runs"]:
        assert run["mismatched_bytes"] == 0 and run["unexpected_eof"] == 0, run
    assert any("no mismatches" in line for line in data["verdict"])


@pytest.mark.parametrize("args, message", [
    (["--models", "nosuch"], "unknown model"),
    (["--transport", "sctp"], "--transport is a comma list"),
    (["--conns", "0"], "--conns needs positive integers"),
    (["--sizes", "big"], "--sizes takes comma-separated integers"),
    (["--workloads", "nap"], "--workloads from"),
    (["--workers", "0"], "--workers needs a positive integer"),
])
def test_bad_arguments_are_one_clear_line(args, message):
    r = _bench(*args, timeout=30)
    assert r.returncode != 0
    assert message in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_killed_bench_leaves_no_server_running(signum):
    proc = subprocess.Popen(
        BENCH + ["--models", "epoll,c-epoll", "--transport", "unix",
                 "--conns", "1", "--sizes", "64", "--workloads", "pingpong",
                 "--duration", "5", "--warmup", "0", "--rounds", "4"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers = {}
    try:
        # Wait until both servers are up (the first is started for the
        # first measurement, the second for the next).
        deadline = time.monotonic() + 30
        while len(servers) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            servers = {p: cmd for p in _children(proc.pid)
                       if ("server.py" in (cmd := _cmdline(p))
                           or "echo_epoll" in cmd)}
        assert len(servers) == 2, servers
        proc.send_signal(signum)
        status = proc.wait(timeout=20)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in servers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in servers if _alive(p)]
        assert status == 128 + signum      # an exit, through the cleanup
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in servers:             # whatever this test left behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.skipif(not (shutil.which("valgrind") and shutil.which("wrk")),
                    reason="bench/http_instructions.py needs valgrind and wrk")
@pytest.mark.timeout(300)
def test_http_instructions_counts_a_request(tmp_path):
    # The callgrind count the README's HTTP section quotes: it must finish
    # (wrk stopped after exactly N answers, the server stopped) and report
    # a per-request count; the aiohttp app costs ~10^5 instructions.
    script = os.path.join(os.path.dirname(__file__), "..", "bench",
                          "http_instructions.py")
    res = subprocess.run(
        [sys.executable, script, "--models", "epoll", "--plain",
         "--requests", "40,120"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    line = next(l for l in res.stdout.splitlines() if "Ir/request" in l)
    count = float(line.split()[1].replace(",", ""))
    assert 20_000 < count < 2_000_000, line
