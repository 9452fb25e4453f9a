"""Benchmark scenarios, declared as data.

A scenario is a request shape (history H, candidates C), a precision and a serving target:
  ours   -- the genrec repository: python-ort, ragged dynamic batching, pad-to-longest
  naive  -- the naive Triton pattern: FP32, every text padded to 32 tokens, no dynamic batching
Each served scenario is swept over a concurrency range; in-process anchors run the same requests.
"""

from __future__ import annotations

import dataclasses

CONCURRENCY = (1, 2, 4, 8, 16, 32)


@dataclasses.dataclass(frozen=True)
class Scenario:
    history: int                   # H: history texts per request
    candidates: int                # C: candidate texts per request
    precision: str                 # fp32 | int8 | fp16
    target: str = "ours"           # ours | naive

    @property
    def name(self) -> str:
        return f"{self.target}-h{self.history}-c{self.candidates}-{self.precision}"

    @property
    def shape(self) -> str:
        return f"h{self.history}-c{self.candidates}"


# The reference request of the targets: a cold request, every text encoded (H=50, C=100).
REFERENCE = (50, 100)


def suite(name: str, device: str = "cpu") -> list[Scenario]:
    precisions = ("fp16", "fp32") if device == "cuda" else ("int8", "fp32")
    if name == "quick":
        h, c = REFERENCE
        return [Scenario(h, c, precisions[0]), Scenario(h, c, "fp32"), Scenario(h, c, "fp32", "naive")]
    if name == "full":
        shapes = [(h, c) for h in (10, 50) for c in (20, 100, 300)]
        return ([Scenario(h, c, p) for h, c in shapes for p in precisions]
                + [Scenario(*REFERENCE, "fp32", "naive"), Scenario(10, 20, "fp32", "naive")])
    raise ValueError(f"unknown suite {name!r} (quick, full)")
