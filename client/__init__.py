"""genrec gRPC client for online services: needs only tritonclient[grpc] and numpy (no torch).

    from genrec.client import RecommenderClient
    client = RecommenderClient("localhost:8001", timeout=2.0)
    recs = client.recommend(history=["..."], candidates=["...", "..."], top_k=10)
"""

from genrec.client.aio import AsyncRecommenderClient
from genrec.client.errors import ContractMismatch, DeadlineExceeded, GenrecClientError, InvalidRequest, Unavailable
from genrec.client.sync import RecommenderClient
from genrec.client.types import (
    Because,
    RankedItems,
    Recommendations,
    RecommendedItem,
    RecommendRequest,
)

__all__ = ["AsyncRecommenderClient", "Because", "ContractMismatch", "DeadlineExceeded", "GenrecClientError",
           "InvalidRequest", "RankedItems", "RecommendRequest", "RecommendedItem", "Recommendations",
           "RecommenderClient", "Unavailable"]
