"""Triton model ``recommend`` (python backend, BLS): the real-time id path.

Per request: ids -> rows of the memory-mapped item index (binary search); ids the index does not know
must come with their text in ``new_item_*``: those are looked up in a byte-bounded LRU of recently encoded
new items, and only true misses are tokenized here and sent to the ``encoder`` model through BLS, so
they are still dynamically batched with every other request's texts. The heads run in process (a
0.2 ms ONNX graph is cheaper than another BLS hop; see model_repository/README.md).

Item statistics (built with ``--stats STATS_DIR``) are looked up by id in a :class:`genrec.core.statstore.LiveStats`
snapshot, read once per request (never half-old/half-new); a background thread swaps in a new snapshot
when ``genrec stats build`` rewrites STATS_DIR. Ids without statistics (and every id when no STATS_DIR is
configured) get zeros: the model's prior. New items sent with text get statistics only if STATS_DIR knows
their id.

The item index is followed live the same way (:class:`genrec.core.index.LiveIndex`): `genrec index add` publishes a
new generation of INDEX_DIR and switches its ``CURRENT`` pointer; a thread checks it every ``index_refresh_ms``
and swaps in the new generation with one reference assignment. ``_one`` reads that reference once, so a request
is answered from exactly one generation, and the old generation's maps go when the last request holding it
returns (the writer has already unlinked its files; Linux frees them then).

Retrieval (a request without candidates, when the index has retrieval files: ``genrec.core.retrieval``): the history's
vectors -> ``retrieval.onnx`` user vector -> ANN top ``retrieval_m`` over the generation's segments (history,
``exclude_id`` and shadowed rows left out, ``restrict_category`` applied), plus the ``retrieval_popular`` most
popular items under the same filters when item statistics are served (``genrec.core.retrieval.PopularPool``) -> the
heads re-rank those items with features, item statistics and explanations -> the best ``k``, best first, their
ids in ``item_id``. A cold user (no history) retrieves with the model's learned cold-start vector (the sentinel)
and the popular items, and the heads' cold-user and popularity features re-rank: the model's own cold-start
answer, documented in model_repository/README.md.
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from genrec.core.artifacts import ServingAssets
from genrec.core.contract import HEADS, N_STATS, RecommendParams
from genrec.core.contract import SOURCE_CACHE as CACHE
from genrec.core.contract import SOURCE_ENCODED as ENCODED
from genrec.core.contract import SOURCE_INDEX as INDEX
from genrec.core.index import IndexMismatch, LiveIndex
from genrec.core.requests import (
    RETRIEVAL_OPTIONS,
    Limits,
    RequestError,
    refuse_retrieval_options,
    validate_ids,
    validate_profile,
    validate_retrieval,
)
from genrec.core.runtime import OrtHeads, profile_or_zeros
from genrec.core.vcache import VectorLRU
from genrec.model_repository.backends.common import (
    get_input,
    get_optional,
    model_params,
    per_request,
    response,
    version_dir,
)

POPULAR_POOL = 1024                  # popular items kept per stats/index generation for retrieval's second source;
                                     # filters pick from these, so a rare category may get fewer than asked


class RecommendModel:
    def initialize(self, args):
        p = model_params(args, RecommendParams)
        vdir = version_dir(args)
        self.assets = ServingAssets.load(vdir / "assets")
        self.tokenizer = self.assets.tokenizer()
        try:
            self.live = LiveIndex(p.index_dir, p.index_refresh_ms, expect_encoder_sha256=p.encoder_sha256,
                                  log=lambda m: print(f"recommend: {m}", flush=True))
        except IndexMismatch as exc:
            raise pb_utils.TritonModelException(f"recommend: {exc}") from None
        if self.live.index.dim != self.assets.dim:
            self.live.close()
            raise pb_utils.TritonModelException(
                f"recommend: index vectors have D={self.live.index.dim}, the model D={self.assets.dim}")
        # "in-process" runs heads.onnx here; "bls" calls the `heads` model (kept to measure the choice)
        self.heads_mode = p.heads_mode
        self.heads = OrtHeads(vdir / "heads.onnx", threads=1, device=p.device)
        self.cache = VectorLRU(p.lru_bytes)
        self.encoder_model = p.encoder_model
        self.limits = Limits.from_parameters(p)
        self.categories = ["", *self.assets.category_vocab.to_list()]     # the user_profile axis (K)
        self.retriever, self.retrieval_m = None, p.retrieval_m
        if self.retrieval_m > 0:
            from genrec.core.retrieval import Retriever

            self.retriever = Retriever(vdir / "retrieval.onnx", p.retrieval_sha256, nprobe=p.retrieval_nprobe,
                                       threads=1, log=lambda m: print(f"recommend: {m}", flush=True))
            for seg in self.live.index.segments:          # open (and check) the served segments' ANN now
                self.retriever.searcher(seg)
            self.retrieval_popular = p.retrieval_popular
            self._popular: tuple = (None, None, None)        # (stats table, index, PopularPool) it was built from
            tokens = self.assets.category_vocab.tokens
            self.category_ids = {t: i for i, t in enumerate(tokens) if i > 0}
        self.stats = None
        if p.stats_dir:
            from genrec.core.statstore import LiveStats, StatsLoadError

            try:
                self.stats = LiveStats(p.stats_dir, p.stats_refresh_ms,
                                       log=lambda m: print(f"recommend: {m}", flush=True))
            except StatsLoadError as exc:
                raise pb_utils.TritonModelException(f"recommend: {exc}") from None

    def finalize(self):
        self.live.close()
        if self.stats is not None:
            self.stats.close()

    def execute(self, requests):
        return per_request("recommend", requests, self._one)

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(M, D) vectors from the ``encoder`` model and (M,) whether each text was cut to max tokens."""
        tok = self.tokenizer(texts)
        req = pb_utils.InferenceRequest(model_name=self.encoder_model, requested_output_names=["item_vectors"],
                                        inputs=[pb_utils.Tensor("input_ids", tok.input_ids),
                                                pb_utils.Tensor("attention_mask", tok.attention_mask)])
        res = req.exec()
        if res.has_error():
            raise RuntimeError(f"encoder: {res.error().message()}")
        return pb_utils.get_output_tensor_by_name(res, "item_vectors").as_numpy(), tok.truncated   # (M, D), (M,)

    def _heads_bls(self, vectors, hc, hs, cc, cs, hst, cst, prof) -> dict[str, np.ndarray]:
        feeds = zip(HEADS.input_names, (vectors, hc, hs, cc, cs, hst, cst, prof))
        req = pb_utils.InferenceRequest(model_name="heads", requested_output_names=HEADS.output_names,
                                        inputs=[pb_utils.Tensor(n, v) for n, v in feeds])
        res = req.exec()
        if res.has_error():
            raise RuntimeError(f"heads: {res.error().message()}")
        return {n: pb_utils.get_output_tensor_by_name(res, n).as_numpy() for n in HEADS.output_names}

    def _one(self, request):
        raw = {name: get_input(request, name, ndim=1).tolist() for name in (
            "history_id", "new_item_id", "new_item_text", "new_item_category", "new_item_subcategory")}
        cand = get_optional(request, "candidate_id", ndim=1)
        raw["candidate_id"] = [] if cand is None else cand.tolist()
        retrieval = None
        opt = {name: get_optional(request, name, ndim=1) for name in RETRIEVAL_OPTIONS}
        if raw["candidate_id"]:                 # candidates are ranked as sent: retrieval's options are refused
            refuse_retrieval_options([name for name, v in opt.items() if v is not None])
        else:                                   # no candidates: retrieve them from the whole index
            retrieval = validate_retrieval(*(None if v is None else v.tolist() for v in opt.values()),
                                           self.retrieval_m, getattr(self, "category_ids", {}))
        req = validate_ids(raw["history_id"], raw["candidate_id"], raw["new_item_id"], raw["new_item_text"],
                           raw["new_item_category"], raw["new_item_subcategory"], self.limits,
                           retrieval=retrieval is not None)
        profile = profile_or_zeros(validate_profile(get_optional(request, "user_profile", dtype=np.float32, ndim=1),
                                                    self.categories), len(self.categories))     # (K,)
        index = self.live.index                       # one generation for the whole request: read the reference once
        table = self.stats.table if self.stats is not None else None    # one stats snapshot, likewise
        # only what the caller asked for (Triton names every output when it asked for none): a caller that wants
        # no explanations saves the heads' leave-one-out part and the (C, H) matrix's copies through the stub and
        # the wire (scores always: they rank)
        wanted = set(request.requested_output_names())
        heads_out = tuple(n for n in HEADS.output_names if not wanted or n in wanted or n == "scores")
        if retrieval is not None:
            out = self._retrieve(req, retrieval, index, table, profile, heads_out)
        else:
            out = self._rank(req, index, table, profile, heads_out=heads_out)
            out["item_id"] = cand                     # the candidates' ids as sent (object array of bytes)
        return response({k: v for k, v in out.items() if k in wanted} if wanted else out)

    def _rank(self, req, index, table, profile, retrieved: np.ndarray | None = None,
              heads_out: tuple[str, ...] = HEADS.output_names):
        """Score ``req``'s candidates, or (``retrieved``: global rows of ``index``) the retrieved items.
        ``index`` and ``table`` (stats, or None) are the request's one snapshot of each."""
        ids = [*req.history_id, *req.candidate_id]
        n_hist = len(req.history_id)
        raw_ids = [i.encode("utf-8") for i in ids]
        rows = index.rows(raw_ids)                                               # (N,) -1 = not indexed
        stats = (table.lookup(raw_ids) if table is not None
                 else np.zeros((len(ids), N_STATS), dtype=np.float32))          # (N, S), zeros = the prior
        known = rows >= 0
        vectors = np.empty((len(ids), index.dim), dtype=np.float32)              # (N, D)
        cats = np.zeros(len(ids), dtype=np.int64)
        subs = np.zeros(len(ids), dtype=np.int64)
        source = np.full(len(ids), INDEX, dtype=np.int8)
        truncated = np.zeros(len(ids), dtype=np.bool_)                            # cut at index build or now
        if known.any():
            vectors[known], truncated[known], cats[known], subs[known] = index.take(rows[known])
        misses: dict[bytes, list[int]] = {}          # LRU key -> positions in this request
        miss_items: dict[bytes, tuple[str, str, str]] = {}
        for pos in np.flatnonzero(~known):
            item_id = ids[pos]
            if item_id not in req.new_items:
                kind, k = ("history_id", pos) if pos < n_hist else ("candidate_id", pos - n_hist)
                raise RequestError(f"{kind}[{k}] {item_id!r} is not in the index; send its text in new_item_*")
            text, cat, sub = req.new_items[item_id]
            key = VectorLRU.key(item_id, text, cat, sub)
            hit = self.cache.get(key)
            if hit is not None:
                vectors[pos], cats[pos], subs[pos], truncated[pos] = hit
                source[pos] = CACHE
            else:
                misses.setdefault(key, []).append(int(pos))
                miss_items[key] = (text, cat, sub)
        if misses:
            keys = list(misses)
            encoded, cut = self._encode([miss_items[k][0] for k in keys])
            for key, vec, was_cut in zip(keys, encoded, cut):
                _, cat, sub = miss_items[key]
                value = self.cache.put(key, vec, self.assets.category_vocab.id(cat),
                                       self.assets.subcategory_vocab.id(sub), bool(was_cut))   # a copy, no view
                for pos in misses[key]:
                    vectors[pos], cats[pos], subs[pos], truncated[pos] = value
                    source[pos] = ENCODED
        if retrieved is None:
            feeds = (vectors, cats[:n_hist], subs[:n_hist], cats[n_hist:], subs[n_hist:], stats[:n_hist],
                     stats[n_hist:], profile)
            out = self._heads_bls(*feeds) if self.heads_mode == "bls" else self.heads(*feeds, outputs=heads_out)
            out["item_source"] = source
            out["truncated"] = truncated
            return out
        return vectors, cats, subs, truncated, source, stats

    def _retrieve(self, req, opts, index, table, profile, heads_out: tuple[str, ...] = HEADS.output_names):
        """No candidates: user vector -> ANN top M -> heads re-rank -> best k (see the module doc)."""
        vectors, cats, subs, truncated, source, hist_stats = self._rank(req, index, table, profile,
                                                                        retrieved=np.zeros(0))
        n_hist = len(req.history_id)
        user = self.retriever.user_vector(vectors, cats, subs)                    # (D,)
        exclude = index.rows([i.encode("utf-8") for i in opts.exclude_id]) if opts.exclude_id else np.zeros(0, int)
        if not opts.include_history and n_hist:
            exclude = np.concatenate([exclude, index.rows([i.encode("utf-8") for i in req.history_id])])
        cats_allowed = None if opts.restrict_category is None else np.asarray(opts.restrict_category, np.int64)
        exclude = np.asarray(exclude, np.int64)
        rows, _ = self.retriever.search(index, user, self.retrieval_m, exclude, cats_allowed)
        if self.retrieval_popular > 0 and table is not None:    # second source: the most popular items
            extra = self._popular_pool(index, table).pick(self.retrieval_popular, np.concatenate([exclude, rows]),
                                                   cats_allowed)
            rows = np.concatenate([rows, extra])
        c_vec, c_cut, c_cat, c_sub = index.take(rows)
        c_ids = _ids_of(index, rows)
        c_stats = (table.lookup(c_ids) if table is not None
                   else np.zeros((len(rows), N_STATS), dtype=np.float32))
        if not len(rows):                 # nothing left after the filters: an empty, well-formed answer
            k = len(self.assets.category_vocab)
            return {"scores": np.zeros(0, np.float32), "topic_affinity": np.zeros(0, np.float32),
                    "category_confidence": np.zeros(0, np.float32), "explanation": np.zeros((0, n_hist), np.float32),
                    "user_topics": np.full(k, 1.0 / k, np.float32), "item_source": source,
                    "truncated": truncated, "item_id": np.zeros(0, dtype=np.object_)}
        feeds = (np.concatenate([vectors, c_vec]), cats, subs, c_cat, c_sub, hist_stats, c_stats, profile)
        out = self._heads_bls(*feeds) if self.heads_mode == "bls" else self.heads(*feeds, outputs=heads_out)
        best = np.argsort(-out["scores"], kind="stable")[: opts.k]
        for name in ("scores", "topic_affinity", "category_confidence", "explanation"):
            if name in out:
                out[name] = np.ascontiguousarray(out[name][best])
        out["item_source"] = np.concatenate([source, np.full(len(best), INDEX, np.int8)])
        out["truncated"] = np.concatenate([truncated, c_cut[best]])
        out["item_id"] = np.array([c_ids[i] for i in best.tolist()], dtype=np.object_)
        return out


    def _popular_pool(self, index, table):
        """The PopularPool of the request's stats and index snapshots, rebuilt when either switches."""
        from genrec.core.retrieval import PopularPool

        built_table, built_index, pool = self._popular
        if built_table is not table or built_index is not index:
            pool = PopularPool.build(index, table, max(POPULAR_POOL, 8 * self.retrieval_popular))
            self._popular = (table, index, pool)
        return pool


def _ids_of(index, rows: np.ndarray) -> list[bytes]:
    from genrec.core.retrieval import _ids_of as ids_of

    return ids_of(index, rows)
