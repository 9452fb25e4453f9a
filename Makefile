# genrec: `make demo` (fresh machine: set-up + the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint clean

setup: $(STAMP)

# torch first, pinned: 2.13.0 is a CPU wheel on local disk; letting a resolver pick torch pulls a
# multi-GB CUDA build. Then the project with every extra (model, export, serve, bench, dev).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[all]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/genrec demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check genrec export model_repository server client benchmarks tests

clean:
	rm -rf build .pytest_cache
