"""Item statistics on the serving side: build a stats folder from logs, read it by id, refresh it live.

``genrec stats build --behaviors behaviors.tsv --out STATS_DIR`` counts, per item, exposures, clicks and
distinct history users and factorizes the click histories into collaborative vectors (``genrec.core.stats.ItemStats``,
what training used) and writes STATS_DIR in
the ``ItemStats.save`` layout (``stats.json`` written last naming its content-named data files). Running
it again on fresh logs refreshes the statistics of a served model without retraining or re-encoding:

* :class:`StatsTable` is one immutable snapshot: ids sorted once into a fixed-width numpy array, so a
  request's ids are looked up with one vectorized binary search (O(log N) per id, no Python dict: ~(id
  width + 4 S) bytes per item, 1M items ~90 MB). Ids it does not know get zeros (= the model's prior).
* :class:`LiveStats` holds the current snapshot and a background thread that checks the manifest every
  ``refresh_ms``; a changed manifest is read into a new snapshot which then replaces the old one in a
  single reference assignment. A request reads ``live.table`` once, so it never mixes two generations.
  Every save is atomic (the manifest, renamed in last, names data files that are never rewritten), so a
  refresh reads the old version or the new one; one that loses a race with a save is retried at the next check.

Torch-free (the ``serve`` extra has no torch): the Triton ``recommend`` model uses this module.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from genrec.core.contract import ITEM_COUNTS, N_COUNTS, N_STATS
from genrec.core.errors import UserError
from genrec.core.index import sorted_lookup
from genrec.core.refresh import Refresher


class StatsLoadError(UserError, RuntimeError):
    """The stats folder is missing, malformed, or was being rewritten while read (retry later)."""


def generation(folder: str | Path) -> tuple[int, int, int] | None:
    """What identifies one written version of the folder: the manifest's (inode, mtime, size); None if absent.
    ``ItemStats.save`` replaces the manifest last, through a rename, so a new generation means a new inode."""
    from genrec.core.stats import manifest_state

    return manifest_state(folder)


@dataclasses.dataclass(frozen=True)
class StatsTable:
    """One generation of a stats folder, ready for vectorized lookups."""

    sorted_ids: np.ndarray        # (N,) S{width}, ascending
    counts: np.ndarray            # (N, S) float32, rows aligned with sorted_ids
    generation: tuple[int, int, int] | None
    manifest: dict[str, Any]

    @classmethod
    def empty(cls) -> StatsTable:
        return cls(np.zeros(0, dtype="S1"), np.zeros((0, N_STATS), np.float32), None, {})

    @classmethod
    def from_ids(cls, ids: Sequence[str], counts: np.ndarray, manifest: dict | None = None) -> StatsTable:
        raw = [i.encode("utf-8") for i in ids]
        arr = np.array(raw, dtype=f"S{max(1, max((len(r) for r in raw), default=1))}")
        order = np.argsort(arr, kind="stable")
        counts = np.asarray(counts, dtype=np.float32).reshape(len(raw), N_STATS)
        return cls(arr[order], np.ascontiguousarray(counts[order]), None, manifest or {})

    @classmethod
    def read(cls, folder: str | Path) -> StatsTable:
        """Read one consistent version of STATS_DIR (``genrec.core.stats.read_folder``): never a manifest with
        another version's data, never a folder a writer is half-way through."""
        from genrec.core.stats import StatsError, read_folder

        folder = Path(folder)
        try:
            state = generation(folder)
            manifest, raw_ids, counts = read_folder(folder)
        except StatsError as exc:
            raise StatsLoadError(str(exc)) from None
        except OSError as exc:
            raise StatsLoadError(f"{folder}: {exc}") from None
        if generation(folder) != state:
            raise StatsLoadError(f"{folder} changed while being read")
        n = len(raw_ids)
        counts = counts.astype(np.float32)
        if not (np.isfinite(counts).all() and (counts[:, :N_COUNTS] >= 0).all()):
            raise StatsLoadError(f"{folder}: statistics must be finite, counts >= 0")
        ids = np.array(raw_ids, dtype=f"S{max(1, max((len(r) for r in raw_ids), default=1))}").reshape(n)
        order = np.argsort(ids, kind="stable")
        return cls(ids[order], np.ascontiguousarray(counts[order]), state, manifest)

    def __len__(self) -> int:
        return len(self.sorted_ids)

    def most_popular(self, n: int) -> np.ndarray:
        """The ids (bytes) of the ``n`` most popular items, most popular first: clicks + history users, the
        popularity of ``genrec evaluate``'s baseline; ties by id."""
        if n <= 0 or not len(self.sorted_ids):
            return self.sorted_ids[:0]
        pop = self.counts[:, ITEM_COUNTS.index("clicks")] + self.counts[:, ITEM_COUNTS.index("history_users")]
        top = np.argpartition(-pop, n - 1)[:n] if n < len(pop) else np.arange(len(pop))
        top = top[np.lexsort((top, -pop[top]))]                   # by popularity, then by id (rows are id-sorted)
        return self.sorted_ids[top]

    def lookup(self, ids: Sequence[bytes | str]) -> np.ndarray:
        """(len(ids), S) float32 raw counts; ids without statistics get zeros (the model's prior)."""
        raw = [i if isinstance(i, bytes) else i.encode("utf-8") for i in ids]
        out = np.zeros((len(raw), N_STATS), dtype=np.float32)
        if raw and len(self.sorted_ids):
            pos, found = sorted_lookup(self.sorted_ids, raw)
            out[found] = self.counts[pos[found]]
        return out


class LiveStats:
    """The current :class:`StatsTable` of a folder, swapped atomically when the folder is rewritten.

    ``refresh_ms`` > 0 starts a daemon thread checking the manifest that often; 0 = only :meth:`check`.
    """

    def __init__(self, folder: str | Path, refresh_ms: int = 1000, *,
                 log: Callable[[str], None] | None = None):
        self.folder = Path(folder)
        self.refresh_ms = refresh_ms
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.table = StatsTable.read(self.folder)          # the first read must succeed
        self.loads, self._last_error = 1, ""
        self._refresher = Refresher(self.check, refresh_ms, what="item statistics", log=self.log)

    def check(self) -> bool:
        """Load a new generation if the folder has one; True when the table was replaced."""
        gen = generation(self.folder)
        if gen is None or gen == self.table.generation:
            return False
        try:
            table = StatsTable.read(self.folder)
        except StatsLoadError as exc:
            if str(exc) != self._last_error:
                self._last_error = str(exc)
                self.log(f"item statistics not refreshed (keeping {len(self.table)} items): {exc}")
            return False
        self.table = table                                 # one reference assignment: atomic for readers
        self.loads += 1
        self._last_error = ""
        self.log(f"item statistics refreshed from {self.folder}: {len(table)} items")
        return True

    def lookup(self, ids: Sequence[bytes | str]) -> np.ndarray:
        return self.table.lookup(ids)

    def close(self) -> None:
        self._refresher.close()


def build_stats(behaviors: Iterable[str | Path], out: str | Path, *, skip_bad_lines: bool = False,
                log: Callable[[str], None] = print) -> Path:
    """Count item statistics over MIND behaviors files and (re)write STATS_DIR atomically (``ItemStats.save``)."""
    from genrec.core.mind import iter_behaviors
    from genrec.core.stats import ItemStats

    paths = [Path(b) for b in behaviors]
    if not paths:
        raise ValueError("give at least one behaviors.tsv")
    impressions = [imp for p in paths for imp in iter_behaviors(p, skip_bad_lines=skip_bad_lines)]
    stats = ItemStats.from_impressions(impressions, info={"behaviors": [str(p.resolve()) for p in paths]})
    folder = stats.save(out)
    totals = stats.counts[:, :N_COUNTS].sum(0) if len(stats) else np.zeros(N_COUNTS)
    n_cf = int((np.abs(stats.counts[:, N_COUNTS:]).sum(1) > 0).sum()) if len(stats) else 0
    log(f"wrote {folder}: {len(stats)} items from {len(impressions)} impressions ("
        + ", ".join(f"{k} {int(v)}" for k, v in zip(ITEM_COUNTS, totals)) + f"; {n_cf} collaborative vectors)")
    return folder
