# genrec: `make demo` (fresh machine: set-up + the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Triton's perf_analyzer ships only in tritonclient wheels; 2.51.0 is the newest that runs on glibc 2.36.
# Its own venv, no dependencies: it is a C++ binary the benchmark suite calls as an anchor.
PA_VENV  := .venv-perf-analyzer
PA_STAMP := $(PA_VENV)/.installed

.PHONY: setup demo test bench quality bench-gpu lint clean

setup: $(STAMP) $(PA_STAMP)

# torch first, pinned: 2.13.0 is a CPU wheel on local disk; letting a resolver pick torch pulls a
# multi-GB CUDA build. Then the project with every extra (model, export, serve, bench, dev).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[all]"
	touch $(STAMP)

$(PA_STAMP):
	$(PYTHON) -m venv $(PA_VENV)
	$(PA_VENV)/bin/python -m pip install --quiet --no-deps tritonclient==2.51.0
	touch $(PA_STAMP)

demo: setup
	$(VENV)/bin/genrec demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(VENV)/bin/genrec bench --out build/bench

# Model quality: the ablation table of the README (ml-100k from ../shared when present + synthetic data,
# 3 seeds each, baselines on the same impressions); ~40 min on 2 cores.
quality: setup
	$(VENV)/bin/genrec bench quality --out benchmarks/results/quality

# On a machine with an NVIDIA GPU: ONNX Runtime with the CUDA EP replaces the CPU build in .venv, then
# the suite runs FP16 (and FP32) on the GPU. The PyTorch anchor stays on CPU (torch is pinned to the CPU
# wheel) and says so in results.json.
bench-gpu: setup
	$(PY) -m pip uninstall --quiet -y onnxruntime
	$(PY) -m pip install --quiet "onnxruntime-gpu>=1.19"
	$(VENV)/bin/genrec bench --device cuda --out build/bench-gpu

lint: setup
	$(VENV)/bin/ruff check genrec export model_repository server client benchmarks tests

clean:
	rm -rf build .pytest_cache
