"""Train stage: LoRA / QLoRA / full fine-tune with TRL's SFTTrainer and peft.

Checkpoints go to the stage's work folder, so an interrupted run (Ctrl-C, SIGTERM, or a kill between
checkpoints) resumes from the last one when the recipe is run again.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from workbench import safe
from workbench.data.dataset import auto_epochs, to_trl
from workbench.devices import pick_device
from workbench.models import resolve_model
from workbench.recipe import Recipe, RecipeError, TrainSection
from workbench.stages.base import Stage, StageContext, StageInterrupted
from workbench.stages.data import read_jsonl


def key_inputs(recipe: Recipe) -> dict[str, Any]:
    return {
        "train": recipe.train.model_dump(mode="json"),
        "loss_on": recipe.data.loss_on,
        "packing": recipe.data.packing,
        "max_length": recipe.data.max_length,
    }


def check_supported(recipe: Recipe, device: str) -> None:
    """Combinations the libraries cannot do, refused before any model loads."""
    section, problems = recipe.train, []
    if section.lora.init == "loftq" and section.method != "qlora":
        problems.append("train.lora.init: loftq initialises LoRA against the 4-bit base; use train.method: qlora")
    elif section.lora.init == "loftq" and device != "cuda":
        problems.append("train.lora.init: loftq needs a CUDA device (peft computes its initialisation on the GPU)")
    if problems:
        raise RecipeError(str(recipe.source or recipe.name), problems)


def lora_config(section: TrainSection) -> Any:
    from peft import LoraConfig

    lora = section.lora
    targets: str | list[str] = lora.targets
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        use_dora=lora.dora,
        use_rslora=lora.rslora,
        init_lora_weights="pissa" if lora.init == "pissa" else True,
        task_type="CAUSAL_LM",
    )


def load_model(base: str, section: TrainSection, device: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype}
    if section.method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        # one full copy per process, so `accelerate launch` data parallelism works as well
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0)) if device == "cuda" else "cpu"}
    return AutoModelForCausalLM.from_pretrained(base, **kwargs)  # the Trainer places unquantized models


def wrap_peft(model: Any, base: str, section: TrainSection) -> Any:
    from peft import get_peft_model, prepare_model_for_kbit_training

    if section.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=section.gradient_checkpointing)
    model = get_peft_model(model, lora_config(section))
    if section.method == "qlora" and section.lora.init == "loftq":
        from peft import replace_lora_weights_loftq

        replace_lora_weights_loftq(model, model_path=base if Path(base).is_dir() else None)
    return model


def training_steps(section: TrainSection, rows: int) -> tuple[float, int]:
    """(epochs, optimizer steps) the run will take."""
    epochs = auto_epochs(rows) if section.epochs == "auto" else float(section.epochs)
    per_step = section.batch_size * section.grad_accum
    steps = section.max_steps or math.ceil(epochs * math.ceil(rows / section.batch_size) / section.grad_accum)
    return (steps * per_step / rows if section.max_steps else epochs), max(steps, 1)


def sft_config(ctx: StageContext, section: TrainSection, device: str, epochs: float, steps: int) -> Any:
    import torch
    from trl import SFTConfig

    data = ctx.recipe.data
    return SFTConfig(
        output_dir=str(ctx.work / "checkpoints"),
        max_steps=steps,
        num_train_epochs=epochs,
        per_device_train_batch_size=section.batch_size,
        gradient_accumulation_steps=section.grad_accum,
        learning_rate=section.learning_rate,
        lr_scheduler_type=section.lr_scheduler,
        warmup_steps=section.warmup_ratio,  # a float below 1 is a ratio
        weight_decay=section.weight_decay,
        seed=section.seed,
        data_seed=section.seed,
        logging_steps=1,
        save_strategy="steps",
        save_steps=section.checkpoint_every,
        save_total_limit=2,
        report_to="none",
        use_cpu=device == "cpu",
        bf16=device == "cuda" and torch.cuda.is_bf16_supported(),
        activation_checkpointing=section.gradient_checkpointing,
        max_length=data.max_length,
        packing=data.packing,
        dataset_num_proc=None,
        dataloader_num_workers=0,
    )


def last_checkpoint(folder: Path) -> str | None:
    """The newest complete checkpoint. The Trainer writes trainer_state.json last, so a checkpoint a kill
    interrupted while it was being saved lacks it (or holds half of it) and is passed over."""
    numbered = (
        [p for p in folder.glob("checkpoint-*") if p.name.rsplit("-", 1)[-1].isdigit()] if folder.is_dir() else []
    )
    for path in sorted(numbered, key=lambda p: int(p.name.rsplit("-", 1)[-1]), reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        return str(path)
    return None


def run(ctx: StageContext) -> list[dict[str, Any]]:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    from workbench.training.callbacks import InterruptCallback, StoreCallback, catch_interrupts

    section = ctx.recipe.train
    device = pick_device(section.device)
    check_supported(ctx.recipe, device)
    base = resolve_model(ctx.recipe.base_model)
    rows = read_jsonl(ctx.inputs["data"] / "train.jsonl")
    dataset = Dataset.from_list([to_trl(row, ctx.recipe.data.loss_on) for row in rows])
    epochs, steps = training_steps(section, len(rows))
    ctx.say(f"{section.method} on {device}: {len(rows)} rows, {epochs:g} epochs, {steps} steps")

    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_model(base, section, device)
    if section.method != "full":
        model = wrap_peft(model, base, section)
        if section.lora.init == "pissa":
            # PiSSA rewrites the base weights; keep its start so the result converts to a plain
            # LoRA adapter that applies to the original base model.
            model.peft_config["default"].init_lora_weights = True
            model.save_pretrained(ctx.work / "initial_adapter")
            model.peft_config["default"].init_lora_weights = "pissa"

    store_cb = StoreCallback(ctx, steps)
    interrupt_cb = InterruptCallback()
    trainer = SFTTrainer(
        model=model,
        args=sft_config(ctx, section, device, epochs, steps),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[store_cb, interrupt_cb],
    )
    resume = last_checkpoint(ctx.work / "checkpoints")
    if resume and int(resume.rsplit("-", 1)[-1]) >= steps:  # past the length asked for now
        kept = ctx.keep_aside(ctx.work / "checkpoints")
        ctx.say(f"{Path(resume).name} is past the {steps} steps asked for; training from the start ({kept} kept)")
        resume = None
    if resume:
        ctx.say(f"resuming from {Path(resume).name}")
    with catch_interrupts(interrupt_cb):
        result = trainer.train(resume_from_checkpoint=resume)
    if interrupt_cb.requested:
        raise StageInterrupted(f"stopped at step {trainer.state.global_step}; run again to resume")

    save_kwargs: dict[str, Any] = {}
    if section.method != "full" and section.lora.init == "pissa":
        save_kwargs["path_initial_model_for_weight_conversion"] = str(ctx.work / "initial_adapter")
    trainer.model.save_pretrained(ctx.out, **save_kwargs)
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
        "merge_base": "dequantized-nf4" if section.method == "qlora" and section.lora.init == "loftq" else "base",
    }
    (ctx.out / "train_summary.json").write_text(safe.json_text(summary, indent=2))
    (ctx.out / "log_history.json").write_text(safe.json_text(trainer.state.log_history, indent=1))
    kind = "model" if section.method == "full" else "adapter"
    size = sum(p.stat().st_size for p in ctx.out.iterdir() if p.is_file())
    return [{"name": kind, "kind": kind, "path": ".", "size": size, "meta": summary}]


# a longer (or shorter) training, or other checkpoint spacing, continues from the checkpoints it has
RESUMABLE = frozenset({"train.max_steps", "train.epochs", "train.checkpoint_every"})
STAGE = Stage(name="train", needs=("data",), key_inputs=key_inputs, run=run, resumable=RESUMABLE)
