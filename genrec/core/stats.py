"""Item statistics from interaction logs: the item-level engineered features (popularity, click-through,
who clicked it).

Per item (``genrec.core.contract.ITEM_STATS``), three raw counts:

* ``exposures``     -- impressions that showed the item (labelled candidates);
* ``clicks``        -- of those, how many were clicked;
* ``history_users`` -- distinct users with the item in their click history (clicks from before the log,
  which tell popularity but not exposures);

and a collaborative vector (``CF_DIM`` numbers): the item's row of a rank-``CF_DIM`` factorization of the
user x item matrix of click histories, L2-normalized. Two items clicked by the same users point the same way,
whatever their text says: the heads compare a candidate's vector with the history's (collaborative
filtering, the signal item text lacks). Only cosines between vectors of one build are used, so a rebuild
(any rotation or sign of the factors) needs no retraining. Items in no history get the zero vector (unknown).

The heads turn the raw counts into features inside the exported graph (log counts, a smoothed CTR with a
Beta prior fitted on the training log, an "item known" flag), so training and serving share one feature
implementation and a stats refresh needs neither retraining nor re-encoding. An item without statistics
(all zeros) gets the prior: CTR = alpha / (alpha + beta), popularity 0.

Training never sees the future: :func:`stats_as_of` gives every impression the counts of events strictly
before its own time. A history entry counts from the time of the first impression whose history holds
it (it was clicked before that impression). The collaborative vectors of training come from each user's
*earliest* history in the log (clicks from before the log, none of its labels), those served from each
user's latest history. Torch-free and numpy only: serving reads the same files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from genrec.core import fsio
from genrec.core.contract import CF_DIM, ITEM_COUNTS, ITEM_STATS, N_COUNTS, N_STATS
from genrec.core.contract import STATS_FORMAT as FORMAT
from genrec.core.errors import UserError
from genrec.core.mind import Impression

EXPOSURES, CLICKS, HISTORY_USERS = range(N_COUNTS)
CF = slice(N_COUNTS, N_STATS)          # the collaborative vector's columns
# weight of log(1 + popularity) beside smoothed CTR in the strongest simple baseline (the ml-100k data README's
# combination): `genrec evaluate` reports it, the model's wide term starts from it (ModelConfig.baseline_init)
CTR_POPULARITY_WEIGHT = 0.05


class StatsError(UserError, ValueError):
    """Statistics are malformed (negative, non-finite, wrong shape) or do not belong to this model."""


@dataclasses.dataclass(frozen=True)
class BetaPrior:
    """Beta(alpha, beta) prior of item CTR, fitted by the method of moments on items with exposures."""

    alpha: float = 1.0
    beta: float = 1.0

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    @classmethod
    def fit(cls, exposures: np.ndarray, clicks: np.ndarray, min_exposures: int = 1) -> BetaPrior:
        seen = exposures >= min_exposures
        if seen.sum() < 2:
            return cls()
        ctr = clicks[seen] / exposures[seen]
        m, v = float(ctr.mean()), float(ctr.var())
        if not 0.0 < m < 1.0 or v <= 0.0:
            return cls()
        k = m * (1.0 - m) / v - 1.0
        if k <= 0.0:                      # over-dispersed: fall back to a weak prior around the mean
            k = 2.0
        return cls(alpha=m * k, beta=(1.0 - m) * k)


@dataclasses.dataclass
class _Events:
    """Count increments (time, item row, (N_STATS,) values), in no particular order."""

    time: np.ndarray        # (E,) int64 seconds
    row: np.ndarray         # (E,) int64 item rows
    value: np.ndarray       # (E, N_COUNTS) float64


def _timestamp(imp: Impression) -> int:
    return int(imp.time.timestamp()) if imp.time.tzinfo else int((imp.time - _EPOCH).total_seconds())


_EPOCH = __import__("datetime").datetime(1970, 1, 1)


def _events(impressions: Sequence[Impression], row_of: dict[str, int]) -> _Events:
    times, rows, vals = [], [], []
    first_seen: set[tuple[str, int]] = set()         # (user, row) history pairs already counted
    for imp in sorted(impressions, key=_timestamp):
        t = _timestamp(imp)
        if imp.labels is not None:
            for item, label in zip(imp.candidates, imp.labels):
                r = row_of.get(item)
                if r is not None:
                    times.append(t), rows.append(r), vals.append((1.0, float(label), 0.0))
        for item in imp.history:
            r = row_of.get(item)
            if r is not None and (imp.user_id, r) not in first_seen:
                first_seen.add((imp.user_id, r))
                times.append(t), rows.append(r), vals.append((0.0, 0.0, 1.0))
    return _Events(np.asarray(times, dtype=np.int64), np.asarray(rows, dtype=np.int64),
                   np.asarray(vals, dtype=np.float64).reshape(-1, N_COUNTS))


def _user_histories(impressions: Sequence[Impression], latest: bool) -> dict[str, list[str]]:
    """Each user's history in the log: the one of their earliest (or latest) impression."""
    out: dict[str, list[str]] = {}
    for imp in sorted(impressions, key=_timestamp, reverse=latest):
        out.setdefault(imp.user_id, imp.history)
    return out


def collaborative_vectors(histories: Iterable[Sequence[str]], row_of: dict[str, int], n_rows: int,
                          dim: int = CF_DIM, seed: int = 0, power_iterations: int = 4) -> np.ndarray:
    """(n_rows, dim) float32: unit item vectors of a rank-``dim`` factorization of the binary user x item
    matrix of ``histories`` (one list of item ids per user); zero rows for items in no history.

    Randomized SVD (Halko et al. 2011) with sparse products by ``np.bincount``: O(nnz * dim) time and
    O((users + items) * dim) memory, so a 1M-item log needs no dense matrix and no extra dependency.
    Deterministic for a given log and seed (each factor's sign is fixed).
    """
    users, items = [], []
    for u, hist in enumerate(histories):
        rows = sorted({row_of[i] for i in hist if i in row_of})
        users.extend([u] * len(rows)), items.extend(rows)
    out = np.zeros((n_rows, dim), dtype=np.float32)
    if not items:
        return out
    users_a, items_a = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
    n_users = int(users_a.max()) + 1
    k = min(dim + 10, n_users, n_rows)

    def m_times(x: np.ndarray) -> np.ndarray:          # M (U, I) @ x (I, k) -> (U, k)
        return np.stack([np.bincount(users_a, x[items_a, j], n_users) for j in range(x.shape[1])], 1)

    def mt_times(y: np.ndarray) -> np.ndarray:         # M.T (I, U) @ y (U, k) -> (I, k)
        return np.stack([np.bincount(items_a, y[users_a, j], n_rows) for j in range(y.shape[1])], 1)

    rng = np.random.default_rng(seed)
    q = np.linalg.qr(m_times(rng.standard_normal((n_rows, k))))[0]
    for _ in range(power_iterations):
        q = np.linalg.qr(m_times(np.linalg.qr(mt_times(q))[0]))[0]
    _, s, vt = np.linalg.svd(mt_times(q).T, full_matrices=False)                  # (k, I) = Q.T M
    vec = vt[:dim].T * s[:dim]                                                    # (I, r), r <= dim
    vec *= np.sign(vec[np.abs(vec).argmax(0), np.arange(vec.shape[1])])           # fixed sign per factor
    seen = np.bincount(items_a, minlength=n_rows) > 0
    norm = np.linalg.norm(vec, axis=1, keepdims=True)
    ok = seen & (norm[:, 0] > 1e-12)
    out[ok, : vec.shape[1]] = vec[ok] / norm[ok]
    return out


@dataclasses.dataclass
class ItemStats:
    """Final counts per item id (what serving reads), plus the CTR prior fitted on the same log."""

    ids: list[str]
    counts: np.ndarray                    # (N, N_STATS) float32: counts (>= 0), then the collaborative vector
    prior: BetaPrior
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counts = np.asarray(self.counts, dtype=np.float32).reshape(-1, N_STATS)
        if len(self.ids) != len(self.counts):
            raise StatsError(f"{len(self.ids)} ids but {len(self.counts)} rows of counts")
        validate_counts(self.counts, "counts")
        self._row = {item: i for i, item in enumerate(self.ids)}

    @classmethod
    def from_impressions(cls, impressions: Sequence[Impression], info: dict[str, Any] | None = None) -> ItemStats:
        ids = sorted({i for imp in impressions for i in (*imp.candidates, *imp.history)})
        row_of = {item: i for i, item in enumerate(ids)}
        ev = _events(impressions, row_of)
        counts = np.zeros((len(ids), N_STATS), dtype=np.float64)
        np.add.at(counts[:, :N_COUNTS], ev.row, ev.value)
        counts[:, CF] = collaborative_vectors(_user_histories(impressions, latest=True).values(), row_of, len(ids))
        prior = BetaPrior.fit(counts[:, EXPOSURES], counts[:, CLICKS])
        times = [_timestamp(imp) for imp in impressions]
        meta = {"impressions": len(impressions), "items": len(ids),
                "first_time": min(times) if times else None, "last_time": max(times) if times else None,
                **(info or {})}
        return cls(ids, counts.astype(np.float32), prior, meta)

    def lookup(self, ids: Iterable[str]) -> np.ndarray:
        """(n, N_STATS) float32 counts; unknown ids get zeros (= the prior)."""
        ids = list(ids)
        out = np.zeros((len(ids), N_STATS), dtype=np.float32)
        for j, item in enumerate(ids):
            r = self._row.get(item)
            if r is not None:
                out[j] = self.counts[r]
        return out

    def __len__(self) -> int:
        return len(self.ids)

    # ---- files: STATS_DIR/stats.json (manifest, prior) + ids-<hash>.txt + counts-<hash>.f32 ---------------
    def save(self, folder: str | Path) -> Path:
        """Write STATS_DIR: the data files under names derived from their content, then ``stats.json`` naming
        them -- the one commit point (atomic, durable: :mod:`genrec.core.fsio`) -- then the data files no manifest
        names any more. A crash at any point leaves the previous statistics or the new ones, never a mix."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        fsio.remove_stale_temporaries(folder)              # from a save that was killed
        ids_bytes = "".join(f"{i}\n" for i in self.ids).encode("utf-8")
        counts = np.ascontiguousarray(self.counts, dtype="<f4")
        files = {"ids": f"ids-{hashlib.sha256(ids_bytes).hexdigest()[:16]}.txt",
                 "counts": f"counts-{hashlib.sha256(memoryview(counts).cast('B')).hexdigest()[:16]}.f32"}
        if not _complete(folder / files["ids"], len(ids_bytes)):       # same content written before: kept
            fsio.write_bytes(folder / files["ids"], ids_bytes)
        if not _complete(folder / files["counts"], counts.nbytes):
            fsio.write_array(folder / files["counts"], counts)
        manifest = {"format": FORMAT, "stats": list(ITEM_STATS), "count": len(self.ids),
                    "prior": dataclasses.asdict(self.prior), "info": self.info, "files": files}
        fsio.write_json(folder / MANIFEST, manifest)          # the commit point
        for stale in (*folder.glob("ids-*.txt"), *folder.glob("counts-*.f32"), folder / LEGACY_IDS,
                      folder / LEGACY_COUNTS, folder / "stats.json.tmp"):
            if stale.name not in files.values():
                fsio.remove(stale)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ItemStats:
        manifest, raw_ids, counts = read_folder(folder)
        return cls([i.decode("utf-8") for i in raw_ids], counts, BetaPrior(**manifest["prior"]),
                   manifest.get("info", {}))


MANIFEST = "stats.json"


def _complete(path: Path, size: int) -> bool:
    """A content-named data file is complete when it exists (it appears only through a rename after fsync)."""
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False
LEGACY_IDS, LEGACY_COUNTS = "ids.txt", "counts.f32"      # the layout before content-named data files


def manifest_state(folder: str | Path) -> tuple[int, int, int] | None:
    """The manifest's (inode, mtime, size): what identifies one written version of STATS_DIR (every save
    replaces it through a rename); None when there is none."""
    try:
        st = os.stat(Path(folder) / MANIFEST)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def read_folder(folder: str | Path, attempts: int = 3) -> tuple[dict[str, Any], list[bytes], np.ndarray]:
    """(manifest, ids as bytes, (N, N_STATS) float32 counts) of one consistent version of STATS_DIR.

    The manifest names its data files; they are never rewritten, only replaced by new names and removed after a
    newer manifest is in place, so a read that loses a file to a concurrent save sees the manifest change and
    reads again (up to ``attempts`` times). A folder in the legacy layout (``ids.txt``, ``counts.f32``, no
    ``files`` in the manifest) is refused while its data files are newer than the manifest (a writer mid-way).
    Raises StatsError."""
    folder = Path(folder)
    for _ in range(attempts):
        state = manifest_state(folder)
        if state is None:
            raise StatsError(f"no item statistics at {folder} (build them with `genrec stats build`)")
        try:
            m = fsio.read_json(folder / MANIFEST, StatsError, "the statistics manifest")
        except FileNotFoundError:
            continue
        if not isinstance(m, dict) or m.get("format") != FORMAT or tuple(m.get("stats", ())) != ITEM_STATS:
            got = m if not isinstance(m, dict) else f"format {m.get('format')!r} / stats {m.get('stats')}"
            raise StatsError(f"{folder / MANIFEST}: {got} is not {FORMAT!r} / {list(ITEM_STATS)}")
        files = m.get("files")
        legacy = files is None
        names = (LEGACY_IDS, LEGACY_COUNTS) if legacy else (files.get("ids", ""), files.get("counts", ""))
        if any("/" in n or not n for n in names):
            raise StatsError(f"{folder / MANIFEST}: bad data file names {names}")
        try:
            if legacy:
                newest = max(os.stat(folder / n).st_mtime_ns for n in names)
                if newest > state[1]:
                    raise StatsError(f"{folder} is being rewritten (data files newer than {MANIFEST})")
            raw = (folder / names[0]).read_bytes()
            counts = np.fromfile(folder / names[1], dtype="<f4")
        except FileNotFoundError as exc:
            if manifest_state(folder) != state:
                continue                                # a newer save replaced the files: read it instead
            raise StatsError(f"{folder}: {Path(exc.filename).name}, named by {MANIFEST}, is missing") from None
        if manifest_state(folder) != state:
            continue
        raw_ids = raw.split(b"\n")
        if raw_ids and raw_ids[-1] == b"":
            raw_ids.pop()
        n = m.get("count")
        if not isinstance(n, int) or len(raw_ids) != n or counts.size != n * N_STATS:
            raise StatsError(f"{folder}: {len(raw_ids)} ids and {counts.size} counts for {n} items")
        return m, raw_ids, counts.reshape(n, N_STATS)
    raise StatsError(f"{folder} changed while being read ({attempts} times)")


def validate_counts(counts: np.ndarray, where: str) -> None:
    """Raise StatsError unless ``counts`` is (..., N_STATS), finite, and its counts (not the collaborative
    vector) non-negative."""
    counts = np.asarray(counts)
    if counts.ndim < 1 or counts.shape[-1] != N_STATS:
        raise StatsError(f"{where}: expected shape (..., {N_STATS}) for {list(ITEM_COUNTS)} + {CF_DIM} "
                         f"collaborative numbers, got {counts.shape}")
    bad = ~np.isfinite(counts)
    bad[..., :N_COUNTS] |= counts[..., :N_COUNTS] < 0
    if bad.any():
        first = tuple(int(x) for x in np.argwhere(bad)[0])
        name = ITEM_STATS[first[-1]]
        rule = "finite and >= 0" if first[-1] < N_COUNTS else "finite"
        raise StatsError(f"{where}{list(first)} ({name}) = {counts[first]!r}: must be {rule}")


def stats_as_of(log: Sequence[Impression], impressions: Sequence[Impression], history_rows: np.ndarray,
                candidate_rows: Sequence[np.ndarray], row_of: dict[str, int], n_rows: int,
                staleness: Sequence[float] | np.ndarray | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Counts of the events of ``log`` strictly before each impression's time, for its history and candidates.

    ``impressions[i]`` is scored with ``history_rows[i]`` (Hmax,) and ``candidate_rows[i]`` (C_i,) (rows of an
    item table of ``n_rows`` items, 0 = padding). ``staleness[i]`` (seconds, default 0) moves impression i's
    as-of time that far back: served statistics come from the last ``genrec stats build``, so items published
    since are unknown to them, and training must see unknown items as often as serving does.
    An item with no event before its as-of time has no collaborative vector either (a build at that time
    would not know it). Returns ((I, Hmax, N_STATS) float32, I x (C_i, N_STATS) float32).
    """
    ev = _events(log, row_of)
    order = np.lexsort((ev.time, ev.row))                         # by row, then time
    e_row, e_time, e_val = ev.row[order], ev.time[order], ev.value[order]
    cum = np.vstack([np.zeros((1, N_COUNTS)), np.cumsum(e_val, axis=0)])   # (E + 1, N_COUNTS)
    cf = collaborative_vectors(_user_histories(log, latest=False).values(), row_of, n_rows)   # (n_rows, CF_DIM)
    cf[0] = 0.0                                                   # padding row
    row_start = np.searchsorted(e_row, np.arange(n_rows + 1))     # (n_rows + 1,) first event of each row

    # composite sort key (row, time): both non-negative, time relative to the earliest event
    lag = np.zeros(len(impressions)) if staleness is None else np.asarray(staleness, dtype=np.float64)
    if lag.shape != (len(impressions),) or not np.isfinite(lag).all() or (lag < 0).any():
        raise ValueError(f"staleness: expected {len(impressions)} finite seconds >= 0, got shape {lag.shape}")
    q_times = [_timestamp(imp) - int(round(d)) for imp, d in zip(impressions, lag)] or [0]
    t0 = int(min(e_time.min() if e_time.size else 0, min(q_times)))
    span = int(max(e_time.max() if e_time.size else 0, max(q_times))) - t0 + 2
    key = e_row * span + (e_time - t0)

    def before(rows: np.ndarray, t: int) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        pos = np.searchsorted(key, rows * span + (t - t0), side="left")    # events of this row with time < t
        counts = cum[pos] - cum[row_start[rows]]
        out = np.concatenate([counts, cf[rows]], axis=-1)
        out[(rows <= 0) | ~counts.any(axis=-1)] = 0.0             # padding rows, items not known yet
        return out.astype(np.float32)

    hist = np.zeros((*history_rows.shape, N_STATS), dtype=np.float32)
    cands = []
    for i, t in enumerate(q_times[: len(impressions)]):
        hist[i] = before(history_rows[i], t)
        cands.append(before(candidate_rows[i], t))
    return hist, cands
