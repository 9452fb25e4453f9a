"""Triton model ``encoder`` (torch backend): the TorchScript encoder run by torch inside the python backend.

The contract, the checks and the ragged merging are :mod:`encoder`'s (same tensor names, same errors):
requests the dynamic batcher grouped are validated, padded to the longest, concatenated, encoded in one
call and split back. Only the engine differs: ``model.pt`` (``genrec export --torchscript``) on ``device``
(cuda on GPU instances: the weights stay in the dtype they were traced in, FP16 for the GPU artifact).
Warm-up calls at load keep CUDA context creation and kernel selection out of the first requests.

Why not ONNX Runtime: the GPU machines this project measures on have torch with CUDA but ONNX Runtime
without it; the NGC container can use the native pytorch or onnxruntime backends instead (see README).
"""

from __future__ import annotations

from genrec.core.contract import TorchEncoderParams
from genrec.model_repository.backends.common import model_params, version_dir
from genrec.model_repository.backends.encoder import EncoderModel
from genrec.model_repository.torchscript_runtime import TorchScriptEncoder


class TorchEncoderModel(EncoderModel):
    def initialize(self, args):
        p = model_params(args, TorchEncoderParams)
        device = p.device
        if device == "cuda" and args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args.get('model_instance_device_id', '0')}"     # the instance's own GPU
        self.encoder = TorchScriptEncoder(version_dir(args) / "model.pt", device=device, threads=p.threads)
        self.vocab_size = p.vocab_size
        self.max_length = p.max_length
        self.cache = None                          # TorchScript batches rows together: no vector cache
        self.encoder.warmup(self.max_length, batches=p.warmup_batches)
