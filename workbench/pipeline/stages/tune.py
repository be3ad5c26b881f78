"""Tune stage: preference tuning or online RL after the supervised fine-tune (workbench.train.preference),
starting from its result, recorded like the train stage (checkpoints in the work folder, resumable).

Output: `adapter/` (what merge folds in: the supervised adapter trained on, or a new adapter on the merged
supervised model), `sft/` (the supervised model merged: the reference the evaluation measures preference
tuning against), the preference rows split into `train.jsonl` / `held_out.jsonl`, and the summary.
"""

from __future__ import annotations

from typing import Any, cast

from workbench.core import safe
from workbench.core.devices import pick_device
from workbench.core.fsutil import dir_size, hash_path
from workbench.core.models import resolve_model
from workbench.core.recipe import READ_LIMITS, Recipe, RecipeError
from workbench.core.records import Artifact
from workbench.data.files import read_jsonl, write_jsonl
from workbench.pipeline.stages.base import Stage, StageContext, train_resumably
from workbench.train import loop, preference, sft
from workbench.train.rows import checked_split
from workbench.train.tracking import trackers


def key_inputs(recipe: Recipe) -> dict[str, Any]:
    if recipe.tune is None:
        return {}
    rows = recipe.tune.data
    return {
        "tune": recipe.tune.model_dump(mode="json", exclude={"data": READ_LIMITS}),
        "data_file": hash_path(recipe.resolve_path(rows.path)) if rows else None,
        "system_prompt": recipe.data.system_prompt,
        "merge": recipe.merge.dtype,
        "merge_base": recipe.merge_base,
    }


def split(ctx: StageContext, tokenizer: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held-out) rows: the tune.data file checked and split like the data stage's, or (online RL
    without its own file) the supervised training rows, whose held-out split the eval stage already has."""
    tune = ctx.recipe.tune
    assert tune is not None
    if tune.data is None:
        return read_jsonl(ctx.inputs["data"] / "train.jsonl"), []
    _, train, held_out = checked_split(ctx.recipe, tune.data, tokenizer, "tune.data", ctx.say)
    return train, held_out


def run(ctx: StageContext) -> list[Artifact]:
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoTokenizer

    from workbench.train.callbacks import InterruptCallback, StoreCallback
    from workbench.train.merge import merge_adapter, save_merged

    recipe, tune = ctx.recipe, ctx.recipe.tune
    assert tune is not None
    where = str(recipe.source or recipe.name)
    device = pick_device(tune.device)
    base = resolve_model(recipe.base_model)
    supervised = ctx.inputs["train"]
    tokenizer = AutoTokenizer.from_pretrained(supervised)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_rows, held_out = split(ctx, tokenizer)
    write_jsonl(ctx.out / "train.jsonl", train_rows)
    write_jsonl(ctx.out / "held_out.jsonl", held_out)
    try:
        rows = preference.tuning_rows(train_rows, tune.objective, "tune.data" if tune.data else "data")
    except preference.TuningDataError as exc:
        raise RecipeError(where, [str(exc)]) from None
    epochs, steps = loop.training_steps(tune, len(rows))
    ctx.say(
        f"{tune.objective} from the supervised {tune.start} on {device}:"
        f" {len(rows)} rows, {epochs:g} epochs, {steps} steps"
    )

    # the supervised model merged: the evaluation's reference, and the start when tune.start is merged
    sft_model = merge_adapter(base, supervised, recipe.merge_base)
    save_merged(sft_model, ctx.out / "sft", recipe.merge.dtype, base, supervised)
    peft_config = None
    if tune.start == "merged":
        model, peft_config = sft_model.to(sft.load_dtype(device)), sft.lora_config(tune)
    else:
        del sft_model
        model = PeftModel.from_pretrained(
            sft.load_model(base, recipe.train, device), str(supervised), is_trainable=True
        )

    store_cb, interrupt_cb = StoreCallback(ctx, steps), InterruptCallback()
    common = loop.trainer_arguments(
        ctx.work / "checkpoints",
        tune,
        device,
        epochs,
        steps,
        report_to=trackers(ctx.recipe, ctx.run_dir, ctx.stage),
        run_name=f"{ctx.run_id}/{ctx.stage}",
    )
    reward_model = ctx.inputs["reward"] / "model" if "reward" in ctx.inputs else None
    trainer = preference.build_trainer(
        tune,
        model,
        tokenizer,
        Dataset.from_list(rows),
        common,
        max_length=tune.data.max_length if tune.data else recipe.data.max_length,
        peft_config=peft_config,
        callbacks=[store_cb, interrupt_cb],
        reward_model=reward_model,
    )
    result = train_resumably(ctx, trainer, steps, interrupt_cb)

    cast(Any, trainer.model).save_pretrained(ctx.out / "adapter", selected_adapters=["default"])
    tokenizer.save_pretrained(ctx.out / "adapter")
    last: dict[str, Any] = next((log for log in reversed(trainer.state.log_history) if "loss" in log), {})
    summary = {
        "objective": tune.objective,
        "start": tune.start,
        "beta": tune.beta,
        "device": device,
        "steps": trainer.state.global_step,
        "epochs": epochs,
        "train_rows": len(rows),
        "held_out_rows": len(held_out),
        "final_loss": store_cb.last_loss,
        "final": {key: value for key, value in last.items() if isinstance(value, int | float)},
        "train_runtime_s": result.metrics.get("train_runtime"),
        "tokens_per_s": store_cb.tokens_per_second(),
        "reference": "the supervised adapter (frozen copy)"
        if tune.start == "adapter"
        else "the merged supervised model",
    }
    (ctx.out / "tune_summary.json").write_text(safe.json_text(summary, indent=2))
    (ctx.out / "log_history.json").write_text(safe.json_text(trainer.state.log_history, indent=1))
    return [
        Artifact("tuned-adapter", "adapter", "adapter", dir_size(ctx.out / "adapter"), summary),
        Artifact("supervised", "model", "sft", dir_size(ctx.out / "sft"), {"dtype": recipe.merge.dtype}),
    ]


RESUMABLE = frozenset({"tune.max_steps", "tune.epochs", "tune.checkpoint_every"})
STAGE = Stage(
    name="tune",
    needs=("data", "train", "reward"),
    key_inputs=key_inputs,
    run=run,
    resumable=RESUMABLE,
    wanted=lambda recipe: recipe.tune is not None,
)
