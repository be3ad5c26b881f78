"""Preference tuning and online RL with TRL's trainers (DPO, ORPO, KTO, GRPO, RLOO) and reward-model
training: the rows each expects and the trainer configured from the recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workbench.core.recipe import ONLINE, PAIRED, RewardModelSection, TuneSection
from workbench.train.rewards import exact_match


class TuningDataError(ValueError):
    """Rows that do not suit the objective (unpaired rows for DPO, no prompts for GRPO)."""


def is_paired(row: dict[str, Any]) -> bool:
    return "chosen" in row and "rejected" in row


def tuning_rows(rows: list[dict[str, Any]], objective: str, source: str) -> list[dict[str, Any]]:
    """Canonical rows (workbench.data.formats) as the objective's trainer takes them: pairs for DPO / ORPO,
    prompt/completion/label for KTO (a pair gives one of each), prompt and reference answer for online RL."""
    out: list[dict[str, Any]] = []
    for row in rows:
        if objective in PAIRED:
            if not is_paired(row):
                raise TuningDataError(
                    f"{source}: {objective} trains on chosen / rejected pairs; row {row.get('number', '?')} is not"
                    " one (unpaired prompt/completion/label rows suit objective kto)"
                )
            out.append({key: row[key] for key in ("prompt", "chosen", "rejected")})
        elif objective == "kto":
            if is_paired(row):
                out.append({"prompt": row["prompt"], "completion": row["chosen"], "label": True})
                out.append({"prompt": row["prompt"], "completion": row["rejected"], "label": False})
            elif "label" in row:
                out.append({key: row[key] for key in ("prompt", "completion", "label")})
            else:
                raise TuningDataError(f"{source}: kto needs pairs or labelled completions; row {row.get('number')}")
        else:
            prompt, answer = prompt_and_answer(row)
            if prompt is not None:
                out.append({"prompt": prompt, "answer": answer})
    if not out:
        raise TuningDataError(f"{source}: no rows {objective} can train on")
    return out


def prompt_and_answer(row: dict[str, Any]) -> tuple[list[dict[str, str]] | None, str]:
    """Online RL's prompt (the conversation before the last answer) and that answer (the reference an
    exact-match reward compares with). Rejected or thumbs-down answers are not references."""
    if "messages" in row:
        return row["messages"][:-1], row["messages"][-1]["content"]
    if is_paired(row):
        return row["prompt"], row["chosen"][-1]["content"]
    if row.get("label"):
        return row["prompt"], row["completion"][-1]["content"]
    return None, ""


def reward_functions(tune: TuneSection, reward_model: Path | None) -> list[Any]:
    """GRPO / RLOO rewards: exact match, the trained reward model (TRL loads a path as a sequence classifier)."""
    funcs: list[Any] = []
    for name in tune.rewards:
        if name == "exact_match":
            funcs.append(exact_match)
        else:
            assert reward_model is not None, "the recipe check requires a reward_model section"
            funcs.append(str(reward_model))
    return funcs


def build_trainer(
    tune: TuneSection,
    model: Any,
    tokenizer: Any,
    dataset: Any,
    common: dict[str, Any],
    *,
    max_length: int,
    peft_config: Any,
    callbacks: list[Any],
    reward_model: Path | None = None,
) -> Any:
    """The objective's TRL trainer. `model` is a PeftModel continuing the supervised adapter (the trainer
    keeps a frozen copy of it as the reference) or a plain model that `peft_config` wraps (the reference
    is the model with the adapter disabled)."""
    kwargs = {
        "model": model,
        "train_dataset": dataset,
        "processing_class": tokenizer,
        "peft_config": peft_config,
        "callbacks": callbacks,
    }
    if tune.objective == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer(args=DPOConfig(**common, beta=tune.beta, max_length=max_length), **kwargs)
    if tune.objective == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer(args=ORPOConfig(**common, beta=tune.beta, max_length=max_length), **kwargs)
    if tune.objective == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOTrainer(args=KTOConfig(**common, beta=tune.beta, max_length=max_length), **kwargs)
    assert tune.objective in ONLINE
    online: dict[str, Any] = {
        "beta": tune.beta,
        "num_generations": tune.generations,
        "max_completion_length": tune.max_completion_length,
        "temperature": tune.temperature,
    }
    funcs = reward_functions(tune, reward_model)
    if tune.objective == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        return GRPOTrainer(reward_funcs=funcs, args=GRPOConfig(**common, **online), **kwargs)
    from trl import RLOOConfig, RLOOTrainer

    return RLOOTrainer(reward_funcs=funcs, args=RLOOConfig(**common, **online), **kwargs)


def reward_trainer(
    section: RewardModelSection,
    model: Any,
    tokenizer: Any,
    dataset: Any,
    common: dict[str, Any],
    *,
    max_length: int,
    callbacks: list[Any],
) -> Any:
    """TRL's RewardTrainer on a sequence classifier with a LoRA adapter and a trained score head."""
    from trl import RewardConfig, RewardTrainer

    from workbench.train.sft import lora_config

    return RewardTrainer(
        model=model,
        args=RewardConfig(**common, max_length=max_length),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(section, task_type="SEQ_CLS"),
        callbacks=callbacks,
    )
