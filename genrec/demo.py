"""``genrec demo``: the main job end to end on embedded defaults (what ``make demo`` runs).

synth data -> train -> evaluate (held-out dev day) -> export INT8 behind the parity gate.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from genrec.config import EvalConfig, ModelConfig, TrainConfig
from genrec.data.synth import SynthConfig


@dataclasses.dataclass
class DemoConfig:
    workdir: str = dataclasses.field(default="build/demo", metadata={"help": "where data, run and artifacts go"})
    threads: int = dataclasses.field(default=2, metadata={"help": "CPU threads for torch"})


def run_demo(cfg: DemoConfig = DemoConfig(), synth: SynthConfig = SynthConfig()) -> dict:
    from genrec.cli import print_metrics
    from genrec.data.synth import synthesize
    from genrec.evaluate import evaluate
    from genrec.train import train

    work = Path(cfg.workdir)
    t0 = time.perf_counter()
    step = _stepper(t0)
    step("synthesizing MIND-format data")
    counts = synthesize(work / "data", synth)
    print(f"  {counts}")
    step("training (frozen MiniLM, cached; early stopping on validation group-AUC)")
    result = train(work / "data" / "train", work / "run", ModelConfig(), TrainConfig(threads=cfg.threads))
    step("evaluating on the held-out dev day")
    metrics = evaluate(result.checkpoint_path, work / "data" / "dev", EvalConfig(threads=cfg.threads))
    print_metrics(metrics)
    (work / "demo_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    step("exporting the INT8 CPU artifact (ONNX, parity-gated against PyTorch)")
    from genrec.export import ExportConfig, export

    export(result.checkpoint_path, work / "artifacts", ExportConfig(precision=("int8",), threads=cfg.threads))
    print(f"  report: {work / 'artifacts' / 'export_report.md'}")
    step(f"done: {work}")
    return metrics


def _stepper(t0: float):
    def step(msg: str) -> None:
        print(f"\n[{time.perf_counter() - t0:6.1f}s] == {msg}", flush=True)
    return step
