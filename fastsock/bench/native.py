"""Compile the bench's C programs (bench/csrc/) on first use and cache them.

Binaries live in $XDG_CACHE_HOME/fastsock/bin (default ~/.cache/fastsock/bin),
named after a hash of the sources, the compiler and the flags: a changed
source or a different compiler gives a new name, so a stale binary is never
run.  Building is atomic (compile to a temporary name, then rename), so two
bench runs starting at once do not trip over each other.
"""
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

CSRC = Path(__file__).resolve().parent / "csrc"
# The C helpers the extension is built with too (fastsock/csrc/common.c).
COMMON_CSRC = Path(__file__).resolve().parent.parent / "csrc"

# program -> (its source, liburing: True = required, False = not used,
#             OPTIONAL = linked with -DHAVE_LIBURING when found, built
#             without it otherwise).  Every program is linked with common.c.
OPTIONAL = "optional"
PROGRAMS = {
    "loadgen": ("loadgen.c", OPTIONAL),
    "echo_epoll": ("echo_epoll.c", False),
    "echo_uring": ("echo_uring.c", True),
}
# Shared by every program: compiled as its own translation unit and linked
# in; hashed into every program's name, so a change rebuilds them all.
COMMON_SOURCES = ["common.c"]
COMMON_HEADERS = ["common.h"]

CFLAGS = ["-O2", "-g0", "-std=gnu11", "-Wall", "-D_GNU_SOURCE"]


class NativeUnavailable(Exception):
    """A C program cannot be built here; str() says why in plain words."""


def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache")
    return Path(base) / "fastsock" / "bin"


def find_compiler():
    cc = os.environ.get("CC")
    if cc and shutil.which(cc.split()[0]):
        return cc.split()
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    return None


def liburing_flags():
    """Include flags and the static liburing.a, or NativeUnavailable."""
    if shutil.which("pkg-config") is None:
        raise NativeUnavailable("pkg-config not found (needed to find liburing)")
    try:
        def pc(*args):
            return subprocess.run(["pkg-config", *args, "liburing"], check=True,
                                  capture_output=True, text=True).stdout.split()
        cflags = pc("--cflags")
        libdir = pc("--variable=libdir")[0]
    except (subprocess.CalledProcessError, IndexError):
        raise NativeUnavailable(
            "liburing not found by pkg-config (install liburing-dev)") from None
    static = Path(libdir) / "liburing.a"
    if not static.exists():
        raise NativeUnavailable(f"{static} missing (install liburing-dev)")
    # Static link: the binary runs without liburing.so at run time.
    return cflags, [str(static)]


def liburing_version():
    try:
        return subprocess.run(["pkg-config", "--modversion", "liburing"],
                              check=True, capture_output=True,
                              text=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def compiler_version():
    cc = find_compiler()
    if not cc:
        return None
    try:
        out = subprocess.run([*cc, "--version"], capture_output=True,
                             text=True, timeout=10).stdout
        return out.splitlines()[0] if out else None
    except (OSError, subprocess.SubprocessError):
        return None


def build(name):
    """Path of the compiled program `name`, building it if needed."""
    main, needs_uring = PROGRAMS[name]
    cc = find_compiler()
    if cc is None:
        raise NativeUnavailable("no C compiler found (cc, gcc or clang); "
                                "install gcc to enable the C models")
    extra_cflags, libs = [], []
    if needs_uring == OPTIONAL:
        # loadgen's io_uring engine; its epoll engine needs nothing.
        try:
            extra_cflags, libs = liburing_flags()
        except NativeUnavailable:
            pass
    elif needs_uring:
        extra_cflags, libs = liburing_flags()
    if libs:
        extra_cflags = [*extra_cflags, "-DHAVE_LIBURING"]
    flags = [*CFLAGS, f"-I{COMMON_CSRC}", *extra_cflags]
    h = hashlib.sha256()
    for part in [*cc, *flags, *libs, platform.machine()]:
        h.update(part.encode() + b"\0")
    paths = [CSRC / main, *(COMMON_CSRC / s for s in COMMON_SOURCES),
             *(COMMON_CSRC / s for s in COMMON_HEADERS)]
    for path in paths:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    out = cache_dir() / f"{name}-{h.hexdigest()[:16]}"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", dir=out.parent)
    os.close(fd)
    cmd = [*cc, *flags, "-o", tmp, *(str(p) for p in paths if p.suffix == ".c"),
           *libs]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        os.unlink(tmp)
        raise NativeUnavailable(f"compiling {name} failed: {exc}") from None
    if res.returncode != 0:
        os.unlink(tmp)
        tail = " | ".join(res.stderr.strip().splitlines()[-3:])
        raise NativeUnavailable(f"compiling {name} failed: {tail}")
    os.chmod(tmp, 0o755)
    os.replace(tmp, out)
    return out
