"""genrec's torch-free serving core: what the client, the Triton repository (builder and backends), the
server, ``index build``, ``stats build`` and ``repository build`` import -- and nothing else of genrec.

* ``contract``   -- the one tensor contract (names, dtypes, shapes) and the typed served parameters;
* ``requests``   -- request validation and BYTES encoding shared by client and backends;
* ``text``, ``vocab`` -- the tokenizer (with its token-id cache) and the category vocabularies;
* ``mind``       -- the MIND-format reader every stage shares (news.tsv, behaviors.tsv);
* ``stats``, ``statstore`` -- item statistics: counted from logs, stored beside the index, refreshed live;
* ``index``, ``retrieval``, ``vcache``, ``refresh`` -- the item index (id path), whole-catalog retrieval,
  the encoder's vector cache, and live reloading of files that change under a running server;
* ``artifacts``, ``runtime`` -- the exported artifacts' manifest (writer and reader) and the ONNX Runtime
  pipeline that runs them;
* ``errors``     -- the user-error type and exit codes;
* ``fsio``       -- atomic, durable writes of files and folders (every persistent write goes through it).

numpy, tokenizers, onnxruntime and faiss only (tqdm for progress bars, the packaged encoder weights): the
encoders an index build may use besides ONNX Runtime (TorchScript, Ray) are passed in by the caller
(``genrec.index_encoders``). ``tests/test_imports.py`` keeps the rule (every import here, lazy ones too, and no
import cycle anywhere); ``tests/test_torch_free.py`` imports every module here with torch made unimportable.
"""
