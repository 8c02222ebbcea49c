# Two entry points: `make demo` and `make test`. Everything else is internal.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FAAS := $(VENV)/bin/faas
# The demo keeps its state where every faas command looks (FAAS_HOME, default ~/.faas),
# so the README's commands find its tables; DEMO_HOME=DIR puts it elsewhere.
DEMO_HOME ?=
DEMO_ROWS ?= 20000
DATA := examples/adventureworks/data

.PHONY: demo test bench clean

# The checkout is installed as a plain path (compat mode), not setuptools' import hook: the
# hook imports pathlib and re into every interpreter at start, about 20 ms per command and per
# fresh function process. A wheel still installs faas alone.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $@

# moto's S3 server for tests/integration/test_s3.py, in a virtualenv of its own: its botocore
# brings `six`, which the function-environment tests need absent from .venv.
S3_SERVER := $(VENV)/s3-server
$(S3_SERVER)/.installed: tests/s3-server.txt | $(VENV)/.installed
	$(PYTHON) -m venv $(S3_SERVER)
	$(S3_SERVER)/bin/python -m pip install --quiet -r tests/s3-server.txt
	touch $@

TABLES := product product_category product_subcategory sale territories
# Embedded mode: no FAAS_CLUSTER, so commands talk to the resident daemon of the home
# (the first one starts it; `faas local stop` stops it).
RUN := env -u FAAS_CLUSTER $(if $(DEMO_HOME),FAAS_HOME=$(DEMO_HOME)) $(FAAS)

demo: $(VENV)/.installed
	$(PY) examples/adventureworks/generate.py --rows $(DEMO_ROWS) --out $(DATA)
	$(RUN) namespace create adventure --if-not-exists
	for t in $(TABLES); do $(RUN) table import adventure.$$t $(DATA)/$$t.csv || exit 1; done
	$(RUN) submit examples/adventureworks --namespace adventure
	$(RUN) query "SELECT Country, count(*) AS lines, round(sum(Revenue), 2) AS revenue, \
	  round(sum(Profit), 2) AS profit FROM fact_sale GROUP BY Country ORDER BY revenue DESC" \
	  --namespace adventure
	@echo ""
	@echo "Done. faas is installed in .venv; put it on your PATH with:"
	@echo "    source .venv/bin/activate"
	@echo "The demo's tables are in $(or $(DEMO_HOME),$${FAAS_HOME:-~/.faas}) (a daemon serves it: faas local status)."
	@echo "Next: faas table ls --namespace adventure, then the README's \"Using it\"."

test: $(VENV)/.installed $(S3_SERVER)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) -m bench.overhead
	$(PY) -m bench.catalog
	$(PY) -m bench.planning
	$(PY) -m bench.exchange
	$(PY) -m bench.cluster
	$(PY) -m bench.loop
	$(PY) -m bench.e2e
	$(PY) -m bench.plot

clean:
	rm -rf $(VENV) $(DATA) $(DEMO_HOME)

# The web console's front end (console/), built into faas/console/static/ (committed, so
# installing faas needs no Node): only after changing console/src.
.PHONY: console
console:
	cd console && npm ci && npm run build
