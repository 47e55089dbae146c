"""Output of `fastsock bench`: table, verdict, JSON and plot."""
import json
import math
import os
import platform
import sys
import time

from fastsock.bench import models as M
from fastsock.bench import native
from fastsock.bench.runner import LOWER_IS_BETTER, PRIMARY, fmt_size

UNITS = {"rps": "req/s", "mib_s": "MiB/s", "kib_per_conn": "KiB/conn"}
WHAT = {"pingpong": "ping-pong", "stream": "streaming echo",
        "churn": "connection churn (accepts/s)", "sendfile": "sendfile",
        "idle": "idle memory", "http": "HTTP, wrk"}


def host_info(server_cpu, gen_cpu):
    cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu": cpu_model,
        "cpus": len(M.ALLOWED_CPUS),
        "python": sys.version.split()[0],
        "server_cpu": server_cpu,
        "loadgen_cpu": gen_cpu,
        "liburing": native.liburing_version(),
        "compiler": native.compiler_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        import uvloop
        info["uvloop"] = uvloop.__version__
    except ImportError:
        info["uvloop"] = None
    try:
        import fastsock
        info["fastsock"] = getattr(fastsock, "__version__", None)
        info["fastsock_backends"] = {
            k: {"available": v.available, "reason": v.reason}
            for k, v in fastsock.backends().items()}
    except Exception as exc:
        info["fastsock"] = f"not importable: {exc}"
    return info


def fmt_num(v, digits=0):
    if v is None:
        return "-"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.2f}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.1f}k"
    return f"{v:.{digits}f}"


def table_rows(rows):
    """(header, [cells]) for the results table, shared by rich and plain."""
    header = ["case", "model", "req/s", "MiB/s", "p50 us", "p99 us", "p99.9 us",
              "CPU us/req", "KiB/conn", "x uvloop", "x C", "notes"]
    out = []
    for r in rows:
        case = _case_label(r)
        if "skipped" in r or "error" in r:
            out.append([case, r["model"], "-", "-", "-", "-", "-", "-", "-", "-", "-",
                        ("skipped: " + r["skipped"]) if "skipped" in r
                        else ("failed: " + r["error"])])
            continue
        notes = []
        if r["workload"] == "idle" and r.get("held") != r["conns"]:
            notes.append(f"only {r.get('held', 0):.0f} connections held")
        if r.get("errors"):
            kind = "DATA ERRORS" if r.get("data_errors") else "connection errors"
            notes.append(f"{kind} {r['errors']}: {r.get('first_error', '')}")
        if r.get("generator_bound"):
            notes.append("generator-bound")
        if r.get("foreign_cpu", 0) > 0.15:
            notes.append(f"busy host ({r['foreign_cpu']:.0%} CPU elsewhere)")
        if r.get("failed_rounds"):
            notes.append(f"{r['failed_rounds']} round(s) failed")
        if r.get("note"):
            notes.append(r["note"])
        cpu = r.get("cpu_us_per_req")
        out.append([
            case, r["model"],
            fmt_num(r.get("rps")) if r["workload"] in ("pingpong", "churn", "http") else "-",
            fmt_num(r.get("mib_s"), 1) if r["workload"] != "idle" else "-",
            fmt_num(r.get("p50_us"), 1), fmt_num(r.get("p99_us"), 1),
            fmt_num(r.get("p999_us"), 1),
            f"{cpu:.2f}" if cpu is not None and r["workload"] in ("pingpong", "churn", "http") else "-",
            f"{r['kib_per_conn']:.2f}" if "kib_per_conn" in r else "-",
            f"{r['vs_uvloop']:.2f}" if "vs_uvloop" in r else "-",
            f"{r['vs_c']:.2f}" if "vs_c" in r else "-",
            "; ".join(notes)])
    return header, out


def _case_label(r):
    w = r["workload"]
    if w == "idle":
        return f"idle {r['transport']} {r['conns']}"
    if w == "http":
        return f"http {r.get('app', '')} {r['transport']} {r['conns']}c"
    p = f" p{r['pipeline']}" if r.get("pipeline", 1) > 1 else ""
    return f"{w} {r['transport']} {r['conns']}c {fmt_size(r['size'])}{p}"


def print_table(rows, console=None):
    header, body = table_rows(rows)
    if console is not None:
        from rich.table import Table
        t = Table(title="fastsock bench (medians over rounds)", show_lines=False)
        for i, h in enumerate(header):
            t.add_column(h, justify="right" if 2 <= i <= 10 else "left",
                         overflow="fold")
        last = None
        notes = []
        for cells in body:
            if last is not None and cells[0] != last:
                t.add_section()
            last = cells[0]
            if cells[-1]:
                notes.append(f"[{len(notes) + 1}] {cells[1]}, {cells[0]}: {cells[-1]}")
                cells = cells[:-1] + [f"[{len(notes)}]"]
            t.add_row(*cells)
        console.print(t)
        for n in notes:
            console.print(n, markup=False, highlight=False)
        return
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h)
              for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for cells in body:
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths)))


def verdict(rows, skipped):
    """Short plain-language lines: who wins where, by how much."""
    lines = []
    groups = {}
    for r in rows:
        if "skipped" in r or "error" in r:
            continue
        groups.setdefault(_case_label(r), []).append(r)
    py_ratio = {}      # model -> [ratio to uvloop] over ping-pong cases
    for label, rs in groups.items():
        metric = PRIMARY[rs[0]["workload"]]
        lower = metric in LOWER_IS_BETTER
        py = sorted((r for r in rs if r["model"] in M.PY_MODELS and r.get(metric)),
                    key=lambda r: r[metric], reverse=not lower)
        if not py:
            continue
        best = py[0]
        unit = UNITS[metric]
        text = (f"{label}: {best['model']} leads with "
                f"{fmt_num(best[metric], 2 if lower else 1)} {unit}")
        others = [f"{r['model']} {_times(best[metric], r[metric], lower)}"
                  for r in py[1:]]
        if others:
            text += " (" + ", ".join(others) + " behind)"
        c = [r for r in rs if r["model"] in M.C_MODELS and r.get(metric)]
        if c:
            cb = sorted(c, key=lambda r: r[metric], reverse=not lower)[0]
            d = 2 if lower else 1
            if cb.get("generator_bound"):
                text += f"; C limit {cb['model']} >= {fmt_num(cb[metric], d)} (generator-bound)"
            else:
                text += f"; C limit {cb['model']} {fmt_num(cb[metric], d)}"
        if best.get("generator_bound"):
            text += "; the generator was the bottleneck for the leader"
        if c and not cb.get("generator_bound") and (
                best[metric] < cb[metric] if lower else best[metric] > cb[metric] * 1.05):
            text += " [a Python model beat the C limit: too noisy to rank]"
        cpu = sorted((r for r in rs if r.get("cpu_us_per_req")
                      and r["workload"] in ("pingpong", "churn", "http")),
                     key=lambda r: r["cpu_us_per_req"])
        if cpu:
            # Server CPU time per request barely moves when other processes
            # steal CPU, unlike req/s: on a busy host, trust this ranking.
            text += "; server CPU us/req: " + ", ".join(
                f"{r['model']} {r['cpu_us_per_req']:.2f}" for r in cpu)
        lines.append(text)
        if rs[0]["workload"] == "pingpong":
            for r in py:
                if "vs_uvloop" in r:
                    py_ratio.setdefault(r["model"], []).append(r["vs_uvloop"])
    if py_ratio:
        parts = []
        for m, vals in sorted(py_ratio.items(), key=lambda kv: -_gmean(kv[1])):
            parts.append(f"{m} {_gmean(vals):.2f}x")
        lines.insert(0, "Ping-pong, geometric mean of req/s relative to uvloop: "
                     + ", ".join(parts) + ".")
    errs = [r for r in rows if r.get("data_errors")]
    if errs:
        lines.append("DATA ERRORS (bytes wrong, missing or extra): " + ", ".join(
            f"{r['model']} in {_case_label(r)} ({r['data_errors']})" for r in errs))
    elif any(r["workload"] != "http" for r in rows):
        lines.append("Every byte received was checked against what was sent; "
                     "no mismatches.")
    if any(r["workload"] == "http" for r in rows):
        lines.append("HTTP: wrk counts socket errors and answers other than "
                     "2xx/3xx (in the notes); it does not check bodies.")
    cerrs = [r for r in rows if r.get("errors") and not r.get("data_errors")]
    if cerrs:
        lines.append("Connection errors (see the notes): " + ", ".join(
            f"{r['model']} in {_case_label(r)} ({r['errors']})" for r in cerrs))
    failed = [r for r in rows if r.get("failed_rounds")]
    if failed:
        lines.append("Rounds that failed (medians use the rest): " + ", ".join(
            f"{r['model']} in {_case_label(r)}: {r['failure']}" for r in failed))
    busy = [r.get("foreign_cpu", 0) for r in rows if "foreign_cpu" in r]
    if busy and max(busy) > 0.15:
        lines.append(f"Other processes used up to {max(busy):.0%} of a CPU during "
                     "some measurements: expect noise; rerun on a quiet host.")
    for m, reason in skipped.items():
        lines.append(f"Skipped {m}: {reason}")
    return lines


def _gmean(vals):
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else 0


def _times(best, other, lower):
    ratio = other / best if lower else best / other
    return f"{ratio:.2f}x"


def write_json(path, host, config, rows, skipped, lines, runs):
    doc = {"host": host, "config": config, "skipped": skipped,
           "results": rows, "verdict": lines, "runs": runs}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=str)


MODEL_COLORS = {"epoll": "#1f77b4", "uring": "#d62728", "asyncio": "#7f7f7f",
                "uvloop": "#2ca02c", "c-epoll": "#9ecae1", "c-uring": "#fcae91"}


def plot(path, rows, host):
    """One panel per workload, grouped bars per case, one bar per model."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"plot skipped: matplotlib not installed ({exc})"
    good = [r for r in rows if "skipped" not in r and "error" not in r]
    panels = []
    for w in ("pingpong", "stream", "churn", "sendfile", "idle", "http"):
        rs = [r for r in good if r["workload"] == w]
        if rs:
            panels.append((w, PRIMARY[w], rs))
    if any(r["workload"] == "pingpong" and r.get("p99_us") for r in good):
        panels.insert(1, ("pingpong", "p99_us",
                          [r for r in good if r["workload"] == "pingpong"]))
    if any(r["workload"] == "http" and r.get("cpu_us_per_req") for r in good):
        # Server CPU per request: steadier than req/s on a shared host.
        panels.append(("http", "cpu_us_per_req",
                       [r for r in good if r["workload"] == "http"]))
    if not panels:
        return "plot skipped: no results"
    ncols = 2
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(13, 3.8 * nrows), squeeze=False)
    models = [m for m in M.ALL_MODELS if any(r["model"] == m for r in good)]
    for ax, (w, metric, rs) in zip(axes.flat, panels):
        cases = []
        for r in rs:
            lab = _case_label(r).replace(f"{w} ", "", 1)
            if lab not in cases:
                cases.append(lab)
        width = 0.8 / max(1, len(models))
        for i, m in enumerate(models):
            xs, ys = [], []
            for j, c in enumerate(cases):
                for r in rs:
                    if r["model"] == m and _case_label(r).replace(f"{w} ", "", 1) == c:
                        xs.append(j + (i - (len(models) - 1) / 2) * width)
                        ys.append(r.get(metric) or 0)
            if xs:
                ax.bar(xs, ys, width, label=m, color=MODEL_COLORS.get(m))
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(cases, rotation=20, ha="right", fontsize=8)
        unit = {"p99_us": "p99 latency, us (lower is better)",
                "cpu_us_per_req": "server CPU us/request (lower is better)",
                "kib_per_conn": "KiB per idle conn (lower is better)"}.get(
                    metric, UNITS.get(metric, metric))
        ax.set_title(f"{WHAT[w]}: {unit}", fontsize=10)
        if metric in ("rps", "p99_us") and w == "pingpong":
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8, ncol=3)
    fig.suptitle(f"fastsock bench on {host.get('cpu') or platform.machine()}, "
                 f"{host.get('cpus')} CPUs, Linux {host.get('kernel')}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
