"""How genrec builds llama-cpp-python, and the check that the installed one is that build (issue 31).

llama-cpp-python ships no Linux wheels: pip compiles llama.cpp at install. By default ggml is built with
GGML_NATIVE (``-march=native``): each machine gets the kernels of the features its own CPU has. On a CPU
with AMX (Intel Xeon 4th generation and later) that compiles ggml's AMX kernels, and llama.cpp then puts
every Q4_1 weight of SmolLM2 into AMX buffers; GCC 12 (this platform's compiler) builds those kernels with
an empty tile configuration (its ``_tile_loadconfig`` declares 8 of the 64 bytes it reads, so at -O3 the
stores of the tile rows and columns are dropped as dead): issue 31's segfault in decode, on Intel machines
only, and only where pip compiled the wheel there. (The same -march=native there also switches on AVX-VNNI
and AVX512-FP16 kernels that no AMD machine of ours runs.) So :data:`CMAKE_ARGS` builds one portable
x86-64-v3 set instead: AVX, AVX2, FMA, F16C, BMI2; no AVX-512, no AMX, nothing native. Every machine then
runs the kernels CI runs, and the answers no longer depend on where pip compiled the wheel (the native
AVX-512 build and this one give different words for 5 of 10 titles, greedy both). Speed on SmolLM2-135M,
one thread, side by side: no difference beyond the noise (README "LLM enrichment").

pip's wheel cache keys a built wheel by the source archive alone, not by ``CMAKE_ARGS``: a wheel built
natively before, with the old flags, would be reused silently. So ``ensure`` asks the installed build what
it was compiled with (``llama_print_system_info``); anything but this set, and it installs it again (pip's
cached wheel, when that is a portable one), and if that is still the wrong build, removes pip's cached
llama-cpp-python wheels and builds it with these flags. ``make setup`` runs it after installing the
project; the local backend also checks each build at run time (``genrec.llm.unsafe_extra_buffers``).

Stdlib only, runnable as a script before the project is installed:
``python genrec/llm_build.py cmake-args`` prints the flags (for the first ``pip install``),
``python -m genrec.llm_build check`` says whether the installed build is the portable one (exit 1 if not),
``python -m genrec.llm_build ensure`` makes it so (installing llama-cpp-python if it is missing).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

# GGML_NATIVE=OFF alone would give this set (ggml's defaults without native); spelled out so that a newer
# ggml default cannot change it behind our back. LLAVA_BUILD=OFF: no libmtmd (the multimodal library,
# ~15 % of the compile), which genrec never loads.
CMAKE_ARGS = ("-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
              "-DGGML_BMI2=ON", "-DGGML_AVX_VNNI=OFF", "-DGGML_AVX512=OFF", "-DGGML_AMX_TILE=OFF",
              "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF", "-DLLAVA_BUILD=OFF")
# what llama_print_system_info() lists for that build (SSE3/SSSE3 come with AVX), instruction sets only
EXPECTED_ISA = frozenset({"SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2"})
# features it lists that are no instruction set: they do not tell the builds apart
NOT_ISA = frozenset({"LLAMAFILE", "OPENMP", "REPACK", "KLEIDIAI", "ACCELERATE", "CPU_HBM"})
PACKAGE = "llama-cpp-python"
DEFAULT_VERSION = "0.3.36"      # used only when the installed genrec's [llm] extra does not say (a bare run)

_PROBE = "import llama_cpp; print(llama_cpp.__version__); print(llama_cpp.llama_print_system_info().decode())"


def build_features(system_info: str) -> frozenset[str]:
    """The instruction sets a llama.cpp build was compiled with, from ``llama_print_system_info()``."""
    found = set()
    for part in system_info.replace("\n", "|").split("|"):
        name, sep, value = part.rpartition("=")
        name = name.split(":")[-1].strip()
        if sep and name and value.strip() not in ("", "0") and name not in NOT_ISA:
            found.add(name)
    return frozenset(found)


def installed_build(python: str) -> tuple[str, str] | None:
    """(version, system info) of the llama-cpp-python that ``python`` imports, or None if it has none."""
    out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    version, _, info = out.stdout.partition("\n")
    return version.strip(), info.strip()


def wanted_version(python: str) -> str:
    """The pin of genrec's [llm] extra, as the installed genrec declares it (pyproject.toml is its source)."""
    code = ("import importlib.metadata as m, re\n"
            "for r in m.requires('genrec') or []:\n"
            "    x = re.match(r'llama[-_]cpp[-_]python(\\[[^]]*\\])?\\s*==\\s*([^;\\s]+)', r)\n"
            "    if x: print(x.group(2)); break\n")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or DEFAULT_VERSION


def verdict(build: tuple[str, str] | None) -> str:
    """"" if ``build`` is the portable one, else what is wrong with it."""
    if build is None:
        return f"{PACKAGE} is not installed"
    version, info = build
    got = build_features(info)
    if got == EXPECTED_ISA:
        return ""
    extra, missing = sorted(got - EXPECTED_ISA), sorted(EXPECTED_ISA - got)
    return (f"{PACKAGE} {version} was built with {' '.join(sorted(got)) or 'no SIMD'}"
            f"{f' (beyond the portable set: {extra})' if extra else ''}{f' (missing: {missing})' if missing else ''}"
            f", not with genrec's flags {' '.join(CMAKE_ARGS)}")


def ensure(python: str, log=print) -> int:
    """Make the llama-cpp-python of ``python`` the portable build; 0 when it is, 1 if it cannot be."""
    build = installed_build(python)
    why = verdict(build)
    if not why:
        log(f"{PACKAGE}: the portable build ({' '.join(sorted(EXPECTED_ISA))})")
        return 0
    version = wanted_version(python)
    env = {**os.environ, "CMAKE_ARGS": " ".join(CMAKE_ARGS)}
    if build is None:                         # not there (or not importable): with what it needs, [server] too
        cmd = [python, "-m", "pip", "install", "--quiet", f"{PACKAGE}[server]=={version}"]
    else:                                     # the wrong build: only it, its dependencies are in place
        cmd = [python, "-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps", f"{PACKAGE}=={version}"]
    # first what pip has (a wheel it cached may be a portable one another venv built), then, if that is the
    # wrong build, without it: pip's cache would hand the same wheel back whatever CMAKE_ARGS says
    for attempt in ("from pip's cache or built", "built anew, pip's cached wheels of it removed"):
        log(f"{why}: installing {PACKAGE}=={version} again, {attempt} (a build takes a few minutes)")
        if attempt.startswith("built anew"):
            subprocess.run([python, "-m", "pip", "cache", "remove", "llama_cpp_python"], capture_output=True)
        if subprocess.run(cmd, env=env).returncode != 0:
            log(f"{PACKAGE}: the install failed ({' '.join(cmd)})")
            return 1
        why = verdict(installed_build(python))
        if not why:
            log(f"{PACKAGE}: the portable build ({' '.join(sorted(EXPECTED_ISA))})")
            return 0
    log(f"{why}: even when built anew")
    return 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m genrec.llm_build", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["cmake-args", "check", "ensure"])
    ap.add_argument("--python", default=sys.executable, help="the interpreter whose llama-cpp-python is meant")
    args = ap.parse_args(argv)
    if args.command == "cmake-args":
        print(" ".join(CMAKE_ARGS))
        return 0
    if args.command == "check":
        why = verdict(installed_build(args.python))
        print(why or f"{PACKAGE}: the portable build ({' '.join(sorted(EXPECTED_ISA))})")
        return 1 if why else 0
    return ensure(args.python)


if __name__ == "__main__":
    sys.exit(main())
