"""The local LLM's own process: ``python -m genrec.llm_worker MODEL.gguf`` runs one GGUF chat model with
llama-cpp-python and answers chat requests on stdin/stdout, one JSON object per line, one at a time.

Why a process of its own (issue 31): llama.cpp is native code, and a crash in it (a SIGSEGV in decode on a
CPU whose build ran a broken kernel) used to take the whole ``genrec enrich`` run, or a pytest worker, down
with it. Out here a crash ends this process only; :class:`genrec.llm.LocalLlama` on the other end turns it
into one ``genrec: error:`` line, and the answers already cached stay cached.

The protocol, one JSON line each way:

* worker, once the model is loaded: ``{"ready": {"llama_cpp": VERSION, "system_info": "...",
  "extra_buffers": true}}``; if it cannot load: ``{"error": "..."}`` and exit status 1;
* caller: ``{"messages": [{"role": ..., "content": ...}, ...], "max_tokens": N}``;
* worker: ``{"answer": "..."}``, or ``{"error": "..."}`` for a request that failed on its own (the prompt
  does not fit the context): the caller counts it and goes on.

End of stdin (the caller closed it, or died): the worker exits 0. Everything else the process prints
(llama.cpp's log, a fault handler's traceback) goes to stderr, which the caller keeps in a log file.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys
from typing import Any

from genrec.llm import STOP, unsafe_extra_buffers


def _load(model: str, threads: int, n_ctx: int, seed: int) -> tuple[Any, dict[str, Any]]:
    import llama_cpp
    from llama_cpp import Llama

    system_info = llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()
    why = unsafe_extra_buffers(system_info)
    if why:
        # llama-cpp-python's Llama has no argument for it: its model parameters start from this function
        default_params = llama_cpp.llama_cpp.llama_model_default_params

        def params_without_extra_buffers():
            params = default_params()
            params.use_extra_bufts = False
            return params

        llama_cpp.llama_cpp.llama_model_default_params = params_without_extra_buffers
        print(f"genrec.llm_worker: {why}: weights stay in plain CPU buffers", file=sys.stderr)
    print(f"genrec.llm_worker: llama-cpp-python {llama_cpp.__version__}, {system_info}", file=sys.stderr)
    llm = Llama(model_path=model, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, seed=seed,
                verbose=False)
    return llm, {"llama_cpp": llama_cpp.__version__, "system_info": system_info, "extra_buffers": not why}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m genrec.llm_worker", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="the GGUF chat model")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of llama.cpp")
    ap.add_argument("--n-ctx", type=int, default=1024, help="context length in tokens (prompt + answer)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (decoding is greedy anyway)")
    args = ap.parse_args(argv)

    # the protocol gets its own copy of fd 1; fd 1 itself then points at stderr, so nothing native code
    # prints can ever land in the middle of an answer
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    faulthandler.enable()                     # a native crash leaves its Python stack in the log

    def send(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj, ensure_ascii=False) + "\n")
        proto.flush()

    try:
        llm, info = _load(args.model, args.threads, args.n_ctx, args.seed)
    except Exception as exc:                  # noqa: BLE001 -- whatever stops the load goes back to the caller
        send({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    send({"ready": info})
    for line in sys.stdin:
        req = json.loads(line)
        try:
            out = llm.create_chat_completion(messages=req["messages"], temperature=0.0, top_k=1, top_p=1.0,
                                             max_tokens=int(req["max_tokens"]), seed=args.seed, stop=STOP)
        except ValueError as exc:             # this request only (e.g. the prompt does not fit the context)
            send({"error": str(exc)})
            continue
        send({"answer": out["choices"][0]["message"]["content"] or ""})
    return 0


if __name__ == "__main__":
    sys.exit(main())
