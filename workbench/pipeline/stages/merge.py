"""Merge stage: the adapter folded into the base (workbench.train.merge), saved as a plain checkpoint in the
recipe's dtype."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workbench.core import preflight
from workbench.core.fsutil import dir_size
from workbench.core.models import resolve_model
from workbench.core.recipe import Recipe
from workbench.core.records import Artifact
from workbench.pipeline.stages.base import Stage, StageContext
from workbench.train.merge import merge_adapter, save_merged


def key_inputs(recipe: Recipe) -> dict[str, Any]:
    return {"merge": recipe.merge.model_dump(mode="json"), "merge_base": recipe.merge_base}


def run(ctx: StageContext) -> list[Artifact]:
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedModel

    trained = ctx.inputs["train"]
    summary = json.loads((trained / "train_summary.json").read_text())
    base = resolve_model(ctx.recipe.base_model)
    if Path(base).is_dir():
        params = preflight.parameter_count(Path(base) if summary["method"] != "full" else trained)
        out_bytes = 4 if ctx.recipe.merge.dtype == "float32" else 2
        # fp32 base + merged copy of the adapted layers; output in the merge dtype
        preflight.require_room("merge", ctx.run_dir, params * out_bytes * 1.05, params * 4 * 1.6)
    tune = ctx.inputs.get("tune")
    model: PreTrainedModel
    if summary["method"] == "full":
        model = AutoModelForCausalLM.from_pretrained(trained, dtype=torch.float32)
    else:
        merge_base = ctx.recipe.merge_base
        ctx.say(f"merging adapter into {'dequantized nf4' if merge_base != 'original' else '16-bit'} base")
        if tune is None:
            model = merge_adapter(base, trained, merge_base)
        elif ctx.recipe.tune and ctx.recipe.tune.start == "merged":
            ctx.say("then the preference-tuned adapter, trained on the merged supervised model")
            model = merge_adapter(base, trained, merge_base, then=tune / "adapter")
        else:
            model = merge_adapter(base, tune / "adapter", merge_base)
    save_merged(model, ctx.out, ctx.recipe.merge.dtype, base, tune / "adapter" if tune else trained)
    size = dir_size(ctx.out)
    ctx.say(f"merged model saved ({size / 1e6:.0f} MB, {ctx.recipe.merge.dtype})")
    meta = {"dtype": ctx.recipe.merge.dtype, "base_model": base, "method": summary["method"]}
    if summary["method"] != "full":
        meta["merge_base"] = ctx.recipe.merge_base
    return [Artifact("merged", "model", ".", size, meta)]


STAGE = Stage(name="merge", needs=("train", "tune"), key_inputs=key_inputs, run=run)
