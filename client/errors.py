"""Client errors: what an online service catches. Never a raw grpc traceback for these."""

from __future__ import annotations


class GenrecClientError(RuntimeError):
    """Base class; ``status`` is the gRPC status name when the server answered."""

    def __init__(self, message: str, status: str = ""):
        super().__init__(message)
        self.message = message
        self.status = status


class InvalidRequest(GenrecClientError):
    """The request was rejected (server INVALID_ARGUMENT, or the same check done locally first)."""


class Unavailable(GenrecClientError):
    """The server could not be reached, after retries with exponential backoff and jitter."""


class DeadlineExceeded(GenrecClientError):
    """The call did not finish within its deadline."""


class ContractMismatch(GenrecClientError):
    """The served model's inputs/outputs are not the contract this client speaks."""
