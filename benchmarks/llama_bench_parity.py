"""The workbench's llama.cpp benchmark ÷ llama.cpp's own `llama-bench` on the same GGUF file, threads,
lengths and batch settings, alternating in one run (target: both ratios within 1 ± 0.10).

llama-bench is built once from the llama.cpp source vendored in the installed llama-cpp-python's sdist
(needs cmake and a C++ compiler; or point WORKBENCH_LLAMA_BENCH at a binary). Uses a finished run's GGUF
(default: the quickstart's Q4_K_M; `make run` first) or --model FILE:

    .venv/bin/python benchmarks/llama_bench_parity.py [--model FILE] [--threads N] [-p 512] [-n 128] [-r 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench import workers  # noqa: E402
from workbench.bench import llama_bench  # noqa: E402
from workbench.bench.worker import MeasureJob, MeasureResult  # noqa: E402
from workbench.core.devices import usable_cores  # noqa: E402
from workbench.core.store import Store  # noqa: E402
from workbench.pipeline.runner import default_home  # noqa: E402


def default_model(run: str) -> str:
    store = Store(default_home() / "workbench.db")
    ggufs = [v for v in store.variants(run) if v.format == "gguf" and v.status == "done"]
    if not ggufs:
        sys.exit(f"no GGUF variants in run {run!r}: `make run` first, or pass --model FILE")
    return next((v.path for v in ggufs if "Q4_K_M" in v.name), ggufs[-1].path)


def workbench_numbers(model: str, args: argparse.Namespace) -> dict[str, float]:
    """The bench stage's own worker, in its own process as in a run; means over the repetitions, the
    statistic llama-bench reports."""
    job = MeasureJob(
        variant=Path(model).name, format="gguf", path=model, backend="llama.cpp", device="cpu", threads=args.threads,
        prompt_tokens=args.p, gen_tokens=args.n, repetitions=args.r, warmup=1,
    )  # fmt: skip
    outcome = workers.run("bench.measure", job, name=Path(model).name)
    if not outcome.ok:
        sys.exit(outcome.error)
    measured = outcome.value_as(MeasureResult)
    assert measured.pp_tps and measured.tg_tps
    return {"pp_tps": statistics.mean(measured.pp_tps.samples), "tg_tps": statistics.mean(measured.tg_tps.samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="GGUF file (default: the run's Q4_K_M)")
    parser.add_argument("--run", default="quickstart")
    parser.add_argument("--threads", type=int, default=usable_cores())
    parser.add_argument("-p", type=int, default=512, help="prompt tokens")
    parser.add_argument("-n", type=int, default=128, help="generated tokens")
    parser.add_argument("-r", type=int, default=5, help="repetitions per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both")
    args = parser.parse_args()
    model = args.model or default_model(args.run)
    binary = llama_bench.find_or_build()
    ours: list[dict[str, float]] = []
    theirs: list[dict[str, float]] = []
    for round_ in range(args.rounds):
        ours.append(workbench_numbers(model, args))
        theirs.append(llama_bench.run(binary, model, args.threads, args.p, args.n, args.r))
        print(f"round {round_ + 1}: workbench {ours[-1]}  llama-bench {theirs[-1]}", flush=True)
    print(f"\n{Path(model).name}, {args.threads} threads, llama-bench {binary}")
    print(f"{'test':8} {'workbench tok/s':>16} {'llama-bench tok/s':>18} {'ratio':>7}")
    ok = True
    for key, name in (("pp_tps", f"pp{args.p}"), ("tg_tps", f"tg{args.n}")):
        mine = statistics.mean(r[key] for r in ours)
        reference = statistics.mean(r[key] for r in theirs)
        ratio = mine / reference
        ok &= abs(ratio - 1) <= 0.10
        print(f"{name:8} {mine:16.1f} {reference:18.1f} {ratio:7.3f}")
    print("within ±10%: " + ("yes" if ok else "NO"))


if __name__ == "__main__":
    main()
