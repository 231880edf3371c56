# Two commands on a fresh machine: `make demo` (the main job on the embedded digits) and `make test`.
# Both create or reuse the local virtual environment in $(VENV).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Versions that install from this machine's local wheel store; users may have newer ones (pyproject: >=).
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
INSTALLED := $(VENV)/.installed
TEST_INSTALLED := $(VENV)/.installed-test
# One resolver run, no byte-compiling of every installed module (Python compiles what it imports, once):
# half the CPU time of the install. The test tools come with the first `make test`.
PIP_INSTALL := $(PY) -m pip install -q --no-compile

.PHONY: install demo test test-slow bench

$(INSTALLED): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) $(TORCH_PIN) -e .
	touch $(INSTALLED)

$(TEST_INSTALLED): $(INSTALLED)
	$(PIP_INSTALL) -e '.[test]'
	touch $(TEST_INSTALLED)

install: $(INSTALLED)

DEMO_OUTPUT ?= runs/digits-demo

# A second `make demo` continues an interrupted demo run, or reports the finished one; nothing is retrained.
demo: $(INSTALLED)
	if [ -f $(DEMO_OUTPUT)/last.pth ]; then $(VENV)/bin/boat-vit train --resume $(DEMO_OUTPUT); \
	else $(VENV)/bin/boat-vit train --preset digits --output $(DEMO_OUTPUT); fi

test: $(TEST_INSTALLED)
	$(PY) -m pytest -q

test-slow: $(TEST_INSTALLED)
	$(PY) -m pytest -q -m slow

bench: $(INSTALLED)
	$(PY) benchmarks/bench_fsla.py
