# medtools: `make demo` and `make test` work on a fresh machine with only python3.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.medtools-installed
EXTRAS ?= dev,dp,dicomseg,serve,he,pacs,deid,explain,fl
JOBS   ?= 2

.PHONY: install demo test test-fast bench completions clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Re-install when pyproject.toml changes (the stamp is older than it).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(MAKE) -C examples/brain-privacy MEDTOOLS=$(abspath $(BIN))/medtools PYTHON=$(abspath $(BIN))/python demo

# Tests run in a shuffled order (pytest-randomly); SEED repeats one: make test SEED=1234
ifndef SEED
SEED := $(shell date +%s)
endif

test: $(STAMP)
	@echo "test order: --randomly-seed=$(SEED)"
	$(BIN)/python -m pytest -n $(JOBS) --dist loadfile -q -p randomly --randomly-seed=$(SEED)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -x -m "not slow"

bench: $(STAMP)
	@for script in benchmarks/*.py; do $(BIN)/python $$script --quick || exit 1; done

completions: $(STAMP)
	$(BIN)/python -c "from medtools.cli import write_table; print(write_table())"
	$(BIN)/python -m medtools.completions completions

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache examples/*/work
