"""Implementations behind the thin ``model.py`` files of the generated Triton repository.

They run inside the Triton python-backend stub (``triton_python_backend_utils`` exists only there)
and must stay torch-free. Each per-request failure becomes that request's error response; a bad
request never crashes the stub nor fails the other requests of its batch.
"""
