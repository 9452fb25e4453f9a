"""Tensor contracts: one spec per graph, shared by export, the Triton repository and the client.

Plain Python, no numpy/torch: the client imports it. Dims are ints or symbolic names:
N items (history + candidates of one user), L tokens, D vector size, H history items, C candidates,
K categories. The export turns symbolic dims into ONNX dynamic axes; the repository builder turns them
into Triton dims (-1, or the concrete D/K taken from the artifacts).
"""

from __future__ import annotations

import dataclasses
import json

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

# Raw item statistics, the last axis (S) of the *_stats tensors, in this order (see genrec.core.stats): three counts,
# then the item's collaborative vector (who clicked it, factorized from the log's click histories). The heads
# turn them into features in-graph; all zeros = an item without statistics (it gets the training prior).
ITEM_COUNTS = ("exposures", "clicks", "history_users")   # finite, >= 0
CF_DIM = 16                                               # collaborative vector size; finite, any sign
ITEM_STATS = (*ITEM_COUNTS, *(f"cf{i}" for i in range(CF_DIM)))
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

# The id path (`recommend` model): known items come from the item-embedding index, only unknown items
# are encoded. Every id not in the index must come with its text in new_item_*. Item statistics come from
# the server's stats folder (`genrec stats build`), by id; ids it does not know get zeros (the prior).
MAX_ID_BYTES = 64
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
        TensorSpec("exclude_id", "BYTES", ("E",), "retrieval: ids never to return", optional=True),
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


# ---- what a served model advertises in its Triton config `parameters` --------------------------------------


@dataclasses.dataclass(frozen=True)
class ServedParams:
    """The client-facing facts of a served ``genrec`` ensemble (and ``recommend`` model): written into the
    config's string ``parameters`` by the repository builder, read back by the client, the soak and the tests
    through this one typed reader -- never by string keys of their own."""

    contract_version: str = CONTRACT_VERSION
    max_history: int = MAX_HISTORY
    max_candidates: int = MAX_CANDIDATES
    max_text_bytes: int = MAX_TEXT_BYTES
    max_length: int = 0                    # tokens per text the encoder sees (longer texts are cut)
    dim: int = 0                           # item/user vector size D
    categories: tuple[str, ...] = ()       # names of the user_topics entries; "" (unknown) first
    retrieval_m: int = 0                   # recommend: items retrieved before re-ranking (0 = no retrieval index)

    def to_parameters(self) -> dict[str, str]:
        return {f.name: json.dumps(list(v)) if isinstance(v := getattr(self, f.name), tuple) else str(v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_parameters(cls, params) -> ServedParams:
        """From a Triton config's ``parameters`` map (protobuf ``string_value`` entries or plain strings);
        missing keys keep their defaults (older servers)."""
        raw = {k: getattr(v, "string_value", v) for k, v in dict(params).items()}
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in raw:
                text = raw[f.name]
                values[f.name] = (tuple(json.loads(text)) if f.name == "categories"
                                  else int(text) if f.type == "int" else text)
        return cls(**values)
