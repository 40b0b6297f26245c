# Two commands do all the set-up: `make figures` and `make test` (each creates .venv when missing).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.aa_lib-installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# CPU numerics: `import aa_lib` pins torch's kernels to the AVX2 paths (aa_lib/numerics.py), so the runner, the
# notebook kernels it starts, the tests and the benchmarks compute the same bits on any x86-64 machine.
# AA_NATIVE_NUMERICS=1 opts out (native AVX-512/AMX speed for your own work; runs record which numerics they used).

.PHONY: install test figures lab clean-runs

install: $(STAMP)

# torch/torchvision first and pinned: pip then takes them from the local disk instead of resolving them anew.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Two pytest-xdist workers, one torch thread each (tests/conftest.py), keep both of a 2-core machine's cores busy
# (README, Run time). Files that share a session fixture stay on one worker (conftest's xdist groups).
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup tests

figures: $(STAMP)
	$(PY) -m aa_lib.runs all --jobs 2

# JupyterLab on the tutorials, every kernel started with the numerics pinning (LAB_ARGS="--port 9999 --no-browser").
lab: $(STAMP)
	$(PY) -m aa_lib pinned $(VENV)/bin/jupyter lab --ServerApp.root_dir=. \
		--FileContentsManager.preferred_dir=notebooks/tutorials $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

clean-runs:
	rm -rf papermill_runs/*/ paper_figures/*.png paper_figures/*.pdf paper_figures/*.csv paper_figures/*.md
