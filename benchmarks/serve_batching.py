"""What batching concurrent users buys: the closed-loop sweep of `bench.serve` (1, 2, 4, 8 clients, 64-token
answers with the end of turn ignored, streamed, greedy) through the workbench's GGUF server (llama.cpp's
`llama-server`, `--parallel` = the largest level), each level repeated; prints peak output tok/s ÷ one
client's, with 95% intervals, and checks the clients' count of tokens and prompts against the server's own
Prometheus counters (`/metrics`) over the whole sweep.

Files: a finished run's Q8_0 (default: the quickstart) and the ~1.1B random Llama the roofline script builds.

    .venv/bin/python benchmarks/serve_batching.py [--run quickstart] [--variant Q8_0] [--one-billion]
        [--levels 1,2,4,8] [--reps 3] [--requests 16] [--slots N] [--unified-kv | --both-kv]
        [--one-at-a-time | --both-batching]

`--unified-kv` serves with one KV cache shared by the slots instead of the workbench's one stream per slot;
`--both-kv` sweeps both in one run and prints the ratio of their peaks. For a merged (transformers) variant,
which `transformers serve --continuous-batching` serves: `--one-at-a-time` starts it without continuous
batching, `--both-batching` sweeps with and without in one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import roofline  # noqa: E402

from workbench.core.errors import ResourceError  # noqa: E402
from workbench.core.store import Store  # noqa: E402
from workbench.pipeline import candidates, servers  # noqa: E402
from workbench.pipeline.runner import default_home  # noqa: E402
from workbench.serve import load  # noqa: E402
from workbench.serve.client import Endpoint, server_metrics  # noqa: E402


def metrics_of(endpoint: Endpoint) -> dict[str, float] | None:
    try:
        return server_metrics(endpoint)
    except ResourceError:
        return None


def sweep(candidate: candidates.Candidate, conversations: list, levels: list[int], args: argparse.Namespace) -> float:
    """One closed-loop sweep, printed; its peak output tok/s."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        store = Store(home / "workbench.db")
        server = servers.start(store, home, "bench", candidate, slots=args.slots or max(levels))
        endpoint = servers.endpoint(server)
        settings = load.Settings(args.requests, args.tokens, repetitions=args.reps, ignore_eos=True,
                                 slo=load.Slo(args.ttft_ms, args.tpot_ms))  # fmt: skip
        try:
            load.warm_up(endpoint, conversations, args.tokens)
            before = metrics_of(endpoint)
            found = load.run(endpoint, conversations, levels, settings)
            after = metrics_of(endpoint)
        finally:
            servers.stop(store, server)
    kv = "unified KV" if args.unified_kv else "one KV stream per slot"
    kv += ", without continuous batching" if args.one_at_a_time else ""
    print(f"\n{candidate.label} ({server.backend}, {args.slots or max(levels)} slots, {kv}, "
          f"{args.tokens}-token answers, {args.reps} passes of {args.requests} requests a level)")  # fmt: skip
    print(f"{'clients':>7} {'tok/s':>8} {'95% interval':>16} {'TTFT p50/p99 ms':>16} {'ITL p50/p99 ms':>15} "
          f"{'goodput req/s':>13}")  # fmt: skip
    for level in found:
        spread = f"{level.output_tps_low:.1f}–{level.output_tps_high:.1f}"
        print(f"{level.concurrency:>7} {level.output_tps:>8.1f} {spread:>16}"
              f" {level.ttft_p50_ms or 0:>7.0f}/{level.ttft_p99_ms or 0:<8.0f} {level.itl_p50_ms or 0:>6.1f}/"
              f"{level.itl_p99_ms or 0:<8.1f} {level.goodput_rps or 0:>13.2f}")  # fmt: skip
    peak = max(found, key=lambda level: level.output_tps)
    print(f"peak ÷ one client: {peak.output_tps / found[0].output_tps:.2f}x (at {peak.concurrency} clients)")
    report_metrics(before, after, found)
    return peak.output_tps


def report_metrics(before: dict[str, float] | None, after: dict[str, float] | None, found: list) -> None:
    if before is None or after is None:
        print("/metrics: none (not llama-server)")
        return
    # the warm-up's request is outside `before`; every request of the sweep is inside the window
    predicted = after["tokens_predicted_total"] - before["tokens_predicted_total"]
    counted = sum(level.output_tokens for level in found)
    prompts = (after["prompt_tokens_total"] + after.get("prompt_tokens_cached_total", 0)) - (
        before["prompt_tokens_total"] + before.get("prompt_tokens_cached_total", 0)
    )
    sent = sum(level.prompt_tokens or 0 for level in found)
    print(f"/metrics: tokens predicted {predicted:.0f} vs the clients' {counted} ({predicted / counted - 1:+.1%}); "
          f"prompt tokens {prompts:.0f} vs usage {sent} ({prompts / max(sent, 1) - 1:+.1%})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="quickstart")
    parser.add_argument("--home", type=Path, default=default_home())
    parser.add_argument("--variant", default="Q8_0")
    parser.add_argument("--one-billion", action="store_true", help="the ~1.1B random Llama's Q8_0 too")
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "workbench-1b")
    parser.add_argument("--levels", default="1,2,4,8")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--slots", type=int, default=None)
    parser.add_argument("--ttft-ms", type=float, default=1000)
    parser.add_argument("--tpot-ms", type=float, default=100)
    parser.add_argument(
        "--one-at-a-time", action="store_true", help="transformers serve without continuous batching (merged)"
    )
    parser.add_argument("--both-batching", action="store_true", help="with continuous batching, then without, one run")
    parser.add_argument(
        "--unified-kv",
        action="store_true",
        help="one KV cache shared by the slots (--kv-unified), against the workbench's one stream per slot",
    )
    parser.add_argument("--both-kv", action="store_true", help="a stream per slot, then the unified cache, one run")
    args = parser.parse_args()
    if args.unified_kv or args.both_kv or args.one_at_a_time or args.both_batching:  # side-by-sides only
        from workbench.serve import backends

        planned = backends.plan

        def changed(*a: object, **k: object) -> backends.Plan:
            plan = planned(*a, **k)  # type: ignore[arg-type]
            if args.unified_kv and plan.backend == "llama.cpp":  # the pool as large, each slot as long
                total, slots = (int(plan.argv[plan.argv.index(flag) + 1]) for flag in ("--ctx-size", "--parallel"))
                plan.argv += ["--kv-unified", "--kv-unified-per-slot", str(total // slots)]
            if args.one_at_a_time and plan.backend == "transformers":
                plan.argv.remove("--continuous-batching")
            return plan

        backends.plan = changed
    levels = [int(x) for x in args.levels.split(",")]
    store = Store(args.home / "workbench.db")
    found, _ = candidates.for_run(store, args.run)
    [candidate] = candidates.pick(found, [args.variant])
    conversations = servers.held_out_conversations(args.home, args.run)
    peak = sweep(candidate, conversations, levels, args)
    if args.both_kv:
        args.unified_kv = True
        unified = sweep(candidate, conversations, levels, args)
        print(f"\na stream per slot ÷ the unified cache, peak tok/s: {peak / unified:.2f}")
        args.unified_kv = False
    if args.both_batching:
        args.one_at_a_time = True
        alone = sweep(candidate, conversations, levels, args)
        print(f"\ncontinuous batching ÷ one request at a time, peak tok/s: {peak / alone:.2f}")
        args.one_at_a_time = False
    if args.one_billion:
        (q8,) = roofline.one_billion(args.folder, ["q8_0"])
        big = candidates.Candidate(name=q8.name, label=q8.name, format="gguf", path=str(q8))
        sweep(big, conversations, levels, args)


if __name__ == "__main__":
    main()
