"""lm-eval throughput: a GGUF q8_0 through the in-process llama.cpp LM ÷ lm-eval's `hf` backend on the
merged model, same task, same process, alternating repetitions: docs/s through lm-eval's simple_evaluate,
and requests/s of the backend alone on the task's requests (lm-eval's fixed per-call costs left out).
Targets on CPU: >= 1.5 on generation (heldout), >= 2 on log-likelihoods (general_mc).

Uses a finished run's files (default: the quickstart; `make run` first):

    .venv/bin/python benchmarks/eval_speed.py [--run quickstart] [--task heldout] [--reps 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from workbench.core.paths import BUILTIN_EVALS  # noqa: E402
from workbench.core.store import Store  # noqa: E402
from workbench.eval.tasks import copy_task_folders  # noqa: E402
from workbench.pipeline.runner import default_home  # noqa: E402


def scoring_seconds(lm: object, task: str, task_dir: Path) -> tuple[float, int]:
    """Seconds the backend itself takes for the task's requests (lm-eval builds them once, outside the
    timing): what batching changes, without lm-eval's fixed per-call costs."""
    from lm_eval.tasks import TaskManager, get_task_dict

    found = get_task_dict([task], TaskManager(include_path=str(task_dir), include_defaults=False))[task]
    found.build_all_requests(rank=0, world_size=1)
    instances = found.instances
    kind = instances[0].request_type
    started = time.perf_counter()
    getattr(lm, kind)(instances, disable_tqdm=True)
    return time.perf_counter() - started, len(instances)


def docs_per_second(lm: object, task: str, task_dir: Path) -> tuple[float, int, dict]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    started = time.perf_counter()
    output = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=manager, bootstrap_iters=0)
    seconds = time.perf_counter() - started
    docs = sum(output["n-samples"][name]["effective"] for name in output["n-samples"])
    return docs / seconds, docs, output["results"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="quickstart")
    parser.add_argument("--home", type=Path, default=default_home())
    parser.add_argument("--task", default="heldout", help="a task of the run's eval stage (heldout, general_mc, ...)")
    parser.add_argument("--gguf", default="Q8_0", help="which GGUF variant of the run")
    parser.add_argument("--batch-size", type=int, default=8, help="hf backend batch size (the eval stage's default)")
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()

    from lm_eval.models.huggingface import HFLM

    from workbench.core.formats import compute_dtype
    from workbench.eval.llamacpp_lm import LlamaCppLM

    variants = {v.name: v for v in Store(args.home / "workbench.db").variants(args.run)}
    merged = next(v for v in variants.values() if v.is_reference)
    gguf = next(v for name, v in variants.items() if name.endswith(f"-{args.gguf}.gguf"))
    run_tasks = args.home / args.run / "eval" / "tasks"
    if not run_tasks.is_dir():
        sys.exit(f"{run_tasks} not found: run the eval stage first (make run)")
    task_dir = Path(tempfile.mkdtemp(prefix="eval-speed-"))
    copy_task_folders([run_tasks, BUILTIN_EVALS], task_dir)
    threads = len(os.sched_getaffinity(0))
    hf = HFLM(pretrained=merged.path, device="cpu", dtype=compute_dtype("hf", "cpu"), batch_size=args.batch_size)
    llama = LlamaCppLM(pretrained=gguf.path, n_threads=threads)
    llama.tok_encode("warm up")  # loads the file, as HFLM's constructor loads the model
    rates: dict[str, list[float]] = {"llama.cpp": [], "hf": []}
    scoring: dict[str, list[float]] = {"llama.cpp": [], "hf": []}
    for rep in range(args.reps):
        for name, lm in (("llama.cpp", llama), ("hf", hf)):
            rate, docs, results = docs_per_second(lm, args.task, task_dir)
            rates[name].append(rate)
            seconds, requests = scoring_seconds(lm, args.task, task_dir)
            scoring[name].append(requests / seconds)
            scores = {k: round(v, 4) for k, v in results[args.task].items() if isinstance(v, float)}
            print(f"rep {rep + 1} {name:9} {docs} docs  {rate:6.2f} docs/s (simple_evaluate); {requests} requests"
                  f" {requests / seconds:7.1f} requests/s (the backend alone)  {scores}", flush=True)  # fmt: skip
    llama.close()
    ours, theirs = statistics.median(rates["llama.cpp"]), statistics.median(rates["hf"])
    ours_alone, theirs_alone = statistics.median(scoring["llama.cpp"]), statistics.median(scoring["hf"])
    print(f"\ntask {args.task}, {threads} threads, hf batch {args.batch_size}, torch {compute_dtype('hf', 'cpu')}")
    print(f"{gguf.name} (llama.cpp, in process): {ours:.2f} docs/s, {ours_alone:.1f} requests/s alone")
    print(f"{merged.name} (lm-eval hf):           {theirs:.2f} docs/s, {theirs_alone:.1f} requests/s alone")
    print(f"ratio llama.cpp / hf = {ours / theirs:.2f} through simple_evaluate, {ours_alone / theirs_alone:.2f} the"
          f" backend alone (medians of {args.reps}; targets >= 1.5 generating, >= 2 scoring)")  # fmt: skip


if __name__ == "__main__":
    main()
