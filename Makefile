# Two commands on a fresh machine: `make test` (and, with the training issue, `make demo`).
# Both create or reuse the local virtual environment in $(VENV).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Versions that install from this machine's local wheel store; users may have newer ones (pyproject: >=).
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
INSTALLED := $(VENV)/.installed

.PHONY: install test test-slow bench

$(INSTALLED): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[test]'
	touch $(INSTALLED)

install: $(INSTALLED)

test: $(INSTALLED)
	$(PY) -m pytest -q

test-slow: $(INSTALLED)
	$(PY) -m pytest -q -m slow

bench: $(INSTALLED)
	$(PY) benchmarks/bench_fsla.py
