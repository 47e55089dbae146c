"""`fastsock info`: what this host offers fastsock.

Shows only what can be found out here; where fastsock's own io_uring probe is
not available, it says so rather than guessing.
"""
import platform

from fastsock.bench import native


def gather():
    info = {"kernel": platform.release(), "machine": platform.machine(),
            "python": platform.python_version(),
            "liburing_build": native.liburing_version()}
    try:
        import fastsock
    except Exception as exc:
        info["fastsock_error"] = f"fastsock does not import: {exc}"
        return info
    info["fastsock_version"] = getattr(fastsock, "__version__", None)
    try:
        info["backends"] = {k: {"available": v.available, "reason": v.reason}
                            for k, v in fastsock.backends().items()}
    except Exception as exc:
        info["backends_error"] = f"fastsock.backends() failed: {exc}"
    try:
        from fastsock import uring
        probe = uring.probe
    except Exception as exc:
        info["probe_error"] = f"fastsock.uring.probe() is not available: {exc}"
        return info
    try:
        info["probe"] = dict(probe())
    except Exception as exc:
        info["probe_error"] = f"fastsock.uring.probe() failed: {exc}"
    return info


def show(info, as_json=False):
    if as_json:
        import json
        print(json.dumps(info, indent=1))
        return
    print(f"kernel            {info['kernel']} ({info['machine']})")
    print(f"python            {info['python']}")
    if "fastsock_error" in info:
        print(f"fastsock          {info['fastsock_error']}")
    else:
        print(f"fastsock          {info.get('fastsock_version') or 'unknown version'}")
    for name, b in info.get("backends", {}).items():
        state = "available" if b["available"] else f"unavailable: {b['reason']}"
        print(f"backend {name:<9} {state}")
    if "backends_error" in info:
        print(f"backends          {info['backends_error']}")
    probe = info.get("probe")
    if probe is None:
        print(f"io_uring probe    {info.get('probe_error', 'not available')}")
    else:
        avail = probe.get("available")
        line = "available" if avail else f"unavailable: {probe.get('reason', '')}"
        print(f"io_uring          {line}")
        for key, label in (("setup_flags", "setup flags"), ("opcodes", "opcodes")):
            vals = probe.get(key)
            if vals is None:
                print(f"{label:<17} (not reported by the probe)")
            else:
                print(f"{label:<17} {len(vals)}: " + ", ".join(map(str, vals)))
        lv = probe.get("liburing_version")
        print(f"liburing (built)  {lv if lv else '(not reported by the probe)'}")
    print(f"liburing-dev      {info['liburing_build'] or 'not found by pkg-config'}"
          " (used to build the C reference servers)")
