"""Eval stage: the same lm-eval tasks, shots, limits and seeds on the base model, the merged model and
every exported variant, plus each variant's fidelity to the merged model. One model per child process;
one failing model never stops the others."""

from __future__ import annotations

import difflib
import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict, fields, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from workbench import workers
from workbench.core import safe
from workbench.core.devices import gpu_slots, pick_device
from workbench.core.errors import StageFailed
from workbench.core.fsutil import atomic_write_text, hash_path
from workbench.core.models import display_name, resolve_model
from workbench.core.paths import BUILTIN_EVALS
from workbench.core.recipe import Recipe
from workbench.core.records import Artifact, ItemScores, Metric
from workbench.data.files import read_jsonl
from workbench.eval import preference, tasks
from workbench.eval.fidelity import answer_starts, fidelity_sequences
from workbench.eval.worker import EvalJob, EvalResult, FidelityJob
from workbench.pipeline.stages.base import Stage, StageContext, failure_line
from workbench.workers import wire


class EvalFailed(StageFailed):
    pass


SUPERVISED = "supervised"  # the eval's name for the supervised model preference tuning started from
REWARD_MODEL = "reward-model"


def task_folders(recipe: Recipe) -> list[Path]:
    return [BUILTIN_EVALS, *(recipe.resolve_path(folder) for folder in recipe.eval.include)]


def key_inputs(recipe: Recipe) -> dict[str, Any]:
    return {
        "eval": recipe.eval.model_dump(mode="json", exclude={"timeout_s"}),
        "task_files": [hash_path(folder) if folder.exists() else None for folder in task_folders(recipe)],
        "lm_eval": metadata.version("lm_eval"),
        "llama_cpp": metadata.version("llama_cpp_python"),
    }


def check_task_names(requested: list[str], local: list[str], task_dir: Path) -> bool:
    """Refuse unknown task names before any model loads; returns whether lm-eval's own tasks are needed."""
    outside = [name for name in requested if name not in local]
    if not outside:
        return False
    from lm_eval.tasks import TaskManager

    known = set(TaskManager(include_path=str(task_dir)).all_tasks)
    unknown = [name for name in outside if name not in known]
    if unknown:
        hints = [f"{name} (did you mean {', '.join(difflib.get_close_matches(name, known, n=3))}?)" for name in unknown]
        raise tasks.TaskError(f"eval.tasks: unknown task(s): {'; '.join(hints)}")
    return True


def models_to_evaluate(ctx: StageContext) -> list[dict[str, Any]]:
    """Base model (optional), the supervised model (when the recipe tunes after it), the merged reference
    and every variant the export stage finished."""
    models = []
    if ctx.recipe.eval.base:
        base = resolve_model(ctx.recipe.base_model)
        models.append({"name": display_name(ctx.recipe.base_model), "format": "hf", "path": base, "role": "base"})
    if "tune" in ctx.inputs:  # the supervised model: what preference tuning started from
        models.append({"name": SUPERVISED, "format": "hf", "path": str(ctx.inputs["tune"] / "sft"), "role": "sft"})
    for variant in ctx.store.variants(ctx.run_id):
        if variant.status != "done":
            continue
        role = "reference" if variant.is_reference else "variant"
        model = {"name": variant.name, "format": variant.format, "path": variant.path, "role": role}
        models.append({**model, "lora": variant.meta["lora"]} if variant.meta.get("lora") else model)
    return models


def fingerprint_of(model: dict[str, Any]) -> str | None:
    fingerprint = files_fingerprint(Path(model["path"]))
    if model.get("lora"):  # an adapter variant is its base file and its adapter
        fingerprint = f"{fingerprint}+{files_fingerprint(Path(model['lora']))}"
    return fingerprint


def kept_summary(ctx: StageContext, model: dict[str, Any]) -> dict[str, Any] | None:
    """A model's results from an interrupted attempt of this stage (kept in its work folder), if its files
    are unchanged: it is not evaluated again."""
    done = ctx.work / "models" / model["name"] / "results.json"
    kept = json.loads(done.read_text()) if done.is_file() else {}
    if kept and kept.get("fingerprint") == fingerprint_of(model):
        ctx.say(f"{model['name']}: evaluated earlier (kept from an interrupted attempt)")
        return kept
    return None


def start_evaluation(ctx: StageContext, model: dict[str, Any], common: EvalJob, device: str | None) -> workers.Running:
    """One model's evaluation in a worker (pinned to one GPU when `device` names it)."""
    out = ctx.work / "models" / model["name"]
    ctx.remove(out)
    job = replace(
        common,
        name=model["name"],
        format=model["format"],
        path=model["path"],
        lora=model.get("lora"),
        out=out,
        # the reference is itself; the base model is not an export of it
        fidelity=common.fidelity if model["role"] == "variant" else None,
    )
    ctx.say(f"evaluating {model['name']} ({model['format']})" + (f" on GPU {device}" if device else ""))
    return ctx.start_worker(
        "eval.model",
        job,
        name=model["name"],
        timeout=ctx.recipe.eval.timeout_s,
        echo=True,
        env=workers.device_env(device),
    )


def summary_of(result: EvalResult) -> dict[str, Any]:
    """A worker's result as the stage keeps it (results.json): the parts that ran, in this order."""
    found: dict[str, Any] = {"name": result.name, "format": result.format, "seconds": dict(result.seconds)}
    if result.metrics is not None:
        found |= {
            "metrics": [asdict(row) for row in result.metrics],
            "items": [asdict(row) for row in result.items or []],
            "samples": result.samples,
            "n_shot": result.n_shot,
            "versions": result.versions,
        }
    if result.fidelity is not None:
        found["fidelity"] = result.fidelity.to_dict()
    if result.preference is not None:
        found["preference"] = result.preference
    return found


def result_of(summary: dict[str, Any]) -> EvalResult:
    """A kept summary (results.json) as the worker's result it was made from."""
    parts = {field.name: summary[field.name] for field in fields(EvalResult) if field.name in summary}
    return wire.decode(EvalResult, parts, f"{summary.get('name')}: kept evaluation")


def finish_evaluation(ctx: StageContext, model: dict[str, Any], outcome: workers.Outcome) -> dict[str, Any]:
    """The worker's summary, kept in the work folder until the stage ends. Raises WorkerFailed."""
    summary = summary_of(outcome.value_as(EvalResult))
    summary["seconds"]["total"] = outcome.seconds
    summary["peak_mem_mb"] = outcome.peak_rss_mb
    summary["fingerprint"] = fingerprint_of(model)
    atomic_write_text(ctx.work / "models" / model["name"] / "results.json", safe.json_text(summary, indent=2))
    return summary


def evaluations(
    ctx: StageContext, models: list[dict[str, Any]], common: EvalJob
) -> Iterator[tuple[dict[str, Any], dict[str, Any] | Exception]]:
    """(model, its summary or why it failed) for every model: kept ones first, then the rest in workers,
    one per GPU at a time on a machine with several (one after another otherwise)."""
    todo = []
    for model in models:
        kept = kept_summary(ctx, model)
        if kept is None:
            todo.append(model)
        else:
            yield model, kept
    slots: list[str | None] = list(gpu_slots()) or [None]
    for model, ended in workers.spread(todo, lambda m, device: start_evaluation(ctx, m, common, device), slots):
        summary: dict[str, Any] | Exception
        try:
            if isinstance(ended, Exception):
                raise ended
            summary = finish_evaluation(ctx, model, ended)
        except Exception as exc:  # noqa: BLE001 - reported with the model's name by the caller
            summary = exc
        yield model, summary


def files_fingerprint(path: Path) -> str | None:
    """Size and modification time of a model's files: a re-exported variant is evaluated again."""
    if not path.exists():
        return None  # a hub id
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def store_rows(model: dict[str, Any], result: EvalResult) -> list[Metric]:
    """A worker's result as the store's records: lm-eval's rows, then the fidelity numbers."""
    name, role = model["name"], model["role"]
    rows = [Metric(name, role, r.task, r.metric, r.value, r.stderr, r.higher_is_better) for r in result.metrics or []]
    fidelity = result.fidelity.to_dict() if result.fidelity else {}
    rows += [Metric(name, role, "fidelity", key, value) for key, value in fidelity.items()]
    return rows


def store_items(model: dict[str, Any], result: EvalResult) -> list[ItemScores]:
    """Per-item values."""
    return [ItemScores(model["name"], r.task, r.metric, dict(r.values)) for r in result.items or []]


def held_out_pairs(ctx: StageContext, tokenizer: Any) -> list[preference.Pair]:
    """The tune stage's held-out preference pairs, rendered (none when the recipe does not tune on pairs)."""
    if "tune" not in ctx.inputs or not (ctx.inputs["tune"] / "held_out.jsonl").is_file():
        return []
    return preference.render_pairs(read_jsonl(ctx.inputs["tune"] / "held_out.jsonl"), tokenizer)


def preference_metrics(
    ctx: StageContext, summaries: dict[str, dict[str, Any]], numbers: list[int]
) -> tuple[list[Metric], list[ItemScores]]:
    """Each evaluated model's preference accuracy and, against the supervised model, implicit reward."""
    assert ctx.recipe.tune is not None
    done = {name: s for name, s in summaries.items() if s.get("status") == "done" and s.get("preference")}
    reference = done.get(SUPERVISED, {}).get("preference")
    rows: list[Metric] = []
    items: list[ItemScores] = []
    for name, summary in done.items():
        role = summary["role"]
        scores = preference.score(numbers, summary["preference"], reference, ctx.recipe.tune.beta)
        rows.append(Metric(name, role, preference.TASK, "accuracy", scores.accuracy, None, True))
        items.append(ItemScores(name, preference.TASK, "accuracy", scores.per_item))
        if scores.reward_margin is not None and role != "sft":
            rows.append(Metric(name, role, preference.TASK, "reward_margin", scores.reward_margin, None, True))
            rows.append(Metric(name, role, preference.TASK, "reward_accuracy", scores.reward_accuracy, None, True))
    return rows, items


def reward_model_metrics(ctx: StageContext) -> list[Metric]:
    """The reward model's own pairwise accuracy and margin on its held-out pairs (measured by its stage)."""
    path = ctx.inputs["reward"] / "reward_summary.json" if "reward" in ctx.inputs else None
    if path is None or not path.is_file():
        return []
    held = json.loads(path.read_text())["held_out"]
    if not held.get("pairs"):
        return []
    return [
        Metric(REWARD_MODEL, "reward", preference.TASK, key, held[key], None, True) for key in ("accuracy", "margin")
    ]


def reward_of_answers(
    ctx: StageContext, summaries: dict[str, dict[str, Any]], held_out: list[dict[str, Any]]
) -> list[Metric]:
    """The recipe's reward model's mean score of each model's own (greedy) answers to the held-out prompts,
    read from its `heldout` samples: what online RL against that reward model did, per variant."""
    if "reward" not in ctx.inputs or not held_out or "messages" not in held_out[0]:
        return []
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = ctx.inputs["reward"] / "model"
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = []
    for name, summary in summaries.items():
        samples = ctx.out / "models" / name / "samples" / f"{tasks.HELDOUT}.jsonl"
        if summary.get("status") != "done" or not samples.is_file():
            continue
        texts = []
        for record in read_jsonl(samples):
            answer = {"role": "assistant", "content": str(record["filtered_resps"][0])}
            messages = held_out[int(record["doc_id"])]["messages"][:-1] + [answer]
            texts.append(str(tokenizer.apply_chat_template(messages, tokenize=False)))
        scores = preference.sequence_scores(model, tokenizer, texts)
        if scores:
            mean = sum(scores) / len(scores)
            rows.append(Metric(name, summary["role"], REWARD_MODEL, "mean_score", mean, None, True))
    return rows


def run(ctx: StageContext) -> list[Artifact]:
    from transformers import AutoTokenizer

    section = ctx.recipe.eval
    merged_dir = ctx.inputs["merge"]
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    pairs = held_out_pairs(ctx, tokenizer)
    if not section.tasks and not section.fidelity_rows and not pairs:
        ctx.say("nothing to evaluate (eval.tasks is empty, eval.fidelity_rows is 0, no held-out preference pairs)")
        ctx.store.replace_metrics(ctx.run_id, [])
        return []
    held_out = read_jsonl(ctx.inputs["data"] / "held_out.jsonl")
    run_tasks = ctx.out / "tasks"  # the run's own tasks (held-out), kept with its results
    run_tasks.mkdir(parents=True)
    if tasks.HELDOUT in section.tasks:
        tasks.heldout_task(held_out, tokenizer, run_tasks, section.metric, section.max_gen_tokens)
    task_dir = ctx.work / "lm-eval-tasks"
    ctx.remove(task_dir)
    local = tasks.copy_task_folders([run_tasks, *task_folders(ctx.recipe)], task_dir, section.trust_task_code)
    include_defaults = check_task_names(section.tasks, local, task_dir)
    against = None
    if section.fidelity_rows:
        sequences = fidelity_sequences(held_out, tokenizer, section.fidelity_rows)
        against = FidelityJob(str(merged_dir), sequences, answer_starts(held_out, tokenizer, sequences))
    common = EvalJob(  # each model's job is this one with its name, format, path and folder
        name="",
        format="",
        path="",
        out=ctx.work,
        device=pick_device(section.device),
        tasks=section.tasks,
        include=task_dir,
        include_defaults=include_defaults,
        limit=section.limit,
        num_fewshot=section.num_fewshot,
        seed=section.seed,
        batch_size=section.batch_size,
        max_length=section.max_length,
        bootstrap_iters=section.bootstrap_iters,
        fidelity=against,
        preference=pairs or None,
    )
    models = models_to_evaluate(ctx)
    rows: list[Metric] = []
    items: list[ItemScores] = []
    summaries: dict[str, dict[str, Any]] = {}
    for model, summary in evaluations(ctx, models, common):
        if isinstance(summary, Exception):  # one model's failure is recorded, the rest go on
            error = failure_line(model["name"], summary)
            ctx.failures.append(error.splitlines()[0])
            ctx.say(f"FAILED: {error}")
            summaries[model["name"]] = {**model, "status": "failed", "error": error}
            continue
        summaries[model["name"]] = {**model, "status": "done", **summary}
        result = result_of(summary)
        scored = store_rows(model, result)
        rows += scored
        items += store_items(model, result)
        ctx.event("evaluated", name=model["name"], metrics=[asdict(m) for m in scored])
    summaries = {model["name"]: summaries[model["name"]] for model in models}  # in the models' order
    if pairs:
        scored_pairs, pair_items = preference_metrics(ctx, summaries, [pair.number for pair in pairs])
        rows += scored_pairs
        items += pair_items
    rows += reward_model_metrics(ctx)
    if not rows:
        raise EvalFailed("every evaluation failed: " + "; ".join(ctx.failures))
    results_dir = ctx.work / "models"
    shutil.move(results_dir, ctx.out / "models")
    rows += reward_of_answers(ctx, summaries, held_out)
    results = ctx.out / "results.json"
    atomic_write_text(
        results, safe.json_text({"models": list(summaries.values()), "metrics": [asdict(m) for m in rows]}, indent=2)
    )
    ctx.store.replace_metrics(ctx.run_id, rows, items)
    return [Artifact("eval-results", "eval", results.name, results.stat().st_size)]


STAGE = Stage(name="eval", needs=("data", "reward", "tune", "merge", "export"), key_inputs=key_inputs, run=run)
