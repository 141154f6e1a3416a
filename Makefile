# Two entry points on a fresh machine: `make quickstart` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch and torchvision are pinned to the builds this machine serves from local disk;
# override TORCH_SPEC for another platform (e.g. "torch==2.9.1 torchvision==0.24.1").
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: quickstart test lint typecheck venv clean reproduction

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]' $(TORCH_SPEC)
	touch $(STAMP)

quickstart: $(STAMP)
	RAY_USAGE_STATS_ENABLED=0 $(VENV)/bin/ltsearch run studies/quickstart.yaml

# Every paper ablation on the embedded data (--embedded), then REPRODUCTION.md; resumable
reproduction: $(STAMP)
	PYTHON=$(PY) bench/reproduce.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check ltmodels ltsearch tests bench
	$(VENV)/bin/ruff format --check ltmodels ltsearch tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy ltsearch

# 2 workers: the suite waits on Ray and CLI start-ups more than it computes; a unit of work
# is a test file, or the files sharing a session fixture (tests/conftest.py)
test: $(STAMP) lint typecheck
	RAY_USAGE_STATS_ENABLED=0 $(PY) -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
