"""Evaluate one model in a worker (task `eval.model`).

Runs lm-eval on the job's tasks with the model its format's spec names (`evaluator`,
`workbench.core.formats`): GGUF through the in-process llama.cpp LM, everything else through lm-eval's
`hf` backend on the model `formats.load_for_inference` gives (GPTQ/AWQ through GPTQModel's kernels, nf4
through bitsandbytes'), then the fidelity comparison against the reference model, then the
log-likelihoods of held-out preference pairs. Writes per-sample `samples/*.jsonl` into the job's `out`
folder and returns the summary. A crash here fails one model, not the stage.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.core import formats, safe
from workbench.eval.fidelity import Fidelity
from workbench.eval.preference import Pair
from workbench.workers.child import Channel

if TYPE_CHECKING:
    from workbench.eval.fidelity import LogitsOf


@dataclass(frozen=True)
class FidelityJob:
    """The comparison with the reference: its folder and the token ids both models read."""

    reference: str  # the merged model's folder
    sequences: list[list[int]]
    answers: list[int]  # where each sequence's answer starts


@dataclass(frozen=True)
class EvalJob:
    """One model's evaluation (task `eval.model`): lm-eval's settings, then what else to measure."""

    name: str
    format: str
    path: str  # the model's file or folder
    out: Path  # per-sample files go here
    device: str  # where torch-loaded models run
    tasks: list[str]
    include: Path  # the task folder lm-eval reads
    include_defaults: bool  # lm-eval's own tasks too
    limit: int | None
    num_fewshot: int | None
    seed: int
    batch_size: int
    max_length: int
    bootstrap_iters: int
    lora: str | None = None  # an adapter variant's GGUF adapter
    fidelity: FidelityJob | None = None  # None: not compared (the reference itself, the base model)
    preference: list[Pair] | None = None  # held-out preference pairs to score


@dataclass(frozen=True)
class MetricRow:
    """One number lm-eval reported."""

    task: str
    metric: str  # "exact_match", or "exact_match,strip" for a filter other than "none"
    value: float
    stderr: float | None
    higher_is_better: bool | None  # lm-eval's own direction, when it says


@dataclass(frozen=True)
class ItemRow:
    """A metric's value per document, for the metrics lm-eval scores item by item."""

    task: str
    metric: str
    values: dict[int, float]  # document id -> value


@dataclass(frozen=True)
class EvalResult:
    """What one evaluation found; a part that did not run is None."""

    name: str
    format: str
    seconds: dict[str, float]  # per phase: load, lm_eval, fidelity, preference
    metrics: list[MetricRow] | None = None
    items: list[ItemRow] | None = None
    samples: dict[str, int] | None = None  # task -> documents scored
    n_shot: dict[str, int] | None = None
    versions: dict[str, Any] | None = None  # lm-eval's task versions: whatever a task file says
    fidelity: Fidelity | None = None
    preference: dict[str, list[float]] | None = None  # "chosen", "rejected": log-likelihood per pair


@dataclass
class EvalModel:
    """A model as the evaluation asks it: an lm-eval LM, and its logits for the fidelity comparison."""

    lm: Any  # an lm_eval.api.model.LM
    logits: LogitsOf


def llamacpp_model(job: EvalJob) -> EvalModel:
    from workbench.eval.llamacpp_lm import LlamaCppLM

    lm = LlamaCppLM(pretrained=job.path, max_length=job.max_length, seed=job.seed, lora=job.lora)
    return EvalModel(lm, lm.logits_of)


def transformers_model(job: EvalJob) -> EvalModel:
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    from workbench.eval.fidelity import hf_logits

    model = formats.load_for_inference(job.path, job.format, job.device)
    tokenizer = AutoTokenizer.from_pretrained(job.path)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=job.batch_size, max_length=job.max_length)
    return EvalModel(lm, hf_logits(model, job.batch_size))


def load_model(job: EvalJob) -> EvalModel:
    evaluator: Any = formats.resolve(formats.spec(job.format).evaluator)
    return evaluator(job)


def lm_eval_rows(
    results: dict[str, dict[str, Any]], directions: dict[str, dict[str, bool]] | None = None
) -> list[MetricRow]:
    """lm-eval's `{task: {"metric,filter": value, "metric_stderr,filter": err}}` as flat rows, each with
    lm-eval's own `higher_is_better` for the metric when it says."""
    rows = []
    directions = directions or {}
    for task, values in results.items():
        for key, value in values.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or metric.endswith("_stderr") or not isinstance(value, int | float):
                continue
            stderr = values.get(f"{metric}_stderr,{filter_name}")
            rows.append(
                MetricRow(
                    task=task,
                    metric=metric if filter_name == "none" else f"{metric},{filter_name}",
                    value=float(value),
                    stderr=float(stderr) if isinstance(stderr, int | float) else None,
                    higher_is_better=directions.get(task, {}).get(metric),
                )
            )
    return rows


def item_values(samples: dict[str, list[dict[str, Any]]]) -> list[ItemRow]:
    """Per-item values of every metric lm-eval scores item by item (a number per sample: accuracy, exact
    match; not corpus-level ones such as perplexity, whose samples are pairs), keyed like `lm_eval_rows`."""
    found: dict[tuple[str, str], dict[int, float]] = {}
    for task, records in samples.items():
        for record in records:
            filter_name = record.get("filter", "none")
            for metric in record.get("metrics", []):
                value = record.get(metric)
                if isinstance(value, bool | int | float):
                    key = metric if filter_name == "none" else f"{metric},{filter_name}"
                    found.setdefault((task, key), {})[int(record["doc_id"])] = float(value)
    return [ItemRow(task, metric, values) for (task, metric), values in found.items()]


def sandbox_templates() -> None:
    """lm-eval renders a task's doc_to_text, doc_to_target, … with a plain Jinja environment, in which
    `{{ cycler.__init__.__globals__.os.popen(...) }}` runs a command. Swap in Jinja's sandbox (same
    settings and filters): templates keep working, attribute access to Python internals is refused."""
    import lm_eval.utils
    from jinja2.sandbox import SandboxedEnvironment

    plain = lm_eval.utils.env
    sandbox = SandboxedEnvironment(loader=plain.loader, undefined=plain.undefined, keep_trailing_newline=True)
    sandbox.filters.update(plain.filters)
    lm_eval.utils.env = sandbox


def run_lm_eval(lm: Any, job: EvalJob, result: EvalResult) -> EvalResult:
    """`result` with lm-eval's numbers; per-sample files into the job's `out` folder."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    sandbox_templates()

    manager = TaskManager(include_path=str(job.include), include_defaults=job.include_defaults)
    seed = job.seed
    output = lm_eval.simple_evaluate(
        model=lm,
        tasks=job.tasks,
        task_manager=manager,
        limit=job.limit,
        num_fewshot=job.num_fewshot,
        log_samples=True,
        bootstrap_iters=job.bootstrap_iters,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    samples_dir = job.out / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    for task, samples in output.get("samples", {}).items():
        with open(samples_dir / f"{task}.jsonl", "w", encoding="utf-8") as f:
            for sample in samples:
                f.write(safe.json_text(sample, default=handle_non_serializable, ensure_ascii=False) + "\n")
    return replace(
        result,
        metrics=lm_eval_rows(output["results"], output.get("higher_is_better")),
        items=item_values(output.get("samples", {})),
        samples={task: len(samples) for task, samples in output.get("samples", {}).items()},
        n_shot=output.get("n-shot", {}),
        versions=output.get("versions", {}),
    )


def run_fidelity(model: EvalModel, job: EvalJob, spec: FidelityJob) -> Fidelity:
    import torch
    from transformers import AutoModelForCausalLM

    from workbench.eval import fidelity

    # the reference in float32 on any device: the yardstick every variant is measured against
    reference: Any = AutoModelForCausalLM.from_pretrained(spec.reference, dtype=torch.float32)
    reference_logits = fidelity.hf_logits(reference.to(job.device).eval(), job.batch_size)
    return fidelity.compare(spec.sequences, reference_logits, model.logits, spec.answers)


def evaluate_job(job: EvalJob, channel: Channel) -> EvalResult:
    job.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    channel.phase("loading")
    model = load_model(job)
    lm = model.lm
    seconds = {"load": round(time.perf_counter() - started, 2)}
    result = EvalResult(job.name, job.format, seconds)
    if job.tasks:
        channel.phase("lm-eval")
        started = time.perf_counter()
        result = run_lm_eval(lm, job, result)
        seconds["lm_eval"] = round(time.perf_counter() - started, 2)
    if job.fidelity:
        channel.phase("fidelity")
        started = time.perf_counter()
        result = replace(result, fidelity=run_fidelity(model, job, job.fidelity))
        seconds["fidelity"] = round(time.perf_counter() - started, 2)
    if job.preference:
        from workbench.eval.preference import log_likelihoods

        channel.phase("preference")
        started = time.perf_counter()
        result = replace(result, preference=log_likelihoods(lm, [asdict(pair) for pair in job.preference]))
        seconds["preference"] = round(time.perf_counter() - started, 2)
    if hasattr(lm, "close"):
        lm.close()
    return result
