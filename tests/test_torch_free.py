"""The serving side needs no torch (the ``serve`` extra installs none): index build and repository build run
with torch made unimportable, and after serving a text and an id request no server process maps libtorch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from genrec.client import RecommenderClient
from genrec.server.launcher import running_server

BLOCKER = '''import importlib.abc, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"{name} is blocked: the serving side must not need torch")
sys.meta_path.insert(0, _NoTorch())
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
