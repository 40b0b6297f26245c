# Two commands do all the set-up: `make figures` and `make test` (each creates .venv when missing).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.aa_lib-installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test figures clean-runs

install: $(STAMP)

# torch/torchvision first and pinned: pip then takes them from the local disk instead of resolving them anew.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

figures: $(STAMP)
	$(PY) -m aa_lib.runs all --jobs 2

clean-runs:
	rm -rf papermill_runs/*/ paper_figures/*.png paper_figures/*.pdf paper_figures/*.csv paper_figures/*.md
