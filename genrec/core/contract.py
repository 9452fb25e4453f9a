"""Tensor contracts: one spec per graph, shared by export, the Triton repository and the client.

Plain Python, no numpy/torch: the client imports it. Dims are ints or symbolic names:
N items (history + candidates of one user), L tokens, D vector size, H history items, C candidates,
K categories. The export turns symbolic dims into ONNX dynamic axes; the repository builder turns them
into Triton dims (-1, or the concrete D/K taken from the artifacts).
"""

from __future__ import annotations

import dataclasses
import json
import typing

CONTRACT_VERSION = "genrec.contract/6"   # /2: item statistics (heads inputs, optional ensemble inputs);
                                         # /3: the id path reports truncated texts like the text path;
                                         # /4: item statistics carry a collaborative vector (S = 3 + CF_DIM);
                                         # /5: the id path retrieves from the whole index when no candidates
                                         #     come (k, filters; item_id output); the retrieval graph;
                                         # /6: user_profile (the LLM profile of `genrec enrich users`), an
                                         #     optional input of the served models (absent = no profile)

# Request limits (one request = one user). Mirrored by the client with the same messages.
MAX_HISTORY = 50            # history items per request; more is an error (send the most recent 50)
MAX_CANDIDATES = 300        # default candidate limit (repository build --max-candidates)
MAX_TEXT_BYTES = 4096       # UTF-8 bytes per text; tokenization keeps the first max_length tokens anyway
MAX_EXCLUDE = 1000          # retrieval: exclude_id ids per request; each widens the ANN fetch by one row, so an
                            # unbounded list was an unbounded search (a service's "already shown" list fits)

# Raw item statistics, the last axis (S) of the *_stats tensors, in this order (see genrec.core.stats): three counts,
# then the item's collaborative vector (who clicked it, factorized from the log's click histories). The heads
# turn them into features in-graph; all zeros = an item without statistics (it gets the training prior).
ITEM_COUNTS = ("exposures", "clicks", "history_users")   # finite, >= 0
CF_DIM = 16                                               # collaborative vector size; finite, any sign
ITEM_STATS = (*ITEM_COUNTS, *(f"cf{i}" for i in range(CF_DIM)))
N_COUNTS = len(ITEM_COUNTS)                               # the counts' columns come first ...
N_STATS = len(ITEM_STATS)                                 # ... S, the width of every *_stats tensor
STATS_FORMAT = "genrec.stats/2"                           # stats folders; /2: + the collaborative vector


FIXED_DIMS = ("D", "K", "S")   # symbolic dims whose size is fixed per model (vector size, categories, stats)


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str                       # Triton dtype name: FP32, FP16, INT64, INT32, BOOL, BYTES
    dims: tuple[int | str, ...]
    doc: str = ""
    optional: bool = False           # Triton-side models only: a request may leave it out (see its doc)


@dataclasses.dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """torch.onnx.export ``dynamic_axes``: every symbolic dim except the fixed D and K."""
        return {t.name: {i: d for i, d in enumerate(t.dims) if isinstance(d, str) and d not in FIXED_DIMS}
                for t in (*self.inputs, *self.outputs)}

    def tensor(self, name: str) -> TensorSpec:
        for t in (*self.inputs, *self.outputs):
            if t.name == name:
                return t
        raise KeyError(f"{self.name} has no tensor {name!r}")


ENCODER = GraphSpec(
    "encoder",
    inputs=(
        TensorSpec("input_ids", "INT64", ("N", "L"), "WordPiece ids, padded with 0"),
        TensorSpec("attention_mask", "INT64", ("N", "L"), "1 for real tokens, 0 for padding"),
    ),
    outputs=(TensorSpec("item_vectors", "FP32", ("N", "D"), "projected mean-pooled MiniLM vectors"),),
)

# The heads take history and candidate vectors as ONE tensor (history rows first). Why: Triton rejects
# a zero-batch request to a batching model, so a cold user's empty history cannot be an encoder request
# of its own; with one tensor every user is exactly one encoder request of H + C >= 1 rows, and the
# heads split it (H = len(history_category)).
HEADS = GraphSpec(
    "heads",
    inputs=(
        TensorSpec("item_vectors", "FP32", ("N", "D"), "H history rows, then C candidate rows (N = H + C)"),
        TensorSpec("history_category", "INT64", ("H",), "category ids of history items (0 = unknown)"),
        TensorSpec("history_subcategory", "INT64", ("H",), "subcategory ids of history items (0 = unknown)"),
        TensorSpec("candidate_category", "INT64", ("C",), "category ids of candidates (0 = unknown)"),
        TensorSpec("candidate_subcategory", "INT64", ("C",), "subcategory ids of candidates (0 = unknown)"),
        TensorSpec("history_stats", "FP32", ("H", "S"), "item statistics of history items (ITEM_STATS; 0 = none)"),
        TensorSpec("candidate_stats", "FP32", ("C", "S"), "item statistics of candidates (ITEM_STATS; 0 = none)"),
        TensorSpec("user_profile", "FP32", ("K",), "profile topic weights over the categories (0 = no profile)"),
    ),
    outputs=(
        TensorSpec("scores", "FP32", ("C",), "click logit (primary task); rank by it"),
        TensorSpec("topic_affinity", "FP32", ("C",), "aux task: P(user's next click is in the candidate's category)"),
        TensorSpec("category_confidence", "FP32", ("C",), "aux task: P(candidate's stated category | its text)"),
        TensorSpec("explanation", "FP32", ("C", "H"),
                   "how much candidate c's score would fall without history item h (exact leave-one-out)"),
        TensorSpec("user_topics", "FP32", ("K",), "aux task: the user's topic profile over categories"),
    ),
)

# The auxiliary tasks' per-candidate outputs (besides the click score and the explanation): what a client reports as
# each item's ``tasks``.
TASK_OUTPUTS = ("topic_affinity", "category_confidence")
assert set(TASK_OUTPUTS) <= set(HEADS.output_names)

# The retrieval graph (genrec.core.retrieval): the heads' user encoder and item representation on their own, so the
# match term user . item_repr / sqrt(D) of the click logit can be searched over a whole catalog.
RETRIEVAL = GraphSpec(
    "retrieval",
    inputs=(
        TensorSpec("item_vectors", "FP32", ("N", "D"), "item vectors (encoder output)"),
        TensorSpec("category", "INT64", ("N",), "their category ids (0 = unknown)"),
        TensorSpec("subcategory", "INT64", ("N",), "their subcategory ids (0 = unknown)"),
    ),
    outputs=(
        TensorSpec("item_repr", "FP32", ("N", "D"), "retrieval vectors of the N items (the heads' item repr)"),
        TensorSpec("user_vector", "FP32", ("D",),
                   "user vector of a user whose history is the N items (N = 0: a cold user's prior)"),
    ),
)

# ---- Triton-side models around the two graphs -------------------------------------------------

_TEXT_INPUTS = (
    TensorSpec("history_text", "BYTES", ("H",), "UTF-8 texts of the user's history, oldest first (0..50)"),
    TensorSpec("history_category", "BYTES", ("H",), "category per history item ('' = unknown)"),
    TensorSpec("history_subcategory", "BYTES", ("H",), "subcategory per history item ('' = unknown)"),
    TensorSpec("candidate_text", "BYTES", ("C",), "UTF-8 texts of the candidates to rank (1..max_candidates)"),
    TensorSpec("candidate_category", "BYTES", ("C",), "category per candidate ('' = unknown)"),
    TensorSpec("candidate_subcategory", "BYTES", ("C",), "subcategory per candidate ('' = unknown)"),
)

# Optional per-item statistics on the text path: one row per text in ITEM_STATS order (the counts, then the
# collaborative vector from `genrec stats build`). Left out, every item gets zeros = "no statistics" = the
# training prior. Validated like the texts (INVALID_ARGUMENT).
_STATS_INPUTS = (
    TensorSpec("history_stats", "FP32", ("H", "S"),
               "optional: [exposures, clicks, history_users, cf0..] per history item (absent = zeros = the prior)",
               optional=True),
    TensorSpec("candidate_stats", "FP32", ("C", "S"),
               "optional: [exposures, clicks, history_users, cf0..] per candidate (absent = zeros = the prior)",
               optional=True),
)

# Optional LLM user profile (`genrec enrich users`; genrec.core.profiles.profile_vector): one weight in [0, 1] per
# entry of the served `categories` list ("" first, always 0), 1.0 for each of the user's interest topics. Left
# out (or all zeros) = "no profile": what a model trained without profiles, or a user nobody profiled, gets.
USER_PROFILE = TensorSpec("user_profile", "FP32", ("K",),
                          "optional: interest-topic weights in [0, 1], one per served category (absent = zeros = "
                          "no profile)", optional=True)

TRUNCATED = TensorSpec("truncated", "BOOL", ("N",),
                       "per text (history first): true when it was cut to the model's max tokens")

# The tokenizer also takes the optional statistics and emits them validated and filled (zeros when absent),
# so the heads always get both tensors: an ensemble passes an absent optional input on as absent.
TOKENIZER = GraphSpec(
    "tokenizer",
    inputs=(*_TEXT_INPUTS, *_STATS_INPUTS, USER_PROFILE),
    outputs=(
        TensorSpec("input_ids", "INT64", ("N", "L"), "history then candidate texts, padded to the longest"),
        TensorSpec("attention_mask", "INT64", ("N", "L")),
        TensorSpec("history_category_id", "INT64", ("H",)),
        TensorSpec("history_subcategory_id", "INT64", ("H",)),
        TensorSpec("candidate_category_id", "INT64", ("C",)),
        TensorSpec("candidate_subcategory_id", "INT64", ("C",)),
        TRUNCATED,
        TensorSpec("history_item_stats", "FP32", ("H", "S"), "history_stats, or zeros when absent"),
        TensorSpec("candidate_item_stats", "FP32", ("C", "S"), "candidate_stats, or zeros when absent"),
        TensorSpec("user_profile_vector", "FP32", ("K",), "user_profile, or zeros when absent"),
    ),
)

# The served contract of the `genrec` ensemble: what online services send and receive.
ENSEMBLE = GraphSpec("genrec", inputs=(*_TEXT_INPUTS, *_STATS_INPUTS, USER_PROFILE),
                     outputs=(*HEADS.outputs, TRUNCATED))

# How the ensemble runs its steps. Every tensor keeps its own name across the ensemble: a step's input reads the
# ensemble tensor of the same name (an ensemble input or an earlier step's output), and each output becomes an
# ensemble tensor of its own name. The only exceptions are named here: the heads read the tokenizer's category ids
# and filled statistics / profile, whose namesakes among the ensemble inputs are the BYTES names or the optional
# inputs a request may leave out.
ENSEMBLE_STEPS = (TOKENIZER, ENCODER, HEADS)
ENSEMBLE_READS = {"heads": {"history_category": "history_category_id", "history_subcategory": "history_subcategory_id",
                            "candidate_category": "candidate_category_id",
                            "candidate_subcategory": "candidate_subcategory_id",
                            "history_stats": "history_item_stats", "candidate_stats": "candidate_item_stats",
                            "user_profile": "user_profile_vector"}}


Wiring = list[tuple[str, dict[str, str], dict[str, str]]]


def ensemble_wiring(ensemble: GraphSpec = ENSEMBLE, steps: tuple[GraphSpec, ...] = ENSEMBLE_STEPS,
                    reads: dict[str, dict[str, str]] = ENSEMBLE_READS) -> Wiring:
    """(step name, {its input: ensemble tensor}, {its output: ensemble tensor}) per step, in order, derived from the
    graphs' own tensor names; raises ValueError when a step reads a tensor nothing provides, a dtype differs, an
    output would shadow an ensemble tensor, or an ensemble output is never produced."""
    tensors = {t.name: t for t in ensemble.inputs}                     # ensemble tensor -> its spec
    wiring = []
    for step in steps:
        renamed = reads.get(step.name, {})
        unknown = set(renamed) - set(step.input_names)
        if unknown:
            raise ValueError(f"ensemble reads for {step.name} name no input of it: {sorted(unknown)}")
        inputs = {}
        for t in step.inputs:
            src = renamed.get(t.name, t.name)
            if src not in tensors:
                raise ValueError(f"{step.name} input {t.name!r} reads {src!r}, which no ensemble input or earlier "
                                 "step provides")
            if tensors[src].dtype != t.dtype:
                raise ValueError(f"{step.name} input {t.name!r} ({t.dtype}) reads {src!r} ({tensors[src].dtype})")
            inputs[t.name] = src
        for t in step.outputs:
            if t.name in tensors:
                raise ValueError(f"{step.name} output {t.name!r} shadows an ensemble tensor of that name")
            tensors[t.name] = t
        wiring.append((step.name, inputs, {t.name: t.name for t in step.outputs}))
    missing = [t.name for t in ensemble.outputs if t.name not in tensors or t.name in ensemble.input_names]
    if missing:
        raise ValueError(f"no step produces the ensemble outputs {missing}")
    return wiring

# The id path (`recommend` model): known items come from the item-embedding index, only unknown items
# are encoded. Every id not in the index must come with its text in new_item_*. Item statistics come from
# the server's stats folder (`genrec stats build`), by id; ids it does not know get zeros (the prior).
MAX_ID_BYTES = 64
# item_source values: where the id path found each item's vector (the client names them by ITEM_SOURCES[value])
SOURCE_INDEX, SOURCE_CACHE, SOURCE_ENCODED = 0, 1, 2
ITEM_SOURCES = ("index", "cache", "encoded")
ITEM_SOURCE = TensorSpec("item_source", "INT8", ("N",),
                         "per item (history first): 0 = index, 1 = LRU cache of new items, 2 = encoded now")
RECOMMEND = GraphSpec(
    "recommend",
    inputs=(
        TensorSpec("history_id", "BYTES", ("H",), "ids of the user's history items, oldest first (0..50)"),
        TensorSpec("candidate_id", "BYTES", ("C",),
                   "ids of the candidates to rank (1..max_candidates); absent or empty: retrieve from the whole "
                   "index (k)", optional=True),
        TensorSpec("new_item_id", "BYTES", ("M",), "ids of items the index may not know (0..H + C)"),
        TensorSpec("new_item_text", "BYTES", ("M",), "their texts"),
        TensorSpec("new_item_category", "BYTES", ("M",), "their categories ('' = unknown)"),
        TensorSpec("new_item_subcategory", "BYTES", ("M",), "their subcategories ('' = unknown)"),
        TensorSpec("k", "INT32", (1,), "retrieval: items to return (1..retrieval_m; default 10)", optional=True),
        TensorSpec("exclude_id", "BYTES", ("E",), "retrieval: ids never to return (0..1000)", optional=True),
        TensorSpec("restrict_category", "BYTES", ("R",),
                   "retrieval: return only items of these categories (names the model knows)", optional=True),
        TensorSpec("include_history", "BOOL", (1,), "retrieval: may return the user's history items (default "
                   "false)", optional=True),
        USER_PROFILE,
    ),
    outputs=(*HEADS.outputs, ITEM_SOURCE, TRUNCATED,
             TensorSpec("item_id", "BYTES", ("C",), "ids of the C ranked items: the candidates as sent, or the "
                        "k retrieved items best first")),
)
RETRIEVAL_K = 10        # k when a retrieval request sends none


# ---- every served model's Triton config `parameters`, typed ---------------------------------------------------


def _param_text(value) -> str:
    if isinstance(value, tuple):
        return json.dumps(list(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _param_value(tp, text: str):
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item, *_) = typing.get_args(tp) or (str,)
        # JSON lists; comma-separated integers as repositories before the typed parameters wrote them
        values = json.loads(text) if text.strip().startswith("[") else [x for x in text.split(",") if x.strip()]
        return tuple(item(v) for v in values)
    if tp is bool:
        return text.strip().lower() in ("1", "true", "yes")
    return tp(text)


@dataclasses.dataclass(frozen=True)
class ModelParams:
    """A served model's config ``parameters`` as one typed object: the repository builder writes it
    (``to_parameters``), the model's backend reads it back (``from_parameters``), and so do the client, the soak and
    the tests -- never through string keys and defaults of their own. A key, its type and its default are declared
    once, in a subclass; keys a config lacks keep their defaults (repositories built before the key existed)."""

    def to_parameters(self) -> dict[str, str]:
        return {f.name: _param_text(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_parameters(cls, params):
        """From a Triton config's ``parameters``: protobuf ``string_value`` entries, the python backend's JSON
        (``{"key": {"string_value": "..."}}``), plain strings, or another ``ModelParams`` (its common fields)."""
        if isinstance(params, ModelParams):
            params = params.to_parameters()
        raw = {k: v.get("string_value", "") if isinstance(v, dict) else getattr(v, "string_value", v)
               for k, v in dict(params).items()}
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: _param_value(hints[f.name], raw[f.name]) for f in dataclasses.fields(cls)
                      if f.name in raw})


@dataclasses.dataclass(frozen=True)
class ServedParams(ModelParams):
    """The client-facing facts of a served ``genrec`` ensemble (and ``recommend`` model and the tokenizer, which
    validate requests with them)."""

    contract_version: str = CONTRACT_VERSION
    max_history: int = MAX_HISTORY
    max_candidates: int = MAX_CANDIDATES
    max_text_bytes: int = MAX_TEXT_BYTES
    max_length: int = 0                    # tokens per text the encoder sees (longer texts are cut)
    dim: int = 0                           # item/user vector size D
    categories: tuple[str, ...] = ()       # names of the user_topics entries; "" (unknown) first
    retrieval_m: int = 0                   # recommend: items retrieved before re-ranking (0 = no retrieval index)


@dataclasses.dataclass(frozen=True)
class TokenizerParams(ServedParams):
    """The ``tokenizer`` model (model_repository/backends/tokenizer.py)."""

    assets_dir: str = "assets"             # its version folder's copy of the serving assets (tokenizer, vocabularies)
    pad_to: int = 0                        # pad every text to this many tokens (0 = the request's longest): for an
                                           # encoder backend that cannot merge requests of different lengths
    pad_to_multiple_of: int = 1            # round each request's token length up to a multiple
    cache_bytes: int = 0                   # LRU of token ids by text (0 = off)


@dataclasses.dataclass(frozen=True)
class EncoderParams(ModelParams):
    """The ``encoder`` model, python-ort backend (model_repository/backends/encoder.py)."""

    threads: int = 0                       # ONNX Runtime intra-op threads (0 = its default)
    device: str = "cpu"                    # cpu or cuda
    vocab_size: int = 0                    # token ids must be below it (validated per request)
    max_length: int = 0                    # longest token length a request may have
    cache_bytes: int = 0                   # content-addressed cache of item vectors (0 = off; batch-invariant only)


@dataclasses.dataclass(frozen=True)
class TorchEncoderParams(EncoderParams):
    """The ``encoder`` model, torch backend (model_repository/backends/encoder_torch.py)."""

    warmup_batches: tuple[int, ...] = (1, 64)   # batch sizes run once at load (CUDA context, kernel selection)


@dataclasses.dataclass(frozen=True)
class HeadsParams(ModelParams):
    """The ``heads`` model, python-ort backend (model_repository/backends/heads.py)."""

    threads: int = 0                       # ONNX Runtime intra-op threads (0 = its default)
    device: str = "cpu"
    dim: int = 0                           # D of item_vectors (validated per request)
    n_categories: int = 0                  # category ids must be below it
    n_subcategories: int = 0               # subcategory ids must be below it


@dataclasses.dataclass(frozen=True)
class RecommendParams(ServedParams):
    """The ``recommend`` model, the id path (model_repository/backends/recommend.py)."""

    index_dir: str = ""                    # INDEX_DIR of `genrec index build`
    index_refresh_ms: int = 1000           # how often INDEX_DIR/CURRENT is checked for a new generation (0 = never)
    encoder_sha256: str = ""               # the encoder the index must have been built with
    lru_bytes: int = 64 * 2**20            # vectors of new (unindexed) items kept, in bytes
    device: str = "cpu"                    # where the in-process heads run
    encoder_model: str = ENCODER.name      # the model new items are encoded by (BLS)
    heads_mode: str = "in-process"         # in-process (heads.onnx here) or bls (a call to the heads model)
    stats_dir: str = ""                    # STATS_DIR of `genrec stats build` ("" = no statistics: zeros, the prior)
    stats_refresh_ms: int = 1000           # how often STATS_DIR is checked for a new generation (0 = never)
    retrieval_sha256: str = ""             # retrieval.onnx the index's ANN files were built with ("" = no retrieval)
    retrieval_nprobe: int = 0              # IVF lists searched (0 = what the index was built with)
    retrieval_popular: int = 0             # popular items re-ranked besides the ANN's retrieval_m (0 = ANN only)
