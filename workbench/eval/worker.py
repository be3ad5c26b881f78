"""Evaluate one model in a worker (task `eval.model`).

Runs lm-eval on the job's tasks (GGUF through the in-process llama.cpp LM, everything else through
lm-eval's `hf` backend, which loads GPTQ/AWQ through GPTQModel and nf4 through bitsandbytes), then the
fidelity comparison against the reference model, then the log-likelihoods of held-out preference pairs.
Writes per-sample `samples/*.jsonl` into the job's `out` folder and returns the summary. A crash here
fails one model, not the stage.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from workbench.core import safe
from workbench.core.devices import compute_dtype
from workbench.workers.child import Channel


def load_lm(job: dict[str, Any]) -> Any:
    if job["format"] == "gguf":
        from workbench.eval.llamacpp_lm import LlamaCppLM

        return LlamaCppLM(pretrained=job["path"], max_length=job["max_length"], seed=job["seed"], lora=job.get("lora"))
    from lm_eval.models.huggingface import HFLM

    if job["format"] == "nf4" and job["device"] == "cpu":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from workbench.export.nf4 import dequantized

        model = dequantized(AutoModelForCausalLM.from_pretrained(job["path"], device_map={"": "cpu"}), torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(job["path"])
        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=job["batch_size"], max_length=job["max_length"])
    return HFLM(
        pretrained=job["path"],
        device=job["device"],
        dtype=compute_dtype(job["format"], job["device"]),
        batch_size=job["batch_size"],
        max_length=job["max_length"],
    )


def lm_eval_rows(
    results: dict[str, dict[str, Any]], directions: dict[str, dict[str, bool]] | None = None
) -> list[dict[str, Any]]:
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
                {
                    "task": task,
                    "metric": metric if filter_name == "none" else f"{metric},{filter_name}",
                    "value": float(value),
                    "stderr": float(stderr) if isinstance(stderr, int | float) else None,
                    "higher_is_better": directions.get(task, {}).get(metric),
                }
            )
    return rows


def item_values(samples: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
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
    return [{"task": task, "metric": metric, "values": values} for (task, metric), values in found.items()]


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


def run_lm_eval(lm: Any, job: dict[str, Any], out: Path) -> dict[str, Any]:
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    sandbox_templates()

    manager = TaskManager(include_path=job["include"], include_defaults=job["include_defaults"])
    seed = job["seed"]
    output = lm_eval.simple_evaluate(
        model=lm,
        tasks=job["tasks"],
        task_manager=manager,
        limit=job["limit"],
        num_fewshot=job["num_fewshot"],
        log_samples=True,
        bootstrap_iters=job["bootstrap_iters"],
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    samples_dir = out / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    for task, samples in output.get("samples", {}).items():
        with open(samples_dir / f"{task}.jsonl", "w", encoding="utf-8") as f:
            for sample in samples:
                f.write(safe.json_text(sample, default=handle_non_serializable, ensure_ascii=False) + "\n")
    return {
        "metrics": lm_eval_rows(output["results"], output.get("higher_is_better")),
        "items": item_values(output.get("samples", {})),
        "samples": {task: len(samples) for task, samples in output.get("samples", {}).items()},
        "n_shot": output.get("n-shot", {}),
        "versions": output.get("versions", {}),
    }


def run_fidelity(lm: Any, job: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from workbench.eval import fidelity

    spec = job["fidelity"]
    reference = AutoModelForCausalLM.from_pretrained(spec["reference"], dtype=torch.float32).to(job["device"])
    batch = job["batch_size"]
    variant = lm.logits_of if job["format"] == "gguf" else fidelity.hf_logits(lm.model, batch)
    reference_logits = fidelity.hf_logits(reference.eval(), batch)
    result = fidelity.compare(spec["sequences"], reference_logits, variant, spec.get("answers"))
    return result.to_dict()


def evaluate_job(job: dict[str, Any], channel: Channel) -> dict[str, Any]:
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    channel.phase("loading")
    lm = load_lm(job)
    result: dict[str, Any] = {"name": job["name"], "format": job["format"], "seconds": {}}
    result["seconds"]["load"] = round(time.perf_counter() - started, 2)
    if job["tasks"]:
        channel.phase("lm-eval")
        started = time.perf_counter()
        result.update(run_lm_eval(lm, job, out))
        result["seconds"]["lm_eval"] = round(time.perf_counter() - started, 2)
    if job.get("fidelity"):
        channel.phase("fidelity")
        started = time.perf_counter()
        result["fidelity"] = run_fidelity(lm, job)
        result["seconds"]["fidelity"] = round(time.perf_counter() - started, 2)
    if job.get("preference"):
        from workbench.eval.preference import log_likelihoods

        channel.phase("preference")
        started = time.perf_counter()
        result["preference"] = log_likelihoods(lm, job["preference"]["pairs"])
        result["seconds"]["preference"] = round(time.perf_counter() - started, 2)
    if hasattr(lm, "close"):
        lm.close()
    return result
