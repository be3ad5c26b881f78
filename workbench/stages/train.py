"""Train stage: LoRA / QLoRA / full fine-tune with TRL's SFTTrainer and peft (workbench.train), recorded.

Checkpoints go to the stage's work folder, so an interrupted run (Ctrl-C, SIGTERM, or a kill between
checkpoints) resumes from the last one when the recipe is run again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from transformers import PreTrainedModel

from workbench import safe
from workbench.data.dataset import to_trl
from workbench.data.files import read_jsonl
from workbench.devices import pick_device
from workbench.errors import RunError, StageFailed
from workbench.models import resolve_model
from workbench.recipe import Recipe, RecipeError
from workbench.records import Artifact
from workbench.stages.base import Stage, StageContext, run_on_ranks, trackers, train_resumably
from workbench.train import distributed, loop, sft


def key_inputs(recipe: Recipe) -> dict[str, Any]:
    spread = recipe.train.distributed
    inputs = {
        "train": recipe.train.model_dump(mode="json", exclude={"distributed"}),
        "loss_on": recipe.data.loss_on,
        "packing": recipe.data.packing,
        "max_length": recipe.data.max_length,
    }
    if spread.many:  # one process keeps the key it always had; the port and timeout change nothing made
        inputs["distributed"] = spread.model_dump(mode="json", exclude={"port", "timeout_s"})
    return inputs


def run(ctx: StageContext) -> list[Artifact]:
    section = ctx.recipe.train
    device = pick_device(section.device)
    sft.check_supported(ctx.recipe, device)
    if ctx.rank is None and section.distributed.many:
        try:
            where = distributed.layout(section.distributed, device)
            distributed.per_process_batch(section.batch_size, where.world)  # `auto` decided only now
        except ValueError as exc:
            raise RunError(str(exc)) from None
        if where.world > 1:
            return run_on_ranks(ctx, where, device)
    return train(ctx, device)


def train(ctx: StageContext, device: str) -> list[Artifact]:
    """Train in this process: alone, or as one rank of several (`ctx.rank`)."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    from workbench.train.callbacks import InterruptCallback, QATSwitch, StoreCallback

    section = ctx.recipe.train
    world = distributed.rank_info()[1] if ctx.rank is not None else 1
    base = resolve_model(ctx.recipe.base_model)
    rows = read_jsonl(ctx.inputs["data"] / "train.jsonl")
    dataset = Dataset.from_list([to_trl(row, ctx.recipe.data.loss_on) for row in rows])
    epochs, steps = loop.training_steps(section, len(rows))
    if section.qat.target and section.qat.start_after_steps >= steps:
        where = str(ctx.recipe.source or ctx.recipe.name)
        problem = (
            f"train.qat.start_after_steps: {section.qat.start_after_steps} is not below the {steps} training steps"
        )
        raise RecipeError(where, [problem + "; the rounding would never be switched on"])
    ctx.say(f"{section.method} on {device}: {len(rows)} rows, {epochs:g} epochs, {steps} steps")

    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = sft.load_model(base, section, device)
    if section.method != "full":
        model = sft.wrap_peft(model, base, section)
        if section.lora.init == "pissa":
            # PiSSA rewrites the base weights; keep its start so the result converts to a plain
            # LoRA adapter that applies to the original base model.
            model.peft_config["default"].init_lora_weights = True
            model.save_pretrained(ctx.work / "initial_adapter")
            model.peft_config["default"].init_lora_weights = "pissa"

    store_cb = StoreCallback(ctx, steps)
    interrupt_cb = InterruptCallback(ctx.work / "ranks" / "stop" if ctx.rank is not None else None)
    callbacks: list[Any] = [store_cb, interrupt_cb]
    qat_summary = None
    if section.qat.target:
        qat_model = sft.prepare_qat(model, ctx.recipe)
        callbacks.append(QATSwitch(ctx, qat_model, section.qat.start_after_steps))
        qat_summary = sft.qat_summary(qat_model, section)
        ctx.say(
            f"quantization-aware: {len(qat_model.on_grid)} weights trained on the {section.qat.target} grid"
            f" from step {section.qat.start_after_steps}"
            + (f"; {len(qat_model.off_grid)} cannot be stored in it" if qat_model.off_grid else "")
        )
    trainer = SFTTrainer(
        model=model,
        args=sft.sft_config(
            ctx.work / "checkpoints",
            section,
            ctx.recipe.data,
            device,
            epochs,
            steps,
            world,
            trackers(ctx),
            f"{ctx.run_id}/{ctx.stage}",
        ),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if trainer.args.world_size != world:  # e.g. torchrun without use_cpu: independent single trainings
        raise StageFailed(f"train: {world} processes were started but the trainer sees {trainer.args.world_size}")
    result = train_resumably(ctx, trainer, steps, interrupt_cb)

    save_kwargs: dict[str, Any] = {}
    if section.method != "full" and section.lora.init == "pissa":
        save_kwargs["path_initial_model_for_weight_conversion"] = str(ctx.work / "initial_adapter")
    spread = None
    if ctx.rank is None:
        cast("PreTrainedModel", trainer.model).save_pretrained(ctx.out, **save_kwargs)
    else:
        spread = save_from_ranks(ctx, trainer, save_kwargs)
        if ctx.rank:
            return []  # rank 0 records and saves
    tokenizer.save_pretrained(ctx.out)
    summary = {
        "method": section.method,
        "device": device,
        "steps": trainer.state.global_step,
        "epochs": epochs,
        "train_rows": len(rows),
        "final_loss": store_cb.last_loss,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "tokens_per_s": store_cb.tokens_per_second(),
        "base_model": base,
        "merge_base": ctx.recipe.merge_base,
        "qat": qat_summary,
        "distributed": spread,
    }
    (ctx.out / "train_summary.json").write_text(safe.json_text(summary, indent=2))
    (ctx.out / "log_history.json").write_text(safe.json_text(trainer.state.log_history, indent=1))
    kind = "model" if section.method == "full" else "adapter"
    size = sum(p.stat().st_size for p in ctx.out.iterdir() if p.is_file())
    return [Artifact(kind, kind, ".", size, summary)]


# a longer (or shorter) training, or other checkpoint spacing, continues from the checkpoints it has
RESUMABLE = frozenset({"train.max_steps", "train.epochs", "train.checkpoint_every"})
STAGE = Stage(name="train", needs=("data",), key_inputs=key_inputs, run=run, resumable=RESUMABLE)


def save_from_ranks(ctx: StageContext, trainer: Any, save_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Rank 0 saves (under FSDP / ZeRO-3 every rank first hands in its shard). With DDP and LoRA, every rank's
    adapter is fingerprinted: they must be one and the same, and the same as what rank 0 saved."""
    spread = ctx.recipe.train.distributed
    model = trainer.accelerator.unwrap_model(trainer.model)
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    state = trainer.accelerator.get_state_dict(trainer.model) if sharded else None
    if ctx.rank == 0:
        model.save_pretrained(ctx.out, **({"state_dict": state} if state is not None else {}), **save_kwargs)
    summary: dict[str, Any] = {"strategy": spread.strategy, "world_size": trainer.args.world_size}
    if spread.strategy == "ddp" and ctx.recipe.train.method != "full" and not save_kwargs:
        from peft import get_peft_model_state_dict

        replicas = distributed.gathered(distributed.digest(get_peft_model_state_dict(model)))
        if len(set(replicas)) > 1:
            raise StageFailed(f"train: the ranks' adapters differ after training: {replicas}")
        summary["replicas"] = replicas
        if ctx.rank == 0:
            from safetensors.torch import load_file

            saved = distributed.digest(load_file(ctx.out / "adapter_model.safetensors"))
            if saved != replicas[0]:
                raise StageFailed("train: the adapter rank 0 saved is not the one the ranks trained")
            summary["saved"] = saved
    return summary
