# Two entry points: `make demo` and `make test`. Everything else is internal.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FAAS := $(VENV)/bin/faas
DEMO_HOME ?= $(CURDIR)/.faas
DEMO_ROWS ?= 20000
DATA := examples/adventureworks/data

.PHONY: demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/adventureworks/generate.py --rows $(DEMO_ROWS) --out $(DATA)
	FAAS_HOME=$(DEMO_HOME) $(PY) examples/adventureworks/demo.py --data $(DATA)

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) -m bench.overhead

clean:
	rm -rf $(VENV) $(DEMO_HOME) $(DATA)
