# The two README commands: `make run` and `make test`. Both bootstrap .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NATIVE := $(VENV)/.native

.PHONY: run test bench lint native clean drills demo

$(STAMP): requirements.txt pyproject.toml setup.py
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11+ is required ($(PYTHON))"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing pinned dependencies into $(VENV) ..."
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

$(NATIVE): $(STAMP) $(wildcard native/*.pyx native/*.pxd kvcache/*.pyx kvcache/*.pxd)
	@echo "building native extensions ..."
	$(PY) setup.py -q build_ext --inplace
	@touch $@

native: $(NATIVE)

run: $(NATIVE)
	$(PY) -m core.launcher

# The order service on all five daemons (examples/orders): a load, then where it went.
demo: $(NATIVE)
	$(PY) -m examples.orders.demo

test: $(NATIVE)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# Long randomized rounds of every fault drill (root: network namespaces); DRILL_MINUTES=20.
drills: $(NATIVE)
	$(PY) -m tests.faults.run_drills --minutes $(or $(DRILL_MINUTES),20)

# Every benchmark (bench/suite.py), then bench/README.md's tables; QUICK=1: a few minutes.
bench: $(NATIVE)
	$(PY) -m bench.suite $(if $(QUICK),--quick)

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf build $(VENV) var native/*.c native/*.so kvcache/*.c kvcache/*.so
