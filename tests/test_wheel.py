"""The wheel: built from the sdist with liburing linked statically, repaired
by auditwheel to a manylinux tag, installed into a new virtual environment
where nothing else of fastsock's build is present, and run there: an echo
round trip on each backend and `fastsock info`.

It takes about a minute (most of it compiling).
"""
import importlib.util
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SMOKE = ROOT / "scripts" / "smoke.py"


def _need_tools():
    missing = [m for m in ("build", "auditwheel", "Cython", "setuptools")
               if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (pip install -e '.[test]')")
    for tool in ("readelf",):
        if subprocess.run(["sh", "-c", f"command -v {tool}"],
                          capture_output=True).returncode:
            pytest.skip(f"{tool} is not installed")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    _need_tools()
    out = tmp_path_factory.mktemp("wheelhouse")
    res = subprocess.run([str(ROOT / "scripts" / "build-wheel.sh"),
                          sys.executable, str(out)],
                         capture_output=True, text=True, timeout=800)
    assert res.returncode == 0, res.stderr[-4000:]
    sdist, wheel = res.stdout.split()[-2:]
    return Path(sdist), Path(wheel)


def test_wheel_is_manylinux_and_static(built):
    sdist, wheel = built
    assert sdist.name == "fastsock-0.1.0.tar.gz" and sdist.exists()
    tag = sysconfig.get_config_var("SOABI")
    assert "manylinux" in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    sos = [n for n in names if n.endswith(".so")]
    # one compiled module per .pyx of the source tree
    modules = sorted(n.split("/")[-1].split(".")[0] for n in sos)
    assert modules == sorted(p.stem for p in (ROOT / "fastsock").glob("*.pyx"))
    assert all(tag in n for n in sos), (tag, sos)
    # auditwheel grafts external libraries into fastsock.libs/: none, since
    # liburing is linked in.
    assert not [n for n in names if ".libs/" in n], names


def test_wheel_installs_and_runs_in_a_fresh_venv(built, tmp_path):
    _sdist, wheel = built
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                   timeout=120)
    py = venv / "bin" / "python"
    res = subprocess.run([str(py), "-m", "pip", "install", "--no-index",
                          "--no-deps", "-q", str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    # -I: no PYTHONPATH, no user site, not the current directory: only the
    # venv's site-packages can provide fastsock.  Run from elsewhere too.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    res = subprocess.run([str(py), "-I", str(SMOKE)], cwd=str(tmp_path),
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    ran = res.stdout.strip().splitlines()[-1].split()[1:]
    assert "epoll" in ran
    import fastsock
    if fastsock.backends()["uring"].available:
        assert "uring" in ran, res.stdout
    info = subprocess.run([str(venv / "bin" / "fastsock"), "info"],
                          cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=60, env=env)
    assert info.returncode == 0, info.stderr
    assert "backend epoll     available" in info.stdout, info.stdout
    assert "liburing (built)" in info.stdout, info.stdout
