"""Supervised fine-tuning with TRL and peft: the model as the recipe asks for it (LoRA, QLoRA with nf4,
full), the trainer's configuration and where an interrupted training resumes. The train stage calls these
and records what they did."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from workbench.core.recipe import DataSection, OptimizeSection, Recipe, RecipeError, TrainSection


def check_supported(recipe: Recipe, device: str) -> None:
    """Combinations the libraries cannot do, refused before any model loads."""
    section, problems = recipe.train, []
    if section.lora.init == "loftq" and section.method != "qlora":
        problems.append("train.lora.init: loftq initialises LoRA against the 4-bit base; use train.method: qlora")
    elif section.lora.init == "loftq" and device != "cuda":
        problems.append("train.lora.init: loftq needs a CUDA device (peft computes its initialisation on the GPU)")
    strategy = section.distributed.strategy
    if section.distributed.many and strategy != "ddp" and device != "cuda":
        # accelerate would quietly run DDP instead: on a CPU there is nothing to shard onto
        problems.append(f"train.distributed.strategy: {strategy} shards over CUDA GPUs; on a CPU use ddp")
    if problems:
        raise RecipeError(str(recipe.source or recipe.name), problems)


def lora_config(section: OptimizeSection, task_type: str = "CAUSAL_LM") -> Any:
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
        task_type=task_type,
    )


def load_dtype(device: str) -> Any:
    """bf16 on a GPU that has it, else fp32 (a CPU's bf16 matmul is many times slower)."""
    import torch

    return torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32


def load_model(base: str, section: TrainSection, device: str) -> Any:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = load_dtype(device)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if section.method == "qlora":
        sharded = section.distributed.many and section.distributed.strategy != "ddp"
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            # FSDP and ZeRO-3 shard flat tensors of one dtype: the packed 4-bit weights are stored in it
            **({"bnb_4bit_quant_storage": dtype} if sharded else {}),
        )
        if not sharded:  # one whole copy per process (DDP), on this process's GPU
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0)) if device == "cuda" else "cpu"}
    return AutoModelForCausalLM.from_pretrained(base, **kwargs)  # the Trainer places unquantized models


def wrap_peft(model: Any, base: str, section: TrainSection) -> Any:
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    set_seed(section.seed)  # the adapter's random start comes from the recipe too: a run made again is the same
    if section.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=section.gradient_checkpointing)
    model = get_peft_model(model, lora_config(section))
    if section.method == "qlora" and section.lora.init == "loftq":
        from peft import replace_lora_weights_loftq

        replace_lora_weights_loftq(model, model_path=base if Path(base).is_dir() else None)
    return model


def prepare_qat(model: Any, recipe: Recipe, plan: Any = None) -> Any:
    """The QAT target's rounding put into `model`, off until the trainer's QATSwitch turns it on; `plan`:
    a mixture's grid per weight (`workbench.qat.mixture.Plan`)."""
    import torch

    from workbench.qat import modules

    qat = recipe.train.qat
    assert qat.target is not None
    try:
        return modules.prepare(
            model,
            qat.target,
            merge_dtype=getattr(torch, recipe.merge.dtype),
            embeddings=qat.embeddings,
            output=qat.output,
            plan=plan,
        )
    except ValueError as exc:
        raise RecipeError(str(recipe.source or recipe.name), [f"train.qat: {exc}"]) from None


def qat_summary(model: Any, section: TrainSection, device: str) -> dict[str, Any]:
    from workbench.qat import modules

    return {
        "target": section.qat.target,
        "start_after_steps": section.qat.start_after_steps,
        "steps": section.qat.steps,
        "embeddings": section.qat.embeddings,
        "output": section.qat.output,
        "on_grid": len(model.on_grid),
        "grids": dict(Counter(model.on_grid.values())),
        "off_grid": model.off_grid,
        "rounding": modules.rounding(set(model.on_grid.values()), device),
    }


def sft_config(
    checkpoints: Path,
    section: TrainSection,
    data: DataSection,
    device: str,
    epochs: float,
    steps: int,
    world: int = 1,
    report_to: list[str] | None = None,
    run_name: str | None = None,
) -> Any:
    from trl import SFTConfig

    from workbench.train.loop import trainer_arguments

    common = trainer_arguments(
        checkpoints, section, device, epochs, steps, section.distributed, world, report_to, run_name
    )
    return SFTConfig(**common, max_length=data.max_length, packing=data.packing)
