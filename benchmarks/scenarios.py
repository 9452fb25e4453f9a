"""Benchmark scenarios, declared as data.

A scenario is a request shape (history H, candidates C), a precision, a serving target and a path:
  ours   -- the genrec repository: python-ort, ragged dynamic batching, pad-to-longest
  naive  -- the naive Triton pattern: FP32, every text padded to 32 tokens, no dynamic batching
  text   -- the `genrec` ensemble: every text encoded per request (a cold request)
  ids    -- the `recommend` model: indexed items read from the item index; a fraction `unknown` of the
            candidates are new items (fresh ids + texts every request), encoded through the encoder
  retrieve -- the `recommend` model without candidates: user vector -> ANN top M over the whole index -> heads
            re-rank -> best k (RETRIEVE_K of RETRIEVE_M); the ANN's recall@M against exact search in the same run
Each served scenario is swept over a concurrency range; in-process anchors run the same requests.
"""

from __future__ import annotations

import dataclasses

CONCURRENCY = (1, 2, 4, 8, 16, 32)
# perf_analyzer runs the id and retrieval scenarios (every item indexed) at these, right after our client's points
# on the same server: the ratio ours / perf_analyzer is a target (issue 28)
PA_CONCURRENCY = (1, 16)


@dataclasses.dataclass(frozen=True)
class Scenario:
    history: int                   # H: history texts per request
    candidates: int                # C: candidate texts per request
    precision: str                 # fp32 | int8 | fp16
    target: str = "ours"           # ours | naive
    mode: str = "text"             # text | ids | retrieve
    unknown: float = 0.0           # ids: fraction of candidates the index does not know
    concurrency: tuple[int, ...] | None = None   # None: the suite's sweep
    catalog: int = 0               # ids: items in the index (0 = the benchmark catalog as is, ~3k)

    @property
    def name(self) -> str:
        if self.mode == "retrieve":
            return f"retrieve-h{self.history}-k{RETRIEVE_K}-m{RETRIEVE_M}-{self.precision}-n{self.catalog}"
        if self.mode == "ids":
            scale = f"-n{self.catalog}" if self.catalog else ""
            return f"ids-h{self.history}-c{self.candidates}-{self.precision}-u{self.unknown * 100:g}{scale}"
        return f"{self.target}-h{self.history}-c{self.candidates}-{self.precision}"

    @property
    def shape(self) -> str:
        return f"h{self.history}-c{self.candidates}"


# The reference request of the targets: a cold request, every text encoded (H=50, C=100).
REFERENCE = (50, 100)


HIT_RATE_SWEEP = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)      # unknown fractions, at concurrency 1 and 16

# Production-scale catalog of the id path: this many distinct ids in the index (the benchmark catalog's texts
# repeated under new ids, so the build encodes each distinct text once; see genrec.core.index's dedupe).
SCALE_ITEMS = 1_000_000
QUICK_SCALE_ITEMS = 20_000      # the same scenario in the CI smoke run, small enough for seconds
RETRIEVAL_ITEMS = (100_000, SCALE_ITEMS)    # whole-catalog retrieval (mode "retrieve") at these index sizes
RETRIEVE_K, RETRIEVE_M = 10, 200            # items returned, items retrieved before the heads re-rank


def suite(name: str, device: str = "cpu") -> list[Scenario]:
    precisions = ("fp16", "fp32") if device == "cuda" else ("int8", "fp32")
    fast = precisions[0]
    h, c = REFERENCE
    if name == "quick":
        return [Scenario(h, c, fast), Scenario(h, c, "fp32"), Scenario(h, c, "fp32", "naive"),
                Scenario(h, c, fast, mode="ids"), Scenario(h, c, fast, mode="ids", unknown=0.1),
                Scenario(h, c, fast, mode="ids", catalog=QUICK_SCALE_ITEMS),
                Scenario(h, 0, fast, mode="retrieve", catalog=QUICK_SCALE_ITEMS)]
    if name == "full":
        shapes = [(hh, cc) for hh in (10, 50) for cc in (20, 100, 300)]
        return ([Scenario(hh, cc, p) for hh, cc in shapes for p in precisions]
                + [Scenario(h, c, "fp32", "naive"), Scenario(10, 20, "fp32", "naive")]
                + [Scenario(h, c, fast, mode="ids", unknown=u) for u in (0.0, 0.1, 0.5)]
                + [Scenario(h, c, fast, mode="ids", unknown=u, concurrency=(1, 16))
                   for u in HIT_RATE_SWEEP if u not in (0.0, 0.1, 0.5)]
                + [Scenario(h, c, fast, mode="ids", catalog=SCALE_ITEMS, concurrency=(1, 16))]
                + [Scenario(h, 0, fast, mode="retrieve", catalog=n, concurrency=(1, 16)) for n in RETRIEVAL_ITEMS])
    raise ValueError(f"unknown suite {name!r} (quick, full)")
