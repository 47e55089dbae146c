# Quick start: `make bench` (the main job) and `make test`.
# Each target does its own setup, idempotently: system packages, a virtual
# environment, the build.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYX    := $(wildcard fastsock/*.pyx fastsock/*.pxd csrc/*.h)

.PHONY: all system venv build test bench bench-suite clean

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
# place is all a change needs.
$(VENV)/.built: $(VENV)/.ready $(PYX) setup.py
	$(PY) setup.py -q build_ext --inplace -j 2
	touch $@

build: system $(VENV)/.built

# pytest, then CPython's own asyncio tests on each backend.
test: build
	$(PY) -m pytest tests $(PYTEST_ARGS)
	$(PY) tests/cpython_suite/run_cpython_asyncio.py --backend epoll
	$(PY) tests/cpython_suite/run_cpython_asyncio.py --backend uring

bench: build
	$(VENV)/bin/fastsock bench $(BENCH_ARGS)

bench-suite: build
	$(PY) -m pytest bench --benchmark-only $(PYTEST_ARGS)

clean:
	rm -rf build fastsock/*.c fastsock/*.so $(VENV) .pytest_cache
