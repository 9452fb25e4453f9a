"""Raw tritonclient helpers for tests (deliberately not the genrec client)."""

from __future__ import annotations

import tritonclient.grpc as grpcclient

from genrec.client import common as client_common


def bytes_input(name: str, values, dtype: str = "BYTES") -> grpcclient.InferInput:
    return client_common.bytes_input(grpcclient.InferInput, name, values, dtype)


def text_inputs(history, candidates) -> list[grpcclient.InferInput]:
    (ht, hc, hs), (ct, cc, cs) = history, candidates
    return [bytes_input("history_text", ht), bytes_input("history_category", hc),
            bytes_input("history_subcategory", hs), bytes_input("candidate_text", ct),
            bytes_input("candidate_category", cc), bytes_input("candidate_subcategory", cs)]
