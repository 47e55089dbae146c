"""Zero-copy benchmarks, side by side in one run.

1. File transfer: a file of --file-mib MiB sent to a native client that
   checks every byte, with loop.sendfile() (sendfile(2) on epoll, splice on
   io_uring, asyncio's own sendfile(2) path) and with read()+write().
2. Zero copy on vs off: one connection, messages of 4 KiB .. 4 MiB (immutable
   bytes, written again and again, so no copy happens in Python), with the
   transport's zero-copy threshold at 0 (always) or None (never).

Server and client run pinned to different CPUs; models are interleaved;
medians of --rounds rounds. Reports MiB/s and server CPU seconds per GiB.

    python bench/bench_zerocopy.py [--transport tcp|unix] [--rounds 3]

On loopback the kernel copies zero-copy sends anyway (it reports
SO_EE_CODE_ZEROCOPY_COPIED / IORING_NOTIF_USAGE_ZC_COPIED), so "zero copy on"
measures the cost of pinning pages and reading notices until the transport
turns it off; only a real NIC shows the gain.
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from fastsock.bench import native  # noqa: E402

MiB = 1024 * 1024


# -- server (runs in a child process) ----------------------------------------

def make_loop(model):
    if model == "asyncio":
        return asyncio.new_event_loop()
    if model == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    import fastsock
    return fastsock.new_event_loop(model)


class Sender(asyncio.Protocol):
    """On connect: send the payload as `mode` says, then close."""

    def __init__(self, mode, path, chunks):
        self.mode, self.path, self.chunks = mode, path, chunks
        self.writable = None

    def connection_made(self, transport):
        self.transport = transport
        self.writable = asyncio.Event()
        self.writable.set()
        asyncio.ensure_future(self.send())

    def pause_writing(self):
        self.writable.clear()

    def resume_writing(self):
        self.writable.set()

    def connection_lost(self, exc):
        self.writable.set()

    async def send(self):
        tr = self.transport
        loop = asyncio.get_running_loop()
        try:
            if self.mode == "sendfile":
                with open(self.path, "rb") as f:
                    await loop.sendfile(tr, f)
            elif self.mode == "write":
                with open(self.path, "rb") as f:
                    while True:
                        block = f.read(256 * 1024)
                        if not block:
                            break
                        if tr.is_closing():
                            break
                        tr.write(block)
                        await self.writable.wait()
            else:                          # zc-on / zc-off
                tr.set_zerocopy_threshold(0 if self.mode == "zc-on" else None)
                for chunk in self.chunks:
                    if tr.is_closing():
                        break
                    tr.write(chunk)
                    await self.writable.wait()
        except ConnectionError:
            pass
        tr.close()


def serve(model, mode, addr, path, size):
    os.sched_setaffinity(0, {0})
    loop = make_loop(model)
    chunks = None
    if mode.startswith("zc"):
        with open(path, "rb") as f:
            data = f.read()
        chunks = [data[i:i + size] for i in range(0, len(data), size)]
        del data

    async def main():
        if addr.startswith("unix:"):
            server = await loop.create_unix_server(
                lambda: Sender(mode, path, chunks), addr[5:])
        else:
            host, port = addr[4:].rsplit(":", 1)
            server = await loop.create_server(
                lambda: Sender(mode, path, chunks), host, int(port),
                reuse_address=True)
        print("ready", flush=True)
        await server.serve_forever()

    try:
        loop.run_until_complete(main())
    except KeyboardInterrupt:
        pass


# -- driver ------------------------------------------------------------------------

def available_models(wanted):
    out = []
    for m in wanted:
        if m == "uvloop":
            try:
                import uvloop  # noqa: F401
            except ImportError:
                print("skip uvloop: not installed")
                continue
        if m in ("epoll", "uring"):
            import fastsock
            info = fastsock.backends()[m]
            if not info.available:
                print(f"skip {m}: {info.reason}")
                continue
        out.append(m)
    return out


def run_case(loadgen, model, mode, addr, path, total, size, seconds):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
    srv = subprocess.Popen(
        [sys.executable, __file__, "--serve", model, mode, addr, path,
         str(size)], stdout=subprocess.PIPE, env=env, text=True)
    try:
        if srv.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{model}/{mode} server did not start")
        out = subprocess.run(
            ["taskset", "-c", "1", loadgen, "--addr", addr, "--mode", "recv",
             "--conns", "1", "--size", str(total), "--warmup", "0",
             "--duration", str(seconds), "--server-pid", str(srv.pid)],
            capture_output=True, text=True, timeout=seconds + 120)
        res = json.loads(out.stdout)
    finally:
        srv.terminate()
        srv.wait(10)
    errors = res["errors"] + res["mismatched_bytes"] + res["short_files"]
    gib = res["bytes"] / (1024 * MiB)
    return {"mib_s": res["mib_s"], "errors": errors,
            "cpu_s_per_gib": res["server_cpu_s"] / gib if gib else None}


def median_runs(runs):
    return {
        "mib_s": statistics.median(r["mib_s"] for r in runs),
        "cpu_s_per_gib": statistics.median(r["cpu_s_per_gib"] for r in runs
                                           if r["cpu_s_per_gib"] is not None),
        "errors": sum(r["errors"] for r in runs),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--transport", default="tcp", choices=["tcp", "unix"])
    ap.add_argument("--file-mib", type=int, default=1024)
    ap.add_argument("--zc-mib", type=int, default=256)
    ap.add_argument("--sizes", default="4096,16384,65536,262144,1048576,4194304")
    ap.add_argument("--models", default="epoll,uring,asyncio,uvloop")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--json")
    ap.add_argument("--serve", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        model, mode, addr, path, size = args.serve
        return serve(model, mode, addr, path, int(size))

    loadgen = native.build("loadgen")
    tmp = tempfile.mkdtemp(prefix="fastsock-zc-")
    big = os.path.join(tmp, "file.bin")
    small = os.path.join(tmp, "zc.bin")
    for path, mib in ((big, args.file_mib), (small, args.zc_mib)):
        subprocess.run([loadgen, "--mode", "pattern", "--size",
                        str(mib * MiB), "--file", path], check=True)
    addr = ("unix:" + os.path.join(tmp, "s") if args.transport == "unix"
            else "tcp:127.0.0.1:%d" % (20000 + os.getpid() % 20000))
    models = available_models(args.models.split(","))
    results = []

    # 1. sendfile vs write, models interleaved within each round
    cases = [(m, mode) for mode in ("sendfile", "write") for m in models
             if not (m == "uvloop" and mode == "sendfile")]
    runs = {c: [] for c in cases}
    for r in range(args.rounds):
        for c in (cases if r % 2 == 0 else cases[::-1]):
            runs[c].append(run_case(loadgen, c[0], c[1], addr, big,
                                    args.file_mib * MiB, 0, args.seconds))
    print(f"\n{args.file_mib} MiB file over {args.transport} "
          f"(median of {args.rounds}):")
    print(f"{'model':8} {'mode':9} {'MiB/s':>8} {'CPU s/GiB':>10} errors")
    for (m, mode), rs in runs.items():
        med = median_runs(rs)
        results.append({"bench": "file", "model": m, "mode": mode,
                        "transport": args.transport, **med})
        print(f"{m:8} {mode:9} {med['mib_s']:8.0f} "
              f"{med['cpu_s_per_gib']:10.3f} {med['errors']}")

    # 2. zero copy on vs off across message sizes
    zc_models = [m for m in models if m in ("epoll", "uring")]
    sizes = [int(s) for s in args.sizes.split(",")]
    cases = [(m, mode, s) for s in sizes for m in zc_models
             for mode in ("zc-on", "zc-off")]
    runs = {c: [] for c in cases}
    for r in range(args.rounds):
        for c in (cases if r % 2 == 0 else cases[::-1]):
            runs[c].append(run_case(loadgen, c[0], c[1], addr, small,
                                    args.zc_mib * MiB, c[2], args.seconds))
    print(f"\nzero copy on/off, {args.zc_mib} MiB per connection over "
          f"{args.transport} (median of {args.rounds}):")
    print(f"{'model':8} {'size':>8} {'on MiB/s':>9} {'off MiB/s':>10} "
          f"{'on CPU s/GiB':>13} {'off CPU s/GiB':>14}")
    for s in sizes:
        for m in zc_models:
            on = median_runs(runs[(m, "zc-on", s)])
            off = median_runs(runs[(m, "zc-off", s)])
            for mode, med in (("zc-on", on), ("zc-off", off)):
                results.append({"bench": "zerocopy", "model": m, "mode": mode,
                                "size": s, "transport": args.transport, **med})
            print(f"{m:8} {s:8} {on['mib_s']:9.0f} {off['mib_s']:10.0f} "
                  f"{on['cpu_s_per_gib']:13.3f} {off['cpu_s_per_gib']:14.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results}, f, indent=1)
    for path in (big, small):
        os.unlink(path)
    os.rmdir(tmp)


if __name__ == "__main__":
    main()
