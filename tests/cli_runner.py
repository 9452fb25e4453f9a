"""Run many real `genrec` commands fast: one helper process imports the CLI and its heavy dependencies once,
then forks a child per command (the child runs ``genrec.cli.main`` exactly as the console script does: the
same argv parsing, error handling and exit code; an uncaught exception prints its traceback and exits 1, a
``SystemExit("message")`` prints the message and exits 1, as the interpreter would).

A command killed by a signal (the crash tests: ``GENREC_FSIO_KILL_AT``) reports the signal. Starting a Python
with numpy, ONNX Runtime, faiss and tokenizers costs ~1.5 s on this machine; a fork costs milliseconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HELPER = r'''
import json, os, sys, traceback
import numpy, onnxruntime, tokenizers                                   # noqa: F401  (imported once, shared)
import genrec.cli, genrec.core.index, genrec.core.retrieval, genrec.core.statstore  # noqa: F401
import genrec.model_repository.builder                                   # noqa: F401
try:
    import faiss                                                         # noqa: F401
except ImportError:
    pass
genrec.cli.build_parser()              # registering every subcommand imports its stage (torch, export...): once
print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    out = open(job["stdout"], "wb")
    err = open(job["stderr"], "wb")
    pid = os.fork()
    if pid == 0:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        os.environ.update(job["env"])
        os.chdir(job["cwd"])
        try:
            rc = genrec.cli.main(job["argv"])
        except SystemExit as exc:
            rc = exc.code
            if isinstance(rc, str):
                print(rc, file=sys.stderr)
                rc = 1
            rc = 0 if rc is None else rc
        except BaseException:
            traceback.print_exc()
            rc = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc if isinstance(rc, int) else 1)
    out.close()
    err.close()
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
'''


@dataclass
class Result:
    rc: int              # exit code; -N when killed by signal N
    stdout: str
    stderr: str

    @property
    def killed(self) -> bool:
        return self.rc < 0


class CliRunner:
    def __init__(self, workdir: Path, env: dict[str, str] | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.n = 0
        self.proc = subprocess.Popen([sys.executable, "-c", HELPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env={**os.environ, **(env or {})})
        ready = self.proc.stdout.readline().strip()
        if ready != "ready":
            raise RuntimeError(f"the CLI helper did not start: {ready!r}")

    def run(self, *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Result:
        self.n += 1
        out, err = self.workdir / f"{self.n}.out", self.workdir / f"{self.n}.err"
        job = {"argv": [str(a) for a in argv], "env": env or {}, "cwd": str(cwd or self.workdir),
               "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the CLI helper died")
        return Result(json.loads(line)["rc"], out.read_text(errors="replace"), err.read_text(errors="replace"))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(30)

    def __enter__(self) -> CliRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
