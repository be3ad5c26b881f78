"""Reward stage: a reward model trained on preference pairs (the base model, a LoRA adapter and a scalar
score head, TRL's RewardTrainer), saved merged as a sequence classifier that online RL loads as a reward
and whose pairwise accuracy on held-out pairs is measured here."""

from __future__ import annotations

from typing import Any

from workbench.core import safe
from workbench.core.devices import pick_device
from workbench.core.fsutil import dir_size, hash_path
from workbench.core.models import resolve_model
from workbench.core.recipe import READ_LIMITS, Recipe, RecipeError
from workbench.core.records import Artifact
from workbench.data.files import write_jsonl
from workbench.eval.preference import sequence_scores
from workbench.pipeline.stages.base import Stage, StageContext, train_resumably
from workbench.train import loop, preference, sft
from workbench.train.rows import checked_split
from workbench.train.tracking import trackers


def key_inputs(recipe: Recipe) -> dict[str, Any]:
    rows = recipe.reward_rows
    if recipe.reward_model is None or rows is None:
        return {}
    return {
        "reward_model": recipe.reward_model.model_dump(mode="json", exclude={"data": READ_LIMITS}),
        "rows": rows.model_dump(mode="json", exclude=READ_LIMITS),
        "data_file": hash_path(recipe.resolve_path(rows.path)),
        "system_prompt": recipe.data.system_prompt,
        "merge": recipe.merge.dtype,
    }


def pair_scores(model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(chosen, rejected) scores of each pair, each conversation rendered by the chat template."""
    texts = [
        tokenizer.apply_chat_template(row["prompt"] + row[side], tokenize=False)
        for row in rows
        for side in ("chosen", "rejected")
    ]
    scores = sequence_scores(model, tokenizer, texts)
    return list(zip(scores[0::2], scores[1::2], strict=True))


def pairwise(scores: list[tuple[float, float]]) -> dict[str, Any]:
    """Accuracy (chosen scored above rejected) and mean margin over the pairs."""
    if not scores:
        return {"pairs": 0, "accuracy": None, "margin": None}
    return {
        "pairs": len(scores),
        "accuracy": sum(c > r for c, r in scores) / len(scores),
        "margin": sum(c - r for c, r in scores) / len(scores),
    }


def run(ctx: StageContext) -> list[Artifact]:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from workbench.train.callbacks import InterruptCallback, StoreCallback
    from workbench.train.merge import save_merged

    recipe, section, rows_section = ctx.recipe, ctx.recipe.reward_model, ctx.recipe.reward_rows
    assert section is not None and rows_section is not None
    field = "reward_model.data" if section.data else "tune.data"
    device = pick_device(section.device)
    base = resolve_model(recipe.base_model)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    data, train, held = checked_split(recipe, rows_section, tokenizer, field, ctx.say)
    unpaired = [number for number, row in data.rows if not preference.is_paired(row)]
    if unpaired:
        raise RecipeError(
            str(recipe.source or recipe.name),
            [f"{field}: a reward model trains on chosen / rejected pairs; rows {unpaired[:10]} are not pairs"],
        )
    pairs = [{key: row[key] for key in ("prompt", "chosen", "rejected")} for row in train]
    write_jsonl(ctx.out / "held_out.jsonl", held)
    epochs, steps = loop.training_steps(section, len(pairs))
    ctx.say(f"reward model on {device}: {len(pairs)} pairs, {epochs:g} epochs, {steps} steps")

    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=sft.load_dtype(device))
    model.config.pad_token_id = tokenizer.pad_token_id
    store_cb, interrupt_cb = StoreCallback(ctx, steps), InterruptCallback()
    trainer = preference.reward_trainer(
        section,
        model,
        tokenizer,
        Dataset.from_list(pairs),
        loop.trainer_arguments(
            ctx.work / "checkpoints",
            section,
            device,
            epochs,
            steps,
            report_to=trackers(ctx.recipe, ctx.run_dir, ctx.stage),
            run_name=f"{ctx.run_id}/{ctx.stage}",
        ),
        max_length=rows_section.max_length,
        callbacks=[store_cb, interrupt_cb],
    )
    train_resumably(ctx, trainer, steps, interrupt_cb)
    merged = trainer.model.merge_and_unload()
    accuracy = pairwise(pair_scores(merged, tokenizer, held))
    save_merged(merged, ctx.out / "model", recipe.merge.dtype, base, base)
    summary = {
        "device": device,
        "steps": trainer.state.global_step,
        "train_pairs": len(pairs),
        "final_loss": store_cb.last_loss,
        "held_out": accuracy,
    }
    (ctx.out / "reward_summary.json").write_text(safe.json_text(summary, indent=2))
    (ctx.out / "log_history.json").write_text(safe.json_text(trainer.state.log_history, indent=1))
    ctx.event("reward_model", **accuracy)
    if accuracy["pairs"]:
        ctx.say(f"held-out pairs: accuracy {accuracy['accuracy']:.3f}, mean margin {accuracy['margin']:.3f}")
    return [Artifact("reward-model", "model", "model", dir_size(ctx.out / "model"), summary)]


STAGE = Stage(
    name="reward",
    needs=("data",),
    key_inputs=key_inputs,
    run=run,
    resumable=frozenset({"reward_model.max_steps", "reward_model.epochs", "reward_model.checkpoint_every"}),
    wanted=lambda recipe: recipe.reward_model is not None,
)
