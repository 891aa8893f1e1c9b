# Two set-up commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.satpipe-installed
PYTEST_FLAGS ?=

.PHONY: venv demo test test-slow lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned, so the resolver never swaps in another build later.
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	# the test oracle for AutoAttack, without its stale requests pin (pyproject: `oracles`)
	$(PY) -m pip install -q --no-deps 'torchattacks>=3.5'
	touch $(STAMP)

# The main job on the built-in data: the paper's grid at `quick` size (minutes on 2 CPU cores).
# Rerunning resumes: every finished step is skipped.
demo: $(STAMP)
	$(PY) -m satpipe reproduce --preset quick --out results/quick
	@echo "report: results/quick/table.md (see also robustness.png, claims.md, time.md)"

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_FLAGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(PYTEST_FLAGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) -m satpipe bench all --out bench.json

clean:
	rm -rf stores runs results bench.json .pytest_cache
