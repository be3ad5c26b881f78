"""`workbench show`: one run's stages, artifacts, variants, evaluation and training, as text."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from workbench.cli.common import Subcommands, _out, _run_name, _store
from workbench.core import progress  # plain functions over the store (no terminal)
from workbench.core.parity import describe_served
from workbench.core.records import Artifact, Metric, RunRecord, TrainLog, Variant
from workbench.core.store import Store
from workbench.qat.check import describe_grid
from workbench.report.card import quantization
from workbench.report.compare import parity_status

PARITY = {"passed": "ok", "failed": "FAIL", "skipped": "skip"}


def cmd_show(args: argparse.Namespace) -> int:
    store = _store(args)
    run = store.run(args.run)
    if run is None:
        _out(f"no run {args.run!r}; `workbench runs` lists them", file=sys.stderr)
        return 1
    status = store.live_status(run)
    _out(f"run {run.id}  recipe {run.recipe_path or run.name}  status {status}")
    show_stages(store, run, status)
    artifacts = store.artifacts(run.id)
    show_artifacts(artifacts)
    variants = store.variants(run.id)
    if variants:
        show_variants(variants)
        _out(f"serve one: `workbench serve {run.id} --variant NAME` (llama-server commands: the report)")
    metrics = store.metrics(run.id)
    show_evaluation(metrics, args.home / run.id)
    show_training(store.train_logs(run.id), progress.run_recipe(run.recipe_json), artifacts)
    if metrics or store.bench(run.id):
        _out(f"\nspeed, comparison and recommendation: `workbench report {run.id}`")
    return 0


def show_stages(store: Store, run: RunRecord, status: str) -> None:
    """Each stage's status, time and error; for a run whose worker is gone, its last words and how to resume."""
    _out(f"\n{'stage':10} {'status':12} {'time':>9}  error")
    for stage in store.stages(run.id):
        took = f"{stage.seconds:.1f}s" if stage.seconds else "-"
        _out(f"{stage.name:10} {stage.status:12} {took:>9}  {stage.error or ''}")
    if status == "crashed":
        _out(f"\nits worker (pid {run.pid}) is gone; the last lines of {store.worker_log(run.id)}:")
        _out("\n".join(f"  {line}" for line in store.log_tail(run.id)) or "  (empty)")
        _out(f"`workbench run {run.recipe_path or '<recipe>'} --run-id {run.id}` resumes it")


def show_artifacts(artifacts: list[Artifact]) -> None:
    if artifacts:
        _out(f"\n{'artifact':16} {'kind':8} {'size':>10}  path")
        for item in artifacts:
            _out(f"{item.name:16} {item.kind:8} {item.size / 1e6:>8.1f}MB  {item.path}")


def show_variants(variants: list[Variant]) -> None:
    """A row per variant (size, time, peak memory, parity, its smoke answer or why it failed), then what was
    found about each: its grid check, its Ollama Modelfile, its served parity."""
    width = max(44, *(len(v.name) for v in variants))
    _out(
        f"\n{'variant':{width}} {'format':6} {'bits':>5} {'size':>10} {'time':>7} {'peak':>8} {'parity':6}  smoke/error"
    )
    for v in variants:
        size = f"{v.size / 1e6:.1f}MB" if v.size else "-"
        took = f"{v.seconds:.1f}s" if v.seconds else "-"
        peak = f"{v.peak_mem_mb:.0f}MB" if v.peak_mem_mb else "-"
        parity = PARITY.get(parity_status(v.meta.get("parity")) or "", "-")
        _out(f"{v.name:{width}} {v.format:6} {v.bits:>5g} {size:>10} {took:>7} {peak:>8} {parity:6}  {variant_note(v)}")
    for v in variants:
        said = quantization(v)
        if said:
            _out(f"quantized: {v.name}: {said}")
    for v in variants:
        if v.meta.get("grid"):
            _out(f"grid check: {v.name}: {describe_grid(v.meta['grid'])}")
    for v in variants:
        serving = v.meta.get("serving") or {}
        if serving.get("modelfile"):
            _out(f"ollama: {v.name}: `ollama create NAME -f {Path(v.path).parent / serving['modelfile']}`")
        elif serving.get("untranslatable"):
            _out(f"ollama: {v.name}: no Modelfile: {serving['untranslatable']}")
        if v.meta.get("served"):
            _out(f"served: {v.name}: {describe_served(v.meta['served'])}")


def variant_note(variant: Variant) -> str:
    """The start of its smoke answer, or the first line of why it failed."""
    if variant.status == "failed":
        return f"FAILED: {(variant.error or '').splitlines()[0] if variant.error else '?'}"
    smoke = variant.meta.get("smoke")
    return repr(smoke[0]["reply"])[:40] if smoke else "-"


def show_evaluation(metrics: list[Metric], run_dir: Path) -> None:
    if metrics:
        from workbench.report.scores import format_table

        _out("\nevaluation (lm-eval; fidelity vs the merged model: next-token KLD, top-1 agreement, perplexity ratio)")
        _out("\n".join(format_table(metrics)))
        _out(f"per-sample outputs: {run_dir / 'eval' / 'models'}/<model>/samples/")


def show_training(logs: list[TrainLog], recipe: dict[str, Any], artifacts: list[Artifact]) -> None:
    """One line per training stage that logged (train, reward, tune): from its first log to its last."""
    by_stage = {name: [log for log in logs if log.stage == name] for name in progress.TRAINING}
    if any(by_stage.values()):
        _out()
    spread = {a.stage: a.meta["distributed"] for a in artifacts if a.meta.get("distributed")}
    for name, staged in by_stage.items():
        if staged:
            _out(training_summary(name, staged, recipe, spread.get(name)))


def training_summary(stage: str, logs: list[TrainLog], recipe: dict[str, Any], spread: dict[str, Any] | None) -> str:
    """`tune (dpo): step 3/3, loss 0.6930 -> 0.4120, rewards/margins 0.00 -> 1.35, ...`"""
    first, last = logs[0], logs[-1]
    line = f"{'training' if stage == 'train' else progress.stage_label(stage, recipe)}: "
    line += f"step {last.step}/{last.total_steps}, loss {first.loss:.4f} -> {last.loss:.4f}"
    for key in progress.headline_keys(stage, logs):
        values = [log.metrics[key] for log in logs if key in log.metrics]
        line += f", {key} {progress.figure(values[0])} -> {progress.figure(values[-1])}"
    line += f", {last.tokens_per_s} tokens/s" if last.tokens_per_s else ""
    if spread:
        line += f" on {spread['world_size']} processes ({spread['strategy']})"
    return line


def register(sub: Subcommands) -> None:
    show = sub.add_parser("show", help="a run's stages, timings and artifacts")
    show.add_argument("run", type=_run_name)
    show.set_defaults(func=cmd_show)
