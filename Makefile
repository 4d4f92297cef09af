# Two entry points do the whole set-up on a fresh machine, then run:
#   make test   - virtual environment, torch, the package with its extras, the CUDA extension
#                 (when nvcc is present), then lint, the test suite and a benchmark smoke run
#   make demo   - the same set-up, then `haic demo`
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.haic-installed
EXTRAS ?= dev,bench,video
# Without a GPU, install this CPU build of torch first: a bare `torch` requirement would pull
# several GB of CUDA packages. Extra pip arguments (e.g. a CPU wheel index) go in TORCH_PIP_ARGS.
TORCH_CPU_VERSION ?= 2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=
# Test processes (pytest-xdist): every core; CI's 2 cores halve the suite's wall time.
# loadfile: a module's tests share one worker, so its module fixtures are built once.
PYTEST_WORKERS ?= auto
# pip byte-compiles at install on purpose: where PYTHONDONTWRITEBYTECODE=1 (this CI machine)
# those .pyc files are the only ones, and `--no-compile` (50 s less set-up) made every test
# process compile torch again: the suite ran 40% longer (measured, fresh clone, 2026-12-02).

.PHONY: setup test test-ray demo lint format bench gpu-suite clean

# The CUDA extension is torch-free: nvcc compiles it (~80 s on 2 cores) while pip installs torch
# and the extras, into build/ext; it joins the source tree once pip is done (the editable
# install, told to go without it, removes any _C it finds there). setup.py decides whether
# there is anything to build (no nvcc, or HAIC_SKIP_CUDA_BUILD=1: nothing).
$(STAMP): pyproject.toml setup.py $(wildcard csrc/*)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install "setuptools>=77" wheel "pybind11>=2.12"
	@set -e; rm -rf build/ext; \
	( if $(PY) setup.py -q build_ext --build-lib build/ext --build-temp build/tmp \
		> $(VENV)/cuda-build.log 2>&1; then echo 0; else echo $$?; fi > $(VENV)/cuda-build.rc ) & \
	if $(PY) -c "import torch" 2>/dev/null; then \
		echo "torch already installed: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "GPU found: installing torch with CUDA"; \
		$(PY) -m pip install $(TORCH_PIP_ARGS) torch; \
	else \
		echo "no GPU: installing the CPU build torch==$(TORCH_CPU_VERSION)"; \
		$(PY) -m pip install $(TORCH_PIP_ARGS) "torch==$(TORCH_CPU_VERSION)"; \
	fi; \
	HAIC_SKIP_CUDA_BUILD=1 $(PY) -m pip install -e ".[$(EXTRAS)]"; \
	wait; \
	echo "--- the CUDA extension's build (setup.py build_ext):"; cat $(VENV)/cuda-build.log; \
	test "$$(cat $(VENV)/cuda-build.rc)" = 0 || { echo "the CUDA extension failed to build"; exit 1; }; \
	for so in build/ext/haic_kernels/_C*; do if test -e "$$so"; then cp "$$so" haic_kernels/; fi; done; \
	touch $@

setup: $(STAMP)

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest tests -n $(PYTEST_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS)
	$(PY) -m pytest benchmarks --benchmark-disable -q

# The Ray Data test of `haic caption` (skipped by `make test` unless EXTRAS holds ray: the extra
# is about 500 MB and the test a few minutes on 2 cores).
test-ray: setup
	$(PY) -m pip install -e ".[$(EXTRAS),ray]"
	$(PY) -m pytest tests/app/test_caption_jobs.py -k ray $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/haic info
	$(VENV)/bin/haic demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(VENV)/bin/haic bench all

# On a GPU machine with torch, triton, nvcc and pybind11 already installed (no network needed).
gpu-suite:
	bash benchmarks/gpu_suite.sh $(or $(OUT),gpu-results)

clean:
	rm -rf build *.egg-info haic_kernels/_C*.so .pytest_cache .benchmarks
