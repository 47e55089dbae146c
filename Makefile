# Quick start: `make bench` (the main job) and `make test`.
# Each target does its own setup, idempotently: system packages, a virtual
# environment, the build.
#
# PYTHON picks the interpreter (`make test PYTHON=python3.13`); each
# interpreter gets its own virtual environment, .venv-<major.minor>, and its
# own compiled modules (the .so names carry the ABI tag, so builds for
# several interpreters live side by side in the source tree).

PYTHON ?= python3
PYVER  := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
ifeq ($(PYVER),)
$(error PYTHON=$(PYTHON) does not run)
endif
VENV   ?= .venv-$(PYVER)
PY     := $(VENV)/bin/python
PYX    := $(wildcard fastsock/*.pyx fastsock/*.pxd fastsock/endpoints/*.pxi fastsock/csrc/*.h fastsock/csrc/*.c)

.PHONY: all system venv build test test-loop bench bench-suite wheel clean

all: build

system:
	@scripts/ensure-system-deps.sh

$(VENV)/.ready: pyproject.toml | system
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=68" wheel "Cython>=3.0,<4"
	$(PY) -m pip install -q -e ".[test,bench]" --no-build-isolation
	touch $@

venv: $(VENV)/.ready

# The .so files land next to the sources (editable install), so rebuilding in
# place is all a change needs. build-temp per interpreter: object files of two
# versions never mix.
$(VENV)/.built: $(VENV)/.ready $(PYX) setup.py
	$(PY) setup.py -q build_ext --inplace -j 2 --build-temp build/temp-$(PYVER)
	touch $@

build: system $(VENV)/.built

# The whole suite, then CPython's own asyncio tests on each backend.
test: build
	@scripts/ensure-tools.sh curl
	$(PY) -m pytest tests $(PYTEST_ARGS)
	$(PY) tests/cpython_suite/run_cpython_asyncio.py --backend epoll
	$(PY) tests/cpython_suite/run_cpython_asyncio.py --backend uring

# The loop-level suites only (what CI runs on the other interpreters).
test-loop: build
	$(PY) -m pytest tests -m "not slow" $(PYTEST_ARGS)
	$(PY) tests/cpython_suite/run_cpython_asyncio.py --backend epoll
	$(PY) tests/cpython_suite/run_cpython_asyncio.py --backend uring

bench: build
	@scripts/ensure-tools.sh wrk
	$(VENV)/bin/fastsock bench $(BENCH_ARGS)

bench-suite: build
	$(PY) -m pytest bench --benchmark-only $(PYTEST_ARGS)

# sdist in wheelhouse/, and a wheel for $(PYTHON) built from it: liburing
# linked statically, repaired by auditwheel to a manylinux tag.
wheel: system $(VENV)/.ready
	scripts/build-wheel.sh $(PY) wheelhouse

clean:
	rm -rf build fastsock/*.c fastsock/*.so .venv-* .pytest_cache dist wheelhouse
