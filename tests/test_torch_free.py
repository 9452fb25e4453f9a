"""The serving side needs no torch (the ``serve`` extra installs none): index build and repository build run
with every package the ``serve`` extra does not install made unimportable (torch, transformers, onnx, psutil, ...),
and after serving a text and an id request no server process maps libtorch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from genrec.client import RecommenderClient
from genrec.server.launcher import running_server

# What `pip install genrec[serve]` lacks that the full install has (checked by hand in a fresh serve-only venv:
# none of these is there). psutil: `bench soak` needs it, and registering that subcommand used to break the
# whole CLI of a serve-only install (argparse "conflicting subparser: bench").
NOT_IN_SERVE = ("torch", "transformers", "onnx", "psutil", "matplotlib", "usearch", "ray", "llama_cpp",
                "kubernetes_validate")
BLOCKER = f'''import importlib.abc, sys
class _NotInServe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {NOT_IN_SERVE!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not in the serve extra)", name=name)
sys.meta_path.insert(0, _NotInServe())
'''


def _maps_torch(pid: int) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:                                  # the process ended
        return False


def test_index_repository_and_serving_without_torch(artifacts, tiny_data, item_stats_dir, pipeline,
                                                    requests_corpus, tmp_path):
    site = tmp_path / "no-torch"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked" in probe.stderr          # the blocker works

    genrec = [sys.executable, "-m", "genrec.cli"]
    index, repo = tmp_path / "index", tmp_path / "repository"
    subprocess.run([*genrec, "index", "build", "--catalog", str(tiny_data / "train" / "news.tsv"), "--artifacts",
                    str(artifacts.root), "--out", str(index), "--precision", "fp32", "--quiet"],
                   env=env, check=True, capture_output=True)
    subprocess.run([*genrec, "repository", "build", "--artifacts", str(artifacts.root), "--out", str(repo),
                    "--precision", "fp32", "--index", str(index), "--stats", str(item_stats_dir)],
                   env=env, check=True, capture_output=True)

    # The server: Triton's python stub does not run our sitecustomize, so the guard there is that no process of
    # the server maps libtorch after serving both paths (checked to fail when a backend imports torch).
    r = requests_corpus[3]
    (ht, hc, hs), (ct, cc, cs) = r["history"], r["candidates"]
    with running_server(repo) as srv:
        client = RecommenderClient(srv.grpc_url)
        by_text = client.recommend(ht, ct, history_categories=hc, history_subcategories=hs,
                                   candidate_categories=cc, candidate_subcategories=cs)
        by_id = client.recommend(history_ids=r["history_ids"], candidate_ids=r["candidate_ids"])
        ref = pipeline.recommend(ht, ct, hc, hs, cc, cs)["scores"]
        np.testing.assert_allclose([it.score for it in by_text], np.sort(ref)[::-1], atol=1e-4)
        assert len(by_id.items) == len(ct) and all(np.isfinite(it.score) for it in by_id)
        stubs = srv.stub_processes()
        assert stubs and not any(_maps_torch(pid) for pid in [srv.proc.pid, *stubs])


ROOT = Path(__file__).resolve().parents[1]
# Each serving folder may import the core and its own package, lazily too (the encoders of the index build that
# need another runtime, TorchScript and Ray, are passed into the core by its caller: genrec.index_encoders).
SERVING = {"genrec/core": "genrec.core", "client": "genrec.client", "model_repository": "genrec.model_repository",
           "server": "genrec.server"}


def _genrec_imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at module level?) for every import of genrec in a file."""
    import ast

    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
        found += [(n, id(node) in top) for n in names if n.split(".")[0] == "genrec"]
    return found


def test_the_serving_folders_import_only_the_core_and_themselves():
    """client/, model_repository/, server/ and genrec/core/ import genrec.core and their own package only; the
    core is the package every serving step shares (checked to fail: a core module importing genrec.config)."""
    bad = []
    for folder, own in SERVING.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            allowed = ("genrec.core", own)
            for module, top_level in _genrec_imports(path):
                if module == "genrec" or any(module == a or module.startswith(a + ".") for a in allowed):
                    continue
                bad.append(f"{rel} imports {module}{'' if top_level else ' (inside a function)'}")
    assert not bad, bad


def test_every_core_module_imports_with_torch_blocked(tmp_path):
    """Each module of genrec.core, the client, the builder and the launcher import in a process where torch
    and transformers cannot be imported."""
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    modules = sorted(f"genrec.core.{p.stem}" for p in (ROOT / "genrec" / "core").glob("*.py") if p.stem != "__init__")
    modules += ["genrec.client", "genrec.model_repository.builder", "genrec.server.launcher"]
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(tmp_path)},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(modules) > 15
