"""A model card per variant, as the Hugging Face Hub reads them: YAML metadata (`base_model`,
`base_model_relation`, `library_name`, `tags`, `license`), how the variant was made, its rows of the
comparison table, the prompt format and stop tokens, and how to run it. Built from the run's records."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import yaml

from workbench.core import formats
from workbench.core.models import ModelError, load_registry
from workbench.core.records import Variant
from workbench.report import table
from workbench.report.write import RunReport

# a variant of a format this installation does not know (made with a plugin now absent) reads as this one
UNKNOWN = formats.FormatSpec(name="unknown")


def spec_of(variant: Variant) -> formats.FormatSpec:
    return formats.find(variant.format) or UNKNOWN


def hub_base(base_model: str) -> tuple[str | None, str | None]:
    """The recipe's base model as a Hub id and its license: a registry name's `hub_id`, or a hub id as
    given; None for a local folder (no id to point at)."""
    try:
        _, entries = load_registry()
    except (OSError, ModelError, KeyError):
        entries = {}
    if base_model in entries:
        return entries[base_model].hub_id, entries[base_model].license
    if "/" in base_model and not base_model.startswith((".", "/", "~")):
        return base_model, None
    return None, None


def metadata(report: RunReport, variant: Variant) -> dict[str, Any]:
    recipe = report.recipe
    base, license_ = hub_base(str(recipe.get("base_model", "")))
    method = (recipe.get("train") or {}).get("method", "lora")
    spec = spec_of(variant)
    quantized = spec.quantized(variant.bits)
    meta: dict[str, Any] = {}
    if base:
        meta["base_model"] = base
        meta["base_model_relation"] = "quantized" if quantized else "finetune"
    if license_:
        meta["license"] = license_
    meta["library_name"] = spec.library
    meta["pipeline_tag"] = "text-generation"
    objective = (recipe.get("tune") or {}).get("objective")  # dpo, grpo, ... after the supervised fine-tune
    tags = ["workbench", method, *([objective] if objective else []), variant.format]
    if spec.hub_tag:
        tags.append(spec.hub_tag)
    if variant.meta.get("type"):
        tags.append(str(variant.meta["type"]))
    meta["tags"] = list(dict.fromkeys(tags))
    return meta


def quantization(variant: Variant) -> str | None:
    """How a GGUF file was quantized, in a line: the types its tensors hold (read back from the file), its
    importance matrix (or the measured choice of none) and a searched plan."""
    held = variant.meta.get("tensor_types")
    if not held:
        return None
    parts = ["tensors " + " ".join(f"{kind}x{count}" for kind, count in sorted(held.items(), key=lambda kv: -kv[1]))]
    matrix = variant.meta.get("imatrix")
    if matrix:
        parts.append(
            f"imatrix {matrix['source']} ({matrix['rows']} rows, {matrix['chunks']}x{matrix['context']} tokens)"
        )
    elif "imatrix" in variant.meta:
        parts.append("no imatrix")
    choice = variant.meta.get("imatrix_choice")
    if choice:
        parts.append(f"chosen by KLD none {choice['none']['kld']:.4f} / task {choice['task']['kld']:.4f}")
    searched = variant.meta.get("search")
    if searched:
        parts.append(f"searched under {searched['budget']}: {searched['compact']}")
    return " · ".join(parts)


def how_made(report: RunReport, variant: Variant) -> list[str]:
    recipe = report.recipe
    train, merge = recipe.get("train") or {}, recipe.get("merge") or {}
    data = recipe.get("data") or {}
    lines = [
        f"- Fine-tuned from `{recipe.get('base_model')}` with {train.get('method', 'lora')}"
        f" on `{data.get('path', '?')}` ({train.get('max_steps') or train.get('epochs') or '?'}"
        f" {'steps' if train.get('max_steps') else 'epochs'}), by the workbench (recipe `{recipe.get('name')}`).",
    ]
    tune = recipe.get("tune") or {}
    if tune.get("objective"):
        source = (tune.get("data") or {}).get("path") or "the supervised rows"
        lines.append(
            f"- Then tuned with {tune['objective'].upper()} (beta {tune.get('beta', 0.1)}) on `{source}`, starting"
            f" from the supervised {tune.get('start', 'adapter')}."
        )
    lines.append(f"- Merged into a {merge.get('dtype', 'bfloat16')} model.")
    if (train.get("qat") or {}).get("target"):
        lines.append(f"- Trained for the rounding of {train['qat']['target']} (quantization-aware).")
    if not variant.is_reference:  # the merged model is what the others were exported from
        quantizer = " ".join(part for part in (variant.quantizer, variant.quantizer_version) if part)
        lines.append(
            f"- Exported as {variant.format} ({variant.bits:g} bits){' with ' + quantizer if quantizer else ''}."
        )
    said = quantization(variant)
    if said:
        lines.append(f"- Quantized: {said}.")
    return lines


def rows_table(report: RunReport, variant: Variant) -> str:
    """This variant's row of the comparison table, with the merged model's and the base model's."""
    rows = [r for r in report.comparison.rows if r.name == variant.name or r.role in ("reference", "base")]
    return table.markdown(replace(report.comparison, rows=rows))


def prompt_format(report: RunReport, variant: Variant) -> list[str]:
    serving = variant.meta.get("serving") or {}
    system = (report.recipe.get("data") or {}).get("system_prompt")
    lines = [f"- Chat template: the one it was trained with, {spec_of(variant).template_where}."]
    if serving.get("template"):
        lines.append(f"- Template family: {serving['template']}.")
    if serving.get("stops"):
        lines.append("- Stop tokens: " + ", ".join(f"`{stop}`" for stop in serving["stops"]) + ".")
    lines.append(f"- System prompt used in training: `{system}`" if system else "- No system prompt in training.")
    return lines


def how_to_run(repo: str, variant: Variant) -> list[str]:
    file = variant.path.rsplit("/", 1)[-1]
    lines = [line.format(repo=repo, file=file) for line in spec_of(variant).how_to_run]
    modelfile = (variant.meta.get("serving") or {}).get("modelfile")
    if modelfile:
        lines.append(f"ollama create my-model -f {modelfile}   # Modelfile in this repository")
    return [*lines, "```"]


def model_card(report: RunReport, variant: Variant, repo: str) -> str:
    front = yaml.safe_dump(metadata(report, variant), sort_keys=False, allow_unicode=True)
    parts = [f"---\n{front}---", "", f"# {repo.rsplit('/', 1)[-1]}", ""]
    parts += ["## How it was made", "", *how_made(report, variant), ""]
    parts += ["## Results", "", rows_table(report, variant), ""]
    if report.comparison.task:
        parts += [f"Task score: {report.comparison.task} {report.comparison.metric} on held-out rows; "
                  "KLD and top-1 agreement against the merged model.", ""]  # fmt: skip
    parts += ["## Prompt format", "", *prompt_format(report, variant), ""]
    parts += ["## How to run", "", *how_to_run(repo, variant), ""]
    return "\n".join(parts)
