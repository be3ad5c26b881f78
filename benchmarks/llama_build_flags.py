"""llama.cpp speed with the build flags `make install` chooses (native, Intel AMX off) ÷ a generic build
(GGML_NATIVE=OFF), on the same GGUF files, threads and settings, alternating in one run. On a CPU with
AMX, pip's default (native with AMX) is measured too, and reported as crashed where it crashes.

Each flavour is llama.cpp's own `llama-bench`, built from the sources vendored in the installed
llama-cpp-python (needs cmake and a C++ compiler; a few minutes per flavour on 2 cores, kept for the next
run). Uses a finished run's GGUF files (default: the quickstart's Q4_K_M and Q8_0; `make run` first):

    .venv/bin/python benchmarks/llama_build_flags.py [--run quickstart] [--model FILE ...] [-p 256] [-n 64] [-r 3]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench.bench import llama_bench  # noqa: E402
from workbench.core.devices import usable_cores  # noqa: E402
from workbench.core.store import Store  # noqa: E402
from workbench.doctor import cpu_features  # noqa: E402
from workbench.pipeline.runner import default_home  # noqa: E402


def flavours() -> dict[str, list[str]]:
    found = {"generic": ["-DGGML_NATIVE=OFF"], "workbench": llama_bench.installed_cmake_args()}
    if any(feature.startswith("amx") for feature in cpu_features()[1]):
        found["native+AMX"] = ["-DGGML_NATIVE=ON"]  # what pip builds when nobody passes flags
    return found


def run_models(run: str) -> list[str]:
    ggufs = {v.name: v.path for v in Store(default_home() / "workbench.db").variants(run) if v.format == "gguf"}
    chosen = [path for name, path in ggufs.items() if "Q4_K_M" in name or "Q8_0" in name]
    if not chosen:
        sys.exit(f"no Q4_K_M / Q8_0 GGUF in run {run!r}: `make run` first, or pass --model FILE")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="quickstart")
    parser.add_argument("--model", action="append", help="GGUF file (repeatable; default: the run's Q4_K_M, Q8_0)")
    parser.add_argument("--threads", type=int, default=usable_cores())
    parser.add_argument("-p", type=int, default=256, help="prompt tokens")
    parser.add_argument("-n", type=int, default=64, help="generated tokens")
    parser.add_argument("-r", type=int, default=3, help="repetitions per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of every flavour")
    args = parser.parse_args()
    models = args.model or run_models(args.run)
    binaries = {name: llama_bench.build(cmake_args, name) for name, cmake_args in flavours().items()}
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    crashed: dict[tuple[str, str], str] = {}
    for round_ in range(args.rounds):
        for model in models:
            for name, binary in binaries.items():
                key = (Path(model).name, name)
                if key in crashed:
                    continue
                try:
                    measured = llama_bench.run(binary, model, args.threads, args.p, args.n, args.r)
                except subprocess.CalledProcessError as exc:
                    crashed[key] = f"exit {exc.returncode}" if exc.returncode > 0 else f"signal {-exc.returncode}"
                    continue
                results.setdefault(key, []).append(measured)
                print(f"round {round_ + 1}: {key[0]} {name}: {measured}", flush=True)
    print(f"\n{args.threads} threads, pp{args.p} / tg{args.n}, {args.rounds} rounds × {args.r} repetitions")
    print(f"{'model':36} {'build':11} {'pp tok/s':>9} {'tg tok/s':>9} {'pp ÷ generic':>13} {'tg ÷ generic':>13}")
    for model in models:
        file = Path(model).name
        base = {k: statistics.mean(r[k] for r in results.get((file, "generic"), [])) for k in ("pp_tps", "tg_tps")}
        for name in binaries:
            if (file, name) in crashed:
                print(f"{file[-36:]:36} {name:11} crashed ({crashed[(file, name)]})")
                continue
            mean = {k: statistics.mean(r[k] for r in results[(file, name)]) for k in ("pp_tps", "tg_tps")}
            pp, tg = mean["pp_tps"], mean["tg_tps"]
            ratio_pp, ratio_tg = pp / base["pp_tps"], tg / base["tg_tps"]
            print(f"{file[-36:]:36} {name:11} {pp:9.1f} {tg:9.1f} {ratio_pp:13.3f} {ratio_tg:13.3f}")
    for name, binary in binaries.items():
        print(f"{name}: {shlex.join(flavours()[name]) or '(defaults)'} ({binary})")


if __name__ == "__main__":
    main()
