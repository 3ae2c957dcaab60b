# Everything runs inside .venv, created on first use so a fresh clone needs no manual set-up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast demo bench clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

test: $(STAMP)
	PYTHONPATH=$(CURDIR) $(PY) -m pytest -q -n 2 --dist loadfile tests

# the unit tests only: no test that starts an interpreter or another process (see tests/conftest.py)
test-fast: $(STAMP)
	PYTHONPATH=$(CURDIR) $(PY) -m pytest -q -n 2 --dist loadfile -m "not integration" tests

demo: $(STAMP)
	PYTHONPATH=$(CURDIR) $(PY) Search_CIFAR10/run_demo.py $(if $(FRESH),--fresh,)

bench: $(STAMP)
	PYTHONPATH=$(CURDIR) $(PY) benchmarks/search_step.py

clean-venv:
	rm -rf $(VENV)

# Regenerate Search_CIFAR10/tensor_analysis_result/ (memory filter, dual-core filter, latency table).
.PHONY: analysis
analysis: $(STAMP)
	PYTHONPATH=$(CURDIR) $(PY) tensor_analysis/generate_results.py
