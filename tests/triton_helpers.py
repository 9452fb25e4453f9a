"""Raw tritonclient helpers for tests (deliberately not the genrec client)."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient


def bytes_input(name: str, values, dtype: str = "BYTES") -> grpcclient.InferInput:
    arr = np.array([v.encode() if isinstance(v, str) else v for v in values], dtype=object).reshape(len(values))
    inp = grpcclient.InferInput(name, list(arr.shape), dtype)
    inp.set_data_from_numpy(arr)
    return inp


def text_inputs(history, candidates) -> list[grpcclient.InferInput]:
    (ht, hc, hs), (ct, cc, cs) = history, candidates
    return [bytes_input("history_text", ht), bytes_input("history_category", hc),
            bytes_input("history_subcategory", hs), bytes_input("candidate_text", ct),
            bytes_input("candidate_category", cc), bytes_input("candidate_subcategory", cs)]
